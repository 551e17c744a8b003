"""The benchmark command runs (tiny counts): a smoke test, not a timed test.

Speed itself is measured by ``python -m benchmarks`` on demand (docs/benchmarks.md);
here only that the command works end to end and writes what it prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_command_writes_ratios_for_every_group_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    groups = "split,packed,two-process,access-platform,latency,blk,device"
    tiny = ["--scale", "0.01", "--repeat", "1", "--only", groups, "--json", str(out)]
    p = subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "bench", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "ratio to floor" in p.stdout
    data = json.loads(out.read_text())
    rows = data["rows"]
    names = {(r["group"], r["name"]) for r in rows}
    assert ("split ring, null device, 1 process", "batch 256, event_idx on") in names
    assert any(g.startswith("packed ring, two processes") for g, _ in names)
    assert any(g == "blk bandwidth (embedded)" for g, _ in names)
    assert ("split ring, rng through VirtioDevice, 1 process", "batch 16, event_idx on") in names
    for r in rows:
        assert r["value"] > 0, r
        if r["floor"] is not None:
            assert r["ratio"] is not None and r["ratio"] > 0, r
    ap = [r for r in rows if r["group"] == "ACCESS_PLATFORM" and "IOVA" in r["name"]]
    assert len(ap) == 2 and all(r["target"] == 0.8 for r in ap)


def test_iommu_and_startup_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    tiny = ["--scale", "0.01", "--repeat", "1", "--only", "iommu,startup", "--json", str(out)]
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks", *tiny], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    strict = rows["virtio-iommu, strict, vs no IOMMU"]
    assert strict["floor"] == rows["no IOMMU"]["value"] and strict["target"] == 0.667
    assert 0 < strict["ratio"] < 1  # mapping costs something: the two runs really differ
    startup = rows["virtio-sim run (rng, embedded, --json): CPU of the whole process"]
    assert startup["value"] > 0 and startup["target"] == 0.1
    vs_trio = rows["virtio-sim run vs python -c 'import trio' (floor: interpreter + trio)"]
    # the floor is the same round's `import trio`, a process of its own, never the run itself
    assert vs_trio["value"] == startup["value"] and 0 < vs_trio["floor"] != startup["value"]


def test_bench_rejects_an_unknown_group(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nope", "--json", str(tmp_path / "x.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "unknown group" in p.stderr
    assert not (tmp_path / "x.json").exists()
