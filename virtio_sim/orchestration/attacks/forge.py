"""Raw ring bytes written as a hostile (or merely careful) driver would write them.

The forge never validates: it puts exactly the descriptors, indices and flags it is told
into guest memory, so a scenario can express any malformed ring. It writes through the
shared driver-side mock ring (:mod:`virtio_sim.ring.mock`, field by field) and adds what
an attack needs on top: which bytes a device may legitimately write (the used ring, the
packed descriptor ring, and the buffers marked device-writable), which is what the
canary check allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_sim import layouts as L
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.mock import MockPackedRing, MockSplitRing
from virtio_sim.spec import DESC_F, PACKED_DESC_F

NEXT, WRITE, INDIRECT = DESC_F.NEXT, DESC_F.WRITE, DESC_F.INDIRECT
AVAIL, USED = PACKED_DESC_F.AVAIL, PACKED_DESC_F.USED
IDX_MASK = 0xFFFF
DESC_SIZE = L.PACKED_DESC_SIZE  # both formats: 16 bytes per descriptor


@dataclass(frozen=True)
class Seg:
    """One buffer of a chain: guest address, length, device-writable or not."""

    addr: int
    length: int
    write: bool = False


@dataclass
class RingForge:
    """Common part: memory, queue size, where the rings are, what the device may write."""

    mem: GuestMemory
    q: int
    desc: int
    avail: int  # split: avail ring; packed: driver event suppression area
    used: int  # split: used ring; packed: device event suppression area
    order: L.ByteOrder = "little"
    writable: list[tuple[int, int]] = field(default_factory=list)
    fmt: str = "split"

    def __post_init__(self) -> None:
        self._allowed = set(self.writable)
        self.desc_codec = L.desc_codec(self.order)
        self.idx_codec = L.ring_index_codec(self.order)
        self.elem_codec = L.used_elem_codec(self.order)

    def allow(self, addr: int, length: int) -> None:
        """The device may write these bytes (a device-writable buffer); a range already
        allowed is not listed again (a case reusing one buffer would grow the list, and
        every device write is checked against it)."""
        if length > 0:
            r = (addr, min(length, 1 << 40))
            if r not in self._allowed:
                self._allowed.add(r)
                self.writable.append(r)

    def allowed(self) -> list[tuple[int, int]]:
        return [*self.ring_writable(), *self.writable]

    def ring_writable(self) -> list[tuple[int, int]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def table(self, at: int, entries: list[tuple[int, int, int, int]]) -> int:
        """An indirect table of raw (addr, len, flags, next) entries; returns its bytes."""
        for addr, length, flags, _nxt in entries:
            if flags & WRITE:
                self.allow(addr, length)
        return self.store_table(at, entries)

    def store_table(self, at: int, entries: list[tuple[int, int, int, int]]) -> int:  # pragma: no cover
        raise NotImplementedError


class SplitForge(RingForge):
    def __init__(
        self, mem: GuestMemory, q: int, desc: int, avail: int, used: int, order: L.ByteOrder = "little"
    ) -> None:
        super().__init__(mem, q, desc, avail, used, order)
        self.ring = MockSplitRing(mem, q, desc, avail, used, order=order, zero=False)
        self.ring.avail.flags.store(0)
        self.ring.avail.idx.store(0)
        self.mem.write(used, bytes(L.used_ring_size(q)))

    @property
    def avail_idx(self) -> int:
        """The driver's count of avail entries written (put_heads() goes on from it)."""
        return self.ring.avail_idx

    @avail_idx.setter
    def avail_idx(self, value: int) -> None:
        self.ring.avail_idx = value & IDX_MASK

    def store_table(self, at: int, entries: list[tuple[int, int, int, int]]) -> int:
        table = self.ring.table(at, len(entries))
        for i, (addr, length, flags, nxt) in enumerate(entries):
            table.store(i, addr, length, flags, nxt)
        return DESC_SIZE * len(entries)

    def ring_writable(self) -> list[tuple[int, int]]:
        return [(self.used, L.used_ring_size(self.q))]

    def raw_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        """Descriptor ``i``; a hostile driver may write past the table's end, too."""
        table = self.ring.desc_table if i < self.q else self.ring.table(self.desc, i + 1)
        table.store(i, addr, length, flags, nxt)
        if flags & WRITE and not flags & INDIRECT:
            self.allow(addr, length)

    def put_heads(self, *heads: int) -> None:
        self.ring.make_available(*heads)

    def set_avail_idx(self, value: int) -> None:
        """The index word alone (the driver's own count stays where it was)."""
        self.ring.avail.idx.store(value & IDX_MASK)

    def set_avail_flags(self, value: int) -> None:
        self.ring.set_avail_flags(value)

    def set_used_event(self, value: int) -> None:
        self.ring.set_used_event(value)

    def chain(self, segs: list[Seg], first: int = 0) -> int:
        """Descriptors first, first+1, ... linked by NEXT; returns the head."""
        n = len(segs)
        for k, s in enumerate(segs):
            flags = (WRITE if s.write else 0) | (NEXT if k < n - 1 else 0)
            self.raw_desc((first + k) % self.q, s.addr, s.length, flags, (first + k + 1) % self.q)
        return first % self.q

    def post(self, segs: list[Seg], first: int = 0) -> int:
        head = self.chain(segs, first)
        self.put_heads(head)
        return head

    def post_indirect(
        self,
        table_at: int,
        segs: list[Seg],
        *,
        flags: int = INDIRECT,
        length: int | None = None,
        slot: int = 0,
    ) -> int:
        size = self.table(
            table_at,
            [
                (s.addr, s.length, (WRITE if s.write else 0) | (NEXT if k < len(segs) - 1 else 0), k + 1)
                for k, s in enumerate(segs)
            ],
        )
        self.raw_desc(slot, table_at, size if length is None else length, flags, 0)
        self.put_heads(slot)
        return slot

    def used_idx(self) -> int:
        return self.ring.used_idx()

    def used_elem(self, n: int) -> tuple[int, int]:
        return self.ring.used_elem(n)


