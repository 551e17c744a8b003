"""Our guest stack against QEMU's device models (qemu-system-x86_64 under qtest).

The guest kernel, transports, rings, drivers and workloads are the ones every other test
uses; only the link is a qtest socket and guest RAM lives in QEMU. Each test asserts what
QEMU's devices really did: the status QEMU latched, the bytes in the disk file QEMU wrote,
the outcome our own models give for the same configuration.
"""

from __future__ import annotations

import fnmatch
import json
import random
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from virtio_sim.guest.iommu_dma import SAC_LIMIT
from virtio_sim.guest.platform import GuestKernel
from virtio_sim.guest.profile import guest_policy
from virtio_sim.guest.workloads import blk_pattern_seed
from virtio_sim.guest.workloads_blk import DISCARD_BIO, ZEROES_AT
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.qemu import compare as cmp
from virtio_sim.orchestration.qemu.machines import (
    IOMMU_DEVICE,
    describe,
    install_acpi,
    irq_controller,
    machine_args,
    qemu_devices,
)
from virtio_sim.orchestration.qemu.qtest import QtestError, spawn_qtest
from virtio_sim.orchestration.qemu.qtest_link import QtestLink, QtestMemory
from virtio_sim.orchestration.qemu.run import IOMMU_FAULT, judge_qemu_evidence, run_qemu
from virtio_sim.orchestration.qemu.tools import QEMU_X86, require_qemu
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import load_driver_profile
from virtio_sim.spec import MMIO, STATUS, F, status_names

pytestmark = pytest.mark.qemu

MMIO_TRANSPORTS = ("mmio-v1", "mmio-v2")
PCI_TRANSPORTS = ("pci-modern", "pci-transitional", "pci-legacy")
ALL = MMIO_TRANSPORTS + PCI_TRANSPORTS
MODERN = ("mmio-v2", "pci-modern", "pci-transitional")
SECTOR = 512
DOC = Path(__file__).resolve().parents[2] / "docs" / "qemu-deviations.md"
QEMU_BACKSTOP = 60.0  # seconds: only a broken run waits this long for a read or a fault report


def qemu_run(
    device: str, workload: str, transport: str, machine: str | None = None, **kw: object
) -> RunResult:
    cfg = RunConfig(device=device, workload=workload, transport=transport, timeout=15, **kw)  # type: ignore[arg-type]
    return trio.run(lambda: run_qemu(cfg, machine=machine))


def test_qtest_client_reads_registers_and_ram() -> None:
    q = spawn_qtest(
        require_qemu(QEMU_X86),
        "x86_64",
        ["-M", "microvm,ioapic2=off,pit=off", "-m", "64M", "-device", "virtio-rng-device"],
    )
    try:
        base = 0xFEB00E00  # the first -device sits in the highest of the 8 slots
        c = q.client
        assert c.read(base + MMIO_OFFSETS["MagicValue"], 4) == MMIO.magic
        assert c.read(base + MMIO_OFFSETS["VendorID"], 4) == MMIO.qemu_vendor_id
        assert c.read(base + MMIO_OFFSETS["DeviceID"], 4) == 4
        assert c.read(0xFEB00000 + MMIO_OFFSETS["DeviceID"], 4) == 0  # an empty transport
        data = bytes(range(256)) * 3
        c.memwrite(0x123456, data)
        assert c.memread(0x123456, len(data)) == data
        with pytest.raises(QtestError, match="refused"):
            c.command("no_such_command 1")
        assert c.read(base + MMIO_OFFSETS["Version"], 4) == MMIO.version_legacy  # still usable
    finally:
        q.close()
    with pytest.raises(QtestError):  # QEMU is gone: an error, not a hang
        q.client.read(base, 4)


@pytest.mark.parametrize("transport", ALL)
def test_negotiation_with_qemu(transport: str) -> None:
    r = qemu_run("virtio-rng-device", "rng", transport)
    assert r.outcome is Outcome.OK, r.detail
    modern = transport in MODERN
    assert bool(r.driver_features >> F.VERSION_1 & 1) == modern
    assert r.driver_features >> F.EVENT_IDX & 1 and r.driver_features >> F.INDIRECT_DESC & 1
    assert r.driver_features & ~r.device_features == 0  # we acked only what QEMU offered
    final = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK | (STATUS.FEATURES_OK if modern else 0)
    assert r.status_trace[-1] == status_names(final)
    if modern:  # FEATURES_OK was read back from QEMU, latched
        assert (
            f"read {status_names(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK)}" in r.status_trace
        )
    assert r.device_notes == []  # QEMU printed nothing


