"""virtio-blk request framing (virtio 1.4 section 5.2.6): the driver's side of a request.

A request is a 16-byte header (type, reserved, sector) the device reads, the data, and a
status byte the device writes last (5.2.6). What a device can judge of it: the framing
itself (blk.req.format), data in whole sectors within the capacity, FLUSH and GET_ID at
sector 0, GET_ID's 20 bytes, discard/write-zeroes/secure-erase segments (16 bytes each,
no UNMAP flag on a discard, at most the config's max_*_seg), and on the legacy interface
the header in the guest's byte order and, without ANY_LAYOUT, the header and the status
byte in descriptors of their own (5.2.6.4). The writeback field of the config is read only
after FEATURES_OK (5.2.5.1: it exists only once CONFIG_WCE is negotiated).
"""

from __future__ import annotations

from virtio_sim import layouts
from virtio_sim.devices.framing import Framing, Request
from virtio_sim.layouts import ByteOrder
from virtio_sim.spec import BLK, BLK_F, BLK_T, STATUS, F, status_names

HEADER = layouts.blk_req_header_codec("little").size
DISCARD_SEGMENT = 16  # struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags
DISCARD_UNMAP = 1  # flags bit 0
CONFIG_OFFSETS = layouts.field_offsets(layouts.virtio_blk_config("little"))
WRITEBACK = CONFIG_OFFSETS["writeback"]
#: request type -> (config field of its segment limit, the feature that gives it, rule)
SEGMENT_LIMITS = {
    BLK_T.DISCARD: ("max_discard_seg", BLK_F.DISCARD, "blk.drv.discard-max-seg"),
    BLK_T.WRITE_ZEROES: ("max_write_zeroes_seg", BLK_F.WRITE_ZEROES, "blk.drv.write-zeroes-max-seg"),
    BLK_T.SECURE_ERASE: ("max_secure_erase_seg", BLK_F.SECURE_ERASE, "blk.drv.secure-erase-max-seg"),
}
LEGACY_TYPES = {BLK_T.IN, BLK_T.OUT, BLK_T.FLUSH, BLK_T.FLUSH_OUT, BLK_T.GET_ID}


def _config_fields() -> list[tuple[int, int]]:
    decl = layouts.virtio_blk_config("little")
    widths = layouts.field_widths(decl)
    return [(off, widths[name]) for name, off in layouts.field_offsets(decl).items()]


