"""A busybox initramfs that runs checks inside a real Linux guest and reports on serial.

The archive is written here (cpio "newc", which is all the kernel's initramfs unpacker
reads): a static busybox, the kernel modules to load, and an ``/init`` shell script. The
script mounts proc/sys/devtmpfs, insmods the modules in dependency order, runs the shell
snippets it was given, and powers the machine off. Everything the checks want the host to
know is a marker line on the console::

    VSIM:<key>:<value>

which :func:`parse_markers` picks out of the serial log (kernel messages in between are
ignored). ``VSIM:end:`` is the last marker a script prints; a log without it means the
guest died or hung before finishing.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MARKER = "VSIM:"
END_KEY = "end"
_TRAILER = "TRAILER!!!"
_NEWC_MAGIC = b"070701"
_NEWC_ALIGN = 4
_ARCHIVE_ALIGN = 512


@dataclass(frozen=True)
class Entry:
    path: str
    mode: int
    data: bytes = b""


def _pad(n: int, align: int) -> bytes:
    return b"\0" * (-n % align)


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """A cpio newc archive of ``entries`` (directories before what they contain)."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(_TRAILER, 0)], start=1):
        name = e.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
        out += _NEWC_MAGIC + b"".join(b"%08X" % v for v in fields) + name
        out += _pad(len(out), _NEWC_ALIGN)
        out += e.data
        out += _pad(len(out), _NEWC_ALIGN)
    out += _pad(len(out), _ARCHIVE_ALIGN)
    return bytes(out)


def init_script(modules: list[str], checks: list[str]) -> str:
    """The /init: mount, load ``modules`` (names, in order), run ``checks``, power off."""
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sys /sys",
        "mount -t devtmpfs dev /dev",
        f'mark() {{ echo "{MARKER}$1:$2"; }}',
        'mark booted "$(uname -r)"',
        f"for m in {' '.join(modules)}; do",
        '  insmod "/lib/modules/$m.ko" || mark insmod-failed "$m"',
        "done",
        # a node appears once its driver's probe finished: wait for them (bounded)
        'wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; }',
        *checks,
        f"mark {END_KEY} done",
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


def build_initramfs(busybox: str, modules: list[Path], checks: list[str]) -> bytes:
    """The archive: busybox, ``modules`` (loaded in the given order), the /init running ``checks``."""
    dirs = ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes()))
    for m in modules:
        entries.append(Entry(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()))
    script = init_script([m.stem for m in modules], checks)
    entries.append(Entry("init", stat.S_IFREG | 0o755, script.encode()))
    return newc_archive(entries)


def parse_markers(serial: str) -> list[tuple[str, str]]:
    """Every ``VSIM:key:value`` line of a serial log, in order."""
    found: list[tuple[str, str]] = []
    for line in serial.splitlines():
        at = line.find(MARKER)
        if at < 0:
            continue
        key, sep, value = line[at + len(MARKER) :].partition(":")
        if sep:
            found.append((key.strip(), value.strip()))
    return found
