"""Boot the real Debian Linux in QEMU with our device models behind vhost-user.

One boot serves several devices: each ``-device`` option of ours (``virtio-rng-device``,
``virtio-blk-device,drive=...``) gets a :mod:`host.vhost_user` back-end listening on its
own socket in this process, and QEMU gets the matching front-end
(``vhost-user-rng-pci`` on q35, ``vhost-user-rng`` on microvm's virtio-mmio). Guest RAM is
a shared memfd (``memory-backend-memfd,share=on``), which is what vhost-user needs. The
guest runs the checks of its initramfs (:mod:`virtio_sim.orchestration.qemu.initramfs`) and powers off;
the result carries the serial log with its markers and every back-end's report.

The snippets below are the checks the tests use; each prints markers the host verifies
against what only it can see (the served entropy, the disk file).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.host.vhost_user import VhostUserBackend, serve_socket
from virtio_sim.orchestration.qemu.initramfs import END_KEY, parse_markers
from virtio_sim.orchestration.qemu.kernel import KernelImage
from virtio_sim.orchestration.qemu.tools import QEMU_X86, require_qemu

RAM = "512M"
BOOT_TIMEOUT = 400.0  # seconds; a boot with checks takes 15-50 s under TCG alone, much longer on busy cores
BACKEND_GRACE = 5.0  # seconds the back-ends get to see QEMU's disconnect
KERNEL_CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1 rng_core.default_quality=0"


@dataclass(frozen=True)
class MachineKind:
    args: tuple[str, ...]
    frontend_suffix: str  # vhost-user-<dev> + this
    cmdline: str = ""


MACHINES: dict[str, MachineKind] = {
    # virtio-pci (modern: PCIe root ports default to disable-legacy)
    "q35": MachineKind(("-M", "q35,memory-backend=mem"), "-pci"),
    # virtio-mmio v2; microvm under TCG may hang calibrating the TSC without the hint
    "microvm": MachineKind(
        ("-M", "microvm,memory-backend=mem", "-global", "virtio-mmio.force-legacy=false"),
        "",
        "tsc_early_khz=2400000",
    ),
    # virtio-mmio v1 (QEMU's default force-legacy=true): the legacy interface
    "microvm-legacy": MachineKind(
        ("-M", "microvm,memory-backend=mem", "-global", "virtio-mmio.force-legacy=true"),
        "",
        "tsc_early_khz=2400000",
    ),
}


@dataclass(frozen=True)
class Frontend:
    """QEMU's side of one of our devices: its vhost-user front-end device (or, for net,
    QEMU's own virtio-net on a ``-netdev vhost-user``) and the ring size it will set up.

    ``ring_size`` is the front-end's default queue size where our model derives config
    from it (``-device vhost-user-blk-pci,help`` of QEMU 7.2: queue-size 128, from
    hw/block/vhost-user-blk.c vhost_user_blk_properties): the model is built with the same
    size, so blk seg_max (size - 2, as QEMU's own virtio-blk computes it) is true of the
    ring the guest gets. The back-end also follows SET_VRING_NUM (host/vhost_user.py).
    """

    device: str  # without the -pci suffix
    netdev: bool = False
    size_property: str = ""  # our model's queue-size property, when it has one
    ring_size: int = 0
    transitional: bool = False  # a -pci that is transitional on q35's root bus by default
    pci_props: str = ""  # QEMU properties the -pci flavour needs


FRONTENDS: dict[str, Frontend] = {
    "virtio-rng-device": Frontend("vhost-user-rng"),
    "virtio-blk-device": Frontend(
        "vhost-user-blk", size_property="queue-size", ring_size=128, transitional=True
    ),
    # QEMU 7.2.22's virtio-net-pci on a vhost-user netdev dies with SIGSEGV at the guest's
    # DRIVER_OK when MSI-X is on (measured; gdb: vhost_net_start -> msix_set_vector_notifiers,
    # before any SET_FEATURES reaches the back-end). With vectors=0 Linux uses INTx.
    "virtio-net-device": Frontend("virtio-net", netdev=True, transitional=True, pci_props="vectors=0"),
}
#: intel-iommu on q35 for ACCESS_PLATFORM runs: device-iotlb lets vhost get invalidations
#: per device (ATS); intremap needs a split irqchip, which TCG q35 here does not use
INTEL_IOMMU = ("-device", "intel-iommu,intremap=off,device-iotlb=on")
IOMMU_CMDLINE = "intel_iommu=on"


def backend_option(option: str, iommu: bool = False) -> str:
    """Our -device option as the back-end must build it to match its front-end: the
    front-end's ring size where the model derives config from it, iommu_platform=on
    behind an IOMMU (QEMU only forwards ACCESS_PLATFORM the back-end offers)."""
    driver = option.split(",", 1)[0]
    fe = FRONTENDS.get(driver)
    props = option.split(",")[1:]
    names = {p.split("=", 1)[0] for p in props}
    if fe is not None and fe.size_property and fe.size_property not in names:
        option += f",{fe.size_property}={fe.ring_size}"
    if iommu and "iommu_platform" not in names:
        option += ",iommu_platform=on"
    return option


# --------------------------------------------------------------------------- guest checks

CHECK_VIRTIO_DEVICES = """\
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] || continue
  drv=$(basename "$(readlink "$d/driver")")
  info="id=$(cat "$d/device") features=$(cat "$d/features") driver=$drv path=$(readlink -f "$d")"
  mark virtio-device "$(basename "$d") $info"
