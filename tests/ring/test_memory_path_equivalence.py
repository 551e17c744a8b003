"""The lease fast path and the checked path of the rings are equivalent, operation by operation.

A ring reaches its memory in one of three ways, chosen by what the memory offers:

* ``lease``: the address space (and the driver's RAM) hand out direct windows (leases) on
  the ring areas, and the device space a ``fast_window`` for buffer checks: the fast path;
* ``window``: no leases (an address space that counts or logs accesses), but the window;
* ``checked``: neither: every ring word and every buffer check is a read/write/check call
  (what conformance's tracing memory and a qtest link give).

Issue #22 asks for both memory paths under conformance or "proven equivalent per operation
by a test". This is that test: hypothesis draws a ring configuration (split or packed,
queue size, EVENT_IDX, indirect tables, IN_ORDER with or without batching, the byte order
of a legacy guest) and a sequence of ring operations (add and add_batch, kick decisions,
pop and pop_batch, completions by push and push_batch with device writes, flush, interrupt
decisions, notification suppression on both sides, reaping by get_used and
get_used_batch, lease revocation mid-run, and malformed input: bytes written over the
rings as a broken or hostile peer would), and applies every operation to three
independent universes, one per path. After every operation:

* the results are identical (values, or the error class and message for malformed
  input: RingError, DeviceBrokenError, QueueFullError, DmaError);
* the whole guest memory is byte-for-byte identical (rings, indirect tables, buffers);
* the queues' public state agrees (free descriptors, buffers in flight, used entries
  published).

Only the public ring API is used (ringcore restructures the ring internals): the path is
chosen the way production code chooses it, by the memory the queues are given.
``test_the_lease_universe_really_takes_the_fast_path`` shows the comparison is not between
two checked paths, and ``test_a_lease_only_bug_breaks_the_equivalence`` that a bug on the
fast path alone (the packed wrap bug of the mutation harness) is caught by this comparison.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtio_sim import layouts as L
from virtio_sim.dma import DmaError, IdentityAddressSpace
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import GuestMemory, Lease, MemoryAccessError
from virtio_sim.ring.chain import (
    Chain,
    ChainWriter,
    DeviceBrokenError,
    DmaBuffer,
    RingError,
    read_all,
)
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import QueueFullError, SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures

PATHS = ("lease", "window", "checked")
RING_BASE = 0x1000
POOL_SIZE = 0x8000
SLOT = 0x400  # data bytes per chain slot
SLOTS = 64
MEM_SIZE = RING_BASE + 0x4000 + POOL_SIZE + SLOT * SLOTS
CANARY = 0xA5
#: errors a ring raises on bad input or a full queue: compared as (class, message)
RING_ERRORS = (RingError, DeviceBrokenError, QueueFullError, DmaError, MemoryAccessError, MemoryError)


# -- the three memory paths ------------------------------------------------------------------


class CheckedRam:
    """The driver's RAM without leases: every ring word goes through read/write."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.accesses = 0

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        return self.mem.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        self.mem.write(addr, data)


class CheckedSpace:
    """A device address space with neither leases nor a fast window (every access and
    every buffer check is a call), over the same identity mapping."""

    name = "checked"

    def __init__(self, mem: GuestMemory) -> None:
        self.inner = IdentityAddressSpace(mem)
        self.accesses = 0

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        return self.inner.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        self.inner.write(addr, data)

    def check(self, addr: int, length: int, write: bool) -> None:
        self.inner.check(addr, length, write)


class WindowSpace(IdentityAddressSpace):
    """Identity space that counts reads and writes: overriding them withdraws the leases
    (IdentityAddressSpace.lease), the fast window for buffer checks stays."""

    accesses = 0

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        return super().read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        super().write(addr, data)


