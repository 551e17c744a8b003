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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from virtio_sim import tomlcache


def _specs_dir() -> Path:
    """The spec data: ``$VIRTIO_SIM_SPECS`` if set, else the ``specs`` folder inside the
    package (in a checkout the ``virtio_sim/specs`` symlink to the top-level specs/; in an
    installed wheel the copy shipped as package data), so every command works from any
    directory whichever way the package was installed."""
    override = os.environ.get("VIRTIO_SIM_SPECS")
    if override:
        return Path(override)
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
    if os.path.isdir(beside):  # a checkout or an installed wheel: plain files, no
        return Path(beside)  # importlib.resources (its import alone was 9 ms of start-up)
    from importlib import resources

    return Path(str(resources.files("virtio_sim").joinpath("specs")))


SPECS_DIR = _specs_dir()


class SpecDataError(Exception):
    """specs/ data is missing, malformed or inconsistent."""


def load_toml(relative: str) -> dict[str, Any]:
    """Load one TOML file below specs/, with the file name in any error (parsed once,
    then read from :mod:`virtio_sim.tomlcache` until the file changes)."""
    path = SPECS_DIR / relative
    try:
        return tomlcache.load(path)
    except FileNotFoundError as e:
        raise SpecDataError(f"{path}: spec data file is missing") from e
    except ValueError as e:  # tomllib.TOMLDecodeError
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
        self.features: list[FeatureBit] = []
        self._by_name: dict[str, FeatureBit] = {}
        self._by_scope_bit: dict[tuple[str, int], FeatureBit] = {}
        for fb in features:
            self.add(fb, "features.toml")

    def add(self, fb: FeatureBit, where: str) -> None:
        """One more feature bit: features.toml's, or a device kind's whose numbers sit
        beside its code (virtio_sim/devices registers them)."""
        for n in (fb.name, *fb.aliases):
            if n in self._by_name:
                raise SpecDataError(f"{where}: duplicate feature name {n!r}")
        key = (fb.scope, fb.bit)
        if key in self._by_scope_bit:
            raise SpecDataError(f"{where}: duplicate bit {fb.bit} in scope {fb.scope}")
        for n in (fb.name, *fb.aliases):
            self._by_name[n] = fb
        self._by_scope_bit[key] = fb
        self.features.append(fb)

    def get(self, name: str) -> FeatureBit:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown virtio feature {name!r}") from None

    def known(self, name: str) -> bool:
        return name in self._by_name

    def lookup(self, bit: int, device_key: str) -> FeatureBit | None:
        """The feature at ``bit`` as seen by a device of type ``device_key``."""
        return self._by_scope_bit.get((device_key, bit)) or self._by_scope_bit.get(("transport", bit))

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
    SCSI: int
    FLUSH: int
    TOPOLOGY: int
    CONFIG_WCE: int
    MQ: int
    DISCARD: int
    WRITE_ZEROES: int
    SECURE_ERASE: int


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
    qemu_queue_num_max: int


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
MMIO_INT = _bind(MmioInterruptBits, _TRANSPORTS["mmio"]["interrupt"], "transports.toml [mmio.interrupt]")
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
PACKED_DESC_F = _bind(PackedDescFlags, _RINGS["packed"]["desc_flags"], "rings.toml [packed.desc_flags]")
PACKED_EVENT_F = _bind(PackedEventFlags, _RINGS["packed"]["event_flags"], "rings.toml [packed.event_flags]")
PACKED_EVENT = _bind(PackedEventBits, _RINGS["packed"]["event"], "rings.toml [packed.event]")
NOTIFY_DATA = _bind(NotifyDataBits, _RINGS["notify_data"], "rings.toml [notify_data]")


class ChainNumbers:
    max_bytes: int


CHAIN = _bind(ChainNumbers, _RINGS["chain"], "rings.toml [chain]")

# --------------------------------------------------------------------------- resource bounds
# What a hostile peer can make us spend (specs/limits.toml). The code reads these and never
# keeps its own copy; a bound that is a spec fact lives with the spec numbers instead.

_LIMITS = load_toml("limits.toml")


class IndirectLimits:
    max_entries: int


