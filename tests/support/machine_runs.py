"""Whole runs on a named machine for the firmware tests (tests/firmware/): one device, one
workload, the transport its name implies; the probes that bound; QEMU 7.2 machine facts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import RunResult
from virtio_sim.spec import load_toml

QEMU = load_toml("qemu_machines.toml")  # measured QEMU 7.2 facts
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "virtio_sim.orchestration.cli", "run"]


def run_machine(machine: str | None, device: str, workload: str = "rng", **kw: object) -> RunResult:
    transport = "pci-modern" if device.split(",")[0].endswith("-pci") else "mmio-v2"
    cfg = RunConfig(device, workload, transport=transport, machine=machine, **kw)  # type: ignore[arg-type]
    return trio.run(run_embedded, cfg)


def bound_probes(r: RunResult) -> list[dict[str, object]]:
    return [p for p in r.probes if p["outcome"] == "BOUND"]
