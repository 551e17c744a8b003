"""Every binary layout the simulator speaks, declared once with construct.

The declarations are the single source of truth for sizes and offsets. Hot paths (the ring
walkers, the register decoders) must not pay construct's parsing cost per access, so
:func:`fast_codec` derives a :class:`struct.Struct` from a flat construct declaration and
:func:`field_offsets` derives each field's offset. ``tests/core/test_layouts.py`` proves the fast
codecs and the construct declarations agree byte for byte.

Ring structures, device config and request headers exist in two byte orders: virtio 1.x is
little-endian everywhere, while the legacy interface uses the guest's native order. Every
such declaration is therefore built by a function of the byte order (cached), with the
little-endian variant also bound to a module-level name for the common case.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

import construct as cs

ByteOrder = Literal["little", "big"]


class _Ints:
    """The construct integer types of one byte order."""

    def __init__(self, order: ByteOrder) -> None:
        little = order == "little"
        self.u8: Any = cs.Int8ul
        self.u16: Any = cs.Int16ul if little else cs.Int16ub
        self.u32: Any = cs.Int32ul if little else cs.Int32ub
        self.u64: Any = cs.Int64ul if little else cs.Int64ub


def _ints(order: ByteOrder) -> _Ints:
    if order not in ("little", "big"):
        raise ValueError(f"byte order must be 'little' or 'big', not {order!r}")
    return _Ints(order)


# --------------------------------------------------------------------------- split ring (2.7)


@cache
def virtq_desc(order: ByteOrder = "little") -> Any:
    """struct virtq_desc: one 16-byte descriptor table entry."""
    i = _ints(order)
    return cs.Struct("addr" / i.u64, "len" / i.u32, "flags" / i.u16, "next" / i.u16)


@cache
def virtq_ring_header(order: ByteOrder = "little") -> Any:
    """The flags/idx pair that opens both the avail and the used ring."""
    i = _ints(order)
    return cs.Struct("flags" / i.u16, "idx" / i.u16)


@cache
def virtq_used_elem(order: ByteOrder = "little") -> Any:
    """struct virtq_used_elem: id is le32 only for padding, its value is a head index."""
    i = _ints(order)
    return cs.Struct("id" / i.u32, "len" / i.u32)


@cache
def virtq_avail(queue_size: int, order: ByteOrder = "little") -> Any:
    """struct virtq_avail including the trailing used_event (EVENT_IDX)."""
    i = _ints(order)
    return cs.Struct(
        "flags" / i.u16,
        "idx" / i.u16,
        "ring" / cs.Array(queue_size, i.u16),
        "used_event" / i.u16,
    )


@cache
def virtq_used(queue_size: int, order: ByteOrder = "little") -> Any:
    """struct virtq_used including the trailing avail_event (EVENT_IDX)."""
    i = _ints(order)
    return cs.Struct(
        "flags" / i.u16,
        "idx" / i.u16,
        "ring" / cs.Array(queue_size, virtq_used_elem(order)),
        "avail_event" / i.u16,
    )


VirtqDesc = virtq_desc("little")
VirtqRingHeader = virtq_ring_header("little")
VirtqUsedElem = virtq_used_elem("little")
VirtqRingIndex = cs.Int16ul  # one avail ring entry, used_event, avail_event

DESC_SIZE: int = VirtqDesc.sizeof()
RING_HEADER_SIZE: int = VirtqRingHeader.sizeof()
AVAIL_ENTRY_SIZE: int = VirtqRingIndex.sizeof()
USED_ELEM_SIZE: int = VirtqUsedElem.sizeof()
RING_IDX_OFFSET: int = 2  # offset of idx within the ring header; checked in tests


def avail_entry_offset(slot: int) -> int:
    return RING_HEADER_SIZE + AVAIL_ENTRY_SIZE * slot


def used_event_offset(queue_size: int) -> int:
    return avail_entry_offset(queue_size)


def used_elem_offset(slot: int) -> int:
    return RING_HEADER_SIZE + USED_ELEM_SIZE * slot


def avail_event_offset(queue_size: int) -> int:
    return used_elem_offset(queue_size)


def desc_table_size(queue_size: int) -> int:
    return DESC_SIZE * queue_size


def avail_ring_size(queue_size: int) -> int:
    """Bytes of the driver area, used_event included."""
    return used_event_offset(queue_size) + AVAIL_ENTRY_SIZE


def used_ring_size(queue_size: int) -> int:
    """Bytes of the device area, avail_event included."""
    return avail_event_offset(queue_size) + AVAIL_ENTRY_SIZE


def align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def legacy_used_ring_offset(queue_size: int, align: int) -> int:
    """Offset of the used ring in one contiguous legacy vring (spec 2.7 legacy layout)."""
    return align_up(desc_table_size(queue_size) + avail_ring_size(queue_size), align)


def legacy_vring_size(queue_size: int, align: int) -> int:
    """Total bytes of a contiguous legacy vring, the spec's virtq_size(): both parts aligned.

    Linux's vring_size() leaves the used part unaligned (10246 for Q=256, A=4096, where this
    gives 12288); rounded up to the alignment the two agree.
    """
    return legacy_used_ring_offset(queue_size, align) + align_up(used_ring_size(queue_size), align)


# --------------------------------------------------------------------------- packed ring (2.8)
# The packed ring only exists with VERSION_1, so its structures are little-endian only.

PvirtqDesc = cs.Struct(
    "addr" / cs.Int64ul,  # buffer address (unused in used descriptors)
    "len" / cs.Int32ul,  # buffer length; in a used descriptor: bytes written
    "id" / cs.Int16ul,  # buffer id (meaningful in the last descriptor of a chain)
    "flags" / cs.Int16ul,  # NEXT, WRITE, INDIRECT, AVAIL, USED
)
PvirtqEventSuppress = cs.Struct(
    "desc" / cs.Int16ul,  # off_wrap: event offset (bits 0-14) and wrap counter (bit 15)
    "flags" / cs.Int16ul,  # desc_event_flags: ENABLE, DISABLE or DESC (bits 0-1)
)

PACKED_DESC_SIZE: int = PvirtqDesc.sizeof()
EVENT_SUPPRESS_SIZE: int = PvirtqEventSuppress.sizeof()
PACKED_DESC_ALIGN = 16  # 2.8.10.1: descriptor ring alignment
EVENT_SUPPRESS_ALIGN = 4  # 2.8.10.1: each event suppression structure


def packed_ring_size(queue_size: int) -> int:
    """Bytes of the packed descriptor ring."""
    return PACKED_DESC_SIZE * queue_size


# --------------------------------------------------------------------------- virtio-mmio (4.2)

# One declaration of the register block; padding names are the gaps the spec leaves
# undefined. Offsets are derived from it, never typed twice.
MmioRegistersV2 = cs.Struct(
    "MagicValue" / cs.Int32ul,  # 0x000
    "Version" / cs.Int32ul,  # 0x004
    "DeviceID" / cs.Int32ul,  # 0x008
    "VendorID" / cs.Int32ul,  # 0x00c
    "DeviceFeatures" / cs.Int32ul,  # 0x010
    "DeviceFeaturesSel" / cs.Int32ul,  # 0x014
    "_gap018" / cs.Bytes(8),
    "DriverFeatures" / cs.Int32ul,  # 0x020
    "DriverFeaturesSel" / cs.Int32ul,  # 0x024
    "GuestPageSize" / cs.Int32ul,  # 0x028 (v1 only)
    "_gap02c" / cs.Bytes(4),
    "QueueSel" / cs.Int32ul,  # 0x030
    "QueueSizeMax" / cs.Int32ul,  # 0x034
    "QueueSize" / cs.Int32ul,  # 0x038
    "QueueAlign" / cs.Int32ul,  # 0x03c (v1 only)
    "QueuePFN" / cs.Int32ul,  # 0x040 (v1 only)
    "QueueReady" / cs.Int32ul,  # 0x044
    "_gap048" / cs.Bytes(8),
    "QueueNotify" / cs.Int32ul,  # 0x050
    "_gap054" / cs.Bytes(12),
    "InterruptStatus" / cs.Int32ul,  # 0x060
    "InterruptACK" / cs.Int32ul,  # 0x064
    "_gap068" / cs.Bytes(8),
    "Status" / cs.Int32ul,  # 0x070
    "_gap074" / cs.Bytes(12),
    "QueueDescLow" / cs.Int32ul,  # 0x080
    "QueueDescHigh" / cs.Int32ul,  # 0x084
    "_gap088" / cs.Bytes(8),
    "QueueDriverLow" / cs.Int32ul,  # 0x090
    "QueueDriverHigh" / cs.Int32ul,  # 0x094
    "_gap098" / cs.Bytes(8),
    "QueueDeviceLow" / cs.Int32ul,  # 0x0a0
    "QueueDeviceHigh" / cs.Int32ul,  # 0x0a4
    "_gap0a8" / cs.Bytes(4),
    "SHMSel" / cs.Int32ul,  # 0x0ac
    "SHMLenLow" / cs.Int32ul,  # 0x0b0
    "SHMLenHigh" / cs.Int32ul,  # 0x0b4
    "SHMBaseLow" / cs.Int32ul,  # 0x0b8
    "SHMBaseHigh" / cs.Int32ul,  # 0x0bc
    "QueueReset" / cs.Int32ul,  # 0x0c0
    "_gap0c4" / cs.Bytes(0x38),
    "ConfigGeneration" / cs.Int32ul,  # 0x0fc
)

MMIO_REGISTER_WIDTH = 4
MMIO_CONFIG_OFFSET: int = MmioRegistersV2.sizeof()  # 0x100: device config starts here

# Which registers each version defines (the rest of the block is undefined for it).
MMIO_V1_REGISTERS = frozenset(
    {
        "MagicValue", "Version", "DeviceID", "VendorID", "DeviceFeatures",
        "DeviceFeaturesSel", "DriverFeatures", "DriverFeaturesSel", "GuestPageSize",
        "QueueSel", "QueueSizeMax", "QueueSize", "QueueAlign", "QueuePFN", "QueueNotify",
        "InterruptStatus", "InterruptACK", "Status",
    }
)  # fmt: skip
MMIO_V2_REGISTERS = frozenset(
    {
        "MagicValue", "Version", "DeviceID", "VendorID", "DeviceFeatures",
        "DeviceFeaturesSel", "DriverFeatures", "DriverFeaturesSel", "QueueSel",
        "QueueSizeMax", "QueueSize", "QueueReady", "QueueNotify", "InterruptStatus",
        "InterruptACK", "Status", "QueueDescLow", "QueueDescHigh", "QueueDriverLow",
        "QueueDriverHigh", "QueueDeviceLow", "QueueDeviceHigh", "SHMSel", "SHMLenLow",
        "SHMLenHigh", "SHMBaseLow", "SHMBaseHigh", "QueueReset", "ConfigGeneration",
    }
)  # fmt: skip


# --------------------------------------------------------------------------- PCI (PCI 3.0 ch. 6)

# Type 0 configuration header (the first 64 bytes of every function's config space).
PciConfigHeader = cs.Struct(
    "vendor_id" / cs.Int16ul,  # 0x00
    "device_id" / cs.Int16ul,  # 0x02
    "command" / cs.Int16ul,  # 0x04
    "status" / cs.Int16ul,  # 0x06
    "revision_id" / cs.Int8ul,  # 0x08
    "prog_if" / cs.Int8ul,  # 0x09
    "subclass" / cs.Int8ul,  # 0x0a
    "class_code" / cs.Int8ul,  # 0x0b
    "cache_line_size" / cs.Int8ul,  # 0x0c
    "latency_timer" / cs.Int8ul,  # 0x0d
    "header_type" / cs.Int8ul,  # 0x0e
    "bist" / cs.Int8ul,  # 0x0f
    "bar0" / cs.Int32ul,  # 0x10
    "bar1" / cs.Int32ul,
    "bar2" / cs.Int32ul,
    "bar3" / cs.Int32ul,
    "bar4" / cs.Int32ul,
    "bar5" / cs.Int32ul,
    "cardbus_cis" / cs.Int32ul,  # 0x28
    "subsystem_vendor_id" / cs.Int16ul,  # 0x2c
    "subsystem_id" / cs.Int16ul,  # 0x2e
    "expansion_rom" / cs.Int32ul,  # 0x30
    "capabilities_ptr" / cs.Int8ul,  # 0x34
    "_reserved" / cs.Bytes(7),
    "interrupt_line" / cs.Int8ul,  # 0x3c
    "interrupt_pin" / cs.Int8ul,  # 0x3d
    "min_gnt" / cs.Int8ul,
    "max_lat" / cs.Int8ul,
)

# The part of a type 1 (PCI-to-PCI bridge) header that enumeration needs: bus numbers.
PciBridgeBusNumbers = cs.Struct(
    "_common" / cs.Bytes(0x10),
    "bar0" / cs.Int32ul,
    "bar1" / cs.Int32ul,
    "primary_bus" / cs.Int8ul,  # 0x18
    "secondary_bus" / cs.Int8ul,  # 0x19
    "subordinate_bus" / cs.Int8ul,  # 0x1a
    "secondary_latency" / cs.Int8ul,
)

PciCapHeader = cs.Struct("cap_id" / cs.Int8ul, "cap_next" / cs.Int8ul)

# MSI-X capability (PCI 3.0 6.8.2) and one table entry.
MsixCapability = cs.Struct(
    "cap_id" / cs.Int8ul,
    "cap_next" / cs.Int8ul,
    "message_control" / cs.Int16ul,  # table size N-1, function mask, enable
    "table" / cs.Int32ul,  # BIR in bits 2:0, offset in the rest
    "pba" / cs.Int32ul,
)
MsixTableEntry = cs.Struct(
    "msg_addr_lo" / cs.Int32ul,
    "msg_addr_hi" / cs.Int32ul,
    "msg_data" / cs.Int32ul,
    "vector_control" / cs.Int32ul,
)
MsixPbaQword = cs.Int64ul  # pending bits, one per vector, in 64-bit words

# --------------------------------------------------------------------------- virtio-pci (4.1)

# struct virtio_pci_cap and the capabilities that extend it (flat declarations so that
# field_offsets/fast_codec work on them).
_VIRTIO_PCI_CAP_FIELDS = (
    "cap_vndr" / cs.Int8ul,  # PCI_CAP_ID_VNDR
    "cap_next" / cs.Int8ul,
    "cap_len" / cs.Int8ul,
    "cfg_type" / cs.Int8ul,
    "bar" / cs.Int8ul,
    "id" / cs.Int8ul,
    "padding" / cs.Bytes(2),
    "offset" / cs.Int32ul,
    "length" / cs.Int32ul,
)
VirtioPciCap = cs.Struct(*_VIRTIO_PCI_CAP_FIELDS)
VirtioPciNotifyCap = cs.Struct(*_VIRTIO_PCI_CAP_FIELDS, "notify_off_multiplier" / cs.Int32ul)
VirtioPciCfgCap = cs.Struct(*_VIRTIO_PCI_CAP_FIELDS, "pci_cfg_data" / cs.Bytes(4))

# struct virtio_pci_common_cfg, 1.3 size (64 bytes).
VirtioPciCommonCfg = cs.Struct(
    "device_feature_select" / cs.Int32ul,  # 0x00
    "device_feature" / cs.Int32ul,  # 0x04
    "driver_feature_select" / cs.Int32ul,  # 0x08
    "driver_feature" / cs.Int32ul,  # 0x0c
    "config_msix_vector" / cs.Int16ul,  # 0x10
    "num_queues" / cs.Int16ul,  # 0x12
    "device_status" / cs.Int8ul,  # 0x14
    "config_generation" / cs.Int8ul,  # 0x15
    "queue_select" / cs.Int16ul,  # 0x16
    "queue_size" / cs.Int16ul,  # 0x18
    "queue_msix_vector" / cs.Int16ul,  # 0x1a
    "queue_enable" / cs.Int16ul,  # 0x1c
    "queue_notify_off" / cs.Int16ul,  # 0x1e
    "queue_desc" / cs.Int64ul,  # 0x20
    "queue_driver" / cs.Int64ul,  # 0x28
    "queue_device" / cs.Int64ul,  # 0x30
    "queue_notify_data" / cs.Int16ul,  # 0x38 (1.2; queue_notif_config_data in 1.4)
    "queue_reset" / cs.Int16ul,  # 0x3a (1.2)
    "admin_queue_index" / cs.Int16ul,  # 0x3c (1.3)
    "admin_queue_num" / cs.Int16ul,  # 0x3e (1.3)
)

# The legacy header at the start of I/O BAR 0 (virtio 4.1.4.10). The two MSI-X vector
# registers exist only while MSI-X is enabled; device config follows the header.
VirtioPciLegacyHeader = cs.Struct(
    "host_features" / cs.Int32ul,  # 0x00
    "guest_features" / cs.Int32ul,  # 0x04
    "queue_pfn" / cs.Int32ul,  # 0x08
    "queue_num" / cs.Int16ul,  # 0x0c
    "queue_sel" / cs.Int16ul,  # 0x0e
    "queue_notify" / cs.Int16ul,  # 0x10
    "status" / cs.Int8ul,  # 0x12
    "isr" / cs.Int8ul,  # 0x13
    "config_msix_vector" / cs.Int16ul,  # 0x14 (MSI-X enabled only)
    "queue_msix_vector" / cs.Int16ul,  # 0x16 (MSI-X enabled only)
)


# --------------------------------------------------------------------------- virtio-blk (5.2)


@cache
def virtio_blk_config(order: ByteOrder = "little") -> Any:
    """struct virtio_blk_config (96 bytes, virtio 1.4)."""
    i = _ints(order)
    return cs.Struct(
        "capacity" / i.u64,
        "size_max" / i.u32,
        "seg_max" / i.u32,
        "cylinders" / i.u16,
        "heads" / i.u8,
        "sectors" / i.u8,
        "blk_size" / i.u32,
        "physical_block_exp" / i.u8,
        "alignment_offset" / i.u8,
        "min_io_size" / i.u16,
        "opt_io_size" / i.u32,
        "writeback" / i.u8,
        "unused0" / i.u8,
        "num_queues" / i.u16,
        "max_discard_sectors" / i.u32,
        "max_discard_seg" / i.u32,
        "discard_sector_alignment" / i.u32,
        "max_write_zeroes_sectors" / i.u32,
        "max_write_zeroes_seg" / i.u32,
        "write_zeroes_may_unmap" / i.u8,
        "unused1" / cs.Bytes(3),
        "max_secure_erase_sectors" / i.u32,
        "max_secure_erase_seg" / i.u32,
        "secure_erase_sector_alignment" / i.u32,
        "zone_sectors" / i.u32,
        "max_open_zones" / i.u32,
        "max_active_zones" / i.u32,
        "max_append_sectors" / i.u32,
        "write_granularity" / i.u32,
        "zoned_model" / i.u8,
        "unused2" / cs.Bytes(3),
    )


@cache
def virtio_blk_req_header(order: ByteOrder = "little") -> Any:
    """The device-readable head of struct virtio_blk_req (type, reserved/ioprio, sector)."""
    i = _ints(order)
    return cs.Struct("type" / i.u32, "reserved" / i.u32, "sector" / i.u64)


VirtioBlkConfig = virtio_blk_config("little")
VirtioBlkReqHeader = virtio_blk_req_header("little")
VirtioBlkStatus = cs.Int8ul  # the single device-writable status byte closing a request
BLK_REQ_HEADER_SIZE: int = VirtioBlkReqHeader.sizeof()
BLK_STATUS_SIZE: int = VirtioBlkStatus.sizeof()

# --------------------------------------------------------------------------- virtio-rng (5.4)

VirtioRngConfig = cs.Struct()  # the entropy device has no configuration space


# --------------------------------------------------------------------------- virtio-iommu (5.13)

VirtioIommuConfig = cs.Struct(
    "page_size_mask" / cs.Int64ul,
    "input_start" / cs.Int64ul,
    "input_end" / cs.Int64ul,
    "domain_start" / cs.Int32ul,
    "domain_end" / cs.Int32ul,
    "probe_size" / cs.Int32ul,
    "bypass" / cs.Int8ul,
    "reserved" / cs.Bytes(3),
)
IommuReqHead = cs.Struct("type" / cs.Int8ul, "reserved" / cs.Bytes(3))
IommuReqTail = cs.Struct("status" / cs.Int8ul, "reserved" / cs.Bytes(3))
# Request bodies: what follows the head and precedes the tail (device-readable part).
IommuAttachBody = cs.Struct(
    "domain" / cs.Int32ul, "endpoint" / cs.Int32ul, "flags" / cs.Int32ul, "reserved" / cs.Bytes(4)
)
IommuDetachBody = cs.Struct("domain" / cs.Int32ul, "endpoint" / cs.Int32ul, "reserved" / cs.Bytes(8))
IommuMapBody = cs.Struct(
    "domain" / cs.Int32ul,
    "virt_start" / cs.Int64ul,
    "virt_end" / cs.Int64ul,
    "phys_start" / cs.Int64ul,
    "flags" / cs.Int32ul,
)
IommuUnmapBody = cs.Struct(
    "domain" / cs.Int32ul, "virt_start" / cs.Int64ul, "virt_end" / cs.Int64ul, "reserved" / cs.Bytes(4)
)
IommuProbeBody = cs.Struct("endpoint" / cs.Int32ul, "reserved" / cs.Bytes(64))
IommuPropertyHeader = cs.Struct("type" / cs.Int16ul, "length" / cs.Int16ul)
IommuResvMem = cs.Struct(
    "subtype" / cs.Int8ul, "reserved" / cs.Bytes(3), "start" / cs.Int64ul, "end" / cs.Int64ul
)
IommuFault = cs.Struct(
    "reason" / cs.Int8ul,
    "reserved" / cs.Bytes(3),
    "flags" / cs.Int32ul,
    "endpoint" / cs.Int32ul,
    "reserved1" / cs.Int32ul,
    "address" / cs.Int64ul,
)
IOMMU_HEAD_SIZE: int = IommuReqHead.sizeof()
IOMMU_TAIL_SIZE: int = IommuReqTail.sizeof()
IOMMU_PROPERTY_TYPE_MASK = 0xFFF  # le16 {type:12, reserved:4}
IOMMU_BODIES = {
    "ATTACH": IommuAttachBody,
    "DETACH": IommuDetachBody,
    "MAP": IommuMapBody,
    "UNMAP": IommuUnmapBody,
    "PROBE": IommuProbeBody,
}


# --------------------------------------------------------------------------- derived codecs


def _format_char(sub: Any) -> str:
    if isinstance(sub, cs.FormatField):
        return str(sub.fmtstr[1:])
    if isinstance(sub, cs.Bytes) and isinstance(sub.length, int):
        return f"{sub.length}s"
    if isinstance(sub, cs.Padded) and isinstance(sub.length, int):
        return f"{sub.length}x"
    raise TypeError(f"layout field {sub!r} has no fixed struct format")


def _byte_order_prefix(declaration: Any) -> str:
    orders = {
        sub.fmtstr[0]
        for sub in (getattr(s, "subcon", s) for s in declaration.subcons)
        if isinstance(sub, cs.FormatField) and sub.sizeof() > 1
    }
    if len(orders) > 1:
        raise TypeError("layout mixes byte orders")
    return orders.pop() if orders else "<"


def fast_codec(declaration: Any) -> struct.Struct:
    """A struct.Struct equivalent to a flat construct Struct of fixed-size fields."""
    fmt = "".join(_format_char(getattr(s, "subcon", s)) for s in declaration.subcons)
    return struct.Struct(_byte_order_prefix(declaration) + fmt)


def field_offsets(declaration: Any) -> dict[str, int]:
    """Byte offset of every named field of a flat construct Struct."""
    offsets: dict[str, int] = {}
    pos = 0
    for sub in declaration.subcons:
        if sub.name is not None:
            offsets[sub.name] = pos
        pos += sub.sizeof()
    return offsets


@cache
def _flat_builder(declaration: Any) -> tuple[struct.Struct, tuple[str, ...]]:
    names = tuple(s.name for s in declaration.subcons if not isinstance(getattr(s, "subcon", s), cs.Padded))
    return fast_codec(declaration), names


def build_flat(declaration: Any, values: Mapping[str, object]) -> bytes:
    """``declaration.build(values)`` for a flat Struct of fixed-size fields, through its
    struct codec: a device builds its config space on every config read."""
    codec, names = _flat_builder(declaration)
    return codec.pack(*[values[n] for n in names])


MMIO_OFFSETS: dict[str, int] = field_offsets(MmioRegistersV2)
PACKED_DESC_OFFSETS: dict[str, int] = field_offsets(PvirtqDesc)
EVENT_SUPPRESS_OFFSETS: dict[str, int] = field_offsets(PvirtqEventSuppress)
MMIO_NAMES: dict[int, str] = {off: name for name, off in MMIO_OFFSETS.items() if name[0] != "_"}


@cache
def desc_codec(order: ByteOrder = "little") -> struct.Struct:
    return fast_codec(virtq_desc(order))


@cache
def used_elem_codec(order: ByteOrder = "little") -> struct.Struct:
    return fast_codec(virtq_used_elem(order))


@cache
def ring_index_codec(order: ByteOrder = "little") -> struct.Struct:
    return struct.Struct(("<" if order == "little" else ">") + "H")


@cache
def blk_req_header_codec(order: ByteOrder = "little") -> struct.Struct:
    return fast_codec(virtio_blk_req_header(order))


@cache
def blk_discard_codec(order: ByteOrder = "little") -> struct.Struct:
    """struct virtio_blk_discard_write_zeroes: sector (u64), num_sectors (u32), flags (u32),
    little-endian (virtio 1.4 5.2.6; Linux writes it with cpu_to_le* on every interface)."""
    return struct.Struct(("<" if order == "little" else ">") + "QII")


# --------------------------------------------------------------------------- virtio-net (5.1)


@cache
def virtio_net_hdr(order: ByteOrder = "little", num_buffers: bool = True) -> Any:
    """struct virtio_net_hdr: 10 bytes, or 12 with num_buffers (VERSION_1 or MRG_RXBUF).

    Which size applies is :func:`virtio_sim.netproto.net_hdr_len`'s decision; the
    fields of the legacy interface are guest-native-endian, hence ``order``.
    """
    i = _ints(order)
    fields = [
        "flags" / i.u8,
        "gso_type" / i.u8,
        "hdr_len" / i.u16,
        "gso_size" / i.u16,
        "csum_start" / i.u16,
        "csum_offset" / i.u16,
    ]
    if num_buffers:
        fields.append("num_buffers" / i.u16)
    return cs.Struct(*fields)


@cache
def virtio_net_config(order: ByteOrder = "little") -> Any:
    """struct virtio_net_config (28 bytes, virtio 1.4); devices expose a feature-sized prefix."""
    i = _ints(order)
    return cs.Struct(
        "mac" / cs.Bytes(6),
        "status" / i.u16,
        "max_virtqueue_pairs" / i.u16,
        "mtu" / i.u16,
        "speed" / i.u32,
        "duplex" / i.u8,
        "rss_max_key_size" / i.u8,
        "rss_max_indirection_table_length" / i.u16,
        "supported_hash_types" / i.u32,
        "supported_tunnel_types" / i.u32,
    )


VirtioNetHdr = virtio_net_hdr("little", True)
VirtioNetHdrLegacy = virtio_net_hdr("little", False)
VirtioNetConfig = virtio_net_config("little")
NET_HDR_SIZE: int = VirtioNetHdr.sizeof()  # 12
NET_HDR_LEGACY_SIZE: int = VirtioNetHdrLegacy.sizeof()  # 10
NET_NUM_BUFFERS_OFFSET: int = NET_HDR_LEGACY_SIZE  # num_buffers follows the legacy fields
NET_CONFIG_OFFSETS: dict[str, int] = field_offsets(VirtioNetConfig)

# The control command head (class, command) and its closing ack byte (5.1.6.5).
VirtioNetCtrlHdr = cs.Struct("class_" / cs.Int8ul, "cmd" / cs.Int8ul)
VirtioNetCtrlAck = cs.Int8ul
NET_CTRL_HDR_SIZE: int = VirtioNetCtrlHdr.sizeof()
NET_CTRL_ACK_SIZE: int = VirtioNetCtrlAck.sizeof()


@cache
def net_ctrl_mac_entries(order: ByteOrder = "little") -> Any:
    """The le32 count opening each of the two MAC_TABLE_SET tables."""
    return _ints(order).u32


@cache
def net_ctrl_mq_pairs(order: ByteOrder = "little") -> Any:
    """struct virtio_net_ctrl_mq: le16 virtqueue_pairs."""
    return _ints(order).u16


NetCtrlOnOff = cs.Int8ul  # the one data byte of the RX class commands


@cache
def net_hdr_codec(order: ByteOrder = "little", num_buffers: bool = True) -> struct.Struct:
    return fast_codec(virtio_net_hdr(order, num_buffers))


# --------------------------------------------------------------------------- virtio-console (5.3)


@cache
def virtio_console_config(order: ByteOrder = "little") -> Any:
    """struct virtio_console_config (12 bytes)."""
    i = _ints(order)
    return cs.Struct("cols" / i.u16, "rows" / i.u16, "max_nr_ports" / i.u32, "emerg_wr" / i.u32)


@cache
def virtio_console_control(order: ByteOrder = "little") -> Any:
    """struct virtio_console_control: one control message (8 bytes, then event data)."""
    i = _ints(order)
    return cs.Struct("id" / i.u32, "event" / i.u16, "value" / i.u16)


@cache
def virtio_console_resize(order: ByteOrder = "little") -> Any:
    """The data following a RESIZE control message: struct virtio_console_resize."""
    i = _ints(order)
    return cs.Struct("cols" / i.u16, "rows" / i.u16)


VirtioConsoleConfig = virtio_console_config("little")
VirtioConsoleControl = virtio_console_control("little")
CONSOLE_CONFIG_OFFSETS: dict[str, int] = field_offsets(VirtioConsoleConfig)
CONSOLE_CONTROL_SIZE: int = VirtioConsoleControl.sizeof()


@cache
def console_control_codec(order: ByteOrder = "little") -> struct.Struct:
    return fast_codec(virtio_console_control(order))


@cache
def console_resize_codec(order: ByteOrder = "little") -> struct.Struct:
    return fast_codec(virtio_console_resize(order))


PCI_HEADER: dict[str, int] = field_offsets(PciConfigHeader)
PCI_BAR_SIZE: int = PCI_HEADER["bar1"] - PCI_HEADER["bar0"]  # a 64-bit BAR takes two
PCI_HEADER_SIZE: int = PciConfigHeader.sizeof()
PCI_BRIDGE: dict[str, int] = field_offsets(PciBridgeBusNumbers)
MSIX_CAP: dict[str, int] = field_offsets(MsixCapability)
MSIX_CAP_SIZE: int = MsixCapability.sizeof()
MSIX_ENTRY: dict[str, int] = field_offsets(MsixTableEntry)
MSIX_ENTRY_SIZE: int = MsixTableEntry.sizeof()
MSIX_PBA_WORD: int = MsixPbaQword.sizeof()
VIRTIO_CAP: dict[str, int] = field_offsets(VirtioPciNotifyCap)  # superset of virtio_pci_cap
VIRTIO_CFG_CAP: dict[str, int] = field_offsets(VirtioPciCfgCap)
COMMON_CFG: dict[str, int] = field_offsets(VirtioPciCommonCfg)
COMMON_CFG_SIZE: int = VirtioPciCommonCfg.sizeof()
COMMON_CFG_V1_0_SIZE: int = COMMON_CFG["queue_notify_data"]  # what a virtio 1.0 device has
LEGACY_HDR: dict[str, int] = field_offsets(VirtioPciLegacyHeader)
LEGACY_CONFIG_OFFSET: int = LEGACY_HDR["config_msix_vector"]  # device config, MSI-X off
LEGACY_CONFIG_OFFSET_MSIX: int = VirtioPciLegacyHeader.sizeof()  # device config, MSI-X on


def field_widths(declaration: Any) -> dict[str, int]:
    """Byte width of every named field of a flat construct Struct."""
    return {sub.name: sub.sizeof() for sub in declaration.subcons if sub.name is not None}


COMMON_CFG_WIDTH: dict[str, int] = field_widths(VirtioPciCommonCfg)
LEGACY_HDR_WIDTH: dict[str, int] = field_widths(VirtioPciLegacyHeader)
PACKED_DESC_CODEC: struct.Struct = fast_codec(PvirtqDesc)  # (addr, len, id, flags)
EVENT_SUPPRESS_CODEC: struct.Struct = fast_codec(PvirtqEventSuppress)  # (off_wrap, flags)
PACKED_U16_CODEC: struct.Struct = ring_index_codec("little")  # one flags or off_wrap word


# --------------------------------------------------------------------------- vhost-user
# QEMU docs/interop/vhost-user.rst. Always little-endian (the protocol is host-local).
# The request numbers and flag bits are data in specs/vhost_user.toml.

VhostUserHeader = cs.Struct("request" / cs.Int32ul, "flags" / cs.Int32ul, "size" / cs.Int32ul)
VhostUserU64 = cs.Struct("u64" / cs.Int64ul)  # features, protocol features, queue num, fd index
VhostUserVringState = cs.Struct("index" / cs.Int32ul, "num" / cs.Int32ul)
VhostUserVringAddr = cs.Struct(
    "index" / cs.Int32ul,
    "flags" / cs.Int32ul,  # bit 0: VHOST_VRING_F_LOG
    "desc_user_addr" / cs.Int64ul,  # front-end virtual addresses, not guest-physical
    "used_user_addr" / cs.Int64ul,
    "avail_user_addr" / cs.Int64ul,
    "log_guest_addr" / cs.Int64ul,
)
VhostUserMemoryRegion = cs.Struct(
    "guest_phys_addr" / cs.Int64ul,
    "memory_size" / cs.Int64ul,
    "userspace_addr" / cs.Int64ul,  # where the front-end mapped it: ring addresses use this
    "mmap_offset" / cs.Int64ul,  # offset of the region inside the fd passed with it
)
VhostUserMemoryHeader = cs.Struct("nregions" / cs.Int32ul, "padding" / cs.Int32ul)
VhostUserConfigHeader = cs.Struct("offset" / cs.Int32ul, "size" / cs.Int32ul, "flags" / cs.Int32ul)
# struct vhost_iotlb_msg (linux/vhost_types.h): IOTLB_MSG in both directions; the C
# struct's natural alignment pads it to 32 bytes, which is the payload size QEMU sends
VhostIotlbMsg = cs.Struct(
    "iova" / cs.Int64ul,
    "size" / cs.Int64ul,
    "uaddr" / cs.Int64ul,  # front-end virtual address (UPDATE)
    "perm" / cs.Int8ul,
    "type" / cs.Int8ul,
    "padding" / cs.Bytes(6),
)


def vhost_user_memory(nregions: int) -> Any:
    """SET_MEM_TABLE's payload: the count, padding, then ``nregions`` region records."""
    return cs.Struct(
        "nregions" / cs.Int32ul,
        "padding" / cs.Int32ul,
        "regions" / cs.Array(nregions, VhostUserMemoryRegion),
    )


