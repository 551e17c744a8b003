"""The interoperability matrix: planning, executors, expectations, reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from virtio_sim.orchestration.matrix import report
from virtio_sim.orchestration.matrix.cell import run_cell
from virtio_sim.orchestration.matrix.executors import DaskExecutor, LocalPool
from virtio_sim.orchestration.matrix.run import execute, plan
from virtio_sim.orchestration.matrix.spec import Cell, MatrixError, expand, load_matrix, parse_matrix


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _outcomes(results: list[dict[str, Any]]) -> dict[str, str]:
    return {r["id"]: r["outcome"] for r in results}


def test_default_matrix_plans_hundreds_of_cells() -> None:
    spec = load_matrix()
    cells = plan(spec)
    assert len(cells) >= 300
    assert len({c.id for c in cells}) == len(cells)


def test_pool_and_dask_give_identical_results_matching_expectations() -> None:
    spec = load_matrix()
    # A representative third of the default matrix (every axis value still occurs; the
    # whole 7920 cells are `virtio-sim matrix`, the documented command)
    cells = plan(spec)[::3]
    local = execute(spec, cells, LocalPool(2))
    assert [r["id"] for r in local] == [c.id for c in cells]
    assert report.mismatches(local) == []
    # every outcome class the default matrix exercises shows up
    assert {"OK", "FAILED_CLEAN", "HOST_REFUSED", "NOT_PROBED", "HANG", "CORRUPTION"} <= set(
        _outcomes(local).values()
    )
    for axis in ("driver", "device", "transport", "ring", "iommu", "iommu_platform", "workload"):
        assert {getattr(c, axis) for c in cells} == set(spec.axes[axis]), axis
    subset = cells[::3]  # a dask LocalCluster over a third of them (hundreds of cells)
    dask = execute(spec, subset, DaskExecutor(local_workers=2))
    assert _outcomes(dask) == {k: v for k, v in _outcomes(local).items() if k in {c.id for c in subset}}
    strip = ("seconds",)
    by_id = {r["id"]: r for r in local}
    for r in dask:
        assert {k: v for k, v in r.items() if k not in strip} == {
            k: v for k, v in by_id[r["id"]].items() if k not in strip
        }


def _hang_on_rng(cell: Cell, timeout: float, seed: int) -> dict[str, Any]:
    """A cell function that never returns for rng cells (simulates a wedged worker)."""
    if cell.workload == "rng":
        time.sleep(3600)
    return run_cell(cell, timeout, seed)


def test_hanging_cell_is_reported_and_matrix_continues() -> None:
    spec = parse_matrix(
        {"axes": {"driver": ["linux-6.1"], "device": ["qemu-7.2"], "workload": ["rng", "blk-rw"]}},
        "inline",
    )
    spec.timeout = 0.5
    cells = plan(spec)
    start = time.monotonic()
    results = execute(spec, cells, LocalPool(2), fn=_hang_on_rng)
    elapsed = time.monotonic() - start
    got = {r["workload"]: r for r in results}
    assert got["rng"]["outcome"] == "HANG"
    assert "worker was killed" in got["rng"]["detail"]
    assert got["blk-rw"]["outcome"] == "OK"
    assert elapsed < 30


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "missing [axes]"),
        ({"axes": {"driver": ["linux-6.1"]}}, "[axes].device is required"),
        ({"axes": {"driver": ["x"], "device": ["y"], "colour": ["red"]}}, "unknown axis 'colour'"),
        ({"axes": {"driver": [], "device": ["y"]}}, "non-empty list"),
        ({"axes": {"driver": ["a"], "device": ["b"]}, "expect": [{"outcome": "GREAT"}]}, "not one of"),
        ({"axes": {"driver": ["a"], "device": ["b"]}, "exclude": [{"colour": "x"}]}, "unknown axis"),
        ({"axes": {"driver": ["a"], "device": ["b"]}, "timeout": -1}, "positive"),
        ({"axes": {"driver": ["a"], "device": ["b"]}, "extra": 1}, "unknown key 'extra'"),
    ],
)
def test_bad_matrix_files(data: dict[str, Any], message: str) -> None:
    with pytest.raises(MatrixError) as e:
        parse_matrix(data, "m.toml")
    assert message in str(e.value) and "m.toml" in str(e.value)


def test_unknown_profile_or_unsupported_axis_value_is_rejected_before_running() -> None:
    spec = parse_matrix({"axes": {"driver": ["linux-9.9"], "device": ["qemu-7.2"]}}, "m")
    with pytest.raises(MatrixError, match="no such profile"):
        plan(spec)
    spec = parse_matrix({"axes": {"driver": ["linux-6.1"], "device": ["qemu-7.2"], "iommu": ["amd-vi"]}}, "m")
    with pytest.raises(MatrixError, match="not supported by this build"):
        plan(spec)


def test_include_exclude_filters() -> None:
    spec = parse_matrix(
        {
            "axes": {"driver": ["linux-4.0", "linux-6.1"], "device": ["qemu-2.9", "qemu-7.2"]},
            "exclude": [{"driver": "linux-4.0", "device": "qemu-7.2"}],
        },
        "m",
    )
    ids = {(c.driver, c.device) for c in expand(spec)}
    assert ids == {("linux-4.0", "qemu-2.9"), ("linux-6.1", "qemu-2.9"), ("linux-6.1", "qemu-7.2")}


def test_cli_expectation_mismatch_fails_with_diff(tmp_path: Path) -> None:
    m = tmp_path / "m.toml"
    m.write_text(
        '[axes]\ndriver = ["linux-4.0"]\ndevice = ["qemu-2.7"]\niommu_platform = ["on"]\n'
        '[[expect]]\noutcome = "OK"\n'
    )
    p = _cli("matrix", str(m))
    assert p.returncode == 1
    assert "MISMATCH linux-4.0/qemu-2.7/mmio-v2" in p.stdout
    assert "expected OK, got HOST_REFUSED" in p.stdout


@pytest.mark.tool("chromium")
def test_cli_filters_json_junit_html(tmp_path: Path) -> None:
    js, xml, page = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    p = _cli(
        "matrix", "--driver", "linux-4.0", "--driver", "linux-6.1", "--device", "qemu-7.2",
        "--transport", "mmio-v2", "--iommu-platform", "on", "--iommu-platform", "off",
        "--workload", "blk-rw", "--iommu", "none", "--ring", "split",
        "--json", str(js), "--junit-xml", str(xml), "--html", str(page),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(js.read_text())
    cells = {(c["driver"], c["iommu_platform"]): c for c in data["cells"]}
    assert len(cells) == 4
    assert cells[("linux-4.0", "on")]["outcome"] == "FAILED_CLEAN"
    assert cells[("linux-6.1", "on")]["outcome"] == "OK"
    assert "VIRTIO_F_ACCESS_PLATFORM" in cells[("linux-6.1", "on")]["negotiated"]
    assert all(c["workload"] == "blk-rw" and c["machine"] == "microvm" for c in data["cells"])
    suite = ET.parse(xml).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "4" and suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == 4
    assert suite.get("name") == "virtio-sim.matrix.default"  # stable wherever the checkout is
    assert suite.get("timestamp") and suite.get("hostname")
    assert all(float(c.get("time", "-1")) > 0 for c in suite.findall("testcase"))
    # Render the HTML in headless Chromium and read the grid back from the live DOM.
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    grid = dom[dom.index('<table class="grid"') : dom.rindex("</table>") + len("</table>")]
    found = {i: o for o, i in re.findall(r'data-o="([A-Z_]+)" data-id="([^"]+)"', grid)}
    assert found == {c["id"]: c["outcome"] for c in data["cells"]}


def test_cli_json_alone_goes_to_stdout() -> None:
    p = _cli("matrix", "--driver", "linux-3.18", "--device", "qemu-4.2", "--transport", "mmio-v2", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["cells"][0]["outcome"] == "NOT_PROBED"


def test_cli_bad_arguments() -> None:
    p = _cli("matrix", "--driver", "linux-99")
    assert p.returncode == 2 and "no such profile" in p.stderr
    p = _cli("matrix", "/nonexistent.toml")
    assert p.returncode == 2 and "no such matrix file" in p.stderr
    p = _cli("matrix", "--workers", "0", "--driver", "linux-6.1", "--device", "qemu-7.2")
    assert p.returncode == 2


def test_compat_reports_changed_outcomes() -> None:
    p = _cli(
        "compat", "--old", "linux-4.0", "--new", "linux-6.1", "--device", "qemu-7.2",
        "--transport", "mmio-v2", "--iommu-platform", "on", "--iommu-platform", "off",
        "--workload", "blk-rw", "--iommu", "none", "--ring", "split", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    changed = {c["config"]: (c["old"], c["new"]) for c in data["changed"]}
    assert len(changed) == 1
    ((config, pair),) = changed.items()
    assert "/on/" in config and pair == ("FAILED_CLEAN", "OK")


def test_packed_ring_axis() -> None:
    p = _cli(
        "matrix", "--driver", "linux-5.0", "--driver", "linux-4.8", "--device", "qemu-4.2",
        "--device", "qemu-2.9", "--transport", "pci-modern", "--ring", "packed", "--json",
        "--workload", "blk-rw", "--iommu", "none", "--iommu-platform", "off",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    cells = {(c["driver"], c["device"]): c for c in json.loads(p.stdout)["cells"]}
    assert cells[("linux-5.0", "qemu-4.2")]["ring_info"]["format"] == "packed"
    assert cells[("linux-4.8", "qemu-4.2")]["ring_info"]["format"] == "split"  # driver predates packed
    assert cells[("linux-5.0", "qemu-2.9")]["outcome"] == "HOST_REFUSED"
