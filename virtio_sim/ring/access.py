"""How a ring reaches its memory, chosen once when the queue is set up.

Why one layer: split and packed queues, device side and driver side, all read and write
ring words the same two ways, and each used to decide it for itself:

* through leases (:class:`~virtio_sim.memory.Lease`: a validated memoryview of one ring
  area) where the memory offers them (guest RAM, an identity address space without
  private pages, a translated space inside one IOMMU mapping). A lease can be revoked at
  any time (UNMAP, pages turned private), so every use tests ``valid`` and falls back to
  the checked path; the queue takes leases again at its next refresh;
* through checked reads and writes otherwise: every access is translated and
  bounds-checked by the address space, and a refusal is a ``ring-address`` RingError.

The byte order is chosen here too: struct codecs for descriptors, used elements and ring
words, and native u16/u32 word views (a subscript instead of a struct call per ring word)
when the ring's order is the machine's.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from virtio_sim import layouts
from virtio_sim.dma import DmaError, lease_for
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import Lease
from virtio_sim.ring.chain import RingError

_NATIVE_WORDS = struct.calcsize("H") == 2 and struct.calcsize("I") == 4

WordViews = tuple[memoryview, memoryview, memoryview]  # avail as u16, used as u16, used as u32


def _no_lease() -> Lease:
    lease = Lease(0, 0, memoryview(b""), False)
    lease.revoke()
    return lease


#: What a ring holds where it has no lease: never valid, so the one ``valid`` test every
#: access makes also covers "no lease at all" (one test instead of two on the hot path).
NO_LEASE = _no_lease()


class _NoWindow:
    """Stands in for an address space without a ``fast_window`` (every buffer checked),
    so that the rings read ``space.fast_window`` as a plain attribute."""

    fast_window = None


NO_WINDOW: Any = _NoWindow()


class RingMemory:
    """One ring's way to its memory: an AddressSpace (device) or guest RAM (driver).

    ``leasable``: the memory hands out leases (decided once; a space that counts or
    transforms every access has no ``lease`` and is always checked).
    """

    def __init__(self, space: Any, order: ByteOrder = "little") -> None:
        self.space = space
        self.order: ByteOrder = order
        self.leasable = hasattr(space, "lease")
        self.native = order == sys.byteorder and _NATIVE_WORDS
        self.desc = layouts.desc_codec(order)
        self.elem = layouts.used_elem_codec(order)
        self.u16 = layouts.ring_index_codec(order)

    def lease(self, addr: int, length: int, write: bool) -> Lease:
        """A direct window on ``[addr, addr+length)``, or :data:`NO_LEASE` (checked
        accesses then)."""
        if not self.leasable:
            return NO_LEASE
        lease = lease_for(self.space, addr, length, write)
        return NO_LEASE if lease is None else lease

    def word_views(self, avail: Lease, used: Lease, size: int) -> WordViews | None:
        """Split rings in the machine's byte order: (avail as u16, used as u16, used
        elements as u32) views of the two leases, or None."""
        if not self.native or not (avail.valid and used.valid):
            return None
        elems = layouts.RING_HEADER_SIZE + layouts.USED_ELEM_SIZE * size
        return avail.view.cast("H"), used.view.cast("H"), used.view[:elems].cast("I")

    # -- checked accesses ---------------------------------------------------------------

    def read(self, addr: int, length: int, what: str, head: int | None = None) -> bytes:
        try:
            data: bytes = self.space.read(addr, length)
        except DmaError as e:
            raise RingError("ring-address", f"{what}: {e}", head) from None
        return data

    def write(self, addr: int, data: bytes, what: str, head: int | None = None) -> None:
        try:
            self.space.write(addr, data)
        except DmaError as e:
            raise RingError("ring-address", f"{what}: {e}", head) from None

    def read_u16(self, addr: int, what: str = "ring word") -> int:
        value: int = self.u16.unpack(self.read(addr, 2, what))[0]
        return value

    def write_u16(self, addr: int, value: int, what: str = "ring word") -> None:
        self.write(addr, self.u16.pack(value), what)


__all__ = ["NO_LEASE", "NO_WINDOW", "RingMemory", "WordViews"]
