"""virtio-blk over a raw backing file (virtio 1.4 section 5.2).

What it offers and shows in its config space is QEMU's virtio-blk (hw/block/virtio-blk.c
virtio_blk_get_features / virtio_blk_update_config), property by property, so that a
device generation is the set of property values that QEMU version's machine type had:
``scsi`` (legacy SCSI passthrough; hw_compat_2_4 turned it on), ``config-wce``,
``discard`` and ``write-zeroes`` (QEMU 4.0; hw_compat_3_1 off), ``queue-size`` and
``seg-max-adjust`` (QEMU 5.0; hw_compat_4_2: 128 and off). GEOMETRY, TOPOLOGY, SEG_MAX
and BLK_SIZE are always offered; FLUSH while the write cache is on (QEMU's default
cache=writeback). A device without VERSION_1 (legacy-only) offers SCSI and withdraws
ANY_LAYOUT, whatever the ``scsi`` property says, as QEMU does; with ``scsi=on`` a device
with a modern interface cannot be created at all.

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
from functools import cache
from typing import Any

from virtio_sim.host.devices.base import DeviceModel, DeviceQueue, PropertyError
from virtio_sim.layouts import (
    BLK_REQ_HEADER_SIZE,
    BLK_STATUS_SIZE,
    ByteOrder,
    blk_discard_codec,
    blk_req_header_codec,
    build_flat,
    field_offsets,
    virtio_blk_config,
)
from virtio_sim.ring.chain import Chain, ChainReader, ChainWriter
from virtio_sim.spec import BLK, BLK_F, BLK_S, BLK_T, LIMITS, QEMU_BLK, F, bit

#: QEMU's config size by the last feature that extends it (virtio_blk_cfg_size_params)
_CONFIG_END = (
    (BLK_F.DISCARD, "discard_sector_alignment"),
    (BLK_F.WRITE_ZEROES, "write_zeroes_may_unmap"),
)


def guess_cylinders(sectors: int) -> int:
    """QEMU's geometry guess for a disk without a partition table."""
    per_cylinder = QEMU_BLK.geometry_heads * QEMU_BLK.geometry_sectors
    return max(QEMU_BLK.geometry_min_cylinders, min(QEMU_BLK.geometry_max_cylinders, sectors // per_cylinder))


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
        scsi: bool = False,
        config_wce: bool = True,
        discard: bool = True,
        write_zeroes: bool = True,
        seg_max_adjust: bool = True,
        num_queues: int = 1,
    ) -> None:
        super().__init__()
        if num_queues != 1:
            raise PropertyError(f"num-queues {num_queues}: this model has one request queue")
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
        self.scsi = scsi
        self.config_wce = config_wce
        self.discard = discard
        self.write_zeroes = write_zeroes
        self.seg_max_adjust = seg_max_adjust
        self.config_num_queues = num_queues
        #: the write cache (QEMU: blk_enable_write_cache): on, as with cache=writeback;
        #: a driver may switch it through the config space's writeback byte (CONFIG_WCE)
        self.write_cache = True
        #: set by the transport at plug time: does the device offer VERSION_1?
        self.version_1 = True
        self.cylinders = guess_cylinders(self.capacity)

    @property
    def capacity(self) -> int:
        return self.size_bytes // BLK.sector_size

    def close(self) -> None:
        os.close(self.fd)

    def resize(self, size_bytes: int) -> None:
        """The backing image changed size (QEMU's ``block_resize``: virtio_blk_resize ->
        virtio_notify_config, hw/block/virtio-blk.c): capacity follows and the driver is
        told of the config change. A public hook for tests and conformance runs, which
        need a device-side config change to decide the config-generation rules."""
        os.ftruncate(self.fd, size_bytes)
        self.size_bytes = size_bytes
        if self.hooks is not None:
            self.hooks.config_changed()

    def plugged(self, version_1: bool) -> None:
        """QEMU's virtio_blk_get_features at plug time: SCSI and virtio 1.0 exclude each other."""
        if version_1 and self.scsi:
            raise PropertyError("Please set scsi=off for virtio-blk devices in order to use virtio 1.0")
        self.version_1 = version_1

    def device_features(self) -> int:
        f = bit(BLK_F.SEG_MAX) | bit(BLK_F.GEOMETRY) | bit(BLK_F.TOPOLOGY) | bit(BLK_F.BLK_SIZE)
        for on, feature in (
            (self.scsi or not self.version_1, BLK_F.SCSI),
            (self.write_cache, BLK_F.FLUSH),
            (self.config_wce, BLK_F.CONFIG_WCE),
            (self.discard, BLK_F.DISCARD),
            (self.write_zeroes, BLK_F.WRITE_ZEROES),
            (self.read_only, BLK_F.RO),
        ):
            if on:
                f |= bit(feature)
        return f

    def withdrawn_transport_features(self) -> int:
        """A legacy-only virtio-blk withdraws ANY_LAYOUT (QEMU: its SCSI requests assume
        the header layout)."""
        return 0 if self.version_1 else bit(F.ANY_LAYOUT)

    def config_space(self) -> bytes:
        decl = virtio_blk_config(self.order)
        values: dict[str, object] = {sc.name: 0 for sc in decl.subcons}
        # seg_max: the queue size minus the header and status descriptors; before QEMU
        # 5.0 (seg-max-adjust=off) a constant 126 whatever the queue size.
        seg_max = self.queue_max_size - 2 if self.seg_max_adjust else QEMU_BLK.fixed_seg_max
        values.update(
            capacity=self.capacity,
            seg_max=seg_max,
            cylinders=self.cylinders,
            heads=QEMU_BLK.geometry_heads,
            sectors=QEMU_BLK.geometry_sectors,
            blk_size=self.logical_block_size,
            # topology: physical block = logical block, no alignment offset or I/O hints
            writeback=int(self.write_cache),
            num_queues=self.config_num_queues,
            max_discard_sectors=QEMU_BLK.max_discard_sectors,
            max_discard_seg=QEMU_BLK.max_discard_seg,
            discard_sector_alignment=self.logical_block_size // BLK.sector_size,
            max_write_zeroes_sectors=QEMU_BLK.max_write_zeroes_sectors,
            max_write_zeroes_seg=QEMU_BLK.max_write_zeroes_seg,
            write_zeroes_may_unmap=QEMU_BLK.write_zeroes_may_unmap,
            unused1=bytes(3),
            unused2=bytes(3),
        )
        # Like QEMU (virtio_blk_cfg_size_params), the config space ends before the fields
        # of features the device does not offer. Reads past it give all ones.
        full = build_flat(decl, values)  # built on every config read: a struct codec
        ends = _config_ends(decl)
        end = ends["discard_start"]
        offered = self.device_features()
        for feature, last in _CONFIG_END:
            if offered >> feature & 1:
                end = max(end, ends[last])
        return full[:end]

    def config_write(self, offset: int, data: bytes) -> None:
        """The writeback byte switches the write cache once CONFIG_WCE is negotiated
        (QEMU's virtio_blk_set_config); every other field is read-only."""
        offsets = field_offsets(virtio_blk_config(self.order))
        if offset == offsets["writeback"] and len(data) == 1 and self.has_feature(BLK_F.CONFIG_WCE):
            self.write_cache = bool(data[0])
            self.events.note(f"blk: write cache {'on' if self.write_cache else 'off'} (config writeback)")
            return
        super().config_write(offset, data)

    def validate_features(self, acked: int) -> str | None:
        """FEATURES_OK: the cache mode follows the negotiated features from here on."""
        self._set_cache_mode(acked)
        return None

    def activate(self, features: int, order: ByteOrder) -> None:
        super().activate(features, order)
        self._set_cache_mode(features)  # legacy drivers have no FEATURES_OK

    def _set_cache_mode(self, features: int) -> None:
        """Without FLUSH the device writes through and writeback reads 0 (virtio 1.4
        5.2.5.2, "MUST initialize writeback to 0 if VIRTIO_BLK_F_FLUSH was not
        negotiated"). QEMU's virtio_blk_set_features does this only when CONFIG_WCE is not
        acked either (with it acked the cache stays on: a known failure of QEMU 7.2 in
        docs/qemu-deviations.md); ours follows the spec."""
        if not features >> BLK_F.FLUSH & 1:
            self.write_cache = False

    def reset(self) -> None:
        super().reset()
        self.write_cache = True  # QEMU: the -drive's cache mode (writeback) again

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
        if rtype in (BLK_T.DISCARD, BLK_T.WRITE_ZEROES):
            return self._discard_write_zeroes(chain, reader, writer, rtype == BLK_T.WRITE_ZEROES)
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
            if not self.write_cache:
                os.fsync(self.fd)  # writethrough: each write reaches the disk
        except OSError as e:
            return self._io_error(chain, writer, e)
        return self._status_only(writer, BLK_S.OK)

    def _discard_write_zeroes(
        self, chain: Chain, reader: ChainReader, writer: ChainWriter, zeroes: bool
    ) -> int:
        """QEMU's virtio_blk_handle_discard_write_zeroes: one segment is read; a range past
        the limit or the capacity is IOERR, unknown flags UNSUPP; a device that does not
        offer the feature answers UNSUPP. Discarded sectors read as zeroes here (QEMU's
        raw files punch holes, which read as zeroes too)."""
        what = "WRITE_ZEROES" if zeroes else "DISCARD"
        if not (self.write_zeroes if zeroes else self.discard):
            self.events.note(f"blk: {what} request {chain.head} but the feature is not offered")
            return self._status_only(writer, BLK_S.UNSUPP)
        if self.read_only:
            self.events.note(f"blk: {what} request {chain.head} on a read-only device")
            return self._status_only(writer, BLK_S.IOERR)
        raw = reader.read(QEMU_BLK.discard_segment_size)
        if len(raw) != QEMU_BLK.discard_segment_size:
            self.events.note(f"blk: {what} request {chain.head}: segment too short ({len(raw)} bytes)")
            return self._status_only(writer, BLK_S.IOERR)
        # little-endian on every interface (virtio 1.4 5.2.6: le64/le32 fields; QEMU's
        # le64_to_cpu, Linux's cpu_to_le64), also for a legacy big-endian guest
        sector, count, flags = blk_discard_codec("little").unpack(raw)
        limit = QEMU_BLK.max_write_zeroes_sectors if zeroes else QEMU_BLK.max_discard_sectors
        allowed_flags = QEMU_BLK.write_zeroes_flag_unmap if zeroes else 0
        if count > limit:
            self.events.note(f"blk: {what} request {chain.head}: {count} sectors beyond the limit {limit}")
            return self._status_only(writer, BLK_S.IOERR)
        problem = self._range_ok(sector, count * BLK.sector_size)
        if problem:
            self.events.note(f"blk: {what} request {chain.head}: {problem}")
            return self._status_only(writer, BLK_S.IOERR)
        if flags & ~allowed_flags:
            self.events.note(f"blk: {what} request {chain.head}: flags {flags:#x} not supported")
            return self._status_only(writer, BLK_S.UNSUPP)
        try:
            # up to 2 GiB of zeroes (BDRV_REQUEST_MAX_SECTORS): one bounded buffer, reused
            offset, left = sector * BLK.sector_size, count * BLK.sector_size
            zero_chunk = bytes(min(IO_CHUNK, left))
            while left:
                step = min(len(zero_chunk), left)
                os.pwrite(self.fd, zero_chunk[:step], offset)
                offset, left = offset + step, left - step
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


@cache
def _config_ends(decl: Any) -> dict[str, int]:
    """Where the config space ends: before max_discard_sectors without DISCARD
    ("discard_start"), after a feature's last field with it (computed once per layout)."""
    offsets = field_offsets(decl)
    ends = {last: offsets[last] + _field_size(decl, last) for _, last in _CONFIG_END}
    ends["discard_start"] = offsets["max_discard_sectors"]
    return ends


def _field_size(decl: Any, name: str) -> int:
    return int(next(sc.sizeof() for sc in decl.subcons if sc.name == name))
