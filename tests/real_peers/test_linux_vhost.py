"""The real Linux 6.1 virtio drivers against our device models (vhost-user back-end).

One boot per machine kind serves our rng and blk models to QEMU, whose guest is the
Debian kernel with a busybox initramfs built here: insmod the virtio modules, read
/dev/hwrng, read the disk the host pre-filled, write a block of entropy to it and read it
back with O_DIRECT. Every assertion compares what the guest printed with what only the
host can see: the entropy our device served, the bytes in the disk file, the ring
counters and violations our device side recorded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.driver_runner import watch_vhost_backends
from virtio_sim.orchestration.conformance.driver_watch import DriverWatch
from virtio_sim.orchestration.conformance.findings import FindingLog, Policy, Verdict
from virtio_sim.orchestration.qemu.initramfs import build_initramfs
from virtio_sim.orchestration.qemu.kernel import KernelImage, ensure_kernel
from virtio_sim.orchestration.qemu.linux_vhost import (
    CHECK_VIRTIO_DEVICES,
    BlkCheck,
    BlkLongChains,
    LinuxBootResult,
    boot_with_vhost_user,
    check_net,
    check_rng,
    served_contains,
)
from virtio_sim.orchestration.qemu.tools import static_busybox
from virtio_sim.spec import BLK_F, F

pytestmark = [pytest.mark.qemu, pytest.mark.tool("busybox")]

SECTOR = 512
DISK_SECTORS = 16384  # 8 MiB
BLK = BlkCheck()
LONG = BlkLongChains()
QEMU_BLK_RING = 128  # vhost-user-blk's queue-size default (QEMU 7.2 -device vhost-user-blk-pci,help)
MMIO_QUEUE_NUM_MAX = 1024  # what QEMU 7.2's virtio-mmio reports as QueueNumMax (VIRTQUEUE_MAX_SIZE)
MACHINES = ("q35", "microvm", "microvm-legacy")


def sector_pattern(n: int) -> bytes:
    return b"HOST%08d" % n + bytes(SECTOR - 12)


@pytest.fixture(scope="session")
def debian_kernel() -> KernelImage:
    return ensure_kernel()


@pytest.fixture(scope="session")
def initrd(debian_kernel: KernelImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("initrd") / "initrd.cpio"
    checks = [CHECK_VIRTIO_DEVICES, check_rng(), BLK.script(), LONG.script(), check_net()]
    path.write_bytes(build_initramfs(static_busybox(), debian_kernel.modules(), checks))
    return path


class Boot:
    def __init__(
        self, result: LinuxBootResult, disk: Path, log: FindingLog, watches: list[DriverWatch]
    ) -> None:
        self.result = result
        self.disk = disk
        self.log = log  # the driver-side conformance findings about the real Linux driver
        self.watches = watches

    def report(self, device: str) -> dict:  # type: ignore[type-arg]
        return next(r for r in self.result.reports if r["device"] == device)


@pytest.fixture(scope="module", params=MACHINES)
def boot(
    request: pytest.FixtureRequest,
    debian_kernel: KernelImage,
    initrd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Boot:
    work = tmp_path_factory.mktemp(request.param)
    disk = work / "disk.img"
    disk.write_bytes(b"".join(sector_pattern(n) for n in range(DISK_SECTORS)))
    devices = ["virtio-rng-device", f"virtio-blk-device,drive={disk}", "virtio-net-device"]
    log = FindingLog(load_catalog().level_of, Policy.LENIENT)
    watches: list[DriverWatch] = []

    async def go() -> LinuxBootResult:
        return await boot_with_vhost_user(
            debian_kernel, initrd, request.param, devices, work, on_backend=watch_vhost_backends(log, watches)
        )

    result = trio.run(go)
    for watch in watches:
        watch.finish()
    assert result.finished, result.explain()
    return Boot(result, disk, log, watches)


def feature_bits(sysfs_features: str) -> int:
    """Linux's /sys/bus/virtio/devices/*/features: one character per bit, bit 0 first."""
    return sum(1 << i for i, c in enumerate(sysfs_features) if c == "1")


