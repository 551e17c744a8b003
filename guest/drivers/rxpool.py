"""Receive buffers a driver keeps posted on one queue (net receiveq, console ports).

Linux drivers fill a receive queue with device-writable buffers, take the used ones in
used-ring order from the interrupt handler, copy the data out and post buffers again.
This pool does the same over one slab of DMA memory carved into buffers: ``done`` holds
(buffer, used length) in the order the device used them, ``give_back`` queues a buffer for
reposting and :meth:`RxPool.refill` posts the queued ones and kicks once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from guest.dma import DirectDma
from guest.virtio import GuestVirtqueue, RequestState
from virtio_sim.ring.chain import DmaBuffer
from virtio_sim.ring.split import QueueFullError


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
    _posted: dict[int, tuple[RequestState, RxBuf]] = field(default_factory=dict)
    _repost: list[RxBuf] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vq.on_used = self._on_used

    def alloc(self, dma: DirectDma, sizes: Sequence[int], count: int) -> None:
        """``count`` buffers sized by cycling through ``sizes``, all queued for posting."""
        plan = [sizes[i % len(sizes)] for i in range(count)]
        slab = dma.alloc(sum(plan))
        off = 0
        for n in plan:
            buf = RxBuf(DmaBuffer(slab.gpa + off, slab.dev_addr + off, n), n)
            self.bufs.append(buf)
            self._repost.append(buf)
            off += n

    def _on_used(self, token: RequestState, length: int) -> None:
        entry = self._posted.pop(id(token), None)
        if entry is not None:
            self.done.append((entry[1], length))

    def give_back(self, buf: RxBuf) -> None:
        self._repost.append(buf)

    @property
    def needs_refill(self) -> bool:
        return bool(self._repost)

    async def refill(self) -> int:
        """Post every buffer given back (as many as fit) and kick once; returns how many
        were posted (0: nothing to do, or the ring is full until the device uses some)."""
        posted = 0
        while self._repost:
            buf = self._repost[-1]
            try:
                req = self.vq.post([], self.segments(buf))
            except QueueFullError:
                break
            self._repost.pop()
            self._posted[id(req)] = (req, buf)
            posted += 1
        if posted:
            await self.vq.kick()
        return posted
