"""The outside programs the real-peer runs need, and what to say when one is missing."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from functools import cache

QEMU_INSTALL_HINT = "apt-get install qemu-system-x86 qemu-system-arm"
BUSYBOX_INSTALL_HINT = "apt-get install busybox-static"
QEMU_X86 = "qemu-system-x86_64"
DPDK_TESTPMD = "dpdk-testpmd"  # Debian's dpdk package (22.11): virtio-user, a vhost-user front-end
DPDK_INSTALL_HINT = "apt-get install dpdk"
QEMU_ARM = "qemu-system-aarch64"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

_ELF_MAGIC = b"\x7fELF"
_PT_INTERP = 3  # ELF program header type of the dynamic loader's path


class MissingTool(Exception):
    """A program the run needs is not installed; the message says how to install it."""


def qemu_binary(name: str = QEMU_X86) -> str | None:
    return shutil.which(name)


def require_qemu(name: str = QEMU_X86) -> str:
    path = qemu_binary(name)
    if path is None:
        raise MissingTool(f"{name} is not installed ({QEMU_INSTALL_HINT})")
    return path


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != _ELF_MAGIC or head[4] != 2:  # 64-bit only
            return False
        order = "<" if head[5] == 1 else ">"
        phoff = struct.unpack_from(order + "Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (ptype,) = struct.unpack_from(order + "I", table, i * phentsize)
        if ptype == _PT_INTERP:
            return False
    return True


def static_busybox() -> str:
    """A statically linked busybox (an initramfs has no C library)."""
    for path in (os.environ.get("VIRTIO_SIM_BUSYBOX", ""), *BUSYBOX_CANDIDATES):
        if path and os.path.exists(path) and is_static_elf(path):
            return path
    raise MissingTool(f"no statically linked busybox found ({BUSYBOX_INSTALL_HINT})")


@cache
def installed_machines(name: str = QEMU_X86) -> frozenset[str] | None:
    """The machine types ``name -M help`` lists (None: QEMU missing or unreadable), so a
    generation whose compat machine this QEMU lacks is refused up front, not at start."""
    path = qemu_binary(name)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "-M", "help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.splitlines()[1:]  # "Supported machines are:"
    return frozenset(line.split()[0] for line in lines if line.strip())
