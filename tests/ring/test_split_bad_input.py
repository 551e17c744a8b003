"""Malformed split rings, written by hand, against the device and the driver.

Device side: every broken ring rule must end in a RingError naming the violation, the device
must not touch guest memory while finding out (all of RAM is filled with a canary pattern
first), the bad head must be consumed so that a drop policy (push(head, 0)) only changes
the used ring and nothing is retried forever. Legal-but-unusual layouts must work.

Driver side: a hostile device's used ring must mark the queue broken, for good.
"""

from __future__ import annotations

from typing import Any

import pytest

from virtio_sim import layouts as L
from virtio_sim.dma import DmaError, IdentityAddressSpace
from virtio_sim.memory import GuestMemory, MemoryRegion, SharedMemoryObject
from virtio_sim.ring.chain import Chain, ChainWriter, DeviceBrokenError, RingError, read_all
from virtio_sim.ring.mock import MockSplitRing
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import DESC_F

NEXT, WRITE, INDIRECT = DESC_F.NEXT, DESC_F.WRITE, DESC_F.INDIRECT
Q = 8
RING = SplitRingAddresses(desc=0x1000, avail=0x2000, used=0x3000)
TABLE = 0x4000  # indirect tables
DATA = 0x8000
MEM_SIZE = 0x20000
TOP = 1 << 64


def canary(length: int, start: int = 0) -> bytes:
    block = bytes((i * 37 + 11) & 0xFF for i in range(256))
    reps = (start % 256 + length) // 256 + 1
    s = start % 256
    return (block * reps)[s : s + length]


class Hand:
    """Guest RAM full of canary bytes, a ring written by hand, and a device reading it."""

    def __init__(
        self,
        q: int = Q,
        *,
        indirect: bool = False,
        strict: bool = True,
        order: L.ByteOrder = "little",
        memory: GuestMemory | None = None,
        max_indirect: int | None = None,
        fill: bool = True,
    ) -> None:
        self.q = q
        self.mem = memory if memory is not None else GuestMemory.create(MEM_SIZE)
        if fill:
            for r in self.mem.regions:
                self.mem.write(r.gpa, canary(r.size, r.gpa))
        # the driver's side, field by field (only the avail header is zeroed: the rest
        # of guest RAM keeps its canaries)
        self.ring = MockSplitRing(self.mem, q, RING.desc, RING.avail, RING.used, order=order, zero=False)
        self.ring.avail.flags.store(0)
        self.ring.avail.idx.store(0)
        self.space = IdentityAddressSpace(self.mem)
        features = RingFeatures(indirect=indirect, strict=strict)
        self.device = SplitDeviceQueue(self.space, q, RING, features, order=order, max_indirect=max_indirect)

    def desc(
        self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None
    ) -> None:
        t = self.ring.desc_table if table is None else self.ring.table(table, i + 1)
        t.store(i, addr, length, flags, nxt)

    def avail(self, *heads: int) -> None:
        self.ring.make_available(*heads)

    def set_avail_idx(self, value: int) -> None:
        """The index word alone: the driver's own count stays where it was."""
        self.ring.avail.idx.store(value)

    def snapshot(self) -> bytes:
        return b"".join(self.mem.read(r.gpa, r.size) for r in self.mem.regions)

    def pop_ok(self) -> Chain:
        before = self.snapshot()
        chain = self.device.pop()
        assert chain is not None
        assert self.snapshot() == before, "pop() wrote guest memory"
        return chain

    def pop_error(self, violation: str, head: int | None) -> RingError:
        """pop() fails with ``violation`` for ``head`` without writing guest memory."""
        before = self.snapshot()
        with pytest.raises(RingError) as e:
            self.device.pop()
        assert e.value.violation == violation, str(e.value)
        assert str(e.value).startswith(f"{violation}: ")
        assert e.value.head == head
        assert self.snapshot() == before, "a rejected chain made the device write guest memory"
        return e.value

    def drop(self, err: RingError, slot: int = 0) -> None:
        """The DROP policy: give the head back with len 0; only the used ring may change."""
        assert err.head is not None
        before = self.snapshot()
        self.device.push(err.head, 0)
        after = self.snapshot()
        elem = self.ring.used.ring.ref_at(slot).addr
        idx = self.ring.used.idx.addr
        assert self.ring.used_elem(slot) == (err.head, 0)
        assert self.ring.used_idx() == self.device.used_idx
        allowed = set(range(elem, elem + 8)) | {idx, idx + 1}
        base = self.mem.regions[0].gpa
        changed = {base + i for i in range(len(before)) if before[i] != after[i]}
        assert changed <= allowed, f"push wrote outside the used ring: {sorted(changed)[:8]}"

    def close(self) -> None:
        self.mem.close()


