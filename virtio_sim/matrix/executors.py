"""Executors: run cells on local worker processes, or on a dask.distributed cluster.

The local pool keeps one long-lived worker process per core and gives each cell a hard
deadline on top of the run's own (cooperative) timeout: a worker that does not answer in
time is killed and replaced, its cell is reported as HANG, and the matrix goes on. Results
come back in cell order whichever executor ran them, so outputs are identical.
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
from virtio_sim.matrix.spec import Cell, machine_for
from virtio_sim.outcome import Outcome
from virtio_sim.result_record import bare_record

CellFn = Callable[[Cell, float, int], dict[str, Any]]
Progress = Callable[[int, dict[str, Any]], None]

TOOL_ERROR = "TOOL_ERROR"  # our own bug while running a cell; never a verdict on the peers
NOT_RUN = "NOT_RUN"  # the run was interrupted before this cell finished; no verdict


def hard_deadline(timeout: float) -> float:
    """Seconds a worker may take for a cell before it is killed (run timeout + grace)."""
    return timeout * 1.5 + 3


def failed_cell(cell: Cell, outcome: str, detail: str) -> dict[str, Any]:
    """The record of a cell that has no run to show (same keys as a finished one)."""
    axes = cell.axes()
    axes["machine"] = machine_for(cell.transport) if cell.machine == "auto" else cell.machine
    return bare_record(outcome, detail, id=cell.id, **axes)


def hung_cell(cell: Cell, limit: float) -> dict[str, Any]:
    """The verdict for a cell whose worker missed the hard deadline and was killed."""
    return failed_cell(
        cell, Outcome.HANG.value, f"cell did not finish within {limit:g}s; its worker was killed"
    )


def run_one(fn: CellFn, cell: Cell, timeout: float, seed: int) -> dict[str, Any]:
    """Run one cell in a worker; an exception is a bug in the tool, reported as TOOL_ERROR."""
    try:
        return fn(cell, timeout, seed)
    except Exception as e:
        return failed_cell(cell, TOOL_ERROR, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")


WORKER_START_LIMIT = 120.0  # seconds a fresh worker may take to import everything


def _worker(conn: Connection, fn: CellFn) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop (and
    # kills them), so a worker must not die mid-cell printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    freeze_startup()  # the imports are never garbage: full GC passes skip them
    conn.send("ready")  # imports are done: cell deadlines start counting from here
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        idx, cell, timeout, seed = job
        conn.send((idx, run_one(fn, cell, timeout, seed)))


#: cells a worker holds at once: the one it runs and the next, already in its pipe, so
#: it never waits for the parent between two cells (a parent that is not scheduled at
#: once on a busy machine left the worker idle for each of the thousands of cells)
PREFETCH = 2


@dataclass
class _Slot:
    proc: mp.process.BaseProcess
    conn: Connection
    #: the cells sent and not answered, in order; the first is running
    jobs: deque[int] = field(default_factory=deque)
    #: when the running cell must be done (its start is the previous cell's answer)
    deadline: float = 0.0


class LocalPool:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["virtio_sim.matrix.cell"])

    def _spawn(self, fn: CellFn) -> _Slot:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child, fn), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(WORKER_START_LIMIT) or parent.recv() != "ready":
            proc.kill()
            raise RuntimeError("a matrix worker process did not start")
        return _Slot(proc, parent)

    def run(
        self,
        cells: Sequence[Cell],
        fn: CellFn,
        *,
        timeout: float,
        seed: int = 1,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(cells)
        todo = deque(range(len(cells)))
        slots = [self._spawn(fn) for _ in range(min(self.workers, len(cells)))]
        limit = hard_deadline(timeout)

        def finish(i: int, res: dict[str, Any]) -> None:
            results[i] = res
            if progress:
                progress(i, res)

        def lost(s: _Slot, verdict: dict[str, Any]) -> None:
            """The running cell gets ``verdict``; the cells queued behind it go back to
            the front of the queue for the fresh worker."""
            finish(s.jobs.popleft(), verdict)
            todo.extendleft(reversed(s.jobs))
            self._replace(slots, s, fn)

        try:
            while todo or any(s.jobs for s in slots):
                for s in slots:
                    while len(s.jobs) < PREFETCH and todo:
                        if not s.jobs:
                            s.deadline = time.monotonic() + limit
                        i = todo.popleft()
                        s.jobs.append(i)
                        s.conn.send((i, cells[i], timeout, seed))
                busy = [s for s in slots if s.jobs]
                wait_for = max(0.0, min(s.deadline for s in busy) - time.monotonic())
                ready = wait([s.conn for s in busy], timeout=wait_for)
                for s in busy:
                    if s.conn in ready:
                        try:
                            idx, res = s.conn.recv()
                        except (EOFError, OSError):
                            lost(s, failed_cell(cells[s.jobs[0]], TOOL_ERROR, "worker process died"))
                            continue
                        s.jobs.popleft()
                        s.deadline = time.monotonic() + limit  # the next cell starts now
                        finish(idx, res)
                    elif time.monotonic() >= s.deadline:
                        lost(s, hung_cell(cells[s.jobs[0]], limit))
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, a closed pipe): busy workers are mid-cell and
            # would finish it first; nobody wants that cell any more, so kill them now.
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

    def _replace(self, slots: list[_Slot], old: _Slot, fn: CellFn) -> None:
        old.proc.kill()
        old.proc.join()
        old.conn.close()
        slots[slots.index(old)] = self._spawn(fn)


#: cells per dask task: a task costs the scheduler a round trip of its own (about a cell's
#: work on this machine), so cells go in chunks; each cell of a chunk still has its own
#: hard deadline in the cell process (cellchild.run_chunk_with_deadlines)
DASK_CHUNK = 16

#: seconds to reach a dask scheduler before giving up (``--connect-timeout``); dask's own
#: default is 30 s of silent retrying, then a long traceback
SCHEDULER_CONNECT_TIMEOUT = 5.0


class ExecutorError(Exception):
    """The executor cannot start (an unreachable scheduler...); one line for the user."""


class DaskExecutor:
    """Cells as dask futures: on a scheduler at ``address``, or a LocalCluster of N workers.

    Each cell runs under the same hard deadline as on the local pool: the task hands it to
    a child process of the dask worker and kills that child at the deadline
    (virtio_sim/matrix/cellchild.py), so a stuck cell is reported HANG, not waited for.
    """

    def __init__(
        self,
        address: str | None = None,
        local_workers: int | None = None,
        connect_timeout: float = SCHEDULER_CONNECT_TIMEOUT,
    ) -> None:
        if address is None and local_workers is None:
            raise ValueError("give a scheduler address or a number of local workers")
        self.address = address
        self.local_workers = local_workers
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._cluster: Any = None

    def connect(self) -> None:
        """Reach the scheduler (or start the LocalCluster) now, before any cell is run.

        Raises ExecutorError with one line when the scheduler cannot be reached in
        ``connect_timeout`` seconds or the address is not one dask understands.
        """
        if self._client is not None:
            return
        from dask.distributed import Client, LocalCluster

        if self.address is None:
            self._cluster = LocalCluster(
                n_workers=self.local_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            self._client = Client(self._cluster)
            return
        try:
            self._client = Client(self.address, timeout=self.connect_timeout)
        except (OSError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExecutorError(f"cannot reach the dask scheduler {self.address}: {first}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def run(
        self,
        cells: Sequence[Cell],
        fn: CellFn,
        *,
        timeout: float,
        seed: int = 1,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]:
        from dask.distributed import as_completed

        from virtio_sim.matrix.cellchild import run_chunk_with_deadlines

        self.connect()
        client = self._client
        try:
            chunks = [
                list(range(i, min(i + DASK_CHUNK, len(cells)))) for i in range(0, len(cells), DASK_CHUNK)
            ]
            futures = client.map(
                run_chunk_with_deadlines,
                [fn] * len(chunks),
                [[cells[i] for i in chunk] for chunk in chunks],
                timeout=timeout,
                seed=seed,
                pure=False,
            )
            index = {f.key: chunks[n] for n, f in enumerate(futures)}
            results: list[dict[str, Any] | None] = [None] * len(cells)
            for fut in as_completed(futures):
                chunk = index[fut.key]
                try:
                    done = fut.result()
                except Exception as e:
                    done = [failed_cell(cells[i], TOOL_ERROR, f"{type(e).__name__}: {e}") for i in chunk]
                for i, res in zip(chunk, done, strict=True):
                    results[i] = res
                    if progress:
                        progress(i, res)
            return [r for r in results if r is not None]
        finally:
            self.close()
