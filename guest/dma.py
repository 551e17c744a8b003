"""The guest DMA API: memory a device may reach, and the address the device is told.

Drivers and the vring allocate every ring and buffer here. The direct API hands out guest
RAM and tells the device its guest-physical address (Linux without the DMA API, or with
it and no IOMMU). The IOMMU-backed and bounce-buffer variants come with ACCESS_PLATFORM.
"""

from __future__ import annotations

from typing import Protocol

from guest.allocator import PageAllocator
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


class DirectDma:
    """IOVA == GPA: the device is told guest-physical addresses."""

    name = "direct"

    def __init__(self, memory: ByteAccess, allocator: PageAllocator) -> None:
        self.memory = memory
        self.allocator = allocator
        #: where rings put indirect tables: memory the device can reach without a flush
        self.coherent: DmaPool = self

    def alloc(self, size: int, align: int = 1) -> DmaBuffer:
        gpa = self.allocator.alloc(size, align)
        return DmaBuffer(gpa, gpa, size)

    def free(self, buf: DmaBuffer) -> None:
        self.allocator.free(buf.gpa)

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