class LeasingRam:
    """The driver's RAM with leases, counting the accesses that do not go through one."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.accesses = 0

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        return self.mem.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        self.mem.write(addr, data)

    def lease(self, addr: int, length: int, write: bool = True) -> Lease | None:
        return self.mem.lease(addr, length, write)


class LeasingSpace:
    """A device space with leases and the fast window (what IdentityAddressSpace gives),
    counting the accesses that do not go through a lease."""

    name = "identity"

    def __init__(self, mem: GuestMemory) -> None:
        self.inner = IdentityAddressSpace(mem)
        self.fast_window = self.inner.fast_window
        self.accesses = 0

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        return self.inner.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        self.inner.write(addr, data)

    def check(self, addr: int, length: int, write: bool) -> None:
        self.inner.check(addr, length, write)

    def lease(self, addr: int, length: int, write: bool) -> Lease | None:
        return self.inner.lease(addr, length, write)


class Pool:
    """Indirect tables from a fixed window, allocated identically in every universe."""

    def __init__(self, base: int) -> None:
        self.base = self.next = base
        self.live: set[DmaBuffer] = set()

    def alloc(self, size: int, align: int) -> DmaBuffer:
        start = L.align_up(self.next, align)
        if start + size > self.base + POOL_SIZE:
            raise MemoryError("indirect pool exhausted")
        self.next = start + size
        buf = DmaBuffer(start, start, size)
        self.live.add(buf)
        return buf

    def free(self, buf: DmaBuffer) -> None:
        self.live.discard(buf)
        if not self.live:
            self.next = self.base


# -- one universe: memory, driver queue, device queue ----------------------------------------


@dataclass(frozen=True)
class Config:
    fmt: str
    size: int
    event_idx: bool
    indirect: bool
    in_order: bool
    batch: bool
    order: ByteOrder


def ring_addresses(cfg: Config) -> SplitRingAddresses:
    if cfg.fmt == "packed":
        drv = RING_BASE + L.packed_ring_size(cfg.size)
        return SplitRingAddresses(RING_BASE, drv, drv + L.EVENT_SUPPRESS_SIZE)
    avail = RING_BASE + L.desc_table_size(cfg.size)
    used = L.align_up(avail + L.avail_ring_size(cfg.size), 4)
    return SplitRingAddresses(RING_BASE, avail, used)


def ring_end(cfg: Config) -> int:
    a = ring_addresses(cfg)
    if cfg.fmt == "packed":
        return a.used + L.EVENT_SUPPRESS_SIZE
    return a.used + L.used_ring_size(cfg.size)


POOL_BASE = RING_BASE + 0x4000
DATA_BASE = POOL_BASE + POOL_SIZE


@dataclass
class Universe:
    path: str
    cfg: Config
    mem: GuestMemory
    ram: Any
    space: Any
    driver: Any
    device: Any
    popped: list[Chain] = field(default_factory=list)
    next_slot: int = 0

    @classmethod
    def build(cls, path: str, cfg: Config) -> Universe:
        mem = GuestMemory.create(MEM_SIZE)
        mem.fill(DATA_BASE, SLOT * SLOTS, CANARY)
        ram: Any
        space: Any
        if path == "lease":
            ram, space = LeasingRam(mem), LeasingSpace(mem)
        elif path == "window":
            ram, space = CheckedRam(mem), WindowSpace(mem)
        else:
            ram, space = CheckedRam(mem), CheckedSpace(mem)
        addrs = ring_addresses(cfg)
        pool = Pool(POOL_BASE) if cfg.indirect else None
        drv_cls, dev_cls = (
            (PackedDriverQueue, PackedDeviceQueue)
            if cfg.fmt == "packed"
            else (SplitDriverQueue, SplitDeviceQueue)
        )
        drv_features = RingFeatures(event_idx=cfg.event_idx, in_order=cfg.in_order)
        dev_features = RingFeatures(cfg.event_idx, cfg.indirect, cfg.in_order, cfg.batch)
        driver = drv_cls(ram, cfg.size, addrs, drv_features, indirect_pool=pool, order=cfg.order)
        device = dev_cls(space, cfg.size, addrs, dev_features, order=cfg.order)
        return cls(path, cfg, mem, ram, space, driver, device)

    def close(self) -> None:
        self.mem.close()

    def state(self) -> tuple[Any, ...]:
        return (
            self.driver.num_free,
            sorted(self.device.in_flight),
            self.device.published,
            [(c.head, c.readable, c.writable) for c in self.popped],
        )

    def buffers(
        self, nout: int, nin: int, lens: list[int]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Segments inside the next data slot; out segments hold a pattern written now."""
        base = DATA_BASE + (self.next_slot % SLOTS) * SLOT
        self.next_slot += 1
        segs, pos = [], base
        for i in range(nout + nin):
            n = lens[i % len(lens)]
            segs.append((pos, n))
            if i < nout:
                self.mem.write(pos, bytes((pos + k) & 0xFF for k in range(n)))
            pos += n + 8
        return segs[:nout], segs[nout:]


# -- operations ------------------------------------------------------------------------------