def build_vhost_user_memory(regions: list[tuple[int, int, int, int]]) -> bytes:
    """SET_MEM_TABLE's payload for ``(guest_phys_addr, memory_size, userspace_addr,
    mmap_offset)`` regions, as a front-end sends it."""
    return bytes(
        vhost_user_memory(len(regions)).build(
            {
                "nregions": len(regions),
                "padding": 0,
                "regions": [
                    {"guest_phys_addr": g, "memory_size": s, "userspace_addr": u, "mmap_offset": o}
                    for g, s, u, o in regions
                ],
            }
        )
    )


def vhost_user_config(size: int) -> Any:
    """GET_CONFIG/SET_CONFIG payload: offset, size, flags, then ``size`` config bytes."""
    return cs.Struct(
        "offset" / cs.Int32ul,
        "size" / cs.Int32ul,
        "flags" / cs.Int32ul,
        "payload" / cs.Bytes(size),
    )


VHOST_USER_HEADER_SIZE: int = VhostUserHeader.sizeof()
VHOST_USER_REGION_SIZE: int = VhostUserMemoryRegion.sizeof()
VHOST_USER_MEMORY_HEADER_SIZE: int = VhostUserMemoryHeader.sizeof()
VHOST_USER_CONFIG_HEADER_SIZE: int = VhostUserConfigHeader.sizeof()
vhost_user_header_codec = fast_codec(VhostUserHeader)
vhost_user_u64_codec = fast_codec(VhostUserU64)
vhost_user_vring_state_codec = fast_codec(VhostUserVringState)
vhost_user_vring_addr_codec = fast_codec(VhostUserVringAddr)
vhost_user_region_codec = fast_codec(VhostUserMemoryRegion)
vhost_user_memory_header_codec = fast_codec(VhostUserMemoryHeader)
vhost_user_config_header_codec = fast_codec(VhostUserConfigHeader)
vhost_iotlb_msg_codec = fast_codec(VhostIotlbMsg)


