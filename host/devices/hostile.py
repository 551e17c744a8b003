"""Hostile device mode (``x-hostile=LIE`` on any device): the real model serves, and its
completions lie to the driver in one named way.

The lies are what a buggy or malicious device does to a guest (rows G52-G61 of
specs/attacks.toml): used ids out of range or not in flight, lengths beyond the buffer,
used indices running ahead, NEEDS_RESET, config generation churn, spurious interrupts,
rewritten descriptors. Lies are written with the device ring's raw used-entry writer,
bypassing its own checks, because that is exactly what a hostile device would do.
Every lie records when it fired and whether the driver reset the device afterwards, in
the model's events (and so in the run's device notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from virtio_sim.host.devices.base import DeviceModel, DeviceQueue, PropertyError
from virtio_sim.ring.chain import Chain
from virtio_sim.ring.split import SplitDeviceQueue

FIRED = "hostile: lie fired"
RESET_AFTER = "hostile: driver reset the device after the lie"
SPURIOUS_IRQS = 8
RUN_AHEAD = 3

LIES: dict[str, str] = {
    "used-len-too-long": "used.len 4096 bytes beyond what was written",
    "used-len-huge": "used.len 0xffffffff",
    "used-id-out-of-range": "used id == queue size + 1",
    "used-id-ffff": "used id 0xffff",
    "used-id-not-in-flight": "used id of a buffer that was never offered",
    "double-completion": "one buffer completed twice",
    "used-runs-ahead": "used idx (split) or USED descriptors (packed) run ahead of the buffers",
    "used-idx-backwards": "used idx moves back (split) / a used descriptor repeats (packed)",
    "needs-reset": "DEVICE_NEEDS_RESET instead of a completion",
    "needs-reset-storm": "DEVICE_NEEDS_RESET on every kick, also after a reset",
    "config-generation-churn": "config generation changes on every config read",
    "spurious-interrupts": "queue interrupts with nothing new in the used ring",
    "config-interrupt-storm": "config change interrupts with an unchanged config",
    "rewrite-descriptors": "the device scribbles over the descriptor table after reading it",
    "short-completion": "used.len half of what was written",
    "zero-length-completion": "used.len 0 for every buffer",
    "status-garbage": "the last writable byte (blk status) set to 0x77",
    "writes-past-buffer": "used.len claims one byte past the writable buffers",
}


@dataclass
class LieState:
    lie: str
    fired: int = 0
    resets_after: int = 0


def _note(model: DeviceModel, message: str) -> None:
    """Into the model's events and the core's notes (so into the run's device notes)."""
    model.events.note(message)
    core_note = getattr(model.hooks, "note", None)
    if core_note is not None:
        core_note(message)


class LyingQueue:
    """A DeviceQueue whose push() lies (the model under it is the honest one)."""

    def __init__(self, queue: DeviceQueue, state: LieState, model: DeviceModel) -> None:
        self.q = queue
        self.index: int = getattr(queue, "index", 0)
        self.space = queue.space
        self.state = state
        self.model = model
        self.ring: Any = getattr(queue, "ring", None)
        self.chains: dict[int, Chain] = {}

    def pop(self) -> Chain | None:
        chain = self.q.pop()
        if chain is not None:
            self.chains[chain.head] = chain
            if self.state.lie == "rewrite-descriptors" and self.ring is not None:
                self._fire()
                size = self.ring.size
                self.space.write(self.ring.addrs.desc, b"\xa5" * (16 * size))
        return chain

    def _fire(self) -> None:
        if not self.state.fired:
            _note(self.model, f"{FIRED}: {self.state.lie}")
        self.state.fired += 1

    def _raw(self, buf_id: int, written: int) -> None:
        self.ring.write_used(buf_id & 0xFFFF, written & 0xFFFFFFFF, 1)

    def _writable(self, head: int) -> int:
        chain = self.chains.get(head)
        return sum(n for _, n in chain.writable) if chain else 0

    def push(self, head: int, written: int) -> None:
        lie = self.state.lie
        ring = self.ring
        if ring is None or lie in ("rewrite-descriptors", "needs-reset-storm", "config-generation-churn"):
            self.q.push(head, written)
            return
        size = ring.size
        self._fire()
        match lie:
            case "used-len-too-long":
                self.q.push(head, written + 4096)
            case "used-len-huge":
                self.q.push(head, 0xFFFFFFFF)
            case "used-id-out-of-range":
                self._raw(size + 1, written)
            case "used-id-ffff":
                self._raw(0xFFFF, written)
            case "used-id-not-in-flight":
                in_flight = set(ring.in_flight)
                other = next(i for i in range(size) if i not in in_flight and i != head)
                self._raw(other, written)
            case "double-completion":
                self.q.push(head, written)
                self._raw(head, written)
            case "used-runs-ahead":
                self.q.push(head, written)
                if isinstance(ring, SplitDeviceQueue):
                    ring.used_idx = (ring.used_idx + RUN_AHEAD) & 0xFFFF
                    ring.write_used_idx(ring.used_idx)
                else:
                    for _ in range(RUN_AHEAD):
                        self._raw((head + 1) % size, 0)
            case "used-idx-backwards":
                self.q.push(head, written)
                if isinstance(ring, SplitDeviceQueue):
                    ring.write_used_idx(ring.used_idx - 2)
                else:
                    self._raw(head, written)
            case "needs-reset":
                self._needs_reset()
            case "spurious-interrupts" | "config-interrupt-storm":
                self.q.push(head, written)
                self._interrupts(lie)
            case "short-completion":
                self.q.push(head, written // 2)
            case "zero-length-completion":
                self.q.push(head, 0)
            case "status-garbage":
                chain = self.chains.get(head)
                if chain and chain.writable:
                    addr, n = chain.writable[-1]
                    self.space.write(addr + n - 1, b"\x77")
                self.q.push(head, written)
            case "writes-past-buffer":
                self.q.push(head, self._writable(head) + 1)
            case _:
                self.q.push(head, written)

    def _needs_reset(self) -> None:
        core = self.model.hooks
        set_needs_reset = getattr(core, "set_needs_reset", None)
        if set_needs_reset is not None:
            set_needs_reset()

    def _interrupts(self, lie: str) -> None:
        sink = getattr(self.model.hooks, "sink", None)
        if sink is None:
            return
        for _ in range(SPURIOUS_IRQS):
            if lie == "spurious-interrupts":
                sink.queue_interrupt(self.index)
            else:
                sink.config_interrupt()


def install(model: DeviceModel, lie: str) -> LieState:
    """Turn ``model`` hostile: its process() gets a lying queue; reset() and config reads
    are watched (generation churn, resets after the lie)."""
    if lie not in LIES:
        raise PropertyError(f"Property 'x-hostile' doesn't take value '{lie}' ({'|'.join(LIES)})")
    state = LieState(lie)
    honest_process = model.process
    honest_reset = model.reset
    honest_config = model.config_space

    def process(queue: DeviceQueue) -> int:
        if lie == "needs-reset-storm":
            if not state.fired:
                _note(model, f"{FIRED}: {lie}")
            state.fired += 1
            LyingQueue(queue, state, model)._needs_reset()
            return 0
        return honest_process(LyingQueue(queue, state, model))

    def reset() -> None:
        if state.fired:
            state.resets_after += 1
            if state.resets_after == 1:
                _note(model, RESET_AFTER)
        honest_reset()

    def config_space() -> bytes:
        raw = honest_config()
        if lie != "config-generation-churn" or not raw:
            return raw
        # Every read sees a different first byte and a new generation: the driver's
        # "read until the generation is stable" loop must give up, not spin forever.
        if not state.fired:
            _note(model, f"{FIRED}: {lie}")
        state.fired += 1
        core = model.hooks
        if core is not None and hasattr(core, "config_generation"):
            core.config_generation = (core.config_generation + 1) & 0xFF
        return bytes([raw[0] ^ (state.fired & 1)]) + raw[1:]

    model.process = process  # type: ignore[method-assign]
    model.reset = reset  # type: ignore[method-assign]
    model.config_space = config_space  # type: ignore[method-assign]
    model.hostile = state  # type: ignore[attr-defined]
    return state
