"""Durability evidence for blk.dev.stable-writes-persisted: the sync calls a device makes.

The requirement (virtio 1.4, 5.2.6.2) is that a device backed by persistent storage
commits stable writes before it reports the write's or the FLUSH's completion. Reading
the backing file back proves nothing about that: the page cache answers whether or not
the data reached the disk, and survives a kill -9 of the device too (replacing the fsync
on FLUSH with nothing passed every test and this rule). What can be observed is the
commit itself: a sync call (fsync/fdatasync) on the backing file, made while the request
was outstanding and before its completion was visible in the used ring.

For our device models, which run in this process, :class:`SyncWatch` wraps ``os.fsync``
and ``os.fdatasync`` while a request is outstanding and records every call on the
backing file (same st_dev/st_ino), with whether the request's completion was already
visible at that moment. A model that stops syncing, syncs another file, or completes
first and syncs later, fails the rule.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from virtio_sim import layouts
from virtio_sim.orchestration.conformance.rawring import RawPackedRing, RawSplitRing
from virtio_sim.spec import PACKED_DESC_F

SYNC_CALLS = ("fsync", "fdatasync")


def completion_probe(ring: RawSplitRing | RawPackedRing) -> Callable[[], bool]:
    """A read-only test: has the device published a completion since this was made?"""
    if isinstance(ring, RawSplitRing):
        before = ring.used_idx()
        return lambda: ring.used_idx() != before

    def packed() -> bool:
        raw = ring.memory.read(ring.desc_addr(ring.next_used), layouts.PACKED_DESC_SIZE)
        flags = struct.unpack("<QIHH", raw)[3]
        avail, used = bool(flags & PACKED_DESC_F.AVAIL), bool(flags & PACKED_DESC_F.USED)
        return avail == used == bool(ring.used_wrap)

    return packed


@dataclass
class SyncCall:
    name: str  # fsync | fdatasync
    completed_already: bool  # the request's completion was visible when the call was made


@dataclass
class SyncWatch:
    """Record sync calls on ``path`` made (in this process) inside the ``with`` block."""

    path: str
    completed: Callable[[], bool]
    calls: list[SyncCall] = field(default_factory=list)
    _saved: dict[str, Callable[[int], None]] = field(default_factory=dict)

    def _wrap(self, name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        target = os.stat(self.path)

        def traced(fd: int) -> None:
            real(fd)
            done = self.completed()  # published before the commit had returned?
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                self.calls.append(SyncCall(name, done))

        return traced

    def __enter__(self) -> SyncWatch:
        for name in SYNC_CALLS:
            real = getattr(os, name)
            self._saved[name] = real
            setattr(os, name, self._wrap(name, real))
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for name, real in self._saved.items():
            setattr(os, name, real)
        self._saved.clear()

    def committed_before_completion(self) -> bool:
        return any(not c.completed_already for c in self.calls)

    def describe(self) -> str:
        if not self.calls:
            return "no fsync/fdatasync of the backing file"
        return ", ".join(
            f"{c.name} {'after' if c.completed_already else 'before'} the completion" for c in self.calls
        )


_STRACE_CALL = re.compile(r"^(\d+)\s+(fsync|fdatasync)\(\d+<([^>]*)>(.*)$")
_STRACE_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (fsync|fdatasync) resumed>.*= (-?\d+)")


class StraceSyncWatch:
    """The same evidence for a device in another process (QEMU under qtest): strace,
    attached to it for the duration of the request, lists its fsync/fdatasync calls with
    the file behind each descriptor (``-y``). A call on the drive file that returned 0
    while the request was outstanding is the commit (QEMU 7.2 completes a FLUSH only
    after it: measured here, one fdatasync of the image per FLUSH with cache=writeback).
    ``available`` is False when strace is missing or cannot attach (no ptrace rights)."""

    def __init__(self, pid: int, path: str) -> None:
        self.pid = pid
        self.path = os.path.realpath(path)
        self.calls: list[SyncCall] = []
        self.available = False
        self._proc: subprocess.Popen[str] | None = None
        self._out = ""

    def __enter__(self) -> StraceSyncWatch:
        strace = shutil.which("strace")
        if strace is None:
            return self
        fd, self._out = tempfile.mkstemp(prefix="virtio-sim-strace-")
        os.close(fd)
        cmd = [strace, "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", self._out, "-p", str(self.pid)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self._proc.stderr is not None
        first = self._proc.stderr.readline()  # strace says "Process N attached" once it is
        self.available = "attached" in first
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)  # detach; the output file is complete after
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr is not None:
                self._proc.stderr.close()
        if self._out:
            try:
                with open(self._out) as f:
                    self._parse(f.read())
            finally:
                os.unlink(self._out)

    def _parse(self, text: str) -> None:
        pending: dict[str, str] = {}  # thread -> call on the drive, awaiting its result
        for line in text.splitlines():
            m = _STRACE_CALL.match(line)
            if m:
                tid, name, path, rest = m.groups()
                if os.path.realpath(path) != self.path:
                    continue
                if "<unfinished ...>" in rest:
                    pending[tid] = name
                elif rest.rstrip().endswith("= 0"):
                    self.calls.append(SyncCall(name, False))
                continue
            r = _STRACE_RESUMED.match(line)
            if r and pending.pop(r.group(1), None) is not None and r.group(3) == "0":
                self.calls.append(SyncCall(r.group(2), False))

    def committed_before_completion(self) -> bool:
        return bool(self.calls)

    def describe(self) -> str:
        if not self.calls:
            return "no fsync/fdatasync of the drive image while the request was outstanding"
        return ", ".join(f"{c.name} of the drive image returned 0" for c in self.calls)