@pytest.fixture
def hand() -> Any:
    h = Hand()
    yield h
    h.close()


@pytest.fixture
def hand_indirect() -> Any:
    h = Hand(indirect=True)
    yield h
    h.close()


# --------------------------------------------------------------------------- A. chains


@pytest.mark.parametrize(
    "links",
    [
        {0: 0},  # 0 -> 0
        {0: 1, 1: 0},  # 0 -> 1 -> 0
        {0: 3, 3: 5, 5: 3},  # 0 -> 3 -> 5 -> 3: a loop that does not go through the head
    ],
)
def test_descriptor_loop(hand: Hand, links: dict[int, int]) -> None:
    for d, nxt in links.items():
        hand.desc(d, DATA + 64 * d, 16, NEXT, nxt)
    hand.avail(0)
    err = hand.pop_error("chain-loop", 0)
    hand.drop(err)
    assert hand.device.pop() is None  # consumed: nothing is retried


def test_chain_of_queue_size_works_one_more_is_a_loop() -> None:
    h = Hand(q=4)
    try:
        for i in range(4):
            h.desc(i, DATA + 32 * i, 16, NEXT if i < 3 else 0, i + 1 if i < 3 else 0)
        h.avail(0)
        chain = h.pop_ok()
        assert chain.readable == [(DATA + 32 * i, 16) for i in range(4)]
        h.device.push(0, 0)
        # Now the last descriptor chains back: 5 descriptors in a 4-entry queue.
        h.desc(3, DATA + 96, 16, NEXT, 0)
        h.avail(0)
        err = h.pop_error("chain-loop", 0)
        h.drop(err, slot=1)
    finally:
        h.close()


def test_chain_longer_than_queue_size_via_distinct_descriptors() -> None:
    """q = 4, a chain walking 0,1,2,3 and then 1 again: five descriptors."""
    h = Hand(q=4)
    try:
        for i in range(4):
            h.desc(i, DATA + 32 * i, 8, NEXT, (i + 1) % 4 or 1)
        h.avail(0)
        h.drop(h.pop_error("chain-loop", 0))
    finally:
        h.close()


def test_loop_inside_an_indirect_table(hand_indirect: Hand) -> None:
    h = hand_indirect
    h.desc(0, DATA, 8, NEXT, 1, table=TABLE)
    h.desc(1, DATA + 16, 8, NEXT, 0, table=TABLE)
    h.desc(2, TABLE, 32, INDIRECT)
    h.avail(2)
    h.drop(h.pop_error("chain-loop", 2))


@pytest.mark.parametrize("nxt", [Q, Q + 1, 0xFFFF])
def test_next_out_of_range(hand: Hand, nxt: int) -> None:
    hand.desc(1, DATA, 16, NEXT, nxt)
    hand.avail(1)
    hand.drop(hand.pop_error("next-out-of-range", 1))
    assert hand.device.pop() is None


def test_next_out_of_range_inside_an_indirect_table(hand_indirect: Hand) -> None:
    h = hand_indirect
    h.desc(0, DATA, 8, NEXT, 2, table=TABLE)  # a 2-entry table has no entry 2
    h.desc(1, DATA + 16, 8, table=TABLE)
    h.desc(0, TABLE, 32, INDIRECT)
    h.avail(0)
    h.drop(h.pop_error("next-out-of-range", 0))


