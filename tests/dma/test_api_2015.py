"""The 2015 "virtio should use the DMA API" debate as a runnable matrix (issue 21).

Platforms are machine properties (``-M q35,x-platform=...``), driver generations and the
proposals are profiles, and every outcome comes from running the cell.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.guest.platform_dma import PlatformInfo, XenDma, parse_platform, vring_use_dma_api
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.machine_types import parse_machine
from virtio_sim.host.platform import P2mAddressSpace, cmdline_param, p2m_shift
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.matrix.cell import run_cell
from virtio_sim.orchestration.matrix.spec import expand, expected_outcome, load_matrix
from virtio_sim.profiles import list_profiles, load_driver_profile
from virtio_sim.spec import SPECS_DIR, F

MATRIX = SPECS_DIR / "matrices" / "dma-api-2015.toml"
XEN = "q35,x-platform=xen-pv"


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    spec = load_matrix(MATRIX)
    return {cell.id: {**run_cell(cell, timeout=spec.timeout), "expected": str(expected_outcome(spec, cell))}
            for cell in expand(spec)}  # fmt: skip


def test_the_2015_matrix_passes_with_corruption_and_hang(results: dict[str, dict[str, Any]]) -> None:
    wrong = {
        k: (r["expected"], r["outcome"], r["detail"])
        for k, r in results.items()
        if r["outcome"] != r["expected"]
    }
    assert not wrong
    outcomes = {r["outcome"] for r in results.values()}
    assert {"CORRUPTION", "HANG", "OK", "OK_NO_ISOLATION", "DMA_FAULT", "FAILED_CLEAN"} <= outcomes
    for r in results.values():
        if r["outcome"] == "CORRUPTION":  # the address the device wrote, from the run
            assert r["stray_writes"] and f"{r['stray_writes'][0][0]:#x}" in str(r["detail"])
        if r["outcome"] == "HANG":
            assert "DEVICE_NEEDS_RESET" in str(r["detail"]) and "device:" in str(r["detail"])


def test_pre_45_and_45_xen_guests_differ_only_under_xen(results: dict[str, dict[str, Any]]) -> None:
    def outcome(driver: str, machine: str, device: str = "qemu-2.7", bit: str = "off") -> object:
        return results[f"{driver}/{device}/pci-modern/{machine}/none/{bit}/split/blk-rw"]["outcome"]

    assert outcome("linux-4.4", XEN) == "CORRUPTION"
    assert outcome("linux-4.6-xen", XEN) == "OK"
    for machine in ("q35", "q35,x-platform=viommu", "q35,x-platform=viommu-pt", "q35,x-platform=tce"):
        for device in ("qemu-2.7", "translate-without-bit"):
            assert outcome("linux-4.4", machine, device) == outcome("linux-4.6-xen", machine, device)


def test_every_expectation_cites_its_source() -> None:
    """Each [[expect]] carries a one-line reason with a commit hash or a thread and date."""
    text = MATRIX.read_text()
    heads = [line for line in text.splitlines() if line.startswith("[[expect]]")]
    assert len(heads) == len(load_matrix(MATRIX).expect)
    source = re.compile(
        r"[0-9a-f]{10,12}\b|\b(19|20)\d\d-\d\d|virtio 0\.9\.5|Linux 2\.6|pseries dma_iommu_ops"
    )
    unsourced = [h for h in heads if "#" not in h or not source.search(h.split("#", 1)[1])]
    assert not unsourced


def test_proposals_are_marked_as_proposals() -> None:
    proposals = [p for p in list_profiles("drivers") if p.startswith("proposal-")]
    assert proposals
    for name in proposals:
        prof = load_driver_profile(name)
        assert prof.proposal and prof.description.startswith("PROPOSAL")
    assert all(
        not load_driver_profile(n).proposal for n in list_profiles("drivers") if n.startswith("linux-")
    )


def test_vring_use_dma_api_per_generation() -> None:
    xen, tce, plain = PlatformInfo("xen-pv"), PlatformInfo("tce"), PlatformInfo()
    bit = 1 << F.ACCESS_PLATFORM
    assert not vring_use_dma_api("never", bit, xen)  # up to 4.5, even under Xen
    assert vring_use_dma_api("xen", 0, xen) and not vring_use_dma_api("xen", bit, plain)  # 4.6-4.7
    assert vring_use_dma_api("feature", bit, plain) and vring_use_dma_api("feature", 0, xen)  # 4.8+
    assert not vring_use_dma_api("feature", 0, tce)
    assert vring_use_dma_api("always", 0, tce)
    assert not vring_use_dma_api("quirk-list", 0, tce) and vring_use_dma_api("quirk-list", 0, plain)


def test_xen_p2m_views_agree(tmp_path: object) -> None:
    mem = GuestMemory.create(16 << 20)
    try:
        shift = p2m_shift(16 << 20)
        device = P2mAddressSpace(mem, 0, 16 << 20, shift)
        guest = XenDma(mem, PageAllocator(1 << 20, 8 << 20), (0, 16 << 20, shift))
        buf = guest.alloc(100)
        assert buf.dev_addr != buf.gpa  # the bus address is the machine address
        guest.write(buf, b"through the p2m")
        assert device.read(buf.dev_addr, 15) == b"through the p2m"  # the DMA API's address works
        assert device.read(buf.gpa, 15) != b"through the p2m"  # a pseudo-physical one does not
        device.write(buf.gpa, b"x")
        assert device.writes.ranges and device.writes.ranges[0][0] != buf.gpa  # landed elsewhere
        info = parse_platform(cmdline_param("xen-pv", p2m=(0, 16 << 20, shift)))
        assert info.xen_domain and info.p2m == (0, 16 << 20, shift)
    finally:
        mem.close()


def test_platform_property_is_checked() -> None:
    assert parse_machine("q35,x-platform=tce").platform == "tce"
    with pytest.raises(PropertyError, match="doesn't take value 'sparc'"):
        parse_machine("q35,x-platform=sparc")
    with pytest.raises(PropertyError, match="not found"):
        parse_machine("microvm,x-platform=tce")
    with pytest.raises(PropertyError, match="cannot be combined"):
        build_host(HostConfig(["virtio-rng-pci"], transport="pci-modern", machine="q35,x-platform=viommu",
                              iommu="virtio-iommu"))  # fmt: skip
