"""virtio-iommu guest driver (Linux's drivers/iommu/virtio-iommu.c, in spirit).

It reads the device's limits (granule, input and domain ranges, probe size), turns off the
global bypass when the device lets it (so unattached endpoints are isolated), lends
buffers to the event queue for fault reports, and offers ATTACH / DETACH / MAP / UNMAP /
PROBE as async calls. Several MAPs or UNMAPs can go in one batch with one notification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from virtio_sim.guest.drivers.base import DriverProbeError, GuestDriver, IommuRequestError
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.guest.virtio import GuestVirtqueue
from virtio_sim.layouts import (
    IOMMU_BODIES,
    IOMMU_TAIL_SIZE,
    IommuFault,
    IommuReqHead,
    VirtioIommuConfig,
    build_flat,
    field_offsets,
)
from virtio_sim.ring.chain import DmaBuffer
from virtio_sim.spec import IOMMU_F, IOMMU_S, IOMMU_T, bit

_CFG = field_offsets(VirtioIommuConfig)
EVENT_BUFFERS = 16


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

    # -- requests ----------------------------------------------------------------

    def _request(self, name: str, fields: dict[str, object]) -> bytes:
        # struct codecs: a MAP and an UNMAP per streaming buffer, construct per request cost more
        body = build_flat(IOMMU_BODIES[name], fields)
        return build_flat(IommuReqHead, {"type": getattr(IOMMU_T, name), "reserved": bytes(3)}) + body

    async def _batch(self, what: str, requests: list[bytes]) -> list[int]:
        """Send requests in one batch; returns each tail status."""
        dma = self.dev.dma
        bufs = [dma.alloc(len(r) + IOMMU_TAIL_SIZE) for r in requests]
        try:
            chains = []
            for buf, r in zip(bufs, requests, strict=True):
                dma.write(buf, r + b"\xff" * IOMMU_TAIL_SIZE)
                chains.append(([(buf.dev_addr, len(r))], [(buf.dev_addr + len(r), IOMMU_TAIL_SIZE)]))
            lengths = await self.reqq.submit_many(chains)
            self.requests += len(requests)
            out = []
            for buf, r, n in zip(bufs, requests, lengths, strict=True):
                if n < IOMMU_TAIL_SIZE:
                    raise IommuRequestError(f"{what}: device returned the request unwritten", -1)
                out.append(dma.read(buf, 1, len(r))[0])
            return out
        finally:
            for b in bufs:
                dma.free(b)

    async def _one(self, what: str, name: str, fields: dict[str, object]) -> None:
        (status,) = await self._batch(what, [self._request(name, fields)])
        if status != IOMMU_S.OK:
            raise IommuRequestError(what, status)

    async def attach(self, domain: int, endpoint: int, bypass: bool = False) -> None:
        await self._one(
            f"ATTACH ep {endpoint} to domain {domain}", "ATTACH",
            {"domain": domain, "endpoint": endpoint, "flags": int(bypass), "reserved": bytes(4)},
        )  # fmt: skip

    async def detach(self, domain: int, endpoint: int) -> None:
        await self._one(
            f"DETACH ep {endpoint}", "DETACH", {"domain": domain, "endpoint": endpoint, "reserved": bytes(8)}
        )

    async def map_many(self, domain: int, maps: list[tuple[int, int, int, int]]) -> None:
        """MAP (virt_start, virt_end, phys_start, flags) entries in one batch."""
        if not maps:
            return
        reqs = [
            self._request(
                "MAP", {"domain": domain, "virt_start": v, "virt_end": e, "phys_start": p, "flags": f}
            )
            for v, e, p, f in maps
        ]
        for (v, _, _, _), status in zip(maps, await self._batch("MAP", reqs), strict=True):
            if status != IOMMU_S.OK:
                raise IommuRequestError(f"MAP of IOVA {v:#x}", status)

    async def unmap_many(self, domain: int, ranges: list[tuple[int, int]]) -> None:
        if not ranges:
            return
        reqs = [
            self._request("UNMAP", {"domain": domain, "virt_start": v, "virt_end": e, "reserved": bytes(4)})
            for v, e in ranges
        ]
        for (v, _), status in zip(ranges, await self._batch("UNMAP", reqs), strict=True):
            if status != IOMMU_S.OK:
                raise IommuRequestError(f"UNMAP of IOVA {v:#x}", status)


#: the virtio-iommu's guest half: bound at probe, no workload of its own (guest/kinds.py)
GUEST = GuestHalf(IommuDriver)