Op = tuple[Any, ...]


def _complete(u: Universe, picks: list[int], amounts: list[int], batch: bool) -> Any:
    done: list[tuple[int, int]] = []
    for p, amount in zip(picks, amounts, strict=False):
        if not u.popped:
            break
        chain = u.popped.pop(p % len(u.popped))
        data = read_all(u.space, chain.readable)
        w = ChainWriter(u.space, chain.writable)
        w.write(bytes((chain.head * 7 + k) & 0xFF for k in range(min(amount, chain.writable_len))))
        done.append((chain.head, w.written))
        if not batch:
            u.device.push(chain.head, w.written)
        done.append((len(data), sum(data) & 0xFFFF))
    if batch:
        u.device.push_batch([d for i, d in enumerate(done) if i % 2 == 0])
    return done


def apply(u: Universe, op: Op) -> Any:
    """One operation on one universe; what it returned (or the ring error it raised)."""
    try:
        return _apply(u, op)
    except RING_ERRORS as e:
        return ("error", type(e).__name__, str(e))


def _apply(u: Universe, op: Op) -> Any:
    kind = op[0]
    drv, dev = u.driver, u.device
    if kind == "add":
        _, nout, nin, lens, indirect, token = op
        out, in_ = u.buffers(nout, nin, lens)
        if indirect and not u.cfg.indirect:
            indirect = None  # asking for a table without INDIRECT_DESC is a caller bug
        return drv.add(out, in_, token, use_indirect=indirect)
    if kind == "add_batch":
        _, specs = op
        chains = []
        for nout, nin, lens, token in specs:
            out, in_ = u.buffers(nout, nin, lens)
            chains.append((out, in_, token))
        return drv.add_batch(chains)
    if kind == "kick":
        return drv.kick_prepare()
    if kind == "pop":
        c = dev.pop()
        if c is not None:
            u.popped.append(c)
        return None if c is None else (c.head, c.readable, c.writable, c.descriptors)
    if kind == "pop_batch":
        cs = dev.pop_batch(op[1])
        u.popped += cs
        return [(c.head, c.readable, c.writable, c.descriptors) for c in cs]
    if kind == "has_available":
        return dev.has_available()
    if kind in ("complete", "complete_batch"):
        return _complete(u, op[1], op[2], kind == "complete_batch")
    if kind == "flush":
        dev.flush()
        return None
    if kind == "irq":
        return dev.needs_interrupt()
    if kind == "dev_notif":
        dev.set_notification(op[1])
        return None
    if kind == "enable_cb":
        return drv.enable_cb()
    if kind == "disable_cb":
        drv.disable_cb()
        return None
    if kind == "more_used":
        return drv.more_used()
    if kind == "reap":
        return drv.get_used()
    if kind == "reap_batch":
        return drv.get_used_batch()
    if kind == "notify_data":
        return (drv.notify_data(), dev.check_notify_data(*drv.notify_data()))
    if kind == "revoke":
        u.mem.revoke_leases()  # IOMMU UNMAP, private pages: the fast path must fall back
        return None
    if kind == "bump":
        _, where, delta, flag = op
        return _bump(u, where, delta, flag)
    if kind == "corrupt":
        _, where, data = op
        span = ring_end(u.cfg) - RING_BASE
        u.mem.write(RING_BASE + where % (span - len(data) + 1), data)
        return None
    raise AssertionError(f"unknown operation {op!r}")


def _bump(u: Universe, where: int, delta: int, flag: bool) -> None:
    """A peer moving the ring's indices or flags (the malformed input a device or driver
    meets most): split, the avail index (flag) or the used index moved by ``delta``;
    packed, one descriptor's AVAIL (flag) or USED bit flipped, or its id changed."""
    a, cfg = ring_addresses(u.cfg), u.cfg
    if cfg.fmt == "split":
        addr = (a.avail if flag else a.used) + L.RING_IDX_OFFSET
        fmt = ">H" if cfg.order == "big" else "<H"
        (idx,) = struct.unpack(fmt, u.mem.read(addr, 2))
        u.mem.write(addr, struct.pack(fmt, (idx + delta) & 0xFFFF))
        return
    slot = a.desc + (where % cfg.size) * L.DESC_SIZE
    if delta % 3 == 0:
        u.mem.write(slot + 12, struct.pack("<H", (where >> 4) % (cfg.size + 2)))
        return
    (flags,) = struct.unpack("<H", u.mem.read(slot + 14, 2))
    u.mem.write(slot + 14, struct.pack("<H", flags ^ (0x80 if flag else 0x8000)))


