"""``virtio-sim compat --old A --new B``: the old-vs-new check, as a build step.

Runs both driver generations over the configurations of a matrix file (the device axes
and their filters), groups the configurations whose outcome changed by the evidence
difference that caused it (virtio_sim/orchestration/compat.py), prints the groups, and writes
``--json [PATH]``, ``--junit-xml PATH`` (one case per configuration) and ``--html PATH``.
``--fail-on-change`` makes any change exit 1, so a CI job can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from virtio_sim.orchestration.compat import CompatReport, compare, to_junit
from virtio_sim.orchestration.matrix import report
from virtio_sim.orchestration.matrix.cli import (
    add_executor_arguments,
    check_outputs,
    make_executor,
    matrix_spec,
    run_with_progress,
)
from virtio_sim.orchestration.matrix.executors import TOOL_ERROR
from virtio_sim.orchestration.matrix.run import plan
from virtio_sim.orchestration.matrix.spec import AXES, MatrixError

EXIT_CHANGED = 1
EXIT_USAGE = 2


def add_compat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old", required=True, help="older driver profile")
    p.add_argument("--new", required=True, help="newer driver profile")
    p.add_argument("file", nargs="?", type=Path, help="matrix TOML for the device axes")
    for axis in AXES:
        if axis == "driver":
            continue
        p.add_argument(
            "--" + axis.replace("_", "-"), dest=axis, action="append", metavar=axis.upper(),
            help=f"only these {axis} values",
        )  # fmt: skip
    add_executor_arguments(p)
    p.add_argument(
        "--fail-on-change",
        action="store_true",
        help="exit 1 when any configuration's outcome changed (for CI)",
    )
    p.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON (to stdout alone if no PATH)"
    )
    p.add_argument("--junit-xml", metavar="PATH", help="write one JUnit case per configuration")
    p.add_argument("--html", metavar="PATH", help="write the two generations' cells as an HTML grid")


def print_report(rep: CompatReport) -> None:
    """Plain text (names from profiles and peers are data, never markup)."""
    print(f"{rep.configs} configurations, {len(rep.changes)} changed from {rep.old} to {rep.new}")
    for g in rep.groups:
        print(f"\n{g.headline}")
        for c in g.changes:
            print(f"  {c.config}")
            for extra in c.causes[1:]:
                print(f"      also: {extra}")
    if rep.unpaired:
        print(f"\n{len(rep.unpaired)} configurations ran for only one generation: {', '.join(rep.unpaired)}")


def cmd_compat(args: argparse.Namespace) -> int:
    if args.old == args.new:
        print("virtio-sim compat: error: --old and --new name the same profile", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec, filters = matrix_spec(args)
        filters["driver"] = [args.old, args.new]
        cells = plan(spec, filters)
        check_outputs(args)  # an unwritable report path fails before the runs
        executor = make_executor(args)
    except MatrixError as e:
        print(f"virtio-sim compat: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not cells:
        print("virtio-sim compat: error: the filters select no cell", file=sys.stderr)
        return EXIT_USAGE
    json_only = args.json == "-"
    results = run_with_progress(spec, cells, executor, args.seed, quiet=json_only)
    rep = compare(results, args.old, args.new)
    data = rep.to_json()
    data["compat"].update({"source": spec.source, "seed": args.seed, "fail_on_change": args.fail_on_change})
    data["cells"] = results
    if args.json and not json_only:
        Path(args.json).write_text(json.dumps(data, indent=2))
    if args.junit_xml:
        Path(args.junit_xml).write_text(to_junit(rep, args.fail_on_change))
    if args.html:
        meta = {"source": spec.source, "seed": args.seed, "old": args.old, "new": args.new}
        title = f"virtio-sim compat {args.old} -> {args.new}"
        Path(args.html).write_text(report.to_html(results, title, meta))
    if json_only:
        print(json.dumps(data, indent=2))
    else:
        print_report(rep)
    errors = [r for r in results if r["outcome"] == TOOL_ERROR]
    for r in errors:
        print(f"TOOL ERROR {r['id']}: {r['detail']}", file=sys.stderr)
    if errors:
        return EXIT_CHANGED
    return EXIT_CHANGED if args.fail_on_change and rep.changes else 0
