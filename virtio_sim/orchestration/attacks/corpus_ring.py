"""Malformed rings (rows A-C of specs/attacks.toml): descriptor chains, indirect tables,
indices and wrap counters, written raw by the forge and kicked at the device's main queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from virtio_sim import layouts as L
from virtio_sim.orchestration.attacks.amplify import PythonPeak
from virtio_sim.orchestration.attacks.forge import INDIRECT, NEXT, WRITE, PackedForge, Seg, SplitForge
from virtio_sim.orchestration.attacks.runner import require
from virtio_sim.orchestration.attacks.scenario import Expect, Scenario
from virtio_sim.orchestration.attacks.targets import AREA, DATA_END, DOMAIN, RAM, READ_ONLY, UNMAPPED, Bench
from virtio_sim.spec import PACKED_DESC_F, F, bit

SCENARIOS: list[Scenario] = []
ADDR = frozenset({"bad-address", "dma"})
TOP = 1 << 64
MMIO_HOLE = 0xFEB00000  # microvm's virtio-mmio window: device registers, never RAM


def scenario(
    sid: str,
    row: str,
    expect: Expect,
    title: str,
    classes: set[str] | frozenset[str] = frozenset(),
    **kw: Any,
) -> Callable[[Callable[[Bench], None]], Callable[[Bench], None]]:
    def deco(fn: Callable[[Bench], None]) -> Callable[[Bench], None]:
        SCENARIOS.append(Scenario(sid, row, "ring", expect, title, fn, frozenset(classes), **kw))
        return fn

    return deco


def split(b: Bench) -> SplitForge:
    f = b.bring_up()
    assert isinstance(f, SplitForge)
    return f


def packed(b: Bench) -> PackedForge:
    f = b.bring_up()
    assert isinstance(f, PackedForge)
    return f


def writable(b: Bench, n: int = 64) -> Seg:
    return Seg(b.buf(n), n, True)


def one_bad(
    sid: str, row: str, title: str, seg: Callable[[Bench], Seg], classes: frozenset[str] = ADDR, **kw: Any
) -> None:
    """A single-buffer request whose one buffer is ``seg`` (both ring formats)."""

    def body(b: Bench) -> None:
        b.bring_up()
        b.post([seg(b)])
        b.kick()

    scenario(sid, row, Expect.VIOLATION, title, classes, **kw)(body)


# --------------------------------------------------------------------------- A. buffers

one_bad(
    "zero-length-desc",
    "A5",
    "a zero-length descriptor (strict rings; lenient rings accept it)",
    lambda b: Seg(b.buf(16), 0, True),
    frozenset({"zero-length"}),
    lenient=("split", "packed"),
)
one_bad("huge-len", "A6", "len 0xFFFFFFFF", lambda b: Seg(b.buf(16), 0xFFFFFFFF, True))
one_bad("len-past-ram", "A6", "a buffer running past the end of RAM", lambda b: Seg(RAM - 32, 4096, True))
one_bad("addr-wraps-2^64", "A7", "addr + len wraps past 2^64", lambda b: Seg(TOP - 16, 64, True))
one_bad("addr-all-ones", "A7", "addr 0xFFFF_FFFF_FFFF_FFFF", lambda b: Seg(TOP - 1, 1, True))
one_bad("addr-above-ram", "A9", "a buffer far above RAM", lambda b: Seg(1 << 40, 64, True))
one_bad(
    "addr-just-past-ram", "A9", "a buffer starting at the first byte after RAM", lambda b: Seg(RAM, 64, True)
)
one_bad(
    "addr-mmio-hole", "A9", "a buffer on the device's own MMIO registers", lambda b: Seg(MMIO_HOLE, 64, True)
)
one_bad(
    "readonly-huge-len",
    "A6",
    "a device-readable buffer of 4 GiB",
    lambda b: Seg(b.buf(16), 0xFFFFFFFF, False),
)


@scenario(
    "chain-over-4g", "A8", Expect.VIOLATION, "sum of chain lengths above 2^32", ADDR | {"chain-too-big"}
)
def _chain_over_4g(b: Bench) -> None:
    b.bring_up()
    b.post([Seg(0, 0xC0000000, True), Seg(0, 0xC0000000, True)])
    b.kick()


@scenario(
    "write-before-read",
    "A11",
    Expect.VIOLATION,
    "a device-writable descriptor before a readable one",
    {"readable-after-writable"},
)
def _write_before_read(b: Bench) -> None:
    b.bring_up()
    b.post([writable(b, 16), Seg(b.buf(16), 16)])
    b.kick()


def _good_crossing_pages(b: Bench) -> None:
    f = b.bring_up()
    segs = b.good_request()
    moved = []
    for s in segs:
        at = L.align_up(b.buf(0x1000 + s.length, align=0x1000), 0x1000) + 0x1000 - s.length // 2 - 1
        b.watch.write(at, b.memory.read(s.addr, s.length))
        moved.append(Seg(at, s.length, s.write))
    before = b.published()
    b.post(moved, forge=f)
    b.kick()
    require(b.published() == before + 1, "a request with page-crossing buffers was not served")


scenario("page-crossing-buffers", "A10", Expect.LEGAL, "every buffer straddles a page boundary")(
    _good_crossing_pages
)


@scenario(
    "aliasing-writable-buffers",
    "A13",
    Expect.LEGAL,
    "two writable buffers at the same address",
    devices=("rng",),
)
def _aliasing(b: Bench) -> None:
    b.bring_up()
    at = b.buf(64)
    b.post([Seg(at, 64, True), Seg(at, 64, True)])
    b.kick()
    require(b.published() == 1, "aliasing buffers not served")


@scenario(
    "buffer-over-own-used-ring",
    "A9",
    Expect.LEGAL,
    "the writable buffer is the used ring itself",
    devices=("rng",),
)
def _over_used_ring(b: Bench) -> None:
    f = b.bring_up()
    b.post([Seg(f.used, 8, True)])
    b.kick()


@scenario(
    "used-len-clamped",
    "A13",
    Expect.LEGAL,
    "used.len never exceeds the writable bytes",
    devices=("rng",),
    rings=("split",),
)
def _used_len(b: Bench) -> None:
    f = split(b)
    b.post([Seg(b.buf(16), 16, True)])
    b.kick()
    require(f.used_elem(0)[1] == 16, f"used.len {f.used_elem(0)[1]} for a 16-byte buffer")


@scenario("readonly-only-rng", "A12", Expect.LEGAL, "an rng request without writable space", devices=("rng",))
def _rng_readonly(b: Bench) -> None:
    b.bring_up()
    b.post([Seg(b.buf(16), 16)])
    b.kick()
    require(b.published() == 1, "request not completed")


# blk request shapes (row A12): the status says what was wrong; nothing is read or written
# beyond the request.
def _blk(
    b: Bench, *, typ: int = 0, sector: int = 0, hdr_w: bool = False, status_w: bool = True, data: int = 512
) -> int:
    b.bring_up()
    hdr = b.buf(16)
    order = b.vdevs[0].byte_order(b.vdevs[0].guest_order)
    b.watch.write(hdr, L.blk_req_header_codec(order).pack(typ, 0, sector))
    st = b.buf(1)
    b.watch.write(st, b"\xee")
    segs = [Seg(hdr, 16, hdr_w)] + ([Seg(b.buf(data), data, True)] if data else []) + [Seg(st, 1, status_w)]
    b.post(segs)
    b.kick()
    return st


def _blk_status(value: int | None, **kw: object) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        st = _blk(b, **kw)  # type: ignore[arg-type]
        require(b.published() == 1, "the request was not completed")
        got = b.memory.read(st, 1)[0]
        if value is None:
            require(got == 0xEE, "the device wrote a device-readable status byte")
        else:
            require(got == value, f"status {got} instead of {value}")

    return body


BLK: dict[str, Any] = {"devices": ("blk",)}
scenario("blk-unknown-type", "A12", Expect.ERROR_STATUS, "blk request type 0xdead", **BLK)(
    _blk_status(2, typ=0xDEAD)
)
scenario("blk-sector-past-end", "A12", Expect.ERROR_STATUS, "blk read past the disk", **BLK)(
    _blk_status(1, sector=1 << 40)
)
scenario("blk-sector-wraps", "A12", Expect.ERROR_STATUS, "blk sector*512 wraps 2^64", **BLK)(
    _blk_status(1, sector=(1 << 64) - 1)
)
scenario("blk-partial-sector", "A12", Expect.ERROR_STATUS, "blk read of 100 bytes", **BLK)(
    _blk_status(1, data=100)
)
scenario("blk-header-writable", "A12", Expect.ERROR_STATUS, "blk header marked device-writable", **BLK)(
    _blk_status(1, hdr_w=True)
)
scenario("blk-status-readonly", "A12", Expect.ERROR_STATUS, "blk status byte not writable", **BLK)(
    _blk_status(None, status_w=False, data=0)
)


@scenario("blk-no-status", "A12", Expect.ERROR_STATUS, "blk request of just a header", **BLK)
def _blk_hdr_only(b: Bench) -> None:
    b.bring_up()
    b.post([Seg(b.buf(16), 16)])
    b.kick()
    require(b.published() == 1, "not completed")


@scenario(
    "net-tx-header-short",
    "A12",
    Expect.VIOLATION,
    "net tx buffer shorter than the header",
    {"net-tx-header-short"},
    devices=("net",),
)
def _net_short(b: Bench) -> None:
    b.bring_up()
    b.post([Seg(b.buf(4), 4)])
    b.kick()


@scenario(
    "tx-writable-only",
    "A12",
    Expect.LEGAL,
    "a transmit request with only writable buffers",
    devices=("console",),
)
def _console_writable(b: Bench) -> None:
    b.bring_up()
    b.post([writable(b, 16)])
    b.kick()


# --------------------------------------------------------------------------- B. indirect


def _indirect(
    entries: Callable[[Bench], list[Seg]],
    *,
    flags: int = INDIRECT,
    length: Callable[[Bench], int | None] = lambda b: None,
    table: Callable[[Bench], int] | None = None,
    features: Callable[[Bench], int] | None = None,
) -> Callable[[Bench], None]:
    """A request through an indirect table; ``table`` moves the descriptor's table
    address (the entries are still written in RAM, the device is pointed elsewhere)."""

    def body(b: Bench) -> None:
        b.bring_up(features=features(b) if features else None)
        f = b.forge
        at = b.table_addr()
        if isinstance(f, SplitForge):
            slot = f.post_indirect(at, entries(b), flags=flags, length=length(b))
            if table:
                f.raw_desc(slot, table(b), 32, flags)
        else:
            assert isinstance(f, PackedForge)
            f.post_indirect(at, entries(b), flags=flags, length=length(b))
            if table:
                f.raw_desc(f.next - 1, table(b), 32, f.next - 1, flags | f.avail_bits())
        b.kick()

    return body


# Row X5: request amplification, host direction. 1000 indirect entries on one buffer: a
# 31 MiB blk read from a bench of 1 MiB RAM (the
# wire corpus and tests/attacks/test_amplification.py play the full 1000 MiB against a host
# process). The model must serve it (it is legal, and within QEMU's per-request bound)
# without host memory in proportion: the case measures what Python allocates meanwhile.
AMPLIFIED_ENTRIES = 1000
AMPLIFIED_BYTES = 31 << 20
# Peak Python allocation allowed: a few [blk] io_chunk_bytes steps. The old whole-request
# buffer alone was the request size.
AMPLIFIED_MEMORY_BOUND = 4 << 20


@scenario(
    "blk-amplified-read",
    "X5",
    Expect.LEGAL,
    f"blk read of {AMPLIFIED_BYTES >> 20} MiB through indirect entries that all point at one buffer",
    devices=("blk",),
    # Split rings take 1024-entry tables; packed ones no more than the queue size (a few
    # entries on this bench: no amplification worth the name).
    rings=("split",),
)
def _amplified(b: Bench) -> None:
    b.bring_up()
    entries = AMPLIFIED_ENTRIES
    size = AMPLIFIED_BYTES // entries // 512 * 512
    hdr = b.buf(16)
    order = b.vdevs[0].byte_order(b.vdevs[0].guest_order)
    b.watch.write(hdr, L.blk_req_header_codec(order).pack(0, 0, 0))  # VIRTIO_BLK_T_IN, sector 0
    buf = b.buf(size)
    st = b.buf(1)
    b.watch.write(st, b"\xee")
    segs = [Seg(hdr, 16), *[Seg(buf, size, True)] * entries, Seg(st, 1, True)]
    split(b).post_indirect(b.table_addr(), segs)
    with PythonPeak() as used:
        b.kick()
    require(b.published() == 1, "the amplified request was not completed")
    require(b.memory.read(st, 1)[0] == 0, "the amplified request did not complete OK")
    mib = f"{used.peak / (1 << 20):.1f} MiB allocated for a {entries * size >> 20} MiB request"
    require(used.peak < AMPLIFIED_MEMORY_BOUND, mib)


def _rng_entries(b: Bench) -> list[Seg]:
    return [writable(b, 32), writable(b, 32)]


scenario(
    "indirect-not-negotiated",
    "B14",
    Expect.VIOLATION,
    "INDIRECT without VIRTIO_F_INDIRECT_DESC",
    {"indirect-not-negotiated"},
    lenient=("split", "packed"),
)(_indirect(_rng_entries, features=lambda b: b.features() & ~bit(F.INDIRECT_DESC)))
scenario("indirect-len-not-16x", "B17", Expect.VIOLATION, "table length 24", {"indirect-bad-length"})(
    _indirect(_rng_entries, length=lambda b: 24)
)
scenario(
    "indirect-len-zero",
    "B18",
    Expect.VIOLATION,
    "zero-length indirect table",
    {"indirect-bad-length", "zero-length"},
)(_indirect(_rng_entries, length=lambda b: 0))
scenario(
    "indirect-table-huge",
    "B19",
    Expect.VIOLATION,
    "table of 70000 entries",
    ADDR | {"indirect-bad-length", "chain-too-long", "chain-loop", "indirect-too-large"},
)(_indirect(_rng_entries, length=lambda b: 16 * 70000))
scenario("indirect-table-past-ram", "B20", Expect.VIOLATION, "table outside RAM", ADDR)(
    _indirect(_rng_entries, table=lambda b: RAM - 16)
)
scenario("indirect-table-above-ram", "B20", Expect.VIOLATION, "table at 1 TiB", ADDR)(
    _indirect(_rng_entries, table=lambda b: 1 << 40)
)
scenario(
    "indirect-with-next",
    "B16",
    Expect.VIOLATION,
    "INDIRECT and NEXT together",
    {"indirect-with-next", "desc-wrap-bits"},
)(_indirect(_rng_entries, flags=INDIRECT | NEXT))
scenario(
    "indirect-write-flag-ignored", "B21", Expect.LEGAL, "WRITE set on the table descriptor", devices=("rng",)
)(_indirect(_rng_entries, flags=INDIRECT | WRITE))


@scenario(
    "indirect-in-indirect",
    "B15",
    Expect.VIOLATION,
    "an INDIRECT entry inside a table",
    {"nested-indirect"},
    lenient=("packed",),  # split refuses it in both modes
)
def _nested(b: Bench) -> None:
    f = b.bring_up()
    inner, outer = b.table_addr(n=1), b.table_addr()
    f.table(inner, [(b.buf(16), 16, WRITE, 0)])
    f.table(outer, [(inner, 16, INDIRECT, 0)])
    if isinstance(f, SplitForge):
        f.raw_desc(0, outer, 16, INDIRECT)
        f.put_heads(0)
    else:
        assert isinstance(f, PackedForge)
        f.raw_desc(0, outer, 16, 0, INDIRECT | f.avail_bits())
    b.kick()


@scenario(
    "in-order-head-skips",
    "X3",
    Expect.VIOLATION,
    "IN_ORDER negotiated, the first chain made available starts at slot 2, not 0",
    {"in-order-head"},
    rings=("split",),
    transports=("mmio-v2", "pci-modern", "pci-transitional"),
    lenient=("split",),
)
def _in_order_head(b: Bench) -> None:
    b.negotiate(features=b.features() | bit(F.IN_ORDER))
    b.map_iommu(0)
    f = b.queue()
    b.driver_ok()
    assert isinstance(f, SplitForge)
    f.post(b.good_request(), first=2)
    b.kick()
    if not b.target.strict:
        require(b.published() == 1, "lenient rings did not serve the out-of-order chain")


@scenario(
    "indirect-loop",
    "B15",
    Expect.VIOLATION,
    "a loop inside an indirect table",
    {"chain-loop"},
    rings=("split",),
)
def _indirect_loop(b: Bench) -> None:
    f = split(b)
    at = b.table_addr()
    f.table(at, [(b.buf(16), 16, WRITE | NEXT, 1), (b.buf(16), 16, WRITE | NEXT, 0)])
    f.raw_desc(0, at, 32, INDIRECT)
    f.put_heads(0)
    b.kick()


@scenario(
    "indirect-next-out-of-table",
    "B16",
    Expect.VIOLATION,
    "a table entry's next past the table",
    {"next-out-of-range"},
    rings=("split",),
)
def _indirect_next(b: Bench) -> None:
    f = split(b)
    at = b.table_addr()
    f.table(at, [(b.buf(16), 16, WRITE | NEXT, 7)])
    f.raw_desc(0, at, 16, INDIRECT)
    f.put_heads(0)
    b.kick()


@scenario(
    "two-indirects-chained",
    "B16",
    Expect.VIOLATION,
    "an indirect descriptor NEXT-chained to another",
    {"indirect-with-next"},
    rings=("split",),
)
def _two_indirects(b: Bench) -> None:
    f = split(b)
    t1, t2 = b.table_addr(), b.table_addr(n=1)
    f.table(t1, [(b.buf(16), 16, WRITE, 0)])
    f.table(t2, [(b.buf(16), 16, WRITE, 0)])
    f.raw_desc(0, t1, 16, INDIRECT | NEXT, 1)
    f.raw_desc(1, t2, 16, INDIRECT)
    f.put_heads(0)
    b.kick()


@scenario(
    "chain-then-indirect",
    "B16",
    Expect.LEGAL,
    "normal descriptors followed by one INDIRECT (legal, split)",
    rings=("split",),
    devices=("rng",),
)
def _chain_then_indirect(b: Bench) -> None:
    f = split(b)
    at = b.table_addr()
    f.table(at, [(b.buf(16), 16, WRITE, 0)])
    f.raw_desc(0, b.buf(16), 16, WRITE | NEXT, 1)
    f.raw_desc(1, at, 16, INDIRECT)
    f.put_heads(0)
    b.kick()
    require(b.published() == 1, "legal chain-then-indirect not served")


@scenario(
    "indirect-in-packed-chain",
    "B16",
    Expect.VIOLATION,
    "INDIRECT after a NEXT descriptor in a packed chain",
    {"indirect-in-chain"},
    rings=("packed",),
)
def _packed_indirect_chain(b: Bench) -> None:
    f = packed(b)
    at = b.table_addr()
    f.table(at, [(b.buf(16), 16, WRITE, 0)])
    f.raw_desc(0, b.buf(16), 16, 0, WRITE | NEXT | f.avail_bits())
    f.raw_desc(1, at, 16, 0, INDIRECT | f.avail_bits())
    b.kick()


# --------------------------------------------------------------------------- A/C. split


def _links(links: dict[int, int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        f = split(b)
        for d, nxt in links.items():
            f.raw_desc(d, b.buf(16), 16, WRITE | NEXT, nxt)
        f.put_heads(0)
        b.kick()

    return body


SPLIT: dict[str, Any] = {"rings": ("split",)}
scenario("loop-self", "A1", Expect.VIOLATION, "descriptor 0 -> 0", {"chain-loop"}, **SPLIT)(_links({0: 0}))
scenario("loop-two", "A1", Expect.VIOLATION, "0 -> 1 -> 0", {"chain-loop"}, **SPLIT)(_links({0: 1, 1: 0}))
scenario("loop-not-through-head", "A1", Expect.VIOLATION, "0 -> 3 -> 5 -> 3", {"chain-loop"}, **SPLIT)(
    _links({0: 3, 3: 5, 5: 3})
)


@scenario(
    "chain-longer-than-queue",
    "A2",
    Expect.VIOLATION,
    "a chain of queue size + 1 descriptors",
    {"chain-loop", "chain-too-long"},
    **SPLIT,
)
def _long_chain(b: Bench) -> None:
    f = split(b)
    for i in range(f.q):
        f.raw_desc(i, b.buf(8), 8, WRITE | NEXT, (i + 1) % f.q or 1)
    f.put_heads(0)
    b.kick()


def _next(nxt: int) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        f = split(b)
        f.raw_desc(0, b.buf(16), 16, WRITE | NEXT, f.q + nxt if nxt < 0x100 else nxt)
        f.put_heads(0)
        b.kick()

    return body


scenario("next-eq-qsize", "A3", Expect.VIOLATION, "next == queue size", {"next-out-of-range"}, **SPLIT)(
    _next(0)
)
scenario("next-ffff", "A3", Expect.VIOLATION, "next == 0xffff", {"next-out-of-range"}, **SPLIT)(_next(0xFFFF))


def _head(h: Callable[[int], int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        f = split(b)
        f.put_heads(h(f.q))
        b.kick()

    return body


scenario("head-eq-qsize", "A4", Expect.VIOLATION, "avail head == queue size", {"head-out-of-range"}, **SPLIT)(
    _head(lambda q: q)
)
scenario("head-ffff", "A4", Expect.VIOLATION, "avail head 0xffff", {"head-out-of-range"}, **SPLIT)(
    _head(lambda q: 0xFFFF)
)


def _avail_idx(v: Callable[[int], int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        f = split(b)
        for i in range(f.q):
            f.raw_desc(i, b.buf(16), 16, WRITE)
        f.set_avail_idx(v(f.q))
        b.kick()

    return body


scenario(
    "avail-idx-jump",
    "C22",
    Expect.VIOLATION,
    "avail idx runs queue size + 1 ahead",
    {"avail-idx-jump"},
    **SPLIT,
)(_avail_idx(lambda q: q + 1))
scenario(
    "avail-idx-backwards",
    "C22",
    Expect.VIOLATION,
    "avail idx moves back (0xffff)",
    {"avail-idx-jump"},
    **SPLIT,
)(_avail_idx(lambda q: 0xFFFF))
scenario("avail-idx-half", "C22", Expect.VIOLATION, "avail idx 0x8000", {"avail-idx-jump"}, **SPLIT)(
    _avail_idx(lambda q: 0x8000)
)
scenario(
    "in-flight-over-qsize",
    "C23",
    Expect.VIOLATION,
    "2 x queue size heads offered at once",
    {"avail-idx-jump", "too-many-in-flight"},
    **SPLIT,
)(_avail_idx(lambda q: 2 * q))


@scenario(
    "duplicate-heads",
    "C24",
    Expect.LEGAL,
    "the same head offered twice in one kick (completed in between)",
    **SPLIT,
    devices=("rng",),
)
def _dup_heads(b: Bench) -> None:
    f = split(b)
    f.raw_desc(0, b.buf(16), 16, WRITE)
    f.put_heads(0, 0)
    b.kick()
    require(b.published() == 2, f"{b.published()} completions for two offers")


@scenario(
    "toctou-desc-rewritten",
    "C25",
    Expect.LEGAL,
    "the driver rewrites the descriptor as the device reads it",
    devices=("rng",),
)
def _toctou(b: Bench) -> None:
    f = b.bring_up()
    at = b.buf(64)
    b.post([Seg(at, 64, True)])
    watch = b.watch
    flipped: list[int] = []
    real = watch.device_read

    def read_then_flip(addr: int, length: int) -> None:
        real(addr, length)
        if not flipped and f.desc <= addr < f.desc + 16 * f.q:
            flipped.append(1)  # the device has its snapshot; now the driver lies
            watch.memory.write(f.desc, f.desc_codec.pack(1 << 40, 0xFFFFFFFF, WRITE, 0))

    watch.device_read = read_then_flip  # type: ignore[method-assign]
    b.kick()
    watch.device_read = real  # type: ignore[method-assign]
    f.writable.append((at, 64))


@scenario("guest-writes-used-ring", "C26", Expect.LEGAL, "the driver scribbles over the used ring", **SPLIT)
def _used_scribble(b: Bench) -> None:
    f = split(b)
    b.watch.write(f.used, b"\xff" * L.used_ring_size(f.q))
    before = b.published()
    b.post(b.good_request())
    b.kick()
    require(b.published() == before + 1, "not served")
    require(f.used_idx() == 1, f"device trusted the scribbled used idx: {f.used_idx()}")


@scenario("used-event-poison", "C27", Expect.LEGAL, "used_event 0xffff with EVENT_IDX", **SPLIT)
def _used_event(b: Bench) -> None:
    f = split(b)
    f.set_used_event(0xFFFF)
    f.set_avail_flags(0xFFFF)
    b.post(b.good_request())
    b.kick()
    require(b.published() == 1, "not served")


@scenario(
    "index-wrap-16bit", "C28", Expect.LEGAL, "indices cross 0xffff -> 0 (history fast-forwarded)", **SPLIT
)
def _wrap16(b: Bench) -> None:
    f = split(b)
    start = 0xFFFC
    ring = b.vdevs[0]._ring(b.vdevs[0].queues[b.qi])
    ring.last_avail = ring._shadow_avail = ring.used_idx = start  # type: ignore[attr-defined]
    f.avail_idx = start
    f.set_avail_idx(start)
    b.watch.write(f.used + L.RING_IDX_OFFSET, f.idx_codec.pack(start))
    for _ in range(8):
        b.post(b.good_request())
        b.kick()
    require(b.published() == 8, f"{b.published()} of 8 requests across the wrap served")
    require(f.used_idx() == (start + 8) & 0xFFFF, f"used idx {f.used_idx():#x} after the wrap")


@scenario("ring-laps", "C28", Expect.LEGAL, "three laps of the ring (slot and wrap-counter wrap)")
def _laps(b: Bench) -> None:
    f = b.bring_up()
    n = 3 * f.q if f.q <= 64 else f.q + 8  # legacy queues are large: one wrap is enough
    for _ in range(n):
        b.post(b.good_request())
        b.kick()
    require(b.published() == n, f"{b.published()} of {n} served")


# --------------------------------------------------------------------------- C29. packed

PACKED: dict[str, Any] = {"rings": ("packed",)}
AV, US = PACKED_DESC_F.AVAIL, PACKED_DESC_F.USED


def _packed_flags(flags: Callable[[PackedForge], int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        f = packed(b)
        f.raw_desc(0, b.buf(16), 16, 0, WRITE | flags(f))
        b.kick()
        require(b.published() == 0, "a descriptor that is not available was consumed")

    return body


scenario("packed-avail-and-used", "C29", Expect.IGNORED, "AVAIL and USED both set", **PACKED)(
    _packed_flags(lambda f: AV | US)
)
scenario("packed-neither-bit", "C29", Expect.IGNORED, "AVAIL and USED both clear", **PACKED)(
    _packed_flags(lambda f: 0)
)
scenario("packed-wrong-wrap", "C29", Expect.IGNORED, "a descriptor marked for the other lap", **PACKED)(
    _packed_flags(lambda f: f.avail_bits(0))
)


def _packed_id(bid: Callable[[int], int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        f = packed(b)
        f.post([writable(b, 16)], buf_id=bid(f.q))
        b.kick()

    return body


scenario(
    "packed-id-eq-qsize",
    "C29",
    Expect.VIOLATION,
    "buffer id == queue size",
    {"buffer-id-out-of-range"},
    **PACKED,
)(_packed_id(lambda q: q))
scenario("packed-id-ffff", "C29", Expect.VIOLATION, "buffer id 0xffff", {"buffer-id-out-of-range"}, **PACKED)(
    _packed_id(lambda q: 0xFFFF)
)


@scenario(
    "packed-duplicate-id",
    "C29",
    Expect.LEGAL,
    "two chains with one buffer id (the first completed before)",
    devices=("rng",),
    **PACKED,
)
def _packed_dup(b: Bench) -> None:
    f = packed(b)
    f.post([writable(b, 16)], buf_id=1)
    f.post([writable(b, 16)], buf_id=1)
    b.kick()
    require(b.published() == 2, "not both served")


@scenario(
    "packed-chain-wraps-forever",
    "A2",
    Expect.VIOLATION,
    "every descriptor has NEXT: a chain longer than the ring",
    {"chain-too-long", "ring-overrun", "desc-wrap-bits"},
    **PACKED,
)
def _packed_long(b: Bench) -> None:
    f = packed(b)
    for i in range(f.q):
        f.raw_desc(i, b.buf(8), 8, 0, WRITE | NEXT | f.avail_bits())
    b.kick()


@scenario(
    "packed-reserved-event-flags",
    "C29",
    Expect.LEGAL,
    "driver event suppression flags 3 (reserved)",
    **PACKED,
)
def _packed_event(b: Bench) -> None:
    f = packed(b)
    b.watch.write(f.avail, (0xFFFF).to_bytes(2, "little") + (3).to_bytes(2, "little"))
    b.post(b.good_request())
    b.kick()
    require(b.published() == 1, "not served")


# --------------------------------------------------------------------------- F. IOMMU

IOMMU: dict[str, Any] = {"transports": ("iommu",)}
one_bad(
    "iova-unmapped",
    "F45",
    "a buffer at an IOVA nothing maps (RAM behind it)",
    lambda b: Seg(UNMAPPED, 64, True),
    **IOMMU,
)
one_bad(
    "iova-readonly-written",
    "F46",
    "a device-writable buffer on a read-only mapping",
    lambda b: Seg(READ_ONLY, 64, True),
    **IOMMU,
)
one_bad(
    "iova-gap-spanning",
    "F45",
    "a buffer spanning the end of a mapping into a gap",
    lambda b: Seg(AREA[0] + DATA_END - 32, 64, True),
    **IOMMU,
)


@scenario(
    "unmap-while-live",
    "F49",
    Expect.VIOLATION,
    "the ring's mapping is removed while the queue is live",
    {"ring-address", "dma", "bad-address"},
    **IOMMU,
)
def _unmap_live(b: Bench) -> None:
    b.bring_up()
    b.post(b.good_request())
    b.kick()
    iommu = b.setup.iommu
    assert iommu is not None
    iommu.unmap(DOMAIN[0], AREA[0], AREA[0] + DATA_END - 1)
    b.post(b.good_request())
    b.kick()
    require(b.published() == 1, "the device used memory after its mapping was removed")


@scenario(
    "ring-on-unmapped-iova",
    "F50",
    Expect.VIOLATION,
    "the rings sit at IOVAs nothing maps",
    {"ring-address", "dma", "bad-address"},
    **IOMMU,
)
def _ring_unmapped(b: Bench) -> None:
    b.negotiate()
    b.map_iommu(0)
    p = b.ports[0]
    p.select(b.qi)
    p.set_size(8)
    p.set_rings(UNMAPPED, UNMAPPED + 0x1000, UNMAPPED + 0x2000)
    p.enable()
    b.driver_ok()
    b.watch.write(UNMAPPED + 0x1000, b"\x00\x00\x01\x00")  # avail idx 1 (packed: desc flags garbage)
    b.watch.write(UNMAPPED, bytes(14) + b"\x80\x00")
    b.kick()
