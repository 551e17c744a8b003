"""Device-side checkers: the conformance driver's probes and what they decide.

Each checker is an async function over a :class:`Ctx` (the device under test, its
transport, the ring format, the finding log) registered with :func:`checker` under the
name the catalogue uses and the requirement ids it records. Every checker starts from a
device reset, drives the device through its transport with hand-built rings
(:mod:`virtio_sim.orchestration.conformance.rawring`) and records PASS/FAIL/NOT_APPLICABLE per id, with
evidence that says what was seen. Ordering rules are decided from the device's access
trace when the back-end has one; otherwise from final states only, and the evidence says
so.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from virtio_sim.guest.transport.base import TransportError
from virtio_sim.layouts import ByteOrder
from virtio_sim.orchestration.conformance.dut import Dut, OpenedTransport
from virtio_sim.orchestration.conformance.findings import FindingLog
from virtio_sim.orchestration.conformance.rawring import (
    Arena,
    RawPackedRing,
    RawSplitRing,
    Segment,
    UsedEntry,
)
from virtio_sim.spec import BLK_T, FEATURES, STATUS, F, bit

Ring = RawSplitRing | RawPackedRing
DEFAULT_QUEUE_SIZE = 64
#: the rule a queue still live right after a device reset breaks, per transport
RESET_CLEARS = {"mmio-v2": "mmio.dev.reset-clears", "pci-modern": "pci.common.dev-queue-enable-reset"}
#: how long a back-end that completes asynchronously (QEMU) gets to publish a used entry
COMPLETION_TIMEOUT = 2.0
#: how long to wait before concluding that a device did nothing (it must not act)
QUIET_WAIT = 0.05


class Refused(Exception):
    """The device refused FEATURES_OK for a feature set the checker needed."""


@dataclass
class Ctx:
    dut: Dut
    t: OpenedTransport
    log: FindingLog
    ring: str  # "split" | "packed"
    arena: Arena
    offered: int = 0
    features: int = 0
    rings: dict[int, Ring] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: run the slow checks too (65536 completions to wrap the split used index)
    thorough: bool = True
    #: no queue reset since the last device reset (what a live queue then means)
    since_reset: bool = False

    @property
    def legacy(self) -> bool:
        return self.t.kind in ("mmio-v1", "pci-legacy")

    @property
    def order(self) -> ByteOrder:
        """Byte order of rings and requests: the guest's on the legacy interface."""
        return self.dut.guest_order if self.legacy else "little"

    @property
    def key(self) -> str:
        return self.dut.key

    def has(self, feature_bit: int) -> bool:
        return bool(self.features >> feature_bit & 1)

    def feature_name(self, feature_bit: int) -> str:
        fb = FEATURES.lookup(feature_bit, self.key)
        return fb.name if fb else f"bit {feature_bit}"


CheckFn = Callable[[Ctx], Awaitable[None]]


@dataclass(frozen=True)
class Checker:
    name: str
    ids: tuple[str, ...]
    fn: CheckFn
    keys: tuple[str, ...] | None  # device types it applies to (None: all)
    transports: tuple[str, ...] | None  # transport kinds (None: all)


CHECKERS: dict[str, Checker] = {}


def checker(
    name: str,
    ids: tuple[str, ...],
    *,
    keys: tuple[str, ...] | None = None,
    transports: tuple[str, ...] | None = None,
) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        if name in CHECKERS:
            raise ValueError(f"checker {name} registered twice")
        CHECKERS[name] = Checker(name, ids, fn, keys, transports)
        return fn

    return register


# -- bring-up ---------------------------------------------------------------------------


async def reset(ctx: Ctx) -> None:
    try:
        await ctx.t.ops.reset()
    except TransportError as e:
        # the transport driver waits for status 0 (PCI): a device that never gets there
        ctx.log.failed("reset.dev.status-zero", f"writing 0 to the status: {e}")
        raise
    ctx.rings.clear()
    ctx.features = 0
    ctx.arena.reset()
    ctx.since_reset = True
    await ack(ctx)


async def ack(ctx: Ctx) -> int:
    """Read and acknowledge the interrupt causes (ISR / InterruptStatus)."""
    return int(await ctx.t.ops.ack_interrupt())


def default_features(ctx: Ctx, offered: int) -> int:
    """What the conformance driver accepts: everything it can drive, in the ring format
    of the run, nothing legacy-only or unknown."""
    want = offered
    for fb in FEATURES.features:
        if fb.legacy_only and fb.scope == "transport":
            want &= ~fb.mask
    want &= ~bit(F.NOTIFICATION_DATA)  # notifications here are plain queue indexes
    if ctx.ring == "split":
        want &= ~bit(F.RING_PACKED)
    if ctx.legacy:
        want &= 0xFFFFFFFF
    known = 0
    for b in range(64):
        if FEATURES.lookup(b, ctx.key) is not None:
            known |= 1 << b
    return want & known


