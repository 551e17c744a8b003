"""Batch calls for both ring formats: thin loops over the per-chain calls.

Why loops and not batch paths of their own: a batch path repeats every check of the
per-chain path (and did, five times over), and bought at most 20%. A loop runs exactly
the per-chain code, so the two can never disagree; what a batch adds is only how an
error part-way is reported:

* device ``pop_batch``: a bad chain after good ones ends the batch; the good ones are
  returned, the bad head is consumed as ``pop()`` consumes it, and its RingError is
  raised by the next ``pop()`` or ``pop_batch()`` (``has_available()`` says True until
  then), so no chain is lost and no error skipped;
* driver ``get_used_batch``: a device error part-way returns the good completions before
  it; the ring is then broken and the next call raises, as ``get_used()`` would;
* ``push_batch`` / ``add_batch``: an error part-way leaves what came before it published
  or available, as single calls would, and raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from virtio_sim.ring.chain import Chain, DeviceBrokenError, RingError

ChainSpec = tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]], Any]  # (out, in_, token)


class DeviceBatchCalls:
    """pop_batch/push_batch for a device queue with pop()/push() and ``_pending_error``."""

    _pending_error: RingError | None

    def pop(self) -> Chain | None:
        raise NotImplementedError

    def push(self, head: int, written: int) -> None:
        raise NotImplementedError

    def pop_batch(self, limit: int) -> list[Chain]:
        """Up to ``limit`` available chains, each popped by pop()."""
        out: list[Chain] = []
        pop, append = self.pop, out.append
        try:
            for _ in range(limit):
                chain = pop()
                if chain is None:
                    break
                append(chain)
        except RingError as e:
            if not out:
                raise
            self._pending_error = e  # pop() raises it next
        return out

    def push_batch(self, completions: Sequence[tuple[int, int]]) -> None:
        """push() for each (head, written)."""
        push = self.push
        for head, written in completions:
            push(head, written)


class DriverBatchCalls:
    """add_batch/get_used_batch for a driver queue with add()/get_used()."""

    def add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        token: Any,
        *,
        use_indirect: bool | None = None,
    ) -> int:
        raise NotImplementedError

    def get_used(self) -> tuple[Any, int] | None:
        raise NotImplementedError

    def add_batch(self, chains: Sequence[ChainSpec]) -> list[int]:
        """add() for each (out, in_, token); returns the heads (buffer ids)."""
        add = self.add
        return [add(out, in_, token) for out, in_, token in chains]

    def get_used_batch(self) -> list[tuple[Any, int]]:
        """Every used element published so far, each reaped by get_used()."""
        done: list[tuple[Any, int]] = []
        get_used, append = self.get_used, done.append
        try:
            while (r := get_used()) is not None:
                append(r)
        except DeviceBrokenError:
            if not done:
                raise
        return done


__all__ = ["ChainSpec", "DeviceBatchCalls", "DriverBatchCalls"]