class WireLimits:
    max_payload: int
    max_dma_chunk: int
    max_guest_ram: int
    max_memory_regions: int
    max_error_chars: int
    max_queued_frames: int
    max_unsent_frames: int
    max_unsent_bytes: int


class VhostUserMessageLimits:
    max_payload: int
    max_fds: int


class HostLimits:
    max_guests: int
    max_unauthenticated: int
    handshake_deadline_ms: int
    idle_timeout_ms: int


class BlkLimits:
    max_request_bytes: int
    io_chunk_bytes: int


class ConsoleLimits:
    control_message_bytes: int
    rx_backlog_bytes: int
    tx_chain_bytes: int


class GuestLimits:
    max_acpi_table: int


@dataclass(frozen=True)
class Limits:
    indirect: IndirectLimits
    wire: WireLimits
    vhost_user: VhostUserMessageLimits
    host: HostLimits
    console: ConsoleLimits
    guest: GuestLimits
    blk: BlkLimits


def _limit_table(cls: type[_T], name: str) -> _T:
    """One table of limits.toml; every bound must be a positive integer."""
    source = f"limits.toml [{name}]"
    if not isinstance(_LIMITS.get(name), dict):
        raise SpecDataError(f"{source}: missing table")
    obj = _bind(cls, _LIMITS[name], source)
    for key in cls.__annotations__:
        value = getattr(obj, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SpecDataError(f"{source}: {key!r} must be a positive integer, not {value!r}")
    return obj


LIMITS = Limits(
    indirect=_limit_table(IndirectLimits, "indirect"),
    wire=_limit_table(WireLimits, "wire"),
    vhost_user=_limit_table(VhostUserMessageLimits, "vhost_user"),
    host=_limit_table(HostLimits, "host"),
    console=_limit_table(ConsoleLimits, "console"),
    guest=_limit_table(GuestLimits, "guest"),
    blk=_limit_table(BlkLimits, "blk"),
)

# --------------------------------------------------------------------------- blk

_BLK = load_toml("blk.toml")


class BlkRequestTypes:
    IN: int
    OUT: int
    FLUSH: int
    FLUSH_OUT: int
    SCSI_CMD: int
    GET_ID: int
    DISCARD: int
    WRITE_ZEROES: int
    SECURE_ERASE: int


class BlkStatusValues:
    OK: int
    IOERR: int
    UNSUPP: int


class BlkConstants:
    sector_size: int
    id_bytes: int
    legacy_barrier_flag: int


class QemuBlkNumbers:
    """QEMU's virtio-blk config values that no property sets (blk.toml [qemu])."""

    max_discard_sectors: int
    max_discard_seg: int
    max_write_zeroes_sectors: int
    max_write_zeroes_seg: int
    write_zeroes_may_unmap: int
    fixed_seg_max: int
    geometry_heads: int
    geometry_sectors: int
    geometry_min_cylinders: int
    geometry_max_cylinders: int
    write_zeroes_flag_unmap: int
    discard_segment_size: int


BLK_T = _bind(BlkRequestTypes, _BLK["request_type"], "blk.toml [request_type]")
BLK_S = _bind(BlkStatusValues, _BLK["status"], "blk.toml [status]")
BLK = _bind(BlkConstants, _BLK["constants"], "blk.toml [constants]")
QEMU_BLK = _bind(QemuBlkNumbers, _BLK["qemu"], "blk.toml [qemu]")

# --------------------------------------------------------------------------- net


class NetFeatureBits:
    """virtio-net feature bit numbers (VIRTIO_NET_F_*)."""

    CSUM: int
    GUEST_CSUM: int
    CTRL_GUEST_OFFLOADS: int
    MTU: int
    MAC: int
    GSO: int
    GUEST_TSO4: int
    GUEST_TSO6: int
    GUEST_ECN: int
    GUEST_UFO: int
    HOST_TSO4: int
    HOST_TSO6: int
    HOST_ECN: int
    HOST_UFO: int
    MRG_RXBUF: int
    STATUS: int
    CTRL_VQ: int
    CTRL_RX: int
    CTRL_VLAN: int
    CTRL_RX_EXTRA: int
    GUEST_ANNOUNCE: int
    MQ: int
    CTRL_MAC_ADDR: int
    HASH_REPORT: int
    RSS: int


class NetHdrFlags:
    NEEDS_CSUM: int
    DATA_VALID: int
    RSC_INFO: int


class NetGsoTypes:
    NONE: int
    TCPV4: int
    UDP: int
    TCPV6: int
    UDP_L4: int
    ECN: int


class NetStatusBits:
    LINK_UP: int
    ANNOUNCE: int


class NetCtrlClasses:
    RX: int
    MAC: int
    VLAN: int
    ANNOUNCE: int
    MQ: int
    GUEST_OFFLOADS: int


class NetCtrlRxCommands:
    PROMISC: int
    ALLMULTI: int
    ALLUNI: int
    NOMULTI: int
    NOUNI: int
    NOBCAST: int


class NetCtrlMacCommands:
    TABLE_SET: int
    ADDR_SET: int


class NetCtrlMqCommands:
    VQ_PAIRS_SET: int
    VQ_PAIRS_MIN: int
    VQ_PAIRS_MAX: int


class NetCtrlAck:
    OK: int
    ERR: int


class NetConstants:
    eth_alen: int
    eth_hlen: int
    eth_frame_max: int
    max_packet: int
    qemu_mac_table_entries: int
    qemu_default_mac: str
    ctrl_queue_size: int


_NET = load_toml("net.toml")
NET_F = _bind(NetFeatureBits, _FEATURE_BITS, "features.toml", "VIRTIO_NET_F_")
NET_HDR_F = _bind(NetHdrFlags, _NET["hdr_flags"], "net.toml [hdr_flags]")
NET_GSO = _bind(NetGsoTypes, _NET["gso"], "net.toml [gso]")
NET_S = _bind(NetStatusBits, _NET["status"], "net.toml [status]")
NET_CTRL = _bind(NetCtrlClasses, _NET["ctrl_class"], "net.toml [ctrl_class]")
NET_CTRL_RX = _bind(NetCtrlRxCommands, _NET["ctrl_rx"], "net.toml [ctrl_rx]")
NET_CTRL_MAC = _bind(NetCtrlMacCommands, _NET["ctrl_mac"], "net.toml [ctrl_mac]")
NET_CTRL_MQ = _bind(NetCtrlMqCommands, _NET["ctrl_mq"], "net.toml [ctrl_mq]")
NET_ACK = _bind(NetCtrlAck, _NET["ctrl_ack"], "net.toml [ctrl_ack]")
NET = _bind(NetConstants, _NET["constants"], "net.toml [constants]")


@dataclass(frozen=True)
class FeatureDependency:
    """``feature`` may only be offered/acked together with all (or, ``any_of``, one) of
    ``requires``."""

    feature: int
    requires: tuple[int, ...]
    any_of: bool

    def satisfied(self, features: int) -> bool:
        if not features >> self.feature & 1:
            return True
        hits = [features >> r & 1 for r in self.requires]
        return any(hits) if self.any_of else all(hits)


def _load_dependencies(data: dict[str, Any], source: str) -> tuple[FeatureDependency, ...]:
    out: list[FeatureDependency] = []
    for name, raw in data.items():
        any_of = isinstance(raw, dict)
        names = raw.get("any", []) if isinstance(raw, dict) else raw
        if not isinstance(names, list) or not names:
            raise SpecDataError(f"{source}: dependency of {name!r} must be a non-empty list")
        try:
            out.append(
                FeatureDependency(FEATURES.get(name).bit, tuple(FEATURES.get(n).bit for n in names), any_of)
            )
        except KeyError as e:
            raise SpecDataError(f"{source}: {e}") from None
    return tuple(out)


NET_FEATURE_DEPS = _load_dependencies(_NET["dependencies"], "net.toml [dependencies]")


def unmet_dependencies(features: int, deps: tuple[FeatureDependency, ...]) -> list[FeatureDependency]:
    """The dependencies that ``features`` breaks (a feature present without its prerequisites)."""
    return [d for d in deps if not d.satisfied(features)]


# --------------------------------------------------------------------------- console


class ConsoleFeatureBits:
    """virtio-console feature bit numbers (VIRTIO_CONSOLE_F_*)."""

    SIZE: int
    MULTIPORT: int
    EMERG_WRITE: int


class ConsoleControlEvents:
    DEVICE_READY: int
    PORT_ADD: int
    PORT_REMOVE: int
    PORT_READY: int
    CONSOLE_PORT: int
    RESIZE: int
    PORT_OPEN: int
    PORT_NAME: int


class ConsoleConstants:
    bad_id: int
    qemu_max_ports: int
    max_ports_limit: int
    control_queue_size: int


_CONSOLE = load_toml("console.toml")
CONSOLE_F = _bind(ConsoleFeatureBits, _FEATURE_BITS, "features.toml", "VIRTIO_CONSOLE_F_")
CONSOLE_E = _bind(ConsoleControlEvents, _CONSOLE["control_event"], "console.toml [control_event]")
CONSOLE = _bind(ConsoleConstants, _CONSOLE["constants"], "console.toml [constants]")

# --------------------------------------------------------------------------- iommu

_IOMMU = load_toml("iommu.toml")


class IommuFeatureBits:
    """virtio-iommu feature bit numbers (VIRTIO_IOMMU_F_*)."""

    INPUT_RANGE: int
    DOMAIN_RANGE: int
    MAP_UNMAP: int
    BYPASS: int
    PROBE: int
    MMIO: int
    BYPASS_CONFIG: int


class IommuRequestTypes:
    ATTACH: int
    DETACH: int
    MAP: int
    UNMAP: int
    PROBE: int


class IommuStatusValues:
    OK: int
    IOERR: int
    UNSUPP: int
    DEVERR: int
    INVAL: int
    RANGE: int
    NOENT: int
    FAULT: int
    NOMEM: int


class IommuMapFlags:
    READ: int
    WRITE: int
    MMIO: int


class IommuFaultReasons:
    UNKNOWN: int
    DOMAIN: int
    MAPPING: int


class IommuFaultFlags:
    READ: int
    WRITE: int
    EXEC: int
    ADDRESS: int


class IommuProbe:
    NONE: int
    RESV_MEM: int
    RESV_MEM_RESERVED: int
    RESV_MEM_MSI: int


IOMMU_F = _bind(IommuFeatureBits, _FEATURE_BITS, "features.toml", "VIRTIO_IOMMU_F_")
IOMMU_T = _bind(IommuRequestTypes, _IOMMU["request_type"], "iommu.toml [request_type]")
IOMMU_S = _bind(IommuStatusValues, _IOMMU["status"], "iommu.toml [status]")
IOMMU_MAP_F = _bind(IommuMapFlags, _IOMMU["map_flags"], "iommu.toml [map_flags]")
IOMMU_ATTACH_F_BYPASS: int = int(_IOMMU["attach_flags"]["BYPASS"])
IOMMU_FAULT_R = _bind(IommuFaultReasons, _IOMMU["fault_reason"], "iommu.toml [fault_reason]")
IOMMU_FAULT_F = _bind(IommuFaultFlags, _IOMMU["fault_flags"], "iommu.toml [fault_flags]")
IOMMU_PROBE = _bind(IommuProbe, _IOMMU["probe"], "iommu.toml [probe]")

# --------------------------------------------------------------------------- virtio-pci


class VirtioPciCapTypes:
    """virtio_pci_cap.cfg_type values (virtio 4.1.4)."""

    COMMON: int
    NOTIFY: int
    ISR: int
    DEVICE: int
    PCI_CFG: int
    SHARED_MEMORY: int
    VENDOR: int


class VirtioPciIsrBits:
    QUEUE: int
    CONFIG: int


class QemuVirtioPciLayout:
    """Where QEMU puts things in a virtio-pci function (BAR indices, modern regions)."""

    legacy_io_bar: int
    msix_bar: int
    modern_mem_bar: int
    common_offset: int
    common_size: int
    isr_offset: int
    isr_size: int
    device_offset: int
    device_size: int
    notify_offset: int
    notify_off_multiplier: int
    queue_max: int
    subsystem_id_modern: int
    default_vectors: int
    max_vectors: int


PCI_CAP = _bind(VirtioPciCapTypes, _TRANSPORTS["pci"]["cfg_type"], "transports.toml [pci.cfg_type]")
PCI_ISR = _bind(VirtioPciIsrBits, _TRANSPORTS["pci"]["isr"], "transports.toml [pci.isr]")
QEMU_PCI = _bind(QemuVirtioPciLayout, _TRANSPORTS["pci"]["qemu"], "transports.toml [pci.qemu]")


# --------------------------------------------------------------------------- PCI

_PCI = load_toml("pci.toml")


class PciConfigNumbers:
    legacy_size: int
    express_size: int
    first_capability: int
    ecam_bus_shift: int
    ecam_device_shift: int
    ecam_function_shift: int
    devices_per_bus: int
    functions_per_device: int
    min_io: int
    buses: int
    absent_vendor: int
    header_type_mask: int
    header_type_multifunction: int
    header_type_normal: int
    header_type_bridge: int
    capability_ttl: int


class PciCommandBits:
    IO: int
    MEMORY: int
    MASTER: int
    PARITY: int
    SERR: int
    INTX_DISABLE: int


class PciStatusBits:
    INTERRUPT: int
    CAP_LIST: int


class PciBarBits:
    count: int
    SPACE_IO: int
    MEM_TYPE_MASK: int
    MEM_TYPE_32: int
    MEM_TYPE_64: int
    MEM_PREFETCH: int
    io_flag_bits: int
    mem_flag_bits: int
    io_space_size: int


class PciCapIds:
    PM: int
    VNDR: int
    EXP: int
    MSIX: int


class MsixBits:
    table_size_mask: int
    FUNCTION_MASK: int
    ENABLE: int
    bir_mask: int
    ENTRY_MASKED: int
    max_vectors: int


class PciInterruptPins:
    INTA: int


class Conf1Numbers:
    address_port: int
    data_port: int
    ENABLE: int
    bus_shift: int
    device_shift: int
    function_shift: int
    register_mask: int


class MsiNumbers:
    x86_doorbell: int
    x86_doorbell_size: int


class PciClasses:
    bridge_host: int
    storage_scsi: int
    network_ethernet: int
    communication_other: int
    others: int


class PciIds:
    intel_vendor: int
    q35_host_bridge: int
    redhat_vendor: int
    gpex_host_bridge: int


PCI_CFG = _bind(PciConfigNumbers, _PCI["config"], "pci.toml [config]")
PCI_CMD = _bind(PciCommandBits, _PCI["command"], "pci.toml [command]")
PCI_STATUS = _bind(PciStatusBits, _PCI["status"], "pci.toml [status]")
PCI_BAR = _bind(PciBarBits, _PCI["bar"], "pci.toml [bar]")
PCI_CAP_ID = _bind(PciCapIds, _PCI["cap_id"], "pci.toml [cap_id]")
MSIX = _bind(MsixBits, _PCI["msix"], "pci.toml [msix]")
PCI_PIN = _bind(PciInterruptPins, _PCI["interrupt_pin"], "pci.toml [interrupt_pin]")
CONF1 = _bind(Conf1Numbers, _PCI["conf1"], "pci.toml [conf1]")
MSI = _bind(MsiNumbers, _PCI["msi"], "pci.toml [msi]")
PCI_CLASS = _bind(PciClasses, _PCI["class"], "pci.toml [class]")
PCI_IDS = _bind(PciIds, _PCI["ids"], "pci.toml [ids]")


def legacy_only_transport_features() -> int:
    """Mask of the transport bits that exist only on the legacy interface (QEMU hides
    them from the modern one: VIRTIO_LEGACY_FEATURES)."""
    m = 0
    for fb in FEATURES.features:
        if fb.scope == "transport" and fb.legacy_only:
            m |= fb.mask
    return m


# --------------------------------------------------------------------------- vhost-user

_VHOST_USER = load_toml("vhost_user.toml")


class VhostUserHeaderFlags:
    """The flags word of a vhost-user message header."""

    version: int
    version_mask: int
    reply: int
    need_reply: int


class VhostUserLimits:
    """Protocol numbers (vhost_user.toml) and our per-message bounds (limits.toml)."""

    max_mem_regions: int
    max_config_size: int
    max_payload: int
    max_fds: int


class VhostUserVringBits:
    index_mask: int
    nofd: int


class VhostUserVirtioFeatures:
    """Feature bits vhost reserves in the virtio feature word."""

    PROTOCOL_FEATURES: int
    LOG_ALL: int


class VhostUserProtocolFeatures:
    MQ: int
    LOG_SHMFD: int
    RARP: int
    REPLY_ACK: int
    NET_MTU: int
    BACKEND_REQ: int
    CROSS_ENDIAN: int
    CRYPTO_SESSION: int
    PAGEFAULT: int
    CONFIG: int
    BACKEND_SEND_FD: int
    HOST_NOTIFIER: int
    INFLIGHT_SHMFD: int
    RESET_DEVICE: int
    INBAND_NOTIFICATIONS: int
    CONFIGURE_MEM_SLOTS: int
    STATUS: int


class VhostUserRequests:
    """Front-end -> back-end request numbers (the ones this back-end acts on)."""

    GET_FEATURES: int
    SET_FEATURES: int
    SET_OWNER: int
    RESET_OWNER: int
    SET_MEM_TABLE: int
    SET_LOG_BASE: int
    SET_LOG_FD: int
    SET_VRING_NUM: int
    SET_VRING_ADDR: int
    SET_VRING_BASE: int
    GET_VRING_BASE: int
    SET_VRING_KICK: int
    SET_VRING_CALL: int
    SET_VRING_ERR: int
    GET_PROTOCOL_FEATURES: int
    SET_PROTOCOL_FEATURES: int
    GET_QUEUE_NUM: int
    SET_VRING_ENABLE: int
    SET_BACKEND_REQ_FD: int
    IOTLB_MSG: int
    GET_CONFIG: int
    SET_CONFIG: int
    GET_INFLIGHT_FD: int
    RESET_DEVICE: int
    GET_MAX_MEM_SLOTS: int
    SET_STATUS: int
    GET_STATUS: int


class VhostUserBackendRequests:
    """Back-end -> front-end requests on the back-end (slave) channel."""

    IOTLB_MSG: int
    CONFIG_CHANGE_MSG: int
    VRING_HOST_NOTIFIER_MSG: int


class VhostIotlb:
    """struct vhost_iotlb_msg's type and perm values (linux/vhost_types.h)."""

    MISS: int
    UPDATE: int
    INVALIDATE: int
    ACCESS_FAIL: int
    PERM_RO: int
    PERM_WO: int
    PERM_RW: int


VU_FLAGS = _bind(VhostUserHeaderFlags, _VHOST_USER["header"], "vhost_user.toml [header]")
if set(_VHOST_USER["limits"]) & set(_LIMITS["vhost_user"]):
    raise SpecDataError("vhost_user.toml [limits] and limits.toml [vhost_user] both set a key: keep one")
VU_LIMITS = _bind(
    VhostUserLimits,
    {**_VHOST_USER["limits"], **_LIMITS["vhost_user"]},
    "vhost_user.toml [limits] + limits.toml [vhost_user]",
)
VU_VRING = _bind(VhostUserVringBits, _VHOST_USER["vring"], "vhost_user.toml [vring]")
VU_F = _bind(VhostUserVirtioFeatures, _VHOST_USER["virtio_features"], "vhost_user.toml [virtio_features]")
VU_PROTOCOL_F = _bind(
    VhostUserProtocolFeatures, _VHOST_USER["protocol_features"], "vhost_user.toml [protocol_features]"
)
VU_REQ = _bind(VhostUserRequests, _VHOST_USER["request"], "vhost_user.toml [request]")
#: every request number -> its name, for logs and reports
VU_REQUEST_NAMES: dict[int, str] = {int(v): str(k) for k, v in _VHOST_USER["request"].items()}
VU_BACKEND_REQ = _bind(
    VhostUserBackendRequests, _VHOST_USER["backend_request"], "vhost_user.toml [backend_request]"
)
VU_IOTLB = _bind(VhostIotlb, _VHOST_USER["iotlb"], "vhost_user.toml [iotlb]")
#: requests answered with a payload (vhost_user.toml [replies])
VU_REPLY_REQUESTS: frozenset[int] = frozenset(
    int(_VHOST_USER["request"][name]) for name in _VHOST_USER["replies"]["requests"]
)


def expects_reply(request: int) -> bool:
    """Whether the front-end waits for an answer payload to ``request``."""
    return request in VU_REPLY_REQUESTS