@pytest.mark.parametrize("head", [Q, Q + 7, 0xFFFF])
def test_head_out_of_range(hand: Hand, head: int) -> None:
    hand.desc(0, DATA, 16)
    hand.avail(head, 0)
    hand.pop_error("head-out-of-range", None)
    assert hand.device.last_avail == 1  # consumed
    assert not hand.device.in_flight
    chain = hand.pop_ok()  # the ring goes on with the next slot
    assert chain.head == 0 and chain.readable == [(DATA, 16)]
    assert hand.device.pop() is None


def test_zero_length_descriptor_strict(hand: Hand) -> None:
    hand.desc(0, DATA, 16, NEXT, 1)
    hand.desc(1, DATA + 32, 0, WRITE)
    hand.avail(0)
    hand.drop(hand.pop_error("zero-length", 0))


# --------------------------------------------------------------------------- B. indirect


def test_nested_indirect(hand_indirect: Hand) -> None:
    h = hand_indirect
    h.desc(0, DATA, 16, NEXT, 1, table=TABLE)
    h.desc(1, TABLE + 0x100, 16, INDIRECT, table=TABLE)
    h.desc(0, DATA + 64, 16, table=TABLE + 0x100)
    h.desc(3, TABLE, 32, INDIRECT)
    h.avail(3)
    h.drop(h.pop_error("nested-indirect", 3))


@pytest.mark.parametrize("length", [0, 8, 17, 24, 0xFFFF_FFFF])
def test_indirect_bad_length(hand_indirect: Hand, length: int) -> None:
    h = hand_indirect
    h.desc(0, DATA, 16, table=TABLE)
    h.desc(0, TABLE, length, INDIRECT)
    h.avail(0)
    h.drop(h.pop_error("indirect-bad-length", 0))


def test_indirect_table_larger_than_allowed() -> None:
    h = Hand(indirect=True, max_indirect=4)
    try:
        h.desc(0, DATA, 16, table=TABLE)
        h.desc(0, TABLE, 16 * 5, INDIRECT)
        h.avail(0)
        h.drop(h.pop_error("indirect-too-large", 0))
    finally:
        h.close()


def test_indirect_not_negotiated_strict_and_lenient() -> None:
    for strict in (True, False):
        h = Hand(indirect=False, strict=strict)
        try:
            h.desc(0, DATA, 16, NEXT, 1, table=TABLE)
            h.desc(1, DATA + 32, 16, WRITE, table=TABLE)
            h.desc(0, TABLE, 32, INDIRECT)
            h.avail(0)
            if strict:
                h.drop(h.pop_error("indirect-not-negotiated", 0))
            else:  # lenient: process it the way QEMU does, and report elsewhere
                chain = h.pop_ok()
                assert chain.readable == [(DATA, 16)] and chain.writable == [(DATA + 32, 16)]
        finally:
            h.close()


def test_indirect_with_next(hand_indirect: Hand) -> None:
    h = hand_indirect
    h.desc(0, DATA, 16, table=TABLE)
    h.desc(0, TABLE, 16, INDIRECT | NEXT, 1)
    h.desc(1, DATA + 32, 16, WRITE)
    h.avail(0)
    h.drop(h.pop_error("indirect-with-next", 0))


def test_second_indirect_via_next_is_rejected(hand_indirect: Hand) -> None:
    """Normal -> INDIRECT|NEXT -> INDIRECT: the only legal indirect is the last one."""
    h = hand_indirect
    h.desc(0, DATA, 16, table=TABLE)
    h.desc(0, DATA + 32, 16, table=TABLE + 0x100)
    h.desc(0, DATA + 64, 8, NEXT, 1)
    h.desc(1, TABLE, 16, INDIRECT | NEXT, 2)
    h.desc(2, TABLE + 0x100, 16, INDIRECT)
    h.avail(0)
    h.drop(h.pop_error("indirect-with-next", 0))


