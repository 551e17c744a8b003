"""The finding log keeps the worst verdict per id and stops strict runs at a MUST failure."""

import pytest

from virtio_sim.orchestration.conformance.findings import FindingLog, Policy, StrictStop, Verdict

LEVELS = {"a.must": "MUST", "b.should": "SHOULD"}


def test_worst_verdict_wins_and_evidence_accumulates() -> None:
    log = FindingLog(LEVELS.__getitem__)
    log.not_applicable("a.must", "feature not negotiated")
    log.passed("a.must")
    assert log.verdict("a.must") is Verdict.PASS
    log.failed("a.must", "status dropped DRIVER")
    log.passed("a.must")
    assert log.verdict("a.must") is Verdict.FAIL
    assert log.findings["a.must"].evidence == ["feature not negotiated", "status dropped DRIVER"]
    assert log.verdict("b.should") is Verdict.NOT_COVERED
    assert [f.requirement for f in log.failures()] == ["a.must"]


def test_strict_stops_only_at_mandatory_failures() -> None:
    log = FindingLog(LEVELS.__getitem__, Policy.STRICT)
    log.failed("b.should", "a SHOULD failure does not stop the run")
    with pytest.raises(StrictStop) as stop:
        log.failed("a.must", "used idx before element")
    assert stop.value.finding.requirement == "a.must"


def test_unknown_requirement_is_a_checker_bug() -> None:
    with pytest.raises(KeyError):
        FindingLog(LEVELS.__getitem__).passed("no.such.id")
