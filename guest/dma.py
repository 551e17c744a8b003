"""The guest DMA API: memory a device may reach, and the address the device is told.

Drivers and the vring allocate every ring and buffer here. The direct API hands out guest
RAM and tells the device its guest-physical address (Linux without the DMA API, or with
it and no IOMMU). The IOMMU-backed and bounce-buffer variants come with ACCESS_PLATFORM.
"""

from __future__ import annotations

from typing import Protocol

from virtio_sim import layouts
from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.memory import ByteAccess
from virtio_sim.ring.chain import DmaBuffer, DmaPool


class DmaApi(Protocol):
    """What drivers and the vring use for every buffer and ring (Linux's DMA API)."""

    name: str
    coherent: DmaPool

    def alloc(self, size: int, align: int = 1) -> DmaBuffer: ...

    def free(self, buf: DmaBuffer) -> None: ...

    async def flush(self) -> None: ...

    def write(self, buf: DmaBuffer, data: bytes, offset: int = 0) -> None: ...

    def read(self, buf: DmaBuffer, length: int | None = None, offset: int = 0) -> bytes: ...


CANARY = 0xCA
GUARD = 4096  # one guard page in front of every buffer
_GUARD_BYTES = bytes([CANARY]) * GUARD
_CANARIES = bytes([CANARY]) * (2 * GUARD)  # the tail: under a page, then the guard page


class DirectDma:
    """IOVA == GPA: the device is told guest-physical addresses.

    Every buffer sits between canaries: a guard page in front, and the rest of its last page
    plus a guard page behind. :meth:`check` (and every free) verifies them, so a device
    that writes outside the buffers it was given is caught and reported as corruption.
    """

    name = "direct"

    def __init__(self, memory: ByteAccess, allocator: PageAllocator, *, canaries: bool = True) -> None:
        self.memory = memory
        self.allocator = allocator
        self.canaries = canaries
        #: where rings put indirect tables: memory the device can reach without a flush
        self.coherent: DmaPool = self
        self._live: dict[int, tuple[int, int, int]] = {}  # gpa -> (block base, block size, size)
        self.corruption: list[str] = []

    def alloc(self, size: int, align: int = 1) -> DmaBuffer:
        if not self.canaries:
            gpa = self.allocator.alloc(size, align)
            return DmaBuffer(gpa, gpa, size)
        body = layouts.align_up(max(size, 1), GUARD)
        total = GUARD + body + GUARD
        base = self.allocator.alloc(total, max(align, GUARD))
        gpa = base + GUARD
        self.memory.write(base, _GUARD_BYTES)
        self.memory.write(gpa + size, _CANARIES[: total - GUARD - size])
        self._live[gpa] = (base, total, size)
        return DmaBuffer(gpa, gpa, size)

    def _check_one(self, gpa: int) -> None:
        base, total, size = self._live[gpa]
        for start, end in ((base, gpa), (gpa + size, base + total)):
            seen = self.memory.read(start, end - start)
            if seen != _CANARIES[: end - start]:  # a compare, not a count: 100x faster
                bad = next(i for i, b in enumerate(seen) if b != CANARY)
                self.corruption.append(
                    f"device wrote outside a {size}-byte DMA buffer at {gpa:#x}: "
                    f"canary at {start + bad:#x} changed"
                )
                return

    def free(self, buf: DmaBuffer) -> None:
        if not self.canaries:
            self.allocator.free(buf.gpa)
            return
        self._check_one(buf.gpa)
        base, _, _ = self._live.pop(buf.gpa)
        self.allocator.free(base)

    def check(self) -> list[str]:
        """Check the canaries of every live buffer; returns everything found so far."""
        for gpa in list(self._live):
            self._check_one(gpa)
        return self.corruption

    async def flush(self) -> None:
        """Nothing to do: direct DMA needs no mappings."""

    def write(self, buf: DmaBuffer, data: bytes, offset: int = 0) -> None:
        if offset + len(data) > buf.size:
            raise ValueError("write past the end of a DMA buffer")
        self.memory.write(buf.gpa + offset, data)

    def read(self, buf: DmaBuffer, length: int | None = None, offset: int = 0) -> bytes:
        n = buf.size - offset if length is None else length
        if offset + n > buf.size:
            raise ValueError("read past the end of a DMA buffer")
        return self.memory.read(buf.gpa + offset, n)
