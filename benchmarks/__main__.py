"""python -m benchmarks [--quick] [--json PATH]: run the benchmarks, print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.suite import run_all


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    args = p.parse_args()
    rows = run_all(quick=args.quick)
    table = Table("group", "benchmark", "value", "unit", "floor", "ratio to floor")
    for r in rows:
        table.add_row(
            r.group, r.name, f"{r.value:,.1f}", r.unit,
            f"{r.floor:,.1f}" if r.floor else "-", f"{r.ratio:.3f}x" if r.ratio else "-",
        )  # fmt: skip
    Console().print(table)
    args.json.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "rows": [r.to_json() for r in rows],
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
