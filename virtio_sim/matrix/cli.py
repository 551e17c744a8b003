"""``virtio-sim matrix`` and ``virtio-sim compat``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from virtio_sim.console import output_console
from virtio_sim.exit_codes import EXIT_INTERRUPTED
from virtio_sim.matrix import report
from virtio_sim.matrix.cell import run_cell, run_cell_qemu, validate_cell_for_qemu
from virtio_sim.matrix.executors import NOT_RUN, TOOL_ERROR, CellFn, DaskExecutor, LocalPool
from virtio_sim.matrix.interrupt import Interrupted, stop_on_signals
from virtio_sim.matrix.progress import ProgressReporter
from virtio_sim.matrix.run import Executor, execute, partial_results, plan
from virtio_sim.matrix.select import added_values, select_axes
from virtio_sim.matrix.spec import AXES, Cell, MatrixError, MatrixSpec, expand, expected_outcome, load_matrix

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
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write JSON (to stdout alone if no PATH)",
    )
    p.add_argument("--junit-xml", metavar="PATH", help="write a JUnit XML report")
    p.add_argument(
        "--device-backend",
        choices=("ours", "qemu"),
        default="ours",
        help="run the cells on our device models (default) or on QEMU's (qemu-system-x86_64, qtest)",
    )
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML grid")
    p.add_argument(
        "--list", action="store_true", help="print the selected cells and their expected outcomes, run none"
    )


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on a dask.distributed scheduler")
    p.add_argument("--dask-local", type=int, metavar="N", help="run on a dask LocalCluster of N workers")
    p.add_argument("--timeout", type=float, help="per-cell timeout in seconds (overrides the file)")
    p.add_argument("--seed", type=int, default=1, help="seed for reproducible data")


def make_executor(args: argparse.Namespace) -> Executor:
    if args.scheduler or args.dask_local:
        if args.dask_local is not None and args.dask_local < 1:
            raise MatrixError("--dask-local needs at least 1 worker")
        return DaskExecutor(address=args.scheduler, local_workers=args.dask_local)
    if args.workers is not None and args.workers < 1:
        raise MatrixError("--workers needs at least 1")
    return LocalPool(args.workers)


def matrix_spec(args: argparse.Namespace) -> tuple[MatrixSpec, dict[str, list[str]]]:
    """The matrix file and the filters, resolved against its axes (virtio_sim/matrix/select.py):
    a filter narrows the file's matrix, it never swaps the other axes for defaults."""
    spec = load_matrix(args.file)
    raw = {a: getattr(args, a) for a in AXES if getattr(args, a, None)}
    filters = select_axes(spec, raw)
    if args.timeout is not None:
        if args.timeout <= 0:
            raise MatrixError("--timeout must be positive")
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
    """The reader went away (``| head``): stop without a traceback or a flush error at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    return EXIT_MISMATCH


def write_outputs(args: argparse.Namespace, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    if args.json and args.json != "-":
        Path(args.json).write_text(report.to_json(results, meta))
    if args.junit_xml:
        Path(args.junit_xml).write_text(report.to_junit(results, meta["source"]))
    if args.html:
        Path(args.html).write_text(report.to_html(results, f"virtio-sim matrix: {meta['source']}"))


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
        executor = make_executor(args)
    except MatrixError as e:
        print(f"virtio-sim matrix: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not cells:
        print("virtio-sim matrix: error: the filters select no cell", file=sys.stderr)
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
        write_outputs(args, results, meta)
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
        print(f"MISMATCH {m.id}: expected {m.expected}, got {m.got} ({m.detail})", file=out)
    for r in errors:
        print(f"TOOL ERROR {r['id']}: {r['detail']}", file=sys.stderr)
    print(verdict_line(results), file=out, flush=True)
    return EXIT_MISMATCH if bad or errors else 0


def cmd_compat(args: argparse.Namespace) -> int:
    """Run two driver generations over the same device configurations; show what changed."""
    try:
        spec, filters = matrix_spec(args)
        filters["driver"] = [args.old, args.new]
        cells = plan(spec, filters)
        executor = make_executor(args)
    except MatrixError as e:
        print(f"virtio-sim compat: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    json_only = args.json == "-"
    results = run_with_progress(spec, cells, executor, args.seed, quiet=json_only)
    pairs: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        key = "/".join(str(r[a]) for a in AXES if a != "driver")
        pairs.setdefault(key, {})[r["driver"]] = r
    changes = []
    for key, by in sorted(pairs.items()):
        old, new = by.get(args.old), by.get(args.new)
        if old and new and old["outcome"] != new["outcome"]:
            changes.append(
                {"config": key, "old": old["outcome"], "new": new["outcome"],
                 "old_detail": old.get("detail", ""), "new_detail": new.get("detail", "")}
            )  # fmt: skip
    meta = {"source": spec.source, "old": args.old, "new": args.new, "configs": len(pairs)}
    if json_only:
        import json

        print(json.dumps({"compat": meta, "changed": changes, "cells": results}, indent=2))
        return 0
    write_outputs(args, results, meta)
    console = output_console()
    console.print(f"{len(pairs)} configurations, {len(changes)} changed from {args.old} to {args.new}")
    from rich.table import Table

    t = Table("configuration", args.old, args.new, "why (new)")
    for c in changes:
        t.add_row(c["config"], c["old"], c["new"], c["new_detail"][:80])
    console.print(t)
    return 0


def add_compat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old", required=True, help="older driver profile")
    p.add_argument("--new", required=True, help="newer driver profile")
    p.add_argument("file", nargs="?", type=Path, help="matrix TOML for the device axes")
    for axis in AXES:
        if axis == "driver":
            continue
        p.add_argument("--" + axis.replace("_", "-"), dest=axis, action="append", metavar=axis.upper())
    add_executor_arguments(p)
    p.add_argument("--json", nargs="?", const="-", metavar="PATH")
    p.add_argument("--junit-xml", metavar="PATH")
    p.add_argument("--html", metavar="PATH")
