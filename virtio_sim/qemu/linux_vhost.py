"""Boot the real Debian Linux in QEMU with our device models behind vhost-user.

One boot serves several devices: each ``-device`` option of ours (``virtio-rng-device``,
``virtio-blk-device,drive=...``) gets a :mod:`host.vhost_user` back-end listening on its
own socket in this process, and QEMU gets the matching front-end
(``vhost-user-rng-pci`` on q35, ``vhost-user-rng`` on microvm's virtio-mmio). Guest RAM is
a shared memfd (``memory-backend-memfd,share=on``), which is what vhost-user needs. The
guest runs the checks of its initramfs (:mod:`virtio_sim.qemu.initramfs`) and powers off;
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
from virtio_sim.qemu.initramfs import END_KEY, parse_markers
from virtio_sim.qemu.kernel import KernelImage
from virtio_sim.qemu.tools import QEMU_X86, require_qemu

RAM = "512M"
BOOT_TIMEOUT = 120.0  # seconds; a normal boot with checks takes under 10 under TCG
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
FRONTENDS = {"virtio-rng-device": "vhost-user-rng", "virtio-blk-device": "vhost-user-blk"}


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


def qemu_command(
    kernel: KernelImage,
    initrd: Path,
    machine: str,
    sockets: list[tuple[str, str]],
    serial_log: Path,
    *,
    qemu: str,
    extra_cmdline: str = "",
) -> list[str]:
    """The QEMU command line: ``sockets`` pairs a front-end device type with its socket."""
    kind = MACHINES[machine]
    cmd = [
        qemu,
        "-accel", "tcg", "-m", RAM, "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
        *kind.args,
        "-object", f"memory-backend-memfd,id=mem,size={RAM},share=on",
        "-serial", f"file:{serial_log}",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        "-append", " ".join(filter(None, (KERNEL_CMDLINE, kind.cmdline, extra_cmdline))),
    ]  # fmt: skip
    for i, (frontend, path) in enumerate(sockets):
        cmd += ["-chardev", f"socket,id=vu{i},path={path}", "-device", f"{frontend},chardev=vu{i}"]
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
) -> LinuxBootResult:
    """Serve ``devices`` (our -device options) over vhost-user and boot Linux against them;
    ``on_backend`` sees each back-end before its front-end's first message."""
    qemu = qemu or require_qemu(QEMU_X86)
    kind = MACHINES[machine]
    built = [build_device(parse_device_option(d)) for d in devices]
    backends: list[VhostUserBackend | None] = [None] * len(built)
    sockets: list[tuple[str, str]] = []
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
                sockets.append((FRONTENDS[b.spec.driver] + kind.frontend_suffix, path))

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
                kernel, initrd, machine, sockets, serial_log, qemu=qemu, extra_cmdline=extra_cmdline
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
    "LinuxBootResult",
    "boot_with_vhost_user",
    "check_rng",
    "kernel_is_usable",
    "served_contains",
]
