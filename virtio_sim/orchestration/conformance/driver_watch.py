"""A checking device's eyes: every driver-side rule a device can see being kept or broken.

:class:`DriverWatch` implements the host's DriverObserver callbacks (host/observer.py) and
turns what a driver does into findings per requirement id: the status sequence (reset
first, ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK, no bit ever cleared, FEATURES_OK
read back, nothing after FAILED), the feature exchange (only offered bits, nothing after
FEATURES_OK, VERSION_1 taken), queue setup (before DRIVER_OK, nothing changed while live,
sizes the transport allows, ring alignment, zeroed used flags), notifications (never
before DRIVER_OK, the right width and value, NOTIFICATION_DATA that matches the ring), the
avail ring (never backwards, never more than the queue size, entries written before idx,
flags the feature set allows), every chain made available (length, loops, NEXT inside the
table, indirect rules, readable before writable; blk request framing, rng buffers
writable) and register misuse the transport refused. Ring violations the device itself
found while serving a queue are mapped to the driver requirement they break.

It sees only what a device sees: guest memory when the driver notifies and at the end of
a run, and the register accesses. Ids never exercised stay NOT_COVERED; ids whose feature
was not negotiated are NOT_APPLICABLE; an id exercised without a failure is PASS.

``vantage="vhost-user"``: behind a vhost-user front-end the status byte and the registers
belong to QEMU; only the features, the ring setup and the rings themselves are checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from virtio_sim import layouts
from virtio_sim.dma import DmaError
from virtio_sim.layouts import ByteOrder
from virtio_sim.orchestration.conformance.driver_watch_netcon import NetconRules
from virtio_sim.orchestration.conformance.findings import Finding, FindingLog, StrictStop
from virtio_sim.ring.notify import decode_notify_data
from virtio_sim.ring.split import need_event
from virtio_sim.ring.types import CHAIN_BYTES_LIMIT, INDIRECT_TABLE_LIMIT
from virtio_sim.ring.view import RingSource, RingView
from virtio_sim.spec import (
    BLK,
    BLK_F,
    BLK_T,
    DESC_F,
    FEATURES,
    IOMMU_F,
    IOMMU_MAP_F,
    IOMMU_T,
    MMIO_INT,
    NOTIFY_DATA,
    PACKED_DESC_F,
    PACKED_EVENT,
    PACKED_EVENT_F,
    PCI,
    SPLIT,
    STATUS,
    USED_F,
    F,
    bit,
    status_names,
)

IDX_MASK = 0xFFFF
#: what a device presented to test the driver -> the rule a driver that copes keeps
PRESENTED = {
    "reserved-type": "pci.cap.drv-ignore-reserved-type",
    "reserved-bar": "pci.cap.drv-ignore-reserved-bar",
    "large-cap-len": "pci.cap.drv-accept-large-cap-len",
    "odd-revision": "pci.id.drv-any-revision",
}
#: a feature bit no spec defines, offered on every driver run (driver_runner.unknown_feature)
UNKNOWN_FEATURE = "unknown-feature"
#: a modern interface whose device does not offer VERSION_1 (driver_runner, odd=...)
NO_VERSION_1 = "no-version-1"
#: odd mmio identification value presented (host MmioTransport.present_odd) -> the
#: register that reveals it and the rules of a driver that then leaves the device alone
ODD_MMIO: dict[str, tuple[str, tuple[str, ...]]] = {
    "bad-magic": ("MagicValue", ("mmio.drv.ignore-bad-magic",)),
    "bad-version": ("Version", ("mmio.drv.ignore-bad-version",)),
    "device-id-zero": ("DeviceID", ("mmio.drv.ignore-devid-zero", "mmio.drv.init-devid-zero-abort")),
}
#: PCI transport -> the id rule a driver that brings the function up keeps
MATCH_RULE = {
    "pci-modern": "pci.id.drv-match-modern",
    "pci-transitional": "pci.id.drv-match-transitional",
    "pci-legacy": "pci.id.drv-match-transitional",
}
#: device config layouts by device type: (offset, width) of every field
CONFIG_FIELDS: dict[str, list[tuple[int, int]]] = {
    key: [
        (off, width)
        for name, off in layouts.field_offsets(decl).items()
        for width in [layouts.field_widths(decl)[name]]
    ]
    for key, decl in (("blk", layouts.virtio_blk_config("little")), ("iommu", layouts.VirtioIommuConfig))
}
DEVICE_BIT_PREFIXES = {"IOMMU": "iommu", "BLK": "blk"}  # CONDITIONS on device-type feature bits
DISCARD_SEGMENT = 16  # struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags
DISCARD_UNMAP = 1  # flags bit 0
BLK_WRITEBACK = layouts.field_offsets(layouts.virtio_blk_config("little"))["writeback"]
BLK_CONFIG_OFFSETS = layouts.field_offsets(layouts.virtio_blk_config("little"))
IOMMU_REQUEST_QUEUE = 0  # virtio-iommu: requestq; 1 is the event queue
IDX_HALF = 0x8000  # an idx that moved "forward" by more than this went backwards
BLK_HEADER = layouts.blk_req_header_codec("little").size
#: how far back published avail entries are re-read for late changes: half the ring, so a
#: driver preparing its next entries (Linux prepares one at a time) is never mistaken
RECHECK_FRACTION = 2

#: device ring violation class -> (id on a split ring, id on a packed ring)
RING_VIOLATIONS: dict[str, tuple[str, str]] = {
    "chain-loop": ("split.desc.drv-chain-len-limit", "packed.sg.drv-queue-size-limit"),
    "next-out-of-range": ("split.chain.drv-max-queue-size", "packed.sg.drv-queue-size-limit"),
    "head-out-of-range": ("split.avail.drv-barrier-before-idx", "packed.wrap.drv-avail-encoding"),
    "nested-indirect": ("split.indirect.drv-no-nesting", "packed.indirect.drv-only-write-flag"),
    "indirect-with-next": ("split.indirect.drv-not-with-next", "packed.indirect.drv-not-in-list"),
    "indirect-not-negotiated": ("split.indirect.drv-feature", "packed.indirect.drv-feature"),
    "readable-after-writable": ("framing.drv.readable-before-writable", "packed.sg.drv-readable-first"),
    "avail-idx-jump": ("split.avail.idx-free-running", "packed.sg.drv-space-for-list"),
    "head-in-flight": ("split.avail.drv-barrier-before-idx", "packed.desc.drv-wait-used"),
    "too-many-in-flight": ("split.avail.idx-free-running", "packed.sg.drv-space-for-list"),
    "chain-too-big": ("split.desc.drv-chain-len-limit", "packed.sg.drv-device-limit"),
    "desc-wrap-bits": ("packed.wrap.drv-avail-encoding", "packed.wrap.drv-avail-encoding"),
    "chain-too-long": ("split.chain.drv-max-queue-size", "packed.sg.drv-queue-size-limit"),
    "ring-overrun": ("split.avail.idx-free-running", "packed.sg.drv-space-for-list"),
    "buffer-id-in-flight": ("packed.desc.drv-wait-used", "packed.desc.drv-wait-used"),
    "indirect-in-chain": ("packed.indirect.drv-not-in-list", "packed.indirect.drv-not-in-list"),
    "in-order-head": ("split.desc.drv-in-order-ring-order", "split.desc.drv-in-order-ring-order"),
    "in-order-next": ("split.desc.drv-in-order-next", "split.desc.drv-in-order-next"),
    "notify-data-mismatch": ("notify.data.content", "packed.notify.drv-next-off-wrap"),
    "console-rx-not-writable": ("framing.drv.readable-before-writable", "packed.sg.drv-readable-first"),
}

#: register misuse class (host transports) -> requirement
MISUSE: dict[str, str] = {
    "mmio-undefined": "mmio.drv.no-undefined-offsets",
    "mmio-config-range": "mmio.drv.no-undefined-offsets",
    "mmio-width": "mmio.drv.control-32bit",
    "mmio-read-wo": "mmio.drv.no-read-wo",
    "mmio-write-ro": "mmio.drv.no-write-ro",
    "mmio-config-width": "mmio.drv.config-natural-width",
    "pci-common-width": "pci.access.drv-natural-width",
    "pci-common-undefined": "pci.access.drv-natural-width",
    "pci-config-width": "pci.access.drv-natural-width",
    "pci-isr-width": "pci.access.drv-natural-width",
    "pci-common-write-ro": "pci.common.drv-no-write-ro",
    "pci-msix-range": "pci.msix.drv-in-range",
    "pci-cap-write": "pci.cap.drv-no-write",
    "pci-cfgcap-unaligned": "pci.cfgcap.drv-aligned",
    "pci-cfgcap-range": "pci.cfgcap.drv-valid-range",
}
_MMIO_ACCESS_IDS = ("mmio.drv.no-undefined-offsets", "mmio.drv.control-32bit", "mmio.drv.no-read-wo",
                    "mmio.drv.no-write-ro", "mmio.drv.config-natural-width")  # fmt: skip
_PCI_ACCESS_IDS = ("pci.access.drv-natural-width", "pci.common.drv-no-write-ro", "pci.cap.drv-no-write")

#: ids that only apply with (or without, "!") a feature: NOT_APPLICABLE otherwise
CONDITIONS: dict[str, str] = {
    "notify.data.content": "NOTIFICATION_DATA",
    "pci.notify.drv-32bit": "NOTIFICATION_DATA",
    "packed.notify.drv-next-off-wrap": "NOTIFICATION_DATA",
    "split.usedsupp.drv-flags-zero-with-event-idx": "EVENT_IDX",
    "split.availsupp.drv-event-idx-kick": "EVENT_IDX",
    "split.usedsupp.drv-flags-0-1": "!EVENT_IDX",
    "split.availsupp.drv-flags0-kick": "!EVENT_IDX",
    "vqreset.drv.verify": "RING_RESET",
    "vqreset.drv.reenable-full-setup": "RING_RESET",
    "pci.common.drv-queue-reset-wait": "RING_RESET",
    "mmio.drv.queue-reset-wait": "RING_RESET",
    "pci.common.drv-packed-size-nonzero": "RING_PACKED",
    "pci.common.drv-split-size-pow2": "!RING_PACKED",
    "packed.drv.alignment": "RING_PACKED",
    "packed.sg.drv-queue-size-limit": "RING_PACKED",
    "packed.sg.drv-readable-first": "RING_PACKED",
    "packed.sg.drv-first-last": "RING_PACKED",
    "packed.wrap.drv-avail-encoding": "RING_PACKED",
    "packed.indirect.drv-feature": "RING_PACKED",
    "packed.indirect.drv-not-in-list": "RING_PACKED",
    "packed.indirect.drv-only-write-flag": "RING_PACKED",
    "packed.evsupp.reserved-zero": "RING_PACKED",
    "packed.evsupp.desc-needs-event-idx": "RING_PACKED",
    "split.drv.alignment": "!RING_PACKED",
    "split.avail.drv-no-decrement": "!RING_PACKED",
    "split.avail.idx-free-running": "!RING_PACKED",
    "split.avail.drv-barrier-before-idx": "!RING_PACKED",
    "split.availsupp.drv-init-used-flags": "!RING_PACKED",
    "split.chain.drv-max-queue-size": "!RING_PACKED",
    "split.desc.drv-chain-len-limit": "!RING_PACKED",
    "split.indirect.drv-feature": "!RING_PACKED",
    "split.indirect.drv-not-with-next": "!RING_PACKED",
    "split.indirect.drv-no-nesting": "!RING_PACKED",
    "init.legacy.drv-skip-features-ok": "!VERSION_1",
    "split.desc.drv-in-order-next": "IN_ORDER",
    "split.desc.drv-in-order-ring-order": "IN_ORDER",
    "split.indirect.drv-in-order-sequential": "IN_ORDER",
    "packed.desc.zero-init": "RING_PACKED",
    "packed.wrap.init-one": "RING_PACKED",
    "packed.indirect.drv-device-limit": "RING_PACKED",
    "packed.sg.drv-device-limit": "RING_PACKED",
    "packed.desc.drv-no-change-after-avail": "RING_PACKED",
    "blk.legacy.req-native-endian-drv": "!VERSION_1",
    "split.legacy.drv-native-endian": "!VERSION_1",
    "split.legacy.drv-fixed-layout": "!VERSION_1",
    "split.legacy.drv-size-and-alloc": "!VERSION_1",
    "mmio.legacy.queue-layout": "!VERSION_1",
    "pci.legacy.queue-pfn": "!VERSION_1",
    "blk.legacy.drv-framing": "!VERSION_1",
    "features.legacy.drv-no-high-bits": "!VERSION_1",
    "blk.drv.discard-max-seg": "BLK_DISCARD",
    "blk.drv.write-zeroes-max-seg": "BLK_WRITE_ZEROES",
    "blk.drv.secure-erase-max-seg": "BLK_SECURE_ERASE",
    "iommu.probe.drv-size": "IOMMU_PROBE",
    "iommu.req.drv-domain-range": "IOMMU_DOMAIN_RANGE",
    "iommu.req.drv-input-range": "IOMMU_INPUT_RANGE",
    "features.legacy.drv-accept-any-layout": "!VERSION_1",
}


def known_feature_mask(device_type: str) -> int:
    """The feature bits the spec defines for ``device_type`` (and the transport)."""
    return sum(1 << b for b in range(64) if FEATURES.lookup(b, device_type) is not None)


@dataclass
class _Queue:
    """What the watch remembers about one queue since it was enabled."""

    index: int
    started: bool = False  # ring checks at enable done
    seen: int = 0  # split: avail idx the watch has read up to; packed: descriptor position
    kicked: int = 0  # split: avail idx at the last notification
    recent: dict[int, int] = field(default_factory=dict)  # split: position -> head read
    #: what the device consumed before the watch looked, counted and not judged: split,
    #: chains; packed, descriptors (a list's length is unknown once its slots are reused)
    consumed_unseen: int = 0
    reset_unverified: bool = False
    was_reset: bool = False
    next_head: int = 0  # split IN_ORDER: where the next chain must start
    first_scan: bool = True  # the ring's first look (packed zero-init and wrap, legacy layout)
    exposed: list[tuple[int, int, bytes]] = field(default_factory=list)  # packed: unused lists
    steps: set[str] = field(default_factory=set)  # legacy mmio setup steps seen (2.x 4.2.4)
    stop_unverified: bool = False  # mmio: QueueReady 0 written, not read back yet
    pfn_zeroed: bool = False  # legacy mmio: QueuePFN 0 written (the queue is stopped)
    programmed: set[str] = field(default_factory=set)  # setup registers written since set-up began


class DriverWatch:
    """Records driver-side findings into ``log`` (see the module docstring)."""

    def __init__(
        self,
        log: FindingLog,
        source: RingSource,
        *,
        transport: str,
        device_type: str = "",
        vantage: str = "transport",
        on_stop: Callable[[Finding], None] | None = None,
        presented: tuple[str, ...] = (),
    ) -> None:
        self.log = log
        self.source = source
        self.transport = transport  # mmio-v1, mmio-v2, pci-modern, pci-legacy, vhost-user, ...
        self.device_type = device_type
        self.vantage = vantage
        self.on_stop = on_stop
        #: odd things the device presents to test the driver (PCI: "reserved-type",
        #: "reserved-bar", "large-cap-len" capabilities ahead of the real ones)
        self.presented = presented
        #: the driver did not reach DRIVER_OK on a device offering an unknown feature bit
        #: (why); a control run without the bit decides whether that bit was the cause
        self.unknown_refused: str | None = None
        #: net/console rules (driver_watch_netcon.py), for those device types
        self.netcon: NetconRules | None = None
        if device_type in ("net", "console") and vantage != "vhost-user":
            self.netcon = NetconRules(
                device_type,
                lambda: int(self.source.driver_features),
                lambda: self.legacy,
                getattr(source, "model", None),
                self._check,
                self._ok,
            )
        self.driver_ok_seen = False
        self.stopped: Finding | None = None
        self.exercised: set[str] = set()
        self.unmapped: list[str] = []  # device violations / misuse no requirement covers
        self.chains = 0
        self.kicks = 0
        self.status = 0
        self._reset_state()
        self.reset_seen = False
        self.features = 0  # the features the driver settled on (checked at FEATURES_OK)
        self.ever_features_ok = False
        self.first_registers: list[tuple[str, str]] = []  # mmio: the first accesses
        self.iommu_maps: dict[int, list[tuple[int, int]]] = {}  # domain -> mapped ranges
        self.pending_widths: list[tuple[int, int]] = []  # transitional config reads to judge
        #: an odd mmio value presented: (register revealing it, rules), read yet, touched after
        self.odd = next((ODD_MMIO[p] for p in presented if p in ODD_MMIO), None)
        self.odd_seen = False
        self.odd_touched = False
        self.failed_set = False  # the driver set FAILED at some point
        #: mmio generation loop: the generation read before the current config reads, whether
        #: config was read since, and why a re-read is owed (the generation moved meanwhile)
        self.gen_open: int | None = None
        self.gen_config_read = False
        self.gen_retry: str | None = None

    # -- recording --------------------------------------------------------------------------

    @property
    def _mmio(self) -> bool:
        return self.transport.startswith("mmio")

    @property
    def _pci(self) -> bool:
        return self.transport.startswith("pci")

    @property
    def _vhost(self) -> bool:
        return self.vantage == "vhost-user"

    @property
    def _mmio_legacy(self) -> bool:
        return self.transport in ("mmio", "mmio-v1")

    def _fail(self, requirement: str, evidence: str) -> None:
        if self.stopped is not None:
            return
        self._fail_one(requirement, evidence)
        if self._mmio and requirement.startswith(("init.", "status.")):
            self._fail_one("mmio.drv.generic-init", f"{requirement}: {evidence}")

    def _fail_one(self, requirement: str, evidence: str) -> None:
        if self.stopped is not None:
            return
        try:
            self.log.failed(requirement, evidence)
        except StrictStop as stop:
            self.stopped = stop.finding
            if self.on_stop is not None:
                self.on_stop(stop.finding)

    def _ok(self, *requirements: str) -> None:
        self.exercised.update(requirements)

    def _check(self, requirement: str, ok: bool, evidence: str) -> bool:
        if ok:
            self.exercised.add(requirement)
        else:
            self._fail(requirement, evidence)
        return ok

    def _reset_state(self) -> None:
        self.dfsel = self.gfsel = False  # mmio feature selectors written since the reset
        self.page_size = False  # legacy mmio GuestPageSize written since the reset
        self.int_status: int | None = None  # mmio InterruptStatus read and not yet acked
        self.vector_unverified: dict[int, int] = {}  # MSI-X vector written, not read back
        self.reset_pending = False
        self.fok_unverified = False
        self.offered: dict[int, int] = {}
        self.acked: dict[int, int] = {}
        self.features_checked = False
        self.queues: dict[int, _Queue] = {}
        #: per queue, the setup registers its first enable was preceded by: what a re-enable
        #: after a queue reset must program again (vqreset.drv.reenable-full-setup)
        self.initial_setup: dict[int, frozenset[str]] = {}

    def has(self, feature: int) -> bool:
        return bool(self.source.driver_features >> feature & 1)

    @property
    def legacy(self) -> bool:
        return not self.has(F.VERSION_1)

    # -- status -------------------------------------------------------------------------------

    def on_status_write(self, old: int, value: int, new: int) -> None:
        if self.stopped is not None or self._vhost:
            return
        self._went_on(f"status {status_names(value)} written")
        if value == 0:
            self._finish_queues()
            self._reset_state()
            self.reset_pending = True
            self.reset_seen = True
            self.status = 0
            return
        self._check("init.drv.reset-first", self.reset_seen, f"first status write {value:#x} was not a reset")
        self.reset_seen = True
        if self.reset_pending:
            why = f"status {status_names(value)} written before the reset read back 0"
            self._fail("reset.drv.complete-on-zero", why)
            if self._pci:
                self._fail("pci.common.drv-wait-reset", why)
            self.reset_pending = False
        cleared = old & ~value & ~STATUS.DEVICE_NEEDS_RESET
        self._check(
            "status.drv.never-clear-bit",
            not cleared,
            f"status write {status_names(value)} clears {status_names(cleared)} of {status_names(old)}",
        )
        if NO_VERSION_1 in self.presented and value & ~old:
            # a driver needs VERSION_1 on a modern interface: FAILED, not FEATURES_OK/DRIVER_OK
            if value & ~old & (STATUS.FEATURES_OK | STATUS.DRIVER_OK):
                self._fail(
                    "features.drv.fail-if-no-fallback",
                    f"{status_names(value)} written although the device offers no VERSION_1",
                )
            elif value & STATUS.FAILED:
                self._ok("features.drv.fail-if-no-fallback")
        if value & STATUS.FAILED:
            self.failed_set = True
        if old & STATUS.FAILED and value & ~old & ~STATUS.FAILED:
            why = f"after FAILED the driver wrote {status_names(value)} without a reset"
            self._fail("status.drv.reset-after-failed", why)
            self._fail("init.drv.stop-on-error", why)
        added = value & ~old
        if added & STATUS.DRIVER:
            self._check(
                "init.drv.acknowledge",
                bool(old & STATUS.ACKNOWLEDGE),
                f"DRIVER set before ACKNOWLEDGE ({status_names(value)})",
            )
            self._step_ok(old, value, STATUS.ACKNOWLEDGE)
        if added & (STATUS.FEATURES_OK | STATUS.DRIVER_OK) and self.pending_widths:
            pending, self.pending_widths = self.pending_widths, []
            if not self.legacy:
                for offset, size in pending:
                    self._check_config_width(offset, size)
        if added & STATUS.FEATURES_OK:
            self._step_ok(old, value, STATUS.DRIVER)
            self._check(
                "init.drv.driver-bit",
                bool(old & STATUS.DRIVER),
                f"FEATURES_OK set before DRIVER ({status_names(value)})",
            )
            self._check_features()
            self._check(
                "init.drv.feature-exchange",
                bool(self.offered) and bool(self.acked),
                "FEATURES_OK set without reading and writing the feature bits",
            )
            self._check(
                "features.legacy.drv-detect-legacy-device",
                bool(self.offered.get(1, 0) & bit(F.VERSION_1 - 32)),
                "FEATURES_OK set for a device that does not offer VERSION_1 (a legacy device)",
            )
            self._check(
                "init.legacy.drv-skip-features-ok",
                not self.legacy,
                "a legacy (no VERSION_1) driver set FEATURES_OK",
            )
            self.fok_unverified = True
            self.ever_features_ok = True
        if added & STATUS.DRIVER_OK:
            if self.legacy:
                self._check_features()
                self._step_ok(old, value, STATUS.DRIVER)
                if not self.offered.get(1, 0) & bit(F.VERSION_1 - 32):
                    self._ok("features.legacy.drv-detect-legacy-device")
                self._ok("init.legacy.drv-skip-features-ok")
            else:
                self._check(
                    "init.drv.set-features-ok",
                    bool(old & STATUS.FEATURES_OK),
                    f"DRIVER_OK set before FEATURES_OK ({status_names(old)} -> {status_names(value)})",
                )
                self._check(
                    "init.drv.reread-features-ok",
                    not self.fok_unverified,
                    "DRIVER_OK set without reading FEATURES_OK back",
                )
                self._step_ok(old, value, STATUS.FEATURES_OK)
            self._ok("init.drv.driver-ok-last")
            self.driver_ok_seen = True
            if self._mmio:
                self._ok("mmio.drv.generic-init", "mmio.drv.no-shm-unless-expected")
            for vector_of, vector in self.vector_unverified.items():
                self._fail("pci.msix.drv-verify", f"MSI-X vector {vector} of {vector_of} never read back")
            self.vector_unverified.clear()
        self.status = new

    def _step_ok(self, old: int, value: int, needed: int) -> None:
        self._check(
            "status.drv.set-bits-per-step",
            bool(old & needed),
            f"{status_names(value & ~old)} set before {status_names(needed)}"
            f" ({status_names(old)} -> {status_names(value)})",
        )

    def on_status_read(self, value: int) -> None:
        if self.stopped is not None or self._vhost:
            return
        if self.reset_pending and value == 0:
            self.reset_pending = False
            self._ok("reset.drv.complete-on-zero")
            if self._pci:
                self._ok("pci.common.drv-wait-reset")
        if self.fok_unverified:
            self.fok_unverified = False
            self._ok("init.drv.reread-features-ok")

    # -- features -----------------------------------------------------------------------------

    def on_features_read(self, window: int, value: int) -> None:
        if self.stopped is None:
            self.offered[window] = value

    def on_features_write(self, window: int, value: int) -> None:
        if self.stopped is not None:
            return
        if not self._vhost and self.status & STATUS.FEATURES_OK:
            self._fail(
                "init.drv.no-features-after-features-ok",
                f"feature window {window} written ({value:#x}) after FEATURES_OK",
            )
            return
        self.acked[window] = value
        self.features_checked = False

    def _check_features(self) -> None:
        if self.features_checked:
            return
        self.features_checked = True
        offered = sum(v << (32 * w) for w, v in self.offered.items() if w < 2)
        acked = sum(v << (32 * w) for w, v in self.acked.items() if w < 2)
        self.features = acked
        extra = acked & ~offered
        self._check(
            "features.drv.only-offered",
            not extra,
            f"acked {extra:#x}, which the device did not offer (offered {offered:#x})",
        )
        if self._vhost:
            return  # what the front-end offered its guest is not visible: no accept-* rules
        self._ok("init.drv.no-features-after-features-ok")
        if offered & bit(F.VERSION_1):
            self._check(
                "features.drv.accept-version-1",
                bool(acked & bit(F.VERSION_1)),
                "VERSION_1 offered but not accepted",
            )
        undefined = [b for b in range(64) if acked >> b & 1 and FEATURES.lookup(b, self.device_type) is None]
        self._check("features.drv.ignore-invalid", not undefined, f"acked undefined feature bits {undefined}")
        self._check(
            "features.drv.sriov-requires-cap",
            not acked & bit(F.SR_IOV),
            "VIRTIO_F_SR_IOV negotiated for a function without an SR-IOV capability",
        )
        if not acked & bit(F.VERSION_1):
            self._check(
                "features.legacy.drv-no-high-bits", not acked >> 32, f"legacy driver acked {acked:#x}"
            )
        if offered & bit(F.BAD_FEATURE):
            self._check(
                "features.legacy.bit30", not acked & bit(F.BAD_FEATURE), "bit 30 (BAD_FEATURE) negotiated"
            )
        if not acked & bit(F.VERSION_1) and offered & bit(F.ANY_LAYOUT):
            self._check(
                "features.legacy.drv-accept-any-layout",
                bool(acked & bit(F.ANY_LAYOUT)),
                "legacy driver did not accept the offered ANY_LAYOUT",
            )
        for feature, requirement in (
            (F.ACCESS_PLATFORM, "features.drv.accept-access-platform"),
            (F.RING_PACKED, "features.drv.accept-ring-packed"),
            (F.ORDER_PLATFORM, "features.drv.accept-order-platform"),
        ):
            if offered & bit(feature):
                self._check(
                    requirement, bool(acked & bit(feature)), f"feature bit {feature} offered but not accepted"
                )
            elif requirement not in self.log.findings:
                self.log.not_applicable(requirement, f"feature bit {feature} was not offered")

    # -- config -------------------------------------------------------------------------------

    def on_config_read(self, offset: int, size: int) -> None:
        if self.stopped is not None or self._vhost:
            return
        self._after_odd(f"config read at {offset:#x}")
        if self.gen_open is not None:
            self.gen_config_read = True
        self._check_config_width(offset, size)
        if (
            self.device_type == "blk"
            and offset <= BLK_WRITEBACK < offset + size
            and not self._legacy_transport
        ):
            self._check(
                "blk.drv.writeback-after-features-ok",
                bool(self.status & STATUS.FEATURES_OK),
                f"writeback read before FEATURES_OK ({status_names(self.status)})",
            )

    @property
    def _legacy_transport(self) -> bool:
        return self.transport in ("mmio", "mmio-v1", "pci-legacy")

    def _check_config_width(self, offset: int, size: int) -> None:
        """Modern interfaces: every device config field at its natural width (64-bit fields
        may also be read as two aligned 32-bit halves; byte arrays byte by byte)."""
        fields = CONFIG_FIELDS.get(self.device_type)
        if fields is None or self._legacy_transport:
            return
        if self.transport == "pci-transitional" and not self.has(F.VERSION_1):
            # a transitional device: which interface this read came through (legacy drivers
            # may read config at any width) is known once the driver acks VERSION_1 or not
            self.pending_widths.append((offset, size))
            return
        ok = False
        for start, width in fields:
            if start <= offset < start + width:
                natural = size == width and offset == start
                half = width == 8 and size == 4 and offset in (start, start + 4)
                array = width not in (1, 2, 4, 8) and size == 1
                ok = natural or half or array
                break
        rule = "mmio.drv.config-natural-width" if self._mmio else "pci.access.drv-natural-width"
        self._check(rule, ok, f"{self.device_type} config read of {size} bytes at {offset:#x}")

    def on_config_write(self, offset: int, size: int, value: int) -> None:
        if self.stopped is not None or self._vhost:
            return
        self._after_odd(f"config write at {offset:#x}")
        if self.device_type == "iommu":
            self._check_iommu_config_write(offset, size, value)
        if self.netcon is not None and not self.legacy:
            self.netcon.on_config_write(offset, size)
        self._check(
            "init.drv.no-config-write-before-features-ok",
            bool(self.status & STATUS.FEATURES_OK) or (self.legacy and bool(self.status & STATUS.DRIVER)),
            f"config write of {size} bytes at {offset:#x} during feature negotiation"
            f" ({status_names(self.status)})",
        )

    # -- queues -------------------------------------------------------------------------------

    def _queue(self, index: int) -> _Queue:
        q = self.queues.get(index)
        if q is None:
            q = self.queues[index] = _Queue(index)
        return q

    def on_queue_write(self, index: int, field_name: str, value: int, ready: bool) -> None:
        if self.stopped is not None:
            return
        self._went_on(f"queue {index} {field_name} written")
        if field_name == "msix_vector":
            if value != PCI.msix_no_vector:
                self.vector_unverified[index] = value
                self._ok("pci.msix.drv-in-range")  # a refused vector is "pci-msix-range" misuse
            return
        q = self._queue(index)
        if field_name == "guest_page_size":
            return
        if q.stop_unverified and field_name != "enable":
            q.stop_unverified = False
            self._fail("mmio.drv.stop-queue", f"queue {index}: QueueReady 0 not read back before reuse")
        if self._mmio_legacy and field_name in ("size", "align"):
            q.steps.add(field_name)
        if self._mmio_legacy and field_name == "pfn":
            if value:
                self._check(
                    "mmio.legacy.drv-guest-page-size",
                    self.page_size,
                    f"queue {index}: QueuePFN before GuestPageSize",
                )
                missing = {"pfn0", "size_max", "size", "align"} - q.steps
                self._check(
                    "mmio.legacy.drv-queue-setup",
                    not missing,
                    f"queue {index}: QueuePFN written without {', '.join(sorted(missing))}",
                )
            else:
                q.pfn_zeroed = True
            q.steps.clear()
        if self._mmio and field_name == "enable" and not value:
            q.stop_unverified = True
        if field_name == "reset":
            if value:
                self.queues[index] = _Queue(index, reset_unverified=True, was_reset=True)
            return
        if q.reset_unverified:
            why = f"queue {index} set up again before its reset read back 0"
            self._fail("vqreset.drv.verify", why)
            self._fail("mmio.drv.queue-reset-wait" if self._mmio else "pci.common.drv-queue-reset-wait", why)
            q.reset_unverified = False
        setup = field_name in ("size", "desc", "driver", "device", "align", "pfn")
        if setup:
            q.programmed.add(field_name)
        if field_name == "enable" and value:
            self._enabled(q)
        if not self._vhost and (setup or (field_name == "enable" and value)):
            late = (
                bool(self.status & STATUS.DRIVER_OK)
                and not q.was_reset
                and not (field_name == "pfn" and value == 0)
            )
            self._check(
                "init.drv.setup-before-driver-ok",
                not late,
                f"queue {index} {field_name} written after DRIVER_OK",
            )
            early = not self.legacy and not self.status & STATUS.FEATURES_OK
            if not early:
                self._ok("init.drv.setup-before-driver-ok")
            else:
                self._fail(
                    "init.drv.setup-before-driver-ok",
                    f"queue {index} {field_name} written before FEATURES_OK",
                )
            if self.fok_unverified:
                self._fail(
                    "init.drv.reread-features-ok", f"queue {index} set up without reading FEATURES_OK back"
                )
        if ready and field_name in ("size", "desc", "driver", "device"):
            why = f"queue {index} {field_name} written ({value:#x}) while the queue is live"
            self._fail(
                "mmio.drv.no-touch-while-ready" if self._mmio else "pci.common.drv-config-before-enable", why
            )
        elif setup and not self._vhost:
            self._ok("mmio.drv.no-touch-while-ready" if self._mmio else "pci.common.drv-config-before-enable")
        if field_name == "size" and not self._vhost:
            self._check_size(index, value)
        if field_name == "start":  # vhost-user: a ring (re)starts at avail index ``value``
            self.queues[index] = _Queue(index, seen=value, kicked=value)
            self._check_features()  # the front-end set the features before starting rings
            return
        if field_name == "enable":
            if self._pci and not value:
                self._fail("pci.common.drv-no-queue-enable-zero", f"queue {index}: 0 written to queue_enable")
            elif self._pci:
                self._ok("pci.common.drv-no-queue-enable-zero")
            if value:
                q.started = False
                q.seen = q.kicked = 0
                q.recent.clear()
        if field_name == "pfn" and value:
            q.pfn_zeroed = False
            q.started = False
            q.seen = q.kicked = 0

    def _check_size(self, index: int, size: int) -> None:
        view = self.source.ring_view(index)
        if view is None:
            return
        if self._mmio:
            self._check(
                "mmio.drv.queue-size-le-max",
                size <= view.max_size,
                f"queue {index}: QueueSize {size} > QueueSizeMax {view.max_size}",
            )
        elif self._pci and self.has(F.RING_PACKED):
            self._check(
                "pci.common.drv-packed-size-nonzero",
                size != 0,
                f"queue {index}: queue_size 0 on a packed ring",
            )
        elif self._pci:
            pow2 = size > 0 and not size & (size - 1)
            self._check(
                "pci.common.drv-split-size-pow2",
                pow2,
                f"queue {index}: queue_size {size} is not a power of two",
            )

    def on_queue_read(self, index: int, field_name: str, value: int) -> None:
        if self.stopped is not None:
            return
        if field_name == "msix_vector":
            if self.vector_unverified.pop(index, None) is not None:
                self._ok("pci.msix.drv-verify")
            return
        if self._mmio_legacy and field_name in ("pfn", "size_max"):
            q0 = self._queue(index)
            if field_name == "pfn" and value == 0:
                q0.steps.add("pfn0")
            if field_name == "size_max":
                q0.steps.add("size_max")
                view = self.source.ring_view(index)
                live = view is not None and view.ready
                self._check(
                    "mmio.legacy.qsizemax-when-idle",
                    not live,
                    f"queue {index}: QueueSizeMax read while in use",
                )
        q = self.queues.get(index)
        if q is not None and field_name == "ready" and q.stop_unverified:
            q.stop_unverified = False
            self._ok("mmio.drv.stop-queue")
        if q is not None and field_name == "reset" and value == 0 and q.reset_unverified:
            q.reset_unverified = False
            self._ok(
                "vqreset.drv.verify",
                "mmio.drv.queue-reset-wait" if self._mmio else "pci.common.drv-queue-reset-wait",
            )

    def _enabled(self, q: _Queue) -> None:
        """A queue enabled: remember its first setup; after a queue reset, the re-enable
        must have programmed every register the first setup did (2.6.1 "exactly as during
        initial setup", values may differ)."""
        first = self.initial_setup.get(q.index)
        if not q.was_reset or first is None:
            self.initial_setup.setdefault(q.index, frozenset(q.programmed))
            return
        missing = sorted(first - q.programmed)
        self._check(
            "vqreset.drv.reenable-full-setup",
            not missing,
            f"queue {q.index} enabled again after its reset without writing {', '.join(missing)} "
            f"(its first setup wrote {', '.join(sorted(first))})",
        )

    def _start(self, q: _Queue, view: RingView) -> None:
        """Checks once per enabled queue, at its first notification or the end of the run."""
        q.started = True
        if view.packed:
            ok = (
                not view.desc % layouts.PACKED_DESC_ALIGN
                and not (view.driver | view.device) % layouts.EVENT_SUPPRESS_ALIGN
            )
            self._check(
                "packed.drv.alignment",
                ok,
                f"queue {q.index}: rings at {view.desc:#x}/{view.driver:#x}/{view.device:#x}",
            )
            return
        ok = (
            not view.desc % SPLIT.desc_align
            and not view.driver % SPLIT.avail_align
            and not view.device % SPLIT.used_align
        )
        self._check(
            "split.drv.alignment",
            ok,
            f"queue {q.index}: rings at {view.desc:#x}/{view.driver:#x}/{view.device:#x}",
        )
        try:
            flags = self._u16(view, view.device)
        except DmaError:
            return
        if self._device_served(q.index):
            return  # used.flags is the device's by now (a receive queue it already looked at)
        self._check(
            "split.availsupp.drv-init-used-flags",
            flags & USED_F.NO_NOTIFY == 0 or q.seen != 0,
            f"queue {q.index}: used.flags {flags:#x} when the queue was enabled",
        )

    def _device_served(self, index: int) -> bool:
        """Whether the device has already accessed queue ``index`` (our host device core
        builds its ring at the first serve: a receive queue served at DRIVER_OK)."""
        queue = getattr(self.source, "queue", None)
        state = queue(index) if callable(queue) else None
        return getattr(state, "ring", None) is not None

    # -- notifications --------------------------------------------------------------------------

    def on_notify(self, index: int, value: int, width: int) -> None:
        if self.stopped is not None:
            return
        self.kicks += 1
        data = self.has(F.NOTIFICATION_DATA)
        if not self._vhost:
            self._check(
                "init.drv.no-kick-before-driver-ok",
                bool(self.status & STATUS.DRIVER_OK),
                f"queue {index} notified before DRIVER_OK ({status_names(self.status)})",
            )
            if self.transport == "pci-modern" or self.transport == "pci-transitional":
                if data:
                    self._check(
                        "pci.notify.drv-32bit",
                        width == 4,
                        f"notification of {width} bytes with NOTIFICATION_DATA",
                    )
                else:
                    self._check(
                        "pci.notify.drv-16bit",
                        width == 2,
                        f"notification of {width} bytes (16 bits expected)",
                    )
                    self._check(
                        "pci.notify.drv-value-index",
                        value == index,
                        f"notification value {value:#x} at queue {index}'s address",
                    )
            if self._mmio and not data:
                self._check(
                    "mmio.notify.value",
                    value >> 16 == 0,
                    f"QueueNotify value {value:#x} is not a queue index",
                )
        view = self.source.ring_view(index)
        if view is None or not view.ready or not view.size:
            self._fail("notify.identifier", f"notification for queue {index}, which is not set up")
            stopped = self.queues.get(index)
            if stopped is not None and stopped.pfn_zeroed:
                self._fail("mmio.legacy.pfn-zero-stops", f"queue {index} kicked after QueuePFN 0 stopped it")
            return
        self._ok("notify.identifier")
        q = self._queue(index)
        try:
            if not q.started:
                self._start(q, view)
            if view.packed:
                self._scan_packed(q, view)
                expect = (q.seen % view.size, self._wrap(q.seen, view.size))
            else:
                idx = self._scan_split(q, view)
                q.kicked = idx
                expect = (idx & NOTIFY_DATA.off_mask, idx >> 15 & 1)
        except DmaError as e:
            self.unmapped.append(f"queue {index}: ring unreadable at a notification: {e}")
            return
        if data and width:
            nd = decode_notify_data(value)
            ok = (nd.next_off, nd.next_wrap) == expect and nd.queue == index
            why = (
                f"notification data {value:#010x}: next_off/wrap {nd.next_off}/{nd.next_wrap},"
                f" ring says {expect[0]}/{expect[1]}"
            )
            self._check("notify.data.content", ok, why)
            if view.packed:
                self._check("packed.notify.drv-next-off-wrap", ok, why)
            if self._mmio:
                self._check("mmio.notify.value", ok, why)

    # -- split rings ---------------------------------------------------------------------------

    def _u16(self, view: RingView, addr: int) -> int:
        return int.from_bytes(view.space.read(addr, 2), view.order)

    def _scan_split(self, q: _Queue, view: RingView) -> int:
        size = view.size
        flags = self._u16(view, view.driver)
        idx = self._u16(view, view.driver + layouts.RING_IDX_OFFSET)
        if self.has(F.EVENT_IDX):
            self._check(
                "split.usedsupp.drv-flags-zero-with-event-idx",
                flags == 0,
                f"queue {q.index}: avail.flags {flags:#x} with EVENT_IDX",
            )
        else:
            self._check(
                "split.usedsupp.drv-flags-0-1", flags in (0, 1), f"queue {q.index}: avail.flags {flags:#x}"
            )
        self._recheck_split(q, view, idx)
        if q.first_scan and self.legacy and self.transport != "vhost-user":
            q.first_scan = False
            self._check_legacy_layout(q, view, idx, flags)
        delta = (idx - q.seen) & IDX_MASK
        if delta >= IDX_HALF:
            self._fail(
                "split.avail.drv-no-decrement", f"queue {q.index}: avail idx went back from {q.seen} to {idx}"
            )
            q.seen = idx
            return idx
        if delta:
            # More than a ring's worth since the last look is fine when the device consumed
            # them meanwhile (kicks suppressed by EVENT_IDX, eventfd kicks coalesced); too
            # many outstanding at once is the device's "avail-idx-jump", mapped to the same id.
            self._ok("split.avail.drv-no-decrement", "split.avail.idx-free-running")
        first = q.seen if delta <= size else (idx - size) & IDX_MASK
        for k in range(min(delta, size)):
            pos = (first + k) & IDX_MASK
            slot = view.driver + layouts.avail_entry_offset(pos % size)
            head = self._u16(view, slot)
            q.recent[pos] = head
            if view.consumed is not None and 0 < (view.consumed - pos) & IDX_MASK < IDX_HALF:
                q.consumed_unseen += 1  # the device took it before we looked: not ours to judge
                continue
            if head < size:
                self._walk_split(q, view, head, in_order_check=delta <= size)
        q.seen = idx
        return idx

    def _check_legacy_layout(self, q: _Queue, view: RingView, idx: int, flags: int) -> None:
        """Legacy interfaces: the device finds the avail and used rings from the page frame
        number and the fixed layout (size from the device, used ring aligned). A driver with
        another layout or size leaves the device reading something else: at the first kick
        the avail idx must be a plausible count and the flags a defined value."""
        ok = 0 < idx <= view.size and flags in (0, 1)
        why = (
            f"queue {q.index}: kicked, but the avail ring where the legacy layout of a"
            f" {view.size}-entry queue puts it reads idx {idx}, flags {flags:#x}"
            " (nothing published there: the driver laid its ring out otherwise)"
        )
        rules = ["split.legacy.drv-fixed-layout", "split.legacy.drv-size-and-alloc"]
        rules.append("mmio.legacy.queue-layout" if self._mmio else "pci.legacy.queue-pfn")
        for rule in rules:
            self._check(rule, ok, why)

    def _recheck_split(self, q: _Queue, view: RingView, idx: int) -> None:
        """Entries published earlier (within half the ring of idx) must not have changed:
        a changed one was not in place when idx covered it (or was rewritten while live)."""
        window = view.size // RECHECK_FRACTION
        for pos, head in list(q.recent.items()):
            if (idx - pos) & IDX_MASK > window:
                del q.recent[pos]
                continue
            now = self._u16(view, view.driver + layouts.avail_entry_offset(pos % view.size))
            if now != head:
                why = f"queue {q.index}: avail entry {pos} read {head} after idx covered it, later {now}"
                self._fail("split.avail.drv-barrier-before-idx", why)
                # from the device's side the same event: a published entry changed while live
                self._fail("cleanup.drv.no-touch-exposed", why)
                q.recent[pos] = now
            else:
                self._ok("split.avail.drv-barrier-before-idx", "cleanup.drv.no-touch-exposed")

    def _walk_split(self, q: _Queue, view: RingView, head: int, in_order_check: bool = True) -> None:
        codec = layouts.desc_codec(view.order)
        table, table_size, i = view.desc, view.size, head
        seen: set[int] = set()
        count = total = 0
        writable = indirect = False
        segments: list[tuple[int, int, bool]] = []
        self.chains += 1
        where = f"queue {q.index} head {head}"
        last_main = head
        while True:
            if i >= table_size:
                self._fail(
                    "split.chain.drv-max-queue-size", f"{where}: next {i} is outside a table of {table_size}"
                )
                return
            if i in seen:
                self._fail(
                    "split.desc.drv-chain-len-limit", f"{where}: descriptor {i} is reached twice (a loop)"
                )
                return
            seen.add(i)
            count += 1
            addr, length, flags, nxt = codec.unpack(
                view.space.read(table + i * layouts.DESC_SIZE, layouts.DESC_SIZE)
            )
            if count == 1 and not (addr or length or flags or nxt):
                # the driver zeroed the table at allocation: an entry naming an all-zero
                # descriptor was read before the driver wrote it (or the chain)
                self._fail(
                    "split.avail.drv-barrier-before-idx",
                    f"{where}: the avail entry names descriptor {i}, which is all zeroes (not written yet)",
                )
                return
            if flags & DESC_F.INDIRECT:
                self._check(
                    "split.indirect.drv-feature",
                    self.has(F.INDIRECT_DESC),
                    f"{where}: INDIRECT without VIRTIO_F_INDIRECT_DESC",
                )
                if indirect:
                    self._fail(
                        "split.indirect.drv-no-nesting",
                        f"{where}: an indirect table holds an INDIRECT descriptor",
                    )
                    return
                self._check(
                    "split.indirect.drv-not-with-next",
                    not flags & DESC_F.NEXT,
                    f"{where}: descriptor {i} has INDIRECT and NEXT",
                )
                self._ok("split.indirect.drv-no-nesting")
                indirect = True
                # The INDIRECT descriptor only points at the table: the chain's length is
                # its buffers (QEMU's seg_max = queue size - 2 counts header + segments +
                # status, and Linux 6.1's virtio_blk builds seg_max + 2 table entries)
                count -= 1
                table, table_size, i = addr, length // layouts.DESC_SIZE, 0
                seen = set()
                continue
            if flags & DESC_F.WRITE:
                writable = True
            elif writable:
                self._fail(
                    "framing.drv.readable-before-writable",
                    f"{where}: a device-readable descriptor follows a writable one",
                )
                return
            total += length
            segments.append((addr, length, bool(flags & DESC_F.WRITE)))
            if not indirect:
                last_main = i
            if not flags & DESC_F.NEXT:
                break
            if self.has(F.IN_ORDER):
                want = i + 1 if indirect else (i + 1) % view.size
                rule = (
                    "split.indirect.drv-in-order-sequential" if indirect else "split.desc.drv-in-order-next"
                )
                self._check(
                    rule, nxt == want, f"{where}: descriptor {i} chains to {nxt}, not {want} (IN_ORDER)"
                )
            i = nxt
        if self.has(F.IN_ORDER) and in_order_check:
            self._check(
                "split.desc.drv-in-order-ring-order",
                head == q.next_head,
                f"{where}: IN_ORDER chain starts at {head}, the next slot in ring order is {q.next_head}",
            )
        q.next_head = (last_main + 1) % view.size
        self._ok("split.indirect.drv-feature")
        self._check(
            "split.chain.drv-max-queue-size",
            count <= view.size,
            f"{where}: chain of {count} descriptors > queue size {view.size}",
        )
        self._check(
            "split.desc.drv-chain-len-limit", total <= CHAIN_BYTES_LIMIT, f"{where}: chain of {total} bytes"
        )
        self._ok("framing.drv.readable-before-writable")
        self._check_request(where, view, segments)

    # -- packed rings ---------------------------------------------------------------------------

    @staticmethod
    def _wrap(pos: int, size: int) -> int:
        return 1 ^ (pos // size) & 1

    def _scan_packed(self, q: _Queue, view: RingView) -> None:
        ev_flags = self._u16(view, view.driver + 2)
        mode = ev_flags & PACKED_EVENT.flags_mask
        self._check(
            "packed.evsupp.reserved-zero",
            not ev_flags & ~PACKED_EVENT.flags_mask and mode != 3,
            f"queue {q.index}: driver event flags {ev_flags:#x}",
        )
        if mode == PACKED_EVENT_F.DESC:
            self._check(
                "packed.evsupp.desc-needs-event-idx",
                self.has(F.EVENT_IDX),
                f"queue {q.index}: RING_EVENT_FLAGS_DESC without EVENT_IDX",
            )
        codec = layouts.fast_codec(layouts.PvirtqDesc)
        size = view.size
        if q.first_scan:
            q.first_scan = False
            flags0 = codec.unpack(view.space.read(view.desc, layouts.PACKED_DESC_SIZE))[3]
            bits = (bool(flags0 & PACKED_DESC_F.AVAIL), bool(flags0 & PACKED_DESC_F.USED))
            if bits != (False, False) and not view.consumed:  # not yet used by the device
                self._check(
                    "packed.wrap.init-one",
                    bits == (True, False),
                    f"queue {q.index}: first descriptor flags {flags0:#x} (a wrap counter that started at 0)",
                )
            self._scan_packed_from(q, view, codec)
            rest = view.space.read(
                view.desc + (q.seen % size) * layouts.PACKED_DESC_SIZE,
                (size - q.seen % size) * layouts.PACKED_DESC_SIZE if q.seen < size else 0,
            )
            self._check(
                "packed.desc.zero-init",
                not any(rest),
                f"queue {q.index}: descriptors past the first available ones were not zeroed",
            )
            return
        self._scan_packed_from(q, view, codec)

    def _scan_packed_from(self, q: _Queue, view: RingView, codec: Any) -> None:
        size = view.size
        self._recheck_packed(q, view, codec)
        if view.consumed is not None:
            ahead = (view.consumed - q.seen) % (2 * size)
            if 0 < ahead <= size:
                # the device consumed these before the watch looked (its position is ahead
                # of ours): the driver may have completed them and reused their slots and
                # tables since, so they are counted, not judged
                q.consumed_unseen += ahead
                q.seen += ahead
        for _ in range(size):
            pos = q.seen
            wrap = self._wrap(pos, size)
            _addr, _length, _id, flags = codec.unpack(
                view.space.read(view.desc + (pos % size) * layouts.PACKED_DESC_SIZE, layouts.PACKED_DESC_SIZE)
            )
            avail, used = bool(flags & PACKED_DESC_F.AVAIL), bool(flags & PACKED_DESC_F.USED)
            if avail != bool(wrap):
                return  # not made available (yet)
            if used == bool(wrap):
                q.seen += 1  # the device has used it already (served without a kick)
                continue
            n = self._walk_packed(q, view, pos)
            if n:
                q.exposed.append((pos, n, self._packed_bytes(view, pos, n)))
            q.seen += n

    @staticmethod
    def _packed_bytes(view: RingView, pos: int, n: int) -> bytes:
        size = view.size
        d = layouts.PACKED_DESC_SIZE
        return b"".join(view.space.read(view.desc + ((pos + k) % size) * d, d) for k in range(n))

    def _recheck_packed(self, q: _Queue, view: RingView, codec: Any) -> None:
        """Lists made available and not used yet must read as they did when exposed."""
        keep: list[tuple[int, int, bytes]] = []
        for pos, n, raw in q.exposed:
            wrap = bool(self._wrap(pos, view.size))
            flags = codec.unpack(
                view.space.read(
                    view.desc + (pos % view.size) * layouts.PACKED_DESC_SIZE, layouts.PACKED_DESC_SIZE
                )
            )[3]
            if bool(flags & PACKED_DESC_F.USED) == wrap or bool(flags & PACKED_DESC_F.AVAIL) != wrap:
                continue  # used by the device (or the slot moved on): the driver may reuse it
            now = self._packed_bytes(view, pos, n)
            if self._check(
                "packed.desc.drv-no-change-after-avail",
                now == raw,
                f"queue {q.index}: available list at slot {pos % view.size} changed before it was used",
            ):
                keep.append((pos, n, raw))
        q.exposed = keep

    def _walk_packed(self, q: _Queue, view: RingView, pos: int) -> int:
        codec = layouts.fast_codec(layouts.PvirtqDesc)
        size = view.size
        where = f"queue {q.index} slot {pos % size}"
        writable = False
        segments: list[tuple[int, int, bool]] = []
        self.chains += 1
        for count in range(1, size + 1):
            p = pos + count - 1
            wrap = self._wrap(p, size)
            addr, length, _id, flags = codec.unpack(
                view.space.read(view.desc + (p % size) * layouts.PACKED_DESC_SIZE, layouts.PACKED_DESC_SIZE)
            )
            avail, used = bool(flags & PACKED_DESC_F.AVAIL), bool(flags & PACKED_DESC_F.USED)
            if count > 1 and (avail != bool(wrap) or used == bool(wrap)):
                self._fail(
                    "packed.sg.drv-first-last",
                    f"{where}: the list's descriptor {count} is not available with its head",
                )
                return count - 1
            if flags & PACKED_DESC_F.INDIRECT:
                self._check(
                    "packed.indirect.drv-feature",
                    self.has(F.INDIRECT_DESC),
                    f"{where}: INDIRECT without VIRTIO_F_INDIRECT_DESC",
                )
                self._check(
                    "packed.indirect.drv-not-in-list",
                    count == 1 and not flags & PACKED_DESC_F.NEXT,
                    f"{where}: INDIRECT descriptor inside a list",
                )
                entries = length // layouts.PACKED_DESC_SIZE
                self._check(
                    "packed.indirect.drv-device-limit",
                    entries <= INDIRECT_TABLE_LIMIT,
                    f"{where}: indirect table of {entries} entries (device limit {INDIRECT_TABLE_LIMIT})",
                )
                for k in range(entries):
                    a, n, _i, fl = codec.unpack(
                        view.space.read(addr + k * layouts.PACKED_DESC_SIZE, layouts.PACKED_DESC_SIZE)
                    )
                    self._check(
                        "packed.indirect.drv-only-write-flag",
                        not fl & ~PACKED_DESC_F.WRITE,
                        f"{where}: indirect entry {k} flags {fl:#x}",
                    )
                    segments.append((a, n, bool(fl & PACKED_DESC_F.WRITE)))
                break
            if flags & PACKED_DESC_F.WRITE:
                writable = True
            elif writable:
                self._fail(
                    "packed.sg.drv-readable-first",
                    f"{where}: a device-readable descriptor follows a writable one",
                )
            segments.append((addr, length, bool(flags & PACKED_DESC_F.WRITE)))
            if not flags & PACKED_DESC_F.NEXT:
                break
        else:
            self._fail("packed.sg.drv-queue-size-limit", f"{where}: a list longer than the queue size {size}")
            return size
        self._ok(  # the device refused none of it (its refusals are mapped in RING_VIOLATIONS)
            "packed.desc.drv-wait-used",
            "packed.sg.drv-space-for-list",
            "packed.sg.drv-device-limit",
            "packed.sg.drv-queue-size-limit",
            "packed.sg.drv-readable-first",
            "packed.wrap.drv-avail-encoding",
            "packed.indirect.drv-feature",
        )
        self._check_request(where, view, segments)
        return count

    # -- device-type framing ------------------------------------------------------------------------

    def _check_request(self, where: str, view: RingView, segments: list[tuple[int, int, bool]]) -> None:
        if self.device_type == "rng":
            self._check(
                "rng.drv.writable-only",
                all(w for _, _, w in segments),
                f"{where}: a device-readable buffer on the entropy queue",
            )
        elif self.device_type == "blk":
            self._check_blk(where, view, segments)
        elif self.device_type == "iommu" and view.index == IOMMU_REQUEST_QUEUE:
            self._check_iommu(where, view, segments)
        elif self.netcon is not None:
            self.netcon.check_chain(where, view.index, view.order, view.space.read, segments)

    def _check_blk(self, where: str, view: RingView, segments: list[tuple[int, int, bool]]) -> None:
        readable = [(a, n) for a, n, w in segments if not w]
        writable = [(a, n) for a, n, w in segments if w]
        header = b"".join(view.space.read(a, n) for a, n in readable)[:BLK_HEADER]
        ok = len(header) == BLK_HEADER and bool(writable) and writable[-1][1] >= 1
        if not self._check(
            "blk.req.format", ok, f"{where}: blk request without a 16-byte header and a status byte"
        ):
            return
        order = view.order if self.legacy else "little"
        rtype, _reserved, sector = layouts.blk_req_header_codec(order).unpack(header)
        if self.legacy:
            self._check_blk_legacy(where, view, header, readable, writable)
        data_in = sum(n for _, n in writable) - 1
        data_out = sum(n for _, n in readable) - BLK_HEADER
        if rtype in (BLK_T.IN, BLK_T.OUT):
            data = data_in if rtype == BLK_T.IN else data_out
            self._check("blk.drv.rw-multiple-512", data % BLK.sector_size == 0, f"{where}: {data} data bytes")
            capacity = self._blk_capacity()
            if capacity is not None:
                end = sector + -(-data // BLK.sector_size)
                self._check(
                    "blk.drv.within-capacity",
                    end <= capacity,
                    f"{where}: request up to sector {end} on a {capacity}-sector disk",
                )
        elif rtype in (BLK_T.FLUSH, BLK_T.FLUSH_OUT):
            self._check("blk.drv.flush-sector-zero", sector == 0, f"{where}: FLUSH with sector {sector}")
        elif rtype in (BLK_T.DISCARD, BLK_T.WRITE_ZEROES, BLK_T.SECURE_ERASE):
            self._check_blk_segments(where, view, rtype, readable)
        elif rtype == BLK_T.GET_ID:
            self._check("blk.drv.get-id-20", data_in == BLK.id_bytes, f"{where}: GET_ID with {data_in} bytes")
            self._check("blk.req.sector-zero-non-rw", sector == 0, f"{where}: GET_ID with sector {sector}")

    def _check_blk_legacy(
        self,
        where: str,
        view: RingView,
        header: bytes,
        readable: list[tuple[int, int]],
        writable: list[tuple[int, int]],
    ) -> None:
        """Legacy interface: the header in the guest's byte order and, without ANY_LAYOUT,
        the header and the status byte in descriptors of their own."""
        known = {BLK_T.IN, BLK_T.OUT, BLK_T.FLUSH, BLK_T.FLUSH_OUT, BLK_T.GET_ID}
        other: ByteOrder = "big" if view.order == "little" else "little"
        native = layouts.blk_req_header_codec(view.order).unpack(header)[0]
        swapped = layouts.blk_req_header_codec(other).unpack(header)[0]
        ok = native in known or swapped not in known
        why = f"{where}: request type {native:#x} in the guest's order, {swapped:#x} byte-swapped"
        self._check("blk.legacy.req-native-endian-drv", ok, why)
        self._check("split.legacy.drv-native-endian", ok, why)
        if not self.has(F.ANY_LAYOUT):
            framed = readable[0][1] == BLK_HEADER and writable[-1][1] == 1
            self._check(
                "blk.legacy.drv-framing",
                framed,
                f"{where}: without ANY_LAYOUT the header ({readable[0][1]} bytes) and the status"
                f" ({writable[-1][1]} bytes) need descriptors of their own",
            )

    def _check_blk_segments(
        self, where: str, view: RingView, rtype: int, readable: list[tuple[int, int]]
    ) -> None:
        data = b"".join(view.space.read(a, n) for a, n in readable)[BLK_HEADER:]
        self._check(
            "blk.drv.segments-whole",
            len(data) % DISCARD_SEGMENT == 0,
            f"{where}: {len(data)} bytes of segments",
        )
        count = len(data) // DISCARD_SEGMENT
        if rtype == BLK_T.DISCARD:
            flags = [
                int.from_bytes(data[i * DISCARD_SEGMENT + 12 : (i + 1) * DISCARD_SEGMENT], "little")
                for i in range(count)
            ]
            self._check(
                "blk.drv.discard-unmap-zero",
                not any(f & DISCARD_UNMAP for f in flags),
                f"{where}: DISCARD segment flags {flags}",
            )
        limit_of = {
            BLK_T.DISCARD: ("max_discard_seg", BLK_F.DISCARD, "blk.drv.discard-max-seg"),
            BLK_T.WRITE_ZEROES: ("max_write_zeroes_seg", BLK_F.WRITE_ZEROES, "blk.drv.write-zeroes-max-seg"),
            BLK_T.SECURE_ERASE: ("max_secure_erase_seg", BLK_F.SECURE_ERASE, "blk.drv.secure-erase-max-seg"),
        }
        field_name, feature, rule = limit_of[rtype]
        cfg = self._config()
        # the device's config space ends where its last offered feature's fields end (QEMU
        # 7.2 sizes it by feature): the limit needs only its own field to be there
        at = BLK_CONFIG_OFFSETS[field_name]
        if self.has(feature) and len(cfg) >= at + 4:
            limit = int.from_bytes(cfg[at : at + 4], "little")
            self._check(rule, count <= limit, f"{where}: {count} segments, {field_name} {limit}")

    def _config(self) -> bytes:
        config_bytes = getattr(self.source, "config_bytes", None)
        return b"" if config_bytes is None else bytes(config_bytes("little"))

    def _check_iommu(self, where: str, view: RingView, segments: list[tuple[int, int, bool]]) -> None:
        """virtio-iommu requests: one readable part (head + body), one writable part (probe
        properties + tail); MAP/UNMAP ranges, domains and flags the negotiated features allow."""
        readable = b"".join(view.space.read(a, n) for a, n, w in segments if not w)
        writable = sum(n for _, n, w in segments if w)
        ok = len(readable) >= layouts.IOMMU_HEAD_SIZE and writable >= layouts.IOMMU_TAIL_SIZE
        if not self._check(
            "iommu.req.split", ok, f"{where}: {len(readable)} readable, {writable} writable bytes"
        ):
            return
        rtype = readable[0]
        names = {
            IOMMU_T.ATTACH: "ATTACH",
            IOMMU_T.DETACH: "DETACH",
            IOMMU_T.MAP: "MAP",
            IOMMU_T.UNMAP: "UNMAP",
            IOMMU_T.PROBE: "PROBE",
        }
        name = names.get(rtype)
        if name is None:
            return
        body_decl = layouts.IOMMU_BODIES[name]
        raw = readable[layouts.IOMMU_HEAD_SIZE :]
        if not self._check(
            "iommu.req.split", len(raw) >= body_decl.sizeof(), f"{where}: {name} body of {len(raw)} bytes"
        ):
            return
        body = body_decl.parse(raw[: body_decl.sizeof()])
        cfg = (
            layouts.VirtioIommuConfig.parse(self._config())
            if len(self._config()) >= layouts.VirtioIommuConfig.sizeof()
            else None
        )
        if "domain" in body and cfg is not None and self.has(IOMMU_F.DOMAIN_RANGE):
            inside = cfg.domain_start <= body.domain <= cfg.domain_end
            self._check(
                "iommu.req.drv-domain-range",
                inside,
                f"{where}: domain {body.domain} outside {cfg.domain_start}..{cfg.domain_end}",
            )
        if name in ("MAP", "UNMAP") and cfg is not None and self.has(IOMMU_F.INPUT_RANGE):
            inside = cfg.input_start <= body.virt_start and body.virt_end <= cfg.input_end
            self._check(
                "iommu.req.drv-input-range",
                inside,
                f"{where}: {body.virt_start:#x}-{body.virt_end:#x} outside the input range",
            )
        if name == "MAP":
            self._check(
                "iommu.map.drv-end-gt-start",
                body.virt_end > body.virt_start,
                f"{where}: MAP {body.virt_start:#x}-{body.virt_end:#x}",
            )
            if body.flags & IOMMU_MAP_F.MMIO:
                self._check(
                    "iommu.map.drv-mmio-needs-feature",
                    self.has(IOMMU_F.MMIO),
                    f"{where}: MAP_F_MMIO without VIRTIO_IOMMU_F_MMIO",
                )
            else:
                self._ok("iommu.map.drv-mmio-needs-feature")
            self.iommu_maps.setdefault(body.domain, []).append((body.virt_start, body.virt_end))
        elif name == "UNMAP":
            maps = self.iommu_maps.get(body.domain, [])
            split = [
                (s, e)
                for s, e in maps
                if s <= body.virt_end
                and e >= body.virt_start
                and not (body.virt_start <= s and e <= body.virt_end)
            ]
            self._check(
                "iommu.unmap.drv-boundaries",
                not split,
                f"{where}: UNMAP {body.virt_start:#x}-{body.virt_end:#x} splits {split[:2]}",
            )
            self.iommu_maps[body.domain] = [
                (s, e) for s, e in maps if not (body.virt_start <= s and e <= body.virt_end)
            ]
        elif name == "DETACH":
            pass
        elif name == "PROBE" and cfg is not None:
            props = writable - layouts.IOMMU_TAIL_SIZE
            self._check(
                "iommu.probe.drv-size",
                props == cfg.probe_size,
                f"{where}: PROBE with {props} bytes for properties, probe_size {cfg.probe_size}",
            )

    def _check_iommu_config_write(self, offset: int, size: int, value: int) -> None:
        bypass = layouts.field_offsets(layouts.VirtioIommuConfig)["bypass"]
        self._check(
            "iommu.cfg.drv-no-other-writes",
            offset == bypass and size == 1,
            f"config write of {size} bytes at {offset:#x} (only bypass may be written)",
        )
        if offset == bypass:
            self._check("iommu.cfg.drv-bypass-0-1", value in (0, 1), f"bypass written with {value}")

    def _blk_capacity(self) -> int | None:
        config_bytes = getattr(self.source, "config_bytes", None)
        if config_bytes is None:
            return None
        order = self.source_order()
        raw = bytes(config_bytes(order))
        return int.from_bytes(raw[:8], order) if len(raw) >= 8 else None

    def source_order(self) -> ByteOrder:
        view = next((v for v in (self.source.ring_view(i) for i in self.queues) if v is not None), None)
        return view.order if view is not None and self.legacy else "little"

    # -- what the device itself refused ---------------------------------------------------------------

    def on_ring_violation(self, index: int, violation: str, message: str) -> None:
        if self.stopped is not None:
            return
        ids = RING_VIOLATIONS.get(violation)
        if violation in ("bad-address", "dma", "ring-address"):
            # ring memory or a buffer the device cannot reach at the address given (the
            # alignment of the rings is checked by the watch itself, in _start)
            feature = (
                "features.drv.access-platform-iommu"
                if self.has(F.ACCESS_PLATFORM)
                else "features.drv.physical-addresses"
            )
            self._fail(feature, f"queue {index}: {message}")
        elif ids is None:
            self.unmapped.append(f"queue {index}: {violation}: {message}")
        else:
            self._fail(ids[1] if self.has(F.RING_PACKED) else ids[0], f"queue {index}: {message}")

    def on_register(self, op: str, name: str, value: int) -> None:
        """virtio-mmio register rules that need the register's name."""
        if self.stopped is not None or self._vhost:
            return
        if self.odd is not None:
            self._after_odd(f"{op} of {name}")
            if op == "read" and name == self.odd[0]:
                self.odd_seen = True
        if op == "read" and name == "ConfigGeneration":
            self._on_generation(value)
        if len(self.first_registers) < 2:
            self.first_registers.append((op, name))
            if len(self.first_registers) == 2:
                ok = self.first_registers == [("read", "MagicValue"), ("read", "Version")]
                self._check("mmio.drv.init-magic-version-first", ok, f"first accesses {self.first_registers}")
        if name.startswith("SHM"):
            self._fail(
                "mmio.drv.no-shm-unless-expected", f"{op} of {name} by a driver that uses no shared memory"
            )
        if op == "read" and name == "InterruptStatus":
            self.int_status = value
        elif op == "write" and name == "InterruptACK":
            seen = self.int_status
            self._check(
                "mmio.drv.read-interrupt-status",
                seen is not None,
                f"InterruptACK {value:#x} without reading InterruptStatus",
            )
            self._check(
                "mmio.drv.ack-after-handling",
                seen is not None,
                f"InterruptACK {value:#x} for no interrupt read",
            )
            defined = MMIO_INT.USED_BUFFER | MMIO_INT.CONFIG_CHANGE
            ok = not value & ~defined and (seen is None or not value & ~seen)
            self._check("mmio.drv.ack-mask", ok, f"InterruptACK {value:#x} after InterruptStatus {seen}")
            self.int_status = None
        elif op == "write" and name == "DeviceFeaturesSel":
            self.dfsel = True
        elif op == "write" and name == "DriverFeaturesSel":
            self.gfsel = True
        elif op == "read" and name == "DeviceFeatures":
            self._check(
                "mmio.drv.select-before-device-features",
                self.dfsel,
                "DeviceFeatures read before DeviceFeaturesSel was written",
            )
        elif op == "write" and name == "DriverFeatures":
            self._check(
                "mmio.drv.select-before-driver-features",
                self.gfsel,
                "DriverFeatures written before DriverFeaturesSel",
            )
        elif op == "write" and name == "GuestPageSize":
            self.page_size = True

    def _after_odd(self, what: str) -> None:
        """Any access once the odd value was read: the driver did not leave the device alone."""
        if self.odd is None or not self.odd_seen or self.odd_touched:
            return
        self.odd_touched = True
        register, rules = self.odd
        for rule in rules:
            self._fail(rule, f"{what} after {register} read an odd value")

    def _on_generation(self, value: int) -> None:
        """A ConfigGeneration read: it closes the config reads since the previous one."""
        if self.gen_open is not None and self.gen_config_read:
            if value != self.gen_open:
                self.gen_retry = f"ConfigGeneration {self.gen_open} -> {value} across config reads"
            elif self.gen_retry is not None:
                self.gen_retry = None
                self._ok("config.drv.generation-loop")  # read again until it held still
        self.gen_open = value
        self.gen_config_read = False

    def _went_on(self, what: str) -> None:
        """The driver acted on config values read while the generation moved."""
        if self.gen_retry is not None:
            why, self.gen_retry = self.gen_retry, None
            self._fail("config.drv.generation-loop", f"{why}, then {what} without reading them again")

    def on_misuse(self, kind: str, message: str) -> None:
        if self.stopped is not None:
            return
        self._after_odd(f"refused access ({message})")
        requirement = MISUSE.get(kind)
        if requirement is None:
            self.unmapped.append(f"{kind}: {message}")
        else:
            self._fail(requirement, message)

    # -- the end ----------------------------------------------------------------------------------

    def _finish_queues(self) -> None:
        """Rules that need the final state: buffers made available must have been kicked
        when the device asked for it."""
        for index, q in self.queues.items():
            view = self.source.ring_view(index)
            if view is None or not view.ready or not view.size or view.packed:
                continue
            try:
                if not q.started:
                    self._start(q, view)
                idx = self._u16(view, view.driver + layouts.RING_IDX_OFFSET)
                self._recheck_split(q, view, idx)
                if idx == q.kicked:
                    continue
                if self.has(F.EVENT_IDX):
                    event = self._u16(view, view.device + layouts.avail_event_offset(view.size))
                    missed = need_event(event, idx, q.kicked)
                    self._check(
                        "split.availsupp.drv-event-idx-kick",
                        not missed,
                        f"queue {index}: avail idx {q.kicked} -> {idx} passed avail_event {event}"
                        " without a notification",
                    )
                else:
                    flags = self._u16(view, view.device)
                    missed = not flags & USED_F.NO_NOTIFY
                    self._check(
                        "split.availsupp.drv-flags0-kick",
                        not missed,
                        f"queue {index}: avail idx {q.kicked} -> {idx} with used.flags 0 and no notification",
                    )
            except DmaError:
                continue

    def finish(self) -> FindingLog:
        """Apply end-of-run checks, then PASS every exercised id and mark the ids whose
        feature was not negotiated NOT_APPLICABLE. Returns the log."""
        if self.stopped is None:
            self._finish_queues()
        if self.kicks and any(q.kicked or q.seen for q in self.queues.values()):
            # every kick with work found a split ring whose avail_event said so, or no work
            if self.has(F.EVENT_IDX):
                self._ok("split.availsupp.drv-event-idx-kick")
            else:
                self._ok("split.availsupp.drv-flags0-kick")
        if self.presented and self.reset_seen and not self.legacy:
            # the driver found the real common config and notify structures through the
            # walk and drove the device with them (a driver that did not skip the odd ones
            # never gets here: driver_runner.judge_presented fails it from the run)
            for what in self.presented:
                if what in PRESENTED:
                    self._ok(PRESENTED[what])
        if any(q.pfn_zeroed for q in self.queues.values()):
            self._ok("mmio.legacy.pfn-zero-stops")  # stopped queues were not kicked again
        for q in self.queues.values():
            if q.stop_unverified:  # Linux's vm_del_vq() reads QueueReady back at once
                self._fail("mmio.drv.stop-queue", f"queue {q.index}: QueueReady 0 written, never read back")
        if self.failed_set and not self._vhost:
            # FAILED was set and nothing but a reset followed (the status checks fail otherwise)
            self._ok("status.drv.reset-after-failed", "init.drv.stop-on-error")
        if self.chains:
            # the device reached every buffer at the address the driver gave (a ring
            # violation "bad-address"/"dma" fails the rule instead)
            self._ok(
                "features.drv.access-platform-iommu"
                if self.has(F.ACCESS_PLATFORM)
                else "features.drv.physical-addresses"
            )
        if UNKNOWN_FEATURE in self.presented and self.offered and not self._vhost:
            unknown = self.source.device_features & ~known_feature_mask(self.device_type)
            if self.driver_ok_seen:
                self._ok("features.drv.no-fail-on-unknown")
            else:
                # not judged here: the driver may stop for another reason; the runner's
                # control run without the unknown bit decides (driver_runner.judge_unknown)
                self.unknown_refused = (
                    f"offered feature bits {unknown:#x} no spec defines; the driver never set DRIVER_OK"
                    f" (status {status_names(self.status)})"
                )
        if self.odd is not None and self.odd_seen and not self.odd_touched:
            self._ok(*self.odd[1])  # read the odd value, then touched nothing more
        if self.transport in MATCH_RULE and self.driver_ok_seen and not self._vhost:
            # a driver brought this function up: it matched the function's id (a modern
            # 0x1040+ id, or a transitional one); driver_runner.judge_bound fails a driver
            # that left a function it should have taken untouched
            self._ok(MATCH_RULE[self.transport])
        if not self._vhost and self.reset_seen:
            family = (
                _MMIO_ACCESS_IDS
                if self._mmio
                else _PCI_ACCESS_IDS
                if self.transport in ("pci-modern", "pci-transitional")
                else ()
            )
            self._ok(*family)
        if self.netcon is not None and self.stopped is None:
            self.netcon.finish(self.driver_ok_seen, self.log.not_applicable)
        failed = {f.requirement for f in self.log.failures()}
        features = self.source.driver_features
        for requirement in sorted(self.exercised - failed):
            if self._applies(requirement, features):
                self.log.passed(requirement)
        for requirement, condition in CONDITIONS.items():
            prefix = condition.lstrip("!").split("_")[0]
            if prefix in DEVICE_BIT_PREFIXES and DEVICE_BIT_PREFIXES[prefix] != self.device_type:
                continue  # device-type feature bits mean nothing on another device
            if requirement not in self.log.findings and not self._applies(requirement, features):
                self.log.not_applicable(
                    requirement,
                    f"{condition.lstrip('!')} {'was' if condition.startswith('!') else 'not'} negotiated",
                )
        return self.log

    @staticmethod
    def _applies(requirement: str, features: int) -> bool:
        condition = CONDITIONS.get(requirement)
        if condition is None:
            return True
        negate = condition.startswith("!")
        name = condition.lstrip("!")
        if name.startswith("IOMMU_"):
            number = getattr(IOMMU_F, name.removeprefix("IOMMU_"))
        elif name.startswith("BLK_"):
            number = getattr(BLK_F, name.removeprefix("BLK_"))
        else:
            number = getattr(F, name)
        on = bool(features >> number & 1)
        return on != negate