# -- strategies ------------------------------------------------------------------------------

#: operation kinds, the ones that carry buffers along (add, pop, complete, reap) weighted up
#: so that most sequences move many buffers through every path
KINDS = (
    ["add"] * 4 + ["add_batch"] * 2 + ["kick"] * 2 + ["pop"] * 3 + ["pop_batch"] * 2
    + ["complete"] * 3 + ["complete_batch"] * 3 + ["reap"] * 3 + ["reap_batch"] * 2 + ["irq"] * 2
    + ["has_available", "flush", "dev_notif", "enable_cb", "disable_cb", "more_used", "notify_data", "revoke"]
)  # fmt: skip


def build_op(raw: tuple[Any, ...]) -> Op:
    """One operation from a flat draw (one tuple strategy shrinks better than a one_of)."""
    kind, nout, nin, lens, indirect, token, picks, amounts, flag, where, data = raw
    if kind == "add":
        return (kind, nout, nin if nout + nin else 1, lens, indirect, token)
    if kind == "add_batch":
        # mostly one-buffer chains (the batch fast path), some longer ones in between
        shapes = [(1, 0), (0, 1), (0, 1), (1, 2)]
        return (kind, [(*shapes[p % 4], lens, token + i) for i, p in enumerate(picks or [1])])
    if kind == "pop_batch":
        return (kind, 1 + nout + nin)
    if kind in ("complete", "complete_batch"):
        return (kind, picks or [0], amounts or [lens[0]])
    if kind == "dev_notif":
        return (kind, flag)
    if kind == "corrupt":
        return (kind, where, data)
    if kind == "bump":
        # mostly a small step (stale entries become visible), sometimes a wild jump
        return (kind, where, 1 + (where % 3 if where & 0x700 else where), flag)
    return (kind,)


def op_strategy(corrupt: bool) -> st.SearchStrategy[Op]:
    kinds = KINDS + ["corrupt"] * 2 + ["bump"] * 4 if corrupt else KINDS
    return st.tuples(
        st.sampled_from(kinds),
        st.integers(0, 3),
        st.integers(0, 3),
        st.lists(st.integers(1, 96), min_size=1, max_size=4),
        st.sampled_from([None, False, True]),
        st.integers(0, 1 << 20),
        st.lists(st.integers(0, 7), max_size=4),
        st.lists(st.integers(0, 300), max_size=4),
        st.booleans(),
        st.integers(0, 1 << 16),
        st.binary(min_size=1, max_size=8),
    ).map(build_op)


@st.composite
def configs(draw: Callable[..., Any], fmt: str) -> Config:
    order: ByteOrder = "little"  # packed rings are VERSION_1 only
    if fmt == "packed":
        size = draw(st.sampled_from([1, 2, 3, 4, 5, 8]))
    else:
        size = draw(st.sampled_from([1, 2, 4, 8, 16]))
        order = draw(st.sampled_from(["little", "little", "big"]))  # a legacy big-endian guest
    in_order = draw(st.sampled_from([False, False, False, True]))
    return Config(
        fmt, size, draw(st.booleans()), draw(st.booleans()), in_order, in_order and draw(st.booleans()), order
    )


# -- the comparison --------------------------------------------------------------------------


def run_equivalence(cfg: Config, ops: list[Op]) -> None:
    """Apply ``ops`` to one universe per path; fail at the first operation after which the
    results, the guest memory or the queues' state differ."""
    universes = [Universe.build(p, cfg) for p in PATHS]
    try:
        first = universes[0]
        for u in universes[1:]:
            assert u.mem.read(0, MEM_SIZE) == first.mem.read(0, MEM_SIZE), "set-up differs"
        for step, op in enumerate(ops):
            results = [apply(u, op) for u in universes]
            for u, r in zip(universes[1:], results[1:], strict=True):
                where = f"{cfg} step {step} {op!r}: {first.path} vs {u.path}"
                assert r == results[0], f"{where}: results {results[0]!r} != {r!r}"
                assert u.state() == first.state(), f"{where}: queue state differs"
                mine, theirs = first.mem.read(0, MEM_SIZE), u.mem.read(0, MEM_SIZE)
                if mine != theirs:
                    at = next(i for i in range(MEM_SIZE) if mine[i] != theirs[i])
                    raise AssertionError(f"{where}: guest memory differs first at {at:#x}")
    finally:
        for u in universes:
            u.close()


