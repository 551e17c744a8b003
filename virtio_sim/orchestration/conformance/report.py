"""Per-requirement conformance reports and catalogue coverage.

A report lists every catalogue entry on the target's side (device targets: device-side
entries, driver targets: driver-side ones) with its verdict: PASS, FAIL with the
evidence, KNOWN (a FAIL that is a documented deviation, with the reason), ERROR (the
checker could not proceed, with the reason), NOT_APPLICABLE (with why: a feature not
negotiated, another transport) or NOT_COVERED (no checker decided it in this run, or part
of it was not exercised). The summary counts these by area and by level.

Coverage (:func:`coverage`) is counted over every area of the catalogue except the
out-of-scope ones (catalog.OUT_OF_SCOPE, stated in every report): for the testable
MUST/MUST NOT entries, how many have a checker and how many the runs the report covers
actually decided (PASS, FAIL or KNOWN). A checker that exists but decided nothing in these
runs does not count as coverage. Entries marked ``unreachable`` in the catalogue (testable in
principle, but no peer this tool runs reaches them: a feature none of our models, Linux 6.1
or QEMU 7.2 implements) are left out of the denominator, never counted as decided, and
listed with their reason in every coverage report (JSON ``coverage.unreachable``, console).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from virtio_sim.orchestration.campaign import html
from virtio_sim.orchestration.campaign import junit as campaign_junit
from virtio_sim.orchestration.campaign.verdict import CaseVerdict, Status
from virtio_sim.orchestration.conformance.catalog import COVERED_AREAS, OUT_OF_SCOPE, Catalog
from virtio_sim.orchestration.conformance.findings import DECIDED, MANDATORY_LEVELS, FindingLog, Verdict
from virtio_sim.peertext import plain

#: the columns of a report: the verdicts, with KNOWN (a documented FAIL) split out of FAIL
SHOWN = ("PASS", "FAIL", "KNOWN", "ERROR", "NOT_APPLICABLE", "NOT_COVERED")


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

    @property
    def shown(self) -> str:
        """What the report prints: KNOWN for a documented FAIL, else the verdict."""
        return "KNOWN" if self.verdict is Verdict.FAIL and self.known else self.verdict.value


@dataclass
class Report:
    target: str
    transport: str
    ring: str
    policy: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    stopped: str | None = None  # the strict-policy stop, if any
    #: ERRORs of the run as a whole (FindingLog.run_errors)
    run_errors: list[str] = field(default_factory=list)

    def by_verdict(self, verdict: Verdict) -> list[Row]:
        return [r for r in self.rows if r.verdict is verdict]

    def by_shown(self, shown: str) -> list[Row]:
        return [r for r in self.rows if r.shown == shown]

    @property
    def errors(self) -> list[Row]:
        return self.by_verdict(Verdict.ERROR)

    @property
    def failed(self) -> bool:
        """Exit 1: a MUST/MUST NOT failure that is not KNOWN, or any ERROR."""
        return bool(self.must_failures or self.errors or self.run_errors)

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
            out.setdefault(getattr(r, key), Counter())[r.shown] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "transport": self.transport,
            "ring": self.ring,
            "policy": self.policy,
            "stopped": self.stopped,
            "run_errors": self.run_errors,
            "totals": dict(Counter(r.shown for r in self.rows)),
            "by_area": self.summary("area"),
            "by_level": self.summary("level"),
            "notes": self.notes,
            "requirements": [
                {
                    "id": r.id,
                    "area": r.area,
                    "level": r.level,
                    "section": r.section,
                    "verdict": r.shown,
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
                list(f.evidence) if f else ([f"unreachable here: {e.unreachable}"] if e.unreachable else []),
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
        list(log.run_errors),
    )


# -- coverage -----------------------------------------------------------------------------


@dataclass
class AreaCoverage:
    testable: int = 0  # testable MUST/MUST NOT entries
    has_checker: int = 0  # of those, with a checker named in the catalogue
    decided: int = 0  # of those, PASS/FAIL/KNOWN in one of the runs counted


@dataclass
class Coverage:
    per_area: dict[str, AreaCoverage]
    per_actor: dict[str, AreaCoverage]
    runs: int  # how many runs' decisions count
    #: testable MUST/MUST NOT entries no peer here reaches (catalog Entry.unreachable): id -> why
    unreachable: dict[str, str] = field(default_factory=dict)
    out_of_scope: dict[str, str] = field(default_factory=lambda: dict(OUT_OF_SCOPE))

    def _sum(self, attr: str) -> int:
        return sum(getattr(a, attr) for a in self.per_area.values())

    @property
    def testable(self) -> int:
        return self._sum("testable")

    @property
    def has_checker(self) -> int:
        return self._sum("has_checker")

    @property
    def decided(self) -> int:
        return self._sum("decided")

    @property
    def share_decided(self) -> float:
        return self.decided / self.testable if self.testable else 0.0

    @property
    def share_checker(self) -> float:
        return self.has_checker / self.testable if self.testable else 0.0

    def to_dict(self) -> dict[str, Any]:
        def one(a: AreaCoverage) -> dict[str, int]:
            return {"testable": a.testable, "has_checker": a.has_checker, "decided": a.decided}

        return {
            "counts": "testable MUST/MUST NOT entries of every in-scope area, unreachable ones apart",
            "runs": self.runs,
            "testable": self.testable,
            "has_checker": self.has_checker,
            "decided": self.decided,
            "share_has_checker": round(self.share_checker, 4),
            "share_decided": round(self.share_decided, 4),
            "per_area": {k: one(v) for k, v in self.per_area.items()},
            "per_actor": {k: one(v) for k, v in self.per_actor.items()},
            "unreachable": self.unreachable,
            "out_of_scope": self.out_of_scope,
        }

    def line(self) -> str:
        return (
            f"coverage of testable MUST/MUST NOT (all areas but {', '.join(self.out_of_scope)}): "
            f"decided in {'this run' if self.runs == 1 else f'these {self.runs} runs'} "
            f"{self.decided}/{self.testable} = {self.share_decided:.1%}; with a checker "
            f"{self.has_checker}/{self.testable} = {self.share_checker:.1%}; "
            f"{len(self.unreachable)} more testable ones unreachable here (not counted, listed with why)"
        )


def decided_ids(logs: list[FindingLog]) -> set[str]:
    """Ids PASS or FAIL (KNOWN included) in any of ``logs``."""
    return {rid for log in logs for rid, f in log.findings.items() if f.verdict in DECIDED}


def coverage(
    catalog: Catalog, logs: list[FindingLog] | None = None, areas: tuple[str, ...] = COVERED_AREAS
) -> Coverage:
    """Per area and actor: testable MUST/MUST NOT entries, how many have a checker and how
    many ``logs`` decided (``logs`` None: the catalogue alone, decided 0)."""
    done = decided_ids(logs or [])
    per_area = {a: AreaCoverage() for a in areas}
    per_actor: dict[str, AreaCoverage] = {}
    unreachable: dict[str, str] = {}
    for e in catalog.entries.values():
        if e.area not in per_area or not e.testable or e.level not in MANDATORY_LEVELS:
            continue
        if e.unreachable is not None:
            unreachable[e.id] = e.unreachable
            continue
        for slot in (per_area[e.area], per_actor.setdefault(e.actor, AreaCoverage())):
            slot.testable += 1
            slot.has_checker += e.checker is not None
            slot.decided += e.id in done
    runs = len(logs or [])
    return Coverage(per_area, dict(sorted(per_actor.items())), runs, dict(sorted(unreachable.items())))


def catalog_coverage(catalog: Catalog, areas: tuple[str, ...] = COVERED_AREAS) -> Coverage:
    """The catalogue alone: which testable MUST/MUST NOT entries have a checker."""
    return coverage(catalog, None, areas)


# -- output formats -----------------------------------------------------------------------


def to_json(report: Report, cov: Coverage | None = None) -> str:
    data = report.to_dict()
    if cov is not None:
        data["coverage"] = cov.to_dict()
    return json.dumps(data, indent=2)


def junit_cases(report: Report) -> list[CaseVerdict]:
    """One case per requirement: FAIL is a failure, ERROR an error (with the reason),
    KNOWN an xfail with the documented reason, NOT_APPLICABLE / NOT_COVERED skipped (with
    why), so CI dashboards show the same picture as the terminal. Run-level errors are one
    more errored case. No case has a time of its own: checkers decide many requirements
    in one run."""
    out = []
    for r in report.rows:
        case = CaseVerdict(f"{r.area}.{r.level.replace(' ', '_')}", r.id, Status.PASSED)
        if r.shown == "KNOWN":
            case.status, case.message = Status.XFAIL, f"KNOWN deviation (xfail): {r.known}"
        elif r.verdict is Verdict.FAIL:
            case.status, case.message, case.text = Status.FAILED, f"{r.level} violated", "\n".join(r.evidence)
        elif r.verdict is Verdict.ERROR:
            case.status, case.message = Status.ERROR, "the checker could not proceed"
            case.text = "\n".join(r.evidence)
        elif r.verdict is Verdict.NOT_APPLICABLE:
            case.status, case.message = Status.SKIPPED, "not applicable: " + "; ".join(r.evidence)
        elif r.verdict is Verdict.NOT_COVERED:
            why = "; ".join(r.evidence) or r.not_checkable or "no verdict this run"
            case.status, case.message = Status.SKIPPED, "not covered: " + why
        out.append(case)
    if report.run_errors:
        out.append(
            CaseVerdict("run", "run", Status.ERROR, "the run could not proceed", "\n".join(report.run_errors))
        )
    return out


def to_junit(report: Report) -> str:
    """The report as JUnit XML (campaign/junit.py), a suite named stable and dotted like
    the matrix's: ``virtio-sim.conformance.TARGET.TRANSPORT.RING``."""
    name = f"virtio-sim.conformance.{report.target}.{report.transport}.{report.ring}"
    return campaign_junit.to_junit(name, junit_cases(report))


