"""Proof that the side under attack touched nothing it was not allowed to.

Two independent checks:

* every device access goes through :class:`WatchedSpace`; a write outside the ranges the
  driver made device-writable (used ring, packed descriptor ring, WRITE buffers) is an
  escape the moment it happens;
* all guest RAM starts as a canary pattern and the driver's own writes are mirrored into a
  shadow image, so at the end any byte that differs from the shadow outside the allowed
  ranges is an escape too (this also catches writes that bypass the address space).

Behind a vIOMMU the watched space sits under the translation, so it sees the physical
addresses the IOMMU let through; an untranslatable access never reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from virtio_sim.dma import AddressSpace
from virtio_sim.memory import GuestMemory

Ranges = list[tuple[int, int]]


@lru_cache(maxsize=4)
def canary(length: int) -> bytes:
    block = bytes((i * 151 + 7) & 0xFF for i in range(256))
    return (block * (length // 256 + 1))[:length]


def inside(addr: int, length: int, ranges: Ranges) -> bool:
    """True if [addr, addr+length) is covered by the union of ``ranges`` (byte exact)."""
    if length <= 0:
        return True
    pos, end = addr, addr + length
    for start, size in ranges:  # one range covering it all (the common case): no sort
        if start <= addr and end <= start + size:
            return True
    for start, size in sorted(ranges):
        if start <= pos < start + size:
            pos = start + size
            if pos >= end:
                return True
    return pos >= end


class MemWatch:
    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.escapes: list[str] = []
        self.allowed: Callable[[], Ranges] = list
        self.reads = 0
        self.writes = 0
        base = memory.regions[0].gpa
        self.base = base
        self.size = sum(r.size for r in memory.regions)
        memory.write(base, canary(self.size))
        self.shadow = bytearray(canary(self.size))

    # -- the driver's writes --------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        return self.memory.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """A driver write: lands in RAM and in the shadow image."""
        self.memory.write(addr, data)
        off = addr - self.base
        self.shadow[off : off + len(data)] = bytes(data)

    # -- the device's accesses ------------------------------------------------------------

    def device_read(self, addr: int, length: int) -> None:
        """Hook point (a TOCTOU scenario replaces it to change memory mid-walk)."""
        self.reads += 1

    def device_write(self, addr: int, length: int) -> None:
        self.writes += 1
        if not inside(addr, length, self.allowed()):
            self.escapes.append(f"device wrote {length} bytes at {addr:#x} outside the allowed buffers")

    def verify(self) -> list[str]:
        """Canary check: bytes that changed outside allowed ranges (the first is named)."""
        spans: list[tuple[int, int]] = []
        for start, size in sorted(self.allowed()):
            lo, hi = max(start - self.base, 0), min(start - self.base + size, self.size)
            if lo >= hi:
                continue
            if spans and lo <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], hi))
            else:
                spans.append((lo, hi))
        pos = 0
        for lo, hi in [*spans, (self.size, self.size)]:
            if pos < lo and self.memory.read(self.base + pos, lo - pos) != self.shadow[pos:lo]:
                now = self.memory.read(self.base + pos, lo - pos)
                first = next(i for i in range(lo - pos) if now[i] != self.shadow[pos + i])
                return [f"canary changed at {self.base + pos + first:#x} (outside allowed ranges)"]
            pos = max(pos, hi)
        return []


class WatchedSpace:
    """An AddressSpace that reports every device write to the watch before doing it."""

    def __init__(self, inner: AddressSpace, watch: MemWatch) -> None:
        self.inner = inner
        self.watch = watch
        self.name = f"watched {inner.name}"

    def read(self, addr: int, length: int) -> bytes:
        data = self.inner.read(addr, length)
        self.watch.device_read(addr, length)
        return data

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.watch.device_write(addr, len(data))
        self.inner.write(addr, data)

    def check(self, addr: int, length: int, write: bool) -> None:
        self.inner.check(addr, length, write)