def test_normal_descriptors_followed_by_one_indirect_work(hand_indirect: Hand) -> None:
    """Spec: zero or more chained normal descriptors then a single INDIRECT is legal (#16)."""
    h = hand_indirect
    h.desc(0, DATA + 0x100, 12, NEXT, 1, table=TABLE)
    h.desc(1, DATA + 0x200, 20, WRITE | NEXT, 2, table=TABLE)
    h.desc(2, DATA + 0x300, 4, WRITE, table=TABLE)
    h.desc(5, DATA, 16, NEXT, 2)
    h.desc(2, DATA + 0x40, 8, NEXT, 7)
    h.desc(7, TABLE, 48, INDIRECT | WRITE)  # WRITE on the table pointer must be ignored (#21)
    h.avail(5)
    chain = h.pop_ok()
    assert chain.head == 5
    assert chain.readable == [(DATA, 16), (DATA + 0x40, 8), (DATA + 0x100, 12)]
    assert chain.writable == [(DATA + 0x200, 20), (DATA + 0x300, 4)]
    assert chain.descriptors == 3 + 3
    before = h.snapshot()
    h.device.push(5, 24)
    after = h.snapshot()
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert all(RING.used <= i < RING.used + L.used_ring_size(Q) for i in diff)


def test_readable_after_writable_inside_indirect_table(hand_indirect: Hand) -> None:
    h = hand_indirect
    h.desc(0, DATA, 16, WRITE | NEXT, 1, table=TABLE)
    h.desc(1, DATA + 32, 16, 0, table=TABLE)
    h.desc(0, TABLE, 32, INDIRECT)
    h.avail(0)
    h.drop(h.pop_error("readable-after-writable", 0))


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("flags", [0, WRITE])
@pytest.mark.parametrize(
    ("addr", "length"),
    [
        (MEM_SIZE, 16),  # just past guest RAM
        (MEM_SIZE - 8, 16),  # runs past the end
        (DATA, 0xFFFF_FFFF),  # huge length
        (0x1_0000_0000_0000, 1),  # far outside
        (TOP - 8, 16),  # addr + len wraps past 2^64
        (TOP - 1, 2),
        (TOP - 0x1000, 0xFFFF_FFFF),
    ],
)
@pytest.mark.parametrize("position", ["head", "second"])
def test_bad_address(hand: Hand, addr: int, length: int, flags: int, position: str) -> None:
    if position == "head":
        hand.desc(0, addr, length, flags)
    else:
        hand.desc(0, DATA, 1, flags | NEXT, 1)  # 1 + 0xffffffff is still not over 2^32
        hand.desc(1, addr, length, flags)
    hand.avail(0)
    hand.drop(hand.pop_error("bad-address", 0))


@pytest.mark.parametrize(("addr", "length"), [(MEM_SIZE - 16, 32), (TOP - 16, 32), (MEM_SIZE, 16)])
def test_indirect_table_bad_address(hand_indirect: Hand, addr: int, length: int) -> None:
    hand_indirect.desc(0, addr, length, INDIRECT)
    hand_indirect.avail(0)
    hand_indirect.drop(hand_indirect.pop_error("bad-address", 0))


def test_bad_address_inside_an_indirect_table(hand_indirect: Hand) -> None:
    h = hand_indirect
    h.desc(0, DATA, 16, NEXT, 1, table=TABLE)
    h.desc(1, TOP - 4, 8, WRITE, table=TABLE)
    h.desc(0, TABLE, 32, INDIRECT)
    h.avail(0)
    h.drop(h.pop_error("bad-address", 0))


def test_readable_after_writable(hand: Hand) -> None:
    hand.desc(0, DATA, 16, NEXT, 1)
    hand.desc(1, DATA + 32, 16, WRITE | NEXT, 2)
    hand.desc(2, DATA + 64, 16, 0)
    hand.avail(0)
    hand.drop(hand.pop_error("readable-after-writable", 0))


def two_region_memory(gap: int) -> GuestMemory:
    """[0, 0x10000) and [0x10000 + gap, +0x10000), backed out of order."""
    backing = SharedMemoryObject.create_memfd(0x20000)
    return GuestMemory(
        backing,
        [MemoryRegion(0, 0x10000, 0x10000), MemoryRegion(0x10000 + gap, 0x10000, 0)],
    )


