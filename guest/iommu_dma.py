"""The DMA API behind a virtio-iommu: IOVAs, MAP/UNMAP per buffer, a premapped coherent pool.

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

Streaming buffers get guest pages and a fresh IOVA at ``alloc`` time; their MAPs wait
until :meth:`IommuDma.flush` (before a chain that uses them is made available), which
sends them the way Linux 6.1 does: one synchronous MAP request per buffer (virtio_ring.c
maps every scatterlist entry with ``dma_map_page``, :352-374 and :583-614;
``viommu_map_pages`` sends each with ``viommu_send_req_sync``). ``free`` queues the
UNMAP; pages and IOVAs are reused only after the device confirmed it, so a stale
translation can never reach a page that belongs to someone else. Rings and indirect
tables come from a coherent pool mapped once when the device is set up, because the ring
code needs them synchronously. Linux maps an indirect table per request instead
(``vring_map_single``, virtio_ring.c:621-634, unmapped in ``detach_buf_split``): one
MAP and one UNMAP per request that this model does not send.

Line numbers without a file name are drivers/iommu/dma-iommu.c or virtio-iommu.c of
Linux 6.1 (blobs 9297b741 and 8b1b5c27, the same in v6.1-rc7 and v6.1.15);
virtio_ring.c is blob 2e7689bb.
"""

from __future__ import annotations

import bisect
from typing import Protocol

from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.memory import ByteAccess
from virtio_sim.ring.chain import DmaBuffer, DmaPool
from virtio_sim.spec import IOMMU_MAP_F