def guest_devices(boot: Boot) -> dict[str, dict[str, str]]:
    out = {}
    for line in boot.result.values("virtio-device"):
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        out[fields["driver"]] = fields
    return out


def test_linux_binds_its_drivers_to_our_devices(boot: Boot) -> None:
    devs = guest_devices(boot)
    assert set(devs) == {"virtio_rng", "virtio_blk", "virtio_net"}, boot.result.explain()
    assert int(devs["virtio_rng"]["id"], 0) == 4 and int(devs["virtio_blk"]["id"], 0) == 2
    assert int(devs["virtio_net"]["id"], 0) == 1
    bus = "pci0000:00" if boot.result.machine == "q35" else "LNRO0005"
    assert all(bus in d["path"] for d in devs.values())
    assert not boot.result.values("insmod-failed")


def test_event_idx_and_indirect_negotiated_on_both_sides(boot: Boot) -> None:
    devs = guest_devices(boot)
    modern = boot.result.machine != "microvm-legacy"
    for driver, option in (("virtio_rng", "virtio-rng-device"), ("virtio_blk", "virtio-blk-device")):
        guest = feature_bits(devs[driver]["features"])
        host = int(boot.report(option)["features_acked"], 16)
        assert guest == host, f"{driver}: guest {guest:#x} != back-end {host:#x}"
        assert guest >> F.EVENT_IDX & 1 and guest >> F.INDIRECT_DESC & 1
        assert bool(guest >> F.VERSION_1 & 1) == modern
    assert feature_bits(devs["virtio_blk"]["features"]) >> BLK_F.FLUSH & 1


def test_linux_reads_entropy_from_our_device(boot: Boot) -> None:
    assert boot.result.value("rng-current") == "virtio_rng.0"
    got = bytes.fromhex(boot.result.value("rng") or "")
    assert len(got) == 64
    rng = boot.report("virtio-rng-device")["rng"]
    served = bytes.fromhex(rng["served_hex"])
    assert rng["bytes_served"] >= 64 and served_contains(served, got)


