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
    assert data["catalog_coverage"]["total"] > 300
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


def test_catalog_coverage_reaches_the_target() -> None:
    cov = catalog_coverage(load_catalog())
    assert cov.total > 300
    assert cov.share >= 0.80, (cov.covered, cov.total, cov.per_area)
    dev_covered, dev_total = cov.per_actor["device"]
    assert dev_covered / dev_total >= 0.75, cov.per_actor
    assert cov.per_area["iommu"][0] >= 25  # every device-side iommu MUST has a checker
