"""The transport-independent half of a virtio device (QEMU's VirtIODevice).

It owns what every transport exposes in its own register layout: the status byte, the
offered and acked feature bits, per-queue setup, the config generation, and the error
state. Transports (mmio, pci) translate register accesses into calls here; device models
(blk, rng) are called to serve queues. The two never meet.

Error policy (docs/architecture.md, "Error policies"): when serving a queue raises a
RingError or DmaError the device either

* ``needs-reset`` (default, QEMU's virtio_error()): sets DEVICE_NEEDS_RESET, sends a
  configuration change interrupt if DRIVER_OK is set, and serves nothing more until the
  driver resets it; or
* ``drop``: gives the offending head back with used.len 0 and keeps the queue running.

Either way the violation is recorded in :attr:`VirtioDevice.violations` with its class.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from host.devices.base import DeviceModel
from virtio_sim.dma import AddressSpace, DmaError
from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.chain import RingError
from virtio_sim.ring.split import SplitDeviceQueue, SplitRingAddresses
from virtio_sim.spec import DEVICE_TYPES, FEATURES, SPLIT, STATUS, F, bit, status_names

log = logging.getLogger("virtio_sim.host")


class ErrorPolicy(enum.Enum):
    NEEDS_RESET = "needs-reset"
    DROP = "drop"


class InterruptSink(Protocol):
    """How the core asks its transport to interrupt the driver."""

    def queue_interrupt(self, index: int) -> None: ...

    def config_interrupt(self) -> None: ...


@dataclass
class QueueState:
    """One virtqueue as the driver configured it through the transport."""

    index: int
    max_size: int
    size: int = 0
    ready: bool = False
    desc: int = 0
    driver: int = 0
    device: int = 0
    ring: SplitDeviceQueue | None = None

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc = self.driver = self.device = 0
        self.ring = None


@dataclass
class Violation:
    violation: str
    message: str
    queue: int | None
    policy: str


@dataclass
class TransportFeatures:
    """The transport/ring bits a device offers, from its properties (QEMU names)."""

    version_1: bool = True
    event_idx: bool = True
    indirect_desc: bool = True
    any_layout: bool = True  # legacy-only bit; transitional devices must offer it
    notify_on_empty: bool = True
    access_platform: bool = False  # QEMU's iommu_platform property (bit 33)

    def mask(self) -> int:
        m = 0
        if self.version_1:
            m |= bit(F.VERSION_1)
        if self.event_idx:
            m |= bit(F.EVENT_IDX)
        if self.indirect_desc:
            m |= bit(F.INDIRECT_DESC)
        if self.any_layout:
            m |= bit(F.ANY_LAYOUT)
        if self.notify_on_empty:
            m |= bit(F.NOTIFY_ON_EMPTY)
        if self.access_platform:
            m |= bit(F.ACCESS_PLATFORM)
        return m


class _BoundQueue:
    """A DeviceQueue for a model: the ring plus its index."""

    def __init__(self, index: int, ring: SplitDeviceQueue) -> None:
        self.index = index
        self.ring = ring
        self.space: AddressSpace = ring.space

    def pop(self):  # type: ignore[no-untyped-def]
        return self.ring.pop()

    def push(self, head: int, written: int) -> None:
        self.ring.push(head, written)


class VirtioDevice:
    def __init__(
        self,
        model: DeviceModel,
        space_for: Callable[[int], AddressSpace],
        *,
        transport_features: TransportFeatures | None = None,
        policy: ErrorPolicy = ErrorPolicy.NEEDS_RESET,
        strict_rings: bool = True,
        validate_access_platform: bool = True,
    ) -> None:
        self.model = model
        self.validate_access_platform = validate_access_platform
        self.type = DEVICE_TYPES[model.type_key]
        self.space_for = space_for
        self.transport_features = transport_features or TransportFeatures()
        self.policy = policy
        self.strict_rings = strict_rings
        self.sink: InterruptSink | None = None
        self.queues = [QueueState(i, model.queue_max_size) for i in range(model.num_queues)]
        self.violations: list[Violation] = []
        self.notes: list[str] = []
        self.status_writes: list[int] = []
        self.config_generation = 0
        self._config_snapshot = b""
        model.hooks = self
        #: the guest CPU's byte order: what the legacy interface uses (a machine property,
        #: so a device reset does not change it)
        self.guest_order: ByteOrder = "little"
        model.notify_used = self._notify_used
        self.reset()

    # -- identity and features ----------------------------------------------

    @property
    def device_id(self) -> int:
        return self.type.id

    @property
    def device_features(self) -> int:
        return self.model.device_features() | self.transport_features.mask()

    @property
    def legacy(self) -> bool:
        """True while the driver has not acked VERSION_1 (the legacy interface)."""
        return not self.driver_features >> F.VERSION_1 & 1

    def byte_order(self, guest_order: ByteOrder) -> ByteOrder:
        """Rings and config are little-endian with VERSION_1, guest-native without."""
        return guest_order if self.legacy else "little"

    def note(self, message: str) -> None:
        log.info("%s: %s", self.model.type_key, message)
        self.notes.append(message)

    # -- status ----------------------------------------------------------------

    def reset(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.broken = False
        for q in self.queues:
            q.reset()
        self.model.reset()

    def write_status(self, value: int) -> None:
        value &= 0xFF
        self.status_writes.append(value)
        if value == 0:
            self.reset()
            return
        old = self.status
        if old & ~value & ~STATUS.DEVICE_NEEDS_RESET:
            self.note(f"driver cleared status bits: {status_names(old)} -> {status_names(value)}")
        new = value
        if value & STATUS.FEATURES_OK and not old & STATUS.FEATURES_OK:
            reason = self._features_ok_refusal()
            if reason:
                self.note(f"FEATURES_OK refused: {reason}")
                new &= ~STATUS.FEATURES_OK
        if old & STATUS.DEVICE_NEEDS_RESET:
            new |= STATUS.DEVICE_NEEDS_RESET  # only a reset clears it
        self.status = new
        if new & STATUS.DRIVER_OK and not old & STATUS.DRIVER_OK:
            self.model.activate(self.driver_features, self.byte_order(self.guest_order))
            self._config_snapshot = self._config_space()

    def _features_ok_refusal(self) -> str | None:
        extra = self.driver_features & ~self.device_features
        if extra:
            names = FEATURES.names(extra, self.model.type_key)
            return f"driver acked features the device did not offer: {', '.join(names)}"
        ap = bit(F.ACCESS_PLATFORM)
        if (
            self.validate_access_platform
            and not self.legacy
            and self.device_features & ap
            and not self.driver_features & ap
        ):
            # QEMU's virtio_validate_features(): an offered, un-acked IOMMU_PLATFORM would let
            # the driver bypass the IOMMU, so FEATURES_OK is refused.
            return "driver did not accept VIRTIO_F_ACCESS_PLATFORM (iommu_platform=on)"
        return self.model.validate_features(self.driver_features)

    def write_driver_features(self, window: int, value: int) -> None:
        if self.status & STATUS.FEATURES_OK:
            self.note("driver wrote features after FEATURES_OK (ignored)")
            return
        if window > 1:
            if value:
                self.note(f"driver wrote {value:#x} to feature window {window} (ignored)")
            return
        shift = 32 * window
        mask = 0xFFFFFFFF << shift
        self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFFFFFF) << shift)

    def read_device_features(self, window: int) -> int:
        if window > 1:
            return 0
        return (self.device_features >> (32 * window)) & 0xFFFFFFFF

    # -- config space -------------------------------------------------------

    def _config_space(self) -> bytes:
        """The config space in the byte order the driver currently expects."""
        self.model.order = self.byte_order(self.guest_order)
        return self.model.config_space()

    def read_config(self, offset: int, size: int) -> int | None:
        space = self._config_space()
        if offset < 0 or offset + size > len(space):
            return None
        return int.from_bytes(space[offset : offset + size], self.model.order)

    def write_config(self, offset: int, size: int, value: int) -> None:
        order = self.byte_order(self.guest_order)
        self.model.config_write(offset, value.to_bytes(size, order))
        self.config_changed()

    def config_changed(self) -> None:
        """Bump the generation if the config really changed, and tell the driver."""
        now = self._config_space()
        if now != self._config_snapshot:
            self._config_snapshot = now
            self.config_generation = (self.config_generation + 1) & 0xFF
            if self.status & STATUS.DRIVER_OK and self.sink:
                self.sink.config_interrupt()

    # -- queues -----------------------------------------------------------------

    def queue(self, index: int) -> QueueState | None:
        if not 0 <= index < min(len(self.queues), self.model.queue_count(self.driver_features)):
            return None
        return self.queues[index]

    def set_queue_size(self, q: QueueState, size: int) -> None:
        if size < 1 or size > q.max_size or size & (size - 1) or size > SPLIT.max_queue_size:
            self.note(f"queue {q.index}: invalid size {size} (max {q.max_size}) ignored")
            return
        q.size = size

    def _ring(self, q: QueueState) -> SplitDeviceQueue:
        if q.ring is None:
            feats = self.driver_features
            q.ring = SplitDeviceQueue(
                self.space_for(feats),
                q.size,
                SplitRingAddresses(q.desc, q.driver, q.device),
                event_idx=bool(feats >> F.EVENT_IDX & 1),
                indirect=bool(feats >> F.INDIRECT_DESC & 1),
                order=self.byte_order(self.guest_order),
                strict=self.strict_rings,
            )
        return q.ring

    def notify(self, index: int) -> None:
        """The driver kicked queue ``index``: serve it and interrupt if the driver wants."""
        q = self.queue(index)
        if q is None:
            self.note(f"notify for nonexistent queue {index} ignored")
            return
        if self.broken:
            return
        if not q.ready:
            self.note(f"notify for queue {index} that is not ready ignored")
            return
        if not self.status & STATUS.DRIVER_OK and not self.legacy:
            self.note(f"queue {index} notified before DRIVER_OK")
        try:
            ring = self._ring(q)
        except RingError as e:
            self._fail(q, e)
            return
        bound = _BoundQueue(index, ring)
        while True:
            try:
                used_before = ring.used_idx
                done = self.model.process(bound)
                if ring.used_idx != used_before:
                    self._maybe_interrupt(q)
                # Re-arm notifications, then look again: a buffer added between the last
                # pop and the re-arm would otherwise wait for a kick that never comes.
                # A model that made no progress (a receive queue with nothing to
                # deliver) leaves its buffers for later.
                ring.set_notification(True)
                if not done or not ring.has_available():
                    return
            except (RingError, DmaError) as e:
                self._maybe_interrupt(q)
                if not self._fail(q, e):
                    return

    def kick_from_device(self, index: int) -> None:
        """The model has work for queue ``index`` (a backend delivered data): serve it as
        a notification would, but only on a live queue of a device past DRIVER_OK."""
        q = self.queue(index)
        if q is None or not q.ready or self.broken or not self.status & STATUS.DRIVER_OK:
            return
        self.notify(index)

    def _notify_used(self, index: int) -> None:
        q = self.queue(index)
        if q is not None and not self.broken:
            try:
                self._maybe_interrupt(q)
            except RingError as e:
                self._fail(q, e)

    def _maybe_interrupt(self, q: QueueState) -> None:
        if q.ring is not None and self.sink is not None and q.ring.needs_interrupt():
            self.sink.queue_interrupt(q.index)

    def _fail(self, q: QueueState, e: RingError | DmaError) -> bool:
        """Apply the error policy; True if serving the queue may continue."""
        violation = e.violation if isinstance(e, RingError) else "dma"
        head = e.head if isinstance(e, RingError) else None
        if self.policy is ErrorPolicy.DROP and head is not None and q.ring is not None:
            self.violations.append(Violation(violation, str(e), q.index, "drop"))
            self.note(f"queue {q.index}: {e}; dropped head {head}")
            try:
                q.ring.push(head, 0)
            except (RingError, ValueError):
                pass
            else:
                return True
        self.violations.append(Violation(violation, str(e), q.index, "needs-reset"))
        self.note(f"queue {q.index}: {e}; device needs reset")
        self.set_needs_reset()
        return False

    def set_needs_reset(self) -> None:
        self.broken = True
        self.status |= STATUS.DEVICE_NEEDS_RESET
        if self.status & STATUS.DRIVER_OK and self.sink:
            self.sink.config_interrupt()


@dataclass
class DeviceReport:
    """What the host side observed, for run results."""

    device_features: int
    driver_features: int
    status: int
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
