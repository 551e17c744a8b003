"""``virtio-sim conformance``: exit codes, report files and coverage numbers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conformance_broken import DEFECTS
from virtio_sim.cli import main
from virtio_sim.conformance.catalog import load_catalog
from virtio_sim.conformance.findings import FindingLog, Policy
from virtio_sim.conformance.report import build_report, catalog_coverage, to_junit


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
    assert cov.testable == sum(
        1 for e in catalog.entries.values() if e.area in areas and e.testable and e.mandatory
    )
    assert cov.decided == 0 and cov.has_checker < cov.testable
    assert cov.per_area["iommu"].has_checker >= 25  # every device-side iommu MUST has a checker