SAC_LIMIT = (1 << 32) - 1  # DMA_BIT_MASK(32): PCI devices get a 32-bit IOVA first
COHERENT_POOL = 1 << 20
RW = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE
# drivers/iommu/iova.c of Linux 6.1 (blob a44ad92f, v6.1-rc7; the same values in v6.1.15)
IOVA_RANGE_CACHE_MAX_SIZE = 6  # log2 of the largest cached range, in pages (:18)
IOVA_MAG_SIZE = 127  # IOVAs per magazine (:627)
MAX_GLOBAL_MAGS = 32  # full magazines in a depot (:628)


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
        #: (first, last) inclusive ranges in use, sorted: reserved ones and allocations
        #: (IOVAs parked in the rcache stay in use, as they stay in Linux's rbtree)
        self._used: list[tuple[int, int]] = sorted((lo, hi) for lo, hi in reserved if hi >= lo)
        self._sizes: dict[int, int] = {}
        #: iova.c's rcache for one CPU, per size order below IOVA_RANGE_CACHE_MAX_SIZE:
        #: [loaded magazine, previous magazine, depot of full magazines]
        self._rcache: list[tuple[list[int], list[int], list[list[int]]]] = [
            ([], [], []) for _ in range(IOVA_RANGE_CACHE_MAX_SIZE)
        ]

    def _fits(self, lo: int, hi: int) -> bool:
        return lo >= self.start and not any(a <= hi and lo <= b for a, b in self._used)

    def _top_down(self, size: int, limit: int) -> int | None:
        """The highest size-aligned run of ``size`` bytes ending at or below ``limit``."""
        cand = (limit + 1 - size) // size * size
        for a, b in reversed(self._used):
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
        for a, b in self._used:
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
            self._take(iova, length)
            return iova
        n = 1 << (n - 1).bit_length()  # roundup_pow_of_two (iova_len < IOVA_RANGE_CACHE_MAX)
        length = n * self.granule
        iova = None
        if self.pci and self.limit > SAC_LIMIT:
            iova = self._cached(n, SAC_LIMIT) or self._top_down(length, SAC_LIMIT)
        if iova is None:
            iova = self._cached(n, self.limit) or self._top_down(length, self.limit)
        if iova is None:
            raise IovaExhausted(f"no {length:#x}-byte IOVA range below {self.limit:#x}")
        if iova not in self._sizes:
            self._take(iova, length)
        return iova

    def _take(self, iova: int, length: int) -> None:
        bisect.insort(self._used, (iova, iova + length - 1))
        self._sizes[iova] = length

    def _cached(self, pages: int, limit: int) -> int | None:
        """iova_rcache_get (iova.c:833-882): the newest cached IOVA of this size order
        whose range ends at or below ``limit``, from the loaded magazine, else the
        previous one, else a full magazine from the depot; None sends the caller to the
        tree."""
        order = (pages - 1).bit_length()
        if order >= IOVA_RANGE_CACHE_MAX_SIZE:
            return None
        cache = self._rcache[order]
        loaded, prev, depot = cache
        if not loaded:
            if prev:
                self._rcache[order] = cache = (prev, loaded, depot)
            elif depot:
                self._rcache[order] = cache = (depot.pop(), prev, depot)
            else:
                return None
        mag = cache[0]
        last = limit + 1 - pages * self.granule  # the highest start that fits (limit_pfn - size)
        i = len(mag) - 1
        while mag[i] > last:  # iova_magazine_pop: only fall back with no suitable pfn at all
            if i == 0:
                return None
            i -= 1
        iova = mag[i]
        mag[i] = mag[-1]
        mag.pop()
        return iova

    def free(self, iova: int) -> None:
        """free_iova_fast (iova.c:487-493): into the rcache when the size is cached
        (__iova_rcache_insert, :769-815: the loaded magazine, else the previous one, else
        a fresh one with the loaded one moved to the depot, whose 33rd magazine goes back
        to the tree); otherwise back to the tree."""
        length = self._sizes[iova]
        order = (length // self.granule - 1).bit_length()
        if self.top_down and order < IOVA_RANGE_CACHE_MAX_SIZE:
            loaded, prev, depot = self._rcache[order]
            if len(loaded) < IOVA_MAG_SIZE:
                loaded.append(iova)
                return
            if len(prev) < IOVA_MAG_SIZE:
                self._rcache[order] = (prev, loaded, depot)
                prev.append(iova)
                return
            if len(depot) < MAX_GLOBAL_MAGS:
                depot.append(loaded)
            else:
                for pfn in loaded:
                    self._untake(pfn)
            self._rcache[order] = ([iova], prev, depot)
            return
        self._untake(iova)

    def _untake(self, iova: int) -> None:
        length = self._sizes.pop(iova)
        i = bisect.bisect_left(self._used, (iova, iova + length - 1))
        del self._used[i]


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
        self._fq: list[DmaBuffer] = []  # lazy mode: unmapped, not yet flushed
        self._sizes: dict[int, int] = {}
        gpa = pages.alloc(COHERENT_POOL, granule)
        iova = self.iovas.alloc(COHERENT_POOL)
        self._pending_maps.append((iova, iova + COHERENT_POOL - 1, gpa, RW))
        self.coherent: DmaPool = _CoherentPool(gpa, iova, COHERENT_POOL, granule)
        self.maps_sent = 0
        self.unmaps_sent = 0
        #: None: strict, queued UNMAPs go out with the next flush (before the next chain is
        #: made available). An int N: Linux's lazy mode (iommu.strict=0, the flush queue of
        #: drivers/iommu/dma-iommu.c, IOVA_FQ_SIZE = 256 entries): see :meth:`flush`.
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
        """Send queued UNMAPs (then release their pages and IOVAs) and MAPs.

        Strict (``flush_queue`` None): every UNMAP is its own synchronous request, then its
        IOVA and pages are free (dma-iommu.c ``__iommu_dma_unmap`` -> ``iommu_iotlb_sync``,
        :674-695). Lazy (an int N, Linux's flush queue of N = IOVA_FQ_SIZE entries,
        dma-iommu.c:86-218): the UNMAPs are added to the request queue without a kick
        (``viommu_add_req``) and reach the device with the next kick; their IOVAs and
        pages wait in the queue, which holds N - 1 entries (``fq_full``): when it is full,
        one sync (``fq_flush_iotlb``) releases them all (``fq_ring_free``). The 10 ms timer
        (IOVA_FQ_TIMEOUT) is not modelled: the simulation has no guest clock. Then each
        MAP is one synchronous request (``viommu_send_req_sync``).
        """
        if self._pending_unmaps:
            bufs, self._pending_unmaps = self._pending_unmaps, []
            ranges = [(b.dev_addr, b.dev_addr + self._sizes[b.dev_addr] - 1) for b in bufs]
            fq = self.flush_queue
            queue_unmaps = getattr(self.iommu, "queue_unmaps", None)
            if fq is None:
                await self.iommu.unmap_many(self.domain, ranges)
                self._release(bufs)
            elif queue_unmaps is not None:
                for b, r in zip(bufs, ranges, strict=True):
                    if len(self._fq) >= fq - 1:  # fq_full: flush, then free what it covered
                        await self.iommu.sync()  # type: ignore[attr-defined]
                        self._release(self._fq)
                        self._fq = []
                    await queue_unmaps(self.domain, [r])
                    self._fq.append(b)
            else:  # a mapper without deferred invalidation: unmap when the queue is full
                self._fq += bufs
                if len(self._fq) >= fq - 1:
                    held, self._fq = self._fq, []
                    await self.iommu.unmap_many(
                        self.domain, [(b.dev_addr, b.dev_addr + self._sizes[b.dev_addr] - 1) for b in held]
                    )
                    self._release(held)
            self.unmaps_sent += len(ranges)
        if self._pending_maps:
            maps, self._pending_maps = self._pending_maps, []
            await self.iommu.map_many(self.domain, maps)
            self.maps_sent += len(maps)

    def _release(self, bufs: list[DmaBuffer]) -> None:
        """The device confirmed the UNMAPs: IOVAs and pages may be handed out again."""
        for b in bufs:
            del self._sizes[b.dev_addr]
            self.iovas.free(b.dev_addr)
            self.pages.free(b.gpa)

    def write(self, buf: DmaBuffer, data: bytes, offset: int = 0) -> None:
        if offset + len(data) > buf.size:
            raise ValueError("write past the end of a DMA buffer")
        self.memory.write(buf.gpa + offset, data)

    def read(self, buf: DmaBuffer, length: int | None = None, offset: int = 0) -> bytes:
        n = buf.size - offset if length is None else length
        if offset + n > buf.size:
            raise ValueError("read past the end of a DMA buffer")
        return self.memory.read(buf.gpa + offset, n)