async def negotiate(ctx: Ctx, accept: int | None = None, *, check: bool = True) -> bool:
    """Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns whether FEATURES_OK stuck."""
    ops = ctx.t.ops
    await reset(ctx)
    await ops.set_status(STATUS.ACKNOWLEDGE)
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    ctx.offered = await ops.get_features()
    want = default_features(ctx, ctx.offered) if accept is None else accept
    await ops.set_features(want)
    ctx.features = want
    if ctx.legacy:
        return True
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK)
    ok = bool(await ops.get_status() & STATUS.FEATURES_OK)
    if check and not ok:
        raise Refused(f"FEATURES_OK refused for {want:#x}")
    return ok


async def add_queue(ctx: Ctx, index: int, size: int = DEFAULT_QUEUE_SIZE) -> Ring:
    ops = ctx.t.ops
    try:
        qmax = await ops.queue_max_size(index)
    except TransportError as e:
        _live_after_reset(ctx, index, e)
        raise
    if qmax == 0:
        raise Refused(f"queue {index} does not exist")
    # the legacy PCI header has no writable queue size: the ring is the device's size
    size = qmax if ctx.t.kind == "pci-legacy" else min(size, qmax)
    ring: Ring
    if ctx.ring == "packed" and ctx.has(F.RING_PACKED):
        ring = RawPackedRing(ctx.dut.memory, ctx.arena, size)
    else:
        align = ops.legacy_ring_align()
        ring = RawSplitRing(ctx.dut.memory, ctx.arena, size, legacy_align=align, order=ctx.order)
    from virtio_sim.ring.split import SplitRingAddresses

    try:
        await ops.setup_queue(
            index, size, SplitRingAddresses(ring.areas.desc, ring.areas.driver, ring.areas.device)
        )
    except TransportError as e:
        _live_after_reset(ctx, index, e)
        raise
    ctx.rings[index] = ring
    return ring


def _live_after_reset(ctx: Ctx, index: int, e: TransportError) -> None:
    """The transport driver found the queue live although the device was just reset."""
    rid = RESET_CLEARS.get(ctx.t.kind)
    if rid is not None and ctx.since_reset and index not in ctx.rings and "already set up" in str(e):
        ctx.log.failed(rid, f"queue {index} reads as set up right after a device reset: {e}")


async def driver_ok(ctx: Ctx) -> None:
    ops = ctx.t.ops
    await ops.set_status(await ops.get_status() | STATUS.DRIVER_OK)


async def bring_up(
    ctx: Ctx,
    queues: tuple[int, ...],
    *,
    accept: int | None = None,
    ok: bool = True,
    size: int = DEFAULT_QUEUE_SIZE,
) -> None:
    await negotiate(ctx, accept)
    for q in queues:
        await add_queue(ctx, q, size)
    if ok:
        await driver_ok(ctx)


# -- requests ---------------------------------------------------------------------------


@dataclass
class Request:
    """One buffer the conformance driver makes available, and what it expects back."""

    queue: int
    segments: list[Segment]
    expect_written: int | None  # exact used len expected, or None (at least 1 when writable)
    head: int = -1
    readable_snapshot: bytes = b""
    check: Callable[[Request, UsedEntry], str | None] | None = None

    @property
    def writable(self) -> list[Segment]:
        return [s for s in self.segments if s.write]

    @property
    def readable(self) -> list[Segment]:
        return [s for s in self.segments if not s.write]


def blk_header(ctx: Ctx, rtype: int, sector: int = 0) -> bytes:
    """virtio_blk_req's head: little-endian, or the guest's order on the legacy interface."""
    return struct.pack(">IIQ" if ctx.order == "big" else "<IIQ", rtype, 0, sector)


def buffer(ctx: Ctx, data: bytes | int, *, write: bool, fill: int = 0xA5) -> Segment:
    """A buffer in the arena: ``data`` bytes (device-readable) or that many bytes filled
    with ``fill`` (device-writable), so untouched bytes can be recognised."""
    if isinstance(data, int):
        addr = ctx.arena.alloc(data, 16, fill=fill)
        return Segment(addr, data, write)
    addr = ctx.arena.alloc(len(data), 16, fill=None)
    ctx.dut.memory.write(addr, data)
    return Segment(addr, len(data), write)


