"""Request amplification over the wire (issue 23 item 2; row X5 of specs/attacks.toml).

A guest needs very little RAM to ask for a huge request: an indirect table whose entries
all point at one buffer. 500 entries on one 2 MiB buffer are a 1000 MiB virtio-blk read
from a guest of a few MiB. The host must serve it (QEMU would: it is inside
BDRV_REQUEST_MAX_SECTORS and the disk) without spending host memory in proportion to it,
and without delaying other connections while its device works.

This module plays that guest by hand over a real connection with shared guest RAM, and
measures what a bystander sees: how long a new connection waits for the host's HELLO
while the request runs, and how far the host's peak RSS moved (/proc: VmHWM, reset
through clear_refs). Used by the wire corpus (host in-process) and by
tests/attacks/test_amplification.py (host in its own process).
"""

from __future__ import annotations

import os
import struct
import time
import tracemalloc
from dataclasses import dataclass

import trio

from virtio_sim import wire
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.memory import GuestMemory
from virtio_sim.sockets import SocketFrameChannel
from virtio_sim.spec import BLK_T, STATUS, F
from virtio_sim.wire import MsgType

QUEUE_SIZE = 8
DESC = struct.Struct("<QIHH")  # virtq_desc: addr, len, flags, next (virtio 1.4 2.7.5)
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
STATUS_READ_SEQ = 0x5EED
MIB = 1 << 20


class AmplificationError(Exception):
    """The host did not serve the request as it should (wrong status, setup refused)."""


@dataclass(frozen=True)
class Amplified:
    """One amplified blk read: ``entries`` descriptors on one ``buffer_size`` buffer."""

    entries: int = 500
    buffer_size: int = 2 * MIB
    buffer_gpa: int = 1 * MIB
    ring_gpa: int = 0x10000

    @property
    def total(self) -> int:
        return self.entries * self.buffer_size


async def _write_reg(ch: SocketFrameChannel, base: int, name: str, value: int) -> None:
    await ch.send(wire.access(MsgType.MMIO_WRITE, 0, base + MMIO_OFFSETS[name], 4, value))


async def read_reg(ch: SocketFrameChannel, base: int, name: str, seq: int = 1) -> int:
    """A register read; IRQ frames that arrive meanwhile are skipped."""
    await ch.send(wire.access(MsgType.MMIO_READ, seq, base + MMIO_OFFSETS[name], 4))
    return await reply_to(ch, seq)


async def reply_to(ch: SocketFrameChannel, seq: int) -> int:
    while True:
        frame = await ch.receive()
        if frame.type is MsgType.READ_REPLY and frame.seq == seq:
            return wire.parse_read_reply(frame)
        if frame.type is MsgType.ERROR:
            raise AmplificationError(f"the host refused: {wire.parse_error(frame)[1]}")


