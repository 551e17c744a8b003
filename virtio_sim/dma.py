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
from typing import Protocol

from virtio_sim.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory, MemoryAccessError


class DmaError(Exception):
    """A device access that the address space refused (unmapped, out of RAM, no permission)."""

    def __init__(self, addr: int, length: int, reason: str) -> None:
        super().__init__(f"DMA [{addr:#x}, +{length:#x}): {reason}")
        self.addr = addr
        self.length = length
        self.reason = reason


class AddressSpace(Protocol):
    """What a device model and a device-side ring need to reach memory."""

    name: str

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None: ...

    def check(self, addr: int, length: int, write: bool) -> None:
        """Raise DmaError unless the whole range is accessible in that direction."""
        ...


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


class IdentityAddressSpace:
    """Addresses are guest-physical; accesses go straight to guest RAM, bounds-checked.

    Pages the guest made private are seen encrypted: reads return ciphertext and writes
    land scrambled, so a device that should not touch them produces detectable garbage
    rather than silently working.
    """

    name = "identity"

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory

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

    def read(self, addr: int, length: int) -> bytes:
        self.accesses += 1
        pieces = self.translator.translate(addr, length, False)
        if len(pieces) == 1:
            return self.ram.read(*pieces[0])
        return b"".join(self.ram.read(a, n) for a, n in pieces)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses += 1
        pieces = self.translator.translate(addr, len(data), True)
        for a, n in pieces:
            self.ram.check(a, n, True)
        view = memoryview(data).cast("B")
        pos = 0
        for a, n in pieces:
            self.ram.write(a, view[pos : pos + n])
            pos += n

    def check(self, addr: int, length: int, write: bool) -> None:
        for a, n in self.translator.translate(addr, length, write):
            self.ram.check(a, n, write)