def traffic_request(ctx: Ctx, variant: int = 0) -> Request:
    """A harmless request for the device under test, on its first request queue.

    ``variant`` 1 splits the device-readable header over two descriptors (no layout
    assumption, 2.6.4).
    """
    key = ctx.key
    if key == "blk":
        hdr = blk_header(ctx, BLK_T.IN, 0)
        head_segs = (
            [buffer(ctx, hdr[:4], write=False), buffer(ctx, hdr[4:], write=False)]
            if variant
            else [buffer(ctx, hdr, write=False)]
        )
        return Request(0, [*head_segs, buffer(ctx, 512, write=True), buffer(ctx, 1, write=True)], 513)
    if key == "rng":
        if variant:
            return Request(0, [buffer(ctx, 32, write=True), buffer(ctx, 32, write=True)], None)
        return Request(0, [buffer(ctx, 64, write=True)], None)
    if key in ("console", "net"):
        payload = bytes(12) + b"conformance!" if key == "net" else b"conformance\n"
        if variant:
            return Request(
                1, [buffer(ctx, payload[:5], write=False), buffer(ctx, payload[5:], write=False)], 0
            )
        return Request(1, [buffer(ctx, payload, write=False)], 0)
    if key == "iommu":
        # DETACH of an endpoint that does not exist: answered NOENT, changes nothing.
        body = struct.pack("<BxxxII8x", 2, 1, 0xFFFF0)
        segs = (
            [buffer(ctx, body[:4], write=False), buffer(ctx, body[4:], write=False)]
            if variant
            else [buffer(ctx, body, write=False)]
        )
        return Request(0, [*segs, buffer(ctx, 4, write=True)], 4)
    raise ValueError(key)


def traffic_queue(ctx: Ctx) -> int:
    return 1 if ctx.key in ("console", "net") else 0


def submit(
    ctx: Ctx,
    req: Request,
    *,
    publish: bool = True,
    indirect: bool = False,
    indirect_from: int | None = None,
    indirect_write_flag: bool = False,
) -> Request:
    ring = ctx.rings[req.queue]
    req.readable_snapshot = snapshot(ctx, req.readable)
    if isinstance(ring, RawPackedRing):
        req.head = ring.add(req.segments, indirect=indirect)
    else:
        frm = 0 if indirect else indirect_from
        req.head = ring.add(req.segments, indirect_from=frm, indirect_write_flag=indirect_write_flag)
        ring.make_available(req.head, publish=publish)
    return req


def snapshot(ctx: Ctx, segments: list[Segment]) -> bytes:
    """The bytes of ``segments`` (those outside RAM, deliberately bad ones, read as empty)."""
    out = b""
    for s in segments:
        try:
            out += ctx.dut.memory.read(s.addr, s.length)
        except Exception:
            continue
    return out


async def kick(ctx: Ctx, queue: int) -> None:
    await ctx.t.ops.notify(queue)


async def wait_used(ctx: Ctx, queue: int, count: int, timeout: float = COMPLETION_TIMEOUT) -> list[UsedEntry]:
    """Collect ``count`` used entries (fewer if the device does not produce them in time)."""
    ring = ctx.rings[queue]
    got: list[UsedEntry] = []
    with trio.move_on_after(timeout if ctx.dut.backend != "host" else 0.2):
        while True:
            got += ring.take_used()
            if len(got) >= count:
                break
            await trio.sleep(0.001)
    return got


async def quiet(ctx: Ctx) -> None:
    """Give an asynchronous back-end time to do what it must not do."""
    await trio.sleep(QUIET_WAIT if ctx.dut.backend != "host" else 0)


def written_len_problem(ctx: Ctx, req: Request, used: UsedEntry) -> str | None:
    cap = sum(s.length for s in req.writable)
    if used.length > cap:
        return f"used len {used.length} exceeds the {cap} device-writable bytes"
    if req.expect_written is not None and used.length != req.expect_written:
        return f"used len {used.length}, but the device wrote {req.expect_written} bytes"
    if ctx.dut.trace is not None and req.writable:
        touched = written_bytes(ctx, req)
        if used.length > touched:
            return f"used len {used.length} but only {touched} writable bytes were written"
    return None


def written_bytes(ctx: Ctx, req: Request) -> int:
    """Length of the prefix of the writable part the device wrote (from the trace)."""
    assert ctx.dut.trace is not None
    covered: set[int] = set()
    base = 0
    spans = []
    for s in req.writable:
        spans.append((s.addr, s.length, base))
        base += s.length
    for a in ctx.dut.trace:
        if not a.write:
            continue
        for addr, length, off in spans:
            lo, hi = max(a.addr, addr), min(a.addr + len(a.data), addr + length)
            covered.update(range(off + lo - addr, off + hi - addr))
    n = 0
    while n in covered:
        n += 1
    return n


def trace_mark(ctx: Ctx) -> int:
    return len(ctx.dut.trace) if ctx.dut.trace is not None else 0


def device_touched(ctx: Ctx, mark: int) -> list[str]:
    """Device memory accesses since ``mark`` (empty when there is no trace)."""
    if ctx.dut.trace is None:
        return []
    return [f"{'write' if a.write else 'read'} {len(a.data)}@{a.addr:#x}" for a in ctx.dut.trace[mark:]]


def overlaps(addr: int, length: int, seg_addr: int, seg_len: int) -> bool:
    return addr < seg_addr + seg_len and seg_addr < addr + length


# checkers live in their own modules; importing them registers them
def load_all() -> dict[str, Checker]:
    from virtio_sim.orchestration.conformance import (  # noqa: F401
        checks_console,
        checks_core,
        checks_devices,
        checks_iommu,
        checks_negotiation,
        checks_net,
        checks_pci,
        checks_rings,
        checks_vqreset,
    )

    return CHECKERS
