"""Per-requirement conformance reports and catalogue coverage.

A report lists every catalogue entry on the target's side (device targets: device-side
entries, driver targets: driver-side ones) with its verdict: PASS, FAIL with the
evidence, NOT_APPLICABLE (with why: a feature not negotiated, another transport) or
NOT_COVERED (no checker decided it in this run). The summary counts verdicts by area and
by level. :func:`catalog_coverage` is a property of the catalogue alone: the share of
testable MUST/MUST NOT entries in the covered areas that some checker decides.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from virtio_sim.conformance.catalog import COVERED_AREAS, Catalog
from virtio_sim.conformance.findings import MANDATORY_LEVELS, FindingLog, Verdict


@dataclass
class Row:
    id: str
    area: str
    level: str
    actor: str
    section: str
    verdict: Verdict
    evidence: list[str]
    checker: str | None
    not_checkable: str | None
    #: a FAIL that is a documented deviation of the target (Finding.known): reported as
    #: KNOWN with the reason, not counted among the MUST failures
    known: str | None = None


@dataclass
class Report:
    target: str
    transport: str
    ring: str
    policy: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    stopped: str | None = None  # the strict-policy stop, if any

    def by_verdict(self, verdict: Verdict) -> list[Row]:
        return [r for r in self.rows if r.verdict is verdict]

    @property
    def must_failures(self) -> list[Row]:
        return [
            r
            for r in self.rows
            if r.verdict is Verdict.FAIL and r.level in MANDATORY_LEVELS and r.known is None
        ]

    def summary(self, key: str) -> dict[str, dict[str, int]]:
        """Verdict counts per ``key`` ("area" or "level")."""
        out: dict[str, Counter[str]] = {}
        for r in self.rows:
            out.setdefault(getattr(r, key), Counter())[r.verdict.value] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "transport": self.transport,
            "ring": self.ring,
            "policy": self.policy,
            "stopped": self.stopped,
            "totals": dict(Counter(r.verdict.value for r in self.rows)),
            "by_area": self.summary("area"),
            "by_level": self.summary("level"),
            "notes": self.notes,
            "requirements": [
                {
                    "id": r.id,
                    "area": r.area,
                    "level": r.level,
                    "section": r.section,
                    "verdict": r.verdict.value,
                    "evidence": r.evidence,
                    "checker": r.checker,
                    "not_checkable": r.not_checkable,
                    "known": r.known,
                }
                for r in self.rows
            ],
        }


#: areas that belong to one device type (key as in specs/devices.toml)
DEVICE_AREAS = {
    "blk": "blk",
    "blk-zoned": "blk",
    "rng": "rng",
    "iommu": "iommu",
    "console": "console",
    "net": "net",
}


def build_report(
    catalog: Catalog,
    log: FindingLog,
    *,
    target: str,
    actor: str,
    transport: str,
    ring: str,
    device_key: str | None = None,
) -> Report:
    """Rows for every ``actor`` entry; with ``device_key``, other device types' entries
    are NOT_APPLICABLE rather than NOT_COVERED."""
    rows = []
    for e in sorted(catalog.entries.values(), key=lambda e: (e.area, e.id)):
        if e.actor != actor:
            continue
        f = log.findings.get(e.id)
        other = device_key is not None and DEVICE_AREAS.get(e.area, device_key) != device_key
        if f is None and other:
            rows.append(
                Row(e.id, e.area, e.level, e.actor, e.section, Verdict.NOT_APPLICABLE,
                    [f"not a {e.area} device"], e.checker, e.not_checkable)
            )  # fmt: skip
            continue
        rows.append(
            Row(
                e.id,
                e.area,
                e.level,
                e.actor,
                e.section,
                f.verdict if f else Verdict.NOT_COVERED,
                list(f.evidence) if f else [],
                e.checker,
                e.not_checkable,
                f.known if f else None,
            )
        )
    notes = list(getattr(log, "notes", []))
    stopped = getattr(log, "stopped", None)
    return Report(
        target,
        transport,
        ring,
        log.policy.value,
        rows,
        notes,
        f"{stopped.requirement}: {'; '.join(stopped.evidence)}" if stopped is not None else None,
    )


# -- catalogue coverage ------------------------------------------------------------------


@dataclass
class Coverage:
    covered: int
    total: int
    per_area: dict[str, tuple[int, int]]
    per_actor: dict[str, tuple[int, int]]

    @property
    def share(self) -> float:
        return self.covered / self.total if self.total else 0.0


def catalog_coverage(catalog: Catalog, areas: tuple[str, ...] = COVERED_AREAS) -> Coverage:
    """Share of testable MUST/MUST NOT entries in ``areas`` that have a checker (a device
    checker of this package or a driver checker from driver-checkers.toml)."""
    per_area: dict[str, list[int]] = {a: [0, 0] for a in areas}
    per_actor: dict[str, list[int]] = {}
    for e in catalog.entries.values():
        if e.area not in per_area or not e.testable or e.level not in MANDATORY_LEVELS:
            continue
        hit = int(e.checker is not None)
        per_area[e.area][0] += hit
        per_area[e.area][1] += 1
        slot = per_actor.setdefault(e.actor, [0, 0])
        slot[0] += hit
        slot[1] += 1
    covered = sum(v[0] for v in per_area.values())
    total = sum(v[1] for v in per_area.values())
    return Coverage(
        covered,
        total,
        {a: (v[0], v[1]) for a, v in per_area.items()},
        {a: (v[0], v[1]) for a, v in sorted(per_actor.items())},
    )


# -- output formats -----------------------------------------------------------------------


def to_json(report: Report, coverage: Coverage | None = None) -> str:
    data = report.to_dict()
    if coverage is not None:
        data["catalog_coverage"] = {
            "covered": coverage.covered,
            "total": coverage.total,
            "share": round(coverage.share, 4),
            "per_area": {a: {"covered": c, "total": t} for a, (c, t) in coverage.per_area.items()},
        }
    return json.dumps(data, indent=2)


def to_junit(report: Report) -> str:
    """One testcase per requirement: FAIL is a failure, NOT_APPLICABLE / NOT_COVERED are
    skipped (with why), so CI dashboards show the same picture as the terminal."""
    from virtio_sim.matrix.report import junit_stamp

    stamp, host = junit_stamp()
    suite = ET.Element(
        "testsuite",
        # stable and dotted like the matrix's suites: virtio-sim.conformance.TARGET.TRANSPORT.RING
        name=f"virtio-sim.conformance.{report.target}.{report.transport}.{report.ring}",
        timestamp=stamp,
        hostname=host,
        tests=str(len(report.rows)),
        failures=str(len(report.by_verdict(Verdict.FAIL))),
        skipped=str(
            len(report.by_verdict(Verdict.NOT_APPLICABLE)) + len(report.by_verdict(Verdict.NOT_COVERED))
        ),
    )
    for r in report.rows:
        # per-case time: checkers decide many requirements in one run, so none has its own
        case = ET.SubElement(
            suite, "testcase", classname=f"{r.area}.{r.level.replace(' ', '_')}", name=r.id, time="0"
        )
        if r.verdict is Verdict.FAIL:
            fail = ET.SubElement(case, "failure", message=f"{r.level} violated")
            fail.text = "\n".join(r.evidence)
        elif r.verdict is Verdict.NOT_APPLICABLE:
            ET.SubElement(case, "skipped", message="not applicable: " + "; ".join(r.evidence))
        elif r.verdict is Verdict.NOT_COVERED:
            ET.SubElement(
                case, "skipped", message="not covered: " + (r.not_checkable or "no verdict this run")
            )
    return str(ET.tostring(suite, encoding="unicode"))


_COLOURS = {
    "FAIL": "#f7c6c6",
    "KNOWN": "#f9e0c0",
    "PASS": "#d4f7d4",
    "NOT_APPLICABLE": "#eeeeee",
    "NOT_COVERED": "#fff4c2",
}


def _html_order(r: Row) -> int:
    """Unexplained MUST failures first, then other failures, known deviations, and the
    rest (PASS, not applicable, not covered) in catalogue order."""
    if r.verdict is Verdict.FAIL:
        rank = (0 if r.level in MANDATORY_LEVELS else 1) if r.known is None else 2
    else:
        rank = 3
    return rank


def _shown_verdict(r: Row) -> str:
    return "KNOWN" if r.verdict is Verdict.FAIL and r.known is not None else r.verdict.value


def to_html(report: Report, coverage: Coverage | None = None) -> str:
    """One page: the verdict, then every requirement with FAILs first, each with its spec
    section and, for a documented deviation, the reason it is known."""
    esc = html.escape
    must = report.must_failures
    known = [r for r in report.rows if r.verdict is Verdict.FAIL and r.known is not None]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>virtio conformance: {esc(report.target)}</title>",
        "<style>body{font-family:sans-serif}td,th{padding:2px 6px;border:1px solid #ccc;vertical-align:top}"
        "table{border-collapse:collapse}#verdict{font-size:1.3em}</style></head><body>",
        f"<h1>Conformance of {esc(report.target)}</h1>",
        f"<p id='verdict'><b>{'FAIL' if must else 'PASS'}</b>: {len(must)} MUST failures, "
        f"{len(report.by_verdict(Verdict.FAIL)) - len(must) - len(known)} other failures, "
        f"{len(known)} known deviations, {len(report.by_verdict(Verdict.PASS))} passed "
        f"of {len(report.rows)} requirements</p>",
        f"<p>transport {esc(report.transport)}, ring {esc(report.ring)}, policy {esc(report.policy)}</p>",
    ]
    if report.stopped:
        parts.append(f"<p><b>Stopped (strict) at:</b> {esc(report.stopped)}</p>")
    if coverage is not None:
        parts.append(
            f"<p>Catalogue coverage of testable MUST/MUST NOT in the covered areas: "
            f"{coverage.covered}/{coverage.total} ({coverage.share:.0%})</p>"
        )
    parts.append(
        "<h2>Requirements</h2><table id='requirements'><tr><th>id</th><th>section</th><th>level</th>"
        "<th>verdict</th><th>evidence</th><th>known deviation</th></tr>"
    )
    for r in sorted(report.rows, key=_html_order):
        detail = "; ".join(r.evidence) or (r.not_checkable or "")
        shown = _shown_verdict(r)
        parts.append(
            f"<tr data-verdict='{shown}' style='background:{_COLOURS[shown]}'><td>{esc(r.id)}</td>"
            f"<td>{esc(r.section)}</td><td>{esc(r.level)}</td><td>{shown}</td><td>{esc(detail)}</td>"
            f"<td>{esc(r.known or '')}</td></tr>"
        )
    parts.append("</table><h2>By area</h2><table><tr><th>area</th>")
    verdicts = [v.value for v in Verdict]
    parts += [f"<th>{v}</th>" for v in verdicts] + ["</tr>"]
    for area, counts in report.summary("area").items():
        parts.append(
            f"<tr><td>{esc(area)}</td>" + "".join(f"<td>{counts.get(v, 0)}</td>" for v in verdicts) + "</tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)


def print_report(report: Report, console: Console, coverage: Coverage | None = None) -> None:
    """Failures in full, then verdict counts per area and level."""
    fails = report.by_verdict(Verdict.FAIL)
    if fails:
        t = Table(title=f"FAIL ({len(fails)})")
        for col in ("requirement", "level", "evidence"):
            t.add_column(col)
        for r in fails:
            t.add_row(r.id, r.level, "; ".join(r.evidence)[:200])
        console.print(t)
    for key in ("area", "level"):
        t = Table(title=f"{report.target} [{report.transport}, {report.ring}] by {key}")
        t.add_column(key)
        for v in Verdict:
            t.add_column(v.value, justify="right")
        for name, counts in report.summary(key).items():
            t.add_row(name, *(str(counts.get(v.value, 0)) for v in Verdict))
        console.print(t)
    if report.stopped:
        console.print(f"[bold red]strict policy: stopped at {report.stopped}[/]")
    if coverage is not None:
        console.print(
            f"catalogue coverage (testable MUST/MUST NOT, covered areas): "
            f"{coverage.covered}/{coverage.total} = {coverage.share:.1%}"
        )
