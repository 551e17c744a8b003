"""Split virtqueue index wrap: free-running 16-bit indices past 65535 and the largest queue."""

from __future__ import annotations

import pytest

from tests.support.split_pair import Pair
from virtio_sim.ring.chain import ChainWriter
from virtio_sim.ring.split import IDX_MASK, QueueFullError

# --------------------------------------------------------------------------- index wrap


@pytest.mark.parametrize("event_idx", [False, True])
def test_indices_wrap_past_65535_from_zero(event_idx: bool) -> None:
    """More than 2^16 buffers through a 4-entry queue, starting from index 0."""
    pair = Pair(4, event_idx=event_idx)
    d, v = pair.driver, pair.device
    rd, wr = (pair.layout.data, 4), (pair.layout.data + 64, 4)
    total = 0x10000 + 40
    try:
        v.set_notification(True)
        d.enable_cb()
        kicks = irqs = 0
        for i in range(0, total, 2):
            d.add([rd], [wr], i)
            d.add([], [wr], i + 1)
            kicks += d.kick_prepare()
            a = v.pop()
            b = v.pop()
            assert a is not None and b is not None and v.pop() is None
            assert a.readable == [rd] and a.writable == [wr] and b.writable == [wr]
            v.push(b.head, 1)
            v.push(a.head, 4)
            irqs += v.needs_interrupt()
            if event_idx:
                v.set_notification(True)
            assert d.get_used() == (i + 1, 1)
            assert d.get_used() == (i, 4)
            assert d.get_used() is None
            d.enable_cb()
        assert d.avail_idx == d.last_used == v.last_avail == v.used_idx == total & IDX_MASK
        assert pair.read_u16(pair.addrs.avail + 2) == total & IDX_MASK
        assert pair.read_u16(pair.addrs.used + 2) == total & IDX_MASK
        # every batch was announced and signalled: notifications stayed enabled
        assert kicks == irqs == total // 2
    finally:
        pair.close()


def test_queue_size_32768_wraps_and_takes_a_full_length_chain() -> None:
    q = 32768
    pair = Pair(q, event_idx=True, indirect=True, start=0x10000 - 20, slots=64)
    d, v = pair.driver, pair.device
    base = pair.layout.data
    try:
        v.set_notification(True)
        for i in range(60):
            d.add([(base + 16 * i, 16)], [(base + 0x1000 + 16 * i, 16)], i, use_indirect=i % 2 == 0)
        assert d.kick_prepare()
        seen = []
        while (c := v.pop()) is not None:
            seen.append(c.head)
            ChainWriter(v.space, c.writable).write(b"\x5a" * 16)
            v.push(c.head, 16)
        assert len(seen) == 60
        assert v.needs_interrupt()
        got = [d.get_used() for _ in range(60)]
        assert sorted(t for t, _ in got) == list(range(60))  # type: ignore[index]
        assert all(n == 16 for _, n in got)  # type: ignore[misc]
        assert d.get_used() is None
        assert d.avail_idx == 40
        # One direct chain of exactly the queue size: legal, uses every descriptor.
        segs = [(base + 8 * i % 0x8000, 8) for i in range(q)]
        head = d.add(segs[: q // 2], segs[q // 2 :], "long", use_indirect=False)
        assert d.num_free == 0
        with pytest.raises(QueueFullError):
            d.add([(base, 1)], [], "no room", use_indirect=False)
        c = v.pop()
        assert c is not None and c.head == head
        assert c.readable == segs[: q // 2] and c.writable == segs[q // 2 :]
        assert c.descriptors == q
        v.push(head, 8)
        assert d.get_used() == ("long", 8)
        assert d.num_free == q
    finally:
        pair.close()
