"""Guest RAM: guest-physical regions over one shared memory object.

The host owns guest RAM the way QEMU does: a memfd (or a file under /dev/shm) mapped with
MAP_SHARED, so a second process can map the very same pages and nothing is ever copied.
The mapping is sparse; a 1 GiB guest costs only the pages that rings and buffers touch.

Every access is bounds-checked here and fails with :class:`MemoryAccessError`, which names
the guest-physical address, the length and the reason. Nothing below this module ever sees
an IndexError or a silently short slice: a bogus descriptor address from a hostile guest is
a clean error for the device's error policy, not a crash.
"""

from __future__ import annotations

import itertools
import mmap
import os
import weakref
from dataclasses import dataclass
from typing import Protocol

ADDRESS_LIMIT = 1 << 64  # guest-physical addresses are 64-bit
PAGE_SHIFT = 12  # granularity of private (encrypted) guest memory
PAGE_SIZE = 1 << PAGE_SHIFT


class MemoryAccessError(Exception):
    """An access that falls outside guest RAM (or wraps past 2^64)."""

    def __init__(self, addr: int, length: int, reason: str) -> None:
        super().__init__(f"guest memory access [{addr:#x}, +{length:#x}): {reason}")
        self.addr = addr
        self.length = length
        self.reason = reason


@dataclass(frozen=True)
class MemoryRegion:
    """One contiguous guest-physical range backed by ``backing[offset:offset+size]``."""

    gpa: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


def check_range(addr: int, length: int) -> None:
    """Reject negative, wrapping or over-64-bit ranges before any lookup."""
    if length < 0:
        raise MemoryAccessError(addr, length, "negative length")
    if addr < 0 or addr >= ADDRESS_LIMIT:
        raise MemoryAccessError(addr, length, "address is not a 64-bit value")
    if addr + length > ADDRESS_LIMIT:
        raise MemoryAccessError(addr, length, "range wraps past 2^64")


class Lease:
    """A validated window onto guest RAM: ``view`` covers ``[addr, addr+length)`` exactly.

    Why: the ring code touches the same few hundred bytes (descriptor table, avail and
    used rings) millions of times. Checking and translating them once, when the lease is
    taken, and then slicing a memoryview is what makes the data path fast. A lease is only
    good while ``valid`` is true: whoever could change what the range means (the memory
    marking pages private or closing, the IOMMU unmapping or detaching) calls
    :meth:`revoke`, and the holder falls back to checked accesses or takes a new lease.
    Never a stale translation: a revoked lease is never read through again.
    """

    __slots__ = ("__weakref__", "addr", "length", "valid", "view", "write")

    def __init__(self, addr: int, length: int, view: memoryview, write: bool) -> None:
        self.addr = addr
        self.length = length
        self.view = view
        self.write = write  # whether the grant included writing
        self.valid = True

    def revoke(self) -> None:
        self.valid = False


