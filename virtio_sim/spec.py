"""Spec constants, loaded from the TOML files in specs/.

The virtio numbers (feature bits, status bits, device ids, transport identities) are data,
kept once in specs/ so that a reviewer can check them against the spec in one place. This
module turns them into typed namespaces: code says ``STATUS.FEATURES_OK`` or
``F.VERSION_1`` and mypy knows the names, while the values come from the data files.

A namespace class only declares names; :func:`_bind` fills them from a TOML table and fails
loudly (naming the file and key) when the data lacks one, so a typo in specs/ is an import
error, never a silent zero.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SPECS_DIR = Path(
    os.environ.get("VIRTIO_SIM_SPECS", Path(__file__).resolve().parent.parent / "specs")
)


class SpecDataError(Exception):
    """specs/ data is missing, malformed or inconsistent."""


def load_toml(relative: str) -> dict[str, Any]:
    """Load one TOML file below specs/, with the file name in any error."""
    path = SPECS_DIR / relative
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise SpecDataError(f"{path}: spec data file is missing") from e
    except tomllib.TOMLDecodeError as e:
        raise SpecDataError(f"{path}: invalid TOML: {e}") from e


_T = TypeVar("_T")


def _bind(cls: type[_T], table: dict[str, Any], source: str, prefix: str = "") -> _T:
    """Instantiate ``cls`` with every annotated name taken from ``table[prefix + name]``."""
    obj = cls.__new__(cls)
    for name in cls.__annotations__:
        key = prefix + name
        if key not in table:
            raise SpecDataError(f"{source}: missing key {key!r}")
        value = table[key]
        if not isinstance(value, int | str):
            raise SpecDataError(f"{source}: key {key!r} must be an integer or string")
        setattr(obj, name, value)
    return obj


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureBit:
    name: str
    bit: int
    scope: str  # "transport" or a device key such as "blk"
    since: str
    legacy_only: bool
    aliases: tuple[str, ...]
    summary: str

    @property
    def mask(self) -> int:
        return 1 << self.bit


class FeatureTable:
    """All known feature bits, addressable by name (or old alias) and by (scope, bit)."""

    def __init__(self, features: list[FeatureBit]) -> None:
        self.features = features
        self._by_name: dict[str, FeatureBit] = {}
        self._by_scope_bit: dict[tuple[str, int], FeatureBit] = {}
        for fb in features:
            for n in (fb.name, *fb.aliases):
                if n in self._by_name:
                    raise SpecDataError(f"features.toml: duplicate feature name {n!r}")
                self._by_name[n] = fb
            key = (fb.scope, fb.bit)
            if key in self._by_scope_bit:
                raise SpecDataError(f"features.toml: duplicate bit {fb.bit} in scope {fb.scope}")
            self._by_scope_bit[key] = fb

    def get(self, name: str) -> FeatureBit:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown virtio feature {name!r}") from None

    def known(self, name: str) -> bool:
        return name in self._by_name

    def lookup(self, bit: int, device_key: str) -> FeatureBit | None:
        """The feature at ``bit`` as seen by a device of type ``device_key``."""
        return self._by_scope_bit.get((device_key, bit)) or self._by_scope_bit.get(
            ("transport", bit)
        )

    def mask(self, *names: str) -> int:
        m = 0
        for n in names:
            m |= self.get(n).mask
        return m

    def names(self, mask: int, device_key: str) -> list[str]:
        """Human names of the bits in ``mask``; unknown bits are shown as ``bit N``."""
        out: list[str] = []
        bit = 0
        while mask >> bit:
            if mask >> bit & 1:
                fb = self.lookup(bit, device_key)
                out.append(fb.name if fb else f"bit {bit}")
            bit += 1
        return out


def _load_features() -> FeatureTable:
    data = load_toml("features.toml")
    out: list[FeatureBit] = []
    for i, raw in enumerate(data.get("feature", [])):
        where = f"features.toml feature #{i}"
        try:
            out.append(
                FeatureBit(
                    name=str(raw["name"]),
                    bit=int(raw["bit"]),
                    scope=str(raw["scope"]),
                    since=str(raw.get("since", "1.0")),
                    legacy_only=bool(raw.get("legacy_only", False)),
                    aliases=tuple(raw.get("aliases", ())),
                    summary=str(raw.get("summary", "")),
                )
            )
        except KeyError as e:
            raise SpecDataError(f"{where}: missing key {e}") from e
    return FeatureTable(out)


FEATURES = _load_features()
_FEATURE_BITS = {fb.name: fb.bit for fb in FEATURES.features}


class TransportFeatureBits:
    """Device-independent feature bit numbers (VIRTIO_F_*)."""

    NOTIFY_ON_EMPTY: int
    ANY_LAYOUT: int
    INDIRECT_DESC: int
    EVENT_IDX: int
    BAD_FEATURE: int
    VERSION_1: int
    ACCESS_PLATFORM: int
    RING_PACKED: int
    IN_ORDER: int
    ORDER_PLATFORM: int
    SR_IOV: int
    NOTIFICATION_DATA: int
    NOTIF_CONFIG_DATA: int
    RING_RESET: int


class BlkFeatureBits:
    """virtio-blk feature bit numbers (VIRTIO_BLK_F_*)."""

    SIZE_MAX: int
    SEG_MAX: int
    GEOMETRY: int
    RO: int
    BLK_SIZE: int
    FLUSH: int
    TOPOLOGY: int
    CONFIG_WCE: int
    MQ: int
    DISCARD: int
    WRITE_ZEROES: int


F = _bind(TransportFeatureBits, _FEATURE_BITS, "features.toml", "VIRTIO_F_")
BLK_F = _bind(BlkFeatureBits, _FEATURE_BITS, "features.toml", "VIRTIO_BLK_F_")


def bit(n: int) -> int:
    """Mask of feature bit ``n``."""
    return 1 << n


# --------------------------------------------------------------------------- status


class StatusBits:
    """Device status field bits (spec 2.1)."""

    ACKNOWLEDGE: int
    DRIVER: int
    DRIVER_OK: int
    FEATURES_OK: int
    SUSPEND: int
    DEVICE_NEEDS_RESET: int
    FAILED: int


STATUS = _bind(StatusBits, load_toml("status.toml")["status"], "status.toml [status]")


def status_names(value: int) -> str:
    """``ACKNOWLEDGE|DRIVER`` style rendering of a status byte (``RESET`` for 0)."""
    if value == 0:
        return "RESET"
    names = [n for n in StatusBits.__annotations__ if value & getattr(STATUS, n)]
    known = 0
    for n in names:
        known |= getattr(STATUS, n)
    if value & ~known:
        names.append(f"0x{value & ~known:x}")
    return "|".join(names)


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceType:
    key: str
    id: int
    name: str
    pci_transitional_id: int | None


def _load_devices() -> dict[str, DeviceType]:
    data = load_toml("devices.toml")
    out: dict[str, DeviceType] = {}
    for i, raw in enumerate(data.get("device", [])):
        try:
            dt = DeviceType(
                key=str(raw["key"]),
                id=int(raw["id"]),
                name=str(raw["name"]),
                pci_transitional_id=raw.get("pci_transitional_id"),
            )
        except KeyError as e:
            raise SpecDataError(f"devices.toml device #{i}: missing key {e}") from e
        out[dt.key] = dt
    return out


DEVICE_TYPES = _load_devices()
DEVICE_TYPES_BY_ID = {d.id: d for d in DEVICE_TYPES.values()}


class DeviceIds:
    """Virtio device type ids (spec chapter 5)."""

    net: int
    blk: int
    console: int
    rng: int
    iommu: int


DEVICE_ID = _bind(DeviceIds, {k: v.id for k, v in DEVICE_TYPES.items()}, "devices.toml")


# --------------------------------------------------------------------------- transports

_TRANSPORTS = load_toml("transports.toml")


class MmioIdentity:
    magic: int
    version_legacy: int
    version_modern: int
    qemu_vendor_id: int
    acpi_hid: str
    dt_compatible: str


class MmioInterruptBits:
    USED_BUFFER: int
    CONFIG_CHANGE: int


class PciIdentity:
    vendor_id: int
    device_id_min: int
    device_id_max: int
    transitional_device_id_min: int
    transitional_device_id_max: int
    modern_device_id_base: int
    transitional_revision: int
    modern_revision_min: int
    modern_subsystem_id_min: int
    legacy_queue_align: int
    legacy_pfn_shift: int
    msix_no_vector: int
    vendor_cap_id: int


MMIO = _bind(MmioIdentity, _TRANSPORTS["mmio"], "transports.toml [mmio]")
MMIO_INT = _bind(
    MmioInterruptBits, _TRANSPORTS["mmio"]["interrupt"], "transports.toml [mmio.interrupt]"
)
PCI = _bind(PciIdentity, _TRANSPORTS["pci"], "transports.toml [pci]")

# --------------------------------------------------------------------------- rings

_RINGS = load_toml("rings.toml")


class SplitRingNumbers:
    max_queue_size: int
    desc_align: int
    avail_align: int
    used_align: int


class DescFlags:
    NEXT: int
    WRITE: int
    INDIRECT: int


class AvailFlags:
    NO_INTERRUPT: int


class UsedFlags:
    NO_NOTIFY: int


SPLIT = _bind(SplitRingNumbers, _RINGS["split"], "rings.toml [split]")
DESC_F = _bind(DescFlags, _RINGS["split"]["desc_flags"], "rings.toml [split.desc_flags]")
AVAIL_F = _bind(AvailFlags, _RINGS["split"]["avail_flags"], "rings.toml [split.avail_flags]")
USED_F = _bind(UsedFlags, _RINGS["split"]["used_flags"], "rings.toml [split.used_flags]")


class PackedRingNumbers:
    max_queue_size: int
    wrap_counter_start: int


class PackedDescFlags:
    """pvirtq_desc flags (2.8.1): the split flags plus the AVAIL/USED wrap bits."""

    NEXT: int
    WRITE: int
    INDIRECT: int
    AVAIL: int
    USED: int


class PackedEventFlags:
    """desc_event_flags of struct pvirtq_event_suppress (RING_EVENT_FLAGS_*)."""

    ENABLE: int
    DISABLE: int
    DESC: int


class PackedEventBits:
    """How the off_wrap and flags words of an event suppression structure are split."""

    wrap_shift: int
    off_mask: int
    flags_mask: int


class NotifyDataBits:
    """The fields of a VIRTIO_F_NOTIFICATION_DATA notification value."""

    vq_mask: int
    off_shift: int
    off_mask: int
    wrap_shift: int


PACKED = _bind(PackedRingNumbers, _RINGS["packed"], "rings.toml [packed]")
PACKED_DESC_F = _bind(
    PackedDescFlags, _RINGS["packed"]["desc_flags"], "rings.toml [packed.desc_flags]"
)
PACKED_EVENT_F = _bind(
    PackedEventFlags, _RINGS["packed"]["event_flags"], "rings.toml [packed.event_flags]"
)
PACKED_EVENT = _bind(PackedEventBits, _RINGS["packed"]["event"], "rings.toml [packed.event]")
NOTIFY_DATA = _bind(NotifyDataBits, _RINGS["notify_data"], "rings.toml [notify_data]")

# --------------------------------------------------------------------------- blk

_BLK = load_toml("blk.toml")


class BlkRequestTypes:
    IN: int
    OUT: int
    FLUSH: int
    FLUSH_OUT: int
    GET_ID: int


class BlkStatusValues:
    OK: int
    IOERR: int
    UNSUPP: int


class BlkConstants:
    sector_size: int
    id_bytes: int
    legacy_barrier_flag: int


BLK_T = _bind(BlkRequestTypes, _BLK["request_type"], "blk.toml [request_type]")
BLK_S = _bind(BlkStatusValues, _BLK["status"], "blk.toml [status]")
BLK = _bind(BlkConstants, _BLK["constants"], "blk.toml [constants]")
