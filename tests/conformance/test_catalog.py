"""The conformance catalogue loads, is complete and consistent, and bad files are refused
with the file and id named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from virtio_sim.orchestration.conformance.catalog import (
    COVERED_AREAS,
    LEVELS,
    CatalogError,
    default_root,
    load_catalog,
)

ENTRY = """
[[requirement]]
id = "{id}"
area = "status"
section = "2.1.2"
actor = "{actor}"
level = "{level}"
testable = true
legacy = false
summary = "device MUST: something"
not_checkable = "because"
"""


def test_catalog_holds_every_requirement() -> None:
    cat = load_catalog()
    # 690 from the virtio 1.4 requirement list, plus two derived device-side entries
    # (features.dev.fixed-at-features-ok, status.dev.no-live-without-features-ok)
    assert len(cat.entries) == 692
    derived = [e.id for e in cat.entries.values() if "derived" in e.summary]
    assert sorted(derived) == ["features.dev.fixed-at-features-ok", "status.dev.no-live-without-features-ok"]
    assert cat.level_of("status.dev.no-use-before-driver-ok") == "MUST NOT"
    assert cat.level_of("split.used.dev-len-before-idx") == "MUST"
    with pytest.raises(KeyError):
        cat.level_of("no.such.id")
    for area in COVERED_AREAS:
        assert any(e.area == area for e in cat.entries.values()), area
    for e in cat.entries.values():
        assert e.level in LEVELS
        assert (e.checker is None) != (e.not_checkable is None), e.id
        assert e.summary.startswith(f"{e.actor} {e.level}:"), e.id


def test_every_file_is_one_area() -> None:
    cat = load_catalog()
    for path in default_root().glob("*.toml"):
        if path.name == "driver-checkers.toml":
            continue
        text = path.read_text()
        ids = [e for e in cat.entries.values() if f'id = "{e.id}"' in text]
        assert ids and all(e.area == path.stem for e in ids), path.name


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "conformance"
    shutil.copytree(default_root(), root)
    return root


def test_duplicate_id_names_file_and_id(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "zz.toml").write_text(ENTRY.format(id="status.dev.set-needs-reset", actor="device", level="MUST"))
    with pytest.raises(CatalogError, match=r"zz\.toml: status\.dev\.set-needs-reset duplicates"):
        load_catalog(root)


def test_bad_level_names_file_and_id(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "zz.toml").write_text(ENTRY.format(id="x.new", actor="device", level="OUGHT"))
    with pytest.raises(CatalogError, match=r"zz\.toml: x\.new: level 'OUGHT'"):
        load_catalog(root)


def test_driver_checker_for_unknown_id_is_refused(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "driver-checkers.toml").write_text('[[check]]\nid = "status.drv.nope"\nchecker = "x"\n')
    with pytest.raises(CatalogError, match=r"driver-checkers\.toml: status\.drv\.nope: no such requirement"):
        load_catalog(root)


def test_driver_checker_for_device_id_is_refused(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "driver-checkers.toml").write_text('[[check]]\nid = "reset.dev.status-zero"\nchecker = "x"\n')
    with pytest.raises(CatalogError, match="device-side"):
        load_catalog(root)


def test_driver_checker_is_folded_in(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "driver-checkers.toml").write_text(
        '[[check]]\nid = "status.drv.never-clear-bit"\nchecker = "status_order"\n'
    )
    entry = load_catalog(root).entries["status.drv.never-clear-bit"]
    assert entry.checker == "status_order" and entry.not_checkable is None


def test_broken_toml_is_a_catalog_error(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "zz.toml").write_text("[[requirement]\n")
    with pytest.raises(CatalogError, match=r"zz\.toml"):
        load_catalog(root)


def test_unreachable_needs_a_testable_entry_without_a_checker(tmp_path: Path) -> None:
    """'unreachable' keeps an entry out of the coverage denominator: it must never hide an
    entry that has a checker (a checker means a run can reach it)."""
    root = _copy(tmp_path)
    far = ENTRY.format(id="x.far", actor="device", level="MUST") + 'unreachable = "no peer has it"\n'
    (root / "zz.toml").write_text(far)
    entry = load_catalog(root).entries["x.far"]
    assert entry.unreachable == "no peer has it" and not entry.counted
    (root / "zz.toml").write_text(far.replace('not_checkable = "because"', 'checker = "status_order"'))
    with pytest.raises(CatalogError, match=r"zz\.toml: x\.far: 'unreachable' is for testable"):
        load_catalog(root)
    (root / "zz.toml").write_text(far.replace("testable = true", "testable = false"))
    with pytest.raises(CatalogError, match="unreachable"):
        load_catalog(root)
    root = _copy(tmp_path / "again")
    check = '[[check]]\nid = "suspend.drv.verify"\nchecker = "status_order"\n'
    (root / "driver-checkers.toml").write_text(check)
    with pytest.raises(CatalogError, match=r"suspend\.drv\.verify: marked unreachable, yet a checker"):
        load_catalog(root)
