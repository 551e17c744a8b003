"""The campaign harness (virtio_sim/orchestration/campaign/): the one deadline mechanism, the one JUnit
writer, the report outputs, and attacks reporting through them.

The deadline runners themselves are checked where they stop real work:
tests/matrix/test_matrix.py (a hanging cell on the local pool), tests/matrix/test_dask_deadline.py
(on dask) and tests/attacks/test_attacks.py (a spinning case stopped by its CPU budget, a starved
one not). These tests pin the budget arithmetic those runners share.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtio_sim.orchestration import cli
from virtio_sim.orchestration.campaign.deadline import CpuBudget, WallBudget, hard_deadline, wait_within
from virtio_sim.orchestration.campaign.junit import to_junit
from virtio_sim.orchestration.campaign.outputs import Outputs
from virtio_sim.orchestration.campaign.verdict import CaseVerdict, Status
from virtio_sim.outpaths import OutputPathError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_wall_budget_waits_exactly_what_is_left_and_restarts() -> None:
    clock = Clock()
    b = WallBudget(5.0, clock=clock)
    waits: list[float] = []

    def never(seconds: float) -> bool:
        waits.append(seconds)
        clock.now += seconds
        return False

    assert not wait_within(b, never)
    assert waits == [5.0] and b.left() == 0
    b.restart()
    assert b.left() == 5.0 and b.describe() == "5s"
    clock.now += 1
    assert wait_within(b, lambda s: True)  # done within it
    assert hard_deadline(10.0) == 18.0


def test_a_cpu_budget_counts_the_threads_cpu_not_the_clock() -> None:
    """A starved thread (1 CPU second per 10 wall seconds) is waited for until its CPU is
    spent, however long that takes on the wall; a thread that stops using CPU is caught
    by the wall backstop."""
    clock = Clock()
    cpu = {"used": 0.0}

    def starved(seconds: float) -> bool:
        clock.now += seconds
        cpu["used"] += seconds / 10
        return False

    b = CpuBudget(2.0, tid=1, wall=1000.0, clock=clock, cpu_of=lambda tid: cpu["used"])
    assert not wait_within(b, starved)
    assert cpu["used"] >= 2.0 and 20.0 <= clock.now - 100.0 < 1000.0
    assert b.describe() == "2 CPU seconds (or 1000s of waiting)"

    clock.now, cpu["used"] = 100.0, 0.0
    blocked = CpuBudget(2.0, tid=1, wall=30.0, clock=clock, cpu_of=lambda tid: 0.0)

    def idle(seconds: float) -> bool:
        clock.now += seconds
        return False

    assert not wait_within(blocked, idle)
    assert clock.now - 100.0 == pytest.approx(30.0)

    def gone(tid: int) -> float:
        raise OSError("no such thread")

    assert CpuBudget(2.0, tid=1, wall=30.0, clock=clock, cpu_of=gone).left() <= 0


def test_one_junit_writer_for_every_status() -> None:
    cases = [
        CaseVerdict("c.a", "passes", Status.PASSED, seconds=0.5, properties={"outcome": "OK"}),
        CaseVerdict("c.a", "fails", Status.FAILED, "expected OK, got HANG", "evidence <x>", 1.25),
        CaseVerdict("c.b", "errs", Status.ERROR, "tool error", "Traceback"),
        CaseVerdict("c.b", "skips", Status.SKIPPED, "not run: interrupted"),
        CaseVerdict("c.b", "known", Status.XFAIL, "KNOWN deviation (xfail): why"),
        CaseVerdict("c.b", "explains", Status.PASSED, output="changed: because"),
    ]
    suite = ET.fromstring(to_junit("virtio-sim.test.x", cases))
    assert suite.get("name") == "virtio-sim.test.x" and suite.get("timestamp") and suite.get("hostname")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "6", "1", "1", "2",
    )  # fmt: skip
    assert suite.get("time") == "1.750"
    got = {c.get("name"): c for c in suite.findall("testcase")}
    assert got["passes"].find("properties/property").attrib == {"name": "outcome", "value": "OK"}  # type: ignore[union-attr]
    assert list(got["passes"]) == [got["passes"].find("properties")]
    fail = got["fails"].find("failure")
    assert fail is not None and fail.get("message") == "expected OK, got HANG" and fail.text == "evidence <x>"
    assert got["errs"].find("error") is not None and got["errs"].get("time") == "0"
    assert got["skips"].find("skipped").get("type") is None  # type: ignore[union-attr]
    assert got["known"].find("skipped").get("type") == "xfail"  # type: ignore[union-attr]
    assert got["explains"].find("system-out").text == "changed: because"  # type: ignore[union-attr]


def test_outputs_check_before_and_write_only_what_was_asked(tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="--html"):
        Outputs(html=str(tmp_path / "missing" / "x.html")).check()
    out = Outputs(json="-", junit_xml=str(tmp_path / "r.xml"))
    out.check()
    rendered: list[str] = []

    def render(name: str) -> str:
        rendered.append(name)
        return name

    out.write(json=lambda: render("json"), junit=lambda: render("junit"), html=lambda: render("html"))
    assert out.json_only and rendered == ["junit"] and (tmp_path / "r.xml").read_text() == "junit"


def test_attack_reports_json_junit_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j, x, h = tmp_path / "a.json", tmp_path / "a.xml", tmp_path / "a.html"
    argv = ["attack", "--target", "host:rng/mmio-v2/split", "--scenario", "loop-self"]
    assert cli.main([*argv, "--json", str(j), "--junit-xml", str(x), "--html", str(h)]) == 0
    listed = capsys.readouterr().out
    doc = json.loads(j.read_text())
    assert doc["counts"]["cases"] == doc["counts"]["handled"] == 1 and "handled=1" in listed
    suite = ET.parse(x).getroot()
    assert suite.get("name") == "virtio-sim.attack.host:rng/mmio-v2/split" and suite.get("failures") == "0"
    (case,) = suite.findall("testcase")
    assert case.get("name") == "loop-self" and case.get("classname") == "attack.rng/mmio-v2/split"
    page = h.read_text()
    assert "<p id='verdict' class='pass'>1 cases, 0 not handled: every case handled</p>" in page
    assert "data-verdict='handled'" in page
    # a report path that cannot be written is a usage error before any case runs
    assert cli.main([*argv, "--junit-xml", str(tmp_path / "no" / "a.xml")]) == 2
    assert "--junit-xml" in capsys.readouterr().err


def test_a_conformance_checker_that_never_returns_is_stopped_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checker's WallBudget, as a trio deadline, stops a checker stuck waiting on the
    device: its requirement is ERROR with the reason, and the run goes on to report."""
    import trio

    from virtio_sim.orchestration.conformance import device_runner
    from virtio_sim.orchestration.conformance.catalog import load_catalog
    from virtio_sim.orchestration.conformance.device_checks import Checker, Ctx, load_all
    from virtio_sim.orchestration.conformance.dut import open_host
    from virtio_sim.orchestration.conformance.findings import Policy, Verdict

    catalog = load_catalog()
    rid = next(e.id for e in catalog.entries.values() if e.actor == "device")

    async def stuck(ctx: Ctx) -> None:
        await trio.sleep_forever()  # a device that never answers, a checker that waits on it

    monkeypatch.setitem(load_all(), "stuck", Checker("stuck", (rid,), stuck, None, None))
    monkeypatch.setattr(device_runner, "CHECKER_TIMEOUT", 0.2)
    dut = open_host("virtio-rng-device", "mmio-v2")
    try:
        log = trio.run(
            lambda: device_runner.run_device(
                dut, ring="split", policy=Policy.LENIENT, catalog=catalog, only=("stuck",)
            )
        )
    finally:
        dut.close()
    assert log.checkers_run == ["stuck"]
    assert any("stuck: stopped: TooSlowError" in n for n in log.notes), log.notes
    assert log.verdict(rid) is Verdict.ERROR
