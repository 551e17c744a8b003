"""The transport-independent half of a virtio device (QEMU's VirtIODevice).

It owns what every transport exposes in its own register layout: the status byte, the
offered and acked feature bits, per-queue setup, the config generation, and the error
state. Transports (mmio, pci) translate register accesses into calls here; device models
(blk, rng) are called to serve queues. The two never meet.

Error policy (docs/architecture.md, "Error policies"): when serving a queue raises a
RingError or DmaError the device either

* ``needs-reset`` (default, QEMU's virtio_error()): serves nothing more until the driver
  resets it and, when VERSION_1 was negotiated, sets DEVICE_NEEDS_RESET and sends a
  configuration change interrupt if DRIVER_OK is set (a legacy driver is told nothing:
  :meth:`VirtioDevice.set_needs_reset`); or
* ``drop``: gives the offending head back with used.len 0 and keeps the queue running.

Either way the violation is recorded in :attr:`VirtioDevice.violations` with its class.

Ring format and ring features: the queue is a packed ring when VIRTIO_F_RING_PACKED was
negotiated, split otherwise (:meth:`VirtioDevice._ring`). IN_ORDER, NOTIFICATION_DATA
(:meth:`VirtioDevice.notify_value` decodes and checks the value, recording mismatches as
``notify-data-mismatch`` violations), RING_RESET (:meth:`VirtioDevice.reset_queue`, one
queue while the others keep running) and ORDER_PLATFORM are offered from the device's
properties and apply to every transport.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from virtio_sim.dma import AddressSpace, DmaError, PeerGoneError
from virtio_sim.host.devices.base import DeviceModel
from virtio_sim.host.observer import DriverObserver, RingView
from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.api import DeviceRing
from virtio_sim.ring.chain import Chain, RingError
from virtio_sim.ring.notify import decode_notify_data
from virtio_sim.ring.packed import PackedDeviceQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.ring.view import consumed_position
from virtio_sim.spec import (
    DEVICE_TYPES,
    FEATURES,
    PACKED,
    SPLIT,
    STATUS,
    F,
    bit,
    legacy_only_transport_features,
    status_names,
)

log = logging.getLogger("virtio_sim.host")
LEGACY_FEATURE_WORD = 0xFFFFFFFF  # a legacy interface has one 32-bit feature word


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
    #: the size the queue starts with after a reset: the model's, even where the
    #: transport allows more (virtio-mmio's QueueNumMax is QEMU's VIRTQUEUE_MAX_SIZE)
    initial_size: int = 0
    ready: bool = False
    desc: int = 0
    driver: int = 0
    device: int = 0
    ring: DeviceRing | None = None

    def reset(self) -> None:
        self.size = self.initial_size or self.max_size
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
    bad_feature: bool = False  # QEMU's virtio-pci offers bit 30 to catch ack-everything drivers
    packed: bool = False  # QEMU "packed" (default off)
    in_order: bool = False  # QEMU "in_order" (default off)
    notification_data: bool = False  # QEMU "notification_data" (default off)
    queue_reset: bool = True  # QEMU "queue_reset" (default on since 7.2)
    order_platform: bool = False  # no QEMU property: "x-order-platform"
    # Not a feature bit: with IN_ORDER, write one used entry per batch ("x-in-order-batch").
    in_order_batch: bool = False
    #: bits no spec defines, offered by a checking device to see the driver ignore them
    unknown: int = 0

    def mask(self) -> int:
        m = 0
        if self.bad_feature:
            m |= bit(F.BAD_FEATURE)
        for flag, feature in (
            (self.packed, F.RING_PACKED),
            (self.in_order, F.IN_ORDER),
            (self.notification_data, F.NOTIFICATION_DATA),
            (self.queue_reset, F.RING_RESET),
            (self.order_platform, F.ORDER_PLATFORM),
        ):
            if flag and self.version_1:  # bits above 31 do not exist for legacy devices
                m |= bit(feature)
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
        return m | self.unknown


class _BoundQueue:
    """A DeviceQueue for a model: the ring plus its index."""

    def __init__(self, index: int, ring: DeviceRing) -> None:
        self.index = index
        self.ring = ring
        self.space: AddressSpace = ring.space

    def pop(self) -> Chain | None:
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
        #: a checking device's driver watch (host/observer.py); None costs nothing
        self.observer: DriverObserver | None = None
        self.queues = [
            QueueState(i, model.queue_size_for(i), initial_size=model.queue_size_for(i))
            for i in range(model.num_queues)
        ]
        self.violations: list[Violation] = []
        self.notes: list[str] = []
        self.status_writes: list[int] = []
        self.notify_data_checked = 0  # NOTIFICATION_DATA values compared with a ring
        self.queue_resets: list[int] = []  # queues reset one by one (RING_RESET)
        #: queues kicked before DRIVER_OK (modern interface): served once DRIVER_OK is set
        self.deferred_notifies: set[int] = set()
        self.config_generation = 0
        self._config_snapshot = b""
        #: set by the transport when the function has no legacy interface (mmio v2,
        #: modern-only PCI): such a device refuses FEATURES_OK without VERSION_1
        self.modern_only = False
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
        offer = self.model.device_features() | self.transport_features.mask()
        return offer & ~self.model.withdrawn_transport_features()

    @property
    def visible_features(self) -> int:
        """The offer as a driver can read it through this device's interface: one 32-bit
        word without VERSION_1 (a legacy-only device), else the modern view, which hides
        the legacy-only bits (QEMU's VIRTIO_LEGACY_FEATURES)."""
        if not self.transport_features.version_1:
            return self.device_features & LEGACY_FEATURE_WORD
        return self.device_features & ~legacy_only_transport_features()

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

    def misuse(self, kind: str, message: str) -> None:
        """A driver access the transport refused: noted, and classed for an observer."""
        self.note(message)
        if self.observer is not None:
            self.observer.on_misuse(kind, message)

    def read_status(self) -> int:
        """The status register as a driver reads it (transports call this, not .status)."""
        if self.observer is not None:
            self.observer.on_status_read(self.status)
        return self.status

    def ring_view(self, index: int) -> RingView | None:
        """Queue ``index`` as configured, for observers (host/observer.py RingSource)."""
        q = self.queue(index)
        if q is None:
            return None
        return RingView(
            index=q.index,
            size=q.size,
            max_size=q.max_size,
            desc=q.desc,
            driver=q.driver,
            device=q.device,
            ready=q.ready,
            packed=self.packed,
            order=self.byte_order(self.guest_order),
            space=self.space_for(self.driver_features),
            consumed=consumed_position(q.ring),
        )

    # -- status ----------------------------------------------------------------

    def reset(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.broken = False
        self.deferred_notifies = set()
        for q in self.queues:
            q.reset()
        self.model.reset()

    def write_status(self, value: int) -> None:
        value &= 0xFF
        self.status_writes.append(value)
        old_status = self.status
        self._write_status(value)
        if self.observer is not None:
            self.observer.on_status_write(old_status, value, self.status)

    def _write_status(self, value: int) -> None:
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
            if not self.legacy and not new & STATUS.FEATURES_OK:
                # A modern driver going live without FEATURES_OK never had its features
                # accepted: refuse to run (strict) rather than guess a feature set.
                self._violation("driver-ok-without-features-ok", "DRIVER_OK without FEATURES_OK")
                return
            try:
                self.model.activate(self.driver_features, self.byte_order(self.guest_order))
            except OSError as e:
                # The backend is gone (file, socket): a device error, not a host crash.
                self._violation("activation-failed", f"activation failed: {e}")
                return
            self._config_snapshot = self._config_space()
            deferred, self.deferred_notifies = sorted(self.deferred_notifies), set()
            for index in deferred:
                self.notify(index)

    def _features_ok_refusal(self) -> str | None:
        if self.modern_only and not self.driver_features >> F.VERSION_1 & 1:
            # A device without a legacy interface cannot run the legacy rules (row E40).
            return "driver did not accept VIRTIO_F_VERSION_1 (the device has no legacy interface)"
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
        if self.observer is not None:
            self.observer.on_features_write(window, value)
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
        return self.config_bytes(self.byte_order(self.guest_order))

    def config_bytes(self, order: ByteOrder) -> bytes:
        """The device config space encoded in ``order`` (whatever the model last activated)."""
        saved = self.model.order
        self.model.order = order
        try:
            return self.model.config_space()
        finally:
            self.model.order = saved

    def read_config(self, offset: int, size: int, order: ByteOrder | None = None) -> int | None:
        """A config field's value; ``order`` is the interface's (modern PCI: always little),
        by default the negotiated one. None when the access leaves the config space."""
        order = order or self.byte_order(self.guest_order)
        if self.observer is not None:
            self.observer.on_config_read(offset, size)
        space = self.config_bytes(order)
        if offset < 0 or offset + size > len(space):
            return None
        return int.from_bytes(space[offset : offset + size], order)

    def config_size(self) -> int:
        return len(self.model.config_space())

    def write_config(self, offset: int, size: int, value: int, order: ByteOrder | None = None) -> None:
        order = order or self.byte_order(self.guest_order)
        value &= (1 << 8 * size) - 1  # a wider value than the access never reaches the model
        if self.observer is not None:
            self.observer.on_config_write(offset, size, value)
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

    def created_queue(self, index: int) -> QueueState | None:
        """Queue ``index`` as the device created it, whatever the driver negotiated:
        what its size registers report (QEMU creates every queue at realize, so a probe
        before feature negotiation sees the virtio-net control queue and every
        virtio-serial port queue)."""
        return self.queues[index] if 0 <= index < len(self.queues) else None

    def queue(self, index: int) -> QueueState | None:
        if not 0 <= index < min(len(self.queues), self.model.queue_count(self.driver_features)):
            return None
        return self.queues[index]

    @property
    def packed(self) -> bool:
        return bool(self.driver_features >> F.RING_PACKED & 1)

    def has_feature(self, feature_bit: int) -> bool:
        return bool(self.driver_features >> feature_bit & 1)

    @property
    def barriers(self) -> str:
        """The memory ordering both sides must use: "platform" with ORDER_PLATFORM."""
        return "platform" if self.has_feature(F.ORDER_PLATFORM) else "weak"

    def set_queue_size(self, q: QueueState, size: int) -> None:
        if q.ready:
            self.note(f"queue {q.index}: size written while the queue is live (ignored)")
            return
        # Packed rings take any size up to 2^15; split rings need a power of two.
        limit = PACKED.max_queue_size if self.packed else SPLIT.max_queue_size
        pow2 = not size & (size - 1)
        if size < 1 or size > q.max_size or size > limit or not (pow2 or self.packed):
            self.note(f"queue {q.index}: invalid size {size} (max {q.max_size}) ignored")
            return
        q.size = size

    def _ring(self, q: QueueState) -> DeviceRing:
        if q.ring is None:
            feats = self.driver_features
            if not self.packed:
                misaligned = [
                    name
                    for name, addr, align in (
                        ("descriptor table", q.desc, SPLIT.desc_align),
                        ("available ring", q.driver, SPLIT.avail_align),
                        ("used ring", q.device, SPLIT.used_align),
                    )
                    if addr % align
                ]
                if misaligned:
                    raise RingError("ring-alignment", f"split ring misaligned: {', '.join(misaligned)}")
            space = self.space_for(feats)
            addrs = SplitRingAddresses(q.desc, q.driver, q.device)
            ring: DeviceRing
            features = RingFeatures.from_bits(
                self.driver_features,
                batch_in_order=self.transport_features.in_order_batch,
                strict=self.strict_rings,
            )
            if self.packed:
                ring = PackedDeviceQueue(space, q.size, addrs, features)
            else:
                order = self.byte_order(self.guest_order)
                ring = SplitDeviceQueue(space, q.size, addrs, features, order=order)
            q.ring = ring
        return q.ring

    def notify_value(self, value: int) -> None:
        """A transport's raw notification: the queue index, or with NOTIFICATION_DATA the
        32-bit value whose next_off/next_wrap are checked against the ring first."""
        if not self.has_feature(F.NOTIFICATION_DATA):
            self.notify(value & 0xFFFF)
            return
        data = decode_notify_data(value)
        q = self.queue(data.queue)
        if q is not None and q.ready and not self.broken:
            try:
                problem = self._ring(q).check_notify_data(data.next_off, data.next_wrap)
                self.notify_data_checked += 1
            except RingError:
                problem = None  # an unusable ring: notify() applies the error policy
            if problem:
                msg = f"notification data {value:#010x}: {problem}"
                self.violations.append(Violation("notify-data-mismatch", msg, q.index, "noted"))
                self.note(f"queue {q.index}: {msg}")
                if self.observer is not None:
                    self.observer.on_ring_violation(q.index, "notify-data-mismatch", msg)
        self.notify(data.queue)

    def reset_queue(self, index: int) -> None:
        """VIRTIO_F_RING_RESET: forget one queue's setup and ring state; the others keep
        running. Completions the device wrote before stay in guest memory for the driver."""
        q = self.queue(index)
        if q is None:
            self.note(f"reset of nonexistent queue {index} ignored")
            return
        if not self.has_feature(F.RING_RESET):
            self.note(f"queue {index} reset without VIRTIO_F_RING_RESET negotiated")
        if q.ring is not None:
            try:
                q.ring.flush()  # completions held for IN_ORDER batching are not lost
            except RingError as e:
                self.note(f"queue {index}: {e} while flushing before the reset")
        q.reset()
        self.model.reset_queue(index)
        self.queue_resets.append(index)

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
            # 2.1.2: no buffer is consumed before DRIVER_OK; the kick is kept for then.
            self.note(f"queue {index} notified before DRIVER_OK (served once DRIVER_OK is set)")
            self.deferred_notifies.add(index)
            return
        try:
            ring = self._ring(q)
        except RingError as e:
            self._fail(q, e)
            return
        bound = _BoundQueue(index, ring)
        while True:
            try:
                used_before = ring.published
                done = self.model.process(bound)
                ring.flush()  # IN_ORDER batching: the held run becomes one used entry now
                if ring.published != used_before:
                    self._maybe_interrupt(q)
                # Re-arm notifications, then look again: a buffer added between the last
                # pop and the re-arm would otherwise wait for a kick that never comes.
                # A model that made no progress (a receive queue with nothing to
                # deliver) leaves its buffers for later.
                ring.set_notification(True)
                if not done or not ring.has_available():
                    return
            except (RingError, DmaError) as e:
                if _peer_gone(e):
                    return  # the guest left mid-service: nothing more to serve or signal
                try:
                    # Completions made before the violation are signalled; without any,
                    # no queue interrupt (QEMU's handlers push and notify per completion,
                    # and virtio_error() notifies nothing but, with VERSION_1, the config)
                    if ring.published != used_before:
                        self._maybe_interrupt(q)
                except (RingError, DmaError) as again:
                    # the ring itself became unreadable (e.g. its IOMMU mapping went away):
                    # that must not escape from the notify register write
                    self.note(f"queue {q.index}: {again} (interrupting after a violation)")
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
        if q.ring is None:
            return
        ring = q.ring
        feats = self.driver_features
        if feats >> F.NOTIFY_ON_EMPTY & 1 and not feats >> F.RING_PACKED & 1:
            # QEMU 7.2 hw/virtio/virtio.c virtio_split_should_notify(): "Always notify when
            # queue is empty (when feature acknowledge)": nothing in use, nothing available,
            # before (and instead of) the NO_INTERRUPT / used_event decision; split rings
            # only (virtio_packed_should_notify() has no such case)
            ring.flush()
            if not ring.in_flight and not ring.has_available():
                if self.sink is not None:
                    self.sink.queue_interrupt(q.index)
                return
        wants = ring.needs_interrupt()  # also flushes held IN_ORDER completions
        while ring.warnings:
            self.note(f"queue {q.index}: {ring.warnings.pop(0)}")
        if wants and self.sink is not None:
            self.sink.queue_interrupt(q.index)

    def _fail(self, q: QueueState, e: RingError | DmaError) -> bool:
        """Apply the error policy; True if serving the queue may continue."""
        if _peer_gone(e):
            return False  # the guest left: nobody broke a rule, nobody to tell
        violation = e.violation if isinstance(e, RingError) else "dma"
        head = e.head if isinstance(e, RingError) else None
        if self.observer is not None:
            self.observer.on_ring_violation(q.index, violation, str(e))
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

    def _violation(self, violation: str, message: str) -> None:
        """A device-level violation outside any queue: always needs-reset."""
        self.violations.append(Violation(violation, message, None, "needs-reset"))
        self.note(f"{message}; device needs reset")
        self.set_needs_reset()

    @property
    def reports_needs_reset(self) -> bool:
        """Whether an error sets DEVICE_NEEDS_RESET: only once VERSION_1 was negotiated
        (QEMU's virtio_error(), :meth:`set_needs_reset`); a legacy driver is never told."""
        return self.has_feature(F.VERSION_1)

    def set_needs_reset(self) -> None:
        """QEMU's virtio_error(): the device stops serving until a reset (``broken``); only
        when VIRTIO_F_VERSION_1 was negotiated does it also set DEVICE_NEEDS_RESET and send
        a configuration change interrupt (which QEMU's virtio_notify_config() sends past
        DRIVER_OK only). A legacy driver (no VERSION_1: mmio v1, the legacy PCI interface)
        sees nothing: its requests just never complete.

        Source: hw/virtio/virtio.c virtio_error(), unchanged from QEMU 2.8 (where it came)
        to 7.2 (``if (virtio_vdev_has_feature(vdev, VIRTIO_F_VERSION_1)) { vdev->status =
        vdev->status | VIRTIO_CONFIG_S_NEEDS_RESET; virtio_notify_config(vdev); }
        vdev->broken = true;``). Measured on QEMU 7.2.22 under qtest (docs/qemu-deviations.md):
        a plain-then-INDIRECT chain ("Incorrect order for descriptors") leaves virtio-rng-pci
        at status 0x4f on the modern interface and 0x7 on the legacy one.
        """
        self.broken = True
        if not self.reports_needs_reset:
            return
        self.status |= STATUS.DEVICE_NEEDS_RESET
        if self.status & STATUS.DRIVER_OK and self.sink:
            self.sink.config_interrupt()


def _peer_gone(e: BaseException) -> bool:
    """A DMA failure because the guest's side is gone (ring code wraps it in a RingError;
    the DmaError stays its __context__)."""
    return isinstance(e, PeerGoneError) or isinstance(e.__context__, PeerGoneError)


@dataclass
class DeviceReport:
    """What the host side observed, for run results."""

    device_features: int
    driver_features: int
    status: int
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
