"""virtio-blk over a raw backing file (virtio 1.4 section 5.2).

Requests are validated completely before the backing file is touched: header present,
type known, data a whole number of sectors, range inside the capacity, writable status
byte present, at most ``max_request_bytes`` of data (QEMU's BDRV_REQUEST_MAX_SECTORS,
specs/limits.toml [blk]). A request that fails any check completes with
VIRTIO_BLK_S_IOERR (or UNSUPP for unknown types) and leaves the file as it was, so a
malformed write never leaves a half-written disk. used.len is the number of bytes the
device wrote into the chain: the data read from disk plus the status byte.

Data moves segment by segment, at most ``io_chunk_bytes`` at a time, between guest
memory and the file (os.pread/os.pwrite per step): a request never costs host memory in
proportion to its size. (A guest can make every descriptor of an indirect table point at
one 2 MiB buffer: 1000 MiB of request from 2 MiB of RAM. Gathered whole, that was 1000
MiB of host memory.) Every segment was checked against guest memory when the chain was
popped; a guest-memory error in the middle of a request (possible only when the memory
itself goes away: DMA messages to a guest that stopped answering) leaves the disk partly
written, like a real disk interrupted mid-request, and goes to the error policy.
"""

from __future__ import annotations

import os

from host.devices.base import DeviceModel, DeviceQueue, PropertyError
from virtio_sim.layouts import (
    BLK_REQ_HEADER_SIZE,
    BLK_STATUS_SIZE,
    blk_req_header_codec,
    field_offsets,
    virtio_blk_config,
)
from virtio_sim.ring.chain import Chain, ChainReader, ChainWriter
from virtio_sim.spec import BLK, BLK_F, BLK_S, BLK_T, LIMITS, F, bit

DEFAULT_SERIAL = "virtio-sim-blk"
MAX_REQUEST_BYTES = LIMITS.blk.max_request_bytes
IO_CHUNK = LIMITS.blk.io_chunk_bytes


