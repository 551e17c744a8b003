"""What every rule family of the driver watch shares: recording verdicts, the transport's
kind, the negotiated features, and the per-queue memory.

The driver watch (driver_watch.py) is split into rule families, one module each:
status (driver_watch_status.py), features (driver_watch_features.py), device config
(driver_watch_config.py), queue setup (driver_watch_queues.py), notifications
(driver_watch_notify.py), the rings on the shared chain walker (driver_watch_rings.py),
transport registers and identification (driver_watch_transport.py), and per device kind
the request framing beside the device (virtio_sim/devices/<kind>/framing.py). A family
keeps its own state and records through :class:`WatchCore`; ``CONDITIONS`` of a family
name the ids that only apply with (or, "!", without) a feature, NOT_APPLICABLE otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from virtio_sim.layouts import ByteOrder
from virtio_sim.orchestration.conformance.findings import Finding, FindingLog, StrictStop
from virtio_sim.ring.view import RingSource
from virtio_sim.spec import F

if TYPE_CHECKING:
    from virtio_sim.orchestration.conformance.driver_watch import DriverWatch


@dataclass
class QueueState:
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


class WatchCore:
    """Recording and the facts every family reads (the DriverWatch is one)."""

    def __init__(
        self,
        log: FindingLog,
        source: RingSource,
        *,
        transport: str,
        device_type: str,
        vantage: str,
        on_stop: Callable[[Finding], None] | None,
        presented: tuple[str, ...],
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
        self.stopped: Finding | None = None
        self.exercised: set[str] = set()
        self.unmapped: list[str] = []  # device violations / misuse no requirement covers
        self.status = 0  # the status the device kept after the last write
        self.driver_ok_seen = False
        self.reset_seen = False
        self.queues: dict[int, QueueState] = {}

    # -- the transport --------------------------------------------------------------------

    @property
    def mmio(self) -> bool:
        return self.transport.startswith("mmio")

    @property
    def pci(self) -> bool:
        return self.transport.startswith("pci")

    @property
    def vhost(self) -> bool:
        """Behind a vhost-user front-end: the status byte and the registers are QEMU's."""
        return self.vantage == "vhost-user"

    @property
    def mmio_legacy(self) -> bool:
        return self.transport in ("mmio", "mmio-v1")

    @property
    def legacy_transport(self) -> bool:
        return self.transport in ("mmio", "mmio-v1", "pci-legacy")

    # -- the negotiated features -----------------------------------------------------------

    @property
    def driver_features(self) -> int:
        return int(self.source.driver_features)

    def has(self, feature: int) -> bool:
        return bool(self.source.driver_features >> feature & 1)

    @property
    def legacy(self) -> bool:
        return not self.has(F.VERSION_1)

    # -- recording --------------------------------------------------------------------------

    def fail(self, requirement: str, evidence: str) -> None:
        """FAIL ``requirement``; on virtio-mmio an init/status failure also breaks its
        generic initialisation rule."""
        if self.stopped is not None:
            return
        self.fail_one(requirement, evidence)
        if self.mmio and requirement.startswith(("init.", "status.")):
            self.fail_one("mmio.drv.generic-init", f"{requirement}: {evidence}")

    def fail_one(self, requirement: str, evidence: str) -> None:
        if self.stopped is not None:
            return
        try:
            self.log.failed(requirement, evidence)
        except StrictStop as stop:
            self.stopped = stop.finding
            if self.on_stop is not None:
                self.on_stop(stop.finding)

    def ok(self, *requirements: str) -> None:
        """Exercised without a failure (PASS at the end unless failed meanwhile)."""
        self.exercised.update(requirements)

    def check(self, requirement: str, ok: bool, evidence: str) -> bool:
        if ok:
            self.exercised.add(requirement)
        else:
            self.fail(requirement, evidence)
        return ok

    def not_applicable(self, requirement: str, why: str) -> None:
        self.log.not_applicable(requirement, why)

    # -- the device, for the framing rules (virtio_sim.devices.framing.Judge) ---------------

    @property
    def model(self) -> Any:
        return getattr(self.source, "model", None)

    def config(self, order: ByteOrder) -> bytes | None:
        config_bytes = getattr(self.source, "config_bytes", None)
        return None if config_bytes is None else bytes(config_bytes(order))

    def config_order(self) -> ByteOrder:
        view = next((v for v in (self.source.ring_view(i) for i in self.queues) if v is not None), None)
        return view.order if view is not None and self.legacy else "little"


class Family:
    """One family of driver rules; ``watch`` is the DriverWatch it belongs to."""

    #: id -> feature condition ("NAME" of a VIRTIO_F bit, "!NAME": not negotiated)
    CONDITIONS: ClassVar[Mapping[str, str]] = {}

    def __init__(self, watch: DriverWatch) -> None:
        self.w = watch

    def reset(self) -> None:
        """A device reset (status 0 written): forget what the reset ends."""


__all__ = ["Family", "QueueState", "WatchCore"]
