"""ACCESS_PLATFORM, the vIOMMU and guest DMA decided by mechanism (issue 19).

QEMU decides translation at plug time from iommu_platform and the bus; Linux places IOVAs
top-down below 4 GiB for PCI devices; where that IOVA lands when a device uses it as a
guest-physical address depends on the machine's memory map and the guest's RAM size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from virtio_sim.guest.iommu_dma import SAC_LIMIT, IovaAllocator, IovaExhausted
from virtio_sim.guest.profile import guest_policy
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.machine_types import parse_ram_size, ram_layout
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.matrix.cell import run_cell
from virtio_sim.orchestration.matrix.spec import expand, expected_outcome, load_matrix
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import load_driver_profile
from virtio_sim.spec import SPECS_DIR

G = 1 << 30
LIAR = "virtio-blk-pci,iommu_platform=on,x-dma=bypass"  # offers bit 33, never translates


def _run(device: str, *, ram: int, machine: str | None = "virt", driver: str = "linux-6.1",
         transport: str = "pci-modern", timeout: float = 2.0) -> RunResult:  # fmt: skip
    cfg = RunConfig(
        device, "blk-rw", transport=transport, ram_size=ram, timeout=timeout,
        guest=guest_policy(load_driver_profile(driver)), iommu="virtio-iommu", machine=machine,
    )  # fmt: skip
    return trio.run(run_embedded, cfg)


# -- the IOVA allocator --------------------------------------------------------------------


def test_pci_iovas_come_top_down_from_below_4g_then_the_64_bit_space() -> None:
    iova = IovaAllocator(4096, (0, (1 << 48) - 1), [(0xFEE00000, 0xFEEFFFFF)], pci=True)
    first = iova.alloc(4096)
    assert first == SAC_LIMIT + 1 - 4096  # the top page below 4 GiB
    second = iova.alloc(3 * 4096)  # rounded up to 4 pages and aligned to them
    assert second == first - 4 * 4096 - (first % (4 * 4096)) or second % (4 * 4096) == 0
    assert second < first and second % (4 * 4096) == 0
    # the MSI window is never handed out: fill the space above it, the next goes below it
    while True:
        a = iova.alloc(1 << 20)
        assert not (0xFEE00000 <= a <= 0xFEEFFFFF)
        if a < 0xFEE00000:
            break
    # a non-PCI device (or a PCI device once the 32-bit space is gone) gets its DMA mask's top
    mmio = IovaAllocator(4096, (0, (1 << 48) - 1), pci=False, dma_mask=(1 << 44) - 1)
    assert mmio.alloc(4096) == (1 << 44) - 4096
    small = IovaAllocator(4096, (0, (1 << 48) - 1), [(4096, SAC_LIMIT)], pci=True)
    assert small.alloc(4096) == (1 << 48) - 4096  # 32-bit space all reserved: 64-bit space
    with pytest.raises(IovaExhausted):
        IovaAllocator(4096, (0, 0x3FFF), pci=True).alloc(1 << 20)


def test_iova_zero_is_never_handed_out_and_frees_are_reused() -> None:
    iova = IovaAllocator(4096, (0, 0x3FFF))
    got = sorted(iova.alloc(4096) for _ in range(3))
    assert got == [0x1000, 0x2000, 0x3000]
    with pytest.raises(IovaExhausted):
        iova.alloc(4096)
    iova.free(0x2000)
    assert iova.alloc(4096) == 0x2000


# -- guest RAM size: QEMU's -m and the machines' memory maps -------------------------------


def test_ram_size_parses_qemu_m_syntax() -> None:
    assert parse_ram_size("4G") == 4 * G
    assert parse_ram_size("size=512M") == 512 << 20
    assert parse_ram_size("512") == 512 << 20  # a bare number is MiB, as QEMU's -m
    assert parse_ram_size("1.5G") == 3 * G // 2
    for bad in ("", "lots", "-1G", "0", "2P"):
        with pytest.raises(PropertyError):
            parse_ram_size(bad)


def test_machines_place_ram_as_qemu_does() -> None:
    assert ram_layout("q35", 64 << 20) == [(0, 64 << 20)]
    assert ram_layout("q35", 0xB0000000) == [(0, 0x80000000), (1 << 32, 0x30000000)]  # big: 2 GiB low
    assert ram_layout("q35", 0xA0000000) == [(0, 0xA0000000)]  # below the threshold: all low
    assert ram_layout("virt", 4 * G) == [(G, 4 * G)]


def test_cli_run_takes_m(capsys: pytest.CaptureFixture[str]) -> None:
    from virtio_sim.orchestration.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--device", "virtio-rng-device", "--workload", "rng", "-m", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid ram size: bogus" in err and "Traceback" not in err
    assert main(["run", "--device", "virtio-rng-device", "--workload", "rng", "-m", "size=8M"]) == 0


# -- the outcome follows the memory map ---------------------------------------------------


def test_iova_used_as_gpa_corrupts_a_big_arm_guest_and_hangs_a_small_one() -> None:
    """The same device and driver: only the guest's RAM size differs. The IOVA Linux gives
    (just below 4 GiB) is RAM on a 4 GiB arm virt guest and a hole on a 1 GiB one."""
    big = _run(LIAR, ram=4 * G)
    assert big.outcome is Outcome.CORRUPTION, big.detail
    start, length = big.stray_writes[0]
    assert SAC_LIMIT - (64 << 20) < start <= SAC_LIMIT and length > 0  # the IOVA, used raw
    assert f"{start:#x}" in big.detail
    small = _run(LIAR, ram=1 * G)
    assert small.outcome is Outcome.HANG, small.detail
    assert "DEVICE_NEEDS_RESET" in small.detail and "waits forever" in small.detail
    assert small.stray_writes == []
    # x86's q35 has no RAM just below 4 GiB whatever the size: a hang, never corruption
    q35 = _run(LIAR, ram=4 * G, machine=None)
    assert q35.outcome is Outcome.HANG and q35.stray_writes == [], q35.detail


def test_hang_is_reported_at_once_with_the_needs_reset_evidence() -> None:
    """A driver generation that ignores NEEDS_RESET hangs; the simulator's hardened guest
    (needs_reset="detect") resets the device instead: the profile field decides."""
    hung = _run(LIAR, ram=1 * G, timeout=600.0)  # reported when the device stops, not at the deadline
    assert hung.outcome is Outcome.HANG and "no completion within" not in hung.detail
    assert "device:" in hung.detail  # what made the device stop serving
    from dataclasses import replace

    policy = guest_policy(load_driver_profile("linux-6.1"))
    detect = replace(policy, driver=replace(policy.driver, needs_reset="detect"))
    cfg = RunConfig(LIAR, "blk-rw", transport="pci-modern", ram_size=G, timeout=5.0, guest=detect,
                    iommu="virtio-iommu", machine="virt")  # fmt: skip
    r = trio.run(run_embedded, cfg)
    assert r.outcome is Outcome.DEVICE_ERROR and "DEVICE_NEEDS_RESET" in r.detail


# -- QEMU's plug-time choice and refusals -------------------------------------------------


def test_virtio_iommu_needs_a_pci_bus_as_in_qemu(tmp_path: Path) -> None:
    with pytest.raises(PropertyError, match="VIRTIO-IOMMU is not attached to any PCI bus!"):
        build_host(HostConfig(["virtio-rng-device"], transport="mmio-v2", iommu="virtio-iommu",
                              scratch_dir=str(tmp_path)))  # fmt: skip


def test_mmio_on_arm_virt_is_never_behind_the_iommu(tmp_path: Path) -> None:
    """QEMU combines virtio-iommu-pci and virtio-mmio on virt; the mmio device has no DMA
    address space of its own, so it is neither translated nor an endpoint."""
    cfg = HostConfig(["virtio-rng-device,iommu_platform=on"], transport="mmio-v2", iommu="virtio-iommu",
                     machine="virt", scratch_dir=str(tmp_path))  # fmt: skip
    setup = build_host(cfg)
    try:
        assert setup.iommu is not None and setup.iommu.endpoints == set()
        assert setup.unisolated == []
    finally:
        setup.close()
    r = _run("virtio-blk-device,iommu_platform=on", ram=G, transport="mmio-v2")
    assert r.outcome is Outcome.OK, r.detail
    assert r.iommu["unisolated_accesses"] == 0 and r.iommu["fault_count"] == 0


def test_translation_is_chosen_at_plug_not_by_negotiation() -> None:
    """QEMU 7.2 with iommu_platform=on translates whatever the driver negotiated: a driver
    without the DMA API whose device is attached gets its GPAs faulted -- unless QEMU
    refuses FEATURES_OK first (it does since 8607f5c3072c, QEMU 2.9), which the profile says."""
    r = _run("virtio-blk-pci,iommu_platform=on,x-validate-access-platform=off", ram=G, driver="linux-4.0")
    # linux-4.0 has no virtio-iommu driver: the IOMMU stays in boot bypass, GPAs pass
    assert r.outcome is Outcome.OK, r.detail
    strict = _run("virtio-blk-pci,iommu_platform=on", ram=G, driver="linux-4.0")
    assert strict.outcome is Outcome.FAILED_CLEAN, strict.detail


def test_a_generation_without_virtio_iommu_is_refused_in_qemus_words() -> None:
    from virtio_sim.orchestration.matrix.spec import Cell

    cell = Cell("linux-6.1", "qemu-4.2", "pci-modern", "auto", "virtio-iommu", "off", "split", "blk-rw")
    out = run_cell(cell, timeout=5.0)
    assert out["outcome"] == "HOST_REFUSED"
    assert out["detail"] == "'virtio-iommu-pci' is not a valid device model name"


def test_matrix_json_keeps_the_iommu_evidence() -> None:
    from virtio_sim.orchestration.matrix.spec import Cell

    cell = Cell("linux-6.1", "translate-without-bit", "pci-modern", "auto", "virtio-iommu", "off",
                "split", "blk-rw")  # fmt: skip
    out = run_cell(cell, timeout=5.0)
    assert out["iommu"] == "virtio-iommu"  # the axis
    assert out["outcome"] == "DMA_FAULT" and out["iommu_evidence"]["fault_count"] >= 1


def test_dma_matrix_slice_matches_its_expectations() -> None:
    """A slice of specs/matrices/dma.toml (the whole file is `virtio-sim matrix
    specs/matrices/dma.toml`): the cells that show CORRUPTION, HANG and the mmio rules."""
    spec = load_matrix(SPECS_DIR / "matrices" / "dma.toml")
    only = {"driver": ["linux-6.1"], "device": ["bit-without-translate"], "iommu_platform": ["on"]}
    cells = expand(spec, only)
    seen = set()
    for cell in cells:
        out = run_cell(cell, timeout=spec.timeout)
        assert out["outcome"] == str(expected_outcome(spec, cell)), (cell.id, out["detail"])
        seen.add(out["outcome"])
    assert {"CORRUPTION", "HANG", "OK", "HOST_REFUSED"} <= seen


# -- against QEMU 7.2's own devices ---------------------------------------------------------


@pytest.mark.qemu
def test_qemu_refuses_virtio_iommu_without_pci_in_our_words() -> None:
    """QEMU itself, on microvm: the refusal our host gives is QEMU's, word for word."""
    from virtio_sim.orchestration.qemu.qtest import QtestError, spawn_qtest
    from virtio_sim.orchestration.qemu.tools import QEMU_X86, require_qemu

    args = ["-M", "microvm,ioapic2=off,pit=off", "-m", "64M", "-device", "virtio-iommu-device"]
    stderr = ""
    try:
        q = spawn_qtest(require_qemu(QEMU_X86), "x86_64", args)
    except QtestError as e:
        stderr = str(e)
    else:
        # QEMU connects before it realizes the devices; a refused one ends it right after
        with pytest.raises(QtestError):
            q.client.read(0xFEB00000, 4)
        stderr = q.close()
    ours = _run("virtio-rng-device", ram=64 << 20, machine=None, transport="mmio-v2")
    assert ours.outcome is Outcome.HOST_REFUSED
    assert ours.detail in stderr