# --------------------------------------------------------------------------- QEMU fw_cfg

# QEMU's firmware configuration device: the file directory (selector 0x19) is a big-endian
# count followed by these records; "etc/table-loader" is a sequence of 128-byte commands
# (little-endian) telling firmware where to place the ACPI blobs and how to link them.
FW_CFG_FILE_NAME_SIZE = 56
FwCfgFile = cs.Struct(
    "size" / cs.Int32ub,
    "select" / cs.Int16ub,
    "reserved" / cs.Int16ub,
    "name" / cs.PaddedString(FW_CFG_FILE_NAME_SIZE, "ascii"),
)
FW_CFG_FILE_SIZE: int = FwCfgFile.sizeof()
FwCfgLoaderAllocate = cs.Struct(
    "file" / cs.PaddedString(FW_CFG_FILE_NAME_SIZE, "ascii"),
    "align" / cs.Int32ul,
    "zone" / cs.Int8ul,
)
FwCfgLoaderAddPointer = cs.Struct(
    "dest_file" / cs.PaddedString(FW_CFG_FILE_NAME_SIZE, "ascii"),
    "src_file" / cs.PaddedString(FW_CFG_FILE_NAME_SIZE, "ascii"),
    "offset" / cs.Int32ul,
    "size" / cs.Int8ul,
)
FwCfgLoaderAddChecksum = cs.Struct(
    "file" / cs.PaddedString(FW_CFG_FILE_NAME_SIZE, "ascii"),
    "offset" / cs.Int32ul,
    "start" / cs.Int32ul,
    "length" / cs.Int32ul,
)
FwCfgDmaAccess = cs.Struct("control" / cs.Int32ub, "length" / cs.Int32ub, "address" / cs.Int64ub)
FW_CFG_DMA_ACCESS_SIZE: int = FwCfgDmaAccess.sizeof()
FW_CFG_LOADER_ENTRY_SIZE = 128
FwCfgLoaderEntry = cs.Struct(
    "command" / cs.Int32ul,
    "body" / cs.Bytes(FW_CFG_LOADER_ENTRY_SIZE - 4),
)
