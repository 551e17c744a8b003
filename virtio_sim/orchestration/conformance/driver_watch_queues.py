"""Driver watch, queue setup family: a queue is set up
before DRIVER_OK (after FEATURES_OK), never changed while live, with a size the transport
allows (QueueSizeMax, a power of two for split rings on PCI, non-zero for packed), its
areas aligned and used.flags zeroed; the legacy mmio steps in order (GuestPageSize, then
QueueSel/QueueNumMax/QueueNum/QueueAlign before QueuePFN); MSI-X vectors read back; a
stopped or reset queue read back before reuse and, after a queue reset, every register of
the first setup written again. The section of each rule is in specs/conformance/.
"""

from __future__ import annotations

from virtio_sim import layouts
from virtio_sim.dma import DmaError
from virtio_sim.orchestration.conformance.driver_watch_base import Family, QueueState
from virtio_sim.ring.view import RingView
from virtio_sim.spec import PCI, SPLIT, STATUS, USED_F, F

#: register fields that set a queue up
SETUP_FIELDS = ("size", "desc", "driver", "device", "align", "pfn")


class QueueRules(Family):
    CONDITIONS = {
        "vqreset.drv.verify": "RING_RESET",
        "vqreset.drv.reenable-full-setup": "RING_RESET",
        "pci.common.drv-queue-reset-wait": "RING_RESET",
        "mmio.drv.queue-reset-wait": "RING_RESET",
        "pci.common.drv-packed-size-nonzero": "RING_PACKED",
        "pci.common.drv-split-size-pow2": "!RING_PACKED",
        "packed.drv.alignment": "RING_PACKED",
        "split.drv.alignment": "!RING_PACKED",
        "split.availsupp.drv-init-used-flags": "!RING_PACKED",
    }

    def reset(self) -> None:
        self.w.queues.clear()
        self.vector_unverified: dict[int, int] = {}  # MSI-X vector written, not read back
        #: per queue, the setup registers its first enable was preceded by: what a re-enable
        #: after a queue reset must program again (vqreset.drv.reenable-full-setup)
        self.initial_setup: dict[int, frozenset[str]] = {}

    def queue(self, index: int) -> QueueState:
        q = self.w.queues.get(index)
        if q is None:
            q = self.w.queues[index] = QueueState(index)
        return q

    def on_queue_write(self, index: int, field_name: str, value: int, ready: bool) -> None:
        w = self.w
        w.config_rules.went_on(f"queue {index} {field_name} written")
        if field_name == "msix_vector":
            if value != PCI.msix_no_vector:
                self.vector_unverified[index] = value
                w.ok("pci.msix.drv-in-range")  # a refused vector is "pci-msix-range" misuse
            return
        q = self.queue(index)
        if field_name == "guest_page_size":
            return
        if q.stop_unverified and field_name != "enable":
            q.stop_unverified = False
            w.fail("mmio.drv.stop-queue", f"queue {index}: QueueReady 0 not read back before reuse")
        if w.mmio_legacy:
            self._legacy_mmio_step(q, field_name, value)
        if w.mmio and field_name == "enable" and not value:
            q.stop_unverified = True
        if field_name == "reset":
            if value:
                w.queues[index] = QueueState(index, reset_unverified=True, was_reset=True)
            return
        if q.reset_unverified:
            why = f"queue {index} set up again before its reset read back 0"
            w.fail("vqreset.drv.verify", why)
            w.fail("mmio.drv.queue-reset-wait" if w.mmio else "pci.common.drv-queue-reset-wait", why)
            q.reset_unverified = False
        setup = field_name in SETUP_FIELDS
        if setup:
            q.programmed.add(field_name)
        if field_name == "enable" and value:
            self._enabled(q)
        if not w.vhost and (setup or (field_name == "enable" and value)):
            self._before_driver_ok(q, field_name, value)
        if ready and field_name in ("size", "desc", "driver", "device"):
            why = f"queue {index} {field_name} written ({value:#x}) while the queue is live"
            w.fail("mmio.drv.no-touch-while-ready" if w.mmio else "pci.common.drv-config-before-enable", why)
        elif setup and not w.vhost:
            w.ok("mmio.drv.no-touch-while-ready" if w.mmio else "pci.common.drv-config-before-enable")
        if field_name == "size" and not w.vhost:
            self._check_size(index, value)
        if field_name == "start":  # vhost-user: a ring (re)starts at avail index ``value``
            w.queues[index] = QueueState(index, seen=value, kicked=value)
            w.feature_rules.check_features()  # the front-end set the features before starting rings
            return
        if field_name == "enable":
            if w.pci and not value:
                w.fail("pci.common.drv-no-queue-enable-zero", f"queue {index}: 0 written to queue_enable")
            elif w.pci:
                w.ok("pci.common.drv-no-queue-enable-zero")
            if value:
                q.started = False
                q.seen = q.kicked = 0
                q.recent.clear()
        if field_name == "pfn" and value:
            q.pfn_zeroed = False
            q.started = False
            q.seen = q.kicked = 0

    def _legacy_mmio_step(self, q: QueueState, field_name: str, value: int) -> None:
        """Legacy virtio-mmio: QueuePFN after GuestPageSize and the other setup steps."""
        w = self.w
        if field_name in ("size", "align"):
            q.steps.add(field_name)
        if field_name != "pfn":
            return
        if value:
            w.check(
                "mmio.legacy.drv-guest-page-size",
                w.transport_rules.page_size,
                f"queue {q.index}: QueuePFN before GuestPageSize",
            )
            missing = {"pfn0", "size_max", "size", "align"} - q.steps
            w.check(
                "mmio.legacy.drv-queue-setup",
                not missing,
                f"queue {q.index}: QueuePFN written without {', '.join(sorted(missing))}",
            )
        else:
            q.pfn_zeroed = True
        q.steps.clear()

    def _before_driver_ok(self, q: QueueState, field_name: str, value: int) -> None:
        w = self.w
        late = (
            bool(w.status & STATUS.DRIVER_OK) and not q.was_reset and not (field_name == "pfn" and value == 0)
        )
        w.check(
            "init.drv.setup-before-driver-ok",
            not late,
            f"queue {q.index} {field_name} written after DRIVER_OK",
        )
        early = not w.legacy and not w.status & STATUS.FEATURES_OK
        if not early:
            w.ok("init.drv.setup-before-driver-ok")
        else:
            w.fail(
                "init.drv.setup-before-driver-ok", f"queue {q.index} {field_name} written before FEATURES_OK"
            )
        w.status_rules.features_ok_unverified(f"queue {q.index} set up without reading FEATURES_OK back")

    def _check_size(self, index: int, size: int) -> None:
        w = self.w
        view = w.source.ring_view(index)
        if view is None:
            return
        if w.mmio:
            w.check(
                "mmio.drv.queue-size-le-max",
                size <= view.max_size,
                f"queue {index}: QueueSize {size} > QueueSizeMax {view.max_size}",
            )
        elif w.pci and w.has(F.RING_PACKED):
            w.check(
                "pci.common.drv-packed-size-nonzero",
                size != 0,
                f"queue {index}: queue_size 0 on a packed ring",
            )
        elif w.pci:
            pow2 = size > 0 and not size & (size - 1)
            w.check(
                "pci.common.drv-split-size-pow2",
                pow2,
                f"queue {index}: queue_size {size} is not a power of two",
            )

    def on_queue_read(self, index: int, field_name: str, value: int) -> None:
        w = self.w
        if field_name == "msix_vector":
            if self.vector_unverified.pop(index, None) is not None:
                w.ok("pci.msix.drv-verify")
            return
        if w.mmio_legacy and field_name in ("pfn", "size_max"):
            q0 = self.queue(index)
            if field_name == "pfn" and value == 0:
                q0.steps.add("pfn0")
            if field_name == "size_max":
                q0.steps.add("size_max")
                view = w.source.ring_view(index)
                live = view is not None and view.ready
                w.check(
                    "mmio.legacy.qsizemax-when-idle",
                    not live,
                    f"queue {index}: QueueSizeMax read while in use",
                )
        q = w.queues.get(index)
        if q is not None and field_name == "ready" and q.stop_unverified:
            q.stop_unverified = False
            w.ok("mmio.drv.stop-queue")
        if q is not None and field_name == "reset" and value == 0 and q.reset_unverified:
            q.reset_unverified = False
            w.ok(
                "vqreset.drv.verify",
                "mmio.drv.queue-reset-wait" if w.mmio else "pci.common.drv-queue-reset-wait",
            )

    def vectors_at_driver_ok(self) -> None:
        """DRIVER_OK: every MSI-X vector written must have been read back."""
        for vector_of, vector in self.vector_unverified.items():
            self.w.fail("pci.msix.drv-verify", f"MSI-X vector {vector} of {vector_of} never read back")
        self.vector_unverified.clear()

    def _enabled(self, q: QueueState) -> None:
        """A queue enabled: remember its first setup; after a queue reset, the re-enable
        must have programmed every register the first setup did (2.6.1 "exactly as during
        initial setup", values may differ)."""
        first = self.initial_setup.get(q.index)
        if not q.was_reset or first is None:
            self.initial_setup.setdefault(q.index, frozenset(q.programmed))
            return
        missing = sorted(first - q.programmed)
        self.w.check(
            "vqreset.drv.reenable-full-setup",
            not missing,
            f"queue {q.index} enabled again after its reset without writing {', '.join(missing)} "
            f"(its first setup wrote {', '.join(sorted(first))})",
        )

    def start(self, q: QueueState, view: RingView) -> None:
        """Checks once per enabled queue, at its first notification or the end of the run:
        the areas aligned, and (split) used.flags zeroed."""
        w = self.w
        q.started = True
        where = f"queue {q.index}: rings at {view.desc:#x}/{view.driver:#x}/{view.device:#x}"
        if view.packed:
            ok = (
                not view.desc % layouts.PACKED_DESC_ALIGN
                and not (view.driver | view.device) % layouts.EVENT_SUPPRESS_ALIGN
            )
            w.check("packed.drv.alignment", ok, where)
            return
        ok = (
            not view.desc % SPLIT.desc_align
            and not view.driver % SPLIT.avail_align
            and not view.device % SPLIT.used_align
        )
        w.check("split.drv.alignment", ok, where)
        try:
            flags = int.from_bytes(view.space.read(view.device, 2), view.order)
        except DmaError:
            return
        if self._device_served(q.index):
            return  # used.flags is the device's by now (a receive queue it already looked at)
        w.check(
            "split.availsupp.drv-init-used-flags",
            flags & USED_F.NO_NOTIFY == 0 or q.seen != 0,
            f"queue {q.index}: used.flags {flags:#x} when the queue was enabled",
        )

    def _device_served(self, index: int) -> bool:
        """Whether the device has already accessed queue ``index`` (our host device core
        builds its ring at the first serve: a receive queue served at DRIVER_OK)."""
        queue = getattr(self.w.source, "queue", None)
        state = queue(index) if callable(queue) else None
        return getattr(state, "ring", None) is not None
