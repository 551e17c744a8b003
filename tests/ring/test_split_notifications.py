"""Split virtqueue notifications: EVENT_IDX and the NO_NOTIFY / NO_INTERRUPT flags, kick and
interrupt decisions on both sides.
"""

from __future__ import annotations

from tests.support.split_pair import Pair
from virtio_sim.spec import USED_F

# --------------------------------------------------------------------------- notifications


def test_event_idx_enable_cb_with_nothing_pending_forces_next_interrupt() -> None:
    pair = Pair(8, event_idx=True)
    d, v = pair.driver, pair.device
    wr = [(pair.layout.data, 8)]
    try:
        v.set_notification(True)
        d.add([], wr, "a")
        assert d.kick_prepare()
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert v.needs_interrupt()  # first decision is always "yes"
        assert d.get_used() == ("a", 0)
        # No enable_cb: used_event still 0, the device must stay quiet for the next ones.
        for tok in ("b", "c"):
            d.add([], wr, tok)
            c = v.pop()
            assert c is not None
            v.push(c.head, 0)
            assert not v.needs_interrupt()
            assert d.get_used() == (tok, 0)
        assert d.enable_cb() is False  # nothing pending
        assert pair.used_event == d.last_used == 3
        d.add([], wr, "d")
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert v.needs_interrupt()  # the very next push crosses used_event
        d.add([], wr, "e")
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert not v.needs_interrupt()  # only once
    finally:
        pair.close()


def test_enable_cb_reports_pending_used_buffers() -> None:
    for event_idx in (False, True):
        pair = Pair(4, event_idx=event_idx)
        d, v = pair.driver, pair.device
        try:
            d.disable_cb()
            d.add([], [(pair.layout.data, 4)], "x")
            c = v.pop()
            assert c is not None
            v.push(c.head, 2)
            assert d.enable_cb() is True  # the race check of virtqueue_enable_cb()
            assert d.get_used() == ("x", 2)
            assert d.enable_cb() is False
        finally:
            pair.close()


def test_no_notify_suppresses_kicks_without_event_idx() -> None:
    pair = Pair(8)
    d, v = pair.driver, pair.device
    rd = [(pair.layout.data, 4)]
    try:
        d.add(rd, [], 1)
        assert d.kick_prepare()
        assert not d.kick_prepare()  # nothing new since the last kick
        v.set_notification(False)
        assert pair.read_u16(pair.addrs.used) == USED_F.NO_NOTIFY
        d.add(rd, [], 2)
        assert not d.kick_prepare()
        v.set_notification(True)
        d.add(rd, [], 3)
        assert d.kick_prepare()
    finally:
        pair.close()


def test_no_interrupt_flag_without_event_idx() -> None:
    pair = Pair(8)
    d, v = pair.driver, pair.device
    try:
        d.disable_cb()
        d.add([], [(pair.layout.data, 4)], 1)
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert not v.needs_interrupt()
        d.enable_cb()
        assert v.needs_interrupt()
    finally:
        pair.close()


def test_event_idx_kick_only_when_avail_event_is_crossed() -> None:
    pair = Pair(8, event_idx=True)
    d, v = pair.driver, pair.device
    rd = [(pair.layout.data, 4)]
    try:
        # avail_event is 0 after the driver zeroed the rings: the first add crosses it.
        d.add(rd, [], 1)
        assert d.kick_prepare()
        d.add(rd, [], 2)
        assert not d.kick_prepare()  # device has not re-armed avail_event
        assert v.pop() is not None and v.pop() is not None and v.pop() is None
        v.set_notification(True)
        assert pair.avail_event == 2
        d.add(rd, [], 3)
        d.add(rd, [], 4)
        assert d.kick_prepare()
        v.set_notification(False)  # a no-op with EVENT_IDX: nothing to write
        assert pair.avail_event == 2
    finally:
        pair.close()
