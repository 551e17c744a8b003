"""What every device model provides, whatever transport it sits behind.

A device model knows its device type, its queues, its feature bits and its config space,
and it serves requests from a :class:`DeviceQueue`. It never sees registers, interrupts
or addresses of rings: the transport-independent core (:mod:`host.virtio_device`) turns
register traffic into calls here, and an error raised while serving (a malformed ring, a
DMA refusal) is turned into the configured error policy by the core, not by the model.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from virtio_sim.dma import AddressSpace
from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.chain import Chain

log = logging.getLogger("virtio_sim.host.devices")


class DeviceQueue(Protocol):
    """The device side of one virtqueue, whatever its ring format."""

    index: int
    space: AddressSpace

    def pop(self) -> Chain | None: ...

    def push(self, head: int, written: int) -> None: ...


class DeviceHooks(Protocol):
    """What a model may ask of the core for work it starts itself (QEMU's virtio_notify
    after a backend delivered a packet): serve a queue now, or announce a config change."""

    def kick_from_device(self, index: int) -> None: ...

    def config_changed(self) -> None: ...


class PropertyError(ValueError):
    """A device property is unknown or has an invalid value (reported like QEMU does)."""


@dataclass
class DeviceEvents:
    """What a device noticed while serving, for the run result and conformance checks."""

    messages: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        log.info(message)
        self.messages.append(message)


class DeviceModel(abc.ABC):
    """A transport-agnostic virtio device model."""

    #: key into specs/devices.toml (e.g. "blk")
    type_key: str
    num_queues: int
    queue_max_size: int = 256

    def __init__(self) -> None:
        self.events = DeviceEvents()
        self.features = 0  # negotiated, set by activate()
        self.order: ByteOrder = "little"
        self.hooks: DeviceHooks | None = None  # set by the core that hosts the model
        #: set by the core: tell the driver about buffers this model completed on its own
        #: (outside process(), e.g. an IOMMU fault report on the event queue)
        self.notify_used: Callable[[int], None] = lambda index: None

    @abc.abstractmethod
    def device_features(self) -> int:
        """Device-type feature bits offered (the core adds the transport bits)."""

    def plugged(self, version_1: bool) -> None:
        """The transport decided whether the device offers VERSION_1 (QEMU's plug time);
        a model may refuse the combination with PropertyError, as QEMU's realize does."""
        return None

    def withdrawn_transport_features(self) -> int:
        """Transport bits this model withdraws from its offer (QEMU's get_features may
        clear them); none by default."""
        return 0

    def queue_size_for(self, index: int) -> int:
        """The size queue ``index`` is created with (QEMU's virtio_add_queue size); all
        the model's queues have ``queue_max_size`` unless a model says otherwise."""
        return self.queue_max_size

    def queue_count(self, features: int) -> int:
        """How many queues exist for the driver's acked ``features`` (net: the control
        queue index moves with MQ); by default all ``num_queues`` always exist."""
        return self.num_queues

    def validate_features(self, acked: int) -> str | None:
        """A reason to refuse FEATURES_OK for these acked bits, or None to accept."""
        return None

    @abc.abstractmethod
    def config_space(self) -> bytes:
        """The current device config space, encoded in ``self.order``."""

    def config_write(self, offset: int, data: bytes) -> None:
        """Drivers may write some config fields; by default every field is read-only."""
        self.events.note(f"ignored write of {len(data)} bytes to read-only config offset {offset:#x}")

    def activate(self, features: int, order: ByteOrder) -> None:
        """Called when the driver sets DRIVER_OK (or, legacy, starts using queues)."""
        self.features = features
        self.order = order

    def reset(self) -> None:
        """Forget everything the driver negotiated or set up."""
        self.features = 0

    def reset_queue(self, index: int) -> None:
        """One queue was reset (VIRTIO_F_RING_RESET); models with per-queue state drop it."""
        self.events.note(f"queue {index} reset")

    @abc.abstractmethod
    def process(self, queue: DeviceQueue) -> int:
        """Serve every available request on ``queue``; returns how many were completed.

        0 means no progress (e.g. a receive queue with buffers but nothing to deliver):
        the core then stops serving until the next notification or device kick.

        May raise RingError or DmaError: the core applies the error policy.
        """

    def has_feature(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)


def parse_bool(name: str, value: str) -> bool:
    """QEMU's boolean property spellings."""
    v = value.lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise PropertyError(f"Parameter '{name}' expects 'on' or 'off'")  # QEMU 7.2's wording
