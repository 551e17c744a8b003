"""Address spaces: how a device reaches memory named by a ring or a descriptor.

A device never touches :class:`~virtio_sim.memory.GuestMemory` directly. Every ring and
buffer access goes through an :class:`AddressSpace`, which is the one place where the
VIRTIO_F_ACCESS_PLATFORM decision lands: without it (or for a device that bypasses the
platform) addresses are guest-physical and :class:`IdentityAddressSpace` is used; with it
they are IOVAs and a translated space (the IOMMU issue) resolves them per access.

Either way a bad address raises :class:`DmaError`, never a lower-level exception, so the
device's error policy sees one kind of failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

from virtio_sim.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory, Lease, MemoryAccessError


class DmaError(Exception):
    """A device access that the address space refused (unmapped, out of RAM, no permission)."""

    def __init__(self, addr: int, length: int, reason: str) -> None:
        super().__init__(f"DMA [{addr:#x}, +{length:#x}): {reason}")
        self.addr = addr
        self.length = length
        self.reason = reason


class PeerGoneError(DmaError):
    """The memory's owner is gone (the guest said BYE or its link broke): an access failed
    but nobody broke a rule, so no error policy applies and nothing is recorded."""


class AddressSpace(Protocol):
    """What a device model and a device-side ring need to reach memory."""

    name: str

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None: ...

    def check(self, addr: int, length: int, write: bool) -> None:
        """Raise DmaError unless the whole range is accessible in that direction."""
        ...


def lease_for(space: Any, addr: int, length: int, write: bool) -> Lease | None:
    """A direct window on ``[addr, addr+length)`` of ``space``, or None if it offers none.

    ``space`` is an :class:`AddressSpace` or a driver's byte access (guest RAM). The lease
    always grants reading, and writing too when ``write``. None means "use the checked
    accesses": spaces that count or transform every access (unisolated DMA, private
    memory, a remote peer) simply have no ``lease`` method or refuse.
    """
    lease: Callable[[int, int, bool], Lease | None] | None = getattr(space, "lease", None)
    if lease is None:
        return None
    try:
        return lease(addr, length, write)
    except (DmaError, MemoryAccessError):
        return None


def _keystream(page: int, length: int) -> bytes:
    """The deterministic 'encryption' of one private page, as a device would see it."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.blake2b(
            page.to_bytes(8, "little") + counter.to_bytes(4, "little"), key=_PRIVATE_KEY
        ).digest()
        counter += 1
    return bytes(out[:length])


_PRIVATE_KEY = b"virtio-sim private memory"


def _transform(memory: GuestMemory, addr: int, data: bytes) -> bytes:
    """XOR the bytes that lie in private pages with their page keystream."""
    if not memory.private_pages:
        return data
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        page = (addr + pos) >> PAGE_SHIFT
        in_page = min(len(out) - pos, PAGE_SIZE - ((addr + pos) & (PAGE_SIZE - 1)))
        if page in memory.private_pages:
            offset = (addr + pos) & (PAGE_SIZE - 1)
            ks = _keystream(page, offset + in_page)[offset:]
            for i in range(in_page):
                out[pos + i] ^= ks[i]
        pos += in_page
    return bytes(out)


class Window:
    """A range a device may reach without asking again: addresses ``[lo, hi)`` are
    guest-physical ``addr + delta``, already checked against RAM, readable and/or
    writable as flagged.

    Why: the ring code checks every descriptor's buffer; when it lies inside the
    space's current window (``fast_window``) the check is two comparisons in the ring's
    own loop instead of a call chain. For a translated space it is one IOMMU mapping,
    revoked by the IOMMU (UNMAP, DETACH, ATTACH, bypass changes) like a :class:`Lease`.
    """

    __slots__ = ("__weakref__", "delta", "hi", "lo", "readable", "valid", "writable")

    def __init__(self, lo: int, hi: int, delta: int, readable: bool, writable: bool) -> None:
        self.lo, self.hi, self.delta = lo, hi, delta
        self.readable, self.writable = readable, writable
        self.valid = True

    def revoke(self) -> None:
        self.valid = False


class IdentityAddressSpace:
    """Addresses are guest-physical; accesses go straight to guest RAM, bounds-checked.

    Pages the guest made private are seen encrypted: reads return ciphertext and writes
    land scrambled, so a device that should not touch them produces detectable garbage
    rather than silently working.
    """

    name = "identity"

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        r = memory.regions[0] if len(memory.regions) == 1 else None
        # RAM never moves: one window over the single region, never revoked. Private
        # pages do not change what may be reached, only what the bytes look like.
        plain = type(self).check is IdentityAddressSpace.check  # a subclass may add rules
        self.fast_window = Window(r.gpa, r.end, 0, True, True) if r is not None and plain else None

    def read(self, addr: int, length: int) -> bytes:
        try:
            data = self.memory.read(addr, length)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None
        return _transform(self.memory, addr, data) if self.memory.private_pages else data

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        if self.memory.private_pages:
            data = _transform(self.memory, addr, bytes(data))
        try:
            self.memory.write(addr, data)
        except MemoryAccessError as e:
            raise DmaError(addr, len(data), e.reason) from None

    def check(self, addr: int, length: int, write: bool) -> None:
        try:
            self.memory.check(addr, length)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None

    def lease(self, addr: int, length: int, write: bool) -> Lease | None:
        """A direct window, unless private pages make device accesses differ from RAM.

        A subclass that overrides read or write (to count, log or alter accesses) gets
        none either: a lease would go around it.
        """
        cls = type(self)
        if (
            self.memory.private_pages
            or cls.read is not IdentityAddressSpace.read
            or cls.write is not IdentityAddressSpace.write
        ):
            return None
        try:
            return self.memory.lease(addr, length, write)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None


