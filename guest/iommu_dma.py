"""The DMA API behind a virtio-iommu: IOVAs, batched MAP/UNMAP, a premapped coherent pool.

IOVAs come from :class:`IovaAllocator`, which places them as Linux's iommu-dma does
(drivers/iommu/dma-iommu.c ``iommu_dma_alloc_iova`` + drivers/iommu/iova.c): sizes are
rounded up to a power of two of granules and aligned to it, the space is searched top-down
from the limit, a PCI device whose DMA mask is wider than 32 bits is first given an
address below 4 GiB (a "SAC" address) and only then one below its mask, IOVA 0 is never
handed out, and reserved regions (the MSI doorbell window the IOMMU reports with PROBE,
the host bridge's memory windows: ``iova_reserve_pci_windows``) are never used. So an IOVA
is, by construction, just below 4 GiB: used as a guest-physical address it falls into
whatever the machine has there -- RAM on a big arm ``virt`` guest (RAM from 1 GiB up), a
hole on a small one or on x86 (where the firmware and the PCI hole sit).

Streaming buffers get guest pages and a fresh IOVA at ``alloc`` time; their MAP requests
wait in a batch that :meth:`IommuDma.flush` sends (one notification for the lot) before a
chain that uses them is made available. ``free`` queues the UNMAP; pages and IOVAs are
reused only after the device confirmed it, so a stale translation can never reach a page
that belongs to someone else. Rings and indirect tables come from a coherent pool mapped
once when the device is set up, because the ring code needs them synchronously.
"""

from __future__ import annotations

from typing import Protocol

from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.memory import ByteAccess
from virtio_sim.ring.chain import DmaBuffer, DmaPool
from virtio_sim.spec import IOMMU_MAP_F

SAC_LIMIT = (1 << 32) - 1  # DMA_BIT_MASK(32): PCI devices get a 32-bit IOVA first
COHERENT_POOL = 1 << 20
RW = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE


class IovaExhausted(Exception):
    pass


