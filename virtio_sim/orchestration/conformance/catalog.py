"""The requirement catalogue: specs/conformance/*.toml, one entry per normative statement.

Every entry names the checker that decides it or says why none can. Device-side checkers
are named in the area files themselves; driver-side checkers are named in
``driver-checkers.toml`` (owned by the driver conformance code) and folded into the
entries here, so a report sees one catalogue. Anything inconsistent (a duplicate id, an
unknown level, a driver checker for an id that does not exist) is a :class:`CatalogError`
naming the file and the id, raised at load time rather than surfacing as a silently
missing row in a report.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from virtio_sim.spec import SPECS_DIR

LEVELS = ("MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY")
ACTORS = ("device", "driver")
DRIVER_CHECKERS_FILE = "driver-checkers.toml"
#: Areas left out of coverage, with the reason every report states. Everything else counts.
OUT_OF_SCOPE = {
    "blk-zoned": (
        "no zoned block model: our virtio-blk offers no VIRTIO_BLK_F_ZONED (nor does QEMU 7.2's "
        "virtio-blk without a zoned host device), so no run can reach these rules; they are "
        "excluded from the coverage denominator"
    ),
}
#: The areas whose testable MUST/MUST NOT entries count towards coverage: every area of
#: the catalogue but the out-of-scope ones (the 11-area headline of earlier reports hid
#: net, console, config, virtqueue and notifications).
COVERED_AREAS = (
    "status",
    "features",
    "init",
    "reset",
    "config",
    "virtqueue",
    "notifications",
    "split",
    "packed",
    "pci",
    "mmio",
    "blk",
    "rng",
    "iommu",
    "net",
    "console",
)


class CatalogError(Exception):
    """The catalogue files are inconsistent; the message names the file and the id."""


@dataclass(frozen=True)
class Entry:
    id: str
    area: str
    section: str
    actor: str
    level: str
    testable: bool
    legacy: bool
    condition: str | None
    summary: str
    checker: str | None
    not_checkable: str | None
    #: testable in principle, but no peer this tool can run reaches it (a feature that none
    #: of our models, Linux 6.1 or QEMU 7.2 implements, or an effect no peer can observe):
    #: why, with the evidence. Excluded from the coverage denominator and listed with the
    #: reason in every coverage report; never counted as decided.
    unreachable: str | None = None

    @property
    def mandatory(self) -> bool:
        return self.level in ("MUST", "MUST NOT")

    @property
    def counted(self) -> bool:
        """Whether the entry is in the coverage denominator: testable, mandatory, reachable."""
        return self.testable and self.mandatory and self.unreachable is None


@dataclass
class Catalog:
    entries: dict[str, Entry]

    def level_of(self, requirement: str) -> str:
        """The entry's level; KeyError for an id the catalogue does not have."""
        return self.entries[requirement].level

    def areas(self) -> list[str]:
        return sorted({e.area for e in self.entries.values()})


def default_root() -> Path:
    """specs/conformance: in the checkout, or inside the installed package."""
    return SPECS_DIR / "conformance"


def load_known_deviations(
    filename: str, field: str, key: str, transport: str, root: Path | None = None
) -> dict[str, str]:
    """Requirement id -> why, from ``deviations/<filename>``: every ``[[deviation]]`` whose
    ``field`` (``device`` or ``profile``) is ``key`` and whose ``transports`` (all when
    absent) include ``transport``. Shared by the device and driver runners, which report
    these ids as KNOWN instead of FAIL."""
    path = (default_root() if root is None else root) / "deviations" / filename
    if not path.exists():
        return {}
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for entry in data.get("deviation", []):
        transports = entry.get("transports")
        if entry.get(field) != key or (transports is not None and transport not in transports):
            continue
        for rid in entry["ids"]:
            out[rid] = f"{filename}: {entry['why']}"
    return out


