"""Packed virtqueue: exact bytes, wrap counters, event suppression, hostile rings.

The byte-level checks are written against virtio 1.4 section 2.8 (and the table in
virtio-layouts.md section 3) with the numbers retyped here on purpose, so that a wrong
constant in specs/ or layouts.py shows up as a failure rather than agreeing with itself.
"""

from __future__ import annotations

from typing import Any

import construct as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.ringpair import RingPair
from virtio_sim import layouts as L
from virtio_sim.ring.chain import ChainWriter, DeviceBrokenError, RingError
from virtio_sim.ring.notify import decode_notify_data, encode_notify_data
from virtio_sim.ring.packed import (
    PackedDeviceQueue,
    check_packed_queue_size,
    event_crossed,
    lap_wrap,
)
from virtio_sim.ring.split import SplitRingAddresses
from virtio_sim.ring.types import QueueFullError, RingFeatures
from virtio_sim.spec import PACKED_DESC_F, PACKED_EVENT_F

# Retyped from the spec on purpose (see the module docstring).
NEXT, WRITE, INDIRECT, AVAIL, USED = 0x1, 0x2, 0x4, 0x80, 0x8000
EV_ENABLE, EV_DISABLE, EV_DESC = 0, 1, 2
WRAP_BIT = 1 << 15


def rd(p: RingPair, slot: int) -> tuple[int, int, int, int]:
    """(addr, len, id, flags) of ring slot ``slot``, decoded with plain struct."""
    import struct

    raw = p.mem.read(p.addrs.desc + 16 * slot, 16)
    out: tuple[int, int, int, int] = struct.unpack("<QIHH", raw)
    return out


def put(p: RingPair, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
    import struct

    p.mem.write(p.addrs.desc + 16 * slot, struct.pack("<QIHH", addr, length, buf_id, flags))


def event(p: RingPair, area: int) -> tuple[int, int]:
    import struct

    out: tuple[int, int] = struct.unpack("<HH", p.mem.read(area, 4))
    return out


def set_event(p: RingPair, area: int, word: int, flags: int) -> None:
    import struct

    p.mem.write(area, struct.pack("<HH", word, flags))


# --------------------------------------------------------------------------- layouts


def test_packed_layouts_match_the_spec_table() -> None:
    assert L.PACKED_DESC_SIZE == 16
    assert L.PACKED_DESC_OFFSETS == {"addr": 0, "len": 8, "id": 12, "flags": 14}
    assert L.EVENT_SUPPRESS_SIZE == 4
    assert L.EVENT_SUPPRESS_OFFSETS == {"desc": 0, "flags": 2}
    assert (PACKED_DESC_F.NEXT, PACKED_DESC_F.WRITE, PACKED_DESC_F.INDIRECT) == (1, 2, 4)
    assert (PACKED_DESC_F.AVAIL, PACKED_DESC_F.USED) == (AVAIL, USED)
    assert (PACKED_EVENT_F.ENABLE, PACKED_EVENT_F.DISABLE, PACKED_EVENT_F.DESC) == (0, 1, 2)
    assert L.packed_ring_size(100) == 1600


@settings(max_examples=60, deadline=None)
@given(
    addr=st.integers(0, 2**64 - 1),
    length=st.integers(0, 2**32 - 1),
    buf_id=st.integers(0, 2**16 - 1),
    flags=st.integers(0, 2**16 - 1),
    word=st.integers(0, 2**16 - 1),
    ev_flags=st.integers(0, 2**16 - 1),
)
def test_packed_fast_codecs_agree_with_construct(
    addr: int, length: int, buf_id: int, flags: int, word: int, ev_flags: int
) -> None:
    value = {"addr": addr, "len": length, "id": buf_id, "flags": flags}
    built = L.PvirtqDesc.build(value)
    assert L.PACKED_DESC_CODEC.pack(addr, length, buf_id, flags) == built
    assert L.PACKED_DESC_CODEC.unpack(built) == (addr, length, buf_id, flags)
    parsed = L.PvirtqDesc.parse(built)
    assert (parsed.addr, parsed.len, parsed.id, parsed.flags) == (addr, length, buf_id, flags)
    ev = L.PvirtqEventSuppress.build({"desc": word, "flags": ev_flags})
    assert L.EVENT_SUPPRESS_CODEC.pack(word, ev_flags) == ev
    assert isinstance(L.PvirtqEventSuppress, cs.Struct)


@settings(max_examples=80, deadline=None)
@given(q=st.integers(0, 2**16 - 1), off=st.integers(0, 2**15 - 1), wrap=st.integers(0, 1))
def test_notification_data_encoding(q: int, off: int, wrap: int) -> None:
    value = encode_notify_data(q, off, wrap)
    assert value == q | off << 16 | wrap << 31  # the spec's layout, retyped
    d = decode_notify_data(value)
    assert (d.queue, d.next_off, d.next_wrap) == (q, off, wrap)


def test_notification_data_rejects_out_of_range_fields() -> None:
    for args in ((1 << 16, 0, 0), (0, 1 << 15, 0), (0, 0, 2)):
        with pytest.raises(ValueError):
            encode_notify_data(*args)


@pytest.mark.parametrize("size", [0, -1, 32769, 65536])
def test_bad_packed_queue_sizes(size: int) -> None:
    with pytest.raises(ValueError):
        check_packed_queue_size(size)


@pytest.mark.parametrize("size", [1, 3, 100, 255, 32768])
def test_any_packed_queue_size_up_to_32768(size: int) -> None:
    check_packed_queue_size(size)


# --------------------------------------------------------------------------- event arithmetic


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(1, 40),
    old=st.integers(0, 400),
    span=st.integers(0, 80),
    off=st.integers(0, 2**15 - 1),
    wrap=st.integers(0, 1),
)
def test_event_crossed_matches_brute_force(size: int, old: int, span: int, off: int, wrap: int) -> None:
    new = old + span
    word = off | wrap << 15
    if off >= size:
        assert event_crossed(word, old, new, size)  # malformed: notify rather than hang
        return
    brute = any(p % size == off and lap_wrap(p, size) == wrap for p in range(old, new))
    assert event_crossed(word, old, new, size) == brute