class PackedForge(RingForge):
    """Packed ring: descriptors carry AVAIL/USED bits relative to the driver's wrap counter."""

    def __init__(
        self, mem: GuestMemory, q: int, desc: int, driver: int, device: int, order: L.ByteOrder = "little"
    ) -> None:
        super().__init__(mem, q, desc, driver, device, order, fmt="packed")
        self.ring = MockPackedRing(mem, q, desc, driver, device)
        self.used_pos = 0

    @property
    def next(self) -> int:
        """The free-running position of the next descriptor the driver writes."""
        return self.ring.next

    @next.setter
    def next(self, value: int) -> None:
        self.ring.next = value

    def store_table(self, at: int, entries: list[tuple[int, int, int, int]]) -> int:
        # entries come as (addr, len, flags, next): packed tables are (addr, len, id, flags)
        return self.ring.store_table(at, [(a, n, nxt, fl) for a, n, fl, nxt in entries])

    def ring_writable(self) -> list[tuple[int, int]]:
        return [(self.desc, L.packed_ring_size(self.q)), (self.used, L.EVENT_SUPPRESS_SIZE)]

    @property
    def wrap(self) -> int:
        return self.ring.wrap

    def avail_bits(self, wrap: int | None = None) -> int:
        return self.ring.avail_bits(wrap)

    def raw_desc(self, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
        self.ring.store(slot, addr, length, buf_id, flags)
        if flags & WRITE and not flags & INDIRECT:
            self.allow(addr, length)

    def post(
        self, segs: list[Seg], buf_id: int | None = None, *, extra_flags: int = 0, wrap: int | None = None
    ) -> int:
        """Make a chain available at the next positions; returns its buffer id."""
        bid = (self.next % self.q) if buf_id is None else buf_id
        n = len(segs)
        for k, s in enumerate(segs):
            flags = (
                (WRITE if s.write else 0) | (NEXT if k < n - 1 else 0) | self.avail_bits(wrap) | extra_flags
            )
            self.raw_desc(self.next % self.q, s.addr, s.length, bid, flags)
            self.next += 1
        return bid

    def post_indirect(
        self,
        table_at: int,
        segs: list[Seg],
        *,
        flags: int = INDIRECT,
        length: int | None = None,
        buf_id: int | None = None,
    ) -> int:
        size = self.table(table_at, [(s.addr, s.length, WRITE if s.write else 0, 0) for s in segs])
        bid = (self.next % self.q) if buf_id is None else buf_id
        self.raw_desc(
            self.next % self.q, table_at, size if length is None else length, bid, flags | self.avail_bits()
        )
        self.next += 1
        return bid

    def used_count(self) -> int:
        """How many used descriptors the device wrote, from the next expected position."""
        n = 0
        while n < self.q and self.ring.is_used(self.used_pos + n):
            n += 1
        return n

    def used_elem(self, n: int) -> tuple[int, int]:
        _, length, bid, _ = self.ring.load(self.used_pos + n)
        return int(bid), int(length)
