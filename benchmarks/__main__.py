"""python -m benchmarks [--quick] [--json PATH]: run the benchmarks, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.suite import GROUPS, run_all


def _num(v: float) -> str:
    """One decimal from 10 up; three significant digits below (start-up seconds: 0.214)."""
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--quick", action="store_true", help="a tenth of the counts, one run each")
    p.add_argument("--scale", type=float, default=None, help="multiply every count (default 1)")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure, the best kept (default 3)")
    p.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: " + ",".join(GROUPS))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    args = p.parse_args(argv)
    only = tuple(g.strip() for g in args.only.split(",") if g.strip())
    unknown = [g for g in only if g not in GROUPS]
    if unknown:
        p.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    rows = run_all(scale=scale, only=only, repeat=repeat)
    table = Table("group", "benchmark", "value", "unit", "floor", "ratio to floor", "target", "clock")
    for r in rows:
        met = r.met
        mark = "" if met is None else (" [green]met[/]" if met else " [red]missed[/]")
        table.add_row(
            r.group, r.name, _num(r.value), r.unit,
            _num(r.floor) if r.floor else "-", f"{r.ratio:.3f}x" if r.ratio else "-",
            r.target_text() + mark, r.clock,
        )  # fmt: skip
    Console(width=max(Console().width, 150)).print(table)
    args.json.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "scale": scale,
                "repeat": repeat,
                "rows": [r.to_json() for r in rows],
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
