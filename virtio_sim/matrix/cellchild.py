"""Hard per-cell deadlines on dask: each cell runs in a child process of the dask worker.

The local pool kills a worker process that misses a cell's hard deadline and reports the
cell as HANG (executors.LocalPool). A dask task cannot be stopped that way: the task is a
thread of the dask worker, and a thread cannot be killed (cancelling a running future
does not stop it; the cell ran on and came back OK long after its deadline). So the dask
task, :func:`run_with_deadline`, hands the cell to a child process and waits at most
:func:`executors.hard_deadline`; a child that misses it is killed and the cell is reported
HANG with the local pool's words. Children are reused between cells (one per busy task
thread) so the imports are paid once per dask worker, as the local pool pays them once
per worker.

Dask worker processes are daemonic, and multiprocessing refuses to start children of a
daemonic process, so the child is a plain ``python -m virtio_sim.matrix.cellchild FD``
talking pickles over a socketpair (a multiprocessing Connection on the inherited fd). It
exits when that socket closes, i.e. when the dask worker goes away.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from virtio_sim.gcfreeze import freeze_startup
from virtio_sim.matrix.executors import (
    TOOL_ERROR,
    WORKER_START_LIMIT,
    CellFn,
    failed_cell,
    hard_deadline,
    hung_cell,
    run_one,
)
from virtio_sim.matrix.spec import Cell


class CellChild:
    """One child process that runs cells one at a time (the parent's handle)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child unpickles the cell function by reference: give it our import path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "virtio_sim.matrix.cellchild", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        if not self.conn.poll(WORKER_START_LIMIT) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("a matrix cell process did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


_idle: list[CellChild] = []
_idle_lock = threading.Lock()


def _take() -> CellChild:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return CellChild()


def _give_back(child: CellChild) -> None:
    with _idle_lock:
        _idle.append(child)


def run_chunk_with_deadlines(
    fn: CellFn, cells: list[Cell], timeout: float, seed: int
) -> list[dict[str, Any]]:
    """A dask task of several cells, one after another, each under its own hard deadline
    (a cell process killed at one cell's deadline is replaced for the next)."""
    return [run_with_deadline(fn, cell, timeout, seed) for cell in cells]


def run_with_deadline(fn: CellFn, cell: Cell, timeout: float, seed: int) -> dict[str, Any]:
    """The dask task: run ``fn(cell, timeout, seed)`` in a child; HANG at the hard deadline."""
    child = _take()
    limit = hard_deadline(timeout)
    try:
        child.conn.send((fn, cell, timeout, seed))
        if child.conn.poll(limit):
            res: dict[str, Any] = child.conn.recv()
            _give_back(child)
            return res
    except (EOFError, OSError):
        child.kill()
        return failed_cell(cell, TOOL_ERROR, "cell process died")
    child.kill()
    return hung_cell(cell, limit)


def main(fd: int) -> None:
    import importlib

    importlib.import_module("virtio_sim.matrix.cell")  # what the local pool preloads
    conn = Connection(fd)
    freeze_startup()  # the imports are never garbage: full GC passes skip them
    conn.send("ready")  # imports are done: the deadline starts counting from the job
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        fn, cell, timeout, seed = job
        res = run_one(fn, cell, timeout, seed)
        try:
            conn.send(res)
        except OSError:  # the dask worker went away while the cell ran
            return


if __name__ == "__main__":
    main(int(sys.argv[1]))