class BlkDevice(DeviceModel):
    type_key = "blk"
    num_queues = 1
    queue_max_size = 256

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        serial: str = DEFAULT_SERIAL,
        queue_size: int = 256,
        logical_block_size: int = BLK.sector_size,
    ) -> None:
        super().__init__()
        if logical_block_size < BLK.sector_size or logical_block_size & (logical_block_size - 1):
            raise PropertyError(f"logical_block_size {logical_block_size} must be a power of two >= 512")
        try:
            self.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as e:
            raise PropertyError(f"Could not open '{path}': {e.strerror}") from None
        self.path = path
        self.read_only = read_only
        self.serial = serial.encode()[: BLK.id_bytes]
        self.queue_max_size = queue_size
        self.logical_block_size = logical_block_size
        self.size_bytes = os.fstat(self.fd).st_size
        self.requests = 0

    @property
    def capacity(self) -> int:
        return self.size_bytes // BLK.sector_size

    def close(self) -> None:
        os.close(self.fd)

    def device_features(self) -> int:
        f = bit(BLK_F.SEG_MAX) | bit(BLK_F.BLK_SIZE) | bit(BLK_F.FLUSH)
        if self.read_only:
            f |= bit(BLK_F.RO)
        return f

    def config_space(self) -> bytes:
        fields = dict.fromkeys(name for name in (sc.name for sc in virtio_blk_config(self.order).subcons))
        values: dict[str, object] = {k: 0 for k in fields}
        values.update(
            capacity=self.capacity,
            # QEMU's seg_max: the queue size minus the header and status descriptors.
            seg_max=self.queue_max_size - 2,
            blk_size=self.logical_block_size,
            unused1=bytes(3),
            unused2=bytes(3),
        )
        # Like QEMU (virtio_blk_cfg_size_params), the config space ends before the fields
        # of features the device does not offer: discard's come first, and we offer none
        # of discard, write zeroes, secure erase or zoned. Reads past it give all ones.
        full = bytes(virtio_blk_config(self.order).build(values))
        return full[: field_offsets(virtio_blk_config(self.order))["max_discard_sectors"]]

    # -- request handling ---------------------------------------------------

    def process(self, queue: DeviceQueue) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, self._serve(queue, chain))
            done += 1
        return done

    def _serve(self, queue: DeviceQueue, chain: Chain) -> int:
        """Handle one request; returns used.len."""
        self.requests += 1
        writer = ChainWriter(queue.space, chain.writable)
        if writer.remaining < BLK_STATUS_SIZE:
            self.events.note(f"blk: request {chain.head} has no writable status byte; dropped")
            return 0
        reader = ChainReader(queue.space, chain.readable)
        raw = reader.read(BLK_REQ_HEADER_SIZE)
        if len(raw) < BLK_REQ_HEADER_SIZE:
            self.events.note(f"blk: request {chain.head} has a {len(raw)}-byte header")
            return self._status_only(writer, BLK_S.IOERR)
        rtype, _reserved, sector = blk_req_header_codec(self.order).unpack(raw)
        if not self.has_feature(F.VERSION_1):
            rtype &= ~BLK.legacy_barrier_flag  # legacy drivers may OR in the barrier flag
        data_in = writer.remaining - BLK_STATUS_SIZE
        if rtype == BLK_T.IN:
            return self._read(chain, writer, sector, data_in)
        if rtype == BLK_T.OUT:
            return self._write(chain, reader, writer, sector)
        if rtype in (BLK_T.FLUSH, BLK_T.FLUSH_OUT):
            try:
                os.fsync(self.fd)
            except OSError as e:
                return self._io_error(chain, writer, e)
            return self._status_only(writer, BLK_S.OK)
        if rtype == BLK_T.GET_ID:
            if data_in < BLK.id_bytes:
                self.events.note(f"blk: GET_ID buffer of {data_in} bytes is too small")
                return self._status_only(writer, BLK_S.IOERR)
            writer.write(self.serial.ljust(data_in, b"\0"))
            return self._finish(writer, BLK_S.OK)
        self.events.note(f"blk: unsupported request type {rtype}")
        return self._status_only(writer, BLK_S.UNSUPP)

    def _range_ok(self, sector: int, length: int) -> str | None:
        if length > MAX_REQUEST_BYTES:
            # QEMU 7.2 virtio_blk_sect_range_ok: nb_sectors > BDRV_REQUEST_MAX_SECTORS
            return f"data length {length} exceeds the per-request limit {MAX_REQUEST_BYTES}"
        if length % BLK.sector_size:
            return f"data length {length} is not a multiple of {BLK.sector_size}"
        if (sector * BLK.sector_size) % self.logical_block_size or length % self.logical_block_size:
            return "request is not aligned to the logical block size"
        if sector * BLK.sector_size + length > self.capacity * BLK.sector_size:
            return f"sectors {sector}+{length // BLK.sector_size} beyond capacity {self.capacity}"
        return None

    def _read(self, chain: Chain, writer: ChainWriter, sector: int, length: int) -> int:
        problem = self._range_ok(sector, length)
        if problem:
            self.events.note(f"blk: IN request {chain.head}: {problem}")
            return self._status_only(writer, BLK_S.IOERR)
        offset = sector * BLK.sector_size
        try:
            for done in range(0, length, IO_CHUNK):  # one bounded step at a time
                data = os.pread(self.fd, min(IO_CHUNK, length - done), offset + done)
                if not data:
                    break  # the file shrank under us: the rest reads as nothing
                writer.write(data)
        except OSError as e:
            return self._io_error(chain, writer, e)
        return self._finish(writer, BLK_S.OK)

    def _write(self, chain: Chain, reader: ChainReader, writer: ChainWriter, sector: int) -> int:
        if self.read_only:
            self.events.note(f"blk: OUT request {chain.head} on a read-only device")
            return self._status_only(writer, BLK_S.IOERR)
        length = reader.remaining
        problem = self._range_ok(sector, length)
        if problem:
            self.events.note(f"blk: OUT request {chain.head}: {problem}")
            return self._status_only(writer, BLK_S.IOERR)
        offset = sector * BLK.sector_size
        try:
            while data := reader.read(IO_CHUNK):  # segment by segment, bounded steps
                os.pwrite(self.fd, data, offset)
                offset += len(data)
        except OSError as e:
            return self._io_error(chain, writer, e)
        return self._status_only(writer, BLK_S.OK)

    def _io_error(self, chain: Chain, writer: ChainWriter, e: OSError) -> int:
        """The backing file failed (gone, EIO, full): the request fails, the host lives."""
        self.events.note(f"blk: request {chain.head}: backing file error: {e}")
        return self._status_only(writer, BLK_S.IOERR)

    def _status_only(self, writer: ChainWriter, status: int) -> int:
        writer.write_tail(bytes([status]))
        return BLK_STATUS_SIZE

    def _finish(self, writer: ChainWriter, status: int) -> int:
        writer.write_tail(bytes([status]))
        return writer.written + BLK_STATUS_SIZE
