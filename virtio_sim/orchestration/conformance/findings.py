"""What a conformance checker found, per requirement id, and when a run must stop.

Requirement ids are the stable ids of specs/conformance (taken from the virtio 1.4
requirement list, e.g. ``status.drv.never-clear-bit``). A checker calls
:meth:`FindingLog.passed`, :meth:`FindingLog.failed` or :meth:`FindingLog.not_applicable`;
the log keeps the worst verdict per id (FAIL beats ERROR beats PASS beats NOT_APPLICABLE) and
every piece of evidence, and under the strict policy turns the first MUST-level failure into
:class:`StrictStop` so the run ends where the target first broke the spec.

Two verdicts keep a run honest about what it did not see:

* :meth:`FindingLog.untested` records a part of a rule the run could not exercise (no config
  change could be provoked, no access trace): a PASS of that id is then reported as
  NOT_COVERED with the reason, never as PASS. A FAIL stays a FAIL.
* :meth:`FindingLog.error` records that a checker could not proceed (the device refused the
  setup it needed, an exception escaped): ERROR, with the reason. An ERROR fails the run like a
  MUST failure: a device that breaks the setup of a check does not pass it by default.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Verdict(enum.Enum):
    """Per-requirement result. NOT_COVERED is what a report says for ids no checker touched
    (or whose PASS had an untested part); ERROR that a checker could not proceed."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    NOT_APPLICABLE = "NOT_APPLICABLE"
    NOT_COVERED = "NOT_COVERED"


_RANK = {
    Verdict.NOT_COVERED: 0,
    Verdict.NOT_APPLICABLE: 1,
    Verdict.PASS: 2,
    Verdict.ERROR: 3,
    Verdict.FAIL: 4,
}
#: verdicts that decide a requirement (what coverage counts)
DECIDED = frozenset({Verdict.PASS, Verdict.FAIL})


class Policy(enum.Enum):
    """strict stops at the first MUST/MUST NOT failure; lenient records it and goes on."""

    STRICT = "strict"
    LENIENT = "lenient"


MANDATORY_LEVELS = frozenset({"MUST", "MUST NOT"})


class StrictStop(Exception):
    """Raised by a strict log at the first mandatory failure; carries that finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(f"{finding.requirement}: {finding.evidence}")
        self.finding = finding


@dataclass
class Finding:
    requirement: str
    verdict: Verdict
    evidence: list[str] = field(default_factory=list)
    #: a FAIL that is a documented deviation of the target (why, and where it is written down)
    known: str | None = None
    #: parts of the rule this run could not exercise: a PASS with gaps reads NOT_COVERED
    gaps: list[str] = field(default_factory=list)
    #: the worst verdict recorded, before gaps are applied
    worst: Verdict | None = None

    def settle(self) -> None:
        """``verdict`` from the worst recorded one and the gaps (a PASS with a gap is not a PASS)."""
        worst = self.worst or self.verdict
        self.verdict = Verdict.NOT_COVERED if worst is Verdict.PASS and self.gaps else worst


@dataclass
class FindingLog:
    """Accumulates findings. ``level_of`` maps an id to its level (from the catalogue);
    unknown ids are a checker bug and raise KeyError at once rather than vanish from the report."""

    level_of: Callable[[str], str]
    policy: Policy = Policy.LENIENT
    findings: dict[str, Finding] = field(default_factory=dict)
    #: documented deviations of the target: a failure of one of these ids is reported as
    #: KNOWN (Finding.known) and does not stop a strict run
    known: dict[str, str] = field(default_factory=dict)
    #: ERRORs of the run as a whole (no requirement to pin them on: the device was not found,
    #: the run itself crashed); they fail the run like ERROR findings
    run_errors: list[str] = field(default_factory=list)

    def _record(self, requirement: str, verdict: Verdict, evidence: str | None) -> Finding:
        level = self.level_of(requirement)  # KeyError for an id not in the catalogue
        finding = self.findings.get(requirement)
        if finding is None:
            finding = self.findings[requirement] = Finding(requirement, verdict, worst=verdict)
        elif finding.worst is None or _RANK[verdict] > _RANK[finding.worst]:
            finding.worst = verdict
        if evidence:
            finding.evidence.append(evidence)
        finding.settle()
        if verdict is Verdict.FAIL and requirement in self.known:
            finding.known = self.known[requirement]
            return finding
        if verdict is Verdict.FAIL and self.policy is Policy.STRICT and level in MANDATORY_LEVELS:
            raise StrictStop(finding)
        return finding

    def passed(self, requirement: str, evidence: str | None = None) -> None:
        self._record(requirement, Verdict.PASS, evidence)

    def failed(self, requirement: str, evidence: str) -> None:
        self._record(requirement, Verdict.FAIL, evidence)

    def not_applicable(self, requirement: str, why: str) -> None:
        self._record(requirement, Verdict.NOT_APPLICABLE, why)

    def error(self, requirement: str, why: str) -> None:
        """The checker for ``requirement`` could not proceed (ERROR, fails the run)."""
        self._record(requirement, Verdict.ERROR, f"ERROR: {why}")

    def untested(self, requirement: str, why: str) -> None:
        """Part of ``requirement`` was not exercised: a PASS of it reads NOT_COVERED."""
        self.level_of(requirement)
        finding = self.findings.get(requirement)
        if finding is None:
            finding = self.findings[requirement] = Finding(requirement, Verdict.NOT_COVERED)
        finding.gaps.append(why)
        finding.evidence.append(f"not exercised: {why}")
        finding.settle()

    def check(self, requirement: str, ok: bool, evidence: str) -> bool:
        """Record PASS or FAIL for one observation; returns ``ok`` so callers can branch."""
        if ok:
            self.passed(requirement)
        else:
            self.failed(requirement, evidence)
        return ok

    def verdict(self, requirement: str) -> Verdict:
        finding = self.findings.get(requirement)
        return Verdict.NOT_COVERED if finding is None else finding.verdict

    def failures(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.verdict is Verdict.FAIL]

    def errors(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.verdict is Verdict.ERROR]

    def unexplained_failures(self) -> list[Finding]:
        """Failures that are not documented deviations (what a conforming target has none of)."""
        return [f for f in self.failures() if f.known is None]
