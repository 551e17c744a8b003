"""Device-type checkers: virtio-blk requests and config, virtio-rng, and the queue
layouts and basics of virtio-console and virtio-net."""

from __future__ import annotations

import contextlib
import os

from virtio_sim.layouts import field_offsets, virtio_blk_config
from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    Request,
    blk_header,
    bring_up,
    buffer,
    checker,
    kick,
    negotiate,
    submit,
    wait_used,
)
from virtio_sim.orchestration.conformance.durability import StraceSyncWatch, SyncWatch, completion_probe
from virtio_sim.orchestration.conformance.rawring import RawPackedRing
from virtio_sim.spec import BLK, BLK_F, BLK_S, BLK_T, FEATURES, STATUS, bit

BLK_IDS = (
    "blk.req.status-codes",
    "blk.req.get-id-format",
    "blk.dev.offer-flush",
    "blk.dev.flush-with-config-wce",
    "blk.dev.writeback-zero-without-flush",
    "blk.dev.padding-zero",
    "blk.dev.ro-write-ioerr",
    "blk.dev.stable-writes-persisted",
    "blk.dev.zone-cmds-without-zoned",
    "blk.dev.unknown-flags-unsupp",
    "blk.dev.discard-unmap-unsupp",
    "blk.dev.write-zeroes-reads-zero",
    "blk.dev.lifetime-no-offer",
    "blk.legacy.dev-cache-mode-status",
    "blk.legacy.dev-cache-mode-features",
)
LIFETIME = FEATURES.get("VIRTIO_BLK_F_LIFETIME").bit
DISCARD_F_UNMAP = 1  # virtio_blk_discard_write_zeroes.flags bit 0
UNKNOWN_SEGMENT_FLAG = 0x80
_CFG = field_offsets(virtio_blk_config())
SECTOR = BLK.sector_size
ZONE_REQUEST_TYPES = (15, 16, 18, 20, 22, 24, 26)  # ZONE_APPEND/REPORT/OPEN/CLOSE/FINISH/RESET/RESET_ALL
UNKNOWN_TYPE = 0x7F
PATTERN = bytes(range(256)) * 2


async def blk_request(
    ctx: Ctx, rtype: int, sector: int = 0, *, data_out: bytes = b"", data_in: int = 0, status_fill: int = 0xEE
) -> tuple[int | None, int, bytes]:
    """One request; returns (status byte or None if not completed, used len, data read)."""
    segs = [buffer(ctx, blk_header(ctx, rtype, sector), write=False)]
    if data_out:
        segs.append(buffer(ctx, data_out, write=False))
    din = buffer(ctx, data_in, write=True) if data_in else None
    if din:
        segs.append(din)
    st = buffer(ctx, 1, write=True, fill=status_fill)
    segs.append(st)
    req = submit(ctx, Request(0, segs, None))
    await kick(ctx, 0)
    used = await wait_used(ctx, 0, 1)
    if not used or used[0].id != req.head:
        return None, 0, b""
    status = ctx.dut.memory.read(st.addr, 1)[0]
    data = ctx.dut.memory.read(din.addr, din.length) if din else b""
    return status, used[0].length, data


def _backing_file(ctx: Ctx) -> str | None:
    """The drive file of our device model under test (in this process), if it has one."""
    setup = ctx.dut.setup
    if ctx.dut.backend == "host" and setup is not None and setup.built:
        path = getattr(setup.built[0].model, "path", None)
        return None if path is None else str(path)
    return None


def _sync_watch(
    ctx: Ctx, backing: str | None
) -> contextlib.AbstractContextManager[SyncWatch | StraceSyncWatch | None]:
    """Watch the device's sync calls on its backing file during one request."""
    if ctx.dut.backend == "qemu" and ctx.dut.disk is not None and ctx.dut.pid is not None:
        return StraceSyncWatch(ctx.dut.pid, ctx.dut.disk)
    if backing is None:
        return contextlib.nullcontext()
    return SyncWatch(backing, completion_probe(ctx.rings[0]))


