"""virtio-blk guest driver (Linux's virtio_blk.c): header, data, status per request."""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim import layouts
from virtio_sim.guest.drivers.base import BlkIoError, GuestDriver
from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.virtio import GuestVirtqueue
from virtio_sim.layouts import BLK_REQ_HEADER_SIZE, blk_discard_codec, blk_req_header_codec, field_offsets
from virtio_sim.spec import BLK, BLK_F, BLK_S, BLK_T, QEMU_BLK, bit

_CFG = field_offsets(layouts.VirtioBlkConfig)


@dataclass
class BlkGeometry:
    capacity: int  # 512-byte sectors
    blk_size: int
    seg_max: int
    read_only: bool
    #: DISCARD negotiated: the device's max_discard_seg (the block layer's
    #: max_discard_segments); 0 without DISCARD
    max_discard_seg: int = 0
    #: the cache mode: CONFIG_WCE negotiated, the config's writeback byte; else FLUSH
    #: (Linux 6.1 virtblk_get_cache_mode(), read once at probe)
    writeback: bool = False
    #: WRITE_ZEROES negotiated (Linux: blk_queue_max_write_zeroes_sectors)
    write_zeroes: bool = False


class BlkDriver(GuestDriver):
    type_key = "blk"
    # What this driver acks when offered. Linux 6.1's features[] also has SIZE_MAX and MQ;
    # this driver does not bound segments by size_max nor spread over queues, so it does
    # not ack them (no device of the matrix offers either: QEMU 7.2 adds MQ only with
    # num-queues > 1). GEOMETRY, TOPOLOGY, CONFIG_WCE and SECURE_ERASE only describe the
    # device or allow requests this driver never sends; DISCARD and WRITE_ZEROES it uses.
    device_feature_mask = (
        bit(BLK_F.SEG_MAX)
        | bit(BLK_F.BLK_SIZE)
        | bit(BLK_F.FLUSH)
        | bit(BLK_F.RO)
        | bit(BLK_F.GEOMETRY)
        | bit(BLK_F.TOPOLOGY)
        | bit(BLK_F.CONFIG_WCE)
        | bit(BLK_F.DISCARD)
        | bit(BLK_F.WRITE_ZEROES)
        | bit(BLK_F.SECURE_ERASE)
    )
    queue_size = 128

    async def probe(self) -> None:
        d = self.dev
        fields = [(_CFG["capacity"], 8), (_CFG["seg_max"], 4), (_CFG["blk_size"], 4)]
        if d.has(BLK_F.DISCARD):
            fields.append((_CFG["max_discard_seg"], 4))
        if d.has(BLK_F.CONFIG_WCE):
            fields.append((_CFG["writeback"], 1))
        capacity, seg_max, blk_size, *rest = await self.read_config_stable(fields)
        discard = rest[:1] if d.has(BLK_F.DISCARD) else []
        writeback = bool(rest[-1]) if d.has(BLK_F.CONFIG_WCE) else d.has(BLK_F.FLUSH)
        self.geometry = BlkGeometry(
            capacity=capacity,
            blk_size=blk_size if d.has(BLK_F.BLK_SIZE) and blk_size else BLK.sector_size,
            seg_max=seg_max if d.has(BLK_F.SEG_MAX) and seg_max else 1,
            read_only=d.has(BLK_F.RO),
            # Linux: blk_queue_max_discard_segments(q, min(v, MAX_DISCARD_SEGMENTS)); 0 as 1
            max_discard_seg=max(1, discard[0]) if discard else 0,
            writeback=writeback,
            write_zeroes=d.has(BLK_F.WRITE_ZEROES),
        )
        self.vq: GuestVirtqueue = await self.dev.setup_queue(0, self.queue_size)

    def _order(self) -> layouts.ByteOrder:
        return self.dev.transport.guest_order if self.dev.legacy else "little"

    async def _request(
        self, rtype: int, sector: int, out_data: bytes | None, in_len: int, *, whole: bool = False
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
            length = len(out_data) if out_data else in_len
            # a discard's ranges are one buffer (Linux's special_vec), not page segments
            segs = [(data.dev_addr, length)] if whole else self._segments(data.dev_addr, length)
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

    async def discard(self, bios: list[tuple[int, int]]) -> dict[str, int]:
        """One DISCARD request made of ``bios`` (sector, count), contiguous, as the block
        layer merges back-to-back discards (mkfs, fstrim): with max_discard_segments 1 it
        merges them like reads and writes, so the request counts one discard segment
        whatever its number of bios (blk_rq_nr_discard_segments).

        virtio_blk then allocates one range per segment (kmalloc_array) and, before Linux
        5.9 (policy ``per-bio``), writes one range per bio into it: two bios, room for one,
        a write past the array (what af822aa68fbd fixed; "may cause memory corruption in
        virtblk_setup_discard_write_zeroes()"). That write is reported here as the guest
        memory corruption it is (KASAN's slab-out-of-bounds), and the device is sent the
        one range the request's length covers, as Linux sent it.
        """
        merged = self.geometry.max_discard_seg == 1
        segments = 1 if merged else len(bios)
        if self.dev.policy.blk_discard == "single-range" and merged:
            start, total = bios[0][0], sum(n for _, n in bios)
            ranges = [(start, total)]
        else:
            ranges = list(bios)
        if len(ranges) > segments:
            raise CorruptionDetected(
                f"virtio_blk: a DISCARD merged from {len(bios)} bios has room for {segments} range(s) "
                f"(max_discard_seg={self.geometry.max_discard_seg}) but the driver writes {len(ranges)}: "
                f"{(len(ranges) - segments) * QEMU_BLK.discard_segment_size} bytes past its range array "
                "(guest heap corruption; Linux before 5.9, fixed by af822aa68fbd)"
            )
        codec = blk_discard_codec("little")  # Linux: cpu_to_le32/64 on every interface
        payload = b"".join(codec.pack(sector, count, 0) for sector, count in ranges)
        status, _, _ = await self._request(BLK_T.DISCARD, 0, payload, 0, whole=True)
        if status != BLK_S.OK:
            raise BlkIoError("discard", status)
        return {"bios": len(bios), "ranges_sent": len(ranges), "sectors_sent": sum(n for _, n in ranges)}

    async def write_zeroes(self, sector: int, count: int) -> None:
        """blkdev_issue_zeroout() as Linux 6.1 sends it: one REQ_OP_WRITE_ZEROES request,
        one range (virtblk_setup_discard_write_zeroes_erase() with max_discard_segments 1
        or a single bio), flags UNMAP unless REQ_NOUNMAP (virtblk_setup_cmd(): the default
        zeroout may deallocate)."""
        codec = blk_discard_codec("little")
        payload = codec.pack(sector, count, QEMU_BLK.write_zeroes_flag_unmap)
        status, _, _ = await self._request(BLK_T.WRITE_ZEROES, 0, payload, 0, whole=True)
        if status != BLK_S.OK:
            raise BlkIoError("write_zeroes", status)

    async def get_id(self) -> bytes:
        status, data, _ = await self._request(BLK_T.GET_ID, 0, None, BLK.id_bytes)
        if status != BLK_S.OK:
            raise BlkIoError("get_id", status)
        # A C string: the serial ends at the first NUL, and the device need not write the
        # rest of the buffer (QEMU writes strlen + 1 bytes), as Linux's serial_show knows.
        return data.split(b"\0", 1)[0]
