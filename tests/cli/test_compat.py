"""``virtio-sim compat``: changes explained by the evidence that caused them, grouped,
able to fail a build, one JUnit case per configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from virtio_sim.orchestration.compat import compare, dma_path, explain

DEFAULT = "specs/matrices/default.toml"
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def _cell(driver: str, outcome: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "driver": driver, "device": "qemu-7.2", "transport": "mmio-v2", "machine": "microvm",
        "iommu": "none", "iommu_platform": "on", "ring": "split", "workload": "rng",
        "outcome": outcome, "negotiated": ["VIRTIO_F_VERSION_1"], "detail": "",
        "status_trace": ["RESET", "ACKNOWLEDGE", "ACKNOWLEDGE|DRIVER", "ACKNOWLEDGE|DRIVER|FEATURES_OK",
                         "read ACKNOWLEDGE|DRIVER|FEATURES_OK", "ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK"],
        "probes": [{"where": "virtio-mmio@0xfeb00e00", "device": "rng", "outcome": "BOUND", "reason": ""}],
    }  # fmt: skip
    base.update(kw)
    return base


def test_feature_ack_is_the_cause_and_the_device_refusal_follows() -> None:
    trace = ["RESET", "ACKNOWLEDGE|DRIVER|FEATURES_OK", "read ACKNOWLEDGE|DRIVER", "DRIVER|FAILED"]
    old = _cell("a", "FAILED_CLEAN", status_trace=trace)
    acked = ["VIRTIO_F_VERSION_1", "VIRTIO_F_ACCESS_PLATFORM", "VIRTIO_BLK_F_FLUSH"]
    new = _cell("b", "OK", negotiated=acked)
    causes = explain(old, new, "a", "b")
    # the transport feature leads; a device feature the new driver also acks comes later
    assert causes[0] == "b accepts VIRTIO_F_ACCESS_PLATFORM"
    assert causes[1] == "b accepts VIRTIO_BLK_F_FLUSH"
    assert "device refused FEATURES_OK" in causes[-1]


def test_probe_refusal_dma_and_violations_lead_where_they_decide() -> None:
    probe = {"where": "virtio-mmio@0xfeb00e00", "device": None, "outcome": "NOT_PROBED"}
    unprobed = _cell("a", "NOT_PROBED", probes=[{**probe, "reason": "Version 2 not supported!"}])
    assert explain(unprobed, _cell("b", "OK"), "a", "b")[0] == (
        "b probes the rng device (a: Version 2 not supported!)"
    )
    refused = _cell(
        "b",
        "FAILED_CLEAN",
        detail="features: device must provide VIRTIO_F_ACCESS_PLATFORM",
        status_trace=["RESET", "ACKNOWLEDGE|DRIVER", "ACKNOWLEDGE|DRIVER|FAILED"],
    )
    broken = _cell("a", "DEVICE_ERROR", violations=[{"message": "avail-idx-jump"}])
    assert explain(broken, refused, "a", "b")[0].startswith("b refuses the device at feature negotiation")
    bypass = _cell("b", "OK_NO_ISOLATION", iommu_evidence={"unisolated_accesses": 9, "fault_count": 0})
    translated = _cell("a", "OK", iommu_evidence={"iotlb_misses": 3, "fault_count": 0})
    assert dma_path(bypass) == "bypassing the IOMMU"
    first = explain(translated, bypass, "a", "b")[0]
    assert first == "DMA path translated by the IOMMU -> bypassing the IOMMU"
    first = explain(_cell("a", "OK"), broken, "b", "a")[0]
    assert first.startswith("with a the device records ring violations")


def test_changes_sharing_a_cause_form_one_group() -> None:
    cells = []
    for transport in ("mmio-v2", "pci-modern"):
        cells.append(_cell("a", "FAILED_CLEAN", transport=transport))
        acked = ["VIRTIO_F_VERSION_1", "VIRTIO_F_ACCESS_PLATFORM"]
        cells.append(_cell("b", "OK", transport=transport, negotiated=acked))
    cells.append(_cell("a", "OK", workload="blk-rw"))
    cells.append(_cell("b", "OK", workload="blk-rw"))
    rep = compare(cells, "a", "b")
    assert rep.configs == 3 and len(rep.changes) == 2
    (group,) = rep.groups
    assert group.headline == "2 configurations: b accepts VIRTIO_F_ACCESS_PLATFORM, FAILED_CLEAN -> OK"


def test_compat_cli_groups_fails_the_build_and_writes_junit(tmp_path: Path) -> None:
    junit, out_json = tmp_path / "compat.xml", tmp_path / "compat.json"
    axes = ("--device", "qemu-7.2", "--transport", "mmio-v2", "--transport", "pci-modern", "--iommu", "none",
            "--ring", "split")  # fmt: skip
    p = _cli(
        "compat", DEFAULT, "--old", "linux-4.0", "--new", "linux-4.8", *axes, "--fail-on-change",
        "--junit-xml", str(junit), "--json", str(out_json),
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    # the four iommu_platform=on configurations (2 transports x rng/blk-rw): one cause
    assert "4 configurations: linux-4.8 accepts VIRTIO_F_ACCESS_PLATFORM, FAILED_CLEAN -> OK" in p.stdout
    data = json.loads(out_json.read_text())
    assert [g["headline"] for g in data["groups"]] == [
        "4 configurations: linux-4.8 accepts VIRTIO_F_ACCESS_PLATFORM, FAILED_CLEAN -> OK"
    ]
    suite = ET.parse(junit).getroot()
    assert suite.get("name") == "virtio-sim.compat.linux-4.0..linux-4.8"
    assert suite.get("timestamp") and suite.get("hostname")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests", "0")) == 8
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 4 and all("/on/" in c.get("name", "") for c in failed)
    assert all(float(c.get("time", "0")) > 0 for c in cases)
    # without --fail-on-change the same changes are reported and the build passes
    p = _cli("compat", DEFAULT, "--old", "linux-4.0", "--new", "linux-4.8", *axes, "--json")
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["changed"]) == 4
    # and no change at all passes even with --fail-on-change
    same = (
        "--old",
        "linux-4.8",
        "--new",
        "linux-5.0",
        "--iommu-platform",
        "off",
        "--workload",
        "rng",
        "--fail-on-change",
    )
    p = _cli("compat", DEFAULT, *same, *axes)
    assert p.returncode == 0 and "0 changed" in p.stdout, p.stdout + p.stderr