def _check_stable_writes(
    ctx: Ctx,
    backing: str,
    sector: int,
    write_sync: SyncWatch | StraceSyncWatch,
    flush_sync: SyncWatch | StraceSyncWatch,
    flush_status: int | None,
) -> None:
    """Decided from the sync evidence (durability.py), not from reading the page cache:
    with FLUSH negotiated (write-back) the FLUSH must commit before it completes; without
    it (write-through) every write must commit before it completes."""
    with open(backing, "rb") as f:
        f.seek(sector * SECTOR)
        on_disk = f.read(len(PATTERN))
    if on_disk != PATTERN:
        ctx.log.failed("blk.dev.stable-writes-persisted", "a completed write is not in the backing file")
    elif ctx.features >> BLK_F.FLUSH & 1:
        ctx.log.check(
            "blk.dev.stable-writes-persisted",
            flush_status == BLK_S.OK and flush_sync.committed_before_completion(),
            f"FLUSH completed with status {flush_status}: {flush_sync.describe()}",
        )
    else:
        ctx.log.check(
            "blk.dev.stable-writes-persisted",
            write_sync.committed_before_completion(),
            f"write completed without FLUSH negotiated (write-through): {write_sync.describe()}",
        )


@checker("blk_requests", BLK_IDS, keys=("blk",))
async def blk_requests(ctx: Ctx) -> None:
    """Read, write (and read back, and in the backing file), flush, GET_ID, requests past
    the capacity, unknown and zone request types; config padding and cache rules."""
    await bring_up(ctx, (0,))
    capacity = await ctx.t.ops.read_config(_CFG["capacity"], 8)
    problems: list[str] = []
    sector = max(0, capacity - 2)
    read_only = bool(ctx.offered >> BLK_F.RO & 1)
    backing = _backing_file(ctx)
    write_sync = None
    if not read_only:
        with _sync_watch(ctx, backing) as write_sync:
            status, wlen, _ = await blk_request(ctx, BLK_T.OUT, sector, data_out=PATTERN)
        if status != BLK_S.OK:
            problems.append(f"write: status {status}")
        status, rlen, data = await blk_request(ctx, BLK_T.IN, sector, data_in=len(PATTERN))
        if status != BLK_S.OK or data != PATTERN:
            problems.append(f"read back: status {status}, data matches {data == PATTERN}")
        lens = (wlen, rlen)
        expected = (1, len(PATTERN) + 1)  # status byte; data + status byte
        rid = (
            "packed.used.write-flag-and-len"
            if isinstance(ctx.rings[0], RawPackedRing)
            else "split.used.len-bytes-written"
        )
        ctx.log.check(rid, lens == expected, f"blk write/read used len {lens}, bytes written {expected}")
    flush_offered = bool(ctx.offered >> BLK_F.FLUSH & 1)
    with _sync_watch(ctx, backing) as flush_sync:
        status, _, _ = await blk_request(ctx, BLK_T.FLUSH)
    flush_status = status
    if flush_offered and status != BLK_S.OK:
        problems.append(f"flush: status {status}")
    status, _, _ = await blk_request(ctx, BLK_T.IN, capacity, data_in=SECTOR)
    if status != BLK_S.IOERR:
        problems.append(f"read past capacity {capacity}: status {status}")
    status, _, _ = await blk_request(ctx, UNKNOWN_TYPE)
    if status != BLK_S.UNSUPP:
        problems.append(f"unknown type {UNKNOWN_TYPE}: status {status}")
    ctx.log.check("blk.req.status-codes", not problems, "; ".join(problems))
    status, _, ident = await blk_request(ctx, BLK_T.GET_ID, data_in=BLK.id_bytes)
    text = ident.split(b"\0", 1)[0]
    padded = ident[len(text) :]
    ok = status == BLK_S.OK and text.isascii() and all(b == 0 for b in padded)
    ctx.log.check("blk.req.get-id-format", ok, f"GET_ID status {status}, id {ident!r}")
    zone = []
    for zt in ZONE_REQUEST_TYPES:
        status, _, _ = await blk_request(ctx, zt)
        if status != BLK_S.UNSUPP:
            zone.append((zt, status))
    ctx.log.check("blk.dev.zone-cmds-without-zoned", not zone, f"zone requests without ZONED: {zone}")
    ctx.log.check("blk.dev.offer-flush", flush_offered, "VIRTIO_BLK_F_FLUSH not offered")
    wce = bool(ctx.offered >> BLK_F.CONFIG_WCE & 1)
    ctx.log.check(
        "blk.dev.flush-with-config-wce", not wce or flush_offered, "CONFIG_WCE offered without FLUSH"
    )
    # unused0 always exists; unused1 only in configs that reach past it (secure erase),
    # which no device here offers, and reading past the config size reads all ones
    pads = [await ctx.t.ops.read_config(_CFG["unused0"], 1)]
    ctx.log.check("blk.dev.padding-zero", all(p == 0 for p in pads), f"unused0/unused1 read {pads}")
    if read_only:
        pass  # nothing was written
    elif isinstance(flush_sync, StraceSyncWatch) and not flush_sync.available:
        ctx.log.not_applicable(
            "blk.dev.stable-writes-persisted",
            "QEMU's sync calls cannot be watched (strace missing or no ptrace)",
        )
    elif write_sync is not None and flush_sync is not None:
        _check_stable_writes(ctx, backing or ctx.dut.disk or "", sector, write_sync, flush_sync, flush_status)
    else:
        ctx.log.not_applicable("blk.dev.stable-writes-persisted", "backing store not visible")
    if ctx.offered >> BLK_F.RO & 1:
        before = await blk_request(ctx, BLK_T.IN, 0, data_in=SECTOR)
        status, _, _ = await blk_request(ctx, BLK_T.OUT, 0, data_out=bytes(SECTOR))
        after = await blk_request(ctx, BLK_T.IN, 0, data_in=SECTOR)
        ctx.log.check(
            "blk.dev.ro-write-ioerr",
            status == BLK_S.IOERR and before[2] == after[2],
            f"write to a read-only device: status {status}",
        )
    else:
        ctx.log.not_applicable("blk.dev.ro-write-ioerr", "VIRTIO_BLK_F_RO not offered")
    await _discard_write_zeroes(ctx, capacity, read_only)
    ctx.log.check(
        "blk.dev.lifetime-no-offer",
        not ctx.offered >> LIFETIME & 1,
        "offers VIRTIO_BLK_F_LIFETIME (a model without lifetime metrics)",
    )
    await _legacy_cache_mode(ctx)
    # CONFIG_WCE without FLUSH: writeback must start at 0 (writethrough).
    if wce and not ctx.legacy:
        accept = (ctx.features | bit(BLK_F.CONFIG_WCE)) & ~bit(BLK_F.FLUSH)
        if await negotiate(ctx, accept, check=False):
            wb = await ctx.t.ops.read_config(_CFG["writeback"], 1)
            ctx.log.check("blk.dev.writeback-zero-without-flush", wb == 0, f"writeback reads {wb}")
        else:
            ctx.log.not_applicable("blk.dev.writeback-zero-without-flush", "CONFIG_WCE without FLUSH refused")
    else:
        ctx.log.not_applicable("blk.dev.writeback-zero-without-flush", "CONFIG_WCE not offered (or legacy)")


