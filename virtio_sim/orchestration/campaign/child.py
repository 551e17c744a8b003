"""Cases in a killable child process of a thread that cannot be stopped (dask tasks).

The local pool kills a worker process that overruns a case's budget (campaign/pool.py).
A dask task cannot be stopped that way: the task is a thread of the dask worker, and a
thread cannot be killed (cancelling a running future does not stop it; a cell ran on and
came back OK long after its deadline). So the task, :func:`run_with_deadline`, hands the
case to a child process and waits within the same :class:`WallBudget` of
:func:`hard_deadline`; a child that overruns it is killed and the case gets the same HANG
record as on the pool. Children are reused between cases (one per busy task thread) so
the imports are paid once per dask worker, as the pool pays them once per worker.

Dask worker processes are daemonic, and multiprocessing refuses to start children of a
daemonic process, so the child is a plain ``python -m virtio_sim.orchestration.campaign.child FD
MODULE...`` talking pickles over a socketpair (a multiprocessing Connection on the
inherited fd); it imports MODULE... first (what the pool's forkserver preloads) and exits
when that socket closes, i.e. when the dask worker goes away.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from virtio_sim.gcfreeze import freeze_startup
from virtio_sim.orchestration.campaign.deadline import WallBudget, hard_deadline, wait_within
from virtio_sim.orchestration.campaign.pool import KILLED, WORKER_START_LIMIT, CaseFn, run_one
from virtio_sim.orchestration.campaign.verdict import NoAnswer


class CaseChild:
    """One child process that runs cases one at a time (the parent's handle)."""

    def __init__(self, preload: Sequence[str]) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child unpickles the case function by reference: give it our import path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            # this module by its own name: it runs as ``python -m`` wherever the package sits
            [sys.executable, "-m", __name__, str(theirs.fileno()), *preload],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        if not self.conn.poll(WORKER_START_LIMIT) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("a campaign case process did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


_idle: dict[tuple[str, ...], list[CaseChild]] = {}
_idle_lock = threading.Lock()


def _take(preload: tuple[str, ...]) -> CaseChild:
    with _idle_lock:
        idle = _idle.get(preload)
        if idle:
            return idle.pop()
    return CaseChild(preload)


def _give_back(preload: tuple[str, ...], child: CaseChild) -> None:
    with _idle_lock:
        _idle.setdefault(preload, []).append(child)


def run_chunk_with_deadlines(
    fn: CaseFn,
    items: list[Any],
    timeout: float,
    seed: int,
    no_answer: type[NoAnswer],
    preload: tuple[str, ...],
) -> list[Any]:
    """A dask task of several cases, one after another, each under its own budget (a
    child killed at one case's deadline is replaced for the next)."""
    return [run_with_deadline(fn, item, timeout, seed, no_answer, preload) for item in items]


def run_with_deadline(
    fn: CaseFn, item: Any, timeout: float, seed: int, no_answer: type[NoAnswer], preload: tuple[str, ...]
) -> Any:
    """Run ``fn(item, timeout, seed)`` in a child; the HANG record at the hard deadline."""
    child = _take(preload)
    budget = WallBudget(hard_deadline(timeout))
    try:
        child.conn.send((fn, item, timeout, seed, no_answer))
        if wait_within(budget, child.conn.poll):
            res = child.conn.recv()
            _give_back(preload, child)
            return res
    except (EOFError, OSError):
        child.kill()
        return no_answer.error(item, "case process died")
    child.kill()
    return no_answer.hang(item, budget.describe(), KILLED)


def main(fd: int, preload: Sequence[str]) -> None:
    import importlib

    for name in preload:
        importlib.import_module(name)
    conn = Connection(fd)
    freeze_startup()  # the imports are never garbage: full GC passes skip them
    conn.send("ready")  # imports are done: the budget starts counting from the job
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        fn, item, timeout, seed, no_answer = job
        res = run_one(fn, item, timeout, seed, no_answer)
        try:
            conn.send(res)
        except OSError:  # the dask worker went away while the case ran
            return


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