done"""


def check_rng(nbytes: int = 64) -> str:
    """Read ``nbytes`` from /dev/hwrng (virtio_rng must be the current hwrng)."""
    return f"""\
wait_for /dev/hwrng
mark rng-current "$(cat /sys/class/misc/hw_random/rng_current)"
mark rng "$(dd if=/dev/hwrng bs={nbytes} count=1 iflag=fullblock 2>/dev/null | hexdump -v -e '/1 "%02x"')\""""


def check_net(frames: int = 4) -> str:
    """Bring eth0 up and send ARP requests: our loopback net model hands every frame back,
    so the driver's receive counter moves as well as its transmit counter."""
    return f"""\
wait_for /sys/class/net/eth0
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
mark net-mac "$(cat /sys/class/net/eth0/address)"
arping -c {frames} -w 3 -I eth0 10.0.2.2 >/dev/null 2>&1
mark net-tx "$(cat /sys/class/net/eth0/statistics/tx_packets)"
mark net-rx "$(cat /sys/class/net/eth0/statistics/rx_packets)"
"""


@dataclass(frozen=True)
class BlkCheck:
    """Read what the host wrote, write a block of entropy, read it back (O_DIRECT)."""

    host_bytes: int = 8192  # the guest hashes this much from offset 0
    write_block: int = 65536  # one multi-page O_DIRECT write
    write_at: int = 2  # ... at this many write_blocks into the disk
    source: str = "/dev/hwrng"  # what the guest writes (our rng device's bytes)

    def script(self) -> str:
        b, at = self.write_block, self.write_at
        return f"""\
wait_for /dev/vda
sha() {{ sha256sum "$@" | cut -d' ' -f1; }}
size=$(blockdev --getsize64 /dev/vda)
mark blk-size "$size"
mark blk-host-read "$(dd if=/dev/vda bs={self.host_bytes} count=1 iflag=direct 2>/dev/null | sha)"
last=$((size / 512 - 1))
mark blk-host-last "$(dd if=/dev/vda bs=512 skip=$last count=1 iflag=direct 2>/dev/null | head -c 12)"
dd if={self.source} of=/tmp/w bs={b} count=1 iflag=fullblock 2>/dev/null
mark blk-written "$(sha /tmp/w)"
if dd if=/tmp/w of=/dev/vda bs={b} seek={at} oflag=direct conv=fsync 2>/dev/null
then mark blk-write ok; else mark blk-write failed; fi
dd if=/dev/vda of=/tmp/r bs={b} skip={at} count=1 iflag=direct 2>/dev/null
mark blk-read-back "$(sha /tmp/r)"
if cmp -s /tmp/w /tmp/r; then mark blk-compare same; else mark blk-compare differ; fi"""


