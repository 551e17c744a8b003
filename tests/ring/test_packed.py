"""Packed virtqueue: layouts, event arithmetic, exact bytes, wrap counters, event suppression.

The byte-level checks are written against virtio 1.4 section 2.8 (and the table in
virtio-layouts.md section 3) with the numbers retyped (tests/support/packed_bytes.py) on
purpose, so that a wrong constant in specs/ or layouts.py shows up as a failure rather than
agreeing with itself. Hostile rings: test_packed_hostile.py; IN_ORDER and NOTIFICATION_DATA:
test_packed_features.py.
"""

from __future__ import annotations

import construct as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.packed_bytes import (
    AVAIL,
    EV_DESC,
    EV_DISABLE,
    EV_ENABLE,
    INDIRECT,
    NEXT,
    USED,
    WRAP_BIT,
    WRITE,
    event,
    put,
    rd,
    set_event,
)
from tests.support.ringpair import RingPair
from virtio_sim import layouts as L
from virtio_sim.ring.chain import ChainWriter
from virtio_sim.ring.notify import decode_notify_data, encode_notify_data
from virtio_sim.ring.packed import check_packed_queue_size, event_crossed, lap_wrap
from virtio_sim.ring.types import QueueFullError
from virtio_sim.spec import PACKED_DESC_F, PACKED_EVENT_F

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
