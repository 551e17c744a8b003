"""A checking device's eyes: every driver-side rule a device can see being kept or broken.

:class:`DriverWatch` implements the host's DriverObserver callbacks (host/observer.py) and
hands each to the rule family it belongs to, one module each:

* status (driver_watch_status.py): reset first, ACKNOWLEDGE -> DRIVER -> FEATURES_OK ->
  DRIVER_OK, no bit ever cleared, FEATURES_OK read back, nothing after FAILED;
* features (driver_watch_features.py): only offered bits, nothing after FEATURES_OK,
  VERSION_1 taken, unknown bits survived;
* device config (driver_watch_config.py): natural widths, no writes during negotiation,
  the generation loop;
* queue setup (driver_watch_queues.py): before DRIVER_OK, nothing changed while live,
  sizes the transport allows, ring alignment, zeroed used flags, queue reset;
* notifications (driver_watch_notify.py): never before DRIVER_OK, the right width and
  value, NOTIFICATION_DATA that matches the ring, kicks owed at the end;
* rings (driver_watch_rings.py): the avail ring and every chain made available, walked by
  the shared chain walker (virtio_sim/ring/walker.py), device ring violations mapped;
* transport (driver_watch_transport.py): mmio register rules, register misuse, odd
  identification values and capabilities presented;
* request framing, per device kind beside the device (virtio_sim/devices/<kind>/framing.py,
  found through the DeviceKind registry): blk header and status, net header, console
  control, rng buffers writable, iommu requests.

It sees only what a device sees: guest memory when the driver notifies and at the end of
a run, and the register accesses. Ids never exercised stay NOT_COVERED; ids whose feature
was not negotiated are NOT_APPLICABLE; an id exercised without a failure is PASS.

``vantage="vhost-user"``: behind a vhost-user front-end the status byte and the registers
belong to QEMU; only the features, the ring setup and the rings themselves are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from virtio_sim.devices import KINDS
from virtio_sim.devices.framing import Framing, framing_class
from virtio_sim.orchestration.conformance.driver_watch_base import Family, QueueState, WatchCore
from virtio_sim.orchestration.conformance.driver_watch_config import ConfigRules
from virtio_sim.orchestration.conformance.driver_watch_features import (
    UNKNOWN_FEATURE,
    FeatureRules,
    known_feature_mask,
)
from virtio_sim.orchestration.conformance.driver_watch_notify import NotifyRules
from virtio_sim.orchestration.conformance.driver_watch_queues import QueueRules
from virtio_sim.orchestration.conformance.driver_watch_rings import RING_VIOLATIONS, RingRules
from virtio_sim.orchestration.conformance.driver_watch_status import NO_VERSION_1, StatusRules
from virtio_sim.orchestration.conformance.driver_watch_transport import (
    MATCH_RULE,
    MISUSE,
    PRESENTED,
    TransportRules,
)
from virtio_sim.orchestration.conformance.findings import Finding, FindingLog
from virtio_sim.ring.view import RingSource
from virtio_sim.spec import F

#: the rule families, in the order their end-of-run rules are applied
FAMILIES: tuple[type[Family], ...] = (
    StatusRules,
    FeatureRules,
    ConfigRules,
    QueueRules,
    NotifyRules,
    RingRules,
    TransportRules,
)


@cache
def framings() -> Mapping[str, type[Framing]]:
    """Device kind -> its framing rules (the DeviceKind registry's ``framing``)."""
    return {key: framing_class(kind.framing) for key, kind in KINDS.items() if kind.framing is not None}


@cache
def conditions() -> Mapping[str, str]:
    """Every id that only applies with (or, "!", without) a feature: the families' and
    every device kind's framing rules' (a kind's own bits only count on that kind)."""
    table: dict[str, str] = {}
    for family in FAMILIES:
        table.update(family.CONDITIONS)
    for framing in framings().values():
        table.update(framing.CONDITIONS)
    return table


@cache
def _feature_prefixes() -> Mapping[str, tuple[str, Any]]:
    """FEATURE_PREFIX -> (device kind, its spec namespace of feature bits)."""
    return {f.FEATURE_PREFIX: (key, f.FEATURE_BITS) for key, f in framings().items() if f.FEATURE_PREFIX}


def _condition_bit(name: str) -> int:
    prefix, _, rest = name.partition("_")
    owner = _feature_prefixes().get(prefix)
    number: int = getattr(owner[1], rest) if owner is not None else getattr(F, name)
    return number


class DriverWatch(WatchCore):
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
        super().__init__(
            log,
            source,
            transport=transport,
            device_type=device_type,
            vantage=vantage,
            on_stop=on_stop,
            presented=presented,
        )
        self.status_rules = StatusRules(self)
        self.feature_rules = FeatureRules(self)
        self.config_rules = ConfigRules(self)
        self.queue_rules = QueueRules(self)
        self.notify_rules = NotifyRules(self)
        self.ring_rules = RingRules(self)
        self.transport_rules = TransportRules(self)
        self.families: tuple[Family, ...] = (
            self.status_rules,
            self.feature_rules,
            self.config_rules,
            self.queue_rules,
            self.notify_rules,
            self.ring_rules,
            self.transport_rules,
        )
        framing = framings().get(device_type)
        #: the device kind's request framing rules (none behind vhost-user for some kinds)
        self.framings: list[Framing] = (
            [framing(self)] if framing is not None and (framing.VHOST_USER or not self.vhost) else []
        )
        self.reset_all()

    def reset_all(self) -> None:
        """A device reset: every family forgets what the reset ends."""
        for family in self.families:
            family.reset()

    # -- what other modules read ---------------------------------------------------------------

    @property
    def chains(self) -> int:
        return self.ring_rules.chains

    @property
    def kicks(self) -> int:
        return self.notify_rules.kicks

    @property
    def unknown_refused(self) -> str | None:
        """The driver did not reach DRIVER_OK on a device offering an unknown feature bit
        (why); the runner's control run without the bit decides whether that was the cause."""
        return self.feature_rules.unknown_refused

    # -- the DriverObserver callbacks, each to its family -------------------------------------

    def on_status_write(self, old: int, value: int, new: int) -> None:
        if self.stopped is None and not self.vhost:
            self.status_rules.on_status_write(old, value, new)

    def on_status_read(self, value: int) -> None:
        if self.stopped is None and not self.vhost:
            self.status_rules.on_status_read(value)

    def on_features_read(self, window: int, value: int) -> None:
        if self.stopped is None:
            self.feature_rules.on_features_read(window, value)

    def on_features_write(self, window: int, value: int) -> None:
        if self.stopped is None:
            self.feature_rules.on_features_write(window, value)

    def on_config_read(self, offset: int, size: int) -> None:
        if self.stopped is None and not self.vhost:
            self.config_rules.on_config_read(offset, size)

    def on_config_write(self, offset: int, size: int, value: int) -> None:
        if self.stopped is None and not self.vhost:
            self.config_rules.on_config_write(offset, size, value)

    def on_queue_write(self, index: int, field_name: str, value: int, ready: bool) -> None:
        if self.stopped is None:
            self.queue_rules.on_queue_write(index, field_name, value, ready)

    def on_queue_read(self, index: int, field_name: str, value: int) -> None:
        if self.stopped is None:
            self.queue_rules.on_queue_read(index, field_name, value)

    def on_notify(self, index: int, value: int, width: int) -> None:
        if self.stopped is None:
            self.notify_rules.on_notify(index, value, width)

    def on_ring_violation(self, index: int, violation: str, message: str) -> None:
        if self.stopped is None:
            self.ring_rules.on_ring_violation(index, violation, message)

    def on_register(self, op: str, name: str, value: int) -> None:
        if self.stopped is None and not self.vhost:
            self.transport_rules.on_register(op, name, value)

    def on_misuse(self, kind: str, message: str) -> None:
        if self.stopped is None:
            self.transport_rules.on_misuse(kind, message)

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> FindingLog:
        """Apply end-of-run checks, then PASS every exercised id and mark the ids whose
        feature was not negotiated NOT_APPLICABLE. Returns the log."""
        if self.stopped is None:
            self.notify_rules.finish_queues()
        self.notify_rules.finish()
        self.transport_rules.finish_presented()
        for q in self.queues.values():
            if q.stop_unverified:  # Linux's vm_del_vq() reads QueueReady back at once
                self.fail("mmio.drv.stop-queue", f"queue {q.index}: QueueReady 0 written, never read back")
        self.status_rules.finish()
        self.ring_rules.finish()
        self.feature_rules.finish()
        self.transport_rules.finish()
        if self.stopped is None:
            for framing in self.framings:
                framing.finish(self.driver_ok_seen)
        failed = {f.requirement for f in self.log.failures()}
        features = self.source.driver_features
        for requirement in sorted(self.exercised - failed):
            if self._applies(requirement, features):
                self.log.passed(requirement)
        prefixes = _feature_prefixes()
        for requirement, condition in conditions().items():
            prefix = condition.lstrip("!").split("_")[0]
            if prefix in prefixes and prefixes[prefix][0] != self.device_type:
                continue  # device-type feature bits mean nothing on another device
            if requirement not in self.log.findings and not self._applies(requirement, features):
                self.log.not_applicable(
                    requirement,
                    f"{condition.lstrip('!')} {'was' if condition.startswith('!') else 'not'} negotiated",
                )
        return self.log

    @staticmethod
    def _applies(requirement: str, features: int) -> bool:
        condition = conditions().get(requirement)
        if condition is None:
            return True
        on = bool(features >> _condition_bit(condition.lstrip("!")) & 1)
        return on != condition.startswith("!")


__all__ = [
    "FAMILIES",
    "MATCH_RULE",
    "MISUSE",
    "NO_VERSION_1",
    "PRESENTED",
    "RING_VIOLATIONS",
    "UNKNOWN_FEATURE",
    "DriverWatch",
    "QueueState",
    "conditions",
    "framings",
    "known_feature_mask",
]
