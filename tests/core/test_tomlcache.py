"""The TOML cache (virtio_sim/tomlcache.py): a warm start reads marshal data instead of
parsing specs/, and a changed, corrupt or foreign file never comes back stale."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from virtio_sim import tomlcache
from virtio_sim.spec import SPECS_DIR


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("VIRTIO_SIM_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TOML file inside a folder treated as the package's data."""
    data = tmp_path / "specs"
    data.mkdir()
    monkeypatch.setattr(tomlcache, "PACKAGE_DATA", str(data) + os.sep)
    f = data / "t.toml"
    f.write_text("[a]\nx = 1\nname = 'one'\n")
    return f


def test_the_spec_files_load_as_tomllib_parses_them_cold_and_warm(cache: Path) -> None:
    for path in sorted(SPECS_DIR.glob("*.toml")):
        with path.open("rb") as f:
            expected = tomllib.load(f)
        assert tomlcache.load(path) == expected  # cold: parsed, then stored
        assert tomlcache.load(path) == expected  # warm: from the cache file
    assert len(list(cache.iterdir())) == len(list(SPECS_DIR.glob("*.toml")))


def test_a_changed_file_is_parsed_again(cache: Path, data_file: Path) -> None:
    assert tomlcache.load(data_file) == {"a": {"x": 1, "name": "one"}}
    data_file.write_text("[a]\nx = 22\nname = 'two'\n")  # another size, another mtime
    os.utime(data_file, ns=(1, 1))
    assert tomlcache.load(data_file) == {"a": {"x": 22, "name": "two"}}


def test_a_corrupt_cache_file_is_ignored(cache: Path, data_file: Path) -> None:
    tomlcache.load(data_file)
    (stored,) = cache.iterdir()
    stored.write_bytes(b"\x00garbage")
    assert tomlcache.load(data_file) == {"a": {"x": 1, "name": "one"}}


def test_a_hand_made_cache_is_only_used_for_its_own_stamp(cache: Path, data_file: Path) -> None:
    """A cache file whose stamp names the same file, but another mtime, is not believed:
    the stale table it holds never comes back."""
    import marshal

    tomlcache.load(data_file)
    (stored,) = cache.iterdir()
    st = data_file.stat()
    stale = ((str(data_file), st.st_mtime_ns - 1, st.st_size), {"a": {"x": 99}})
    stored.write_bytes(marshal.dumps(stale))
    assert tomlcache.load(data_file) == {"a": {"x": 1, "name": "one"}}


def test_files_outside_the_package_data_are_not_cached(cache: Path, tmp_path: Path) -> None:
    f = tmp_path / "profile.toml"
    f.write_text("k = 'v'\n")
    assert tomlcache.load(f) == {"k": "v"}
    assert not cache.exists()


def test_invalid_toml_still_raises_a_decode_error(cache: Path, data_file: Path) -> None:
    data_file.write_text("[a\n")
    with pytest.raises(tomllib.TOMLDecodeError):
        tomlcache.load(data_file)


def test_an_empty_cache_dir_setting_turns_the_cache_off(
    monkeypatch: pytest.MonkeyPatch, data_file: Path
) -> None:
    monkeypatch.setenv("VIRTIO_SIM_CACHE_DIR", "")
    assert tomlcache.cache_dir() is None
    assert tomlcache.load(data_file) == {"a": {"x": 1, "name": "one"}}


def test_a_warm_start_never_imports_the_toml_parser(tmp_path: Path) -> None:
    """Structural, not timed: with the cache warm, loading the spec constants and a driver
    profile (what a run does) leaves tomllib unimported."""
    env = {**os.environ, "VIRTIO_SIM_CACHE_DIR": str(tmp_path)}
    code = (
        "import sys, virtio_sim.spec, virtio_sim.profiles as p\n"
        "p.load_driver_profile('linux-6.1')\n"
        "print('tomllib' in sys.modules)"
    )
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert cold.stdout.split() == ["True"]  # the first start parsed and filled the cache
    assert warm.stdout.split() == ["False"]
