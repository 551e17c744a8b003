"""``virtio-sim matrix`` for people and CI: filters that narrow the file's matrix, --list,
progress lines and a verdict off a terminal, wide tables in a pipe, Ctrl-C/SIGTERM with
partial reports, and a reader that goes away."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtio_sim.orchestration.matrix.spec import expand, expected_outcome, load_matrix


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SELECTED = re.compile(r"^(\d+) of (\d+) cells selected", re.M)
PROGRESS = re.compile(r"^matrix: (\d+)/(\d+) cells \(\d+%\), [\d.]+ cells/s, (ETA \S+|done in \S+)$", re.M)


def test_a_filter_narrows_the_default_matrix_and_list_runs_nothing() -> None:
    everything = expand(load_matrix())
    want = [c.id for c in everything if c.transport == "pci-modern"]
    p = _cli("matrix", "--transport", "pci-modern", "--list")
    assert p.returncode == 0, p.stderr
    listed = [line.split()[0] for line in p.stdout.splitlines()]
    assert listed == want  # every other axis keeps all the file's values
    assert {c.split("/")[0] for c in listed} == {c.driver for c in everything}
    assert {c.split("/")[-1] for c in listed} == {c.workload for c in everything}
    m = SELECTED.search(p.stderr)
    assert m and (int(m[1]), int(m[2])) == (len(want), len(everything))
    assert "cells/s" not in p.stderr  # nothing ran
    # each listed cell carries the file's expectation
    spec = load_matrix()
    wanted = {c.id: f"expect {expected_outcome(spec, c)}" for c in everything if c.transport == "pci-modern"}
    assert dict(line.split("  ", 1) for line in p.stdout.splitlines()) == wanted


def test_glob_filters_and_values_the_file_lacks() -> None:
    p = _cli("matrix", "--driver", "linux-6.1*", "--device", "qemu-7.2", "--transport", "mmio-v2", "--list")
    assert p.returncode == 0, p.stderr
    assert {line.split("/")[0] for line in p.stdout.splitlines()} == {"linux-6.1", "linux-6.1-sev"}
    p = _cli("matrix", "--driver", "linux-9*", "--list")
    assert p.returncode == 2 and "'linux-9*' matches no driver" in p.stderr and "Traceback" not in p.stderr
    p = _cli("matrix", "--device", "qemu-7.2", "--ram", "128M", "--list")  # the file has 64M only
    assert p.returncode == 0, p.stderr
    assert "not in the file, added: ram=128M" in p.stderr
    assert all(line.split()[0].endswith("/ram=128M") for line in p.stdout.splitlines())


def test_piped_run_prints_progress_lines_a_wide_table_and_the_verdict(tmp_path: Path) -> None:
    devices = ["translate-without-bit", "bit-without-translate", "qemu-7.2"]
    args = ["--driver", "linux-6.1", "--driver", "linux-4.0", "--transport", "mmio-v2", "--iommu", "none"]
    p = _cli("matrix", *args, *(x for d in devices for x in ("--device", d)), "--workers", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    progress = [(int(a), int(b)) for a, b, _ in PROGRESS.findall(p.stderr)]
    filters = {
        "driver": ["linux-6.1", "linux-4.0"],
        "device": devices,
        "transport": ["mmio-v2"],
        "iommu": ["none"],
    }
    total = len(expand(load_matrix(), filters))
    assert progress and progress[0][0] >= 1 and progress[-1] == (total, total)
    assert SELECTED.search(p.stderr)[1] == str(total)  # type: ignore[index]
    # no 80-column wrapping: each device's full name is one column header on one line
    header = next(line for line in p.stdout.splitlines() if "driver \\ device" in line)
    assert all(d in header for d in devices) and len(header) > 80
    assert p.stdout.rstrip().splitlines()[-1] == f"{total} cells, 0 unexpected"


def _session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(name))
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_interrupt_stops_workers_and_writes_partial_reports(tmp_path: Path, how: str) -> None:
    js, xml = tmp_path / "part.json", tmp_path / "part.xml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "matrix", "--transport", "mmio-v2",
         "--workers", "2", "--json", str(js), "--junit-xml", str(xml)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait for the first progress line: cells are running
        seen.append(line)
        if PROGRESS.match(line):
            break
    assert PROGRESS.match(seen[-1]), seen
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C reaches the whole foreground process group, workers included
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    name = "SIGTERM" if how == "SIGTERM" else "SIGINT"
    assert err.strip().splitlines() == [
        line for line in err.strip().splitlines() if line.startswith("virtio-sim matrix: interrupted")
    ]
    assert len(err.strip().splitlines()) == 1 and f"interrupted by {name}" in err
    data = json.loads(js.read_text())
    assert data["matrix"]["interrupted"] == name
    outcomes = [c["outcome"] for c in data["cells"]]
    assert len(outcomes) == len(expand(load_matrix())) // 5  # every selected cell is in the report
    finished = [o for o in outcomes if o != "NOT_RUN"]
    assert 1 <= len(finished) < len(outcomes)
    assert all(
        c["detail"] == f"not run: interrupted by {name}" for c in data["cells"] if c["outcome"] == "NOT_RUN"
    )
    suite = ET.parse(xml).getroot()
    assert suite.get("skipped") == str(len(outcomes) - len(finished)) and suite.get("failures") == "0"
    deadline = time.monotonic() + 30  # the forkserver exits once its parent's pipe closes
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_processes(proc.pid) == []


def test_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "matrix", "--list"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away (| head -1) with most of the list unwritten
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert first.startswith("linux-")
    assert proc.returncode == 141 and err == "", err  # 128 + SIGPIPE, as virtio_sim.orchestration.cli says


def test_the_table_prints_names_as_data_not_markup() -> None:
    import io

    from rich.console import Console

    from virtio_sim.orchestration.matrix import report

    cell = {"driver": "[red]drv", "device": "[bold]dev", "transport": "mmio-v2", "workload": "[i]w",
            "ring": "split", "iommu": "none", "iommu_platform": "off", "machine": "microvm",
            "outcome": "OK", "expected": "OK"}  # fmt: skip
    out = io.StringIO()
    report.print_table([cell], Console(file=out, width=200))
    assert all(name in out.getvalue() for name in ("[red]drv", "[bold]dev", "[i]w"))


def test_piped_conformance_report_keeps_requirement_names_and_evidence_whole() -> None:
    p = _cli("conformance", "--target", "driver:linux-4.0", "--transport", "mmio-v2")
    assert p.returncode == 0, p.stderr  # its deviations are documented (KNOWN), with their evidence
    rows = [line for line in p.stdout.splitlines() if "features.drv.accept-access-platform" in line]
    assert len(rows) == 1  # one table row on one line, however long: nothing wrapped or cut at 80
    assert "(bit 33) (evidence: feature bit 33 was not offered; feature bit 33 offered but not" in rows[0]
    assert "driver:linux-4.0 [mmio-v2, split] by area" in p.stdout  # the title is text, not markup
