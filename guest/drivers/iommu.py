"""virtio-iommu guest driver (Linux's drivers/iommu/virtio-iommu.c, in spirit).

It reads the device's limits (granule, input and domain ranges, probe size), turns off the
global bypass when the device lets it (so unattached endpoints are isolated), lends
buffers to the event queue for fault reports, and offers ATTACH / DETACH / MAP / UNMAP /
PROBE as async calls, each sent the way Linux 6.1 sends it (see the request section).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from virtio_sim.guest.drivers.base import DriverProbeError, GuestDriver, IommuRequestError
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.guest.virtio import DeviceNeedsReset, GuestVirtqueue, RequestState
from virtio_sim.layouts import (
    IOMMU_BODIES,
    IOMMU_TAIL_SIZE,
    IommuFault,
    IommuReqHead,
    IommuReqTail,
    VirtioIommuConfig,
    fast_codec,
    field_offsets,
)
from virtio_sim.ring.chain import DeviceBrokenError, DmaBuffer, DmaPool
from virtio_sim.ring.types import QueueFullError
from virtio_sim.spec import IOMMU_F, IOMMU_S, IOMMU_T, bit

_CFG = field_offsets(VirtioIommuConfig)
EVENT_BUFFERS = 16


def request_codec(name: str) -> struct.Struct:
    """A whole request -- head, body, tail -- as one struct codec, derived from the
    layouts (the single source of the field layout; tests/test_iommu.py checks that
    it builds what construct builds)."""
    parts = [fast_codec(d).format for d in (IommuReqHead, IOMMU_BODIES[name], IommuReqTail)]
    return struct.Struct(parts[0][0] + "".join(p[1:] for p in parts))


_REQUEST_CODECS = {name: request_codec(name) for name in IOMMU_BODIES}
_UNWRITTEN = (0xFF, bytes(3))  # the tail before the device writes it: no valid status


@dataclass(frozen=True)
class FaultReport:
    reason: int
    flags: int
    endpoint: int
    address: int


class IommuDriver(GuestDriver):
    type_key = "iommu"
    device_feature_mask = (
        bit(IOMMU_F.INPUT_RANGE)
        | bit(IOMMU_F.DOMAIN_RANGE)
        | bit(IOMMU_F.MAP_UNMAP)
        | bit(IOMMU_F.PROBE)
        | bit(IOMMU_F.MMIO)
        | bit(IOMMU_F.BYPASS_CONFIG)
    )
    queue_size = 64

    async def probe(self) -> None:
        d = self.dev
        if not d.has(IOMMU_F.MAP_UNMAP):
            raise DriverProbeError("virtio-iommu without MAP_UNMAP cannot translate")
        mask, start, end, dstart, dend, probe_size = await self.read_config_stable(
            [(_CFG["page_size_mask"], 8), (_CFG["input_start"], 8), (_CFG["input_end"], 8),
             (_CFG["domain_start"], 4), (_CFG["domain_end"], 4), (_CFG["probe_size"], 4)]
        )  # fmt: skip
        if not mask:
            raise DriverProbeError("virtio-iommu page_size_mask is 0")
        self.granule = mask & -mask
        self.input_range = (start, end) if d.has(IOMMU_F.INPUT_RANGE) else (0, (1 << 64) - 1)
        self.domain_range = (dstart, dend) if d.has(IOMMU_F.DOMAIN_RANGE) else (0, 0xFFFFFFFF)
        self.probe_size = probe_size if d.has(IOMMU_F.PROBE) else 0
        if d.has(IOMMU_F.BYPASS_CONFIG):
            await d.transport.write_config(_CFG["bypass"], 1, 0)
        self.reqq: GuestVirtqueue = await d.setup_queue(0, self.queue_size)
        self.eventq: GuestVirtqueue = await d.setup_queue(1, self.queue_size)
        self.faults: list[FaultReport] = []
        self.requests = 0
        self._event_bufs: list[DmaBuffer] = []
        self._inflight: list[_Pending] = []
        self.reqq.polled = True
        self._kept: dict[int, list[DmaBuffer]] | None = None  # see _reusing
        ring: Any = self.reqq.ring  # split or packed: both take indirect tables from a pool
        pool = getattr(ring, "indirect_pool", None)
        self._tables = _KeepingPool(pool) if pool is not None else None
        if self._tables is not None:
            ring.indirect_pool = self._tables
        self.reqq.ring.disable_cb()  # no callback: NO_INTERRUPT (virtio_ring.c:967-973)

    async def start_events(self) -> None:
        """After DRIVER_OK: lend the event queue its buffers."""
        size = IommuFault.sizeof()
        for _ in range(EVENT_BUFFERS):
            buf = self.dev.dma.alloc(size)
            self._event_bufs.append(buf)
            await self.eventq.post([(buf.dev_addr, size)], self._fault_handler(buf))

    def _fault_handler(self, buf: DmaBuffer) -> Callable[[int], None]:
        return lambda length: self._on_fault(buf, length)

    def _on_fault(self, buf: DmaBuffer, length: int) -> None:
        if length < IommuFault.sizeof():
            return
        f = IommuFault.parse(self.dev.dma.read(buf, IommuFault.sizeof()))
        if f.reserved != bytes(3):
            return  # spec: a report with non-zero reserved bytes is ignored
        self.faults.append(FaultReport(f.reason, f.flags, f.endpoint, f.address))

    # -- requests: Linux 6.1's request path (drivers/iommu/virtio-iommu.c) -----------
    #
    # The request queue has no callback ("No async requests", virtio-iommu.c:1045-1048),
    # so its ring asks for no interrupts (virtio_ring.c:967-973) and the driver polls the
    # used ring. viommu_send_req_sync (:282-306) adds one request and syncs;
    # viommu_add_req (:264-275) only adds it (no kick); __viommu_sync_req (:154-185)
    # kicks and polls until every request added so far has completed, copying the status
    # back only for write-back requests (an UNMAP's status is never looked at). A full
    # ring is synced first (__viommu_add_req, :248-251).

    def _add(self, name: str, fields: tuple[object, ...], writeback: str | None) -> _Pending:
        codec = _REQUEST_CODECS[name]
        # Linux kzalloc's the request; here the iommu's own DMA API lends the buffer (its
        # guard bytes checked when it is freed, after the request completed)
        kept = self._kept.get(codec.size) if self._kept is not None else None
        buf = kept.pop() if kept else self.dev.dma.alloc(codec.size)
        # device-readable head+body, then the device-writable tail (0xff: not a status,
        # so an unwritten tail is seen)
        self.dev.dma.write(buf, codec.pack(getattr(IOMMU_T, name), bytes(3), *fields, *_UNWRITTEN))
        rlen = codec.size - IOMMU_TAIL_SIZE
        out, in_ = [(buf.dev_addr, rlen)], [(buf.dev_addr + rlen, IOMMU_TAIL_SIZE)]
        state = RequestState(out=out, in_=in_)  # what a queue reset would add again
        vq = self.reqq
        while True:
            self.dev.raise_if_broken()
            try:
                vq.ring.add(out, in_, state)
                break
            except DeviceBrokenError as e:
                self.dev.dma.free(buf)
                raise DeviceNeedsReset(str(e)) from None
            except QueueFullError:
                self.dev.dma.free(buf)
                if not self._inflight:
                    raise
                raise _SyncFirst() from None
        p = _Pending(state, buf, rlen, writeback)
        self._inflight.append(p)
        self.requests += 1
        return p

    async def _add_req(self, name: str, fields: tuple[object, ...], writeback: str | None) -> _Pending:
        try:
            return self._add(name, fields, writeback)
        except _SyncFirst:
            await self.sync()
            return self._add(name, fields, writeback)

    async def sync(self) -> None:
        """__viommu_sync_req: kick, poll until every request in flight completed."""
        vq = self.reqq
        await vq.kick()
        inflight, self._inflight = self._inflight, []
        try:
            for p in inflight:
                if not p.state.done.is_set():
                    await self._poll(p.state)
        finally:
            dma = self.dev.dma
            for p in inflight:
                p.length = p.state.length
                if p.writeback is not None:
                    p.status = dma.read(p.buf, 1, p.rlen)[0] if p.length >= IOMMU_TAIL_SIZE else -1
                if self._kept is not None:
                    self._kept.setdefault(p.buf.size, []).append(p.buf)
                else:
                    dma.free(p.buf)

    @contextmanager
    def _reusing(self) -> Iterator[None]:
        """A run of requests of one kind with nothing else allocating or freeing guest
        memory in between: the buffer and indirect table a request freed serve the next
        one instead of going back to the allocator and being taken again (the allocator
        would hand out the very same pages). All go back at the end, so every later
        allocation sees the same free memory as without this; their guard bytes are
        checked then."""
        if self._kept is not None:
            yield
            return
        self._kept = {}
        tables = self._tables
        if tables is not None:
            tables.keep = True
        try:
            yield
        finally:
            kept, self._kept = self._kept, None
            for bufs in kept.values():
                for b in bufs:
                    self.dev.dma.free(b)
            if tables is not None:
                tables.release()

    async def _poll(self, state: RequestState) -> None:
        """Busy-poll the used ring (virtqueue_get_buf in __viommu_sync_req's loop).

        With the device in this process the kick has served the queue by now. When it
        has not (a device in another process, behind a posted notify write), the queue
        asks for an interrupt while it waits: a simulated vCPU cannot spin across
        processes."""
        vq = self.reqq
        ring = vq.ring
        while not state.done.is_set():
            vq.dev.raise_if_broken()
            try:
                got = ring.get_used()
            except DeviceBrokenError as e:
                vq.dev.mark_broken(f"queue {vq.index}: {e}")
                continue
            if got is not None:
                token, length = got
                token.length = length
                token.done.set()
                continue
            if ring.enable_cb():
                continue  # arrived while asking
            try:
                await vq.dev.wait_progress()
            finally:
                ring.disable_cb()

    async def _send_sync(self, what: str, name: str, fields: tuple[object, ...]) -> _Pending:
        """viommu_send_req_sync: add one request, sync; its status is read back."""
        p = await self._add_req(name, fields, what)
        await self.sync()
        if p.length < IOMMU_TAIL_SIZE:
            raise IommuRequestError(f"{what}: device returned the request unwritten", -1)
        return p

    async def _one(self, what: str, name: str, fields: tuple[object, ...]) -> None:
        p = await self._send_sync(what, name, fields)
        if p.status != IOMMU_S.OK:
            raise IommuRequestError(what, p.status)

    async def attach(self, domain: int, endpoint: int, bypass: bool = False) -> None:
        await self._one(
            f"ATTACH ep {endpoint} to domain {domain}", "ATTACH", (domain, endpoint, int(bypass), bytes(4))
        )

    async def detach(self, domain: int, endpoint: int) -> None:
        await self._one(f"DETACH ep {endpoint}", "DETACH", (domain, endpoint, bytes(8)))

    async def map_many(self, domain: int, maps: list[tuple[int, int, int, int]]) -> None:
        """MAP (virt_start, virt_end, phys_start, flags) entries, one synchronous request
        each: Linux's viommu_map_pages sends every mapping with viommu_send_req_sync
        (virtio-iommu.c:792-833; 6.1 has no iotlb_sync_map to batch them)."""
        with self._reusing():
            for v, e, ph, f in maps:
                p = await self._send_sync(f"MAP of IOVA {v:#x}", "MAP", (domain, v, e, ph, f))
                if p.status != IOMMU_S.OK:
                    raise IommuRequestError(f"MAP of IOVA {v:#x}", p.status)

    async def queue_unmaps(self, domain: int, ranges: list[tuple[int, int]]) -> None:
        """UNMAPs added without a kick (viommu_unmap_pages -> viommu_add_req,
        virtio-iommu.c:835-862): they go to the device with the next sync."""
        for v, e in ranges:
            await self._add_req("UNMAP", (domain, v, e, bytes(4)), None)

    async def unmap_many(self, domain: int, ranges: list[tuple[int, int]]) -> None:
        """Strict unmaps: each UNMAP added, then synced (dma-iommu.c __iommu_dma_unmap
        calls iommu_iotlb_sync -> viommu_iotlb_sync -> viommu_sync_req, :674-695 and
        virtio-iommu.c:884-890). Like Linux, the UNMAP's status is not looked at."""
        with self._reusing():
            for r in ranges:
                await self.queue_unmaps(domain, [r])
                await self.sync()


@dataclass
class _Pending:
    """One request in flight (Linux's ``struct viommu_request``)."""

    state: RequestState
    buf: DmaBuffer
    rlen: int  # the device-readable part
    writeback: str | None  # what the request was, when its status is read back
    length: int = 0
    status: int = -1


class _KeepingPool:
    """The request queue's indirect tables: while ``keep`` (see
    :meth:`IommuDriver._reusing`) a freed table is kept for the next request; otherwise,
    and at the end, it goes back to the pool it came from."""

    def __init__(self, pool: DmaPool) -> None:
        self.pool = pool
        self.keep = False
        self._kept: dict[tuple[int, int], list[DmaBuffer]] = {}
        self._key: dict[int, tuple[int, int]] = {}

    def alloc(self, size: int, align: int) -> DmaBuffer:
        kept = self._kept.get((size, align))
        if kept:
            return kept.pop()
        buf = self.pool.alloc(size, align)
        self._key[buf.gpa] = (size, align)
        return buf

    def free(self, buf: DmaBuffer) -> None:
        if self.keep:
            self._kept.setdefault(self._key[buf.gpa], []).append(buf)
            return
        del self._key[buf.gpa]
        self.pool.free(buf)

    def release(self) -> None:
        self.keep = False
        kept, self._kept = self._kept, {}
        for bufs in kept.values():
            for b in bufs:
                self.free(b)


class _SyncFirst(Exception):
    """The request queue is full: sync the requests in flight, then add again."""


#: the virtio-iommu's guest half: bound at probe, no workload of its own (guest/kinds.py)
GUEST = GuestHalf(IommuDriver)
