"""A driver-side mock ring, written field by field (after rust-vmm virtio-queue's mock.rs).

Why: the real driver rings (:mod:`virtio_sim.ring.split`, :mod:`virtio_sim.ring.packed`)
refuse to write anything odd and hide what the device wrote. Checkers, attacks and tests
need the opposite: put exactly the descriptors, indices and flags they are told into
guest memory (a loop, a jump of the avail index, a descriptor for the wrong lap), and
read back every raw field the device wrote. This is the one writer they share
(conformance/rawring.py, attacks/forge.py and the ring tests build on it).

As in mock.rs, every ring field is a :class:`Field` at an address (``load``/``store``),
arrays of them are :class:`Fields` (``ref_at``), a split ring's avail and used rings are
a :class:`SplitQueueRing` (flags, idx, ring, event) and its descriptor table a
:class:`DescriptorTable`. Nothing here validates: out-of-range indices of an array are
the only refusal (a :class:`MockError`), because they would write outside the ring.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from virtio_sim import layouts
from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.chain import DmaBuffer
from virtio_sim.ring.types import IDX_MASK
from virtio_sim.spec import DESC_F, PACKED, PACKED_DESC_F, SPLIT

DESC_SIZE = layouts.DESC_SIZE  # both formats: 16 bytes per descriptor


class Memory(Protocol):
    """What the mock writes through: guest RAM seen by the driver (GuestMemory, a link)."""

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class MockError(Exception):
    """An index outside a mock array (the write would land outside the ring)."""


class Field:
    """One ring field at ``addr`` (mock.rs ``Ref``): a struct codec loads and stores it."""

    __slots__ = ("addr", "codec", "mem")

    def __init__(self, mem: Memory, addr: int, codec: struct.Struct) -> None:
        self.mem = mem
        self.addr = addr
        self.codec = codec

    def load(self) -> Any:
        """The field's value (a tuple for a struct of several members)."""
        values = self.codec.unpack(self.mem.read(self.addr, self.codec.size))
        return values[0] if len(values) == 1 else values

    def store(self, *values: int) -> None:
        self.mem.write(self.addr, self.codec.pack(*values))


class Fields:
    """``count`` fields of one codec from ``addr`` (mock.rs ``ArrayRef``)."""

    __slots__ = ("addr", "codec", "count", "mem")

    def __init__(self, mem: Memory, addr: int, count: int, codec: struct.Struct) -> None:
        self.mem = mem
        self.addr = addr
        self.count = count
        self.codec = codec

    def ref_at(self, index: int) -> Field:
        if not 0 <= index < self.count:
            raise MockError(f"index {index} outside an array of {self.count}")
        return Field(self.mem, self.addr + self.codec.size * index, self.codec)

    @property
    def end(self) -> int:
        return self.addr + self.codec.size * self.count


class SplitQueueRing:
    """A split avail or used ring: flags, idx, the entries, and the event word after them
    (avail: used_event; used: avail_event). Entries are u16 heads or (id, len) elements."""

    def __init__(self, mem: Memory, base: int, size: int, entry: struct.Struct, u16: struct.Struct) -> None:
        self.base = base
        self.flags = Field(mem, base, u16)
        self.idx = Field(mem, base + layouts.RING_IDX_OFFSET, u16)
        self.ring = Fields(mem, base + layouts.RING_HEADER_SIZE, size, entry)
        self.event = Field(mem, self.ring.end, u16)

    @property
    def end(self) -> int:
        return self.event.addr + self.event.codec.size


