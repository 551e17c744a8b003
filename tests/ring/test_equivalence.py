"""Split and packed rings driven by one random workload must deliver the same buffers.

A hypothesis state machine owns a split pair and a packed pair (driver and device each)
and applies every step to both: add a chain (mixed lengths, direct or indirect), kick,
let the device pop some, complete some (random amounts, random order), ask for an
interrupt, toggle notification suppression on either side, reap. Queues are small, so
both wrap counters of the packed ring flip many times in one run, and the split ring's
queue size may differ from the packed one (which need not be a power of two).

What must hold at every step:

* the device sides pop the same tokens in the same order, with the same readable bytes
  and the same writable segments;
* the driver sides reap the same (token, length) sequence, and the buffers hold the same
  bytes (what the device wrote, canaries everywhere else);
* every kick and interrupt decision matches a brute-force model of that format's event
  suppression (split: flags / used_event / avail_event windows; packed: ENABLE, DISABLE,
  or a DESC offset/wrap looked up position by position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.support.ringpair import RingPair
from virtio_sim import layouts as L
from virtio_sim.ring.chain import Chain, ChainWriter, read_all
from virtio_sim.ring.packed import lap_wrap
from virtio_sim.ring.types import IDX_MASK
from virtio_sim.spec import AVAIL_F, PACKED_EVENT_F, USED_F

SLOT = 0x1000  # data bytes per in-flight token
GAP = 8
CANARY = 0xC3
MAX_SEG = 200
MAX_SEGS = 6


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 37 + i * 11 + 5) % 253 for i in range(n))


def in_window(event: int, old: int, new: int) -> bool:
    return ((event - old) & IDX_MASK) < ((new - old) & IDX_MASK)


@dataclass
class Token:
    n: int
    slot: int
    readable: list[tuple[int, int]]  # (offset in slot, length)
    writable: list[tuple[int, int]]
    expected: bytearray
    written: int | None = None


@dataclass
class Side:
    """One ring format: the pair plus what the test knows about it."""

    pair: RingPair
    by_head: dict[int, int] = field(default_factory=dict)  # head/buffer id -> token
    popped: dict[int, Chain] = field(default_factory=dict)  # token -> chain, not completed
    # model state for notification decisions
    signalled: int = 0
    signalled_valid: bool = False

    @property
    def fmt(self) -> str:
        return self.pair.fmt

    def base(self, t: Token) -> int:
        return self.pair.data + t.slot * SLOT

    def u16(self, addr: int) -> int:
        return int.from_bytes(self.pair.mem.read(addr, 2), "little")

    def event(self, addr: int) -> tuple[int, int]:
        word, flags = L.EVENT_SUPPRESS_CODEC.unpack(self.pair.mem.read(addr, 4))
        return word, flags

    # -- brute-force models ----------------------------------------------------

    def packed_event_hit(self, word: int, old: int, new: int) -> bool:
        q = self.pair.q
        off, wrap = word & 0x7FFF, word >> 15
        if off >= q:
            return True
        return any(p % q == off and lap_wrap(p, q) == wrap for p in range(old, new))

    def expect_kick(self, event_idx: bool) -> bool:
        d, a = self.pair.driver, self.pair.addrs
        if self.fmt == "packed":
            old, new = d._kicked_pos, d._avail_pos
            if old == new:
                return False
            word, flags = self.event(a.used)
            if flags == PACKED_EVENT_F.DESC and event_idx:
                return self.packed_event_hit(word, old, new)
            return flags != PACKED_EVENT_F.DISABLE
        old, new = d._kicked_avail, d.avail_idx
        if old == new:
            return False
        if event_idx:
            return in_window(self.u16(a.used + L.avail_event_offset(self.pair.q)), old, new)
        return not self.u16(a.used) & USED_F.NO_NOTIFY

    def expect_interrupt(self, event_idx: bool) -> bool:
        """Called after the device flushed; updates the model's signalled position."""
        v, a = self.pair.device, self.pair.addrs
        new = v._used_pos if self.fmt == "packed" else v.used_idx
        old, valid = self.signalled, self.signalled_valid
        self.signalled, self.signalled_valid = new, True
        if self.fmt == "packed":
            word, flags = self.event(a.avail)
            if flags == PACKED_EVENT_F.DISABLE:
                return False
            if flags == PACKED_EVENT_F.DESC and event_idx:
                return not valid or self.packed_event_hit(word, old, new)
            return True
        if event_idx:
            used_event = self.u16(a.avail + L.used_event_offset(self.pair.q))
            return not valid or in_window(used_event, old, new)
        return not self.u16(a.avail) & AVAIL_F.NO_INTERRUPT


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    qs = 1 << draw(st.integers(0, 4))
    qp = draw(st.integers(1, 20))
    indirect = draw(st.booleans())
    in_order = draw(st.booleans())
    return {
        "q_split": qs,
        "q_packed": qp,
        "event_idx": draw(st.booleans()),
        "indirect": indirect,
        "in_order": in_order,
        "batch": in_order and draw(st.booleans()),
    }