def test_buffer_spanning_two_touching_regions_works() -> None:
    h = Hand(memory=two_region_memory(0))
    try:
        h.desc(0, 0xFFF0, 0x20, NEXT, 1)
        h.desc(1, 0x1FFF8, 0x10, WRITE)
        # The second buffer runs past the second region: a control for the check itself.
        h.avail(0)
        h.drop(h.pop_error("bad-address", 0))
        h.desc(1, 0xFF00, 0x200, WRITE)  # writable, spanning the boundary too
        h.avail(0)
        chain = h.pop_ok()
        assert chain.readable == [(0xFFF0, 0x20)]
        assert chain.writable == [(0xFF00, 0x200)]
        h.mem.write(0xFFF0, b"R" * 0x20)
        assert read_all(h.space, chain.readable) == b"R" * 0x20
        before = h.snapshot()
        w = ChainWriter(h.space, chain.writable)
        assert w.write(b"W" * 0x300) == 0x200  # clamped to the buffer
        assert h.mem.read(0xFEFF, 0x202) == before[0xFEFF:0xFF00] + b"W" * 0x200 + before[0x10100:0x10101]
        after = h.snapshot()
        changed = [i for i in range(len(before)) if before[i] != after[i]]
        assert changed and min(changed) >= 0xFF00 and max(changed) < 0x10100
    finally:
        h.close()


def test_buffer_spanning_a_gap_is_a_bad_address() -> None:
    h = Hand(memory=two_region_memory(0x1000))
    try:
        h.desc(0, 0xFFF0, 0x20)
        h.avail(0)
        h.drop(h.pop_error("bad-address", 0))
    finally:
        h.close()


def test_chain_longer_than_4gib() -> None:
    """Sum of lengths > 2^32 (spec 2.7.5): over a sparse 2 GiB + 64 KiB guest."""
    size = (1 << 31) + 0x10000
    h = Hand(memory=GuestMemory.create(size), fill=False)
    try:
        h.desc(0, DATA, 1 << 31, NEXT, 1)
        h.desc(1, DATA, 1 << 31, NEXT, 2)  # exactly 2^32 so far: still legal
        h.desc(2, DATA, 1)
        h.avail(0)
        with pytest.raises(RingError) as e:
            h.device.pop()
        assert e.value.violation == "chain-too-big"
        assert e.value.head == 0
    finally:
        h.close()


def test_ring_outside_guest_ram() -> None:
    mem = GuestMemory.create(0x2000)
    try:
        space = IdentityAddressSpace(mem)
        bad = SplitRingAddresses(desc=0x1000, avail=0x1800, used=0x1FF0)  # used runs past RAM
        with pytest.raises(RingError) as e:
            SplitDeviceQueue(space, 8, bad)
        assert e.value.violation == "ring-address"
        with pytest.raises(DmaError):
            space.check(0x1FF0, L.used_ring_size(8), write=True)
    finally:
        mem.close()


# --------------------------------------------------------------------------- C. indices


@pytest.mark.parametrize("idx", [Q + 1, 0x8000, 0xFFFF])
def test_avail_idx_jump(hand: Hand, idx: int) -> None:
    for i in range(Q):
        hand.desc(i, DATA + 32 * i, 16)
    hand.set_avail_idx(idx)
    hand.pop_error("avail-idx-jump", None)
    assert hand.device.last_avail == 0
    with pytest.raises(RingError) as e:
        hand.device.has_available()
    assert e.value.violation == "avail-idx-jump"


def test_avail_idx_exactly_queue_size_ahead_is_fine(hand: Hand) -> None:
    for i in range(Q):
        hand.desc(i, DATA + 32 * i, 16)
    hand.avail(*range(Q))
    heads = [hand.pop_ok().head for _ in range(Q)]
    assert heads == list(range(Q))
    assert hand.device.pop() is None