@checker("rng_entropy", ("rng.dev.at-least-one-byte",), keys=("rng",))
async def rng_entropy(ctx: Ctx) -> None:
    """Every buffer comes back with at least one byte written, len counting them."""
    await bring_up(ctx, (0,))
    bad = []
    for size in (1, 7, 64, 4096):
        seg = buffer(ctx, size, write=True, fill=0)
        req = submit(ctx, Request(0, [seg], None))
        await kick(ctx, 0)
        used = await wait_used(ctx, 0, 1)
        if not used or used[0].id != req.head or not 1 <= used[0].length <= size:
            bad.append(f"{size}-byte buffer: {used}")
    ctx.log.check("rng.dev.at-least-one-byte", not bad, "; ".join(bad))


CONSOLE_IDS = ("console.vq.layout", "console.dev.emerg-wr-anytime")
EMERG_WR_OFFSET = 8
MULTIPORT = 1


@checker("console_basics", CONSOLE_IDS, keys=("console",))
async def console_basics(ctx: Ctx) -> None:
    """Queues 0/1 always; control and port queues only with MULTIPORT; emerg_wr accepted
    before the device is configured."""
    await negotiate(ctx)
    multiport = ctx.has(MULTIPORT)
    sizes = [await ctx.t.ops.queue_max_size(i) for i in range(2)]
    ok = all(sizes)
    ctx.log.check("console.vq.layout", ok, f"queue sizes {sizes} (multiport {multiport})")
    emerg = 2  # VIRTIO_CONSOLE_F_EMERG_WRITE
    if ctx.offered >> emerg & 1:
        await negotiate(ctx)
        await ctx.t.ops.write_config(EMERG_WR_OFFSET, 4, ord("!"))
        status = await ctx.t.ops.get_status()
        ctx.log.check("console.dev.emerg-wr-anytime", not status & 0x40, f"status {status:#x} after emerg_wr")
    else:
        ctx.log.not_applicable("console.dev.emerg-wr-anytime", "VIRTIO_CONSOLE_F_EMERG_WRITE not offered")