EQUIV = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", ["split", "packed"])
@EQUIV
@given(data=st.data())
def test_well_formed_operations_are_equivalent_on_every_memory_path(fmt: str, data: st.DataObject) -> None:
    cfg = data.draw(configs(fmt))
    run_equivalence(cfg, data.draw(st.lists(op_strategy(corrupt=False), min_size=20, max_size=80)))


@pytest.mark.parametrize("fmt", ["split", "packed"])
@EQUIV
@given(data=st.data())
def test_malformed_rings_give_the_same_errors_on_every_memory_path(fmt: str, data: st.DataObject) -> None:
    cfg = data.draw(configs(fmt))
    run_equivalence(cfg, data.draw(st.lists(op_strategy(corrupt=True), min_size=20, max_size=80)))


# -- the comparison is meaningful ------------------------------------------------------------


def _workload(n: int) -> list[Op]:
    ops: list[Op] = []
    for i in range(n):
        ops += [
            ("add", 1, 1, [32], None, i),
            ("kick",),
            ("pop",),
            ("complete", [0], [16]),
            ("irq",),
            ("reap",),
        ]
    return ops


@pytest.mark.parametrize("fmt", ["split", "packed"])
def test_the_lease_universe_really_takes_the_fast_path(fmt: str) -> None:
    """Ring words go through leases in the lease universe and through calls in the
    checked one: the equivalence compares two different code paths."""
    cfg = Config(fmt, 4, False, False, False, False, "little")
    counts = {}
    for path in PATHS:
        u = Universe.build(path, cfg)
        try:
            ram0, space0 = u.ram.accesses, u.space.accesses
            for op in _workload(12):
                assert not (isinstance(r := apply(u, op), tuple) and r and r[0] == "error"), r
            counts[path] = (u.ram.accesses - ram0, u.space.accesses - space0)
        finally:
            u.close()
    lease, checked = counts["lease"], counts["checked"]
    assert lease[0] < checked[0] and lease[1] < checked[1], counts
    if fmt == "split":
        # every ring word through a lease; the device's data moves (read_all, ChainWriter)
        # are calls on every path: 2 per request
        assert lease == (0, 2 * 12), counts
    else:
        # packed: the descriptor ring is leased; the event suppression areas are one
        # checked access per kick / interrupt decision
        assert lease[0] <= 4 * 12 < checked[0] and lease[1] <= 3 * 12 < checked[1], counts


_orig_packed_push = PackedDeviceQueue.push


def _packed_push_wrong_lap_on_the_lease(self: PackedDeviceQueue, head: int, written: int) -> None:
    """The mutation harness's packed-lease-path-wrap bug, through the public API only:
    after a normal push, the used flags of the slot just written are flipped to the other
    lap, but only when the ring holds a lease (the fast path)."""
    pos = self.used_idx
    wrap = self.used_wrap
    _orig_packed_push(self, head, written)
    if not isinstance(self.space, LeasingSpace) or wrap == 0:
        return
    addr = self.addrs.desc + pos * 16 + 14
    flags = struct.unpack("<H", self.space.read(addr, 2))[0]
    self.space.write(addr, struct.pack("<H", flags ^ 0x8080))


def test_a_lease_only_bug_breaks_the_equivalence(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config("packed", 4, False, False, False, False, "little")
    run_equivalence(cfg, _workload(10))  # well-behaved: equivalent
    monkeypatch.setattr(PackedDeviceQueue, "push", _packed_push_wrong_lap_on_the_lease)
    with pytest.raises(AssertionError, match="lease vs"):
        run_equivalence(cfg, _workload(10))


def test_a_driver_moving_avail_idx_back_meets_the_same_checks_on_every_path() -> None:
    """Found by the malformed-input comparison above: the device has entries announced
    (avail idx 3, stale heads) and the driver then writes a smaller avail idx. pop() takes
    the announced entry (and refuses its head, already in flight); the lease path's
    pop_batch() used to read the idx again first, saw nothing and returned []."""
    cfg = Config("split", 8, True, False, False, False, "little")
    ops: list[Op] = [("bump", 0, 3, True), ("pop",), ("pop",)]
    ops += [("add", 0, 1, [60], None, 1), ("add", 0, 1, [60], None, 2), ("pop_batch", 2)]
    run_equivalence(cfg, ops)
