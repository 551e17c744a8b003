"""The shared chain walker with a recording sink, and the mock ring it is fed from."""

from __future__ import annotations

import pytest

from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.mock import MockError, MockPackedRing, MockSplitRing, split_layout
from virtio_sim.ring.walker import ChainWalker, ViolationLog
from virtio_sim.spec import DESC_F, PACKED_DESC_F

Q = 8
DATA = 0x8000


def _walker(mem: GuestMemory, log: ViolationLog, **kw: bool) -> ChainWalker:
    opts = {"indirect": True, "strict": True, **kw}
    return ChainWalker(IdentityAddressSpace(mem), Q, max_indirect=Q, sink=log, **opts)


def test_a_recording_sink_gets_the_violation_and_the_walk_stops() -> None:
    """A checker that records (ViolationLog) sees the same violation a device raises, and
    the walker returns None instead of raising."""
    mem = GuestMemory.create(0x10000)
    try:
        ring = MockSplitRing(mem, Q, *split_layout(0x1000, Q))
        ring.desc_table.store(0, DATA, 16, DESC_F.NEXT, 1)
        ring.desc_table.store(1, DATA + 16, 16, DESC_F.NEXT, 0)  # back to the head: a loop
        log = ViolationLog()
        walker = _walker(mem, log)
        assert walker.walk_split(0, None, ring.desc_addr) is None
        assert [(e.violation, e.head) for e in log.found] == [("chain-loop", 0)]
        ring.desc_table.store(1, DATA + 16, 16, DESC_F.WRITE)  # fixed: READ then WRITE
        chain = walker.walk_split(0, None, ring.desc_addr)
        assert chain is not None and chain.readable == [(DATA, 16)] and chain.writable == [(DATA + 16, 16)]
        assert len(log.found) == 1
    finally:
        mem.close()


def test_one_segment_rule_for_both_formats() -> None:
    """READ after WRITE is found by the same check whether the chain came from a split
    table or a packed ring."""
    mem = GuestMemory.create(0x10000)
    try:
        log = ViolationLog()
        walker = _walker(mem, log)
        split = MockSplitRing(mem, Q, *split_layout(0x1000, Q))
        split.desc_table.store(0, DATA, 16, DESC_F.WRITE | DESC_F.NEXT, 1)
        split.desc_table.store(1, DATA + 16, 16)
        assert walker.walk_split(0, None, split.desc_addr) is None
        packed = [(DATA, 16, 3, PACKED_DESC_F.WRITE | PACKED_DESC_F.NEXT), (DATA + 16, 16, 3, 0)]
        assert walker.walk_packed(3, packed) is None
        assert [(e.violation, e.head) for e in log.found] == [
            ("readable-after-writable", 0),
            ("readable-after-writable", 3),
        ]
    finally:
        mem.close()


def test_mock_fields_round_trip_and_refuse_outside_the_ring() -> None:
    mem = GuestMemory.create(0x10000)
    try:
        ring = MockSplitRing(mem, Q, *split_layout(0x1000, Q))
        ring.make_available(5, 6)
        assert ring.avail.idx.load() == 2 and ring.avail.ring.ref_at(1).load() == 6
        ring.set_avail_idx(0x1234)  # any value: a jump is the caller's to write
        assert ring.avail.idx.load() == 0x1234
        with pytest.raises(MockError):
            ring.desc_table.store(Q, DATA, 16)
        packed = MockPackedRing(mem, Q, 0x4000, 0x4000 + 16 * Q, 0x4000 + 16 * Q + 4)
        packed.store(Q + 1, DATA, 16, 1, packed.avail_bits())  # slots wrap round the ring
        assert packed.load(1) == (DATA, 16, 1, PACKED_DESC_F.AVAIL)
    finally:
        mem.close()
