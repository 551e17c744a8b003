"""The split driver queue on its own: ring set-up, descriptor bytes, indirect tables, detach,
and the lenient device on zero-length descriptors.
"""

from __future__ import annotations

import pytest

from tests.support.split_pair import Layout, Pair
from virtio_sim import layouts as L
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import DmaBuffer, RingError
from virtio_sim.ring.mock import MockPool
from virtio_sim.ring.split import QueueFullError, SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import DESC_F

# --------------------------------------------------------------------------- misc driver


def test_driver_zeroes_rings_and_rejects_empty_or_unsupported_chains() -> None:
    q = 4
    lay = Layout.for_queue(q)
    mem = GuestMemory.create(lay.total)
    try:
        mem.fill(0, lay.pool, 0xFF)
        addrs = SplitRingAddresses(lay.desc, lay.avail, lay.used)
        d = SplitDriverQueue(mem, q, addrs)
        assert mem.read(lay.desc, L.desc_table_size(q)) == bytes(L.desc_table_size(q))
        assert mem.read(lay.avail, L.avail_ring_size(q)) == bytes(L.avail_ring_size(q))
        assert mem.read(lay.used, L.used_ring_size(q)) == bytes(L.used_ring_size(q))
        with pytest.raises(ValueError, match="at least one buffer"):
            d.add([], [], "x")
        with pytest.raises(ValueError, match="not negotiated"):
            d.add([(lay.data, 1)], [], "x", use_indirect=True)
        for i in range(q):
            d.add([(lay.data, 1)], [], i)
        with pytest.raises(QueueFullError):
            d.add([(lay.data, 1)], [], "full")
        assert d.avail_idx == q
    finally:
        mem.close()


def test_descriptor_bytes_written_by_the_driver() -> None:
    """The exact descriptors a chain turns into, direct and indirect."""
    for order in ("little", "big"):
        pair = Pair(4, indirect=True, order=order)
        d = pair.driver
        codec = L.desc_codec(order)
        try:
            head = d.add([(0x5000, 10)], [(0x6000, 20), (0x7000, 30)], "t", use_indirect=False)
            descs = d.inflight[head].descs
            raw = [codec.unpack(pair.mem.read(pair.addrs.desc + 16 * i, 16)) for i in descs]
            assert raw == [
                (0x5000, 10, DESC_F.NEXT, descs[1]),
                (0x6000, 20, DESC_F.NEXT | DESC_F.WRITE, descs[2]),
                (0x7000, 30, DESC_F.WRITE, 0),
            ]
            head = d.add([(0x5000, 10)], [(0x6000, 20)], "i")
            ind = d.inflight[head].indirect
            assert ind is not None
            assert codec.unpack(pair.mem.read(pair.addrs.desc + 16 * head, 16)) == (
                ind.dev_addr,
                32,
                DESC_F.INDIRECT,
                0,
            )
            assert [codec.unpack(pair.mem.read(ind.gpa + 16 * i, 16)) for i in range(2)] == [
                (0x5000, 10, DESC_F.NEXT, 1),
                (0x6000, 20, DESC_F.WRITE, 0),
            ]
            idx = L.ring_index_codec(order)
            assert idx.unpack(pair.mem.read(pair.addrs.avail + 2, 2))[0] == 2
            assert idx.unpack(pair.mem.read(pair.addrs.avail + 4, 2))[0] == descs[0]
            assert idx.unpack(pair.mem.read(pair.addrs.avail + 6, 2))[0] == head
        finally:
            pair.close()


class RoundingPool(MockPool):
    """A pool that hands out more than asked for (page-granular allocators do)."""

    def alloc(self, size: int, align: int) -> DmaBuffer:
        return super().alloc(L.align_up(size, 64) + 8, align)


def test_indirect_table_length_is_the_chain_not_the_pool_buffer() -> None:
    pair = Pair(4, indirect=True)
    pair.driver.indirect_pool = pair.pool = RoundingPool(pair.layout.pool, pair.layout.pool_size)
    d, v = pair.driver, pair.device
    try:
        d.add([(pair.layout.data, 4)], [(pair.layout.data + 16, 4)], "t")
        c = v.pop()
        assert c is not None
        assert c.readable == [(pair.layout.data, 4)]
        assert c.writable == [(pair.layout.data + 16, 4)]
        assert c.descriptors == 3  # the indirect descriptor and its two entries
        v.push(c.head, 4)
        assert d.get_used() == ("t", 4)
        assert not pair.pool.live
    finally:
        pair.close()


def test_detach_all_returns_tokens_and_descriptors() -> None:
    pair = Pair(8, indirect=True)
    d, v = pair.driver, pair.device
    try:
        d.add([(pair.layout.data, 4)], [(pair.layout.data + 8, 4)], "a")
        d.add([(pair.layout.data, 4)], [], "b")
        d.add([(pair.layout.data, 4)], [(pair.layout.data + 8, 4)], "c", use_indirect=False)
        assert d.num_free == 8 - 1 - 1 - 2
        assert sorted(d.detach_all()) == ["a", "b", "c"]
        assert d.num_free == 8
        assert pair.pool is not None and not pair.pool.live
        assert len(set(d.free)) == 8
        v.reset()
        assert v.last_avail == v.used_idx == 0 and not v.in_flight
    finally:
        pair.close()


def test_lenient_device_skips_zero_length_descriptors() -> None:
    pair = Pair(4)
    lay = pair.layout
    lenient = SplitDeviceQueue(pair.space, 4, pair.addrs, RingFeatures(strict=False))
    try:
        pair.driver.add([(lay.data, 0), (lay.data, 4)], [(lay.data + 8, 0)], "z")
        c = lenient.pop()
        assert c is not None
        assert c.readable == [(lay.data, 4)] and c.writable == []
        assert c.descriptors == 3
        with pytest.raises(RingError) as e:
            pair.device.pop()  # the strict twin over the same ring
        assert e.value.violation == "zero-length"
        assert e.value.head == c.head
    finally:
        pair.close()
