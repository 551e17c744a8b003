"""The wheel: one top-level package (virtio_sim, with host/guest inside and the spec data
as package data) that works from any directory, outside the checkout. CI additionally
installs it with its dependencies into a fresh venv and runs the default matrix (.ci/run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _source_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored), symlinks kept,
    so that the build writes its build/ into the copy and never into the checkout."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, names):
        src = ROOT / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        if src.is_symlink() and not src.resolve().is_relative_to(ROOT):
            continue  # build -> a shared kernel cache: setuptools would write its build/ there
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest


def test_wheel_has_one_package_with_the_spec_data_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("virtio_sim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"virtio_sim", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert not {"host", "guest", "benchmarks", "specs", "tests"} & top
    specs = {p.relative_to(ROOT / "specs").as_posix() for p in (ROOT / "specs").rglob("*") if p.is_file()}
    shipped = {n.removeprefix("virtio_sim/specs/") for n in names if n.startswith("virtio_sim/specs/")}
    assert specs == shipped  # every data file, nothing else
    assert {"virtio_sim/host/devices/blk.py", "virtio_sim/guest/boot.py"} <= set(names)

    # Installed on its own (no checkout on the path, run from elsewhere): the command finds
    # its spec data inside the package and runs a cell.
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("VIRTIO_SIM_SPECS", None)
    code = "import virtio_sim.spec as s, virtio_sim.host as h; print(s.SPECS_DIR, h.__file__)"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert all(p.startswith(str(site)) for p in probe.stdout.split()), probe.stdout
    run = subprocess.run(
        [str(site / "bin" / "virtio-sim"), "matrix", "--driver", "linux-6.1", "--device", "qemu-7.2",
         "--transport", "mmio-v2", "--workload", "rng", "--iommu", "none", "--iommu-platform", "off",
         "--ring", "split", "--workers", "1", "--json"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["matrix"]["source"].startswith(str(site))
    assert [c["outcome"] for c in report["cells"]] == ["OK"]


def test_host_and_guest_are_only_importable_as_virtio_sim_host_and_guest() -> None:
    for name in ("host", "guest"):
        p = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert p.returncode != 0 and f"import virtio_sim.{name}, not {name}" in p.stderr


def _collected(*python_args: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, *python_args, "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return [line for line in p.stdout.splitlines() if "::" in line]


def test_plain_pytest_collects_what_python_m_pytest_does() -> None:
    # `pytest` (the console script) does not put the current directory on sys.path, as
    # `python -m pytest` does; -P gives python the script's view of sys.path.
    plain = _collected("-P", "-c", "import sys, pytest; sys.exit(pytest.console_main())")
    assert plain == _collected("-m", "pytest") and len(plain) > 1000
