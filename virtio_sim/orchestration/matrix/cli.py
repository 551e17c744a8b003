"""``virtio-sim matrix`` (``virtio-sim compat`` is virtio_sim/orchestration/compat_cli.py; it shares the
executor options and the progress display defined here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from virtio_sim.argtypes import positive_seconds
from virtio_sim.console import output_console
from virtio_sim.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from virtio_sim.orchestration.campaign.interrupt import Interrupted, stop_on_signals
from virtio_sim.orchestration.campaign.outputs import Outputs, add_report_arguments
from virtio_sim.orchestration.campaign.progress import ProgressReporter
from virtio_sim.orchestration.matrix import report
from virtio_sim.orchestration.matrix.cell import run_cell, run_cell_qemu, validate_cell_for_qemu
from virtio_sim.orchestration.matrix.executors import (
    NOT_RUN,
    SCHEDULER_CONNECT_TIMEOUT,
    TOOL_ERROR,
    CellFn,
    DaskExecutor,
    ExecutorError,
    LocalPool,
)
from virtio_sim.orchestration.matrix.run import Executor, execute, partial_results, plan
from virtio_sim.orchestration.matrix.select import added_values, select_axes
from virtio_sim.orchestration.matrix.spec import (
    AXES,
    Cell,
    MatrixError,
    MatrixSpec,
    expand,
    expected_outcome,
    load_matrix,
)
from virtio_sim.outpaths import OutputPathError
from virtio_sim.peertext import peer_text

EXIT_MISMATCH = 1
EXIT_USAGE = 2


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", type=Path, help="matrix TOML (default: specs/matrices/default.toml)")
    for axis in AXES:
        flag = "--" + axis.replace("_", "-")
        p.add_argument(
            flag, dest=axis, action="append", metavar=axis.upper(), help=f"only these {axis} values"
        )
    add_executor_arguments(p)
    add_report_arguments(
        p,
        json_help="write JSON (to stdout alone if no PATH)",
        junit_help="write a JUnit XML report",
        html_help="write a self-contained HTML grid",
    )
    p.add_argument(
        "--device-backend",
        choices=("ours", "qemu"),
        default="ours",
        help="run the cells on our device models (default) or on QEMU's (qemu-system-x86_64, qtest)",
    )
    p.add_argument(
        "--list", action="store_true", help="print the selected cells and their expected outcomes, run none"
    )


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on a dask.distributed scheduler")
    p.add_argument("--dask-local", type=int, metavar="N", help="run on a dask LocalCluster of N workers")
    p.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=SCHEDULER_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="give up on an unreachable --scheduler after this long"
        f" (exit 2; default {SCHEDULER_CONNECT_TIMEOUT:g})",
    )
    p.add_argument(
        "--timeout", type=positive_seconds, help="per-cell timeout in seconds (overrides the file)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed for reproducible data")


def make_executor(args: argparse.Namespace) -> Executor:
    if args.scheduler or args.dask_local:
        if args.dask_local is not None and args.dask_local < 1:
            raise MatrixError("--dask-local needs at least 1 worker")
        dask = DaskExecutor(
            address=args.scheduler, local_workers=args.dask_local, connect_timeout=args.connect_timeout
        )
        try:
            dask.connect()  # an unreachable scheduler is a usage error before anything runs
        except ExecutorError as e:
            raise MatrixError(str(e)) from None
        return dask
    if args.workers is not None and args.workers < 1:
        raise MatrixError("--workers needs at least 1")
    return LocalPool(args.workers)


def matrix_spec(args: argparse.Namespace) -> tuple[MatrixSpec, dict[str, list[str]]]:
    """The matrix file and the filters, resolved against its axes (virtio_sim/orchestration/matrix/select.py):
    a filter narrows the file's matrix, it never swaps the other axes for defaults."""
    spec = load_matrix(args.file)
    raw = {a: getattr(args, a) for a in AXES if getattr(args, a, None)}
    filters = select_axes(spec, raw)
    if args.timeout is not None:  # positive_seconds refused nan, inf and <= 0 at parsing
        spec.timeout = args.timeout
    return spec, filters


def selection_line(spec: MatrixSpec, cells: list[Cell]) -> str:
    """``72 of 2880 cells selected (specs/matrices/default.toml)``."""
    return f"{len(cells)} of {len(expand(spec))} cells selected ({spec.source})"


