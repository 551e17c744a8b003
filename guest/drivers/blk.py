"""virtio-blk guest driver (Linux's virtio_blk.c): header, data, status per request."""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim import layouts
from virtio_sim.guest.drivers.base import GuestDriver
from virtio_sim.guest.virtio import GuestVirtqueue
from virtio_sim.layouts import BLK_REQ_HEADER_SIZE, blk_req_header_codec, field_offsets
from virtio_sim.spec import BLK, BLK_F, BLK_S, BLK_T, bit

_CFG = field_offsets(layouts.VirtioBlkConfig)


class BlkIoError(Exception):
    def __init__(self, op: str, status: int) -> None:
        super().__init__(f"{op} completed with status {status}")
        self.status = status


@dataclass
class BlkGeometry:
    capacity: int  # 512-byte sectors
    blk_size: int
    seg_max: int
    read_only: bool


class BlkDriver(GuestDriver):
    type_key = "blk"
    device_feature_mask = bit(BLK_F.SEG_MAX) | bit(BLK_F.BLK_SIZE) | bit(BLK_F.FLUSH) | bit(BLK_F.RO)
    queue_size = 128

    async def probe(self) -> None:
        d = self.dev
        capacity, seg_max, blk_size = await self.read_config_stable(
            [(_CFG["capacity"], 8), (_CFG["seg_max"], 4), (_CFG["blk_size"], 4)]
        )
        self.geometry = BlkGeometry(
            capacity=capacity,
            blk_size=blk_size if d.has(BLK_F.BLK_SIZE) and blk_size else BLK.sector_size,
            seg_max=seg_max if d.has(BLK_F.SEG_MAX) and seg_max else 1,
            read_only=d.has(BLK_F.RO),
        )
        self.vq: GuestVirtqueue = await self.dev.setup_queue(0, self.queue_size)

    def _order(self) -> layouts.ByteOrder:
        return self.dev.transport.guest_order if self.dev.legacy else "little"

    async def _request(
        self, rtype: int, sector: int, out_data: bytes | None, in_len: int
    ) -> tuple[int, bytes, int]:
        """One request; returns (status, data read, used.len)."""
        dma = self.dev.dma
        hdr = dma.alloc(BLK_REQ_HEADER_SIZE)
        data = dma.alloc(max(len(out_data or b""), in_len, 1))
        status = dma.alloc(1)
        try:
            dma.write(hdr, blk_req_header_codec(self._order()).pack(rtype, 0, sector))
            dma.write(status, b"\xff")  # not a valid status: proves the device wrote it
            out = [(hdr.dev_addr, BLK_REQ_HEADER_SIZE)]
            in_: list[tuple[int, int]] = []
            segs = self._segments(data.dev_addr, len(out_data) if out_data else in_len)
            if out_data:
                dma.write(data, out_data)
                out += segs
            else:
                in_ += segs
            in_.append((status.dev_addr, 1))
            used = await self.vq.submit(out, in_)
            got = dma.read(data, in_len) if in_len else b""
            return dma.read(status, 1)[0], got, used
        finally:
            for b in (hdr, data, status):
                dma.free(b)

    def _segments(self, addr: int, length: int) -> list[tuple[int, int]]:
        """Split a data buffer into page-sized segments within seg_max, like a bio would."""
        if length == 0:
            return []
        page = 4096
        n = max(1, min(self.geometry.seg_max, (length + page - 1) // page))
        step = (length + n - 1) // n
        step = (step + BLK.sector_size - 1) // BLK.sector_size * BLK.sector_size
        return [(addr + off, min(step, length - off)) for off in range(0, length, step)]

    async def read(self, sector: int, count: int) -> bytes:
        status, data, used = await self._request(BLK_T.IN, sector, None, count * BLK.sector_size)
        if status != BLK_S.OK:
            raise BlkIoError("read", status)
        self.last_used_len = used
        return data

    async def write(self, sector: int, data: bytes) -> None:
        status, _, used = await self._request(BLK_T.OUT, sector, data, 0)
        self.last_used_len = used
        if status != BLK_S.OK:
            raise BlkIoError("write", status)

    async def flush(self) -> None:
        status, _, _ = await self._request(BLK_T.FLUSH, 0, None, 0)
        if status != BLK_S.OK:
            raise BlkIoError("flush", status)

    async def get_id(self) -> bytes:
        status, data, _ = await self._request(BLK_T.GET_ID, 0, None, BLK.id_bytes)
        if status != BLK_S.OK:
            raise BlkIoError("get_id", status)
        # A C string: the serial ends at the first NUL, and the device need not write the
        # rest of the buffer (QEMU writes strlen + 1 bytes), as Linux's serial_show knows.
        return data.split(b"\0", 1)[0]
