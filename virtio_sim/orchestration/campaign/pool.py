"""Cases on local worker processes, each under a wall-clock budget (the matrix's runner).

One long-lived worker process per core (imports paid once, then frozen out of the GC's
way); each case gets a :class:`~virtio_sim.orchestration.campaign.deadline.WallBudget` of
:func:`~virtio_sim.orchestration.campaign.deadline.hard_deadline` on top of the case's own cooperative
timeout. A worker that does not answer within it is killed and replaced, its case gets the
campaign's HANG record (:class:`~virtio_sim.orchestration.campaign.verdict.NoAnswer`), and the run goes
on. Results come back in case order, so every executor gives identical outputs.

A case is ``fn(item, timeout, seed) -> record``; ``fn``, the items and the NoAnswer class
are pickled to the workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from virtio_sim.gcfreeze import freeze_startup
from virtio_sim.orchestration.campaign.deadline import WallBudget, hard_deadline
from virtio_sim.orchestration.campaign.verdict import NoAnswer

CaseFn = Callable[[Any, float, int], Any]
Progress = Callable[[int, Any], None]

WORKER_START_LIMIT = 120.0  # seconds a fresh worker may take to import everything
#: how a HANG record says the work was stopped
KILLED = "its worker was killed"

#: cases a worker holds at once: the one it runs and the next, already in its pipe, so
#: it never waits for the parent between two cases (a parent that is not scheduled at
#: once on a busy machine left the worker idle for each of the thousands of cells)
PREFETCH = 2


def run_one(fn: CaseFn, item: Any, timeout: float, seed: int, no_answer: type[NoAnswer]) -> Any:
    """Run one case in a worker; an exception is a bug in the tool (NoAnswer.error)."""
    try:
        return fn(item, timeout, seed)
    except Exception as e:
        return no_answer.error(item, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")


def _worker(conn: Connection, fn: CaseFn, no_answer: type[NoAnswer]) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop (and
    # kills them), so a worker must not die mid-case printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    freeze_startup()  # the imports are never garbage: full GC passes skip them
    conn.send("ready")  # imports are done: case budgets start counting from here
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        idx, item, timeout, seed = job
        conn.send((idx, run_one(fn, item, timeout, seed, no_answer)))


@dataclass
class _Slot:
    proc: mp.process.BaseProcess
    conn: Connection
    budget: WallBudget
    #: the cases sent and not answered, in order; the first is running
    jobs: deque[int] = field(default_factory=deque)


class ProcessPool:
    """``preload``: modules the forkserver imports once, so each worker starts warm."""

    def __init__(
        self, no_answer: type[NoAnswer], workers: int | None = None, preload: Sequence[str] = ()
    ) -> None:
        self.no_answer = no_answer
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._ctx = mp.get_context("forkserver")
        if preload:
            self._ctx.set_forkserver_preload(list(preload))

    def _spawn(self, fn: CaseFn, limit: float) -> _Slot:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child, fn, self.no_answer), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(WORKER_START_LIMIT) or parent.recv() != "ready":
            proc.kill()
            raise RuntimeError("a campaign worker process did not start")
        return _Slot(proc, parent, WallBudget(limit))

    def run(
        self,
        items: Sequence[Any],
        fn: CaseFn,
        *,
        timeout: float,
        seed: int = 1,
        progress: Progress | None = None,
    ) -> list[Any]:
        results: list[Any] = [None] * len(items)
        todo = deque(range(len(items)))
        limit = hard_deadline(timeout)
        slots = [self._spawn(fn, limit) for _ in range(min(self.workers, len(items)))]
        no_answer = self.no_answer

        def finish(i: int, res: Any) -> None:
            results[i] = res
            if progress:
                progress(i, res)

        def lost(s: _Slot, verdict: Any) -> None:
            """The running case gets ``verdict``; the cases queued behind it go back to
            the front of the queue for the fresh worker."""
            finish(s.jobs.popleft(), verdict)
            todo.extendleft(reversed(s.jobs))
            self._replace(slots, s, fn, limit)

        try:
            while todo or any(s.jobs for s in slots):
                for s in slots:
                    while len(s.jobs) < PREFETCH and todo:
                        if not s.jobs:
                            s.budget.restart()
                        i = todo.popleft()
                        s.jobs.append(i)
                        s.conn.send((i, items[i], timeout, seed))
                busy = [s for s in slots if s.jobs]
                # the budgets' ends, read directly: this loop turns once per answer
                wait_for = max(0.0, min(s.budget.ends for s in busy) - time.monotonic())
                ready = wait([s.conn for s in busy], timeout=wait_for)
                for s in busy:
                    if s.conn in ready:
                        try:
                            idx, res = s.conn.recv()
                        except (EOFError, OSError):
                            lost(s, no_answer.error(items[s.jobs[0]], "worker process died"))
                            continue
                        s.jobs.popleft()
                        s.budget.restart()  # the next case starts now
                        finish(idx, res)
                    elif time.monotonic() >= s.budget.ends:
                        lost(s, no_answer.hang(items[s.jobs[0]], s.budget.describe(), KILLED))
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, a closed pipe): busy workers are mid-case and
            # would finish it first; nobody wants that case any more, so kill them now.
            for s in slots:
                s.proc.kill()
            raise
        finally:
            for s in slots:
                try:
                    s.conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
            for s in slots:
                s.proc.join(timeout=2)
                if s.proc.is_alive():
                    s.proc.kill()
                    s.proc.join()
        return [r for r in results if r is not None]

    def _replace(self, slots: list[_Slot], old: _Slot, fn: CaseFn, limit: float) -> None:
        old.proc.kill()
        old.proc.join()
        old.conn.close()
        slots[slots.index(old)] = self._spawn(fn, limit)