@dataclass(frozen=True)
class BlkLongChains:
    """I/O big enough for the longest chains Linux builds: a >= 1 MiB O_DIRECT write and
    read (the block layer fills requests up to max_segments = seg_max, i.e. chains of
    seg_max + 2 descriptors), then a buffered write with fsync, drop_caches and a buffered
    read (writeback and readahead requests). Data comes from /dev/urandom (rng requests
    are 64 bytes each: megabytes of them would only measure TCG)."""

    direct_mib: int = 2
    direct_at_mib: int = 2
    buffered_kib: int = 1024
    buffered_at_kib: int = 5120

    def script(self) -> str:
        d, da = self.direct_mib, self.direct_at_mib
        bk, ba = self.buffered_kib // 64, self.buffered_at_kib // 64
        return f"""\
wait_for /dev/vda
sha() {{ sha256sum "$@" | cut -d' ' -f1; }}
dd if=/dev/urandom of=/tmp/big bs=1M count={d} 2>/dev/null
mark long-written "$(sha /tmp/big)"
if dd if=/tmp/big of=/dev/vda bs=1M seek={da} oflag=direct conv=fsync 2>/dev/null
then mark long-direct-write ok; else mark long-direct-write failed; fi
mark long-direct-read "$(dd if=/dev/vda bs=1M skip={da} count={d} iflag=direct 2>/dev/null | sha)"
head -c {self.buffered_kib * 1024} /tmp/big > /tmp/buf
mark long-buffered-written "$(sha /tmp/buf)"
if dd if=/tmp/buf of=/dev/vda bs=64k seek={ba} conv=fsync 2>/dev/null
then mark long-buffered-write ok; else mark long-buffered-write failed; fi
sync
echo 3 > /proc/sys/vm/drop_caches
mark long-buffered-read "$(dd if=/dev/vda bs=64k skip={ba} count={bk} 2>/dev/null | sha)"
"""

    def regions(self) -> list[tuple[int, int]]:
        """(offset, length) on the disk this check writes."""
        mib = 1 << 20
        return [
            (self.direct_at_mib * mib, self.direct_mib * mib),
            (self.buffered_at_kib * 1024, self.buffered_kib * 1024),
        ]


# --------------------------------------------------------------------------- the boot


@dataclass
class LinuxBootResult:
    machine: str
    serial: str
    markers: list[tuple[str, str]]
    reports: list[dict[str, Any]]
    returncode: int | None
    qemu_stderr: str
    timed_out: bool
    seconds: float
    command: list[str] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.markers if k == key]

    def value(self, key: str) -> str | None:
        found = self.values(key)
        return found[-1] if found else None

    @property
    def finished(self) -> bool:
        return self.value(END_KEY) is not None

    def explain(self) -> str:
        """What to show when a check fails: the tail of both logs."""
        tail = "\n".join(self.serial.splitlines()[-40:])
        return (
            f"{self.machine}: rc={self.returncode} timed_out={self.timed_out}\n"
            f"--- serial ---\n{tail}\n--- qemu stderr ---\n{self.qemu_stderr[-2000:]}"
        )


def frontend_args(index: int, frontend: Frontend, suffix: str, path: str, extra: str = "") -> list[str]:
    """QEMU arguments connecting one front-end to the back-end socket ``path``."""
    chardev = ["-chardev", f"socket,id=vu{index},path={path}"]
    props = f",{extra}" if extra else ""
    if frontend.netdev:
        dev = f"{frontend.device}{suffix or '-device'},netdev=n{index}{props}"
        return [*chardev, "-netdev", f"vhost-user,id=n{index},chardev=vu{index}", "-device", dev]
    return [*chardev, "-device", f"{frontend.device}{suffix},chardev=vu{index}{props}"]


def qemu_command(
    kernel: KernelImage,
    initrd: Path,
    machine: str,
    sockets: list[tuple[Frontend, str]],
    serial_log: Path,
    *,
    qemu: str,
    extra_cmdline: str = "",
    iommu: bool = False,
    frontend_props: str = "",
) -> list[str]:
    """The QEMU command line: ``sockets`` pairs a front-end with its back-end's socket;
    ``iommu`` puts intel-iommu in front of them (q35 only)."""
    kind = MACHINES[machine]
    if iommu and machine != "q35":
        raise ValueError("intel-iommu exists on q35 only")
    cmdline = (KERNEL_CMDLINE, kind.cmdline, IOMMU_CMDLINE if iommu else "", extra_cmdline)
    cmd = [
        qemu,
        "-accel", "tcg", "-m", RAM, "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
        *kind.args,
        "-object", f"memory-backend-memfd,id=mem,size={RAM},share=on",
        "-serial", f"file:{serial_log}",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        "-append", " ".join(filter(None, cmdline)),
        # every status byte the guest writes, on stderr ("virtio_set_status vdev P val N")
        "-trace", "virtio_set_status",
    ]  # fmt: skip
    if iommu:
        cmd += INTEL_IOMMU
    for i, (frontend, path) in enumerate(sockets):
        extra = ""
        if iommu:
            # Behind a PCIe root port: a modern-only device (ACCESS_PLATFORM needs it:
            # "VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional
            # device") with an ATS capability (virtio-pci adds PCIe capabilities only off
            # the root bus), so Linux enables ATS and its unmaps reach the back-end as
            # device-IOTLB invalidations (QEMU: IOMMU_NOTIFIER_DEVIOTLB_UNMAP).
            cmd += ["-device", f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i + 1}"]
            extra = f"bus=rp{i},iommu_platform=on,ats=on"
        pci = frontend.pci_props if kind.frontend_suffix == "-pci" else ""
        extra = ",".join(filter(None, (extra, pci, frontend_props)))
        cmd += frontend_args(i, frontend, kind.frontend_suffix, path, extra)
    return cmd