def test_wrap_counter_starts_at_one_and_flips_per_lap() -> None:
    assert [lap_wrap(p, 3) for p in range(9)] == [1, 1, 1, 0, 0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- exact bytes


def test_driver_writes_exact_descriptors_and_wraps() -> None:
    with RingPair("packed", 4, indirect=True) as p:
        d, v = p.driver, p.device
        b0 = d.add([(0x5000, 10)], [(0x6000, 20), (0x7000, 30)], "a", use_indirect=False)
        assert b0 == 0
        assert [rd(p, i) for i in range(3)] == [
            (0x5000, 10, 0, NEXT | AVAIL),
            (0x6000, 20, 0, NEXT | WRITE | AVAIL),
            (0x7000, 30, 0, WRITE | AVAIL),
        ]
        assert rd(p, 3) == (0, 0, 0, 0)  # the ring starts zeroed: nothing available
        with pytest.raises(QueueFullError):
            d.add([(0x5000, 1)], [(0x6000, 1)], "too big", use_indirect=False)
        c = v.pop()
        assert c is not None and c.head == 0 and c.descriptors == 3
        assert c.readable == [(0x5000, 10)] and c.writable == [(0x6000, 20), (0x7000, 30)]
        v.push(c.head, 25)
        # One used descriptor at the chain's first slot; AVAIL == USED == device wrap (1).
        assert rd(p, 0)[1:] == (25, 0, AVAIL | USED | WRITE)
        assert d.get_used() == ("a", 25)
        # A two-descriptor chain now wraps: slot 3 in lap 0, slot 0 in lap 1.
        b1 = d.add([(0x5100, 1)], [(0x6100, 2)], "b", use_indirect=False)
        assert rd(p, 3) == (0x5100, 1, b1, NEXT | AVAIL)
        assert rd(p, 0) == (0x6100, 2, b1, WRITE | USED)  # lap 1: AVAIL=0, USED=1
        assert (d.next_avail, d.avail_wrap) == (1, 0)
        c = v.pop()
        assert c is not None and c.head == b1
        assert c.readable == [(0x5100, 1)] and c.writable == [(0x6100, 2)]
        v.push(c.head, 0)
        assert rd(p, 3)[1:] == (0, b1, AVAIL | USED)  # written 0: WRITE clear
        assert (v.used_idx, v.used_wrap) == (1, 0)
        assert d.get_used() == ("b", 0)
        # Indirect: one ring descriptor naming a table of plain entries.
        b2 = d.add([(0x5200, 4)], [(0x6200, 8)], "c")
        addr, length, buf_id, flags = rd(p, 1)
        assert (length, buf_id, flags) == (32, b2, INDIRECT | USED)
        import struct

        table = p.mem.read(addr, 32)
        assert struct.unpack("<QIHHQIHH", table) == (0x5200, 4, 0, 0, 0x6200, 8, 0, WRITE)
        c = v.pop()
        assert c is not None and c.descriptors == 3
        v.push(c.head, 8)
        assert rd(p, 1)[1:] == (8, b2, WRITE)  # used in lap 1: AVAIL = USED = 0
        assert d.get_used() == ("c", 8)
        assert p.pool is not None and not p.pool.live


def test_device_takes_the_buffer_id_from_the_last_descriptor() -> None:
    with RingPair("packed", 8) as p:
        put(p, 1, p.data + 16, 4, 2, WRITE | AVAIL)
        put(p, 0, p.data, 4, 7, NEXT | AVAIL)  # the head's id field is not the buffer id
        c = p.device.pop()
        assert c is not None and c.head == 2
        p.device.push(2, 4)
        assert rd(p, 0)[2] == 2


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100, 255])
def test_many_laps_with_mixed_chains(size: int) -> None:
    """More than 2x the ring through it: wrap counters flip on both sides, flags stay right."""
    with RingPair("packed", size, event_idx=True, indirect=True) as p:
        d, v = p.driver, p.device
        base = p.data
        for i in range(3 * size + 11):
            n = 1 + i % min(size, 4)
            ind = size == 1 or i % 3 == 0
            outs = [(base + 64 * k, 4) for k in range(n // 2)]
            ins = [(base + 0x1000 + 64 * k, 8) for k in range(n - n // 2)]
            pos = d._avail_pos
            bid = d.add(outs, ins, i, use_indirect=ind)
            slots = 1 if ind else n
            for k in range(slots):  # every descriptor carries its own lap's wrap
                w = lap_wrap(pos + k, size)
                assert rd(p, (pos + k) % size)[3] & (AVAIL | USED) == (AVAIL if w else USED)
            c = v.pop()
            assert c is not None and c.head == bid and v.pop() is None
            assert c.readable == outs and c.writable == ins
            ChainWriter(v.space, c.writable).write(bytes([i & 0xFF]) * 8)
            upos = v._used_pos
            v.push(bid, 8)
            w = lap_wrap(upos, size)
            assert rd(p, upos % size)[3] & (AVAIL | USED) == ((AVAIL | USED) if w else 0)
            assert d.get_used() == (i, 8)
            assert d.get_used() is None
        assert d._avail_pos == d._used_pos == v._avail_pos == v._used_pos
        assert d._avail_pos > 2 * size  # both wrap counters flipped at least twice
        assert d.num_free == size and not v.in_flight


def test_queue_size_32768_takes_a_full_length_chain_across_the_ring_end() -> None:
    q = 32768
    with RingPair("packed", q, data_size=0x10000) as p:
        d, v = p.driver, p.device
        for i in range(5):  # move the ring position so the long chain crosses the end
            d.add([(p.data, 8)], [], i)
            c = v.pop()
            assert c is not None
            v.push(c.head, 0)
            assert d.get_used() == (i, 0)
        segs = [(p.data + 8 * (i % 0x1000), 8) for i in range(q)]
        bid = d.add(segs[:100], segs[100:], "long", use_indirect=False)
        assert d.num_free == 0
        with pytest.raises(QueueFullError):
            d.add([(p.data, 1)], [], "none")
        c = v.pop()
        assert c is not None and c.head == bid and c.descriptors == q
        assert c.readable == segs[:100] and c.writable == segs[100:]
        v.push(bid, 8)
        assert d.get_used() == ("long", 8)
        assert d.num_free == q and d.avail_wrap == 0 and v.used_wrap == 0


# --------------------------------------------------------------------------- event suppression


def test_device_event_suppression_drives_kicks() -> None:
    with RingPair("packed", 5, event_idx=True) as p:
        d, v = p.driver, p.device
        wr = ([], [(p.data, 4)])
        d.add(*wr, 0)
        assert d.kick_prepare()  # zeroed device area: ENABLE
        assert not d.kick_prepare()  # nothing new
        v.set_notification(False)
        assert event(p, p.addrs.used)[1] == EV_DISABLE
        d.add(*wr, 1)
        assert not d.kick_prepare()
        popped = [v.pop(), v.pop()]
        assert None not in popped and v.pop() is None
        v.set_notification(True)  # EVENT_IDX: DESC at the next position (slot 2, wrap 1)
        assert event(p, p.addrs.used) == (2 | WRAP_BIT, EV_DESC)
        d.add(*wr, 2)  # slot 2: the event descriptor
        assert d.kick_prepare()
        d.add(*wr, 3)
        assert not d.kick_prepare()  # the device has not moved the event on
        # An event in the next lap: slot 1 with wrap 0; crossing it takes the ring end.
        set_event(p, p.addrs.used, 1, EV_DESC)
        popped += [v.pop(), v.pop()]
        for c in popped:
            assert c is not None
            v.push(c.head, 0)
        for _ in range(4):
            assert d.get_used() is not None
        d.add(*wr, 4)  # slot 4 (lap 0)
        assert not d.kick_prepare()
        d.add(*wr, 5)  # slot 0 (lap 1)
        assert not d.kick_prepare()
        d.add(*wr, 6)  # slot 1 (lap 1): the event
        assert d.kick_prepare()


def test_device_event_flags_without_event_idx() -> None:
    with RingPair("packed", 4) as p:
        v = p.device
        v.set_notification(True)
        assert event(p, p.addrs.used)[1] == EV_ENABLE
        v.set_notification(False)
        assert event(p, p.addrs.used)[1] == EV_DISABLE


def test_driver_event_suppression_drives_interrupts() -> None:
    with RingPair("packed", 4, event_idx=True) as p:
        d, v = p.driver, p.device
        wr = ([], [(p.data, 4)])

        def one(token: int) -> bool:
            d.add(*wr, token)
            c = v.pop()
            assert c is not None
            v.push(c.head, 0)
            return bool(v.needs_interrupt())

        d.disable_cb()
        assert event(p, p.addrs.avail)[1] == EV_DISABLE
        assert not one(0)
        assert d.enable_cb() is True  # something is already used: the race check
        assert event(p, p.addrs.avail) == (0 | WRAP_BIT, EV_DESC)
        assert d.get_used() == (0, 0)
        assert d.enable_cb() is False
        assert event(p, p.addrs.avail) == (1 | WRAP_BIT, EV_DESC)
        assert one(1)  # the used descriptor at slot 1 is the event
        assert not one(2)  # the driver did not move the event on
        assert d.get_used() == (1, 0) and d.get_used() == (2, 0)
        assert d.enable_cb() is False
        assert event(p, p.addrs.avail) == (3 | WRAP_BIT, EV_DESC)
        assert one(3)  # slot 3 is the event: it fires now
        assert not one(4)  # slot 0 of lap 1: not the event
        d.enable_cb()  # (3, wrap 1) still: already passed, so nothing fires ...
        assert not one(5)
        assert d.get_used() == (3, 0) and d.get_used() == (4, 0) and d.get_used() == (5, 0)
        assert d.enable_cb() is False  # ... until the driver names the next slot
        assert event(p, p.addrs.avail) == (2, EV_DESC)  # slot 2, wrap 0
        assert one(6)


def test_odd_driver_event_flags_interrupt_and_are_reported() -> None:
    with RingPair("packed", 4, event_idx=False) as p:
        d, v = p.driver, p.device
        d.add([], [(p.data, 4)], 0)
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        set_event(p, p.addrs.avail, 0, EV_DESC)  # DESC without EVENT_IDX negotiated
        assert v.needs_interrupt()
        set_event(p, p.addrs.avail, 0, 3)  # reserved
        assert v.needs_interrupt()
        assert len(v.warnings) == 2


# --------------------------------------------------------------------------- hostile rings


def _two_desc_chain(p: RingPair, second_flags: int, slot0: int = 0) -> None:
    put(p, (slot0 + 1) % p.q, p.data + 16, 4, 1, second_flags)
    put(p, slot0, p.data, 4, 0, NEXT | AVAIL)


MALFORMED: dict[str, Any] = {}


def malformed(name: str, violation: str, head: bool) -> Any:
    def deco(fn: Any) -> Any:
        MALFORMED[name] = (fn, violation, head)
        return fn

    return deco


@malformed("second descriptor with the old wrap bits", "desc-wrap-bits", False)
def _wrap_bits(p: RingPair) -> None:
    _two_desc_chain(p, WRITE | USED)


@malformed("second descriptor with AVAIL and USED both set", "desc-wrap-bits", False)
def _both_bits(p: RingPair) -> None:
    _two_desc_chain(p, WRITE | AVAIL | USED)


@malformed("chain past the ring end without flipping the wrap counter", "desc-wrap-bits", False)
def _past_end(p: RingPair) -> None:
    for i in range(p.q - 2):  # legitimate traffic up to slot q-2
        p.driver.add([(p.data, 4)], [], i)
        c = p.device.pop()
        assert c is not None
        p.device.push(c.head, 0)
        assert p.driver.get_used() == (i, 0)
    put(p, 0, p.data, 4, 0, AVAIL)  # lap 0's bits where lap 1's (USED) belong
    put(p, p.q - 1, p.data, 4, 0, NEXT | AVAIL)
    put(p, p.q - 2, p.data, 4, 0, NEXT | AVAIL)


@malformed("chain longer than the ring", "chain-too-long", False)
def _too_long(p: RingPair) -> None:
    # Every slot available with NEXT, including those after the ring end (lap-1 bits),
    # so the chain only ends because the walk is bounded.
    for i in range(p.q):
        put(p, i, p.data, 4, 0, NEXT | AVAIL)


@malformed("buffer id out of range", "buffer-id-out-of-range", False)
def _id_range(p: RingPair) -> None:
    put(p, 0, p.data, 4, p.q, AVAIL)


@malformed("buffer id reused while in flight", "buffer-id-in-flight", False)
def _id_reuse(p: RingPair) -> None:
    put(p, 0, p.data, 4, 3, AVAIL)
    put(p, 1, p.data, 4, 3, AVAIL)


@malformed("INDIRECT after NEXT in the ring", "indirect-in-chain", True)
def _ind_in_chain(p: RingPair) -> None:
    table = p.pool_base
    put(p, 1, table, 16, 0, INDIRECT | AVAIL)
    put(p, 0, p.data, 4, 0, NEXT | AVAIL)


@malformed("INDIRECT with NEXT", "indirect-with-next", True)
def _ind_next(p: RingPair) -> None:
    put(p, 1, p.data, 4, 0, AVAIL)
    put(p, 0, p.pool_base, 16, 0, INDIRECT | NEXT | AVAIL)


@malformed("indirect table of length 0", "indirect-bad-length", True)
def _ind_zero(p: RingPair) -> None:
    put(p, 0, p.pool_base, 0, 0, INDIRECT | AVAIL)


@malformed("indirect table length not a multiple of 16", "indirect-bad-length", True)
def _ind_len(p: RingPair) -> None:
    put(p, 0, p.pool_base, 24, 0, INDIRECT | AVAIL)


@malformed("indirect table too large", "indirect-too-large", True)
def _ind_big(p: RingPair) -> None:
    put(p, 0, p.pool_base, 16 * 64, 0, INDIRECT | AVAIL)


@malformed("indirect table outside guest memory", "bad-address", True)
def _ind_addr(p: RingPair) -> None:
    put(p, 0, 1 << 40, 32, 0, INDIRECT | AVAIL)


@malformed("indirect inside an indirect table", "nested-indirect", True)
def _ind_nested(p: RingPair) -> None:
    import struct

    p.mem.write(p.pool_base, struct.pack("<QIHH", p.pool_base + 64, 16, 0, INDIRECT))
    put(p, 0, p.pool_base, 16, 0, INDIRECT | AVAIL)


@malformed("buffer outside guest memory", "bad-address", True)
def _bad_addr(p: RingPair) -> None:
    put(p, 0, p.total + 0x1000, 4, 0, AVAIL)


@malformed("readable after writable", "readable-after-writable", True)
def _order(p: RingPair) -> None:
    _two_desc_chain(p, AVAIL)  # second readable ...
    put(p, 0, p.data, 4, 0, NEXT | WRITE | AVAIL)  # ... after a writable head


@malformed("zero-length descriptor", "zero-length", True)
def _zero(p: RingPair) -> None:
    put(p, 0, p.data, 0, 0, AVAIL)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_packed_rings_raise_named_violations(name: str) -> None:
    build, violation, head_known = MALFORMED[name]
    with RingPair("packed", 8, indirect=True, max_indirect=8) as p:
        if name == "buffer id reused while in flight":
            build(p)
            c = p.device.pop()
            assert c is not None and c.head == 3
        else:
            build(p)
        before = p.device._avail_pos
        with pytest.raises(RingError) as e:
            p.device.pop()
        assert e.value.violation == violation, str(e.value)
        if head_known:
            # Consumed, so that a drop policy can complete it and nothing loops forever.
            assert e.value.head is not None and e.value.head in p.device.in_flight
            assert p.device._avail_pos > before
            p.device.push(e.value.head, 0)
            assert rd(p, before % p.q)[3] & (AVAIL | USED) == AVAIL | USED
        else:
            assert e.value.head is None


def test_ring_overrun_into_slots_still_in_flight() -> None:
    with RingPair("packed", 4) as p:
        d, v = p.driver, p.device
        for i in range(3):
            d.add([(p.data, 4)], [], i)
        for _ in range(3):
            assert v.pop() is not None
        # The driver owns one slot (3); a two-descriptor chain there runs into slot 0,
        # which the device still owns. Slot 0 carries lap-1 bits, as a buggy driver would.
        put(p, 0, p.data, 4, 1, USED)
        put(p, 3, p.data, 4, 0, NEXT | AVAIL)
        with pytest.raises(RingError) as e:
            v.pop()
        assert e.value.violation == "ring-overrun"


def test_head_with_wrong_wrap_bits_is_not_available() -> None:
    with RingPair("packed", 4) as p:
        for flags in (0, AVAIL | USED, USED):  # zeroed, used-looking, next lap's bits
            put(p, 0, p.data, 4, 0, flags)
            assert not p.device.has_available()
            assert p.device.pop() is None
        put(p, 0, p.data, 4, 0, AVAIL)
        assert p.device.has_available()


def test_indirect_entries_ignore_ids_and_reserved_flags() -> None:
    import struct

    with RingPair("packed", 4, indirect=True) as p:
        junk = NEXT | AVAIL | USED | 0x7000
        p.mem.write(
            p.pool_base,
            struct.pack("<QIHHQIHH", p.data, 4, 0xBEEF, junk, p.data + 64, 8, 0xCAFE, junk | WRITE),
        )
        put(p, 0, p.pool_base, 32, 1, INDIRECT | WRITE | AVAIL)  # WRITE here is ignored
        c = p.device.pop()
        assert c is not None and c.head == 1
        assert c.readable == [(p.data, 4)] and c.writable == [(p.data + 64, 8)]


def test_indirect_without_the_feature_is_refused_in_strict_mode_only() -> None:
    for strict in (True, False):
        with RingPair("packed", 4, indirect=False, strict=strict) as p:
            import struct

            p.mem.write(p.pool_base, struct.pack("<QIHH", p.data, 4, 0, 0))
            put(p, 0, p.pool_base, 16, 0, INDIRECT | AVAIL)
            if strict:
                with pytest.raises(RingError, match="indirect-not-negotiated"):
                    p.device.pop()
            else:
                c = p.device.pop()
                assert c is not None and c.readable == [(p.data, 4)]


def test_misaligned_or_inaccessible_rings_are_refused() -> None:
    with RingPair("packed", 4) as p:
        bad = SplitRingAddresses(p.addrs.desc + 8, p.addrs.avail, p.addrs.used)
        with pytest.raises(RingError, match="ring-alignment"):
            PackedDeviceQueue(p.space, 4, bad)
        PackedDeviceQueue(p.space, 4, bad, RingFeatures(strict=False))
        far = SplitRingAddresses(p.total, p.addrs.avail, p.addrs.used)
        with pytest.raises(RingError, match="ring-address"):
            PackedDeviceQueue(p.space, 4, far)
        with pytest.raises(ValueError):
            PackedDeviceQueue(p.space, 4, p.addrs, order="big")


# --------------------------------------------------------------------------- broken devices


def _used(p: RingPair, slot: int, length: int, buf_id: int, flags: int) -> None:
    put(p, slot, 0, length, buf_id, flags)


def test_driver_refuses_used_ids_not_in_flight_and_long_lengths() -> None:
    with RingPair("packed", 4) as p:
        d = p.driver
        d.add([], [(p.data, 8)], "a")
        _used(p, 0, 0, 3, AVAIL | USED)
        with pytest.raises(DeviceBrokenError) as e:
            d.get_used()
        assert e.value.violation == "used-bad-id"
        with pytest.raises(DeviceBrokenError):
            d.add([], [(p.data, 8)], "after")  # the queue stays broken
    with RingPair("packed", 4) as p:
        d = p.driver
        d.add([], [(p.data, 8)], "a")
        _used(p, 0, 9, 0, AVAIL | USED | WRITE)
        with pytest.raises(DeviceBrokenError) as e:
            d.get_used()
        assert e.value.violation == "used-bad-len"


def test_driver_takes_len_without_write_as_linux_does_and_ignores_next() -> None:
    """QEMU 7.2 never sets WRITE in a used descriptor (virtqueue_packed_fill_desc) and
    Linux 6.1 reads len regardless (virtqueue_get_buf_ctx_packed): a read completed by
    QEMU must report the bytes it wrote. The spec's "ignore len" is counted, not applied."""
    with RingPair("packed", 4) as p:
        d = p.driver
        d.add([(p.data, 8)], [], "tx")
        d.add([], [(p.data, 8)], "rx")
        d.add([], [(p.data, 8)], "rx-qemu")
        _used(p, 0, 0, 0, AVAIL | USED | NEXT)
        _used(p, 1, 5, 1, AVAIL | USED | WRITE | NEXT)
        _used(p, 2, 7, 2, AVAIL | USED)  # QEMU's way: len without WRITE
        assert d.get_used() == ("tx", 0)
        assert d.get_used() == ("rx", 5)
        assert d.get_used() == ("rx-qemu", 7)
        assert d.get_used() is None
        assert d.len_without_write == 1
    with RingPair("packed", 4) as p:
        p.driver.add([(p.data, 8)], [], "tx")
        _used(p, 0, 0xFFFFFFFF, 0, AVAIL | USED)  # more than the chain could take: still refused
        with pytest.raises(DeviceBrokenError) as e:
            p.driver.get_used()
        assert e.value.violation == "used-bad-len"


# --------------------------------------------------------------------------- IN_ORDER


@pytest.mark.parametrize("fmt", ["split", "packed"])
def test_in_order_device_holds_completions_until_older_ones_are_done(fmt: str) -> None:
    with RingPair(fmt, 8, in_order=True) as p:
        d, v = p.driver, p.device
        heads = [d.add([], [(p.data + 64 * i, 8)], i) for i in range(3)]
        chains = [v.pop() for _ in range(3)]
        assert [c.head for c in chains] == heads
        v.push(heads[2], 8)
        assert d.get_used() is None  # held: 0 and 1 are not done
        v.push(heads[0], 1)
        assert d.get_used() == (0, 1)
        assert d.get_used() is None
        v.push(heads[1], 2)
        assert d.get_used() == (1, 2)
        assert d.get_used() == (2, 8)
        assert d.get_used() is None


@pytest.mark.parametrize("fmt", ["split", "packed"])
def test_in_order_batch_writes_one_used_entry_per_run(fmt: str) -> None:
    with RingPair(fmt, 16, in_order=True, batch=True) as p:
        d, v = p.driver, p.device
        heads = [d.add([(p.data, 4)], [(p.data + 64 * i, 8)], i) for i in range(5)]
        for _ in range(5):
            assert v.pop() is not None
        for h, written in zip(heads, (8, 3, 8, 8, 8), strict=True):
            v.push(h, written)
        assert d.get_used() is None  # batched: nothing written before the flush
        v.flush()
        if fmt == "packed":
            # Runs [0, 1] (1 is short, so it closes the run) and [2, 3, 4]: two used
            # descriptors, each at its run's first position, each run skipped whole.
            assert rd(p, 0)[1:] == (3, heads[1], AVAIL | USED | WRITE)
            assert rd(p, 4)[1:] == (8, heads[4], AVAIL | USED | WRITE)
            assert rd(p, 6)[3] & USED == 0  # slot 6 was never written
            assert v._used_pos == 10
        else:
            import struct

            used = p.mem.read(p.addrs.used, 4 + 8 * 5)
            assert struct.unpack_from("<H", used, 2)[0] == 5  # used idx moved by 5
            assert struct.unpack_from("<II", used, 4) == (heads[1], 3)
            assert struct.unpack_from("<II", used, 4 + 8 * 2) == (heads[4], 8)
        got = [d.get_used() for _ in range(5)]
        assert got == [(0, 8), (1, 3), (2, 8), (3, 8), (4, 8)]
        assert d.get_used() is None and d.num_free == 16
        assert p.driver.more_used() is False


def test_split_in_order_driver_uses_consecutive_slots() -> None:
    import struct

    with RingPair("split", 4, in_order=True) as p:
        d, v = p.driver, p.device
        for rnd in range(3):
            h = d.add([(p.data, 4)], [(p.data + 8, 4), (p.data + 16, 4)], rnd, use_indirect=False)
            assert h == (3 * rnd) % 4
            slots = [(h + k) % 4 for k in range(3)]
            nexts = [struct.unpack("<QIHH", p.mem.read(p.addrs.desc + 16 * s, 16))[3] for s in slots]
            assert nexts[:2] == slots[1:]  # next = slot + 1, wrapping to 0
            c = v.pop()
            assert c is not None
            v.push(c.head, 4)
            assert d.get_used() == (rnd, 4)


def test_split_in_order_device_refuses_out_of_order_heads() -> None:
    with RingPair("split", 4, in_order=True) as p:
        plain = RingPair("split", 4, memory=p.mem)  # a driver that ignores IN_ORDER
        try:
            plain.driver.add([(p.data, 4)], [], "a")  # head 0: fine
            c = p.device.pop()
            assert c is not None and c.head == 0
            p.device.push(0, 0)
            assert plain.driver.get_used() == ("a", 0)
            plain.driver.add([(p.data, 4)], [], "b")  # the stack hands out 0 again
            with pytest.raises(RingError) as e:
                p.device.pop()
            assert e.value.violation == "in-order-head"
        finally:
            plain.close()


# --------------------------------------------------------------------------- NOTIFICATION_DATA


def test_packed_notification_data_checked_against_the_ring() -> None:
    with RingPair("packed", 5) as p:
        d, v = p.driver, p.device
        assert v.check_notify_data(0, 1) is None  # nothing added, nothing claimed
        d.add([(p.data, 4)], [(p.data + 8, 4)], "a", use_indirect=False)
        d.add([(p.data, 4)], [], "b")
        assert d.notify_data() == (3, 1)
        assert v.check_notify_data(3, 1) is None
        assert v.check_notify_data(3, 1) is None  # repeated notifications are identical
        assert "not available" in (v.check_notify_data(4, 1) or "")
        assert "goes back" in (v.check_notify_data(2, 1) or "")
        assert "not a slot" in (v.check_notify_data(5, 1) or "")
        for _ in range(2):
            c = v.pop()
            assert c is not None
            v.push(c.head, 0)
        assert d.get_used() == ("a", 0) and d.get_used() == ("b", 0)
        assert v.check_notify_data(3, 1) is None  # exact
        for t in "cde":
            d.add([(p.data, 4)], [], t)
        assert d.notify_data() == (1, 0)  # wrapped: slot 1 of lap 1
        assert v.check_notify_data(1, 0) is None
        assert v.check_notify_data(4, 0) is not None  # 3 slots beyond what was added
        d.add([(p.data, 4)], [], "f")
        assert v.check_notify_data(2, 0) is None


def test_split_notification_data_checked_against_the_ring() -> None:
    with RingPair("split", 4) as p:
        d, v = p.driver, p.device
        d.add([(p.data, 4)], [], "a")
        d.add([(p.data, 4)], [], "b")
        assert d.notify_data() == (2, 0)
        assert v.check_notify_data(2, 0) is None
        assert v.check_notify_data(2, 0) is None
        assert v.check_notify_data(3, 0) is not None  # ahead of the avail idx
        assert "goes back" in (v.check_notify_data(1, 0) or "")
