"""Receive buffers a driver keeps posted on one queue (net receiveq, console ports).

Linux drivers fill a receive queue with device-writable buffers, take the used ones in
used-ring order from the interrupt handler, copy the data out and post buffers again.
This pool does the same over one slab of DMA memory carved into buffers: ``done`` holds
(buffer, used length) in the order the device used them, ``give_back`` queues a buffer for
reposting and :meth:`RxPool.refill` posts the queued ones (after the DMA API made the slab
reachable) and kicks once.

The pool never holds more buffers than the ring can take at once (two descriptors per
buffer at worst), so posting never waits for the device: a receive queue is used only
when data arrives, and waiting for that while filling would never end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from virtio_sim.guest.dma import DmaApi
from virtio_sim.guest.virtio import GuestVirtqueue
from virtio_sim.ring.chain import DmaBuffer

MAX_SEGMENTS_PER_BUFFER = 2


@dataclass
class RxBuf:
    mem: DmaBuffer  # this buffer's slice of the slab
    size: int


Segments = Callable[[RxBuf], list[tuple[int, int]]]


def whole_buffer(buf: RxBuf) -> list[tuple[int, int]]:
    return [(buf.mem.dev_addr, buf.size)]


@dataclass
class RxPool:
    vq: GuestVirtqueue
    segments: Segments = whole_buffer
    bufs: list[RxBuf] = field(default_factory=list)
    done: deque[tuple[RxBuf, int]] = field(default_factory=deque)
    _repost: list[RxBuf] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        """How many buffers fit the ring at once."""
        return self.vq.ring.size // MAX_SEGMENTS_PER_BUFFER

    def alloc(self, dma: DmaApi, sizes: Sequence[int], count: int) -> None:
        """``count`` buffers (at most :attr:`capacity`) sized by cycling through ``sizes``,
        all queued for posting."""
        count = min(count, self.capacity - len(self.bufs))
        if count <= 0:
            return
        plan = [sizes[i % len(sizes)] for i in range(count)]
        slab = dma.alloc(sum(plan))
        off = 0
        for n in plan:
            buf = RxBuf(DmaBuffer(slab.gpa + off, slab.dev_addr + off, n), n)
            self.bufs.append(buf)
            self._repost.append(buf)
            off += n

    def give_back(self, buf: RxBuf) -> None:
        self._repost.append(buf)

    def _completion(self, buf: RxBuf) -> Callable[[int], None]:
        def on_done(length: int) -> None:
            self.done.append((buf, length))

        return on_done

    async def refill(self) -> int:
        """Post every buffer given back and kick once; returns how many were posted."""
        if not self._repost:
            return 0
        posted = 0
        await self.vq.dev.dma.flush()  # new slabs must be mapped before the device looks
        while self._repost:
            buf = self._repost.pop()
            await self.vq.post(self.segments(buf), self._completion(buf), kick=False)
            posted += 1
        await self.vq.kick()
        return posted
