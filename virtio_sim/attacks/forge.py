"""Raw ring bytes written as a hostile (or merely careful) driver would write them.

The forge never validates: it puts exactly the descriptors, indices and flags it is told
into guest memory, so a scenario can express any malformed ring. It also knows which
bytes a device may legitimately write (the used ring, the packed descriptor ring, and the
buffers marked device-writable), which is what the canary check allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_sim import layouts as L
from virtio_sim.memory import GuestMemory
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
        self.desc_codec = L.desc_codec(self.order)
        self.idx_codec = L.ring_index_codec(self.order)
        self.elem_codec = L.used_elem_codec(self.order)

    def allow(self, addr: int, length: int) -> None:
        """The device may write these bytes (a device-writable buffer)."""
        if length > 0:
            self.writable.append((addr, min(length, 1 << 40)))

    def allowed(self) -> list[tuple[int, int]]:
        return [*self.ring_writable(), *self.writable]

    def ring_writable(self) -> list[tuple[int, int]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def table(self, at: int, entries: list[tuple[int, int, int, int]]) -> int:
        """An indirect table of raw (addr, len, flags, next) entries; returns its bytes."""
        for i, (addr, length, flags, nxt) in enumerate(entries):
            # split: (addr, len, flags, next); packed: (addr, len, id, flags)
            fields = (addr, length, nxt, flags) if self.fmt == "packed" else (addr, length, flags, nxt)
            self.mem.write(at + DESC_SIZE * i, self.desc_codec.pack(*fields))
            if flags & WRITE:
                self.allow(addr, length)
        return DESC_SIZE * len(entries)


class SplitForge(RingForge):
    def __init__(
        self, mem: GuestMemory, q: int, desc: int, avail: int, used: int, order: L.ByteOrder = "little"
    ) -> None:
        super().__init__(mem, q, desc, avail, used, order)
        self.avail_idx = 0
        self.mem.write(avail, self.idx_codec.pack(0) + self.idx_codec.pack(0))
        self.mem.write(used, bytes(L.used_ring_size(q)))

    def ring_writable(self) -> list[tuple[int, int]]:
        return [(self.used, L.used_ring_size(self.q))]

    def raw_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.mem.write(self.desc + DESC_SIZE * i, self.desc_codec.pack(addr, length, flags, nxt))
        if flags & WRITE and not flags & INDIRECT:
            self.allow(addr, length)

    def put_heads(self, *heads: int) -> None:
        for h in heads:
            slot = self.avail_idx % self.q
            self.mem.write(self.avail + L.avail_entry_offset(slot), self.idx_codec.pack(h & IDX_MASK))
            self.avail_idx = (self.avail_idx + 1) & IDX_MASK
        self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.mem.write(self.avail + L.RING_IDX_OFFSET, self.idx_codec.pack(value & IDX_MASK))

    def set_avail_flags(self, value: int) -> None:
        self.mem.write(self.avail, self.idx_codec.pack(value & IDX_MASK))

    def set_used_event(self, value: int) -> None:
        self.mem.write(self.avail + L.used_event_offset(self.q), self.idx_codec.pack(value & IDX_MASK))

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
        return int(self.idx_codec.unpack(self.mem.read(self.used + L.RING_IDX_OFFSET, 2))[0])

    def used_elem(self, n: int) -> tuple[int, int]:
        raw = self.mem.read(self.used + L.used_elem_offset(n % self.q), 8)
        head, length = self.elem_codec.unpack(raw)
        return int(head), int(length)


class PackedForge(RingForge):
    """Packed ring: descriptors carry AVAIL/USED bits relative to the driver's wrap counter."""

    def __init__(
        self, mem: GuestMemory, q: int, desc: int, driver: int, device: int, order: L.ByteOrder = "little"
    ) -> None:
        super().__init__(mem, q, desc, driver, device, order, fmt="packed")
        self.next = 0  # free-running position
        self.used_pos = 0
        self.mem.write(desc, bytes(L.packed_ring_size(q)))
        self.mem.write(driver, bytes(L.EVENT_SUPPRESS_SIZE))
        self.mem.write(device, bytes(L.EVENT_SUPPRESS_SIZE))

    def ring_writable(self) -> list[tuple[int, int]]:
        return [(self.desc, L.packed_ring_size(self.q)), (self.used, L.EVENT_SUPPRESS_SIZE)]

    @property
    def wrap(self) -> int:
        return 1 ^ (self.next // self.q) & 1

    def avail_bits(self, wrap: int | None = None) -> int:
        w = self.wrap if wrap is None else wrap
        return (AVAIL if w else 0) | (0 if w else USED)

    def raw_desc(self, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
        self.mem.write(
            self.desc + DESC_SIZE * (slot % self.q),
            self.desc_codec.pack(addr, length, buf_id & IDX_MASK, flags & IDX_MASK),
        )
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
        pos = self.used_pos
        while n < self.q:
            _, _, _, flags = self.desc_codec.unpack(
                self.mem.read(self.desc + DESC_SIZE * (pos % self.q), DESC_SIZE)
            )
            w = 1 ^ (pos // self.q) & 1
            a, u = bool(flags & AVAIL), bool(flags & USED)
            if not (a == u == bool(w)):
                break
            n += 1
            pos += 1
        return n

    def used_elem(self, n: int) -> tuple[int, int]:
        _, length, bid, _ = self.desc_codec.unpack(
            self.mem.read(self.desc + DESC_SIZE * ((self.used_pos + n) % self.q), DESC_SIZE)
        )
        return int(bid), int(length)
