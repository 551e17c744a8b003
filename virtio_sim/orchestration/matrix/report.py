"""Matrix reports: terminal table, JSON, JUnit XML and a self-contained HTML grid."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from virtio_sim.orchestration.campaign import junit as campaign_junit
from virtio_sim.orchestration.campaign.verdict import CaseVerdict, Status
from virtio_sim.orchestration.matrix.executors import NOT_RUN, TOOL_ERROR
from virtio_sim.peertext import plain

OUTCOME_STYLE = {
    "OK": "green",
    "OK_NO_ISOLATION": "yellow",
    "FAILED_CLEAN": "cyan",
    "NOT_PROBED": "bright_black",
    "HOST_REFUSED": "blue",
    "DMA_FAULT": "magenta",
    "DEVICE_ERROR": "red",
    "CORRUPTION": "bold red",
    "HANG": "bold magenta",
    "TOOL_ERROR": "bold white on red",
    "NOT_RUN": "dim",
}
OUTCOME_COLOUR = {
    "OK": "#3c9a4a",
    "OK_NO_ISOLATION": "#d8b83a",
    "FAILED_CLEAN": "#4aa8c8",
    "NOT_PROBED": "#9a9a9a",
    "HOST_REFUSED": "#5a6ad0",
    "DMA_FAULT": "#b84ab8",
    "DEVICE_ERROR": "#d05a3a",
    "CORRUPTION": "#a01010",
    "HANG": "#7a1a7a",
    "TOOL_ERROR": "#000000",
    "NOT_RUN": "#dddddd",
}
ABBREV = {
    "OK": "OK", "OK_NO_ISOLATION": "NOISO", "FAILED_CLEAN": "FAIL", "NOT_PROBED": "NOPROBE",
    "HOST_REFUSED": "REFUSED", "DMA_FAULT": "DMAF", "DEVICE_ERROR": "DEVERR",
    "CORRUPTION": "CORRUPT", "HANG": "HANG", "TOOL_ERROR": "BUG", "NOT_RUN": "-",
}  # fmt: skip


@dataclass
class Mismatch:
    id: str
    expected: str
    got: str
    detail: str


def mismatches(results: list[dict[str, Any]]) -> list[Mismatch]:
    return [
        Mismatch(r["id"], r["expected"], r["outcome"], r.get("detail", ""))
        for r in results
        if r.get("expected") and r["expected"] != r["outcome"] and r["outcome"] != NOT_RUN
    ]


def _variant(r: dict[str, Any]) -> str:
    """The axes that are not rows/columns of the grid, as one label."""
    parts = [r["workload"]]
    if r.get("iommu_platform") == "on":
        parts.append("iommu_platform")
    if r.get("ring") != "split":
        parts.append(str(r.get("ring")))
    if r.get("iommu") not in (None, "none"):
        parts.append(str(r["iommu"]))
    if r.get("machine") not in (None, "auto", "microvm", "q35"):
        parts.append(f"-M {r['machine']}")  # a firmware-described machine (matrix axis)
    return "+".join(parts)


def print_table(results: list[dict[str, Any]], console: Console) -> None:
    """One grid per transport. Axis values come from matrix files and details from peers:
    every string goes in as rich Text (styled by outcome), never as markup."""
    for transport in sorted({r["transport"] for r in results}):
        rows = [r for r in results if r["transport"] == transport]
        devices = sorted({r["device"] for r in rows})
        drivers = sorted({r["driver"] for r in rows})
        boxes: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            boxes.setdefault((r["driver"], r["device"]), []).append(r)
        table = Table(title=plain(f"transport {transport}"), show_lines=False)
        table.add_column(Text("driver \\ device"))
        for d in devices:
            table.add_column(plain(d))
        for drv in drivers:
            cells = []
            for dev in devices:
                here = boxes.get((drv, dev), [])
                box = Text()
                for n, r in enumerate(sorted(here, key=_variant)):
                    if n:
                        box.append(" ")
                    box.append(
                        plain(
                            ABBREV.get(r["outcome"], r["outcome"]), style=OUTCOME_STYLE.get(r["outcome"], "")
                        )
                    )
                    if r.get("expected") and r["expected"] != r["outcome"]:
                        box.append("!")
                cells.append(box)
            table.add_row(plain(drv), *cells)
        console.print(table)
    variants = sorted({_variant(r) for r in results})
    console.print(plain(f"cell order within a box: {', '.join(variants)}"))
    counts = Counter(r["outcome"] for r in results)
    line = Text("outcomes: ")
    for n, (k, v) in enumerate(sorted(counts.items())):
        if n:
            line.append(", ")
        line.append(plain(k, style=OUTCOME_STYLE.get(k, "")))
        line.append(f" {v}")
    console.print(line)


def to_json(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    counts = Counter(r["outcome"] for r in results)
    return json.dumps({"matrix": meta, "summary": dict(sorted(counts.items())), "cells": results}, indent=2)


def suite_name(source: str) -> str:
    """A JUnit suite name that stays the same wherever the checkout is:
    ``virtio-sim.matrix.<matrix file stem>``."""
    return "virtio-sim.matrix." + PurePath(str(source)).stem


def junit_cases(results: list[dict[str, Any]]) -> list[CaseVerdict]:
    """One case per cell (its seconds as the case time, its outcome a property): a cell
    whose outcome is not the expected one failed, a TOOL_ERROR is an error, a cell an
    interrupt left NOT_RUN is skipped."""
    failed_ids = {m.id for m in mismatches(results)}
    out = []
    for r in results:
        o = r["outcome"]
        detail = r.get("detail", "")
        case = CaseVerdict(f"matrix.{r['transport']}", r["id"], Status.PASSED,
                           seconds=float(r.get("seconds") or 0), properties={"outcome": o})  # fmt: skip
        if r["id"] in failed_ids:
            case.status, case.message, case.text = Status.FAILED, f"expected {r['expected']}, got {o}", detail
        elif o == NOT_RUN:
            case.status, case.message = Status.SKIPPED, detail or "not run"
        elif o == TOOL_ERROR:
            case.status, case.message, case.text = Status.ERROR, "tool error", detail
        out.append(case)
    return out


def to_junit(results: list[dict[str, Any]], name: str) -> str:
    """The matrix as JUnit XML (campaign/junit.py); ``name``: the matrix file."""
    return campaign_junit.to_junit(suite_name(name), junit_cases(results))


def to_html(results: list[dict[str, Any]], title: str, meta: dict[str, Any] | None = None) -> str:
    """The self-contained page (virtio_sim/orchestration/matrix/html_report.py)."""
    from virtio_sim.orchestration.matrix.html_report import default_meta, render

    return render(results, title, default_meta(meta), colours=OUTCOME_COLOUR, abbrev=ABBREV, variant=_variant)