async def post_amplified_read(ch: SocketFrameChannel, mem: GuestMemory, base: int, a: Amplified) -> None:
    """Bring the blk transport at ``base`` up (VERSION_1 + INDIRECT_DESC, queue 0), post
    the amplified IN request and notify. Then sends a read of InterruptStatus, whose
    reply (:func:`finish`) comes only after the device finished the request."""
    ring = a.ring_gpa
    desc, avail, used = ring, ring + 0x100, ring + 0x200
    header, status, table = ring + 0x400, ring + 0x500, ring + 0x1000
    mem.write(header, struct.pack("<IIQ", BLK_T.IN, 0, 0))
    mem.write(status, b"\xee")
    # An indirect table is a chain of its own: every entry but the last has NEXT.
    n = a.entries + 2
    entries = [DESC.pack(header, 16, F_NEXT, 1)]
    entries += [DESC.pack(a.buffer_gpa, a.buffer_size, F_WRITE | F_NEXT, i + 1) for i in range(1, n - 1)]
    entries += [DESC.pack(status, 1, F_WRITE, 0)]
    mem.write(table, b"".join(entries))
    mem.write(desc, DESC.pack(table, 16 * len(entries), F_INDIRECT, 0))
    mem.write(avail, struct.pack("<HHH", 0, 1, 0))  # flags, idx 1, ring[0] = head 0
    mem.write(used, bytes(6 + 8 * QUEUE_SIZE))
    s = STATUS.ACKNOWLEDGE | STATUS.DRIVER
    await _write_reg(ch, base, "Status", s)
    await _write_reg(ch, base, "DriverFeaturesSel", 0)
    await _write_reg(ch, base, "DriverFeatures", 1 << F.INDIRECT_DESC)
    await _write_reg(ch, base, "DriverFeaturesSel", 1)
    await _write_reg(ch, base, "DriverFeatures", 1 << (F.VERSION_1 - 32))
    await _write_reg(ch, base, "Status", s | STATUS.FEATURES_OK)
    if not await read_reg(ch, base, "Status") & STATUS.FEATURES_OK:
        raise AmplificationError("the blk device refused VERSION_1 + INDIRECT_DESC")
    for name, value in (
        ("QueueSel", 0),
        ("QueueSize", QUEUE_SIZE),
        ("QueueDescLow", desc),
        ("QueueDriverLow", avail),
        ("QueueDeviceLow", used),
        ("QueueReady", 1),
        ("Status", s | STATUS.FEATURES_OK | STATUS.DRIVER_OK),
        ("QueueNotify", 0),
    ):
        await _write_reg(ch, base, name, value)
    await ch.send(wire.access(MsgType.MMIO_READ, STATUS_READ_SEQ, base + MMIO_OFFSETS["InterruptStatus"], 4))


async def finish(ch: SocketFrameChannel, mem: GuestMemory, a: Amplified) -> None:
    """Wait for the device to finish; check it completed the request in full."""
    await reply_to(ch, STATUS_READ_SEQ)
    used = a.ring_gpa + 0x200
    idx = struct.unpack("<H", mem.read(used + 2, 2))[0]
    head, length = struct.unpack("<II", mem.read(used + 4, 8))
    status = mem.read(a.ring_gpa + 0x500, 1)[0]
    if idx != 1 or head != 0:
        raise AmplificationError(f"the request was not completed (used.idx {idx})")
    if status != 0 or length != a.total + 1:
        raise AmplificationError(f"status {status}, used.len {length}: expected OK and {a.total + 1}")


async def hello_latency(connect: trio.SocketStream) -> float:
    """Seconds from a fresh connection to the host's HELLO on it (the caller connected
    just before; the connection is closed afterwards)."""
    start = time.perf_counter()
    ch = SocketFrameChannel(connect)
    try:
        frame = await ch.receive()
        if frame.type is not MsgType.HELLO:
            raise AmplificationError(f"a new connection got {frame.type.name} instead of HELLO")
        return time.perf_counter() - start
    finally:
        await ch.aclose()


class PythonPeak:
    """Peak bytes Python allocated inside the ``with`` block (tracemalloc). In-process,
    RSS cannot show a repeated large allocation: glibc raises its mmap threshold after
    the first free and keeps the heap. Only the last request's own buffers count."""

    def __enter__(self) -> PythonPeak:
        self.started = not tracemalloc.is_tracing()
        if self.started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self.base = tracemalloc.get_traced_memory()[0]
        self.peak = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1] - self.base
        if self.started:
            tracemalloc.stop()


def reset_peak_rss(pid: int | str = "self") -> None:
    """Start a fresh peak: VmHWM becomes the current RSS (Linux >= 4.0, clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def rss(pid: int | str = "self") -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def sparse_disk(path: str, size: int) -> None:
    """A disk image of ``size`` bytes that takes no space (reads as zeros)."""
    with open(path, "wb") as f:
        f.truncate(size)
    os.chmod(path, 0o600)
