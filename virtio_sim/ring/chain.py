"""Descriptor chains as a device sees them, independent of the ring format.

A device pops a :class:`Chain`: the head id to give back, and the private, validated list
of device-readable and device-writable segments. The ring code has already checked every
segment against the device's address space, so the helpers here only move bytes: they
gather the readable part and scatter into the writable part, and they never go past a
segment's length. ``ChainWriter.written`` is the honest used length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from virtio_sim.dma import AddressSpace


class RingError(Exception):
    """The driver broke a ring rule. ``violation`` names the class for error policies.

    ``head`` is the chain head the error belongs to when it is known, so that a device
    whose policy is to drop the request can still complete that head with length 0.
    """

    def __init__(self, violation: str, message: str, head: int | None = None) -> None:
        super().__init__(f"{violation}: {message}")
        self.violation = violation
        self.head = head


class DeviceBrokenError(Exception):
    """Driver side: the device broke a ring rule (bad used id/len, index jump)."""

    def __init__(self, violation: str, message: str) -> None:
        super().__init__(f"{violation}: {message}")
        self.violation = violation


Segment = tuple[int, int]  # (device address, length)


class _ChainFields(NamedTuple):
    head: int
    readable: list[Segment]
    writable: list[Segment]
    descriptors: int  # how many descriptors the walk consumed (packed rings skip by it)


class Chain(_ChainFields):
    """One popped chain: a tuple record, so that the ring's hot path builds it with
    :data:`make_chain` in C (a Python ``__init__`` per request was a fifth of ``pop()``).
    Chains are never changed after the ring hands them out."""

    __slots__ = ()

    def __new__(
        cls,
        head: int,
        readable: list[Segment] | None = None,
        writable: list[Segment] | None = None,
        descriptors: int = 0,
    ) -> Chain:
        r = [] if readable is None else readable
        return make_chain(cls, (head, r, [] if writable is None else writable, descriptors))

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


#: ``make_chain(Chain, (head, readable, writable, descriptors))``: a Chain built without
#: any Python-level call (the rings' one-descriptor paths).
make_chain: Callable[[type[Chain], tuple[int, list[Segment], list[Segment], int]], Chain] = tuple.__new__


def read_all(space: AddressSpace, segments: list[Segment], limit: int | None = None) -> bytes:
    """Gather device-readable segments (up to ``limit`` bytes)."""
    out = bytearray()
    for addr, n in segments:
        if limit is not None:
            n = min(n, limit - len(out))
            if n <= 0:
                break
        out += space.read(addr, n)
    return bytes(out)


class ChainReader:
    """Sequential reads across the readable segments of a chain."""

    def __init__(self, space: AddressSpace, segments: list[Segment]) -> None:
        self.space = space
        self.segments = segments
        self._seg = 0
        self._off = 0

    @property
    def remaining(self) -> int:
        return sum(n for _, n in self.segments[self._seg :]) - self._off

    def read(self, length: int) -> bytes:
        """Up to ``length`` bytes; shorter only when the segments run out."""
        out = bytearray()
        while length > 0 and self._seg < len(self.segments):
            addr, n = self.segments[self._seg]
            take = min(length, n - self._off)
            out += self.space.read(addr + self._off, take)
            self._off += take
            length -= take
            if self._off == n:
                self._seg += 1
                self._off = 0
        return bytes(out)


class ChainWriter:
    """Sequential writes into the writable segments; never past their end."""

    def __init__(self, space: AddressSpace, segments: list[Segment]) -> None:
        self.space = space
        self.segments = segments
        self._seg = 0
        self._off = 0
        self.written = 0

    @property
    def remaining(self) -> int:
        return sum(n for _, n in self.segments[self._seg :]) - self._off

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write as much of ``data`` as fits; returns the count written."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view) and self._seg < len(self.segments):
            addr, n = self.segments[self._seg]
            take = min(len(view) - done, n - self._off)
            self.space.write(addr + self._off, view[done : done + take])
            self._off += take
            done += take
            if self._off == n:
                self._seg += 1
                self._off = 0
        self.written += done
        return done

    def write_tail(self, data: bytes) -> int:
        """Write ``data`` at the very end of the writable area (blk's status byte)."""
        total = sum(n for _, n in self.segments)
        if len(data) > total:
            return 0
        pos = total - len(data)
        consumed = 0
        view = memoryview(data)
        for addr, n in self.segments:
            if pos < consumed + n:
                start = max(pos - consumed, 0)
                take = min(n - start, len(view))
                self.space.write(addr + start, view[:take])
                view = view[take:]
                pos += take
            consumed += n
            if not view:
                break
        return len(data)


@dataclass(frozen=True)
class DmaBuffer:
    """Driver-side memory the device will reach: where the driver writes it (gpa) and the
    address the device is told (dev_addr: the GPA again, or an IOVA behind an IOMMU)."""

    gpa: int
    dev_addr: int
    size: int


class DmaPool(Protocol):
    """Where a driver-side ring gets memory for indirect tables."""

    def alloc(self, size: int, align: int) -> DmaBuffer: ...

    def free(self, buf: DmaBuffer) -> None: ...
