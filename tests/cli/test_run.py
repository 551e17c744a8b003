"""`virtio-sim run` end to end, as a user runs it: a real process, JSON on stdout."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_sim.guest.workloads import blk_pattern_seed

SECTOR = 512


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("transport", ["mmio-v2", "mmio-v1"])
def test_rng_json(transport: str) -> None:
    p = _run("--device", "virtio-rng-device", "--workload", "rng", "--json", "--transport", transport)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["outcome"] == "OK"
    assert r["transport"] == transport
    assert r["evidence"]["verified_stream"] is True
    assert r["evidence"]["bytes"] > 0
    assert int(r["device_features"], 16) & int(r["driver_features"], 16) == int(r["driver_features"], 16)
    if transport == "mmio-v2":
        assert "VIRTIO_F_VERSION_1" in r["negotiated"]
        assert r["status_trace"][-1] == "ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK"
    else:
        assert "VIRTIO_F_VERSION_1" not in r["negotiated"]
        assert not any("FEATURES_OK" in s for s in r["status_trace"])


def test_blk_rw_lands_on_the_given_disk(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    p = _run("--device", f"virtio-blk-device,drive={disk}", "--workload", "blk-rw", "--json", "--seed", "7")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["outcome"] == "OK", r["detail"]
    assert r["evidence"]["beyond_capacity"] == "IOERR"
    # Recompute the workload's data and find it in the file.
    rnd = random.Random(blk_pattern_seed(7))
    content = disk.read_bytes()
    for start, count in r["evidence"]["plan"]:
        want = rnd.randbytes(count * SECTOR)
        assert content[start * SECTOR : (start + count) * SECTOR] == want


def test_human_summary() -> None:
    p = _run("--device", "virtio-rng-device", "--workload", "rng")
    assert p.returncode == 0
    assert p.stdout.startswith("OK virtio-rng-device over mmio-v2")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "virtio-rng-device", "--workload", "nope"], "unknown workload"),
        (["--device", "virtio-rng-device", "--workload", "rng", "--transport", "isa"], "invalid choice"),
        (["--device", "virtio-rng-device", "--workload", "rng", "--ram", "lots"], "invalid ram size"),
        (
            ["--device", "virtio-rng-device", "--workload", "rng", "--timeout", "-1"],
            "must be a finite number of seconds above 0",
        ),
        (["--workload", "rng"], "required"),
        (["--device", ",x=1", "--workload", "rng"], "driver"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    p = _run(*args)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_unknown_property_is_host_refused() -> None:
    p = _run("--device", "virtio-blk-device,bogus=1", "--workload", "blk-rw", "--json")
    assert p.returncode == 1
    r = json.loads(p.stdout)
    assert r["outcome"] == "HOST_REFUSED"
    assert "Property 'virtio-blk-device.bogus' not found" in r["detail"]


def test_missing_drive_file_is_host_refused(tmp_path: Path) -> None:
    p = _run(
        "--device", f"virtio-blk-device,drive={tmp_path / 'absent.img'}", "--workload", "blk-rw", "--json"
    )
    r = json.loads(p.stdout)
    assert r["outcome"] == "HOST_REFUSED"
    assert "Could not open" in r["detail"]


def test_workload_without_matching_device_is_not_probed() -> None:
    p = _run("--device", "virtio-rng-device", "--workload", "blk-rw", "--json")
    r = json.loads(p.stdout)
    assert r["outcome"] == "NOT_PROBED"
