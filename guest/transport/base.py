"""The interface every guest transport driver offers to the virtio core (Linux's
virtio_config_ops): status, features, config space, queue setup, notification."""

from __future__ import annotations

from typing import Protocol

from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.split import SplitRingAddresses


class TransportError(Exception):
    """The transport cannot be driven (wrong magic, unsupported version, queue absent)."""


class ConfigOps(Protocol):
    name: str  # "mmio-v2", "pci-modern", ...
    legacy: bool  # True when only the legacy interface is available
    device_id: int
    guest_order: ByteOrder

    async def get_status(self) -> int: ...

    async def set_status(self, status: int) -> None: ...

    async def reset(self) -> None: ...

    async def get_features(self) -> int: ...

    async def set_features(self, features: int) -> None: ...

    async def config_generation(self) -> int: ...

    async def read_config(self, offset: int, size: int) -> int: ...

    async def write_config(self, offset: int, size: int, value: int) -> None: ...

    async def queue_max_size(self, index: int) -> int: ...

    async def setup_queue(self, index: int, size: int, addrs: SplitRingAddresses) -> None: ...

    async def disable_queue(self, index: int) -> None: ...

    async def notify(self, index: int, data: int | None = None) -> None:
        """Kick queue ``index``; ``data`` is the whole NOTIFICATION_DATA value if negotiated."""
        ...

    async def reset_queue(self, index: int) -> None:
        """VIRTIO_F_RING_RESET: reset one queue and wait until the device says it is done."""
        ...

    async def ack_interrupt(self) -> int:
        """Read and acknowledge the pending interrupt causes (ISR bits)."""
        ...

    def legacy_ring_align(self) -> int | None:
        """The used-ring alignment of a contiguous legacy ring, or None for split areas."""
        ...