class Translator(Protocol):
    """An IOMMU as a device's address space sees it."""

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """Guest-physical pieces of the range; raises DmaError when any byte is blocked."""
        ...


class TranslatedAddressSpace:
    """Addresses are IOVAs: every access is translated (and permission-checked) first.

    A blocked access touches nothing: the whole range is translated before any byte is
    read or written, so a request that runs off the end of a mapping does not leave a
    partial write behind.
    """

    name = "translated"

    def __init__(self, memory: GuestMemory, translator: Translator, ram: AddressSpace | None = None) -> None:
        # ``ram``: how translated addresses reach guest RAM (default: the shared map).
        self.ram: AddressSpace = ram if ram is not None else IdentityAddressSpace(memory)
        self.translator = translator
        self.accesses = 0
        self.window_hits = 0  # accesses served by the cached mapping window
        # The last mapping used, when the translator can describe and revoke one: most
        # buffers of a run live in one mapping, so most checks are two comparisons.
        self._win: Window | None = None
        self.fast_window: Window | None = None  # the same window, for ring code to test inline
        self._can_window = hasattr(translator, "probe") and hasattr(translator, "register_lease")

    def _refill(self, addr: int) -> None:
        """Cache the mapping around ``addr`` (just translated successfully) as the window."""
        if not self._can_window:
            return
        found = self.translator.probe(addr)  # type: ignore[attr-defined]
        if found is None:
            return
        lo, hi, phys, readable, writable = found
        try:  # the whole window must be RAM, in the directions it grants
            if readable:
                self.ram.check(phys, hi - lo, False)
            if writable:
                self.ram.check(phys, hi - lo, True)
        except DmaError:
            return
        win = Window(lo, hi, phys - lo, readable, writable)
        self.translator.register_lease(win, lo, hi)  # type: ignore[attr-defined]
        self._win = self.fast_window = win

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        w = self._win
        if (
            w is not None
            and w.valid
            and w.readable
            and w.lo <= addr
            and addr + length <= w.hi
            and length >= 0
        ):
            self.window_hits += 1
            return self.ram.read(addr + w.delta, length)
        pieces = self.translator.translate(addr, length, False)
        self._refill(addr)
        if len(pieces) == 1:
            return self.ram.read(*pieces[0])
        return b"".join(self.ram.read(a, n) for a, n in pieces)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        length = len(data)
        w = self._win
        if w is not None and w.valid and w.writable and w.lo <= addr and addr + length <= w.hi:
            self.window_hits += 1
            self.ram.write(addr + w.delta, data)
            return
        pieces = self.translator.translate(addr, length, True)
        for a, n in pieces:
            self.ram.check(a, n, True)
        self._refill(addr)
        view = memoryview(data).cast("B")
        pos = 0
        for a, n in pieces:
            self.ram.write(a, view[pos : pos + n])
            pos += n

    def check(self, addr: int, length: int, write: bool) -> None:
        w = self._win
        if (
            w is not None
            and w.valid
            and (w.writable if write else w.readable)
            and w.lo <= addr
            and addr + length <= w.hi
            and length >= 0
        ):
            self.window_hits += 1
            return
        for a, n in self.translator.translate(addr, length, write):
            self.ram.check(a, n, write)
        self._refill(addr)

    def lease(self, addr: int, length: int, write: bool) -> Lease | None:
        """A direct window on a range that translates to one piece of RAM, revoked by the
        IOMMU whenever the translation may change. Reading is always checked; writing
        when ``write``."""
        if not self._can_window:
            return None
        # probe, not translate: asking for a lease must not log IOMMU faults (the
        # checked path reports them if the access really happens).
        found = self.translator.probe(addr)  # type: ignore[attr-defined]
        if found is None:
            return None
        lo, hi, phys, readable, writable = found
        if not (lo <= addr and addr + length <= hi and readable and (writable or not write)):
            return None
        lease = lease_for(self.ram, phys + addr - lo, length, write)
        if lease is not None:
            self.translator.register_lease(lease, addr, addr + length)  # type: ignore[attr-defined]
        return lease


class WriteLog:
    """Where a device's DMA writes landed in guest RAM, as merged ``[start, end)`` ranges.

    Kept for address spaces whose addresses the guest may not have meant as guest-physical
    (raw DMA behind an IOMMU, a hypervisor's p2m view): the run then compares them with
    every range the guest's DMA API ever handed out, and a write outside them is a write to
    memory the driver never gave the device -- silent corruption, named by its address.
    Bounded: past ``limit`` ranges the newest merge into the last one.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.ranges: list[list[int]] = []

    def add(self, addr: int, length: int) -> None:
        if length <= 0:
            return
        end = addr + length
        for r in self.ranges:
            if r[0] <= end and addr <= r[1]:
                r[0], r[1] = min(r[0], addr), max(r[1], end)
                return
        if len(self.ranges) >= self.limit:
            last = self.ranges[-1]
            last[0], last[1] = min(last[0], addr), max(last[1], end)
            return
        self.ranges.append([addr, end])


def outside(written: list[list[int]], allowed: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of ``written`` ranges that no ``allowed`` range covers."""
    merged: list[list[int]] = []
    for a, b in sorted(allowed):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out: list[tuple[int, int]] = []
    for start, end in written:
        pos = start
        for a, b in merged:
            if b <= pos or a >= end:
                continue
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < end:
            out.append((pos, end))
    return out
