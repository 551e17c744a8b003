"""virtio-rng guest driver (Linux's virtio-rng.c): post writable buffers, collect bytes."""

from __future__ import annotations

from virtio_sim.guest.drivers.base import GuestDriver
from virtio_sim.guest.virtio import GuestVirtqueue


class RngDriver(GuestDriver):
    type_key = "rng"
    device_feature_mask = 0
    queue_size = 64

    async def probe(self) -> None:
        self.vq: GuestVirtqueue = await self.dev.setup_queue(0, self.queue_size)

    async def read(self, n: int, canary: int = 0xA5) -> bytes:
        """Ask for ``n`` bytes; returns what the device wrote (used.len bytes).

        The buffer is pre-filled with ``canary`` so a caller can check that the device wrote
        exactly the bytes it reported and nothing beyond them.
        """
        dma = self.dev.dma
        buf = dma.alloc(n)
        try:
            dma.write(buf, bytes([canary]) * n)
            length = await self.vq.submit([], [(buf.dev_addr, n)])
            self.last_buffer = dma.read(buf, n)
            return self.last_buffer[:length]
        finally:
            dma.free(buf)