_COLOURS = {
    "PASS": "#d4f7d4",
    "FAIL": "#f7c6c6",
    "KNOWN": "#e6d9f7",
    "ERROR": "#f7a8a8",
    "NOT_APPLICABLE": "#eeeeee",
    "NOT_COVERED": "#fff4c2",
}


#: the HTML's row order: failures that count, then errors, other failures, known deviations
_HTML_RANK = {"FAIL": 1, "ERROR": 2, "KNOWN": 4}


def _html_order(r: Row) -> int:
    if r.shown == "FAIL":
        return 0 if r.level in MANDATORY_LEVELS else 3
    return _HTML_RANK.get(r.shown, 5)


def to_html(report: Report, cov: Coverage | None = None) -> str:
    """The report page in the campaign's frame (campaign/html.py): the verdict, the run,
    the coverage, counts by area, then every requirement, failures first."""
    esc = html.esc
    verdict = (
        f"<b>{'FAIL' if report.failed else 'PASS'}</b>: {len(report.must_failures)} MUST"
        f" failures, {len(report.by_shown('FAIL')) - len(report.must_failures)} other failures,"
        f" {len(report.by_shown('ERROR'))} errors, {len(report.by_shown('KNOWN'))} known deviations,"
        f" {len(report.by_shown('PASS'))} passed of {len(report.rows)} requirements"
    )
    parts = [
        html.banner(not report.failed, verdict),
        f"<p>transport {esc(report.transport)}, ring {esc(report.ring)}, policy {esc(report.policy)}</p>",
    ]
    if report.stopped:
        parts.append(f"<p><b>Stopped (strict) at:</b> {esc(report.stopped)}</p>")
    for e in report.run_errors:
        parts.append(f"<p><b>ERROR:</b> {esc(e)}</p>")
    if cov is not None:
        parts.append(f"<p>{esc(cov.line())}</p>")
        for area, why in cov.out_of_scope.items():
            parts.append(f"<p>Out of scope: {esc(area)}: {esc(why)}</p>")
        if cov.unreachable:
            parts.append("<p>Unreachable here (not counted):</p><ul>")
            parts += [f"<li>{esc(rid)}: {esc(why)}</li>" for rid, why in cov.unreachable.items()]
            parts.append("</ul>")
    parts.append("<h2>By area</h2>")
    areas = report.summary("area")
    parts += html.table(("area", *SHOWN), [(a, *(c.get(v, 0) for v in SHOWN)) for a, c in areas.items()])
    parts.append("<h2>Requirements</h2>")
    rows = sorted(report.rows, key=_html_order)  # failures first; stable: catalogue order within
    parts += html.table(
        ("id", "section", "level", "verdict", "evidence", "known deviation"),
        [
            (
                r.id,
                r.section,
                r.level,
                r.shown,
                "; ".join(r.evidence) or (r.not_checkable or ""),
                r.known or "",
            )
            for r in rows
        ],
        id="requirements",
        row_attrs=[f"data-verdict='{r.shown}' style='background:{_COLOURS[r.shown]}'" for r in rows],
    )
    return html.page(f"Conformance of {report.target}", parts)


