"""Run a matrix: expand cells, validate them, execute, attach expectations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from virtio_sim.orchestration.matrix.cell import run_cell, validate_cell
from virtio_sim.orchestration.matrix.executors import NOT_RUN, CellFn, Progress, failed_cell
from virtio_sim.orchestration.matrix.spec import Cell, MatrixSpec, expand, expected_outcome


class Executor(Protocol):
    def run(
        self,
        cells: list[Cell],
        fn: CellFn,
        *,
        timeout: float,
        seed: int = 1,
        progress: Progress | None = None,
    ) -> list[dict[str, Any]]: ...


def plan(spec: MatrixSpec, filters: dict[str, list[str]] | None = None) -> list[Cell]:
    cells = expand(spec, filters)
    for c in cells:
        validate_cell(c)
    return cells


def execute(
    spec: MatrixSpec,
    cells: list[Cell],
    executor: Executor,
    *,
    seed: int = 1,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    fn: CellFn = run_cell,
) -> list[dict[str, Any]]:
    results = executor.run(cells, fn, timeout=spec.timeout, seed=seed, progress=progress)
    return attach_expectations(spec, cells, results)


def attach_expectations(
    spec: MatrixSpec, cells: list[Cell], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    by_id = {c.id: c for c in cells}
    for r in results:
        exp = expected_outcome(spec, by_id[r["id"]])
        r["expected"] = exp.value if exp else None
    return results


def partial_results(
    spec: MatrixSpec, cells: list[Cell], finished: dict[int, dict[str, Any]], why: str
) -> list[dict[str, Any]]:
    """Every cell in plan order after an interrupted run: the finished ones as they came
    back, the others marked ``NOT_RUN`` (no verdict) so a partial report cannot be
    mistaken for a complete one."""
    results = [
        finished[i] if i in finished else failed_cell(c, NOT_RUN, f"not run: {why}")
        for i, c in enumerate(cells)
    ]
    return attach_expectations(spec, cells, results)
