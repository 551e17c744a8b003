"""Machines found through firmware, as whole runs: microvm, q35 and virt with our tables;
QEMU-style -M refusals; the old-vs-new _HID matrix; the same through host and guest
processes. The tables themselves: test_acpi.py (ACPI) and test_device_tree.py (FDT).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support.machine_runs import CLI, QEMU, ROOT, bound_probes, run_machine
from virtio_sim.guest.profile import guest_policy
from virtio_sim.host import acpi as host_acpi
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.machine_types import parse_machine
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.matrix import report
from virtio_sim.orchestration.matrix.executors import LocalPool
from virtio_sim.orchestration.matrix.run import execute, plan
from virtio_sim.orchestration.matrix.spec import MatrixError, load_matrix, parse_matrix
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import load_driver_profile

# --------------------------------------------------------------------------- whole runs


def test_microvm_acpi_finds_exactly_the_configured_devices_in_qemu_order() -> None:
    r = run_machine("microvm,acpi=on", "virtio-blk-device", "blk-rw", extra_devices=["virtio-rng-device"])
    assert r.outcome is Outcome.OK, r.detail
    q = QEMU["microvm"]
    # QEMU 7.2 microvm: the first -device in the highest slot, GSI 16 + slot (acpi=on)
    top = q["mmio_base"] + q["mmio_stride"] * (q["mmio_slots"] - 1)
    assert [(p["where"], p["device"], p["source"]) for p in r.probes] == [
        (f"virtio-mmio@{top:#x}", "blk", "acpi:\\_SB.VR07 LNRO0005"),
        (f"virtio-mmio@{top - q['mmio_stride']:#x}", "rng", "acpi:\\_SB.VR06 LNRO0005"),
    ]
    assert q["irq_base"] == parse_machine("microvm,acpi=on").irq_base


def test_virt_lists_all_32_slots_and_binds_only_the_populated_one() -> None:
    r = run_machine("virt", "virtio-rng-device")
    assert r.outcome is Outcome.OK, r.detail
    q = QEMU["virt"]
    assert len(r.probes) == q["mmio_slots"]  # every slot, as QEMU's DSDT has them
    # in QEMU's DSDT order: VR00 first
    assert [p["where"] for p in r.probes[:2]] == ["virtio-mmio@0xa000000", "virtio-mmio@0xa000200"]
    (bound,) = bound_probes(r)
    assert bound["where"] == f"virtio-mmio@{q['mmio_base'] + q['mmio_stride'] * (q['mmio_slots'] - 1):#x}"
    # backend-less transports in the other slots, as QEMU has them
    assert {(p["outcome"], p["reason"]) for p in r.probes if p is not bound} == {
        ("NOT_PROBED", "empty slot (device id 0)")
    }


def test_q35_iommu_topology_comes_from_the_viot() -> None:
    pol = guest_policy(load_driver_profile("linux-6.1"))
    r = run_machine("q35,iommu=virtio", "virtio-rng-pci,iommu_platform=on", guest=pol)
    assert r.outcome is Outcome.OK, r.detail
    assert r.iommu["iotlb_misses"] > 0  # the device's DMA really went through the IOMMU
    assert [(p["device"], p["source"]) for p in bound_probes(r)] == [
        ("iommu", "acpi:\\_SB.VR07 LNRO0005"),
        ("rng", "pci"),
    ]


def test_virt_mmio_devices_are_not_behind_the_iommu() -> None:
    """QEMU's virt combines virtio-iommu with virtio-mmio, but sysbus has no DMA address
    space (no get_dma_as) and the VIOT lists PCI endpoints only: nothing is translated."""
    pol = guest_policy(load_driver_profile("linux-6.1"))
    r = run_machine("virt,iommu=virtio", "virtio-blk-device,iommu_platform=on", "blk-rw", guest=pol)
    assert r.outcome is Outcome.OK, r.detail
    assert r.iommu["iotlb_misses"] == 0 and r.iommu["fault_count"] == 0
    assert r.iommu["unisolated_accesses"] == 0


def test_default_machine_still_uses_the_command_line() -> None:
    r = run_machine(None, "virtio-rng-device")
    assert r.outcome is Outcome.OK
    assert [p["source"] for p in r.probes] == ["cmdline"]


@pytest.mark.parametrize("driver", ["linux-4.8", "linux-6.1"])
def test_lnro0005_only_driver_and_the_alternative_hid(driver: str) -> None:
    pol = guest_policy(load_driver_profile(driver))
    assert run_machine("microvm,acpi=on", "virtio-rng-device", guest=pol).outcome is Outcome.OK
    r = run_machine("microvm,acpi=on,x-mmio-hid=QEMU1AF4", "virtio-rng-device", guest=pol)
    assert r.outcome is Outcome.NOT_PROBED
    (probe,) = r.probes
    assert probe["outcome"] == "NOT_PROBED" and "_HID QEMU1AF4" in str(probe["reason"])
    # the driver that knows QEMU's vendor id finds the same device
    assert run_machine("microvm,acpi=on,x-mmio-hid=QEMU1AF4", "virtio-rng-device").outcome is Outcome.OK


def test_driver_without_acpi_matching_finds_nothing_on_acpi_machines() -> None:
    pol = guest_policy(load_driver_profile("linux-4.0"))  # ACPI probing of virtio-mmio came in 4.2
    r = run_machine("virt", "virtio-rng-device", guest=pol)
    assert r.outcome is Outcome.NOT_PROBED
    assert {p["outcome"] for p in r.probes} == {"NOT_PROBED"}
    assert run_machine(None, "virtio-rng-device", guest=pol).outcome is Outcome.OK


def test_hostile_dsdt_is_a_probe_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A package that claims far more than its parent holds; the checksum is right.
    monkeypatch.setattr(host_acpi, "dsdt_aml", lambda entries, hid, pci=None: b"\x10\xff\xff\xff\x0f_SB_")
    r = run_machine("virt", "virtio-rng-device")
    assert r.outcome is Outcome.NOT_PROBED
    assert "ACPI" in r.detail and "claims" in r.detail
    assert r.probes[0]["where"] == "firmware"


# --------------------------------------------------------------------------- -M refusals


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        ("pc-i440fx", "unsupported machine type 'pc-i440fx'"),
        ("virt,foo=1", "Property 'virt-machine.foo' not found"),
        ("microvm,acpi=maybe", "Parameter 'acpi' does not accept value 'maybe'"),
        ("q35,iommu=smmuv3", "Property 'q35-machine.iommu' doesn't take value 'smmuv3'"),
        ("virt,x-mmio-hid=ABCD0001", "doesn't take value 'ABCD0001'"),
        ("microvm,x-mmio-hid=QEMU1AF4", "needs acpi=on"),
        ("virt,acpi", "needs a value"),
    ],
)
def test_bad_machine_options_are_refused(machine: str, message: str) -> None:
    with pytest.raises(PropertyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_machine(machine)


def test_bad_combinations_are_host_refused_before_the_guest_runs() -> None:
    r = run_machine("microvm,acpi=on", "virtio-rng-pci")
    assert r.outcome is Outcome.HOST_REFUSED and "No 'PCI' bus found for device 'virtio-rng-pci'" in r.detail
    r = trio.run(run_embedded, RunConfig("virtio-rng-device", "rng", machine="q35"))
    assert r.outcome is Outcome.HOST_REFUSED and "No 'virtio-bus' bus found" in r.detail
    r = run_machine("virt", "virtio-blk-device,packed=maybe", "blk-rw")
    assert r.outcome is Outcome.HOST_REFUSED and r.probes == []


def test_cli_machine_and_global(tmp_path: Path) -> None:
    args = ["-M", "microvm,acpi=on", "--transport", "mmio", "-global", "virtio-mmio.force-legacy=false"]
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))  # the command line needs drive=, as QEMU does
    dev = f"virtio-blk-device,drive={disk},packed=on,event_idx=off,indirect_desc=off"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtio_sim.orchestration.cli",
            "run",
            *args,
            "--device",
            dev,
            "--workload",
            "blk-rw",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["outcome"] == "OK"
    assert r["transport"] == "mmio-v2" and r["ring_info"]["format"] == "packed"
    assert r["probes"][0]["source"].startswith("acpi:")
    bad = subprocess.run(
        [*CLI, "-M", "virt,bogus=1", "--device", "virtio-rng-device", "--workload", "rng"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode != 0 and "Property 'virt-machine.bogus' not found" in bad.stdout


# --------------------------------------------------------------------------- matrix


def test_discovery_matrix_matches_its_expectations() -> None:
    """specs/matrices/discovery.toml: old vs new drivers across command line, ACPI with
    LNRO0005, ACPI with QEMU's vendor id, and the device tree."""
    spec = load_matrix(ROOT / "specs" / "matrices" / "discovery.toml")
    results = execute(spec, plan(spec), LocalPool(2))
    assert report.mismatches(results) == []
    by = {(r["driver"], r["machine"]): r["outcome"] for r in results}
    assert by[("linux-4.0", "virt")] == "NOT_PROBED" and by[("linux-4.0", "virt,acpi=off")] == "OK"
    assert by[("linux-6.1", "virt")] == "OK" and by[("linux-6.1", "virt,x-mmio-hid=QEMU1AF4")] == "NOT_PROBED"
    assert by[("linux-4.0", "microvm")] == "OK"  # QEMU microvm acpi=off: the command line


