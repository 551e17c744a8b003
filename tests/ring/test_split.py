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

from tests.support.split_pair import CANARY, GAP, MAX_SEG_LEN, MAX_SEGS, SLOT, Pair, in_window, pattern
from virtio_sim import layouts as L
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import Chain, ChainReader, ChainWriter, read_all
from virtio_sim.ring.split import IDX_MASK, check_queue_size, need_event
from virtio_sim.spec import AVAIL_F, USED_F

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
