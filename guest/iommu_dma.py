"""The DMA API behind a virtio-iommu: IOVAs, batched MAP/UNMAP, a premapped coherent pool.

Streaming buffers get guest pages and a fresh IOVA at ``alloc`` time; their MAP requests
wait in a batch that :meth:`IommuDma.flush` sends (one notification for the lot) before a
chain that uses them is made available. ``free`` queues the UNMAP; pages and IOVAs are
reused only after the device confirmed it, so a stale translation can never reach a page
that belongs to someone else. Rings and indirect tables come from a coherent pool mapped
once when the device is set up, because the ring code needs them synchronously.
"""

from __future__ import annotations

from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.guest.drivers.iommu import IommuDriver
from virtio_sim.memory import ByteAccess
from virtio_sim.ring.chain import DmaBuffer, DmaPool
from virtio_sim.spec import IOMMU_MAP_F

IOVA_BASE = 1 << 40  # far above guest RAM, so an IOVA used as a GPA is plainly wrong
IOVA_SPACE = 1 << 36
COHERENT_POOL = 1 << 20
RW = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE


class _CoherentPool:
    """Sub-allocates a premapped range: gpa and IOVA move together."""

    def __init__(self, gpa: int, iova: int, size: int, granule: int) -> None:
        self.gpa = gpa
        self.iova = iova
        self._alloc = PageAllocator(granule, size + granule, granule)  # offsets + granule

    def alloc(self, size: int, align: int = 1) -> DmaBuffer:
        off = self._alloc.alloc(size, align) - self._alloc.page_size
        return DmaBuffer(self.gpa + off, self.iova + off, size)

    def free(self, buf: DmaBuffer) -> None:
        self._alloc.free(buf.gpa - self.gpa + self._alloc.page_size)


class IommuDma:
    name = "iommu"

    def __init__(
        self, memory: ByteAccess, pages: PageAllocator, iommu: IommuDriver, domain: int, endpoint: int
    ) -> None:
        self.memory = memory
        self.pages = pages
        self.iommu = iommu
        self.domain = domain
        self.endpoint = endpoint
        granule = iommu.granule
        self.granule = granule
        self.iovas = PageAllocator(IOVA_BASE, IOVA_BASE + IOVA_SPACE, granule)
        self._pending_maps: list[tuple[int, int, int, int]] = []
        self._pending_unmaps: list[DmaBuffer] = []
        self._sizes: dict[int, int] = {}
        gpa = pages.alloc(COHERENT_POOL, granule)
        iova = self.iovas.alloc(COHERENT_POOL, granule)
        self._pending_maps.append((iova, iova + COHERENT_POOL - 1, gpa, RW))
        self.coherent: DmaPool = _CoherentPool(gpa, iova, COHERENT_POOL, granule)
        self.maps_sent = 0
        self.unmaps_sent = 0

    def _round(self, size: int) -> int:
        return (size + self.granule - 1) // self.granule * self.granule

    def alloc(self, size: int, align: int = 1) -> DmaBuffer:
        n = self._round(size)
        gpa = self.pages.alloc(n, max(align, self.granule))
        iova = self.iovas.alloc(n, max(align, self.granule))
        self._sizes[iova] = n
        self._pending_maps.append((iova, iova + n - 1, gpa, RW))
        return DmaBuffer(gpa, iova, size)

    def free(self, buf: DmaBuffer) -> None:
        self._pending_unmaps.append(buf)

    async def flush(self) -> None:
        """Send queued UNMAPs (then release their pages and IOVAs) and MAPs, batched."""
        if self._pending_unmaps:
            bufs, self._pending_unmaps = self._pending_unmaps, []
            ranges = [(b.dev_addr, b.dev_addr + self._sizes[b.dev_addr] - 1) for b in bufs]
            await self.iommu.unmap_many(self.domain, ranges)
            self.unmaps_sent += len(ranges)
            for b in bufs:
                del self._sizes[b.dev_addr]
                self.iovas.free(b.dev_addr)
                self.pages.free(b.gpa)
        if self._pending_maps:
            maps, self._pending_maps = self._pending_maps, []
            await self.iommu.map_many(self.domain, maps)
            self.maps_sent += len(maps)

    def write(self, buf: DmaBuffer, data: bytes, offset: int = 0) -> None:
        if offset + len(data) > buf.size:
            raise ValueError("write past the end of a DMA buffer")
        self.memory.write(buf.gpa + offset, data)

    def read(self, buf: DmaBuffer, length: int | None = None, offset: int = 0) -> bytes:
        n = buf.size - offset if length is None else length
        if offset + n > buf.size:
            raise ValueError("read past the end of a DMA buffer")
        return self.memory.read(buf.gpa + offset, n)