def test_head_in_flight(hand: Hand) -> None:
    hand.desc(3, DATA, 16, NEXT, 4)
    hand.desc(4, DATA + 32, 16, WRITE)
    hand.avail(3)
    first = hand.pop_ok()
    assert first.head == 3
    hand.avail(3)  # the same head again, while the device still owns it
    hand.pop_error("head-in-flight", None)
    assert hand.device.in_flight == {3}
    assert hand.device.pop() is None  # consumed
    before = hand.snapshot()
    hand.device.push(3, 16)  # the first request completes exactly once
    assert hand.snapshot() != before
    with pytest.raises(ValueError, match="not in flight"):
        hand.device.push(3, 16)


def test_too_many_in_flight_consumes_the_head() -> None:
    h = Hand(q=2)
    try:
        h.desc(0, DATA, 16)
        h.desc(1, DATA + 32, 16)
        h.avail(0, 1)
        h.pop_ok()
        h.pop_ok()
        h.avail(1)  # both heads are owned by the device: no legal head exists
        h.pop_error("too-many-in-flight", None)
        assert h.device.last_avail == 3
        assert h.device.pop() is None  # not retried forever
    finally:
        h.close()


def test_big_endian_ring_rules() -> None:
    h = Hand(order="big")
    try:
        h.desc(0, DATA, 16, NEXT, 0)
        h.avail(0)
        h.drop(h.pop_error("chain-loop", 0))
        h.desc(1, DATA, 16, NEXT, 2)
        h.desc(2, DATA + 32, 0x10, WRITE)
        h.avail(1)
        chain = h.pop_ok()
        assert chain.readable == [(DATA, 16)] and chain.writable == [(DATA + 32, 16)]
    finally:
        h.close()


class CountingSpace(IdentityAddressSpace):
    def __init__(self, memory: GuestMemory) -> None:
        super().__init__(memory)
        self.reads: list[tuple[int, int]] = []

    def read(self, addr: int, length: int) -> bytes:
        self.reads.append((addr, length))
        return super().read(addr, length)


def test_each_descriptor_is_read_exactly_once(hand_indirect: Hand) -> None:
    """TOCTOU (#25): a private snapshot per descriptor, the indirect table read in one go."""
    h = hand_indirect
    space = CountingSpace(h.mem)
    dev = SplitDeviceQueue(space, Q, RING, RingFeatures(indirect=True))
    h.desc(0, DATA, 16, NEXT, 1, table=TABLE)
    h.desc(1, DATA + 32, 16, WRITE, table=TABLE)
    h.desc(6, DATA + 64, 8, NEXT, 2)
    h.desc(2, TABLE, 32, INDIRECT)
    h.avail(6)
    assert dev.pop() is not None
    desc_reads = [r for r in space.reads if RING.desc <= r[0] < RING.desc + 16 * Q]
    assert sorted(desc_reads) == [(RING.desc + 32, 16), (RING.desc + 96, 16)]
    assert space.reads.count((TABLE, 32)) == 1
    assert not [r for r in space.reads if DATA <= r[0] < DATA + 0x1000]  # no buffer data


# --------------------------------------------------------------------------- G. hostile device


class HostileDevice:
    """A driver queue whose used ring is written by hand."""

    def __init__(self, q: int = Q) -> None:
        self.q = q
        self.mem = GuestMemory.create(MEM_SIZE)
        self.broken: list[DeviceBrokenError] = []
        self.driver = SplitDriverQueue(self.mem, q, RING, on_broken=self.broken.append)
        self.elem = L.used_elem_codec()
        self.idx = L.ring_index_codec()
        self.used_idx = 0

    def used(self, head: int, length: int, *, bump: int = 1) -> None:
        slot = self.used_idx % self.q
        self.mem.write(RING.used + L.used_elem_offset(slot), self.elem.pack(head, length))
        self.used_idx = (self.used_idx + bump) & 0xFFFF
        self.mem.write(RING.used + L.RING_IDX_OFFSET, self.idx.pack(self.used_idx))

    def expect_broken(self, violation: str) -> None:
        d = self.driver
        inflight, free = dict(d.inflight), list(d.free)
        last_used = d.last_used
        with pytest.raises(DeviceBrokenError) as e:
            d.get_used()
        assert e.value.violation == violation, str(e.value)
        assert str(e.value).startswith(f"{violation}: ")
        assert d.broken is e.value
        assert self.broken == [e.value]
        # Nothing was taken back from the broken queue.
        assert d.inflight == inflight and list(d.free) == free and d.last_used == last_used
        # And it stays broken.
        for _ in range(2):
            with pytest.raises(DeviceBrokenError) as again:
                d.get_used()
            assert again.value is e.value
            with pytest.raises(DeviceBrokenError) as again:
                d.add([(DATA, 4)], [], "after")
            assert again.value is e.value
        assert self.broken == [e.value]  # reported once

    def close(self) -> None:
        self.mem.close()