NET_IDS = ("net.vq.layout", "net.features.dev-dependencies")


@checker("net_basics", NET_IDS, keys=("net",))
async def net_basics(ctx: Ctx) -> None:
    """receiveq/transmitq pairs at 0/1 and the control queue after the pairs; offered
    features with their prerequisites."""
    from virtio_sim.spec import NET_F, NET_FEATURE_DEPS, unmet_dependencies

    await negotiate(ctx)
    present = []
    for i in range(4):
        try:
            present.append(await ctx.t.ops.queue_max_size(i))
        except Exception:
            present.append(0)
    ctrl = ctx.has(NET_F.CTRL_VQ)
    ok = present[0] > 0 and present[1] > 0 and (not ctrl or present[2] > 0)
    ctx.log.check("net.vq.layout", ok, f"queue sizes {present} (control queue {ctrl})")
    deps = unmet_dependencies(ctx.offered, NET_FEATURE_DEPS)
    ctx.log.check("net.features.dev-dependencies", not deps, f"unmet: {deps}")


def _segment(sector: int, count: int, flags: int) -> bytes:
    """struct virtio_blk_discard_write_zeroes (le64 sector, le32 num_sectors, le32 flags)."""
    return sector.to_bytes(8, "little") + count.to_bytes(4, "little") + flags.to_bytes(4, "little")


async def _discard_write_zeroes(ctx: Ctx, capacity: int, read_only: bool) -> None:
    """DISCARD with the unmap flag and either command with an unknown flag: UNSUPP;
    WRITE_ZEROES leaves zeros behind."""
    discard = bool(ctx.features >> BLK_F.DISCARD & 1)
    zeroes = bool(ctx.features >> BLK_F.WRITE_ZEROES & 1)
    if not (discard or zeroes) or read_only:
        for rid in (
            "blk.dev.unknown-flags-unsupp",
            "blk.dev.discard-unmap-unsupp",
            "blk.dev.write-zeroes-reads-zero",
        ):
            ctx.log.not_applicable(rid, "DISCARD / WRITE_ZEROES not negotiated (or read-only)")
        return
    sector = max(0, capacity - 4)
    unknown = []
    for rtype, ok in ((BLK_T.DISCARD, discard), (BLK_T.WRITE_ZEROES, zeroes)):
        if ok:
            status, _, _ = await blk_request(
                ctx, rtype, 0, data_out=_segment(sector, 1, UNKNOWN_SEGMENT_FLAG)
            )
            if status != BLK_S.UNSUPP:
                unknown.append((rtype, status))
    ctx.log.check(
        "blk.dev.unknown-flags-unsupp", not unknown, f"unknown segment flag: (type, status) {unknown}"
    )
    if discard:
        status, _, _ = await blk_request(ctx, BLK_T.DISCARD, 0, data_out=_segment(sector, 1, DISCARD_F_UNMAP))
        ctx.log.check(
            "blk.dev.discard-unmap-unsupp", status == BLK_S.UNSUPP, f"DISCARD with unmap: status {status}"
        )
    else:
        ctx.log.not_applicable("blk.dev.discard-unmap-unsupp", "DISCARD not negotiated")
    if zeroes:
        await blk_request(ctx, BLK_T.OUT, sector, data_out=PATTERN)
        status, _, _ = await blk_request(ctx, BLK_T.WRITE_ZEROES, 0, data_out=_segment(sector, 1, 0))
        _, _, data = await blk_request(ctx, BLK_T.IN, sector, data_in=SECTOR)
        ctx.log.check(
            "blk.dev.write-zeroes-reads-zero",
            status == BLK_S.OK and data == bytes(SECTOR),
            f"WRITE_ZEROES status {status}, sector reads back zero: {data == bytes(SECTOR)}",
        )
    else:
        ctx.log.not_applicable("blk.dev.write-zeroes-reads-zero", "WRITE_ZEROES not negotiated")


