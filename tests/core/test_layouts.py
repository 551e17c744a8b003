"""The construct declarations in layouts.py against the spec tables and the fast codecs.

Every declaration must round-trip (build -> parse gives the value back) in every byte order
it exists in, the struct.Struct codecs the hot paths use must produce byte-for-byte the same
encoding as construct, and the offsets must match the tables in virtio-layouts.md
(sections 2, 6 and 9), which are retyped here by hand on purpose.
"""

from __future__ import annotations

import struct
from typing import Any

import construct as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_sim import layouts as L

ORDERS = ("little", "big")
QUEUE_SIZES = [1 << n for n in range(16)]  # 1 .. 32768

fast_settings = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- helpers


def plain(value: Any) -> Any:
    """A construct parse result as plain dicts/lists, keeping '_gap' fields, dropping '_io'.

    Container.__eq__ skips every key that starts with '_', which would hide the MMIO gap
    fields from the comparison, so compare plain data instead.
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "_io"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def strategy_for(con: Any) -> st.SearchStrategy[Any]:
    """A hypothesis strategy producing values for a construct declaration."""
    if isinstance(con, cs.Renamed):
        return strategy_for(con.subcon)
    if isinstance(con, cs.FormatField):
        bits = 8 * con.sizeof()
        return st.integers(min_value=0, max_value=(1 << bits) - 1)
    if isinstance(con, cs.Bytes):
        return st.binary(min_size=con.length, max_size=con.length)
    if isinstance(con, cs.Array):
        return st.lists(strategy_for(con.subcon), min_size=con.count, max_size=con.count)
    if isinstance(con, cs.Struct):
        return st.fixed_dictionaries({sub.name: strategy_for(sub) for sub in con.subcons})
    raise TypeError(f"no strategy for {con!r}")


def field_names(declaration: Any) -> list[str]:
    return [sub.name for sub in declaration.subcons]


def check_round_trip(declaration: Any, value: dict[str, Any]) -> bytes:
    data = declaration.build(value)
    assert len(data) == declaration.sizeof()
    assert plain(declaration.parse(data)) == value
    return bytes(data)


def check_fast_codec(codec: struct.Struct, declaration: Any, value: dict[str, Any]) -> None:
    """The struct codec and the construct declaration agree in both directions."""
    assert codec.size == declaration.sizeof()
    built = declaration.build(value)
    fields = [value[n] for n in field_names(declaration)]
    assert codec.pack(*fields) == built
    assert list(codec.unpack(built)) == fields
    parsed = plain(declaration.parse(codec.pack(*fields)))
    assert parsed == value


FLAT_DECLARATIONS = {
    "virtq_desc": L.virtq_desc,
    "virtq_ring_header": L.virtq_ring_header,
    "virtq_used_elem": L.virtq_used_elem,
    "virtio_blk_config": L.virtio_blk_config,
    "virtio_blk_req_header": L.virtio_blk_req_header,
}


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", sorted(FLAT_DECLARATIONS))
@fast_settings
@given(data=st.data())
def test_flat_declaration_round_trip_and_fast_codec(name: str, order: L.ByteOrder, data: Any) -> None:
    declaration = FLAT_DECLARATIONS[name](order)
    value = data.draw(strategy_for(declaration))
    check_round_trip(declaration, value)
    check_fast_codec(L.fast_codec(declaration), declaration, value)


@fast_settings
@given(value=strategy_for(L.MmioRegistersV2))
def test_mmio_registers_round_trip_and_fast_codec(value: dict[str, Any]) -> None:
    check_round_trip(L.MmioRegistersV2, value)
    check_fast_codec(L.fast_codec(L.MmioRegistersV2), L.MmioRegistersV2, value)


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), qexp=st.integers(min_value=0, max_value=8))
def test_virtq_avail_round_trip(order: L.ByteOrder, data: Any, qexp: int) -> None:
    q = 1 << qexp
    declaration = L.virtq_avail(q, order)
    value = data.draw(strategy_for(declaration))
    raw = check_round_trip(declaration, value)
    assert len(raw) == L.avail_ring_size(q)
    # The ring walkers address the pieces with the fast codecs and the offset helpers.
    idx = L.ring_index_codec(order)
    assert idx.unpack_from(raw, 0)[0] == value["flags"]
    assert idx.unpack_from(raw, L.RING_IDX_OFFSET)[0] == value["idx"]
    for slot in range(q):
        assert idx.unpack_from(raw, L.avail_entry_offset(slot))[0] == value["ring"][slot]
    assert idx.unpack_from(raw, L.used_event_offset(q))[0] == value["used_event"]


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), qexp=st.integers(min_value=0, max_value=7))
def test_virtq_used_round_trip(order: L.ByteOrder, data: Any, qexp: int) -> None:
    q = 1 << qexp
    declaration = L.virtq_used(q, order)
    value = data.draw(strategy_for(declaration))
    raw = check_round_trip(declaration, value)
    assert len(raw) == L.used_ring_size(q)
    idx = L.ring_index_codec(order)
    elem = L.used_elem_codec(order)
    assert idx.unpack_from(raw, 0)[0] == value["flags"]
    assert idx.unpack_from(raw, L.RING_IDX_OFFSET)[0] == value["idx"]
    for slot in range(q):
        got = elem.unpack_from(raw, L.used_elem_offset(slot))
        assert got == (value["ring"][slot]["id"], value["ring"][slot]["len"])
    assert idx.unpack_from(raw, L.avail_event_offset(q))[0] == value["avail_event"]


# --------------------------------------------------------------------------- named fast codecs


@pytest.mark.parametrize("order", ORDERS)
@fast_settings
@given(
    addr=st.integers(0, 2**64 - 1),
    length=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0xFFFF),
    nxt=st.integers(0, 0xFFFF),
)
def test_desc_codec(order: L.ByteOrder, addr: int, length: int, flags: int, nxt: int) -> None:
    value = {"addr": addr, "len": length, "flags": flags, "next": nxt}
    check_fast_codec(L.desc_codec(order), L.virtq_desc(order), value)
    fmt = "<QIHH" if order == "little" else ">QIHH"
    assert L.desc_codec(order).pack(addr, length, flags, nxt) == struct.pack(fmt, addr, length, flags, nxt)


@pytest.mark.parametrize("order", ORDERS)
@fast_settings
@given(head=st.integers(0, 2**32 - 1), length=st.integers(0, 2**32 - 1))
def test_used_elem_codec(order: L.ByteOrder, head: int, length: int) -> None:
    check_fast_codec(L.used_elem_codec(order), L.virtq_used_elem(order), {"id": head, "len": length})


@pytest.mark.parametrize("order", ORDERS)
@fast_settings
@given(value=st.integers(0, 0xFFFF))
def test_ring_index_codec(order: L.ByteOrder, value: int) -> None:
    con = cs.Int16ul if order == "little" else cs.Int16ub
    codec = L.ring_index_codec(order)
    assert codec.size == 2 == con.sizeof()
    assert codec.pack(value) == con.build(value)
    assert codec.unpack(con.build(value))[0] == value
    if order == "little":
        assert L.VirtqRingIndex.build(value) == codec.pack(value)


@pytest.mark.parametrize("order", ORDERS)
@fast_settings
@given(
    type_=st.integers(0, 2**32 - 1),
    reserved=st.integers(0, 2**32 - 1),
    sector=st.integers(0, 2**64 - 1),
)
def test_blk_req_header_codec(order: L.ByteOrder, type_: int, reserved: int, sector: int) -> None:
    value = {"type": type_, "reserved": reserved, "sector": sector}
    check_fast_codec(L.blk_req_header_codec(order), L.virtio_blk_req_header(order), value)


def test_byte_orders_really_differ() -> None:
    little = L.desc_codec("little").pack(0x0102030405060708, 0x0A0B0C0D, 0x0102, 0x0304)
    big = L.desc_codec("big").pack(0x0102030405060708, 0x0A0B0C0D, 0x0102, 0x0304)
    assert little == bytes.fromhex("08070605040302010d0c0b0a02010403")
    assert big == bytes.fromhex("01020304050607080a0b0c0d01020304")
    assert L.ring_index_codec("big").pack(0x1234) == b"\x12\x34"
    assert (
        L.virtio_blk_config("big").build(
            dict.fromkeys(field_names(L.VirtioBlkConfig), 0)
            | {"capacity": 1, "unused1": bytes(3), "unused2": bytes(3)}
        )[:8]
        == bytes(7) + b"\x01"
    )


def test_bad_byte_order_rejected() -> None:
    with pytest.raises(ValueError, match="byte order"):
        L.virtq_desc("middle")  # type: ignore[arg-type]


def test_fast_codec_rejects_non_flat_declarations() -> None:
    with pytest.raises(TypeError):
        L.fast_codec(L.virtq_avail(4))
    with pytest.raises(TypeError):
        L.fast_codec(L.virtq_used(4))


def test_fast_codec_rejects_mixed_byte_orders() -> None:
    with pytest.raises(TypeError, match="mixes byte orders"):
        L.fast_codec(cs.Struct("a" / cs.Int16ul, "b" / cs.Int32ub))


def test_cached_declarations_are_shared() -> None:
    assert L.virtq_desc("little") is L.VirtqDesc
    assert L.virtq_avail(8, "big") is L.virtq_avail(8, "big")
    assert L.desc_codec("little") is L.desc_codec("little")


# --------------------------------------------------------------------------- split ring offsets (2)


def test_split_ring_fixed_sizes_and_offsets() -> None:
    assert L.DESC_SIZE == 16
    assert L.field_offsets(L.VirtqDesc) == {"addr": 0, "len": 8, "flags": 12, "next": 14}
    assert L.RING_HEADER_SIZE == 4
    assert L.field_offsets(L.VirtqRingHeader) == {"flags": 0, "idx": 2}
    assert L.RING_IDX_OFFSET == L.field_offsets(L.VirtqRingHeader)["idx"] == 2
    assert L.AVAIL_ENTRY_SIZE == 2
    assert L.USED_ELEM_SIZE == 8
    assert L.field_offsets(L.VirtqUsedElem) == {"id": 0, "len": 4}


@pytest.mark.parametrize("q", QUEUE_SIZES)
def test_split_ring_part_sizes(q: int) -> None:
    # virtio-layouts.md section 2: 16*Q, 6 + 2*Q, 6 + 8*Q
    assert L.desc_table_size(q) == 16 * q
    assert L.avail_ring_size(q) == 6 + 2 * q
    assert L.used_ring_size(q) == 6 + 8 * q
    assert L.avail_entry_offset(q - 1) == 4 + 2 * (q - 1)
    assert L.used_elem_offset(q - 1) == 4 + 8 * (q - 1)
    assert L.used_event_offset(q) == 4 + 2 * q
    assert L.avail_event_offset(q) == 4 + 8 * q


@pytest.mark.parametrize("q", [1, 2, 16, 256])
def test_event_fields_sit_where_construct_puts_them(q: int) -> None:
    avail = L.virtq_avail(q)
    raw = avail.build({"flags": 0, "idx": 0, "ring": [0] * q, "used_event": 0xBEEF})
    assert avail.sizeof() == L.avail_ring_size(q)
    assert raw[L.used_event_offset(q) :] == b"\xef\xbe"
    used = L.virtq_used(q)
    raw = used.build({"flags": 0, "idx": 0, "ring": [{"id": 0, "len": 0}] * q, "avail_event": 0xCAFE})
    assert used.sizeof() == L.used_ring_size(q)
    assert raw[L.avail_event_offset(q) :] == b"\xfe\xca"


def spec_align(x: int, a: int) -> int:
    """ALIGN(x) from virtio-layouts.md 2.4: (x + A - 1) & ~(A - 1)."""
    return (x + a - 1) & ~(a - 1)


@pytest.mark.parametrize("q", QUEUE_SIZES)
@pytest.mark.parametrize("align", [4, 64, 4096, 16384])
def test_legacy_layout_formula(q: int, align: int) -> None:
    # Size = ALIGN(16*Q + 2*(3+Q)) + ALIGN(2*3 + 8*Q); used ring at ALIGN(16*Q + 6 + 2*Q)
    assert L.legacy_used_ring_offset(q, align) == spec_align(16 * q + 6 + 2 * q, align)
    assert L.legacy_vring_size(q, align) == spec_align(16 * q + 2 * (3 + q), align) + spec_align(
        2 * 3 + 8 * q, align
    )


def test_legacy_vring_size_q256_page_aligned() -> None:
    # desc 4096 + avail (4 + 512 + 2 = 518) = 4614 -> 8192; used 4 + 2048 + 2 = 2054 -> 4096
    assert L.legacy_used_ring_offset(256, 4096) == 8192
    assert L.legacy_vring_size(256, 4096) == 8192 + 4096 == 12288
    # Linux's vring_size() leaves the used part unrounded (and without avail_event):
    # 8192 + 6 + 8*256 = 10246; rounded to the queue alignment it is the value above.
    linux_vring_size = 8192 + 2 * 3 + 8 * 256
    assert linux_vring_size == 10246
    assert spec_align(linux_vring_size, 4096) == L.legacy_vring_size(256, 4096)


def test_align_up() -> None:
    assert L.align_up(0, 4096) == 0
    assert L.align_up(1, 4096) == 4096
    assert L.align_up(4096, 4096) == 4096
    assert L.align_up(4097, 4096) == 8192


# --------------------------------------------------------------------------- virtio-mmio (6)

SPEC_MMIO_V2 = {
    "MagicValue": 0x000,
    "Version": 0x004,
    "DeviceID": 0x008,
    "VendorID": 0x00C,
    "DeviceFeatures": 0x010,
    "DeviceFeaturesSel": 0x014,
    "DriverFeatures": 0x020,
    "DriverFeaturesSel": 0x024,
    "QueueSel": 0x030,
    "QueueSizeMax": 0x034,
    "QueueSize": 0x038,
    "QueueReady": 0x044,
    "QueueNotify": 0x050,
    "InterruptStatus": 0x060,
    "InterruptACK": 0x064,
    "Status": 0x070,
    "QueueDescLow": 0x080,
    "QueueDescHigh": 0x084,
    "QueueDriverLow": 0x090,
    "QueueDriverHigh": 0x094,
    "QueueDeviceLow": 0x0A0,
    "QueueDeviceHigh": 0x0A4,
    "SHMSel": 0x0AC,
    "SHMLenLow": 0x0B0,
    "SHMLenHigh": 0x0B4,
    "SHMBaseLow": 0x0B8,
    "SHMBaseHigh": 0x0BC,
    "QueueReset": 0x0C0,
    "ConfigGeneration": 0x0FC,
}
SPEC_MMIO_V1_ONLY = {"GuestPageSize": 0x028, "QueueAlign": 0x03C, "QueuePFN": 0x040}


def test_mmio_offsets_from_the_brief() -> None:
    o = L.MMIO_OFFSETS
    assert o["QueueReady"] == 0x44
    assert o["QueueNotify"] == 0x50
    assert o["Status"] == 0x70
    assert o["QueueDescLow"] == 0x80
    assert o["SHMSel"] == 0xAC
    assert o["QueueReset"] == 0xC0
    assert o["ConfigGeneration"] == 0xFC
    assert L.MMIO_CONFIG_OFFSET == 0x100


def test_mmio_offsets_match_spec_table() -> None:
    named = {k: v for k, v in L.MMIO_OFFSETS.items() if not k.startswith("_")}
    assert named == SPEC_MMIO_V2 | SPEC_MMIO_V1_ONLY
    assert {off: name for name, off in named.items()} == L.MMIO_NAMES
    assert all(off % L.MMIO_REGISTER_WIDTH == 0 for off in L.MMIO_OFFSETS.values())
    assert L.MmioRegistersV2.sizeof() == 0x100


def test_mmio_register_sets_per_version() -> None:
    assert set(SPEC_MMIO_V2) == L.MMIO_V2_REGISTERS
    v1 = {
        "MagicValue", "Version", "DeviceID", "VendorID", "DeviceFeatures",
        "DeviceFeaturesSel", "DriverFeatures", "DriverFeaturesSel", "GuestPageSize",
        "QueueSel", "QueueSizeMax", "QueueSize", "QueueAlign", "QueuePFN", "QueueNotify",
        "InterruptStatus", "InterruptACK", "Status",
    }  # fmt: skip
    assert v1 == L.MMIO_V1_REGISTERS
    assert set(L.MMIO_OFFSETS) >= L.MMIO_V1_REGISTERS


def test_mmio_gaps_are_not_registers() -> None:
    # Every byte of the block is covered exactly once, gaps included.
    covered = sorted(
        (off, off + sub.sizeof())
        for sub, off in zip(L.MmioRegistersV2.subcons, L.MMIO_OFFSETS.values(), strict=True)
    )
    pos = 0
    for start, end in covered:
        assert start == pos
        pos = end
    assert pos == 0x100


# --------------------------------------------------------------------------- virtio-blk (9)

SPEC_BLK_CONFIG = {
    "capacity": (0, 8),
    "size_max": (8, 4),
    "seg_max": (12, 4),
    "cylinders": (16, 2),
    "heads": (18, 1),
    "sectors": (19, 1),
    "blk_size": (20, 4),
    "physical_block_exp": (24, 1),
    "alignment_offset": (25, 1),
    "min_io_size": (26, 2),
    "opt_io_size": (28, 4),
    "writeback": (32, 1),
    "unused0": (33, 1),
    "num_queues": (34, 2),
    "max_discard_sectors": (36, 4),
    "max_discard_seg": (40, 4),
    "discard_sector_alignment": (44, 4),
    "max_write_zeroes_sectors": (48, 4),
    "max_write_zeroes_seg": (52, 4),
    "write_zeroes_may_unmap": (56, 1),
    "unused1": (57, 3),
    "max_secure_erase_sectors": (60, 4),
    "max_secure_erase_seg": (64, 4),
    "secure_erase_sector_alignment": (68, 4),
    "zone_sectors": (72, 4),
    "max_open_zones": (76, 4),
    "max_active_zones": (80, 4),
    "max_append_sectors": (84, 4),
    "write_granularity": (88, 4),
    "zoned_model": (92, 1),
    "unused2": (93, 3),
}


@pytest.mark.parametrize("order", ORDERS)
def test_blk_config_layout(order: L.ByteOrder) -> None:
    config = L.virtio_blk_config(order)
    assert config.sizeof() == 96
    offsets = L.field_offsets(config)
    assert offsets["blk_size"] == 20
    assert offsets["writeback"] == 32
    sizes = {sub.name: sub.sizeof() for sub in config.subcons}
    assert {k: (offsets[k], sizes[k]) for k in offsets} == SPEC_BLK_CONFIG


def test_blk_request_layout() -> None:
    assert L.field_offsets(L.VirtioBlkReqHeader) == {"type": 0, "reserved": 4, "sector": 8}
    assert L.BLK_REQ_HEADER_SIZE == 16
    assert L.BLK_STATUS_SIZE == 1
    assert L.VirtioRngConfig.sizeof() == 0


@pytest.mark.parametrize("order", ORDERS)
def test_blk_config_field_bytes_land_at_spec_offsets(order: L.ByteOrder) -> None:
    config = L.virtio_blk_config(order)
    value: dict[str, Any] = {}
    for sub in config.subcons:
        value[sub.name] = bytes(sub.sizeof()) if isinstance(sub.subcon, cs.Bytes) else 0
    value["blk_size"] = 0x11223344
    value["writeback"] = 1
    raw = config.build(value)
    want = bytes.fromhex("44332211") if order == "little" else bytes.fromhex("11223344")
    assert raw[20:24] == want
    assert raw[32] == 1