def test_linux_reads_what_the_host_wrote(boot: Boot) -> None:
    r = boot.result
    assert int(r.value("blk-size") or 0) == DISK_SECTORS * SECTOR
    expected = b"".join(sector_pattern(n) for n in range(BLK.host_bytes // SECTOR))
    assert r.value("blk-host-read") == hashlib.sha256(expected).hexdigest()
    assert r.value("blk-host-last") == f"HOST{DISK_SECTORS - 1:08d}"


def test_linux_writes_our_disk_and_reads_it_back(boot: Boot) -> None:
    r = boot.result
    assert r.value("blk-write") == "ok" and r.value("blk-compare") == "same", r.explain()
    assert r.value("blk-written") == r.value("blk-read-back")
    data = boot.disk.read_bytes()
    at = BLK.write_at * BLK.write_block
    written = data[at : at + BLK.write_block]
    assert hashlib.sha256(written).hexdigest() == r.value("blk-written")
    # the block is entropy our rng device served, carried through the guest to our disk
    served = bytes.fromhex(boot.report("virtio-rng-device")["rng"]["served_hex"])
    assert served_contains(served, written)
    # and nothing else on the disk changed
    written_regions = [(at, BLK.write_block), *LONG.regions()]
    for n in range(DISK_SECTORS):
        if not any(o <= n * SECTOR < o + length for o, length in written_regions):
            assert data[n * SECTOR : (n + 1) * SECTOR] == sector_pattern(n), n


def test_long_chains_reach_our_disk_intact(boot: Boot) -> None:
    """>= 1 MiB O_DIRECT, buffered + fsync + drop_caches: what the guest hashed is what
    our disk file holds, and what it read back (from our device, not its page cache)."""
    r = boot.result
    assert r.value("long-direct-write") == "ok" and r.value("long-buffered-write") == "ok", r.explain()
    data = boot.disk.read_bytes()
    (d_at, d_len), (b_at, b_len) = LONG.regions()
    assert hashlib.sha256(data[d_at : d_at + d_len]).hexdigest() == r.value("long-written")
    assert r.value("long-direct-read") == r.value("long-written")
    assert hashlib.sha256(data[b_at : b_at + b_len]).hexdigest() == r.value("long-buffered-written")
    assert r.value("long-buffered-read") == r.value("long-buffered-written")


def test_seg_max_follows_the_front_ends_ring_and_chains_fit_it(boot: Boot) -> None:
    """QEMU's vhost-user-blk has a 128-entry queue: our seg_max says 126, so Linux's
    longest chains (seg_max + 2: header, data segments, status) are 128 descriptors and
    never exceed the ring (split.chain.drv-max-queue-size). On virtio-pci the ring is
    those 128; QEMU's virtio-mmio reports QueueNumMax = VIRTQUEUE_MAX_SIZE (1024) whatever
    the device's size, Linux's virtio_mmio takes it (measured), and seg_max stays safe."""
    q = boot.report("virtio-blk-device")["queues"][0]
    assert q["size"] == (QEMU_BLK_RING if boot.result.machine == "q35" else MMIO_QUEUE_NUM_MAX)
    # 1 MiB requests are split at seg_max; how many segments a request gets depends on how
    # the guest's pages merge (measured 119..128), never more than the ring
    assert QEMU_BLK_RING // 2 < q["longest_chain"] <= QEMU_BLK_RING, q
    assert "split.chain.drv-max-queue-size" not in {f.requirement for f in boot.log.unexplained_failures()}


def test_linux_virtio_net_sends_and_receives_through_our_model(boot: Boot) -> None:
    """Linux's ARP requests leave through our net model's transmit queue and come back
    (loopback backend) on its receive queue: both counters move, on both sides."""
    r = boot.result
    tx, rx = int(r.value("net-tx") or 0), int(r.value("net-rx") or 0)
    assert tx > 0 and rx > 0, r.explain()
    net = boot.report("virtio-net-device")["net"]
    assert net["tx_frames"] >= tx and net["rx_frames"] >= rx
    assert net["rx_backlog_dropped"] == 0 and net["tx_errors"] == 0


def test_device_side_sees_no_ring_violations(boot: Boot) -> None:
    for report in boot.result.reports:
        assert report["ended"] == "front-end closed the connection", report
        assert report["violations"] == [], report["violations"]
        assert report["status"] == "ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK"
        q = report["queues"][0]
        assert q["chains"] > 0 and q["interrupts_sent"] > 0
    blk = boot.report("virtio-blk-device")
    assert blk["queues"][0]["indirect_chains"] > 0  # Linux puts multi-segment requests in tables
    assert blk["blk"]["requests"] >= 4
    assert {"SET_MEM_TABLE", "SET_VRING_ADDR", "SET_VRING_KICK", "GET_VRING_BASE"} <= set(blk["messages"])


def test_driver_watch_checks_the_real_linux_driver(boot: Boot) -> None:
    """The checking device watched Linux 6.1's own virtio drivers through vhost-user: its
    features, ring setup and every chain it made available. Linux breaks no MUST we see."""
    assert {w.device_type for w in boot.watches} == {"rng", "blk", "net"}
    assert all(w.chains > 0 and w.kicks > 0 for w in boot.watches)
    assert [(f.requirement, f.evidence[:2]) for f in boot.log.unexplained_failures()] == []
    passed = {r for r, f in boot.log.findings.items() if f.verdict is Verdict.PASS}
    assert {
        "features.drv.only-offered",
        "split.drv.alignment",
        "split.chain.drv-max-queue-size",
        "framing.drv.readable-before-writable",
        "split.indirect.drv-feature",
        "split.usedsupp.drv-flags-zero-with-event-idx",
        "blk.req.format",
        "rng.drv.writable-only",
    } <= passed
    # status and register rules belong to QEMU's side of vhost-user: not judged here
    assert "status.drv.never-clear-bit" not in boot.log.findings
