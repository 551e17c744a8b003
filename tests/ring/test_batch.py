"""Ring batch calls (add_batch, pop_batch, push_batch, get_used_batch), split and packed,
are the per-chain calls, one call per batch: the same chains, completions, memory and errors.

A hypothesis workload drives two identical ring pairs, one per chain and one in batches,
and compares everything observable; hostile input part-way through a batch must neither
lose the good chains before it nor skip its error.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_sim import layouts as L
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import DeviceBrokenError, RingError
from virtio_sim.ring.hooks import DeviceHooks, DriverHooks
from virtio_sim.ring.mock import MockPool
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import DESC_F, PACKED_DESC_F

Q = 16
RING = SplitRingAddresses(0x1000, 0x1000 + 16 * Q, 0x2000)
DATA = 0x10000
MEM = 1 << 20


PACKED_RING = SplitRingAddresses(0x1000, 0x1000 + L.packed_ring_size(Q), 0x2000)


class Pair:
    def __init__(self, event_idx: bool, indirect: bool = False, packed: bool = False) -> None:
        self.mem = GuestMemory.create(MEM)
        pool = MockPool(0x80000, 0x10000) if indirect else None
        space = IdentityAddressSpace(self.mem)
        self.drv: Any
        self.dev: Any
        if packed:
            self.drv = PackedDriverQueue(
                self.mem, Q, PACKED_RING, RingFeatures(event_idx=event_idx), indirect_pool=pool
            )
            self.dev = PackedDeviceQueue(
                space, Q, PACKED_RING, RingFeatures(event_idx=event_idx, indirect=indirect)
            )
            self.ring_end = PACKED_RING.used + L.EVENT_SUPPRESS_SIZE
        else:
            self.drv = SplitDriverQueue(
                self.mem, Q, RING, RingFeatures(event_idx=event_idx), indirect_pool=pool
            )
            self.dev = SplitDeviceQueue(space, Q, RING, RingFeatures(event_idx=event_idx, indirect=indirect))
            self.ring_end = RING.used + L.used_ring_size(Q)

    def rings(self) -> bytes:
        return self.mem.read(RING.desc, self.ring_end - RING.desc)


segment = st.tuples(st.integers(0, 63), st.integers(1, 256))  # (buffer slot, length)
chain_shape = st.tuples(st.lists(segment, max_size=2), st.lists(segment, max_size=2)).filter(
    lambda c: len(c[0]) + len(c[1]) > 0
)
step = st.tuples(
    st.lists(chain_shape, max_size=6),  # chains to add
    st.integers(1, Q),  # pop limit
    st.integers(0, 100),  # percent of each chain's writable part reported written
    st.booleans(),  # reap now
)


def _segs(shape: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(DATA + 4096 * slot, n) for slot, n in shape]


def _chain_view(c: Any) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]], int]:
    return c.head, c.readable, c.writable, c.descriptors


@settings(max_examples=80, deadline=None)
@given(st.lists(step, min_size=1, max_size=12), st.booleans(), st.booleans(), st.booleans())
def test_batch_calls_match_per_chain_calls(
    steps: list[Any], event_idx: bool, indirect: bool, packed: bool
) -> None:
    one, many = Pair(event_idx, indirect, packed), Pair(event_idx, indirect, packed)
    try:
        token = 0
        seen: dict[str, list[Any]] = {"one": [], "many": []}
        for chains, limit, pct, reap in steps:
            room = one.drv.num_free
            todo = []
            for out, in_ in chains:
                if len(out) + len(in_) > room:
                    break
                room -= len(out) + len(in_)
                todo.append((_segs(out), _segs(in_), token))
                token += 1
            heads_one = [one.drv.add(o, i, t) for o, i, t in todo]
            heads_many = many.drv.add_batch(todo)
            assert heads_one == heads_many
            assert one.drv.kick_prepare() == many.drv.kick_prepare()
            popped_one: list[Any] = []
            while len(popped_one) < limit and (c := one.dev.pop()) is not None:
                popped_one.append(c)
            popped_many = many.dev.pop_batch(limit)
            assert [_chain_view(c) for c in popped_one] == [_chain_view(c) for c in popped_many]
            done = [(c.head, c.writable_len * pct // 100) for c in popped_one]
            for head, written in done:
                one.dev.push(head, written)
            many.dev.push_batch(done)
            if event_idx:  # the device asks for the next kick from where it stopped
                one.dev.set_notification(True)
                many.dev.set_notification(True)
            assert one.dev.needs_interrupt() == many.dev.needs_interrupt()
            assert one.dev.published == many.dev.published
            if reap:
                while (r := one.drv.get_used()) is not None:
                    seen["one"].append(r)
                seen["many"].extend(many.drv.get_used_batch())
            assert seen["one"] == seen["many"]
            if event_idx:
                assert one.drv.enable_cb() == many.drv.enable_cb()
            assert one.rings() == many.rings()
        assert one.dev.in_flight == many.dev.in_flight
        assert set(one.drv.inflight) == set(many.drv.inflight)
    finally:
        one.mem.close()
        many.mem.close()


def test_bad_chain_mid_batch_keeps_the_good_ones_and_raises_next() -> None:
    p = Pair(False)
    try:
        p.drv.add([], [(DATA, 64)], "a")
        bad = p.drv.add([], [(DATA + 4096, 64)], "b")
        p.drv.add([(DATA + 8192, 16)], [], "c")
        # the guest rewrites b's descriptor to point outside RAM
        p.mem.write(RING.desc + 16 * bad, L.desc_codec().pack(MEM + 0x1000, 64, DESC_F.WRITE, 0))
        first = p.dev.pop_batch(8)
        assert [c.writable for c in first] == [[(DATA, 64)]]
        assert p.dev.has_available()  # the error is still owed
        with pytest.raises(RingError, match="bad-address") as e:
            p.dev.pop_batch(8)
        assert e.value.head == bad and bad in p.dev.in_flight  # consumed, for a drop policy
        (c,) = p.dev.pop_batch(8)
        assert c.readable == [(DATA + 8192, 16)]
        p.dev.push_batch([(first[0].head, 64), (bad, 0), (c.head, 0)])
        assert p.drv.get_used_batch() == [("a", 64), ("b", 0), ("c", 0)]
    finally:
        p.mem.close()


def test_error_before_any_good_chain_is_raised_at_once() -> None:
    p = Pair(False)
    try:
        h = p.drv.add([], [(DATA, 64)], "a")
        # the same head made available twice
        p.mem.write(RING.avail + L.avail_entry_offset(1), L.ring_index_codec().pack(h))
        p.mem.write(RING.avail + L.RING_IDX_OFFSET, L.ring_index_codec().pack(2))
        assert [c.head for c in p.dev.pop_batch(8)] == [h]
        with pytest.raises(RingError, match="head-in-flight"):
            p.dev.pop_batch(8)
        assert p.dev.pop_batch(8) == []
    finally:
        p.mem.close()


def test_hostile_used_element_mid_batch() -> None:
    p = Pair(False)
    try:
        for t in ("a", "b"):
            p.drv.add([], [(DATA, 64)], t)
        (a, _b) = p.dev.pop_batch(8)
        p.dev.push_batch([(a.head, 10)])
        # a bogus second used element: an id that is not in flight
        p.mem.write(RING.used + L.used_elem_offset(1), L.used_elem_codec().pack(Q - 1, 0))
        p.mem.write(RING.used + L.RING_IDX_OFFSET, L.ring_index_codec().pack(2))
        assert p.drv.get_used_batch() == [("a", 10)]
        assert p.drv.broken is not None and p.drv.broken.violation == "used-bad-id"
        with pytest.raises(DeviceBrokenError, match="used-bad-id"):
            p.drv.get_used_batch()
    finally:
        p.mem.close()


def test_push_batch_with_a_bad_head_publishes_the_ones_before() -> None:
    p = Pair(False)
    try:
        p.drv.add([], [(DATA, 64)], "a")
        (a,) = p.dev.pop_batch(8)
        with pytest.raises(ValueError, match="not in flight"):
            p.dev.push_batch([(a.head, 5), (a.head, 5)])  # the second is a device bug
        assert p.drv.get_used_batch() == [("a", 5)]
    finally:
        p.mem.close()


def _packed_desc(addr: int, length: int, buf_id: int, flags: int) -> bytes:
    return L.PACKED_DESC_CODEC.pack(addr, length, buf_id, flags)


def test_packed_bad_chain_mid_batch_keeps_the_good_ones_and_raises_next() -> None:
    p = Pair(False, packed=True)
    try:
        p.drv.add([], [(DATA, 64)], "a")
        bad = p.drv.add([], [(DATA + 4096, 64)], "b")
        p.drv.add([(DATA + 8192, 16)], [], "c")
        # the guest rewrites b's descriptor (slot 1, first lap) to point outside RAM
        flags = PACKED_DESC_F.WRITE | PACKED_DESC_F.AVAIL
        p.mem.write(PACKED_RING.desc + 16, _packed_desc(MEM + 0x1000, 64, bad, flags))
        first = p.dev.pop_batch(8)
        assert [c.writable for c in first] == [[(DATA, 64)]]
        assert p.dev.has_available()  # the error is still owed
        with pytest.raises(RingError, match="bad-address") as e:
            p.dev.pop_batch(8)
        assert e.value.head == bad and bad in p.dev.in_flight  # consumed, for a drop policy
        (c,) = p.dev.pop_batch(8)
        assert c.readable == [(DATA + 8192, 16)]
        p.dev.push_batch([(first[0].head, 64), (bad, 0), (c.head, 0)])
        assert p.drv.get_used_batch() == [("a", 64), ("b", 0), ("c", 0)]
    finally:
        p.mem.close()


def test_packed_duplicate_id_mid_batch_is_not_consumed() -> None:
    p = Pair(False, packed=True)
    try:
        a = p.drv.add([], [(DATA, 64)], "a")
        p.drv.add([], [(DATA + 4096, 64)], "b")
        # the guest gives the second descriptor the first one's buffer id
        flags = PACKED_DESC_F.WRITE | PACKED_DESC_F.AVAIL
        p.mem.write(PACKED_RING.desc + 16, _packed_desc(DATA + 4096, 64, a, flags))
        assert [c.head for c in p.dev.pop_batch(8)] == [a]
        for _ in range(2):  # not consumed: raised again, never skipped
            with pytest.raises(RingError, match="buffer-id-in-flight"):
                p.dev.pop_batch(8)
        assert set(p.dev.in_flight) == {a}
    finally:
        p.mem.close()


def test_packed_add_batch_full_part_way_leaves_the_ones_before_available() -> None:
    p = Pair(False, packed=True)
    try:
        # a two-buffer chain in the middle goes through add(); the Q+1th does not fit
        chains: list[Any] = [((), ((DATA, 64),), 0), (((DATA, 8),), ((DATA, 64),), 1)]
        chains += [((), ((DATA, 64),), t) for t in range(2, Q + 1)]
        with pytest.raises(Exception, match="descriptors"):
            p.drv.add_batch(chains)
        popped = p.dev.pop_batch(Q + 1)
        assert [c.descriptors for c in popped] == [1, 2] + [1] * (Q - 3)
        assert not p.dev.has_available()
    finally:
        p.mem.close()


def test_packed_hostile_used_descriptor_mid_batch() -> None:
    p = Pair(False, packed=True)
    try:
        for t in ("a", "b"):
            p.drv.add([], [(DATA, 64)], t)
        (a, _b) = p.dev.pop_batch(8)
        p.dev.push_batch([(a.head, 10)])
        # a bogus second used descriptor: an id that is not in flight
        used = PACKED_DESC_F.AVAIL | PACKED_DESC_F.USED | PACKED_DESC_F.WRITE
        p.mem.write(PACKED_RING.desc + 16, _packed_desc(0, 0, Q - 1, used))
        assert p.drv.get_used_batch() == [("a", 10)]
        assert p.drv.broken is not None and p.drv.broken.violation == "used-bad-id"
        with pytest.raises(DeviceBrokenError, match="used-bad-id"):
            p.drv.get_used_batch()
    finally:
        p.mem.close()


def test_packed_push_batch_with_a_bad_head_publishes_the_ones_before() -> None:
    p = Pair(False, packed=True)
    try:
        p.drv.add([], [(DATA, 64)], "a")
        (a,) = p.dev.pop_batch(8)
        with pytest.raises(ValueError, match="not in flight"):
            p.dev.push_batch([(a.head, 5), (a.head, 5)])  # the second is a device bug
        assert p.drv.get_used_batch() == [("a", 5)]
    finally:
        p.mem.close()


class _Counting(DeviceHooks):
    """Hooks that count the used writes and the interrupt decisions they see."""

    def __init__(self) -> None:
        self.writes = 0
        self.decisions = 0

    def write_used(self, ring: Any, head: int, written: int, count: int) -> None:
        self.writes += 1
        ring.write_used(head, written, count)

    def needs_interrupt(self, ring: Any, wanted: bool) -> bool:
        self.decisions += 1
        return wanted


class _CountingDriver(DriverHooks):
    def __init__(self) -> None:
        self.taken = 0
        self.heads: list[int] = []

    def take(self, ring: Any) -> int:
        self.taken += 1
        return super().take(ring)

    def added(self, ring: Any, head: int) -> None:
        self.heads.append(head)


@pytest.mark.parametrize("packed", [False, True])
def test_fast_paths_step_aside_for_hooks(packed: bool) -> None:
    """Every used write and every descriptor choice of a ring with hooks goes through
    them, on the per-chain and the batch calls alike."""
    mem = GuestMemory.create(MEM)
    try:
        addrs = PACKED_RING if packed else RING
        drv = (PackedDriverQueue if packed else SplitDriverQueue)(mem, Q, addrs)
        dev = (PackedDeviceQueue if packed else SplitDeviceQueue)(IdentityAddressSpace(mem), Q, addrs)
        drv.hooks = drv_hooks = _CountingDriver()
        dev.hooks = hooks = _Counting()
        ids = drv.add_batch([((), ((DATA + 4096 * i, 64),), i) for i in range(3)])
        assert drv_hooks.taken == 3 and drv_hooks.heads == ids
        first = dev.pop()
        assert first is not None
        rest = dev.pop_batch(8)
        assert len(rest) == 2
        dev.push(first.head, 1)
        dev.push_batch([(rest[0].head, 2), (rest[1].head, 3)])
        assert hooks.writes == 3
        assert dev.needs_interrupt() and hooks.decisions == 1
        assert drv.get_used_batch() == [(0, 1), (1, 2), (2, 3)]
    finally:
        mem.close()