class SharedMemoryObject:
    """A memfd or a named file, mmapped shared; the thing passed to the other process."""

    def __init__(self, fd: int, size: int, path: str | None = None) -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def create_memfd(cls, size: int, name: str = "virtio-sim-guest-ram") -> SharedMemoryObject:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    @classmethod
    def create_file(cls, path: str, size: int) -> SharedMemoryObject:
        """A file-backed object (e.g. under /dev/shm), for peers that cannot take an fd."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, size)
        return cls(fd, size, path)

    @classmethod
    def attach(cls, fd: int, size: int) -> SharedMemoryObject:
        """Map an object received from the peer; its real size must cover ``size``."""
        actual = os.fstat(fd).st_size
        if actual < size:
            raise MemoryAccessError(0, size, f"shared memory object has only {actual} bytes")
        return cls(fd, size)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:
            # A live memoryview (e.g. an in-flight request) still points into the map;
            # the mapping goes away with the process instead.
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


class GuestMemory:
    """Guest-physical address space made of RAM regions inside one shared object."""

    def __init__(self, backing: SharedMemoryObject, regions: list[MemoryRegion]) -> None:
        regions = sorted(regions, key=lambda r: r.gpa)
        for r in regions:
            if r.size <= 0 or r.offset < 0 or r.offset + r.size > backing.size:
                raise ValueError(f"region {r} does not fit its backing object")
            check_range(r.gpa, r.size)
        for a, b in itertools.pairwise(regions):
            if a.end > b.gpa:
                raise ValueError(f"regions {a} and {b} overlap")
        self.backing = backing
        self.regions = regions
        self._buf = memoryview(backing.map)
        # Fast path for the common single-region layout.
        self._single = regions[0] if len(regions) == 1 else None
        #: Page frame numbers the guest made private (SEV/TDX-style encrypted memory).
        #: The guest always sees plaintext; a device (the host) sees ciphertext there.
        self.private_pages: set[int] = set()
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()

    def lease(self, addr: int, length: int, write: bool = True) -> Lease | None:
        """A :class:`Lease` on a range inside one region, or None when it spans regions.

        Raises MemoryAccessError when the range is not guest RAM at all.
        """
        r = self._single
        if r is None or not (r.gpa <= addr and addr + length <= r.end and length >= 0):
            self.check(addr, length)
            if not any(r.gpa <= addr and addr + length <= r.end for r in self.regions):
                return None
        off = self._locate(addr, length)
        lease = Lease(addr, length, self._buf[off : off + length], write)
        self._leases.add(lease)
        return lease

    def revoke_leases(self) -> None:
        """Invalidate every lease on this memory (its meaning for a device changed)."""
        for lease in list(self._leases):
            lease.revoke()
        self._leases.clear()

    def mark_private(self, addr: int, length: int, private: bool = True) -> None:
        """Change the encryption state of every page touching ``[addr, addr+length)``."""
        self.check(addr, length)
        # A device's view of those pages changes (ciphertext): direct windows must go.
        self.revoke_leases()
        pages = range(addr >> PAGE_SHIFT, (addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT)
        if private:
            self.private_pages.update(pages)
        else:
            self.private_pages.difference_update(pages)

    @classmethod
    def create(cls, size: int, base: int = 0) -> GuestMemory:
        """One RAM region of ``size`` bytes at guest-physical ``base``, on a fresh memfd."""
        return cls(SharedMemoryObject.create_memfd(size), [MemoryRegion(base, size, 0)])

    @classmethod
    def create_layout(cls, layout: list[tuple[int, int]]) -> GuestMemory:
        """RAM split into ``(gpa, size)`` regions (a machine's memory map: q35 puts what
        does not fit below its PCI hole above 4 GiB), one memfd behind all of them."""
        regions, offset = [], 0
        for gpa, size in layout:
            regions.append(MemoryRegion(gpa, size, offset))
            offset += size
        return cls(SharedMemoryObject.create_memfd(offset), regions)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def _locate(self, addr: int, length: int) -> int:
        """Backing offset of ``[addr, addr+length)``, which must lie in one region."""
        r = self._single
        if r is not None and r.gpa <= addr and addr + length <= r.end and length >= 0:
            return r.offset + addr - r.gpa
        check_range(addr, length)
        for r in self.regions:
            if r.gpa <= addr < r.end or (length == 0 and addr == r.end):
                if addr + length > r.end:
                    raise MemoryAccessError(addr, length, "range runs past the end of guest RAM")
                return r.offset + addr - r.gpa
        raise MemoryAccessError(addr, length, "address is not in guest RAM")

    def check(self, addr: int, length: int) -> None:
        """Raise MemoryAccessError unless the whole range is guest RAM."""
        r = self._single
        if r is not None and r.gpa <= addr and addr + length <= r.end and length >= 0:
            return
        self._pieces(addr, length)

    def contains(self, addr: int, length: int) -> bool:
        """Whether :meth:`check` accepts the range (it may span touching regions)."""
        try:
            self._pieces(addr, length)
        except MemoryAccessError:
            return False
        return True

    def _pieces(self, addr: int, length: int) -> list[tuple[int, int]]:
        """(backing offset, length) pieces of a range that may cross adjacent regions.

        A buffer spanning two RAM regions that touch is legal and must work; a gap
        anywhere in the range is an error.
        """
        check_range(addr, length)
        pieces: list[tuple[int, int]] = []
        pos, left = addr, length
        while left > 0:
            r = next((r for r in self.regions if r.gpa <= pos < r.end), None)
            if r is None:
                raise MemoryAccessError(addr, length, f"address {pos:#x} is not in guest RAM")
            n = min(left, r.end - pos)
            pieces.append((r.offset + pos - r.gpa, n))
            pos += n
            left -= n
        return pieces

    def read(self, addr: int, length: int) -> bytes:
        r = self._single
        if r is not None and r.gpa <= addr and addr + length <= r.end and length >= 0:
            off = r.offset + addr - r.gpa
            return bytes(self._buf[off : off + length])
        return b"".join(bytes(self._buf[o : o + n]) for o, n in self._pieces(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        r = self._single
        if r is not None and r.gpa <= addr and addr + length <= r.end:
            off = r.offset + addr - r.gpa
            self._buf[off : off + length] = data
            return
        pieces = self._pieces(addr, length)  # validate the whole range before writing
        src = memoryview(data).cast("B")
        pos = 0
        for o, n in pieces:
            self._buf[o : o + n] = src[pos : pos + n]
            pos += n

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy window; callers must not keep it past the request they serve."""
        off = self._locate(addr, length)
        return self._buf[off : off + length]

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        off = self._locate(addr, length)
        self._buf[off : off + length] = bytes([byte]) * length

    def close(self) -> None:
        for lease in list(self._leases):
            lease.revoke()
            try:
                lease.view.release()
            except BufferError:  # still exported somewhere: it goes with the mapping
                pass
        self._leases.clear()
        self._buf.release()
        self.backing.close()


class ByteAccess(Protocol):
    """Anything a driver can read and write guest memory through (RAM, or a qtest link)."""

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None: ...
