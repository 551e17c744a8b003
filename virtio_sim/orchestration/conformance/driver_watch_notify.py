"""Driver watch, notifications family: never before DRIVER_OK, only for a queue that is
set up (and not after QueuePFN 0 stopped it), the width and value each transport defines
(PCI: 16-bit queue index, 32 bits with NOTIFICATION_DATA; mmio: a queue index), a
NOTIFICATION_DATA value that says where the ring is, and, at the end of the run, a kick
for every buffer made available while the device asked for kicks (used.flags or
avail_event).
"""

from __future__ import annotations

from virtio_sim import layouts
from virtio_sim.dma import DmaError
from virtio_sim.orchestration.conformance.driver_watch_base import Family
from virtio_sim.ring.notify import decode_notify_data
from virtio_sim.ring.split import need_event
from virtio_sim.spec import NOTIFY_DATA, STATUS, USED_F, F, status_names


class NotifyRules(Family):
    CONDITIONS = {
        "notify.data.content": "NOTIFICATION_DATA",
        "pci.notify.drv-32bit": "NOTIFICATION_DATA",
        "packed.notify.drv-next-off-wrap": "NOTIFICATION_DATA",
        "split.availsupp.drv-event-idx-kick": "EVENT_IDX",
        "split.availsupp.drv-flags0-kick": "!EVENT_IDX",
    }

    kicks = 0

    def on_notify(self, index: int, value: int, width: int) -> None:
        w = self.w
        self.kicks += 1
        data = w.has(F.NOTIFICATION_DATA)
        if not w.vhost:
            self._register(index, value, width, data)
        view = w.source.ring_view(index)
        if view is None or not view.ready or not view.size:
            w.fail("notify.identifier", f"notification for queue {index}, which is not set up")
            stopped = w.queues.get(index)
            if stopped is not None and stopped.pfn_zeroed:
                w.fail("mmio.legacy.pfn-zero-stops", f"queue {index} kicked after QueuePFN 0 stopped it")
            return
        w.ok("notify.identifier")
        q = w.queue_rules.queue(index)
        try:
            if not q.started:
                w.queue_rules.start(q, view)
            if view.packed:
                w.ring_rules.scan_packed(q, view)
                expect = (q.seen % view.size, w.ring_rules.wrap(q.seen, view.size))
            else:
                idx = w.ring_rules.scan_split(q, view)
                q.kicked = idx
                expect = (idx & NOTIFY_DATA.off_mask, idx >> 15 & 1)
        except DmaError as e:
            w.unmapped.append(f"queue {index}: ring unreadable at a notification: {e}")
            return
        if data and width:
            nd = decode_notify_data(value)
            ok = (nd.next_off, nd.next_wrap) == expect and nd.queue == index
            why = (
                f"notification data {value:#010x}: next_off/wrap {nd.next_off}/{nd.next_wrap},"
                f" ring says {expect[0]}/{expect[1]}"
            )
            w.check("notify.data.content", ok, why)
            if view.packed:
                w.check("packed.notify.drv-next-off-wrap", ok, why)
            if w.mmio:
                w.check("mmio.notify.value", ok, why)

    def _register(self, index: int, value: int, width: int, data: bool) -> None:
        """What the notification register access itself must be."""
        w = self.w
        w.check(
            "init.drv.no-kick-before-driver-ok",
            bool(w.status & STATUS.DRIVER_OK),
            f"queue {index} notified before DRIVER_OK ({status_names(w.status)})",
        )
        if w.transport in ("pci-modern", "pci-transitional"):
            if data:
                w.check(
                    "pci.notify.drv-32bit",
                    width == 4,
                    f"notification of {width} bytes with NOTIFICATION_DATA",
                )
            else:
                w.check(
                    "pci.notify.drv-16bit", width == 2, f"notification of {width} bytes (16 bits expected)"
                )
                w.check(
                    "pci.notify.drv-value-index",
                    value == index,
                    f"notification value {value:#x} at queue {index}'s address",
                )
        if w.mmio and not data:
            w.check(
                "mmio.notify.value", value >> 16 == 0, f"QueueNotify value {value:#x} is not a queue index"
            )

    def finish_queues(self) -> None:
        """Rules that need the final state: buffers made available must have been kicked
        when the device asked for it."""
        w = self.w
        for index, q in w.queues.items():
            view = w.source.ring_view(index)
            if view is None or not view.ready or not view.size or view.packed:
                continue
            try:
                if not q.started:
                    w.queue_rules.start(q, view)
                idx = w.ring_rules.u16(view, view.driver + layouts.RING_IDX_OFFSET)
                w.ring_rules.recheck_split(q, view, idx)
                if idx == q.kicked:
                    continue
                if w.has(F.EVENT_IDX):
                    event = w.ring_rules.u16(view, view.device + layouts.avail_event_offset(view.size))
                    missed = need_event(event, idx, q.kicked)
                    w.check(
                        "split.availsupp.drv-event-idx-kick",
                        not missed,
                        f"queue {index}: avail idx {q.kicked} -> {idx} passed avail_event {event}"
                        " without a notification",
                    )
                else:
                    flags = w.ring_rules.u16(view, view.device)
                    missed = not flags & USED_F.NO_NOTIFY
                    w.check(
                        "split.availsupp.drv-flags0-kick",
                        not missed,
                        f"queue {index}: avail idx {q.kicked} -> {idx} with used.flags 0 and no notification",
                    )
            except DmaError:
                continue

    def finish(self) -> None:
        w = self.w
        if self.kicks and any(q.kicked or q.seen for q in w.queues.values()):
            # every kick with work found a split ring whose avail_event said so, or no work
            w.ok(
                "split.availsupp.drv-event-idx-kick"
                if w.has(F.EVENT_IDX)
                else "split.availsupp.drv-flags0-kick"
            )
        if any(q.pfn_zeroed for q in w.queues.values()):
            w.ok("mmio.legacy.pfn-zero-stops")  # stopped queues were not kicked again