class DescriptorTable:
    """A split descriptor table (the ring's, or an indirect one): (addr, len, flags, next)."""

    def __init__(self, mem: Memory, addr: int, size: int, codec: struct.Struct) -> None:
        self.addr = addr
        self.table = Fields(mem, addr, size, codec)

    def load(self, index: int) -> tuple[int, int, int, int]:
        fields: tuple[int, int, int, int] = self.table.ref_at(index).load()
        return fields

    def store(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.table.ref_at(index).store(addr, length, flags & 0xFFFF, nxt & 0xFFFF)


class MockPool:
    """A driver's DmaPool (indirect tables) over a window of guest RAM: a bump allocator
    that checks every free against its allocations (a double or foreign free is a
    :class:`MockError`) and starts over when nothing is live. Addresses are GPAs."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.limit = base + size
        self.next = base
        self.live: set[DmaBuffer] = set()
        self.allocs = 0
        self.frees = 0

    def alloc(self, size: int, align: int) -> DmaBuffer:
        start = layouts.align_up(self.next, align)
        if start + size > self.limit:
            raise MemoryError("mock pool exhausted")
        self.next = start + size
        buf = DmaBuffer(start, start, size)
        self.live.add(buf)
        self.allocs += 1
        return buf

    def free(self, buf: DmaBuffer) -> None:
        if buf not in self.live:
            raise MockError(f"free of a buffer that is not allocated: {buf}")
        self.live.remove(buf)
        self.frees += 1
        if not self.live:
            self.next = self.base


def split_layout(start: int, size: int, *, legacy_align: int | None = None) -> tuple[int, int, int]:
    """(desc, avail, used) of a split ring laid out from ``start``: each area at its
    alignment (2.7), or the legacy layout with the used ring on ``legacy_align``."""
    desc = start
    avail = desc + layouts.desc_table_size(size)
    if legacy_align is not None:
        return desc, avail, desc + layouts.legacy_used_ring_offset(size, legacy_align)
    avail = layouts.align_up(avail, SPLIT.avail_align)
    used = layouts.align_up(avail + layouts.avail_ring_size(size), SPLIT.used_align)
    return desc, avail, used


class MockSplitRing:
    """The driver side of a split ring, field by field (mock.rs ``MockSplitQueue``).

    ``avail_idx`` is the driver's own count of entries it wrote; :meth:`make_available`
    writes entries at it and publishes it unless told not to.
    """

    kind = "split"

    def __init__(
        self,
        mem: Memory,
        size: int,
        desc: int,
        avail: int,
        used: int,
        *,
        order: ByteOrder = "little",
        zero: bool = True,
    ) -> None:
        self.mem = mem
        self.size = size
        self.order: ByteOrder = order
        self.desc_codec = layouts.desc_codec(order)
        self.u16 = layouts.ring_index_codec(order)
        self.elem_codec = layouts.used_elem_codec(order)
        self.desc_table = DescriptorTable(mem, desc, size, self.desc_codec)
        self.avail = SplitQueueRing(mem, avail, size, self.u16, self.u16)
        self.used = SplitQueueRing(mem, used, size, self.elem_codec, self.u16)
        self.avail_idx = 0
        if zero:  # the driver zeroes both rings when it allocates them (2.7)
            mem.write(avail, bytes(layouts.avail_ring_size(size)))
            mem.write(used, bytes(layouts.used_ring_size(size)))

    @property
    def desc_addr(self) -> int:
        return self.desc_table.addr

    @property
    def avail_addr(self) -> int:
        return self.avail.base

    @property
    def used_addr(self) -> int:
        return self.used.base

    def table(self, addr: int, size: int) -> DescriptorTable:
        """An indirect descriptor table at ``addr`` with ``size`` entries."""
        return DescriptorTable(self.mem, addr, size, self.desc_codec)

    # -- the driver's writes ----------------------------------------------------------

    def make_available(self, *heads: int, publish: bool = True) -> None:
        """Avail entries for ``heads`` at the driver's index, then (``publish``) the index."""
        for head in heads:
            self.avail.ring.ref_at(self.avail_idx % self.size).store(head & IDX_MASK)
            self.avail_idx = (self.avail_idx + 1) & IDX_MASK
        if publish:
            self.publish()

    def publish(self) -> None:
        self.avail.idx.store(self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        """Write the avail index (any value: a jump, a step back) and keep it as ours."""
        self.avail_idx = value & IDX_MASK
        self.publish()

    def set_avail_flags(self, flags: int) -> None:
        self.avail.flags.store(flags & 0xFFFF)

    def set_used_event(self, value: int) -> None:
        self.avail.event.store(value & IDX_MASK)

    def link(self, first: int, segments: list[tuple[int, int, bool]]) -> int:
        """Descriptors first, first+1, ... (mod size) linked by NEXT for (addr, len,
        write) segments; returns the head."""
        n = len(segments)
        for k, (addr, length, write) in enumerate(segments):
            flags = (DESC_F.WRITE if write else 0) | (DESC_F.NEXT if k < n - 1 else 0)
            self.desc_table.store((first + k) % self.size, addr, length, flags, (first + k + 1) % self.size)
        return first % self.size

    # -- what the device wrote ----------------------------------------------------------

    def used_idx(self) -> int:
        value: int = self.used.idx.load()
        return value

    def used_flags(self) -> int:
        value: int = self.used.flags.load()
        return value

    def avail_event(self) -> int:
        value: int = self.used.event.load()
        return value

    def used_elem(self, position: int) -> tuple[int, int]:
        """(id, len) of the used element at free-running ``position``."""
        head, length = self.used.ring.ref_at(position % self.size).load()
        return int(head), int(length)


class MockPackedRing:
    """The driver side of a packed ring, field by field: the descriptor ring (addr, len,
    id, flags), the driver event suppression (written) and the device's (read).

    ``next`` is the free-running position of the next descriptor the driver writes; its
    wrap counter is ``PACKED.wrap_counter_start`` flipped once per lap.
    """

    kind = "packed"

    def __init__(
        self, mem: Memory, size: int, desc: int, driver: int, device: int, *, zero: bool = True
    ) -> None:
        self.mem = mem
        self.size = size
        self.desc_codec = layouts.PACKED_DESC_CODEC
        self.ring = Fields(mem, desc, size, self.desc_codec)
        self.driver_area = Field(mem, driver, layouts.EVENT_SUPPRESS_CODEC)  # (off_wrap, flags)
        self.device_area = Field(mem, device, layouts.EVENT_SUPPRESS_CODEC)
        self.next = 0
        if zero:  # nothing available, and both event structures say ENABLE
            mem.write(desc, bytes(layouts.packed_ring_size(size)))
            mem.write(driver, bytes(layouts.EVENT_SUPPRESS_SIZE))
            mem.write(device, bytes(layouts.EVENT_SUPPRESS_SIZE))

    def wrap_at(self, pos: int) -> int:
        return PACKED.wrap_counter_start ^ (pos // self.size & 1)

    @property
    def wrap(self) -> int:
        """The driver's wrap counter at ``next``."""
        return self.wrap_at(self.next)

    def avail_bits(self, wrap: int | None = None) -> int:
        """AVAIL = wrap counter, USED = its inverse: 'available in this lap' (2.8.1)."""
        w = self.wrap if wrap is None else wrap
        return PACKED_DESC_F.AVAIL if w else PACKED_DESC_F.USED

    def store(self, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
        """Descriptor ``slot`` as given (the flags word with it: no ordering)."""
        self.ring.ref_at(slot % self.size).store(addr, length, buf_id & 0xFFFF, flags & 0xFFFF)

    def load(self, slot: int) -> tuple[int, int, int, int]:
        """(addr, len, id, flags) of descriptor ``slot``."""
        fields: tuple[int, int, int, int] = self.ring.ref_at(slot % self.size).load()
        return fields

    def store_table(self, addr: int, entries: list[tuple[int, int, int, int]]) -> int:
        """An indirect table of (addr, len, id, flags) entries; returns its length."""
        table = Fields(self.mem, addr, len(entries), self.desc_codec)
        for i, entry in enumerate(entries):
            table.ref_at(i).store(*entry)
        return DESC_SIZE * len(entries)

    def is_used(self, pos: int) -> bool:
        """AVAIL == USED == the driver's used wrap counter at free-running ``pos``."""
        flags = self.load(pos)[3]
        w = bool(self.wrap_at(pos))
        return bool(flags & PACKED_DESC_F.AVAIL) == bool(flags & PACKED_DESC_F.USED) == w

    def set_driver_event(self, flags: int, off_wrap: int = 0) -> None:
        self.driver_area.store(off_wrap & 0xFFFF, flags & 0xFFFF)

    def device_event(self) -> tuple[int, int]:
        """(off_wrap, flags) the device wrote."""
        off_wrap, flags = self.device_area.load()
        return int(off_wrap), int(flags)


__all__ = [
    "DescriptorTable",
    "Field",
    "Fields",
    "MockError",
    "MockPackedRing",
    "MockPool",
    "MockSplitRing",
    "SplitQueueRing",
    "split_layout",
]
