"""Split virtqueue: a Linux-style driver and a QEMU-style device over one GuestMemory.

The property test drives both sides through random rounds: random chains (readable then
writable segments, direct or indirect), out-of-order and partial completion, notification
suppression toggled on both sides, and free-running indices started close to 65535 so that
they wrap. A small model predicts every kick and interrupt decision independently of
``need_event`` and the exact bytes of every buffer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from virtio_sim import layouts as L
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import (
    Chain,
    ChainReader,
    ChainWriter,
    DmaBuffer,
    RingError,
    read_all,
)
from virtio_sim.ring.mock import MockPool, split_layout
from virtio_sim.ring.split import (
    IDX_MASK,
    QueueFullError,
    SplitDeviceQueue,
    SplitDriverQueue,
    SplitRingAddresses,
    check_queue_size,
    need_event,
)
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import AVAIL_F, DESC_F, USED_F

MAX_SEGS = 8  # segments per chain in the random tests
MAX_SEG_LEN = 300
SLOT = 4096  # data bytes reserved per in-flight chain (MAX_SEGS * (MAX_SEG_LEN + gap) fits)
GAP = 8  # canary bytes between the segments of a chain
CANARY = 0xCC


def in_window(event: int, old: int, new: int) -> bool:
    """Reference for need_event: is ``event`` one of the indices in [old, new) (mod 2^16)?"""
    return ((event - old) & IDX_MASK) < ((new - old) & IDX_MASK)


@dataclass
class Layout:
    desc: int
    avail: int
    used: int
    pool: int
    pool_size: int
    data: int
    total: int

    @classmethod
    def for_queue(cls, q: int, slots: int | None = None) -> Layout:
        desc, avail, used = split_layout(0x1000, q)  # minimum alignments only
        pool = L.align_up(used + L.used_ring_size(q), 0x1000)
        pool_size = 0x40000
        data = pool + pool_size
        total = data + SLOT * (slots if slots is not None else q) + 0x1000
        return cls(desc, avail, used, pool, pool_size, data, total)


class Pair:
    """A driver queue and a device queue sharing one ring in one guest memory."""

    def __init__(
        self,
        q: int,
        *,
        event_idx: bool = False,
        indirect: bool = False,
        order: L.ByteOrder = "little",
        start: int = 0,
        slots: int | None = None,
        max_indirect: int | None = None,
    ) -> None:
        self.q = q
        self.order = order
        self.event_idx = event_idx
        self.layout = lay = Layout.for_queue(q, slots)
        self.mem = GuestMemory.create(lay.total)
        self.space = IdentityAddressSpace(self.mem)
        self.addrs = SplitRingAddresses(lay.desc, lay.avail, lay.used)
        self.pool = MockPool(lay.pool, lay.pool_size) if indirect else None
        drv_features = RingFeatures(event_idx=event_idx)
        dev_features = RingFeatures(event_idx=event_idx, indirect=indirect)
        self.driver = SplitDriverQueue(
            self.mem, q, self.addrs, drv_features, indirect_pool=self.pool, order=order
        )
        self.device = SplitDeviceQueue(
            self.space, q, self.addrs, dev_features, order=order, max_indirect=max_indirect
        )
        self.idx = L.ring_index_codec(order)
        if start:
            self.set_indices(start)

    def set_indices(self, n: int) -> None:
        """Both sides as if ``n`` chains had gone round; notifications enabled at ``n``."""
        d, v = self.driver, self.device
        d.avail_idx = d._kicked_avail = d.last_used = n
        v.last_avail = v._shadow_avail = v.used_idx = v._signalled_used = n
        self.write_u16(self.addrs.avail + L.RING_IDX_OFFSET, n)
        self.write_u16(self.addrs.used + L.RING_IDX_OFFSET, n)
        self.write_u16(self.addrs.avail + L.used_event_offset(self.q), n)
        self.write_u16(self.addrs.used + L.avail_event_offset(self.q), n)

    def read_u16(self, addr: int) -> int:
        value: int = self.idx.unpack(self.mem.read(addr, 2))[0]
        return value

    def write_u16(self, addr: int, value: int) -> None:
        self.mem.write(addr, self.idx.pack(value))

    @property
    def avail_event(self) -> int:
        return self.read_u16(self.addrs.used + L.avail_event_offset(self.q))

    @property
    def used_event(self) -> int:
        return self.read_u16(self.addrs.avail + L.used_event_offset(self.q))

    def close(self) -> None:
        self.mem.close()


def pattern(token: int, n: int) -> bytes:
    return bytes((token * 31 + i * 7 + 1) % 251 for i in range(n))


# --------------------------------------------------------------------------- unit checks


@given(event=st.integers(0, IDX_MASK), old=st.integers(0, IDX_MASK), new=st.integers(0, IDX_MASK))
@settings(max_examples=300, deadline=None)
def test_need_event_matches_window_definition(event: int, old: int, new: int) -> None:
    assert need_event(event, new, old) == in_window(event, old, new)


def test_need_event_examples() -> None:
    assert need_event(0, 1, 0)
    assert not need_event(1, 1, 0)
    assert need_event(0xFFFF, 1, 0xFFFE)  # across the wrap
    assert need_event(0xFFFF, 0, 0xFFFF)
    assert not need_event(5, 5, 5)


@pytest.mark.parametrize("size", [0, 3, 6, 100, 65536, 32769, -1])
def test_bad_queue_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        check_queue_size(size)


@pytest.mark.parametrize("size", [1, 2, 256, 32768])
def test_good_queue_sizes(size: int) -> None:
    check_queue_size(size)


def test_chain_reader_writer_and_tail() -> None:
    mem = GuestMemory.create(0x1000)
    try:
        space = IdentityAddressSpace(mem)
        mem.write(0x100, b"abcd")
        mem.write(0x200, b"efgh")
        segs = [(0x100, 4), (0x200, 3)]
        assert read_all(space, segs) == b"abcdefg"
        assert read_all(space, segs, limit=5) == b"abcde"
        r = ChainReader(space, segs)
        assert r.remaining == 7
        assert r.read(3) == b"abc"
        assert r.read(3) == b"def"
        assert r.remaining == 1
        assert r.read(10) == b"g"
        assert r.read(1) == b""
        mem.fill(0x300, 0x100, CANARY)
        out = [(0x300, 4), (0x320, 2), (0x340, 3)]
        w = ChainWriter(space, out)
        assert w.write(b"12") == 2
        assert w.write(b"3456") == 4
        assert w.remaining == 3
        assert w.write(b"789XYZ") == 3  # clamped at the end of the writable area
        assert w.write(b"!") == 0
        assert w.written == 9
        assert mem.read(0x300, 5) == b"1234\xcc"
        assert mem.read(0x31F, 4) == b"\xcc56\xcc"
        assert mem.read(0x340, 4) == b"789\xcc"
        mem.fill(0x300, 0x100, CANARY)
        w = ChainWriter(space, out)
        assert w.write_tail(b"\x01") == 1
        assert mem.read(0x342, 2) == b"\x01\xcc"
        assert w.write_tail(b"xyzw") == 4  # spans the last two segments
        assert mem.read(0x320, 2) == b"\xccx"
        assert mem.read(0x340, 4) == b"yzw\xcc"
        assert w.write_tail(b"x" * 10) == 0  # does not fit: nothing written
        assert w.written == 0  # write_tail does not count towards the sequential position
    finally:
        mem.close()


# --------------------------------------------------------------------------- the model run


@dataclass
class ChainSpec:
    readable: list[int]
    writable: list[int]
    use_indirect: bool | None
    written_pct: int
    kick_after: bool


@dataclass
class Round:
    chains: list[ChainSpec]
    complete_pct: int  # how many of the popped chains the device completes this round
    irq_every_push: bool
    device_notify: bool  # set_notification(...) after the device drained the ring
    driver_cb: bool  # enable_cb() (True) or disable_cb() (False) after reaping
    seed: int


@dataclass
class Outstanding:
    token: int
    head: int
    readable: list[tuple[int, int]]
    writable: list[tuple[int, int]]
    slot: int
    expected: bytearray  # the slot's bytes as the driver expects them after completion
    written: int | None = None


@dataclass
class Model:
    """What both sides should decide, computed without need_event."""

    kicked: int
    avail_event: int
    no_notify: bool = False
    used_event: int = 0
    cb_disabled: bool = False
    signalled: int = 0
    signalled_valid: bool = False
    tokens_added: set[int] = field(default_factory=set)
    tokens_seen_by_device: set[int] = field(default_factory=set)
    tokens_reaped: set[int] = field(default_factory=set)
    kicks: int = 0
    irqs: int = 0


class Runner:
    def __init__(self, pair: Pair, rnd: random.Random) -> None:
        self.p = pair
        self.rnd = rnd
        start = pair.driver.avail_idx
        self.m = Model(kicked=start, avail_event=start, used_event=start, signalled=start)
        self.by_head: dict[int, Outstanding] = {}
        self.by_token: dict[int, Outstanding] = {}
        self.free_slots = list(range(pair.q))
        self.popped: list[tuple[Chain, Outstanding]] = []
        self.next_token = 1

    # -- driver ---------------------------------------------------------------

    def fits(self, n_segs: int, use_indirect: bool) -> bool:
        d = self.p.driver
        return d.num_free >= (1 if use_indirect else n_segs)

    def add(self, spec: ChainSpec) -> None:
        p, d = self.p, self.p.driver
        segs = len(spec.readable) + len(spec.writable)
        will_indirect = spec.use_indirect
        if will_indirect is None:
            will_indirect = p.pool is not None and segs > 1
        if not self.fits(segs, will_indirect):
            self.drain()
            assert self.fits(segs, will_indirect)
        slot = self.free_slots.pop()
        base = p.layout.data + slot * SLOT
        p.mem.fill(base, SLOT, CANARY)
        expected = bytearray([CANARY]) * SLOT
        token = self.next_token
        self.next_token += 1
        pos = 0
        readable, writable = [], []
        for i, n in enumerate(spec.readable):
            data = pattern(token + 1000 * (i + 1), n)
            p.mem.write(base + pos, data)
            expected[pos : pos + n] = data
            readable.append((base + pos, n))
            pos += n + GAP
        for n in spec.writable:
            writable.append((base + pos, n))
            pos += n + GAP
        assert pos <= SLOT
        head = d.add(readable, writable, token, use_indirect=spec.use_indirect)
        assert 0 <= head < p.q
        assert head not in self.by_head
        o = Outstanding(token, head, readable, writable, slot, expected)
        self.by_head[head] = o
        self.by_token[token] = o
        self.m.tokens_added.add(token)
        if spec.kick_after:
            self.kick()

    def kick(self) -> None:
        p, m = self.p, self.m
        old, new = m.kicked, p.driver.avail_idx
        if p.event_idx:
            assert p.avail_event == m.avail_event
            want = old != new and in_window(m.avail_event, old, new)
        else:
            want = old != new and not m.no_notify
        got = p.driver.kick_prepare()
        assert got == want, (old, new, m.avail_event, m.no_notify)
        m.kicked = new
        m.kicks += got

    def reap(self) -> None:
        p, m = self.p, self.m
        while (got := p.driver.get_used()) is not None:
            token, length = got
            assert token not in m.tokens_reaped, f"token {token} returned twice"
            o = self.by_token.pop(token)
            assert o.written is not None, f"token {token} reaped before the device completed it"
            assert length == o.written
            m.tokens_reaped.add(token)
            base = p.layout.data + o.slot * SLOT
            assert p.mem.read(base, SLOT) == bytes(o.expected), f"slot of token {token} corrupted"
            self.free_slots.append(o.slot)
        assert not p.driver.more_used()

    def driver_callbacks(self, enable: bool) -> None:
        p, m = self.p, self.m
        if enable:
            pending = p.driver.enable_cb()
            assert pending == p.driver.more_used()
            if p.event_idx:
                m.used_event = p.driver.last_used
                assert p.used_event == m.used_event
            else:
                m.cb_disabled = False
        else:
            p.driver.disable_cb()
            if not p.event_idx:
                m.cb_disabled = True
        if not p.event_idx:
            flags = p.read_u16(p.addrs.avail)
            assert flags == (AVAIL_F.NO_INTERRUPT if m.cb_disabled else 0)

    # -- device ---------------------------------------------------------------

    def pop_all(self) -> None:
        p, m = self.p, self.m
        while (chain := p.device.pop()) is not None:
            o = self.by_head[chain.head]
            assert o.token not in m.tokens_seen_by_device, f"token {o.token} delivered twice"
            m.tokens_seen_by_device.add(o.token)
            assert chain.readable == o.readable
            assert chain.writable == o.writable
            assert chain.readable_len == sum(n for _, n in o.readable)
            b = self.base(o)
            want = b"".join(bytes(o.expected[a - b : a - b + n]) for a, n in o.readable)
            assert read_all(p.space, chain.readable) == want
            r = ChainReader(p.space, chain.readable)
            assert r.read(r.remaining) == want
            self.popped.append((chain, o))
        assert p.device.last_avail == p.driver.avail_idx

    def base(self, o: Outstanding) -> int:
        return self.p.layout.data + o.slot * SLOT

    def complete(self, chain: Chain, o: Outstanding, pct: int) -> None:
        p = self.p
        total = chain.writable_len
        amount = total * pct // 100
        data = pattern(o.token, amount)
        w = ChainWriter(p.space, chain.writable)
        done = 0
        while done < amount:  # a few writes of random size, crossing segment borders
            step = self.rnd.randint(1, amount - done)
            assert w.write(data[done : done + step]) == step
            done += step
        assert w.written == amount
        # model: the first ``amount`` writable bytes now hold the pattern
        left = amount
        pos = 0
        for a, n in o.writable:
            take = min(n, left)
            off = a - self.base(o)
            o.expected[off : off + take] = data[pos : pos + take]
            pos += take
            left -= take
        o.written = w.written
        p.device.push(chain.head, w.written)
        del self.by_head[chain.head]

    def interrupt(self) -> None:
        p, m = self.p, self.m
        used = p.device.used_idx
        if p.event_idx:
            assert p.used_event == m.used_event
            want = not m.signalled_valid or in_window(m.used_event, m.signalled, used)
            m.signalled, m.signalled_valid = used, True
        else:
            want = not m.cb_disabled
        got = p.device.needs_interrupt()
        assert got == want, (m.used_event, m.signalled, used, m.cb_disabled)
        m.irqs += got

    def device_notifications(self, enable: bool) -> None:
        p, m = self.p, self.m
        assert not p.device.has_available()  # only called on a drained ring
        p.device.set_notification(enable)
        if p.event_idx:
            if enable:
                m.avail_event = p.driver.avail_idx
            assert p.avail_event == m.avail_event
        else:
            m.no_notify = not enable
            flags = p.read_u16(p.addrs.used)
            assert flags == (USED_F.NO_NOTIFY if m.no_notify else 0)

    def device_round(self, pct: int, irq_every_push: bool) -> None:
        self.pop_all()
        self.rnd.shuffle(self.popped)  # out-of-order completion
        k = len(self.popped) * pct // 100
        done, self.popped = self.popped[:k], self.popped[k:]
        for chain, o in done:
            self.complete(chain, o, self.rnd.randint(0, 100))
            if irq_every_push:
                self.interrupt()
        if done and not irq_every_push:
            self.interrupt()

    def drain(self) -> None:
        """Everything in flight completed and reaped (the driver ran out of descriptors)."""
        self.kick()
        self.device_round(100, False)
        self.reap()
        assert not self.popped
        assert self.p.driver.num_free == self.p.q
        assert not self.p.device.in_flight

    def run(self, rounds: list[Round]) -> None:
        for rd in rounds:
            for spec in rd.chains:
                self.add(spec)
            self.kick()
            self.device_round(rd.complete_pct, rd.irq_every_push)
            self.device_notifications(rd.device_notify)
            self.reap()
            self.driver_callbacks(rd.driver_cb)
        self.drain()
        m = self.m
        assert m.tokens_added == m.tokens_seen_by_device == m.tokens_reaped
        assert not self.by_token and not self.by_head
        if self.p.pool is not None:
            assert not self.p.pool.live
            assert self.p.pool.allocs == self.p.pool.frees


@st.composite
def chain_specs(draw: st.DrawFn, q: int, indirect: bool) -> ChainSpec:
    use_indirect = draw(st.sampled_from([None, None, True, False])) if indirect else None
    cap = MAX_SEGS if use_indirect is not False and indirect else min(q, MAX_SEGS)
    n = draw(st.integers(1, cap))
    n_read = draw(st.integers(0, n))
    lens = st.integers(1, MAX_SEG_LEN)
    return ChainSpec(
        readable=draw(st.lists(lens, min_size=n_read, max_size=n_read)),
        writable=draw(st.lists(lens, min_size=n - n_read, max_size=n - n_read)),
        use_indirect=use_indirect,
        written_pct=draw(st.integers(0, 100)),
        kick_after=draw(st.booleans()),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, bool, bool, L.ByteOrder, int, list[Round]]:
    q = 1 << draw(st.integers(0, 8))
    event_idx = draw(st.booleans())
    indirect = draw(st.booleans())
    order: L.ByteOrder = draw(st.sampled_from(["little", "big"]))
    start = draw(
        st.one_of(
            st.just(0),
            st.integers(1, 12).map(lambda k: 0x10000 - k),  # wraps within a round or two
            st.integers(1, 12).map(lambda k: 0x10000 - k),
            st.integers(0, IDX_MASK),
        )
    )
    rounds = draw(
        st.lists(
            st.builds(
                Round,
                chains=st.lists(chain_specs(q, indirect), min_size=0, max_size=min(2 * q + 2, 12)),
                complete_pct=st.sampled_from([0, 50, 100, 100]),
                irq_every_push=st.booleans(),
                device_notify=st.booleans(),
                driver_cb=st.booleans(),
                seed=st.integers(0, 2**32),
            ),
            min_size=1,
            max_size=8,
        )
    )
    return q, event_idx, indirect, order, start, rounds


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_driver_device_round_trip(
    scenario: tuple[int, bool, bool, L.ByteOrder, int, list[Round]],
) -> None:
    q, event_idx, indirect, order, start, rounds = scenario
    pair = Pair(
        q,
        event_idx=event_idx,
        indirect=indirect,
        order=order,
        start=start,
        max_indirect=max(q, MAX_SEGS),
    )
    try:
        runner = Runner(pair, random.Random(rounds[0].seed))
        runner.run(rounds)
        n = len(runner.m.tokens_added)
        event("indices wrapped" if start + n > IDX_MASK else "no wrap")
        event(f"kicks: {'some' if runner.m.kicks else 'none'}, irqs: {bool(runner.m.irqs)}")
        if pair.pool is not None:
            event("indirect tables used" if pair.pool.allocs else "indirect negotiated, unused")
    finally:
        pair.close()


# --------------------------------------------------------------------------- index wrap


@pytest.mark.parametrize("event_idx", [False, True])
def test_indices_wrap_past_65535_from_zero(event_idx: bool) -> None:
    """More than 2^16 buffers through a 4-entry queue, starting from index 0."""
    pair = Pair(4, event_idx=event_idx)
    d, v = pair.driver, pair.device
    rd, wr = (pair.layout.data, 4), (pair.layout.data + 64, 4)
    total = 0x10000 + 40
    try:
        v.set_notification(True)
        d.enable_cb()
        kicks = irqs = 0
        for i in range(0, total, 2):
            d.add([rd], [wr], i)
            d.add([], [wr], i + 1)
            kicks += d.kick_prepare()
            a = v.pop()
            b = v.pop()
            assert a is not None and b is not None and v.pop() is None
            assert a.readable == [rd] and a.writable == [wr] and b.writable == [wr]
            v.push(b.head, 1)
            v.push(a.head, 4)
            irqs += v.needs_interrupt()
            if event_idx:
                v.set_notification(True)
            assert d.get_used() == (i + 1, 1)
            assert d.get_used() == (i, 4)
            assert d.get_used() is None
            d.enable_cb()
        assert d.avail_idx == d.last_used == v.last_avail == v.used_idx == total & IDX_MASK
        assert pair.read_u16(pair.addrs.avail + 2) == total & IDX_MASK
        assert pair.read_u16(pair.addrs.used + 2) == total & IDX_MASK
        # every batch was announced and signalled: notifications stayed enabled
        assert kicks == irqs == total // 2
    finally:
        pair.close()


def test_queue_size_32768_wraps_and_takes_a_full_length_chain() -> None:
    q = 32768
    pair = Pair(q, event_idx=True, indirect=True, start=0x10000 - 20, slots=64)
    d, v = pair.driver, pair.device
    base = pair.layout.data
    try:
        v.set_notification(True)
        for i in range(60):
            d.add([(base + 16 * i, 16)], [(base + 0x1000 + 16 * i, 16)], i, use_indirect=i % 2 == 0)
        assert d.kick_prepare()
        seen = []
        while (c := v.pop()) is not None:
            seen.append(c.head)
            ChainWriter(v.space, c.writable).write(b"\x5a" * 16)
            v.push(c.head, 16)
        assert len(seen) == 60
        assert v.needs_interrupt()
        got = [d.get_used() for _ in range(60)]
        assert sorted(t for t, _ in got) == list(range(60))  # type: ignore[index]
        assert all(n == 16 for _, n in got)  # type: ignore[misc]
        assert d.get_used() is None
        assert d.avail_idx == 40
        # One direct chain of exactly the queue size: legal, uses every descriptor.
        segs = [(base + 8 * i % 0x8000, 8) for i in range(q)]
        head = d.add(segs[: q // 2], segs[q // 2 :], "long", use_indirect=False)
        assert d.num_free == 0
        with pytest.raises(QueueFullError):
            d.add([(base, 1)], [], "no room", use_indirect=False)
        c = v.pop()
        assert c is not None and c.head == head
        assert c.readable == segs[: q // 2] and c.writable == segs[q // 2 :]
        assert c.descriptors == q
        v.push(head, 8)
        assert d.get_used() == ("long", 8)
        assert d.num_free == q
    finally:
        pair.close()


# --------------------------------------------------------------------------- notifications


def test_event_idx_enable_cb_with_nothing_pending_forces_next_interrupt() -> None:
    pair = Pair(8, event_idx=True)
    d, v = pair.driver, pair.device
    wr = [(pair.layout.data, 8)]
    try:
        v.set_notification(True)
        d.add([], wr, "a")
        assert d.kick_prepare()
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert v.needs_interrupt()  # first decision is always "yes"
        assert d.get_used() == ("a", 0)
        # No enable_cb: used_event still 0, the device must stay quiet for the next ones.
        for tok in ("b", "c"):
            d.add([], wr, tok)
            c = v.pop()
            assert c is not None
            v.push(c.head, 0)
            assert not v.needs_interrupt()
            assert d.get_used() == (tok, 0)
        assert d.enable_cb() is False  # nothing pending
        assert pair.used_event == d.last_used == 3
        d.add([], wr, "d")
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert v.needs_interrupt()  # the very next push crosses used_event
        d.add([], wr, "e")
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert not v.needs_interrupt()  # only once
    finally:
        pair.close()


def test_enable_cb_reports_pending_used_buffers() -> None:
    for event_idx in (False, True):
        pair = Pair(4, event_idx=event_idx)
        d, v = pair.driver, pair.device
        try:
            d.disable_cb()
            d.add([], [(pair.layout.data, 4)], "x")
            c = v.pop()
            assert c is not None
            v.push(c.head, 2)
            assert d.enable_cb() is True  # the race check of virtqueue_enable_cb()
            assert d.get_used() == ("x", 2)
            assert d.enable_cb() is False
        finally:
            pair.close()


def test_no_notify_suppresses_kicks_without_event_idx() -> None:
    pair = Pair(8)
    d, v = pair.driver, pair.device
    rd = [(pair.layout.data, 4)]
    try:
        d.add(rd, [], 1)
        assert d.kick_prepare()
        assert not d.kick_prepare()  # nothing new since the last kick
        v.set_notification(False)
        assert pair.read_u16(pair.addrs.used) == USED_F.NO_NOTIFY
        d.add(rd, [], 2)
        assert not d.kick_prepare()
        v.set_notification(True)
        d.add(rd, [], 3)
        assert d.kick_prepare()
    finally:
        pair.close()


def test_no_interrupt_flag_without_event_idx() -> None:
    pair = Pair(8)
    d, v = pair.driver, pair.device
    try:
        d.disable_cb()
        d.add([], [(pair.layout.data, 4)], 1)
        c = v.pop()
        assert c is not None
        v.push(c.head, 0)
        assert not v.needs_interrupt()
        d.enable_cb()
        assert v.needs_interrupt()
    finally:
        pair.close()


def test_event_idx_kick_only_when_avail_event_is_crossed() -> None:
    pair = Pair(8, event_idx=True)
    d, v = pair.driver, pair.device
    rd = [(pair.layout.data, 4)]
    try:
        # avail_event is 0 after the driver zeroed the rings: the first add crosses it.
        d.add(rd, [], 1)
        assert d.kick_prepare()
        d.add(rd, [], 2)
        assert not d.kick_prepare()  # device has not re-armed avail_event
        assert v.pop() is not None and v.pop() is not None and v.pop() is None
        v.set_notification(True)
        assert pair.avail_event == 2
        d.add(rd, [], 3)
        d.add(rd, [], 4)
        assert d.kick_prepare()
        v.set_notification(False)  # a no-op with EVENT_IDX: nothing to write
        assert pair.avail_event == 2
    finally:
        pair.close()


# --------------------------------------------------------------------------- misc driver


def test_driver_zeroes_rings_and_rejects_empty_or_unsupported_chains() -> None:
    q = 4
    lay = Layout.for_queue(q)
    mem = GuestMemory.create(lay.total)
    try:
        mem.fill(0, lay.pool, 0xFF)
        addrs = SplitRingAddresses(lay.desc, lay.avail, lay.used)
        d = SplitDriverQueue(mem, q, addrs)
        assert mem.read(lay.desc, L.desc_table_size(q)) == bytes(L.desc_table_size(q))
        assert mem.read(lay.avail, L.avail_ring_size(q)) == bytes(L.avail_ring_size(q))
        assert mem.read(lay.used, L.used_ring_size(q)) == bytes(L.used_ring_size(q))
        with pytest.raises(ValueError, match="at least one buffer"):
            d.add([], [], "x")
        with pytest.raises(ValueError, match="not negotiated"):
            d.add([(lay.data, 1)], [], "x", use_indirect=True)
        for i in range(q):
            d.add([(lay.data, 1)], [], i)
        with pytest.raises(QueueFullError):
            d.add([(lay.data, 1)], [], "full")
        assert d.avail_idx == q
    finally:
        mem.close()


def test_descriptor_bytes_written_by_the_driver() -> None:
    """The exact descriptors a chain turns into, direct and indirect."""
    for order in ("little", "big"):
        pair = Pair(4, indirect=True, order=order)
        d = pair.driver
        codec = L.desc_codec(order)
        try:
            head = d.add([(0x5000, 10)], [(0x6000, 20), (0x7000, 30)], "t", use_indirect=False)
            descs = d.inflight[head].descs
            raw = [codec.unpack(pair.mem.read(pair.addrs.desc + 16 * i, 16)) for i in descs]
            assert raw == [
                (0x5000, 10, DESC_F.NEXT, descs[1]),
                (0x6000, 20, DESC_F.NEXT | DESC_F.WRITE, descs[2]),
                (0x7000, 30, DESC_F.WRITE, 0),
            ]
            head = d.add([(0x5000, 10)], [(0x6000, 20)], "i")
            ind = d.inflight[head].indirect
            assert ind is not None
            assert codec.unpack(pair.mem.read(pair.addrs.desc + 16 * head, 16)) == (
                ind.dev_addr,
                32,
                DESC_F.INDIRECT,
                0,
            )
            assert [codec.unpack(pair.mem.read(ind.gpa + 16 * i, 16)) for i in range(2)] == [
                (0x5000, 10, DESC_F.NEXT, 1),
                (0x6000, 20, DESC_F.WRITE, 0),
            ]
            idx = L.ring_index_codec(order)
            assert idx.unpack(pair.mem.read(pair.addrs.avail + 2, 2))[0] == 2
            assert idx.unpack(pair.mem.read(pair.addrs.avail + 4, 2))[0] == descs[0]
            assert idx.unpack(pair.mem.read(pair.addrs.avail + 6, 2))[0] == head
        finally:
            pair.close()


class RoundingPool(MockPool):
    """A pool that hands out more than asked for (page-granular allocators do)."""

    def alloc(self, size: int, align: int) -> DmaBuffer:
        return super().alloc(L.align_up(size, 64) + 8, align)


def test_indirect_table_length_is_the_chain_not_the_pool_buffer() -> None:
    pair = Pair(4, indirect=True)
    pair.driver.indirect_pool = pair.pool = RoundingPool(pair.layout.pool, pair.layout.pool_size)
    d, v = pair.driver, pair.device
    try:
        d.add([(pair.layout.data, 4)], [(pair.layout.data + 16, 4)], "t")
        c = v.pop()
        assert c is not None
        assert c.readable == [(pair.layout.data, 4)]
        assert c.writable == [(pair.layout.data + 16, 4)]
        assert c.descriptors == 3  # the indirect descriptor and its two entries
        v.push(c.head, 4)
        assert d.get_used() == ("t", 4)
        assert not pair.pool.live
    finally:
        pair.close()


def test_detach_all_returns_tokens_and_descriptors() -> None:
    pair = Pair(8, indirect=True)
    d, v = pair.driver, pair.device
    try:
        d.add([(pair.layout.data, 4)], [(pair.layout.data + 8, 4)], "a")
        d.add([(pair.layout.data, 4)], [], "b")
        d.add([(pair.layout.data, 4)], [(pair.layout.data + 8, 4)], "c", use_indirect=False)
        assert d.num_free == 8 - 1 - 1 - 2
        assert sorted(d.detach_all()) == ["a", "b", "c"]
        assert d.num_free == 8
        assert pair.pool is not None and not pair.pool.live
        assert len(set(d.free)) == 8
        v.reset()
        assert v.last_avail == v.used_idx == 0 and not v.in_flight
    finally:
        pair.close()


def test_lenient_device_skips_zero_length_descriptors() -> None:
    pair = Pair(4)
    lay = pair.layout
    lenient = SplitDeviceQueue(pair.space, 4, pair.addrs, RingFeatures(strict=False))
    try:
        pair.driver.add([(lay.data, 0), (lay.data, 4)], [(lay.data + 8, 0)], "z")
        c = lenient.pop()
        assert c is not None
        assert c.readable == [(lay.data, 4)] and c.writable == []
        assert c.descriptors == 3
        with pytest.raises(RingError) as e:
            pair.device.pop()  # the strict twin over the same ring
        assert e.value.violation == "zero-length"
        assert e.value.head == c.head
    finally:
        pair.close()