def test_matrix_refuses_a_machine_that_cannot_carry_the_transport() -> None:
    axes = {"driver": ["linux-6.1"], "device": ["qemu-7.2"], "transport": ["pci-modern"], "workload": ["rng"]}
    spec = parse_matrix({"axes": {**axes, "machine": ["microvm"]}}, "test")
    with pytest.raises(MatrixError, match="No 'PCI' bus found"):
        plan(spec)


# --------------------------------------------------------------------------- processes


RUN_BACKSTOP = 90  # seconds


def test_host_and_guest_processes_on_firmware_machines() -> None:
    """``run --processes -M``: the host process writes the tables into the shared guest
    RAM (virt's at 1 GiB), the guest process finds its devices there."""
    for machine, source in (
        ("virt", "acpi:\\_SB.VR31 LNRO0005"),
        ("virt,acpi=off", "fdt:/virtio_mmio@a003e00 virtio,mmio"),
    ):
        p = subprocess.run(
            [
                *CLI,
                "--processes",
                "-M",
                machine,
                "--device",
                "virtio-blk-device",
                "--workload",
                "blk-rw",
                "--json",
                # a backstop, not a measurement: the run ends by itself; the default 10 s
                # wall-clock HANG bound was reached on a loaded machine
                "--timeout",
                str(RUN_BACKSTOP),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=2 * RUN_BACKSTOP,
        )
        r = json.loads(p.stdout)
        assert r["outcome"] == "OK", r["detail"]
        assert [q["source"] for q in r["probes"] if q["outcome"] == "BOUND"] == [source]
    tcp = subprocess.run(
        [
            *CLI,
            "--processes",
            "--link",
            "tcp",
            "-M",
            "virt",
            "--device",
            "virtio-rng-device",
            "--workload",
            "rng",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert tcp.returncode != 0 and "firmware tables live in guest RAM" in tcp.stdout + tcp.stderr