@pytest.mark.parametrize("transport", ("mmio-v1", "mmio-v2", "pci-modern"))
def test_rng_bytes_from_qemu(transport: str) -> None:
    r = qemu_run("virtio-rng-device", "rng", transport)
    assert r.outcome is Outcome.OK, r.detail
    # the workload checked each used.len against its buffer and the canary beyond it
    assert r.workload["requests"] == 5 and r.workload["bytes"] >= 5
    assert r.workload["verified_stream"] is False  # QEMU's entropy is not our seeded stream
    if transport.startswith("mmio"):
        # found in QEMU's own DSDT (the first -device in microvm's highest slot), not on a
        # command line: the probe report names the ACPI Device it came from
        assert [(p["where"], p["source"]) for p in r.probes] == [
            ("virtio-mmio@0xfeb00e00", "acpi:\\_SB.VR07 LNRO0005")
        ]


def test_discovery_source_follows_the_drivers_acpi_match() -> None:
    """QEMU's microvm with ACPI lists the transports only in its DSDT (found here through
    the RSDP the firmware step left); a driver with no ACPI match (Linux 4.0) boots it
    with acpi=off, where QEMU writes ``virtio_mmio.device=`` itself (IRQ 5 + slot)."""
    new = qemu_run(
        "virtio-rng-device", "rng", "mmio-v2", guest=guest_policy(load_driver_profile("linux-6.1"))
    )
    old = qemu_run(
        "virtio-rng-device", "rng", "mmio-v2", guest=guest_policy(load_driver_profile("linux-4.0"))
    )
    assert new.outcome is Outcome.OK and old.outcome is Outcome.OK, (new.detail, old.detail)
    assert [p["source"] for p in new.probes] == ["acpi:\\_SB.VR07 LNRO0005"]
    assert [p["source"] for p in old.probes] == ["cmdline"]
    alt = qemu_run(
        "virtio-rng-device",
        "rng",
        "mmio-v2",
        guest=replace(guest_policy(load_driver_profile("linux-6.1")), acpi_hids=("QEMU1AF4",)),
    )
    assert alt.outcome is Outcome.NOT_PROBED and "no driver matches _HID LNRO0005" in alt.detail


def pattern_disk(path: Path, sectors: int) -> bytes:
    data = b"".join(b"QEMU%08d" % n + bytes(SECTOR - 12) for n in range(sectors))
    path.write_bytes(data)
    return data


def blk_rw_image(before: bytes, workload: dict[str, Any], seed: int) -> bytes:
    """The disk image blk-rw leaves, replayed independently: the plan's patterns, and the
    WRITE_ZEROES step's zeroed sectors when it ran (discarded sectors are not checked:
    QEMU's default discard=ignore keeps them)."""
    rnd = random.Random(blk_pattern_seed(seed))
    expected = bytearray(before)
    for start, count in workload["plan"]:
        expected[start * SECTOR : (start + count) * SECTOR] = rnd.randbytes(count * SECTOR)
    if workload["write_zeroes"] != "not negotiated":
        expected[ZEROES_AT * SECTOR : (ZEROES_AT + DISCARD_BIO) * SECTOR] = bytes(DISCARD_BIO * SECTOR)
    return bytes(expected)