class BlkFraming(Framing):
    """The virtio-blk request rules (see the module docstring)."""

    CONDITIONS = {
        "blk.legacy.req-native-endian-drv": "!VERSION_1",
        "blk.legacy.drv-framing": "!VERSION_1",
        "blk.drv.discard-max-seg": "BLK_DISCARD",
        "blk.drv.write-zeroes-max-seg": "BLK_WRITE_ZEROES",
        "blk.drv.secure-erase-max-seg": "BLK_SECURE_ERASE",
    }
    FEATURE_PREFIX = "BLK"
    FEATURE_BITS = BLK_F
    CONFIG_FIELDS = _config_fields()

    def on_chain(self, request: Request) -> None:
        judge, where = self.judge, request.where
        readable, writable = request.readable(), request.writable()
        header = request.gather()[:HEADER]
        ok = len(header) == HEADER and bool(writable) and writable[-1][1] >= 1
        if not judge.check(
            "blk.req.format", ok, f"{where}: blk request without a 16-byte header and a status byte"
        ):
            return
        order = request.order if judge.legacy else "little"
        rtype, _reserved, sector = layouts.blk_req_header_codec(order).unpack(header)
        if judge.legacy:
            self._legacy(request, header, readable, writable)
        data_in = sum(n for _, n in writable) - 1
        data_out = sum(n for _, n in readable) - HEADER
        if rtype in (BLK_T.IN, BLK_T.OUT):
            data = data_in if rtype == BLK_T.IN else data_out
            judge.check("blk.drv.rw-multiple-512", data % BLK.sector_size == 0, f"{where}: {data} data bytes")
            capacity = self._capacity()
            if capacity is not None:
                end = sector + -(-data // BLK.sector_size)
                judge.check(
                    "blk.drv.within-capacity",
                    end <= capacity,
                    f"{where}: request up to sector {end} on a {capacity}-sector disk",
                )
        elif rtype in (BLK_T.FLUSH, BLK_T.FLUSH_OUT):
            judge.check("blk.drv.flush-sector-zero", sector == 0, f"{where}: FLUSH with sector {sector}")
        elif rtype in SEGMENT_LIMITS:
            self._segments(request, rtype)
        elif rtype == BLK_T.GET_ID:
            judge.check("blk.drv.get-id-20", data_in == BLK.id_bytes, f"{where}: GET_ID with {data_in} bytes")
            judge.check("blk.req.sector-zero-non-rw", sector == 0, f"{where}: GET_ID with sector {sector}")

    def _legacy(
        self,
        request: Request,
        header: bytes,
        readable: list[tuple[int, int]],
        writable: list[tuple[int, int]],
    ) -> None:
        """Legacy interface: the header in the guest's byte order and, without ANY_LAYOUT,
        the header and the status byte in descriptors of their own."""
        judge, where = self.judge, request.where
        other: ByteOrder = "big" if request.order == "little" else "little"
        native = layouts.blk_req_header_codec(request.order).unpack(header)[0]
        swapped = layouts.blk_req_header_codec(other).unpack(header)[0]
        ok = native in LEGACY_TYPES or swapped not in LEGACY_TYPES
        why = f"{where}: request type {native:#x} in the guest's order, {swapped:#x} byte-swapped"
        judge.check("blk.legacy.req-native-endian-drv", ok, why)
        judge.check("split.legacy.drv-native-endian", ok, why)
        if not judge.has(F.ANY_LAYOUT):
            framed = readable[0][1] == HEADER and writable[-1][1] == 1
            judge.check(
                "blk.legacy.drv-framing",
                framed,
                f"{where}: without ANY_LAYOUT the header ({readable[0][1]} bytes) and the status"
                f" ({writable[-1][1]} bytes) need descriptors of their own",
            )

    def _segments(self, request: Request, rtype: int) -> None:
        """DISCARD, WRITE_ZEROES, SECURE_ERASE: whole 16-byte segments, within the limit."""
        judge, where = self.judge, request.where
        data = request.gather()[HEADER:]
        judge.check(
            "blk.drv.segments-whole",
            len(data) % DISCARD_SEGMENT == 0,
            f"{where}: {len(data)} bytes of segments",
        )
        count = len(data) // DISCARD_SEGMENT
        if rtype == BLK_T.DISCARD:
            flags = [
                int.from_bytes(data[i * DISCARD_SEGMENT + 12 : (i + 1) * DISCARD_SEGMENT], "little")
                for i in range(count)
            ]
            judge.check(
                "blk.drv.discard-unmap-zero",
                not any(f & DISCARD_UNMAP for f in flags),
                f"{where}: DISCARD segment flags {flags}",
            )
        field_name, feature, rule = SEGMENT_LIMITS[rtype]
        cfg = judge.config("little") or b""
        # the device's config space ends where its last offered feature's fields end (QEMU
        # 7.2 sizes it by feature): the limit needs only its own field to be there
        at = CONFIG_OFFSETS[field_name]
        if judge.has(feature) and len(cfg) >= at + 4:
            limit = int.from_bytes(cfg[at : at + 4], "little")
            judge.check(rule, count <= limit, f"{where}: {count} segments, {field_name} {limit}")

    def _capacity(self) -> int | None:
        raw = self.judge.config(self.judge.config_order())
        if raw is None:
            return None
        return int.from_bytes(raw[:8], self.judge.config_order()) if len(raw) >= 8 else None

    def on_config_read(self, offset: int, size: int, status: int) -> None:
        if offset <= WRITEBACK < offset + size and not self.judge.legacy_transport:
            self.judge.check(
                "blk.drv.writeback-after-features-ok",
                bool(status & STATUS.FEATURES_OK),
                f"writeback read before FEATURES_OK ({status_names(status)})",
            )
