"""Packed virtqueue with IN_ORDER and NOTIFICATION_DATA."""

from __future__ import annotations

import pytest

from tests.support.packed_bytes import AVAIL, USED, WRITE, rd
from tests.support.ringpair import RingPair
from virtio_sim.ring.chain import RingError

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