@pytest.mark.qemu
def test_virtio_iommu_cells_run_against_qemus_virtio_iommu_pci() -> None:
    """--device-backend qemu --iommu virtio-iommu: QEMU's virtio-iommu-pci, same outcomes as
    our model where QEMU gives the evidence (it does not report raw DMA: docs/qemu-deviations.md)."""
    from virtio_sim.orchestration.matrix.cell import run_cell_qemu
    from virtio_sim.orchestration.matrix.spec import Cell

    for driver, bit, expected in (("linux-6.1", "on", "OK"), ("linux-4.0", "on", "FAILED_CLEAN")):
        cell = Cell(driver, "qemu-7.2", "pci-modern", "auto", "virtio-iommu", bit, "split", "blk-rw")
        theirs = run_cell_qemu(cell, timeout=15.0)
        ours = run_cell(cell, timeout=15.0)
        assert theirs["outcome"] == ours["outcome"] == expected, (theirs["detail"], ours["detail"])
    mmio = Cell("linux-6.1", "qemu-7.2", "mmio-v2", "auto", "virtio-iommu", "on", "split", "blk-rw")
    assert run_cell_qemu(mmio, timeout=15.0)["outcome"] == run_cell(mmio)["outcome"] == "HOST_REFUSED"


def test_only_a_kernel_that_reads_the_viot_attaches_endpoints() -> None:
    """The firmware says which endpoints sit behind the IOMMU, and only a kernel with the
    VIOT parser (Linux 5.14+) hears it: the same device is attached (and its raw DMA
    unisolated) for one generation and simply not behind the IOMMU for the other."""
    from dataclasses import replace

    policy = guest_policy(load_driver_profile("linux-6.1"))
    for firmware, outcome in ((("viot",), Outcome.OK_NO_ISOLATION), ((), Outcome.OK)):
        cfg = RunConfig("virtio-blk-pci", "blk-rw", transport="pci-modern", timeout=5.0,
                        guest=replace(policy, iommu_firmware=firmware), iommu="virtio-iommu")  # fmt: skip
        r = trio.run(run_embedded, cfg)
        assert r.outcome is outcome, (firmware, r.detail)
    assert load_driver_profile("linux-5.4-sev").iommu_firmware == ()