async def boot_with_vhost_user(
    kernel: KernelImage,
    initrd: Path,
    machine: str,
    devices: list[str],
    workdir: Path,
    *,
    timeout: float = BOOT_TIMEOUT,
    qemu: str | None = None,
    extra_cmdline: str = "",
    on_backend: Callable[[VhostUserBackend], None] | None = None,
    iommu: bool = False,
    frontend_props: str = "",
) -> LinuxBootResult:
    """Serve ``devices`` (our -device options) over vhost-user and boot Linux against them;
    ``on_backend`` sees each back-end before its front-end's first message; ``iommu``
    boots q35 with intel-iommu and every device behind it (ACCESS_PLATFORM, IOTLB);
    ``frontend_props`` go to every front-end device (QEMU properties)."""
    qemu = qemu or require_qemu(QEMU_X86)
    built = [build_device(parse_device_option(backend_option(d, iommu))) for d in devices]
    backends: list[VhostUserBackend | None] = [None] * len(built)
    sockets: list[tuple[Frontend, str]] = []
    serial_log = workdir / f"{machine}-serial.log"
    stderr_log = workdir / f"{machine}-qemu.err"
    start = time.monotonic()
    returncode: int | None = None
    timed_out = False
    cmd: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            for i, b in enumerate(built):
                path = str(workdir / f"{machine}-vu{i}.sock")
                sockets.append((FRONTENDS[b.spec.driver], path))

                async def serve(
                    i: int = i,
                    path: str = path,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                ) -> None:
                    backends[i] = await serve_socket(
                        path,
                        built[i],
                        connect_timeout=timeout,
                        on_backend=on_backend,
                        task_status=task_status,
                    )

                await nursery.start(serve)
            cmd = qemu_command(
                kernel,
                initrd,
                machine,
                sockets,
                serial_log,
                qemu=qemu,
                extra_cmdline=extra_cmdline,
                iommu=iommu,
                frontend_props=frontend_props,
            )
            with stderr_log.open("wb") as err:
                with trio.move_on_after(timeout) as scope:
                    done = await trio.run_process(
                        cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, check=False
                    )
                    returncode = done.returncode
                timed_out = scope.cancelled_caught
            # QEMU is gone, so every connection ends; the back-ends finish on their own.
            with trio.move_on_after(BACKEND_GRACE if not timed_out else 0.5):
                while any(b is None for b in backends) and nursery.child_tasks:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        for b in built:
            close = getattr(b.model, "close", None)
            if close:
                close()
    serial = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    return LinuxBootResult(
        machine=machine,
        serial=serial,
        markers=parse_markers(serial),
        reports=[
            b.report() if b is not None else {"device": d, "ended": "never connected"}
            for b, d in zip(backends, devices, strict=True)
        ],
        returncode=returncode,
        qemu_stderr=stderr_log.read_text(errors="replace") if stderr_log.exists() else "",
        timed_out=timed_out,
        seconds=round(time.monotonic() - start, 2),
        command=cmd,
    )


def served_contains(served: bytes, data: bytes, piece: int = 16) -> bool:
    """Whether every ``piece``-byte slice of ``data`` was served (in whatever chunks the
    guest's hwrng core handed them out): 16 random bytes do not appear by chance."""
    return all(data[i : i + piece] in served for i in range(0, len(data) - piece + 1, piece))


def kernel_is_usable(kernel: KernelImage) -> bool:
    return kernel.vmlinuz.is_file() and all(m.is_file() for m in kernel.modules())


__all__ = [
    "CHECK_VIRTIO_DEVICES",
    "MACHINES",
    "BlkCheck",
    "BlkLongChains",
    "LinuxBootResult",
    "boot_with_vhost_user",
    "check_rng",
    "kernel_is_usable",
    "served_contains",
]