class IovaAllocator:
    """Linux's IOVA domain: top-down, size-aligned, with reserved ranges never handed out."""

    def __init__(
        self,
        granule: int,
        aperture: tuple[int, int],
        reserved: list[tuple[int, int]] = [],  # noqa: B006 - read only
        *,
        dma_mask: int = (1 << 64) - 1,
        pci: bool = False,
        top_down: bool = True,
    ) -> None:
        self.granule = granule
        self.top_down = top_down
        self.start = max(aperture[0], granule)  # IOVA 0 (pfn 0) is never allocated
        self.limit = min(aperture[1], dma_mask)
        self.pci = pci
        #: (first, last) inclusive ranges in use: reserved ones and allocations
        self._used: list[tuple[int, int]] = sorted((lo, hi) for lo, hi in reserved if hi >= lo)
        self._sizes: dict[int, int] = {}

    def _fits(self, lo: int, hi: int) -> bool:
        return lo >= self.start and not any(a <= hi and lo <= b for a, b in self._used)

    def _top_down(self, size: int, limit: int) -> int | None:
        """The highest size-aligned run of ``size`` bytes ending at or below ``limit``."""
        cand = (limit + 1 - size) // size * size
        for a, b in sorted(self._used, reverse=True):
            if cand < self.start:
                return None
            if b < cand:
                continue  # entirely below the candidate: the candidate may still fit
            if a > cand + size - 1:
                continue  # entirely above
            cand = (a - size) // size * size  # collides: go below this range
        return cand if cand >= self.start else None

    def _bottom_up(self, size: int) -> int | None:
        """The lowest run of ``size`` bytes (pseries' TCE pools: from the window start)."""
        cand = -(-self.start // size) * size
        for a, b in sorted(self._used):
            if b < cand:
                continue
            if a > cand + size - 1:
                break
            cand = -(-(b + 1) // size) * size
        return cand if cand + size - 1 <= self.limit else None

    def alloc(self, size: int) -> int:
        n = max(1, -(-size // self.granule))
        if not self.top_down:
            length = n * self.granule
            iova = self._bottom_up(length)
            if iova is None:
                raise IovaExhausted(f"no {length:#x}-byte range in the DMA window up to {self.limit:#x}")
            self._used.append((iova, iova + length - 1))
            self._sizes[iova] = length
            return iova
        n = 1 << (n - 1).bit_length()  # roundup_pow_of_two (iova_len < IOVA_RANGE_CACHE_MAX)
        length = n * self.granule
        iova = None
        if self.pci and self.limit > SAC_LIMIT:
            iova = self._top_down(length, SAC_LIMIT)
        if iova is None:
            iova = self._top_down(length, self.limit)
        if iova is None:
            raise IovaExhausted(f"no {length:#x}-byte IOVA range below {self.limit:#x}")
        self._used.append((iova, iova + length - 1))
        self._sizes[iova] = length
        return iova

    def free(self, iova: int) -> None:
        length = self._sizes.pop(iova)
        self._used.remove((iova, iova + length - 1))


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


class Mapper(Protocol):
    """What programs the translation: the virtio-iommu driver or a platform IOMMU."""

    granule: int
    input_range: tuple[int, int]

    async def map_many(self, domain: int, maps: list[tuple[int, int, int, int]]) -> None: ...

    async def unmap_many(self, domain: int, ranges: list[tuple[int, int]]) -> None: ...


class IommuDma:
    name = "iommu"

    def __init__(
        self,
        memory: ByteAccess,
        pages: PageAllocator,
        iommu: Mapper,
        domain: int,
        endpoint: int,
        *,
        reserved: list[tuple[int, int]] = [],  # noqa: B006 - read only
        pci: bool = False,
        dma_mask: int = (1 << 64) - 1,
        iovas: IovaAllocator | None = None,
    ) -> None:
        self.memory = memory
        self.pages = pages
        self.iommu = iommu
        self.domain = domain
        self.endpoint = endpoint
        granule = iommu.granule
        self.granule = granule
        self.iovas = iovas or IovaAllocator(
            granule, iommu.input_range, list(reserved), dma_mask=dma_mask, pci=pci
        )
        self._pending_maps: list[tuple[int, int, int, int]] = []
        self._pending_unmaps: list[DmaBuffer] = []
        self._sizes: dict[int, int] = {}
        gpa = pages.alloc(COHERENT_POOL, granule)
        iova = self.iovas.alloc(COHERENT_POOL)
        self._pending_maps.append((iova, iova + COHERENT_POOL - 1, gpa, RW))
        self.coherent: DmaPool = _CoherentPool(gpa, iova, COHERENT_POOL, granule)
        self.maps_sent = 0
        self.unmaps_sent = 0
        #: None: queued UNMAPs go out with the next flush (before the next chain is made
        #: available). An int N: Linux's lazy mode (iommu.strict=0, the flush queue of
        #: drivers/iommu/dma-iommu.c, IOVA_FQ_SIZE entries): UNMAPs wait until N are queued,
        #: their pages and IOVAs stay unused until then.
        self.flush_queue: int | None = None

    def _round(self, size: int) -> int:
        return (size + self.granule - 1) // self.granule * self.granule

    def alloc(self, size: int, align: int = 1) -> DmaBuffer:
        n = self._round(size)
        gpa = self.pages.alloc(n, max(align, self.granule))
        iova = self.iovas.alloc(max(n, align))
        self._sizes[iova] = n
        self._pending_maps.append((iova, iova + n - 1, gpa, RW))
        return DmaBuffer(gpa, iova, size)

    def free(self, buf: DmaBuffer) -> None:
        self._pending_unmaps.append(buf)

    async def flush(self) -> None:
        """Send queued UNMAPs (then release their pages and IOVAs) and MAPs, batched."""
        fq = self.flush_queue
        if self._pending_unmaps and (fq is None or len(self._pending_unmaps) >= fq):
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
