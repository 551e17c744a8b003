"""Hypothesis state machines over rings, registers and wire frames.

Each machine drives a real host (the same Bench the corpus uses, or serve() over a
memory link) with random but well-typed operations and checks after every step that
nothing escaped: no exception out of a register access, no device write outside the
buffers the driver made writable, NEEDS_RESET only with a recorded violation, and the
server either answers or ends the connection. CI runs them with a fixed seed and a small
example budget (tests/attacks/test_fuzz.py); ``virtio-sim fuzz --minutes N`` runs them
for longer with fresh seeds. A failure found that way becomes a regression test.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from typing import Any

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from virtio_sim import wire
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.server import serve
from virtio_sim.orchestration.attacks.forge import INDIRECT, NEXT, WRITE, PackedForge, SplitForge
from virtio_sim.orchestration.attacks.targets import AREA, DATA_END, RAM, Bench, Target
from virtio_sim.spec import STATUS

FUZZ_TARGETS = [
    Target("rng", "mmio-v2", "split"),
    Target("blk", "pci-modern", "packed"),
    Target("net", "mmio-v1", "split"),
    Target("console", "pci-transitional", "split", policy="drop"),
    Target("blk", "mmio-v2", "split", iommu=True),
]
addresses = st.one_of(
    st.integers(AREA[0], AREA[0] + DATA_END - 1),  # the victim's own window
    st.integers(0, RAM + 0x1000),  # anywhere in (or just past) RAM
    st.sampled_from([0, RAM - 1, 1 << 40, (1 << 64) - 1, 0xFEB00000]),
)
lengths = st.one_of(st.integers(0, 600), st.sampled_from([0xFFFFFFFF, 1 << 31, 4096]))
flag_bits = st.integers(0, 7)


class _BenchMachine(RuleBasedStateMachine):
    """One bench per example, built by the ``start`` rule in a scratch directory that
    teardown removes (hypothesis runs hundreds of examples per test)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="virtio-sim-fuzz-")
        self.bench: Bench | None = None

    def close_bench(self) -> None:
        try:
            if self.bench is not None:
                self.bench.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class RingMachine(_BenchMachine):
    """Random descriptors, heads, indices and kicks on one device's main queue."""

    @rule(which=st.sampled_from(FUZZ_TARGETS))
    @precondition(lambda self: self.bench is None)
    def start(self, which: Target) -> None:
        self.bench = Bench(which, self.tmp)
        self.bench.bring_up()

    def _forge(self) -> Any:
        assert self.bench is not None
        return self.bench.forge

    @rule(i=st.integers(0, 9), addr=addresses, length=lengths, flags=flag_bits, nxt=st.integers(0, 10))
    @precondition(lambda self: self.bench is not None)
    def descriptor(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        f = self._forge()
        if isinstance(f, SplitForge):
            f.raw_desc(i % f.q if i < 9 else i, addr, length, flags, nxt)
        else:
            bits = f.avail_bits() if i % 3 else f.avail_bits(i % 2)
            f.raw_desc(i, addr, length, nxt, (flags & (NEXT | WRITE | INDIRECT)) | bits)

    @rule(head=st.integers(0, 10), idx=st.one_of(st.none(), st.integers(0, 0xFFFF)))
    @precondition(lambda self: self.bench is not None)
    def offer(self, head: int, idx: int | None) -> None:
        f = self._forge()
        if isinstance(f, SplitForge):
            f.put_heads(head)
            if idx is not None:
                f.set_avail_idx(idx)
        else:
            assert isinstance(f, PackedForge)
            f.next += 1

    @rule()
    @precondition(lambda self: self.bench is not None)
    def kick(self) -> None:
        assert self.bench is not None
        self.bench.kick()

    @rule()
    @precondition(lambda self: self.bench is not None)
    def reset_and_serve(self) -> None:
        b = self.bench
        assert b is not None
        b.bring_up()
        assert b.serves(), "a freshly reset device does not serve"

    @invariant()
    def nothing_escaped(self) -> None:
        b = self.bench
        if b is None:
            return
        assert not b.watch.escapes, b.watch.escapes[0]
        vdev = b.vdevs[0]
        if vdev.status & STATUS.DEVICE_NEEDS_RESET:
            assert vdev.violations, "NEEDS_RESET without a recorded violation"

    def teardown(self) -> None:
        try:
            if self.bench is not None:
                assert not self.bench.watch.verify()
        finally:
            self.close_bench()


class RegisterMachine(_BenchMachine):
    """Random register traffic (any offset, width, value) on every transport, mixed with
    correct handshakes: no access may raise, and a correct bring-up always works after."""

    @rule(which=st.sampled_from(FUZZ_TARGETS))
    @precondition(lambda self: self.bench is None)
    def start(self, which: Target) -> None:
        self.bench = Bench(which, self.tmp)

    @rule(
        off=st.integers(0, 0x3FFF),
        size=st.sampled_from([1, 2, 3, 4, 8]),
        value=st.integers(0, (1 << 64) - 1),
        write=st.booleans(),
    )
    @precondition(lambda self: self.bench is not None)
    def access(self, off: int, size: int, value: int, write: bool) -> None:
        assert self.bench is not None
        p = self.bench.ports[0]
        if write:
            p.raw_write(off, size, value & ((1 << 8 * size) - 1))
        else:
            p.raw_read(off, size)

    @rule(off=st.integers(0, 0x200), size=st.sampled_from([1, 2, 4, 8]), value=st.integers(0, 0xFFFFFFFF))
    @precondition(lambda self: self.bench is not None)
    def config(self, off: int, size: int, value: int) -> None:
        assert self.bench is not None
        self.bench.ports[0].cfg_write(off, size, value)
        self.bench.ports[0].cfg_read(off, size)

    @rule()
    @precondition(lambda self: self.bench is not None)
    def bring_up(self) -> None:
        assert self.bench is not None
        self.bench.bring_up()
        assert self.bench.serves(), "a correct bring-up after random register traffic does not serve"

    def teardown(self) -> None:
        self.close_bench()


frame_types = st.one_of(st.sampled_from(list(wire.MsgType)), st.integers(0, 255))


async def _feed_frames(frames: list[tuple[int, int, bytes]]) -> str:
    """Random frames (type, seq, payload) into serve(); returns how serve() ended."""
    with tempfile.TemporaryDirectory() as tmp:
        setup = build_host(HostConfig(devices=["virtio-rng-device"], ram_size=2 << 20, scratch_dir=tmp))
        try:
            host_end, guest_end = wire.memory_link()
            result: list[str] = []
            with trio.fail_after(5):
                async with trio.open_nursery() as n:

                    async def run() -> None:
                        result.append(await serve(host_end, setup.machine))

                    n.start_soon(run)
                    for kind, seq, payload in frames:
                        raw = wire.Frame(wire.MsgType.BYE, seq, payload).encode()
                        raw = raw[:3] + bytes([kind]) + raw[4:]  # any type byte, valid header otherwise
                        try:
                            await guest_end.send_raw(raw)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                    if not result:
                        try:
                            await guest_end.send(wire.bye())
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass

                    async def drain() -> None:
                        try:
                            while True:
                                await guest_end.receive()
                        except (
                            trio.EndOfChannel,
                            trio.ClosedResourceError,
                            trio.BrokenResourceError,
                            wire.WireError,
                        ):
                            return

                    n.start_soon(drain)
                    while not result:
                        await trio.sleep(0.001)
                    n.cancel_scope.cancel()
            return result[0]
        finally:
            setup.close()


frames_strategy = st.lists(
    st.tuples(frame_types, st.integers(0, 0xFFFFFFFF), st.binary(max_size=64)), max_size=12
)


def fuzz_frames(frames: list[tuple[int, int, bytes]]) -> None:
    """serve() must end (or go on) without raising, whatever frames arrive."""
    ended = trio.run(_feed_frames, frames)
    assert isinstance(ended, str)


MACHINES: list[type[RuleBasedStateMachine]] = [RingMachine, RegisterMachine]


def fuzz_for(seconds: float, seed: int | None = None, examples: int = 50) -> list[str]:
    """Run every machine (and the frame fuzzer) in turn until ``seconds`` have passed;
    return one line per failure (with its traceback tail)."""
    from hypothesis import given
    from hypothesis import seed as hseed

    deadline = time.monotonic() + seconds
    found: list[str] = []
    budget = settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=seed is not None,
    )
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        for machine in MACHINES:
            try:
                run_state_machine_as_test(machine, settings=budget)  # type: ignore[no-untyped-call, unused-ignore]
            except Exception:  # a failure hypothesis already shrank
                found.append(f"{machine.__name__}: {traceback.format_exc(limit=-6)}")
        frames_test = budget(given(frames_strategy)(fuzz_frames))
        if seed is not None:
            frames_test = hseed(seed + rounds)(frames_test)
        try:
            frames_test()
        except Exception:
            found.append(f"frames: {traceback.format_exc(limit=-6)}")
        if found:
            break
    return found
