"""A configured queue as a device would read it, for checkers that watch a driver.

Core types (no host or guest imports): the device core (host/virtio_device.py) and the
vhost-user back-end give these out; the driver-side conformance watch
(virtio_sim/conformance/driver_watch.py) reads the rings through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from virtio_sim.dma import AddressSpace
from virtio_sim.layouts import ByteOrder


@dataclass(frozen=True)
class RingView:
    """One configured queue as the device would read it."""

    index: int
    size: int
    max_size: int
    desc: int
    driver: int
    device: int
    ready: bool
    packed: bool
    order: ByteOrder
    space: AddressSpace
    #: split rings: the device's next avail position (its last_avail), None before the
    #: device made its ring. A watch that looks later than the device (vhost-user: kicks
    #: coalesce, the back-end serves whatever is available) must not judge chains the
    #: device already consumed: the driver may have completed them and reused their
    #: indirect tables meanwhile.
    consumed: int | None = None


class RingSource(Protocol):
    """Where an observer finds the rings and the negotiated state (VirtioDevice is one)."""

    @property
    def driver_features(self) -> int: ...

    @property
    def device_features(self) -> int: ...

    def ring_view(self, index: int) -> RingView | None: ...
