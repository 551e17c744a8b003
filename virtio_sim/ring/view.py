"""A configured queue as a device would read it, for checkers that watch a driver.

Core types (no host or guest imports): the device core (host/virtio_device.py) and the
vhost-user back-end give these out; the driver-side conformance watch
(virtio_sim/orchestration/conformance/driver_watch*.py) reads the rings through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from virtio_sim.dma import AddressSpace
from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.api import DeviceRing
from virtio_sim.ring.packed import PackedDeviceQueue
from virtio_sim.ring.split import SplitDeviceQueue
from virtio_sim.ring.types import IDX_MASK
from virtio_sim.spec import PACKED


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
    #: how far the device has consumed the ring (:func:`consumed_position`), None before
    #: the device made its ring. A watch that looks later than the device (vhost-user:
    #: kicks coalesce, the back-end serves whatever is available) must not judge chains
    #: the device already consumed: the driver may have completed them and reused their
    #: indirect tables (or, packed, their slots) meanwhile.
    consumed: int | None = None


def consumed_position(ring: DeviceRing | None) -> int | None:
    """Where the device will read next, in the units a watch counts in.

    Split: the device's ``last_avail`` (a free-running 16-bit avail index). Packed: the
    descriptor position modulo two laps (a free-running position taken modulo
    ``2 * size``; the wrap counter starts at 1, 2.8.1, so lap 0 is 0..size-1 and lap 1
    size..2*size-1). None: no ring yet, or a ring of neither kind (nothing to skip)."""
    if isinstance(ring, SplitDeviceQueue):
        return ring.last_avail & IDX_MASK
    if isinstance(ring, PackedDeviceQueue):
        return ring.last_avail + ring.size * (ring.avail_wrap ^ PACKED.wrap_counter_start)
    return None


class RingSource(Protocol):
    """Where an observer finds the rings and the negotiated state (VirtioDevice is one)."""

    @property
    def driver_features(self) -> int: ...

    @property
    def device_features(self) -> int: ...

    def ring_view(self, index: int) -> RingView | None: ...
