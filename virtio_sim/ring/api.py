"""What the host core and the guest core need from a ring, whatever its format.

Split (:mod:`virtio_sim.ring.split`) and packed (:mod:`virtio_sim.ring.packed`) queues
both satisfy these protocols, so ``host.virtio_device`` and ``guest.virtio`` choose the
format once, at queue setup, from the negotiated VIRTIO_F_RING_PACKED bit, and never look
at it again.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from virtio_sim.dma import AddressSpace
from virtio_sim.ring.chain import Chain, DeviceBrokenError
from virtio_sim.ring.hooks import DeviceHooks, DriverHooks


class DeviceRing(Protocol):
    """The device side of one virtqueue."""

    space: AddressSpace
    size: int
    warnings: list[str]  # non-fatal observations (odd event flags, ...) for the device notes
    published: int  # used entries written so far
    hooks: DeviceHooks | None  # public fault and evidence hooks (virtio_sim.ring.hooks)

    @property
    def in_flight(self) -> Collection[int]: ...

    def pop(self) -> Chain | None: ...

    def push(self, head: int, written: int) -> None: ...

    def flush(self) -> None:
        """Write used entries that push() held back (IN_ORDER batching)."""
        ...

    def needs_interrupt(self) -> bool: ...

    def set_notification(self, enable: bool) -> None: ...

    def has_available(self) -> bool: ...

    def reset(self) -> None: ...

    def check_notify_data(self, next_off: int, next_wrap: int) -> str | None:
        """Why a NOTIFICATION_DATA value disagrees with the ring, or None if it fits."""
        ...


class DriverRing(Protocol):
    """The driver side of one virtqueue."""

    size: int
    broken: DeviceBrokenError | None
    hooks: DriverHooks | None  # public fault hooks (virtio_sim.ring.hooks)

    @property
    def num_free(self) -> int: ...

    def add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        token: Any,
        *,
        use_indirect: bool | None = None,
    ) -> int: ...

    def kick_prepare(self) -> bool: ...

    def get_used(self) -> tuple[Any, int] | None: ...

    def more_used(self) -> bool: ...

    def enable_cb(self) -> bool: ...

    def disable_cb(self) -> None: ...

    def detach_all(self) -> list[Any]: ...

    def notify_data(self) -> tuple[int, int]:
        """(next_off, next_wrap) for a NOTIFICATION_DATA notification."""
        ...
