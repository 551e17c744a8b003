"""The Python API: what the ``virtio-sim`` commands do, callable from a script or a test.

Every entry point returns the objects the command prints (``run`` a RunResult, whose
``to_json()`` is ``virtio-sim run --json``; a matrix's cells are the dicts of
``virtio-sim matrix --json``; ``compare_drivers`` and ``check_conformance`` the reports
of ``virtio-sim compat`` and ``virtio-sim conformance``), and takes
its options with the command's meaning: the matrix filters go through the command's own
argument parser, so ``Matrix(driver="linux-6.1")`` selects what ``virtio-sim matrix
--driver linux-6.1`` selects. Documented in docs/api.md (whose examples a test runs).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from virtio_sim.orchestration.compat import CompatReport, compare
from virtio_sim.orchestration.conformance.report import Report
from virtio_sim.orchestration.embedded import ConfigError, RunConfig, run_embedded
from virtio_sim.orchestration.matrix import report as matrix_report
from virtio_sim.orchestration.matrix.spec import AXES, Cell, MatrixError, MatrixSpec
from virtio_sim.outcome import Outcome, RunResult

__all__ = [
    "ConfigError",
    "Matrix",
    "MatrixError",
    "MatrixResult",
    "Outcome",
    "RunResult",
    "check_conformance",
    "compare_drivers",
    "run",
    "run_async",
]


def _config(
    device: str | Iterable[str],
    workload: str,
    *,
    driver: str | None,
    transport: str,
    machine: str | None,
    iommu: str,
    ram: int,
    seed: int | None,
    timeout: float,
    globals: dict[str, str] | None,
) -> RunConfig:
    from virtio_sim.guest.profile import guest_policy
    from virtio_sim.profiles import ProfileError, load_driver_profile

    devices = [device] if isinstance(device, str) else list(device)
    if not devices:
        raise ConfigError("no device given")
    cfg = RunConfig(
        device=devices[0],
        extra_devices=devices[1:],
        workload=workload,
        transport=transport,
        ram_size=ram,
        seed=seed,
        timeout=timeout,
        iommu=iommu,
        machine=machine,
        globals=dict(globals or {}),
    )
    if driver is not None:
        try:
            cfg.guest = guest_policy(load_driver_profile(driver))
        except ProfileError as e:
            raise ConfigError(str(e)) from None
    return cfg


async def run_async(
    device: str | Iterable[str],
    workload: str,
    *,
    driver: str | None = None,
    transport: str = "mmio-v2",
    machine: str | None = None,
    iommu: str = "none",
    ram: int = 64 << 20,
    seed: int | None = 1,
    timeout: float = 10.0,
    globals: dict[str, str] | None = None,
) -> RunResult:
    """:func:`run` for code already inside trio (a pytest-trio test)."""
    cfg = _config(
        device, workload, driver=driver, transport=transport, machine=machine, iommu=iommu,
        ram=ram, seed=seed, timeout=timeout, globals=globals,
    )  # fmt: skip
    return await run_embedded(cfg)


def run(
    device: str | Iterable[str],
    workload: str,
    *,
    driver: str | None = None,
    transport: str = "mmio-v2",
    machine: str | None = None,
    iommu: str = "none",
    ram: int = 64 << 20,
    seed: int | None = 1,
    timeout: float = 10.0,
    globals: dict[str, str] | None = None,
) -> RunResult:
    """``virtio-sim run``: one device (QEMU ``-device`` syntax; a list for several on one
    machine) driven by one guest driver generation through one workload. Bad options raise
    ConfigError; a configuration the host refuses is a result (HOST_REFUSED), as in the CLI."""
    cfg = _config(
        device, workload, driver=driver, transport=transport, machine=machine, iommu=iommu,
        ram=ram, seed=seed, timeout=timeout, globals=globals,
    )  # fmt: skip
    return trio.run(run_embedded, cfg)


@dataclass
class MatrixResult:
    """A finished matrix: ``cells`` are the dicts ``virtio-sim matrix --json`` prints."""

    cells: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[matrix_report.Mismatch]:
        return matrix_report.mismatches(self.cells)

    @property
    def ok(self) -> bool:
        """Every cell as the matrix file expects (the command's exit status 0)."""
        return not self.mismatches and all(c["outcome"] != "TOOL_ERROR" for c in self.cells)

    @property
    def summary(self) -> dict[str, int]:
        return dict(sorted(Counter(str(c["outcome"]) for c in self.cells).items()))

    def cell(self, **axes: str) -> dict[str, Any]:
        """The one cell whose axes have these values."""
        found = [c for c in self.cells if all(c.get(k) == v for k, v in axes.items())]
        if len(found) != 1:
            raise KeyError(f"{len(found)} cells match {axes}")
        return found[0]

    def to_json(self) -> str:
        return matrix_report.to_json(self.cells, self.meta)

    def to_junit(self) -> str:
        return matrix_report.to_junit(self.cells, str(self.meta.get("source", "matrix")))

    def to_html(self) -> str:
        return matrix_report.to_html(self.cells, f"virtio-sim matrix: {self.meta.get('source')}", self.meta)


class Matrix:
    """``virtio-sim matrix [FILE] [--AXIS VALUE ...]``: plan with ``cells``, run with
    :meth:`run`. Filters are keyword arguments named after the axes (``driver``,
    ``device``, ``transport``, ``machine``, ``iommu``, ``iommu_platform``, ``ring``,
    ``workload``), each a value or a list of values; they mean what the flags mean."""

    def __init__(self, file: str | Path | None = None, **filters: str | Iterable[str]) -> None:
        from virtio_sim.orchestration.matrix.cli import add_matrix_arguments

        unknown = set(filters) - set(AXES)
        if unknown:
            raise MatrixError(f"unknown axis {', '.join(sorted(unknown))} (axes: {', '.join(AXES)})")
        argv: list[str] = [] if file is None else [str(file)]
        for axis, values in filters.items():
            for v in [values] if isinstance(values, str) else values:
                argv += ["--" + axis.replace("_", "-"), str(v)]
        parser = argparse.ArgumentParser(prog="virtio_sim.Matrix", add_help=False, exit_on_error=False)
        add_matrix_arguments(parser)
        try:
            self._args = parser.parse_args(argv)
        except (argparse.ArgumentError, SystemExit) as e:
            raise MatrixError(f"bad matrix options {argv}: {e}") from None
        self._spec: MatrixSpec | None = None
        self._cells: list[Cell] | None = None

    def _plan(self) -> tuple[MatrixSpec, list[Cell]]:
        from virtio_sim.orchestration.matrix.cli import matrix_spec
        from virtio_sim.orchestration.matrix.run import plan

        if self._spec is None or self._cells is None:
            spec, filters = matrix_spec(self._args)
            self._spec, self._cells = spec, plan(spec, filters)
        return self._spec, self._cells

    @property
    def cells(self) -> list[Cell]:
        """The selected cells, validated, not run (``virtio-sim matrix --list``)."""
        return list(self._plan()[1])

    def run(self, *, workers: int | None = None, seed: int = 1, timeout: float | None = None) -> MatrixResult:
        """Run the selected cells on local worker processes and attach expectations."""
        from virtio_sim.orchestration.matrix.executors import LocalPool
        from virtio_sim.orchestration.matrix.run import execute

        spec, cells = self._plan()
        if not cells:
            raise MatrixError("the filters select no cell")
        if timeout is not None:
            spec.timeout = timeout
        results = execute(spec, cells, LocalPool(workers), seed=seed)
        meta = {"source": spec.source, "cells": len(results), "timeout": spec.timeout, "seed": seed}
        return MatrixResult(results, meta)


def compare_drivers(
    old: str, new: str, file: str | Path | None = None, *, workers: int | None = None, **filters: Any
) -> CompatReport:
    """``virtio-sim compat --old OLD --new NEW``: both driver generations over the same
    configurations; the report's ``groups`` explain what changed and why."""
    if "driver" in filters:
        raise MatrixError("compat picks the drivers itself (old, new)")
    result = Matrix(file, driver=[old, new], **filters).run(workers=workers)
    return compare(result.cells, old, new)


def check_conformance(
    target: str,
    *,
    transport: str = "mmio-v2",
    ring: str = "split",
    policy: str = "lenient",
    thorough: bool = True,
) -> Report:
    """``virtio-sim conformance --target TARGET``: the per-requirement report
    (``report.must_failures`` empty is the command's exit status 0)."""
    from virtio_sim.orchestration.conformance.cli import check_target

    return check_target(target, transport=transport, ring=ring, policy=policy, thorough=thorough)