@pytest.mark.parametrize("transport", ALL)
def test_blk_write_read_verified_in_the_disk_file(transport: str, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    sectors = 1024
    before = pattern_disk(disk, sectors)
    r = qemu_run(f"virtio-blk-device,drive={disk}", "blk-rw", transport, seed=9)
    assert r.outcome is Outcome.OK, r.detail
    assert r.workload["capacity"] == sectors
    assert r.workload["beyond_capacity"] == "IOERR"
    # replay the workload's pattern: QEMU must have put exactly these bytes in the file
    assert disk.read_bytes() == blk_rw_image(before, r.workload, 9)


@pytest.mark.parametrize("transport", ("mmio-v2", "pci-modern"))
def test_features_ok_refused_without_access_platform(transport: str) -> None:
    r = qemu_run("virtio-rng-device,iommu_platform=on", "rng", transport)
    assert r.outcome is Outcome.FAILED_CLEAN, r.detail
    assert r.device_features >> F.ACCESS_PLATFORM & 1 and not r.driver_features >> F.ACCESS_PLATFORM & 1
    assert "FEATURES_OK" in r.detail
    # QEMU did not latch it: the status read back lacks FEATURES_OK
    assert f"read {status_names(STATUS.ACKNOWLEDGE | STATUS.DRIVER)}" in r.status_trace
    # our model refuses the same way
    ours = trio.run(
        run_embedded,
        RunConfig(device="virtio-rng-device,iommu_platform=on", workload="rng", transport=transport),
    )
    assert ours.outcome is Outcome.FAILED_CLEAN
    # a driver that acks bit 33 (Linux 6.1) is accepted
    ok = qemu_run(
        "virtio-rng-device,iommu_platform=on",
        "rng",
        transport,
        guest=guest_policy(load_driver_profile("linux-6.1")),
    )
    assert ok.outcome is Outcome.OK and ok.driver_features >> F.ACCESS_PLATFORM & 1, ok.detail


def test_qemu_refusal_is_host_refused_with_its_words() -> None:
    r = qemu_run("virtio-rng-device,iommu_platform=on", "rng", "pci-transitional")
    assert r.outcome is Outcome.HOST_REFUSED
    assert r.detail == "VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional device"
    r = qemu_run("virtio-rng-device,no-such-prop=1", "rng", "mmio-v2")
    assert r.outcome is Outcome.HOST_REFUSED and "no-such-prop" in r.detail


def test_our_extensions_are_dropped_with_a_note() -> None:
    r = qemu_run("virtio-rng-device,x-seed=3", "rng", "mmio-v2")
    assert r.outcome is Outcome.OK
    assert any("x-seed=3 is ours" in n for n in r.device_notes)


def _doc_keys() -> list[str]:
    text = DOC.read_text()
    m = re.search(r"```deviation-keys\n(.*?)```", text, re.S)
    assert m, "docs/qemu-deviations.md has no deviation-keys block"
    return [line.strip() for line in m.group(1).splitlines() if line.strip()]


def test_every_difference_from_qemu_is_documented() -> None:
    keys = _doc_keys()
    found: list[str] = []
    for device, workload, transport in cmp.STANDARD:
        c = trio.run(
            cmp.compare, RunConfig(device=device, workload=workload, transport=transport, timeout=15)
        )
        found += c.differences
        if transport.startswith("mmio") and "iommu" not in device:
            found += cmp.register_diff(device, transport)
    missing = [d for d in found if not any(fnmatch.fnmatchcase(d, k) for k in keys)]
    assert not missing, "undocumented differences from QEMU:\n" + "\n".join(missing)
    # and the documented ones are still real (a fixed difference leaves the list)
    stale = [k for k in keys if not any(fnmatch.fnmatchcase(d, k) for d in found)]
    assert not stale, "documented differences that no longer occur:\n" + "\n".join(stale)


def test_cli_run_device_backend_qemu(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "virtio_sim.orchestration.cli", "run", "--device", "virtio-blk-device"]
    cmd += ["--workload", "blk-rw", "--transport", "pci-modern", "--device-backend", "qemu", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "OK" and out["evidence"]["device_backend"] == "qemu"


# --------------------------------------------------------------------------- virtio-iommu


async def _iommu_session(dma_api: str, tmp: Path) -> dict[str, object]:
    """Boot our guest against virtio-iommu-pci + virtio-rng-pci,iommu_platform=on, read."""
    devs = qemu_devices(["virtio-rng-device,iommu_platform=on"], "pci-modern", tmp)
    args = [*machine_args("pci-modern", 64 << 20), "-device", IOMMU_DEVICE, *devs.args]
    q = spawn_qtest(require_qemu(QEMU_X86), "x86_64", args)
    out: dict[str, object] = {}
    try:
        q.client.intercept_irqs(irq_controller("pci-modern"))
        tables = install_acpi(q.client, "q35")  # the VIOT names the IOMMU and its endpoints
        cmdline = f"{describe(q.client, 'pci-modern')} acpi_rsdp={tables.rsdp_address:#x}"
        link = QtestLink(q.client)
        policy = replace(guest_policy(load_driver_profile("linux-6.1")), pci_msix=False, dma_api=dma_api)
        async with trio.open_nursery() as n:
            n.start_soon(link.run)
            kernel = GuestKernel(link, QtestMemory(q.client, link), 64 << 20, policy)
            n.start_soon(kernel.irq_loop)
            probes = await kernel.probe_platform(cmdline)
            out["probed"] = [(p.device_key, p.bound) for p in probes]
            assert kernel.firmware is not None and "VIOT" in kernel.firmware.tables
            # q35's PCI came from QEMU's tables: ECAM from its MCFG (there because we
            # enabled PCIEXBAR as SeaBIOS does), windows from its PCI0 _CRS; nothing on
            # the command line
            assert "virtio_sim.pci" not in cmdline and "MCFG" in kernel.firmware.tables
            assert kernel.firmware.pci_bridge == "\\_SB.PCI0"
            assert kernel.pci_bus is not None and kernel.pci_bus.access.name == "ecam"
            fw = kernel.pci_bus.firmware
            # QEMU 7.2 q35 with 64 MiB: the hole below the ECAM window is the largest
            # 32-bit window, I/O from 0x0D00 (measured in its DSDT)
            assert (fw.source, fw.ecam_base, fw.ecam_buses) == ("acpi", 0xB0000000, 256)
            assert fw.mem == (64 << 20, 0xB0000000) and fw.io == (0x0D00, 0x10000)
            placed = [b.address for d in kernel.pci_bus.devices for b in d.bars.values() if b.address]
            assert placed and all(fw.mem[0] <= a < fw.mem[1] or fw.io[0] <= a < fw.io[1] for a in placed)
            assert kernel.viot is not None and kernel.viot.iommu_is_pci
            rng = next(p for p in probes if p.device_key == "rng")
            assert rng.driver is not None and rng.device is not None and kernel.iommu is not None
            out["dma"] = type(rng.device.dma).__name__
            out["ring"] = rng.device.queues[0].area
            read = trio.Event()

            async def entropy() -> None:
                out["bytes"] = await rng.driver.read(32)  # type: ignore[attr-defined]
                read.set()

            n.start_soon(entropy)
            # Wait for what decides the case, not for a time: the read's completion, or
            # (raw GPAs behind the IOMMU) QEMU's fault report on the event queue; the
            # bound is only a backstop for a broken run.
            with trio.move_on_after(QEMU_BACKSTOP):
                if dma_api == "never":
                    while not kernel.iommu.faults:
                        await trio.sleep(0.01)
                else:
                    await read.wait()
            out["faults"] = list(kernel.iommu.faults)
            n.cancel_scope.cancel()
    finally:
        out["stderr"] = q.close()
    return out


def test_iommu_translated_dma(tmp_path: Path) -> None:
    s = trio.run(_iommu_session, "feature", tmp_path)
    assert s["probed"] == [("iommu", True), ("rng", True)]  # the IOMMU first, then its endpoint
    assert s["dma"] == "IommuDma"
    ring = s["ring"]
    # Linux's iommu-dma placement: a PCI device's first IOVAs sit just below 4 GiB
    assert SAC_LIMIT - (64 << 20) < ring.dev_addr <= SAC_LIMIT  # type: ignore[attr-defined]
    assert ring.dev_addr != ring.gpa  # type: ignore[attr-defined]
    # QEMU read the ring and wrote the entropy through IOVAs that are not guest RAM
    assert len(s["bytes"]) == 32 and s["faults"] == []  # type: ignore[arg-type]
    # end to end through run_qemu, blk data verified in the disk file
    disk = tmp_path / "disk.img"
    pattern_disk(disk, 256)
    r = qemu_run(f"virtio-blk-device,drive={disk},iommu_platform=on", "blk-rw", "pci-modern", seed=4,
                 iommu="virtio-iommu", guest=guest_policy(load_driver_profile("linux-6.1")))  # fmt: skip
    assert r.outcome is Outcome.OK, r.detail
    assert r.driver_features >> F.ACCESS_PLATFORM & 1
    rnd = random.Random(blk_pattern_seed(4))
    data = disk.read_bytes()
    for start, count in r.workload["plan"]:
        assert data[start * SECTOR : (start + count) * SECTOR] == rnd.randbytes(count * SECTOR)


def test_dma_without_mappings_faults_in_qemus_iommu(tmp_path: Path) -> None:
    # a driver that negotiates ACCESS_PLATFORM but hands the device raw GPAs
    s = trio.run(_iommu_session, "never", tmp_path)
    assert s["dma"] == "DirectDma" and "bytes" not in s
    faults = s["faults"]
    assert faults, s["stderr"]
    rng_rid = 0x10  # 00:02.0, behind the IOMMU at 00:01.0
    assert all(f.endpoint == rng_rid for f in faults)  # type: ignore[attr-defined]
    assert IOMMU_FAULT in str(s["stderr"])
    r = judge_qemu_evidence(
        RunResult(Outcome.HANG, device_notes=[f"qemu-system-x86_64: {IOMMU_FAULT} for 0x1"])
    )
    assert r.outcome is Outcome.DMA_FAULT


# --------------------------------------------------------------------------- matrix


def test_matrix_cells_on_qemu_match_ours_and_expectations(tmp_path: Path) -> None:
    sel = ["--device", "qemu-7.2", "--driver", "linux-6.1", "--driver", "linux-4.0", "--driver", "linux-3.18",
           "--transport", "mmio-v2", "--transport", "pci-modern", "--transport", "pci-transitional",
           "--workload", "rng", "--iommu-platform", "on", "--iommu-platform", "off",
           "--iommu", "none", "--ring", "split"]  # fmt: skip
    outcomes = {}
    for backend in ("qemu", "ours"):
        path = tmp_path / f"{backend}.json"
        cmd = [
            sys.executable,
            "-m",
            "virtio_sim.orchestration.cli",
            "matrix",
            *sel,
            "--device-backend",
            backend,
            "--json",
            str(path),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]  # every cell as expected
        data = json.loads(path.read_text())
        assert data["matrix"]["device_backend"] == backend
        outcomes[backend] = {c["id"]: c["outcome"] for c in data["cells"]}
    assert outcomes["qemu"] == outcomes["ours"]
    assert set(outcomes["qemu"].values()) >= {"OK", "FAILED_CLEAN", "HOST_REFUSED", "NOT_PROBED"}


def test_matrix_refuses_cells_qemu_cannot_run() -> None:
    cmd = [
        sys.executable,
        "-m",
        "virtio_sim.orchestration.cli",
        "matrix",
        "--device",
        "qemu-2.3",
        "--device-backend",
        "qemu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot run on QEMU's devices" in done.stderr


# --------------------------------------------------------------------------- arm virt


@pytest.mark.qemu_arm
@pytest.mark.parametrize("transport", MMIO_TRANSPORTS)
def test_arm_virt_rng_and_blk_through_the_gic(transport: str, tmp_path: Path) -> None:
    """qemu-system-aarch64 -M virt: RAM at 1 GiB, 32 transports, interrupts from the GIC.
    Every completion the drivers waited for came as an intercepted GIC line."""
    r = qemu_run("virtio-rng-device", "rng", transport, machine="virt")
    assert r.outcome is Outcome.OK, r.detail
    assert r.workload["qemu_machine"] == "virt"
    assert bool(r.driver_features >> F.VERSION_1 & 1) == (transport == "mmio-v2")
    # QEMU's virt DSDT lists all 32 transports; QEMU's empty ones have device id 0
    assert len(r.probes) == 32 and all(str(p["source"]).startswith("acpi:\\_SB.VR") for p in r.probes)
    (bound,) = [p for p in r.probes if p["outcome"] == "BOUND"]
    assert bound["where"] == "virtio-mmio@0xa003e00" and bound["source"] == "acpi:\\_SB.VR31 LNRO0005"
    assert {p["reason"] for p in r.probes if p is not bound} == {"empty slot (device id 0)"}
    disk = tmp_path / "disk.img"
    before = pattern_disk(disk, 512)
    r = qemu_run(f"virtio-blk-device,drive={disk}", "blk-rw", transport, machine="virt", seed=3)
    assert r.outcome is Outcome.OK, r.detail
    assert disk.read_bytes() == blk_rw_image(before, r.workload, 3)


def test_arm_virt_has_no_pci_transport_here() -> None:
    r = qemu_run("virtio-rng-device", "rng", "pci-modern", machine="virt")
    assert r.outcome is Outcome.HOST_REFUSED and "q35" in r.detail