def run_with_progress(
    spec: MatrixSpec,
    cells: list[Any],
    executor: Executor,
    seed: int,
    quiet: bool,
    fn: CellFn = run_cell,
    finished: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run the cells with a progress display (a bar at a terminal, lines in a log).
    ``finished`` collects each result as it arrives, so an interrupted run still has them."""
    got = finished if finished is not None else {}
    bar = None if quiet else ProgressReporter(len(cells))

    def on_result(i: int, r: dict[str, Any]) -> None:
        got[i] = r
        if bar is not None:
            bar.advance()

    if bar is None:
        return execute(spec, cells, executor, seed=seed, progress=on_result, fn=fn)
    with bar:
        return execute(spec, cells, executor, seed=seed, progress=on_result, fn=fn)


def verdict_line(results: list[dict[str, Any]]) -> str:
    """``2880 cells, 0 unexpected`` (plus tool errors and unfinished cells if any)."""
    ran = [r for r in results if r["outcome"] != NOT_RUN]
    line = f"{len(ran)} cells, {len(report.mismatches(results))} unexpected"
    errors = sum(1 for r in results if r["outcome"] == TOOL_ERROR)
    if errors:
        line += f", {errors} tool errors"
    if len(ran) < len(results):
        line += f", {len(results) - len(ran)} not run"
    return line


def _quiet_closed_pipe() -> int:
    """The reader went away (``| head``, or a log collector on stderr): stop without a traceback
    or a flush error at exit, with virtio_sim.orchestration.cli's status for it (141, 128 + SIGPIPE)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    return EXIT_BROKEN_PIPE


def check_outputs(args: argparse.Namespace) -> None:
    """Fail on an unwritable --json/--junit-xml/--html path before any cell runs."""
    try:
        Outputs.of(args).check()
    except OutputPathError as e:
        raise MatrixError(str(e)) from None


def write_outputs(args: argparse.Namespace, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Raises OutputPathError if a report cannot be written after all (disk full...)."""
    Outputs.of(args).write(
        json=lambda: report.to_json(results, meta),
        junit=lambda: report.to_junit(results, meta["source"]),
        html=lambda: report.to_html(results, f"virtio-sim matrix: {meta['source']}", meta),
    )


def cmd_matrix(args: argparse.Namespace) -> int:
    try:
        return _cmd_matrix(args)
    except BrokenPipeError:
        return _quiet_closed_pipe()


def _cmd_matrix(args: argparse.Namespace) -> int:
    try:
        spec, filters = matrix_spec(args)
        cells = plan(spec, filters)
        fn: CellFn = run_cell
        if getattr(args, "device_backend", "ours") == "qemu":
            for c in cells:
                validate_cell_for_qemu(c)
            fn = run_cell_qemu
        if not cells:
            raise MatrixError("the filters select no cell")
        check_outputs(args)  # before the run: a bad path must not cost the results
        executor = make_executor(args)
    except MatrixError as e:
        print(f"virtio-sim matrix: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    selected = selection_line(spec, cells)
    added = added_values(spec, filters)
    if added:
        selected += f"; not in the file, added: {', '.join(added)}"
    if getattr(args, "list", False):
        for c in cells:
            exp = expected_outcome(spec, c)
            print(f"{c.id}  expect {exp.value if exp else '-'}")
        print(selected, file=sys.stderr)
        return 0
    print(selected, file=sys.stderr, flush=True)
    json_only = args.json == "-"
    finished: dict[int, dict[str, Any]] = {}
    interrupted: str | None = None
    with stop_on_signals() as stop:
        try:
            results = run_with_progress(spec, cells, executor, args.seed, False, fn, finished)
        except Interrupted as e:
            interrupted = e.signame
        except KeyboardInterrupt:
            interrupted = "SIGINT"
        stop.hold()  # from here a signal is only noted: the reports get written either way
        if interrupted:
            results = partial_results(spec, cells, finished, f"interrupted by {interrupted}")
        meta = {
            "source": spec.source,
            "cells": len(results),
            "timeout": spec.timeout,
            "seed": args.seed,
            "device_backend": getattr(args, "device_backend", "ours"),
            "interrupted": interrupted,
        }
        try:
            write_outputs(args, results, meta)
        except OutputPathError as e:  # the table and JSON on stdout still carry the results
            print(f"virtio-sim matrix: error: {e}", file=sys.stderr)
            written = False
        else:
            written = True
        if json_only:
            print(report.to_json(results, meta), flush=True)
    interrupted = interrupted or stop.signame
    if interrupted:
        print(
            f"virtio-sim matrix: interrupted by {interrupted} after {len(finished)} of {len(cells)} cells;"
            " unfinished cells are marked NOT_RUN in the reports",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    out = sys.stderr if json_only else sys.stdout
    if not json_only:
        report.print_table(results, output_console())
    bad = report.mismatches(results)
    errors = [r for r in results if r["outcome"] == TOOL_ERROR]
    for m in bad:
        print(f"MISMATCH {m.id}: expected {m.expected}, got {m.got} ({peer_text(m.detail)})", file=out)
    for r in errors:
        print(f"TOOL ERROR {r['id']}: {peer_text(r['detail'])}", file=sys.stderr)
    print(verdict_line(results), file=out, flush=True)
    if not written:
        return EXIT_USAGE
    return EXIT_MISMATCH if bad or errors else 0