@pytest.fixture
def hostile() -> Any:
    h = HostileDevice()
    yield h
    h.close()


@pytest.mark.parametrize("bad_id", ["free", Q, Q + 1, 0xFFFF, 0xFFFF_FFFF])
def test_used_bad_id(hostile: HostileDevice, bad_id: Any) -> None:
    head = hostile.driver.add([(DATA, 16)], [(DATA + 32, 16)], "tok")
    if bad_id == "free":
        bad_id = next(i for i in range(Q) if i not in hostile.driver.inflight)
    assert bad_id != head
    hostile.used(bad_id, 0)
    hostile.expect_broken("used-bad-id")


def test_used_id_of_a_non_head_descriptor(hostile: HostileDevice) -> None:
    """The id of the second descriptor of a chain is in use, but it is not a head."""
    head = hostile.driver.add([(DATA, 16)], [(DATA + 32, 16)], "tok", use_indirect=False)
    second = hostile.driver.inflight[head].descs[1]
    hostile.used(second, 0)
    hostile.expect_broken("used-bad-id")


def test_used_twice(hostile: HostileDevice) -> None:
    """A double completion: the second element names a head no longer in flight."""
    a = hostile.driver.add([], [(DATA, 16)], "a")
    hostile.driver.add([], [(DATA + 32, 16)], "b")
    hostile.used(a, 16)
    assert hostile.driver.get_used() == ("a", 16)
    hostile.used(a, 16)
    hostile.expect_broken("used-bad-id")


@pytest.mark.parametrize(
    ("readable", "writable", "length"),
    [([16], [16], 17), ([16], [], 1), ([], [8, 8], 17), ([], [4], 0xFFFF_FFFF)],
)
def test_used_bad_len(hostile: HostileDevice, readable: list[int], writable: list[int], length: int) -> None:
    out = [(DATA + 0x100 * i, n) for i, n in enumerate(readable)]
    in_ = [(DATA + 0x1000 + 0x100 * i, n) for i, n in enumerate(writable)]
    head = hostile.driver.add(out, in_, "tok")
    hostile.used(head, length)
    hostile.expect_broken("used-bad-len")


def test_used_len_equal_to_writable_length_is_fine(hostile: HostileDevice) -> None:
    head = hostile.driver.add([(DATA, 16)], [(DATA + 32, 8), (DATA + 64, 8)], "tok")
    hostile.used(head, 16)
    assert hostile.driver.get_used() == ("tok", 16)
    assert hostile.driver.broken is None


@pytest.mark.parametrize("bump", [2, Q, 0x8000, 0xFFFF])
def test_used_idx_jump(hostile: HostileDevice, bump: int) -> None:
    head = hostile.driver.add([], [(DATA, 16)], "tok")
    hostile.used(head, 0, bump=bump)  # one element written, index moved by ``bump``
    hostile.expect_broken("used-idx-jump")


def test_used_idx_jump_after_progress(hostile: HostileDevice) -> None:
    d = hostile.driver
    heads = [d.add([], [(DATA + 32 * i, 16)], i) for i in range(3)]
    hostile.used(heads[1], 4)
    assert d.get_used() == (1, 4)
    hostile.used(heads[0], 4, bump=3)  # 2 in flight, index 3 ahead
    hostile.expect_broken("used-idx-jump")