async def _legacy_cache_mode(ctx: Ctx) -> None:
    """Through the legacy interface, writeback must not move with status bits or with the
    driver's feature bits (before DRIVER_OK)."""
    ids = ("blk.legacy.dev-cache-mode-status", "blk.legacy.dev-cache-mode-features")
    if not ctx.legacy:
        for rid in ids:
            ctx.log.not_applicable(rid, "modern interface")
        return
    ops = ctx.t.ops
    await ops.reset()
    wb = _CFG["writeback"]
    seen = [await ops.read_config(wb, 1)]
    await ops.set_status(STATUS.ACKNOWLEDGE)
    seen.append(await ops.read_config(wb, 1))
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    seen.append(await ops.read_config(wb, 1))
    ctx.log.check(ids[0], len(set(seen)) == 1, f"writeback across status writes: {seen}")
    offered = await ops.get_features()
    values = []
    for feats in (offered & 0xFFFFFFFF, offered & ~bit(BLK_F.FLUSH) & 0xFFFFFFFF, 0):
        await ops.set_features(feats)
        values.append(await ops.read_config(wb, 1))
    ctx.log.check(ids[1], len(set(values + seen[:1])) == 1, f"writeback across feature writes: {values}")


ENDIAN_IDS = (
    "split.legacy.dev-native-endian",
    "blk.legacy.req-native-endian-dev",
    "blk.legacy.config-native-endian-dev",
)


@checker("legacy_byte_order", ENDIAN_IDS, keys=("blk",))
async def legacy_byte_order(ctx: Ctx) -> None:
    """A big-endian guest through the legacy interface: rings, request headers and config
    in the guest's order. A write addressed by a big-endian sector number must land at that
    sector of the backing file, and capacity must read as the disk's size."""
    if not ctx.legacy or ctx.dut.guest_order != "big":
        for rid in ENDIAN_IDS:
            ctx.log.not_applicable(rid, "needs a big-endian guest on the legacy interface")
        return
    await bring_up(ctx, (0,))
    capacity = await ctx.t.ops.read_config(_CFG["capacity"], 8)
    path = _disk_path(ctx)
    size = os.path.getsize(path) if path else None
    ctx.log.check(
        "blk.legacy.config-native-endian-dev",
        size is not None and capacity == size // SECTOR,
        f"capacity reads {capacity:#x}, the disk has {size} bytes",
    )
    sector = 1  # 1 in big-endian is 1 << 56 little-endian: far outside any disk
    status, length, _ = await blk_request(ctx, BLK_T.OUT, sector, data_out=PATTERN)
    ctx.log.check("split.legacy.dev-native-endian", status is not None and length == 1,
                  f"big-endian ring: write completed {status is not None}, used len {length}")  # fmt: skip
    on_disk = b""
    if path:
        with open(path, "rb") as f:
            f.seek(sector * SECTOR)
            on_disk = f.read(len(PATTERN))
    why = f"write to big-endian sector {sector}: status {status}, on disk {on_disk == PATTERN}"
    ctx.log.check("blk.legacy.req-native-endian-dev", status == BLK_S.OK and on_disk == PATTERN, why)


def _disk_path(ctx: Ctx) -> str | None:
    setup = ctx.dut.setup
    if setup is None or not setup.built:
        return None
    path = getattr(setup.built[0].model, "path", None)
    return str(path) if path else None
