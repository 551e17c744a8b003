"""Every binary layout the simulator speaks, declared once with construct.

The declarations are the single source of truth for sizes and offsets. Hot paths (the ring
walkers, the register decoders) must not pay construct's parsing cost per access, so
:func:`fast_codec` derives a :class:`struct.Struct` from a flat construct declaration and
:func:`field_offsets` derives each field's offset. ``tests/test_layouts.py`` proves the fast
codecs and the construct declarations agree byte for byte.

Ring structures, device config and request headers exist in two byte orders: virtio 1.x is
little-endian everywhere, while the legacy interface uses the guest's native order. Every
such declaration is therefore built by a function of the byte order (cached), with the
little-endian variant also bound to a module-level name for the common case.
"""

from __future__ import annotations

import struct
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
    """Total bytes of a contiguous legacy vring, as Linux's vring_size() computes it."""
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


PACKED_DESC_CODEC: struct.Struct = fast_codec(PvirtqDesc)  # (addr, len, id, flags)
EVENT_SUPPRESS_CODEC: struct.Struct = fast_codec(PvirtqEventSuppress)  # (off_wrap, flags)
PACKED_U16_CODEC: struct.Struct = ring_index_codec("little")  # one flags or off_wrap word
