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

from typing import Protocol

from virtio_sim.memory import GuestMemory, MemoryAccessError


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


class IdentityAddressSpace:
    """Addresses are guest-physical; accesses go straight to guest RAM, bounds-checked."""

    name = "identity"

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory

    def read(self, addr: int, length: int) -> bytes:
        try:
            return self.memory.read(addr, length)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        try:
            self.memory.write(addr, data)
        except MemoryAccessError as e:
            raise DmaError(addr, len(data), e.reason) from None

    def check(self, addr: int, length: int, write: bool) -> None:
        try:
            self.memory.check(addr, length)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None
