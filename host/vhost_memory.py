"""Guest RAM as a vhost-user front-end hands it over: regions of memfds.

SET_MEM_TABLE carries up to eight regions, each a file descriptor (SCM_RIGHTS) plus where
that memory sits for the guest (guest-physical address), for the front-end (its virtual
address, which is what ring addresses in SET_VRING_ADDR are expressed in) and inside the
fd (mmap offset). :class:`VhostMemoryTable` maps every region shared and is the device's
:class:`~virtio_sim.dma.AddressSpace`: descriptor addresses are guest-physical, so reads
and writes go by GPA; :meth:`VhostMemoryTable.uva_to_gpa` turns ring addresses around.

Everything the front-end says is checked: a region that does not fit its fd, overlapping
regions, a ring address outside every region, an access crossing into a hole; each is a
:class:`VhostMemoryError` or a :class:`~virtio_sim.dma.DmaError`, never an IndexError.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass

from virtio_sim.dma import DmaError
from virtio_sim.memory import MemoryAccessError, check_range


class VhostMemoryError(Exception):
    """A SET_MEM_TABLE that cannot be used, or a ring address outside guest RAM."""


@dataclass
class MappedRegion:
    gpa: int
    size: int
    uva: int
    mmap_offset: int
    map: mmap.mmap
    view: memoryview

    @property
    def end(self) -> int:
        return self.gpa + self.size


class VhostMemoryTable:
    """The device's view of guest RAM: identity (guest-physical) addressing."""

    name = "vhost-user"

    def __init__(self) -> None:
        self.regions: list[MappedRegion] = []

    @classmethod
    def from_message(cls, records: list[tuple[int, int, int, int]], fds: list[int]) -> VhostMemoryTable:
        """Map ``(gpa, size, uva, mmap_offset)`` records, one fd each; the fds are closed."""
        table = cls()
        try:
            if len(records) != len(fds):
                raise VhostMemoryError(f"{len(records)} memory regions but {len(fds)} file descriptors")
            for (gpa, size, uva, offset), fd in zip(records, fds, strict=True):
                table._add(gpa, size, uva, offset, fd)
            table.regions.sort(key=lambda r: r.gpa)
            for a, b in zip(table.regions, table.regions[1:], strict=False):
                if a.end > b.gpa:
                    raise VhostMemoryError(f"memory regions at {a.gpa:#x} and {b.gpa:#x} overlap")
        except BaseException:
            table.close()
            raise
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        return table

    def _add(self, gpa: int, size: int, uva: int, offset: int, fd: int) -> None:
        try:
            check_range(gpa, size)
            check_range(uva, size)
        except MemoryAccessError as e:
            raise VhostMemoryError(f"memory region: {e}") from None
        if size <= 0:
            raise VhostMemoryError(f"memory region at {gpa:#x} has size {size}")
        if offset % mmap.PAGESIZE:
            raise VhostMemoryError(f"memory region at {gpa:#x}: mmap offset {offset:#x} is not page aligned")
        try:
            actual = os.fstat(fd).st_size
        except OSError as e:
            raise VhostMemoryError(f"memory region at {gpa:#x}: bad fd: {e.strerror}") from None
        if offset + size > actual:
            raise VhostMemoryError(
                f"memory region at {gpa:#x} (+{size:#x} at fd offset {offset:#x}) is larger than"
                f" its file ({actual:#x} bytes)"
            )
        try:
            m = mmap.mmap(
                fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
            )
        except (OSError, ValueError) as e:
            raise VhostMemoryError(f"memory region at {gpa:#x}: mmap failed: {e}") from None
        self.regions.append(MappedRegion(gpa, size, uva, offset, m, memoryview(m)))

    def close(self) -> None:
        for r in self.regions:
            r.view.release()
            try:
                r.map.close()
            except BufferError:
                pass  # a view is still alive somewhere; the map goes with the process
        self.regions = []

    # -- addresses ----------------------------------------------------------------------

    def uva_to_gpa(self, uva: int, length: int) -> int:
        """The guest-physical address of a front-end virtual range (ring addresses)."""
        for r in self.regions:
            if r.uva <= uva and uva + length <= r.uva + r.size:
                return r.gpa + (uva - r.uva)
        raise VhostMemoryError(f"front-end address {uva:#x} (+{length:#x}) is in no memory region")

    def _pieces(self, addr: int, length: int) -> list[Piece]:
        """Where a guest-physical range lies: (region, offset in it, bytes) per region."""
        try:
            check_range(addr, length)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None
        return _walk(self.regions, addr, length, lambda r: r.gpa, "address {:#x} is not in guest RAM")

    def _uva_pieces(self, uva: int, length: int) -> list[Piece]:
        """Like _pieces, by front-end virtual address (what IOTLB entries point at)."""
        return _walk(
            self.regions, uva, length, lambda r: r.uva, "front-end address {:#x} is in no memory region"
        )

    def read_uva(self, uva: int, length: int) -> bytes:
        return _gather(self._uva_pieces(uva, length))

    def write_uva(self, uva: int, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data).cast("B")
        _scatter(self._uva_pieces(uva, len(src)), src)

    def check_uva(self, uva: int, length: int) -> None:
        self._uva_pieces(uva, length)

    # -- AddressSpace --------------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        return _gather(self._pieces(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data).cast("B")
        _scatter(self._pieces(addr, len(src)), src)

    def check(self, addr: int, length: int, write: bool) -> None:
        self._pieces(addr, length)


#: one stretch of an access inside one region: (region, offset in the region, bytes)
Piece = tuple[MappedRegion, int, int]


def _walk(
    regions: list[MappedRegion], start: int, length: int, base: Callable[[MappedRegion], int], hole: str
) -> list[Piece]:
    """Split ``[start, start + length)`` over ``regions``, each placed at ``base(region)``
    (its guest-physical or its front-end address); a gap is a DmaError saying ``hole``."""
    out: list[Piece] = []
    pos, left = start, length
    while left > 0:
        r = next((r for r in regions if base(r) <= pos < base(r) + r.size), None)
        if r is None:
            raise DmaError(start, length, hole.format(pos))
        n = min(left, base(r) + r.size - pos)
        out.append((r, pos - base(r), n))
        pos += n
        left -= n
    return out


def _gather(pieces: list[Piece]) -> bytes:
    """A read: the pieces' bytes, in order."""
    return b"".join(bytes(r.view[o : o + n]) for r, o, n in pieces)


def _scatter(pieces: list[Piece], src: memoryview) -> None:
    """A write: ``src`` laid over the pieces, in order (they add up to its length)."""
    pos = 0
    for r, o, n in pieces:
        r.view[o : o + n] = src[pos : pos + n]
        pos += n
