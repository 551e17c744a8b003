"""ACCESS_PLATFORM end to end: real Linux 6.1's DMA API behind intel-iommu, our devices
behind vhost-user with an IOTLB.

q35 with ``-device intel-iommu,device-iotlb=on`` and ``intel_iommu=on``: Linux maps every
buffer and ring through the IOMMU, so the addresses our back-end sees are IOVAs, never
guest-physical. The back-end has no way to read guest memory but the translations QEMU
sends it (IOTLB UPDATE answering its MISS on the back-end channel), and Linux's unmaps
come back as INVALIDATE. What the guest reads and writes must still be exactly what our
devices served and stored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from virtio_sim.orchestration.qemu.initramfs import build_initramfs
from virtio_sim.orchestration.qemu.kernel import KernelImage, ensure_kernel
from virtio_sim.orchestration.qemu.linux_vhost import (
    CHECK_VIRTIO_DEVICES,
    BlkCheck,
    BlkLongChains,
    LinuxBootResult,
    boot_with_vhost_user,
    check_rng,
    served_contains,
)
from virtio_sim.orchestration.qemu.tools import static_busybox
from virtio_sim.spec import F

pytestmark = pytest.mark.qemu

DISK = 8 << 20
BLK = BlkCheck()
LONG = BlkLongChains(direct_mib=1, buffered_kib=256)
CHECK_DMAR = 'mark dmar "$(dmesg | grep -c "DMAR: Intel(R) Virtualization Technology for Directed I/O")"'


def feature_bits(sysfs: str) -> int:
    return sum(1 << i for i, c in enumerate(sysfs) if c == "1")


@pytest.fixture(scope="module")
def iommu_boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[LinuxBootResult, Path]:
    kernel: KernelImage = ensure_kernel()
    work = tmp_path_factory.mktemp("iommu")
    initrd = work / "initrd.cpio"
    checks = [CHECK_VIRTIO_DEVICES, CHECK_DMAR, check_rng(), BLK.script(), LONG.script()]
    initrd.write_bytes(build_initramfs(static_busybox(), kernel.modules(), checks))
    disk = work / "disk.img"
    disk.write_bytes(bytes(DISK))
    devices = ["virtio-rng-device", f"virtio-blk-device,drive={disk}"]

    async def go() -> LinuxBootResult:
        return await boot_with_vhost_user(kernel, initrd, "q35", devices, work, iommu=True)

    result = trio.run(go)
    assert result.finished, result.explain()
    return result, disk


def _report(result: LinuxBootResult, device: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in result.reports if r["device"] == device)


def test_linux_negotiates_access_platform_with_our_devices(iommu_boot: tuple[LinuxBootResult, Path]) -> None:
    result, _ = iommu_boot
    assert result.value("dmar") == "1", result.explain()  # intel-iommu is on in the guest
    lines = result.values("virtio-device")
    assert len(lines) == 2
    for line in lines:
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        assert feature_bits(fields["features"]) >> F.ACCESS_PLATFORM & 1, line
    for dev in ("virtio-rng-device", "virtio-blk-device"):
        rep = _report(result, dev)
        assert int(rep["features_acked"], 16) >> F.ACCESS_PLATFORM & 1
        assert "SET_BACKEND_REQ_FD" in rep["messages"] and "IOTLB_MSG" in rep["messages"]


def test_every_access_went_through_the_iotlb(iommu_boot: tuple[LinuxBootResult, Path]) -> None:
    result, _ = iommu_boot
    for dev in ("virtio-rng-device", "virtio-blk-device"):
        rep = _report(result, dev)
        iotlb = rep["iotlb"]
        # the back-end asked (MISS), QEMU answered (UPDATE), Linux's unmaps came back
        # (a miss still out when the guest powers off gets no answer: not every one)
        assert iotlb["misses_sent"] > 0 and iotlb["updates"] > 0, iotlb
        assert iotlb["invalidates"] > 0, iotlb
        assert rep["violations"] == [], rep["violations"]
        assert rep["ended"] == "front-end closed the connection"


def test_data_crosses_the_iommu_intact(iommu_boot: tuple[LinuxBootResult, Path]) -> None:
    result, disk = iommu_boot
    got = bytes.fromhex(result.value("rng") or "")
    served = bytes.fromhex(_report(result, "virtio-rng-device")["rng"]["served_hex"])
    assert len(got) == 64 and served_contains(served, got)
    assert result.value("blk-compare") == "same", result.explain()
    data = disk.read_bytes()
    at = BLK.write_at * BLK.write_block
    assert hashlib.sha256(data[at : at + BLK.write_block]).hexdigest() == result.value("blk-written")
    (d_at, d_len), (b_at, b_len) = LONG.regions()
    assert hashlib.sha256(data[d_at : d_at + d_len]).hexdigest() == result.value("long-written")
    assert result.value("long-direct-read") == result.value("long-written")
    assert hashlib.sha256(data[b_at : b_at + b_len]).hexdigest() == result.value("long-buffered-written")
    assert result.value("long-buffered-read") == result.value("long-buffered-written")
