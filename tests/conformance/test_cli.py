"""``virtio-sim conformance``: exit codes, report files and coverage numbers."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conformance.broken_devices import DEFECTS
from virtio_sim.orchestration.cli import main
from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.findings import FindingLog, Policy
from virtio_sim.orchestration.conformance.report import build_report, catalog_coverage, to_junit


def test_clean_device_exits_0_with_reports(tmp_path: Path) -> None:
    j, x, h = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    rc = main(
        ["conformance", "--target", "host:virtio-blk", "--transport", "pci-modern", "--quick",
         "--json", str(j), "--junit-xml", str(x), "--html", str(h)]
    )  # fmt: skip
    assert rc == 0
    data = json.loads(j.read_text())
    verdicts = {r["id"]: r["verdict"] for r in data["requirements"]}
    assert verdicts["blk.req.status-codes"] == "PASS"
    assert verdicts["iommu.attach.dev-reserved-inval"] == "NOT_APPLICABLE"  # not an iommu
    assert verdicts["mmio.dev.magic"] == "NOT_APPLICABLE"  # PCI run
    assert data["by_area"]["pci"]["PASS"] >= 30
    cov = data["coverage"]
    assert cov["testable"] > 400 and cov["runs"] == 1
    assert "blk-zoned" in cov["out_of_scope"] and "blk-zoned" not in cov["per_area"]
    # decided counts this run's PASS/FAIL only: a blk run decides no iommu rule
    assert cov["per_area"]["iommu"]["decided"] == 0 < cov["per_area"]["iommu"]["has_checker"]
    assert cov["per_area"]["blk"]["decided"] >= 5
    assert cov["decided"] < cov["has_checker"]
    suite = ET.fromstring(x.read_text())
    assert int(suite.get("failures", "-1")) == 0
    assert len(suite.findall("testcase")) == len(data["requirements"])
    assert "blk.req.status-codes" in h.read_text()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "--target", "host:virtio-nope"]) == 2
    assert main(["conformance", "--target", "bogus"]) == 2
    assert (
        main(["conformance", "--target", "host:virtio-rng", "--ring", "packed", "--transport", "mmio-v1"])
        == 2
    )
    assert main(["conformance", "--target", "host:virtio-rng", "--transport", "scsi"]) == 2
    assert "virtio-nope" in capsys.readouterr().err


def test_must_failure_exits_1_and_junit_names_it(tmp_path: Path) -> None:
    """A report with a MUST failure: exit code rule and the JUnit failure element."""
    catalog = load_catalog()
    log = FindingLog(catalog.level_of, Policy.LENIENT)
    log.failed(DEFECTS[0].requirement, "seeded")
    report = build_report(catalog, log, target="t", actor="device", transport="mmio-v2", ring="split")
    assert [r.id for r in report.must_failures] == [DEFECTS[0].requirement]
    suite = ET.fromstring(to_junit(report))
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed == [DEFECTS[0].requirement]


def test_catalog_coverage_counts_every_area() -> None:
    """The catalogue alone: every area but the declared out-of-scope one counts, and
    nothing is decided without a run."""
    catalog = load_catalog()
    cov = catalog_coverage(catalog)
    areas = set(catalog.areas()) - {"blk-zoned"}
    assert set(cov.per_area) == areas
    assert cov.testable == sum(1 for e in catalog.entries.values() if e.area in areas and e.counted)
    assert cov.decided == 0 and cov.has_checker < cov.testable
    # entries no peer here reaches are listed with why, outside the denominator
    far = {e.id for e in catalog.entries.values() if e.area in areas and e.mandatory and e.unreachable}
    assert set(cov.unreachable) == far and "suspend.dev.quiet" in far
    assert all(catalog.entries[rid].checker is None for rid in far)
    assert cov.to_dict()["unreachable"]["suspend.dev.quiet"].startswith("VIRTIO_F_SUSPEND")
    assert cov.per_area["iommu"].has_checker >= 25  # every device-side iommu MUST has a checker


def test_known_deviation_reads_known_everywhere(tmp_path: Path) -> None:
    """A documented deviation is KNOWN in the console table, the HTML report and the JSON,
    and a skipped xfail with the reason in JUnit; it does not fail the run."""
    from rich.console import Console

    from virtio_sim.orchestration.conformance.report import print_report, to_html, to_json

    catalog = load_catalog()
    rid = "init.legacy.dev-use-before-driver-ok"
    log = FindingLog(catalog.level_of, Policy.LENIENT, known={rid: "documented: serves only after DRIVER_OK"})
    log.failed(rid, "buffer kicked before DRIVER_OK not served")
    report = build_report(
        catalog, log, target="t", actor="device", transport="pci-transitional", ring="split"
    )
    assert report.must_failures == [] and not report.failed
    case = next(c for c in ET.fromstring(to_junit(report)).findall("testcase") if c.get("name") == rid)
    skipped = case.find("skipped")
    assert skipped is not None and skipped.get("type") == "xfail"
    assert "documented: serves only after DRIVER_OK" in skipped.get("message", "")
    assert case.find("failure") is None
    html = to_html(report)
    row = rf"<td>{re.escape(rid)}</td><td>[^<]*</td><td>MUST</td><td>KNOWN</td>"  # id, section, level
    assert re.search(row, html) and "documented: serves" in html
    assert {r["id"]: r["verdict"] for r in json.loads(to_json(report))["requirements"]}[rid] == "KNOWN"
    console = Console(record=True, width=200)
    print_report(report, console)
    out = console.export_text()
    assert "KNOWN (1)" in out and "FAIL (" not in out


def test_a_checker_that_crashes_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any exception out of a checker (here: what a packed wrap bug used to raise, RingFull)
    becomes an ERROR finding with the reason; the CLI still writes its reports and exits 1."""
    from virtio_sim.orchestration.conformance import device_checks
    from virtio_sim.orchestration.conformance.rawring import RingFull

    checker = device_checks.load_all()["rng_entropy"]

    async def broken(ctx: device_checks.Ctx) -> None:
        raise RingFull("8 descriptors wanted, ring of 8 has too few free")

    monkeypatch.setitem(device_checks.CHECKERS, "rng_entropy", checker.__class__(
        checker.name, checker.ids, broken, checker.keys, checker.transports))  # fmt: skip
    j, x = tmp_path / "r.json", tmp_path / "r.xml"
    rc = main(
        ["conformance", "--target", "host:virtio-rng", "--quick", "--json", str(j), "--junit-xml", str(x)]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    rows = {r["id"]: r for r in json.loads(j.read_text())["requirements"]}
    for rid in checker.ids:
        assert rows[rid]["verdict"] == "ERROR", rid
        assert "RingFull" in rows[rid]["evidence"][0]
    errors = [c for c in ET.fromstring(x.read_text()).findall("testcase") if c.find("error") is not None]
    assert {c.get("name") for c in errors} == set(checker.ids)


def test_a_rule_with_an_untested_part_is_never_pass() -> None:
    """A PASS recorded for a rule whose other part could not be exercised reads NOT_COVERED
    (with why); a FAIL stays a FAIL."""
    catalog = load_catalog()
    log = FindingLog(catalog.level_of, Policy.LENIENT)
    log.passed("mmio.dev.config-generation")
    log.untested("mmio.dev.config-generation", "no config change could be provoked")
    report = build_report(catalog, log, target="t", actor="device", transport="mmio-v2", ring="split")
    row = next(r for r in report.rows if r.id == "mmio.dev.config-generation")
    assert row.shown == "NOT_COVERED" and "no config change could be provoked" in row.evidence[-1]
    log.failed("mmio.dev.config-generation", "moved with no change")
    assert log.findings["mmio.dev.config-generation"].verdict.value == "FAIL"