def _str(raw: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _bool(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: field {key!r} must be true or false")
    return value


def _entry(raw: dict[str, Any], path: Path) -> Entry:
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise CatalogError(f"{path}: a requirement without an id")
    where = f"{path}: {rid}"
    extra = set(raw) - set(Entry.__dataclass_fields__)
    if extra:
        raise CatalogError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
    level = _str(raw, "level", where)
    if level not in LEVELS:
        raise CatalogError(f"{where}: level {level!r} is not one of {', '.join(LEVELS)}")
    actor = _str(raw, "actor", where)
    if actor not in ACTORS:
        raise CatalogError(f"{where}: actor {actor!r} is not device or driver")
    checker = _str(raw, "checker", where, optional=True)
    why = _str(raw, "not_checkable", where, optional=True)
    if (checker is None) == (why is None):
        raise CatalogError(f"{where}: needs exactly one of checker / not_checkable")
    if checker is not None and actor == "driver":
        raise CatalogError(f"{where}: driver-side checkers belong in {DRIVER_CHECKERS_FILE}")
    unreachable = _str(raw, "unreachable", where, optional=True)
    if unreachable is not None and (checker is not None or not _bool(raw, "testable", where)):
        raise CatalogError(f"{where}: 'unreachable' is for testable entries without a checker")
    return Entry(
        id=rid,
        area=str(_str(raw, "area", where)),
        section=str(_str(raw, "section", where)),
        actor=str(actor),
        level=str(level),
        testable=_bool(raw, "testable", where),
        legacy=_bool(raw, "legacy", where),
        condition=_str(raw, "condition", where, optional=True),
        summary=str(_str(raw, "summary", where)),
        checker=checker,
        not_checkable=why,
        unreachable=unreachable,
    )


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CatalogError(f"{path}: {e}") from None


def load_catalog(root: Path | None = None) -> Catalog:
    """Load every area file under ``root`` (default: the repo's specs/conformance), then
    the driver checkers."""
    root = default_root() if root is None else root
    files = sorted(p for p in root.glob("*.toml") if p.name != DRIVER_CHECKERS_FILE)
    if not files:
        raise CatalogError(f"{root}: no catalogue files")
    entries: dict[str, Entry] = {}
    seen_in: dict[str, Path] = {}
    for path in files:
        data = _load_toml(path)
        extra = set(data) - {"requirement"}
        if extra:
            raise CatalogError(f"{path}: unknown table(s) {', '.join(sorted(extra))}")
        for raw in data.get("requirement", []):
            entry = _entry(raw, path)
            if entry.id in entries:
                raise CatalogError(f"{path}: {entry.id} duplicates the entry in {seen_in[entry.id]}")
            entries[entry.id] = entry
            seen_in[entry.id] = path
    driver_file = root / DRIVER_CHECKERS_FILE
    if driver_file.exists():
        _fold_driver_checkers(entries, driver_file)
    return Catalog(entries)


def _fold_driver_checkers(entries: dict[str, Entry], path: Path) -> None:
    data = _load_toml(path)
    extra = set(data) - {"check"}
    if extra:
        raise CatalogError(f"{path}: unknown table(s) {', '.join(sorted(extra))}")
    done: set[str] = set()
    for raw in data.get("check", []):
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid:
            raise CatalogError(f"{path}: a [[check]] without an id")
        where = f"{path}: {rid}"
        if set(raw) - {"id", "checker"}:
            raise CatalogError(f"{where}: a [[check]] has only id and checker")
        checker = _str(raw, "checker", where)
        entry = entries.get(rid)
        if entry is None:
            raise CatalogError(f"{where}: no such requirement in the catalogue")
        if entry.actor != "driver":
            raise CatalogError(f"{where}: is a device-side requirement")
        if rid in done:
            raise CatalogError(f"{where}: listed twice")
        if entry.unreachable is not None:
            raise CatalogError(f"{where}: marked unreachable, yet a checker is named")
        done.add(rid)
        entries[rid] = replace(entry, checker=checker, not_checkable=None)