@st.composite
def chain_shapes(draw: st.DrawFn) -> tuple[list[int], list[int], bool | None]:
    """Readable and writable lengths (at least one buffer), and the indirect choice."""
    n = draw(st.integers(1, MAX_SEGS))
    lens = draw(st.lists(st.integers(1, MAX_SEG), min_size=n, max_size=n))
    split = draw(st.integers(0, n))
    return lens[:split], lens[split:], draw(st.sampled_from([None, True, False]))


class RingEquivalence(RuleBasedStateMachine):
    @initialize(cfg=configs())
    def setup(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        slots = max(cfg["q_split"], cfg["q_packed"]) + 1
        common = {
            "event_idx": cfg["event_idx"],
            "indirect": cfg["indirect"],
            "in_order": cfg["in_order"],
            "batch": cfg["batch"],
            "data_size": SLOT * slots,
            "max_indirect": 2 * MAX_SEGS,
        }
        self.sides = [
            Side(RingPair("split", cfg["q_split"], **common)),
            Side(RingPair("packed", cfg["q_packed"], **common)),
        ]
        self.tokens: dict[int, Token] = {}
        self.free_slots = list(range(slots))
        self.next_token = 0
        self.popped_order: list[int] = []  # tokens popped (both sides) and not completed
        self.delivered: set[int] = set()
        self.reaped: list[tuple[int, int]] = []
        self.kicks = self.irqs = 0

    def teardown(self) -> None:
        if not hasattr(self, "sides"):
            return
        try:
            self.drain()
            for s in self.sides:
                assert not s.pair.driver.inflight and not s.pair.device.in_flight
                assert s.pair.driver.num_free == s.pair.q
                if s.pair.pool is not None:
                    assert not s.pair.pool.live
            assert {t for t, _ in self.reaped} == set(range(self.next_token)) == self.delivered
            packed = self.sides[1].pair.device
            target(float(packed._used_pos / packed.size), label="packed laps")
        finally:
            for s in self.sides:
                s.pair.close()

    # -- driver ------------------------------------------------------------------

    def fits(self, n: int, indirect: bool) -> bool:
        return all(s.pair.driver.num_free >= (1 if indirect else n) for s in self.sides)

    @rule(shape=chain_shapes(), kick=st.booleans())
    def add(self, shape: tuple[list[int], list[int], bool | None], kick: bool) -> None:
        reads, writes, use_indirect = shape
        n = len(reads) + len(writes)
        if not self.cfg["indirect"]:
            use_indirect = None
        will_indirect = use_indirect or (use_indirect is None and self.cfg["indirect"] and n > 1)
        if not will_indirect and n > min(s.pair.q for s in self.sides):
            return  # a direct chain longer than a ring is never legal
        if not self.fits(n, bool(will_indirect)) or not self.free_slots:
            self.drain()
        tok = self.next_token
        self.next_token += 1
        slot = self.free_slots.pop()
        expected = bytearray([CANARY]) * SLOT
        pos = 0
        readable, writable = [], []
        for i, ln in enumerate(reads):
            data = pattern(tok * 16 + i, ln)
            expected[pos : pos + ln] = data
            readable.append((pos, ln))
            pos += ln + GAP
        for ln in writes:
            writable.append((pos, ln))
            pos += ln + GAP
        t = Token(tok, slot, readable, writable, expected)
        self.tokens[tok] = t
        for s in self.sides:
            b = s.base(t)
            s.pair.mem.write(b, bytes(expected))
            head = s.pair.driver.add(
                [(b + o, ln) for o, ln in readable],
                [(b + o, ln) for o, ln in writable],
                tok,
                use_indirect=use_indirect,
            )
            assert head not in s.by_head
            s.by_head[head] = tok
        if kick:
            self.kick()

    @rule()
    def kick(self) -> None:
        for s in self.sides:
            want = s.expect_kick(self.cfg["event_idx"])
            assert s.pair.driver.kick_prepare() == want, s.fmt
            self.kicks += want

    @rule()
    def reap(self) -> None:
        got = []
        for s in self.sides:
            seq = []
            while (r := s.pair.driver.get_used()) is not None:
                seq.append(r)
            assert not s.pair.driver.more_used()
            got.append(seq)
        assert got[0] == got[1], "split and packed reaped different buffers"
        for tok, length in got[0]:
            t = self.tokens.pop(tok)
            assert t.written is not None, f"token {tok} reaped before it was completed"
            assert length == t.written
            for s in self.sides:
                assert s.pair.mem.read(s.base(t), SLOT) == bytes(t.expected), s.fmt
            self.free_slots.append(t.slot)
            self.reaped.append((tok, length))

    @rule(enable=st.booleans())
    def driver_callbacks(self, enable: bool) -> None:
        for s in self.sides:
            d = s.pair.driver
            if enable:
                assert d.enable_cb() == d.more_used()
            else:
                d.disable_cb()

    # -- device ------------------------------------------------------------------

    @rule(k=st.integers(1, 6))
    def device_pop(self, k: int) -> None:
        seqs = []
        for s in self.sides:
            seq = []
            for _ in range(k):
                c = s.pair.device.pop()
                if c is None:
                    break
                tok = s.by_head.pop(c.head)
                t = self.tokens[tok]
                b = s.base(t)
                assert c.readable == [(b + o, ln) for o, ln in t.readable]
                assert c.writable == [(b + o, ln) for o, ln in t.writable]
                want = b"".join(bytes(t.expected[o : o + ln]) for o, ln in t.readable)
                assert read_all(s.pair.space, c.readable) == want
                s.popped[tok] = c
                seq.append(tok)
            seqs.append(seq)
        assert seqs[0] == seqs[1], "split and packed devices saw different buffers"
        for tok in seqs[0]:
            assert tok not in self.delivered, f"token {tok} delivered twice"
            self.delivered.add(tok)
        self.popped_order += seqs[0]

    @precondition(lambda self: bool(getattr(self, "popped_order", None)))
    @rule(pick=st.integers(0, 1000), pct=st.sampled_from([0, 37, 100, 100]))
    def device_complete(self, pick: int, pct: int) -> None:
        tok = self.popped_order.pop(pick % len(self.popped_order))
        t = self.tokens[tok]
        total = sum(ln for _, ln in t.writable)
        amount = total * pct // 100
        data = pattern(tok + 7777, amount)
        left, pos = amount, 0
        for o, ln in t.writable:
            take = min(ln, left)
            t.expected[o : o + take] = data[pos : pos + take]
            pos += take
            left -= take
        t.written = amount
        for s in self.sides:
            c = s.popped.pop(tok)
            w = ChainWriter(s.pair.space, c.writable)
            assert w.write(data) == amount
            s.pair.device.push(c.head, w.written)

    @rule()
    def interrupt(self) -> None:
        for s in self.sides:
            s.pair.device.flush()
            want = s.expect_interrupt(self.cfg["event_idx"])
            assert s.pair.device.needs_interrupt() == want, s.fmt
            self.irqs += want

    @rule(enable=st.booleans())
    def device_notifications(self, enable: bool) -> None:
        for s in self.sides:
            s.pair.device.set_notification(enable)

    def drain(self) -> None:
        """Complete and reap everything in flight (a driver that ran out of room)."""
        self.kick()
        self.device_pop(10_000)
        while self.popped_order:
            self.device_complete(0, 100)
        self.interrupt()
        self.reap()
        assert not self.tokens

    @invariant()
    def same_progress(self) -> None:
        if not hasattr(self, "sides"):
            return
        split, packed = self.sides
        assert len(split.pair.driver.inflight) == len(packed.pair.driver.inflight)
        # Both devices keep a completion held back for IN_ORDER (batching) in flight until
        # its used entry is written, so their in-flight sets agree too.
        assert len(split.pair.device.in_flight) == len(packed.pair.device.in_flight)


RingEquivalence.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestRingEquivalence = RingEquivalence.TestCase
