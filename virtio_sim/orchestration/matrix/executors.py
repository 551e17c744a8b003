"""Executors of a matrix: local worker processes or a dask.distributed cluster.

Both run cells on the campaign runners (virtio_sim/orchestration/campaign/): the local pool is
:class:`~virtio_sim.orchestration.campaign.pool.ProcessPool`, dask tasks hand each cell to a killable
child (:mod:`virtio_sim.orchestration.campaign.child`), and either way a cell has the campaign's one
deadline mechanism: a wall-clock budget of :func:`hard_deadline` on top of the run's own
(cooperative) timeout, after which its process is killed and the cell reported HANG.
What is the matrix's own here: the records of a cell without an answer (:class:`CellNoAnswer`),
the module the workers preload, and dask's chunking. Results come back in cell order
whichever executor ran them, so outputs are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from virtio_sim.orchestration.campaign.deadline import hard_deadline
from virtio_sim.orchestration.campaign.pool import KILLED, ProcessPool
from virtio_sim.orchestration.matrix.spec import Cell, machine_for
from virtio_sim.outcome import Outcome
from virtio_sim.result_record import bare_record

__all__ = [
    "NOT_RUN", "TOOL_ERROR", "CellFn", "CellNoAnswer", "DaskExecutor", "ExecutorError", "LocalPool",
    "Progress", "failed_cell", "hard_deadline", "hung_cell",
]  # fmt: skip

CellFn = Callable[[Cell, float, int], dict[str, Any]]
Progress = Callable[[int, dict[str, Any]], None]

TOOL_ERROR = "TOOL_ERROR"  # our own bug while running a cell; never a verdict on the peers
NOT_RUN = "NOT_RUN"  # the run was interrupted before this cell finished; no verdict
#: what the workers import once before their first cell (the forkserver's preload)
PRELOAD = (
    __name__.rpartition(".")[0] + ".cell",
)  # virtio_sim.orchestration.matrix.cell wherever matrix/ sits


def failed_cell(cell: Cell, outcome: str, detail: str) -> dict[str, Any]:
    """The record of a cell that has no run to show (same keys as a finished one)."""
    axes = cell.axes()
    axes["machine"] = machine_for(cell.transport) if cell.machine == "auto" else cell.machine
    return bare_record(outcome, detail, id=cell.id, **axes)


def hung_cell(cell: Cell, limit: float) -> dict[str, Any]:
    """The verdict for a cell whose worker missed the hard deadline and was killed."""
    return CellNoAnswer.hang(cell, f"{limit:g}s", KILLED)


class CellNoAnswer:
    """The campaign runners' records of a cell without an answer (campaign/verdict.py)."""

    @staticmethod
    def hang(item: Cell, bound: str, how: str) -> dict[str, Any]:
        return failed_cell(item, Outcome.HANG.value, f"cell did not finish within {bound}; {how}")

    @staticmethod
    def error(item: Cell, detail: str) -> dict[str, Any]:
        return failed_cell(item, TOOL_ERROR, detail)


class LocalPool(ProcessPool):
    """One worker process per core (or ``workers``), preloaded with the cell code."""

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(CellNoAnswer, workers, preload=PRELOAD)


#: cells per dask task: a task costs the scheduler a round trip of its own (about a cell's
#: work on this machine), so cells go in chunks; each cell of a chunk still has its own
#: hard deadline in the cell process (campaign.child.run_chunk_with_deadlines)
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
    (virtio_sim/orchestration/campaign/child.py), so a stuck cell is reported HANG, not waited for.
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

        from virtio_sim.orchestration.campaign.child import run_chunk_with_deadlines

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
                no_answer=CellNoAnswer,
                preload=PRELOAD,
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