def print_report(report: Report, console: Console, cov: Coverage | None = None) -> None:
    """Failures, errors and known deviations in full, then counts per area and level.
    Evidence and reasons are data (they quote the device), and so is the target (a drive
    path may be in it): printed without markup."""
    for shown in ("FAIL", "ERROR", "KNOWN"):
        rows = report.by_shown(shown)
        if not rows:
            continue
        t = Table(title=plain(f"{shown} ({len(rows)})"))
        for col in ("requirement", "level", "evidence" if shown != "KNOWN" else "documented deviation"):
            t.add_column(col)
        for r in rows:
            detail = "; ".join(r.evidence)
            if shown == "KNOWN":
                detail = f"{r.known} (evidence: {detail})"
            t.add_row(plain(r.id), plain(r.level), plain(detail, 300))
        console.print(t)
    for key in ("area", "level"):
        t = Table(title=plain(f"{report.target} [{report.transport}, {report.ring}] by {key}"))
        t.add_column(key)
        for v in SHOWN:
            t.add_column(v, justify="right")
        for name, counts in report.summary(key).items():
            t.add_row(plain(name), *(str(counts.get(v, 0)) for v in SHOWN))
        console.print(t)
    if report.stopped:
        console.print(Text(f"strict policy: stopped at {report.stopped}", style="bold red"))
    for e in report.run_errors:
        console.print(Text(f"ERROR: {e}", style="bold red"))
    if cov is not None:
        console.print(Text(cov.line()))
        for area, why in cov.out_of_scope.items():
            console.print(Text(f"out of scope: {area}: {why}"))
