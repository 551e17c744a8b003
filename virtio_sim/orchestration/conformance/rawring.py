"""Driver-side rings for the conformance driver, written field by field.

The guest's own rings (virtio_sim.ring) refuse to build anything odd and hide what the
device wrote behind reap(); a conformance driver needs the opposite: lay out chains any
way a test wants (indirect tables behind plain descriptors, WRITE on an indirect
descriptor, a header split across descriptors), publish when it chooses, and read back
the raw used entries, flags and event words the device produced. Both ring classes are
the shared driver-side mock ring (:mod:`virtio_sim.ring.mock`, written field by field)
plus what the conformance driver needs on top: areas from its arena, chains from
segments (indirect parts included) and the bookkeeping of free descriptors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from virtio_sim import layouts
from virtio_sim.memory import ByteAccess
from virtio_sim.ring.mock import MockPackedRing, MockSplitRing
from virtio_sim.spec import DESC_F, PACKED, PACKED_DESC_F, SPLIT


@dataclass(frozen=True)
class Segment:
    addr: int
    length: int
    write: bool


@dataclass(frozen=True)
class UsedEntry:
    id: int
    length: int
    flags: int = 0  # packed only: the descriptor flags the device wrote
    wrap: int = 0  # packed only: the driver's used wrap counter at this descriptor


class RingFull(Exception):
    """Not enough free descriptors for the chain (the driver must wait for used ones)."""


class Arena:
    """A bump allocator over a window of guest RAM the conformance driver owns."""

    def __init__(self, memory: ByteAccess, start: int, end: int) -> None:
        self.memory = memory
        self.start = self.next = start
        self.end = end

    def alloc(self, size: int, align: int = 16, fill: int | None = 0) -> int:
        addr = layouts.align_up(self.next, align)
        if addr + size > self.end:
            raise MemoryError(f"conformance arena exhausted ({size} bytes wanted)")
        self.next = addr + size
        if fill is not None and size:
            self.memory.write(addr, bytes([fill]) * size)
        return addr

    def reset(self) -> None:
        self.next = self.start


@dataclass(frozen=True)
class RingAreas:
    desc: int
    driver: int
    device: int


class RawSplitRing(MockSplitRing):
    """A split ring (2.7) the conformance driver fills by hand; little-endian unless
    ``order`` says otherwise (the legacy interface uses the guest's order)."""

    def __init__(
        self,
        memory: ByteAccess,
        arena: Arena,
        size: int,
        *,
        legacy_align: int | None = None,
        order: layouts.ByteOrder = "little",
    ) -> None:
        self.memory = memory
        self.arena = arena
        d = layouts.desc_table_size(size)
        if legacy_align is None:
            desc = arena.alloc(d, SPLIT.desc_align)
            avail = arena.alloc(layouts.avail_ring_size(size), SPLIT.avail_align)
            used = arena.alloc(layouts.used_ring_size(size), SPLIT.used_align)
        else:
            desc = arena.alloc(layouts.legacy_vring_size(size, legacy_align), legacy_align)
            avail = desc + d
            used = desc + layouts.legacy_used_ring_offset(size, legacy_align)
        super().__init__(memory, size, desc, avail, used, order=order, zero=False)  # the arena zeroed them
        self.areas = RingAreas(desc, avail, used)
        # free descriptors in ring order (an IN_ORDER device expects chains in that order)
        self.free: deque[int] = deque(range(size))
        self.chains: dict[int, list[int]] = {}  # head -> descriptors of its chain
        self.last_used = 0

    # -- building chains ------------------------------------------------------------

    def write_desc(self, table: int, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        entries = self.size if table == self.areas.desc else index + 1
        self.table(table, entries).store(index, addr, length, flags, nxt)

    def add(
        self, segments: list[Segment], *, indirect_from: int | None = None, indirect_write_flag: bool = False
    ) -> int:
        """Put one chain in the table; returns its head. ``indirect_from`` moves the
        segments from that position on into an indirect table (zero or more plain
        descriptors then one INDIRECT descriptor, 2.7.5.3.1)."""
        direct = segments if indirect_from is None else segments[:indirect_from]
        count = len(direct) + (0 if indirect_from is None else 1)
        if count > len(self.free):
            raise RingFull(f"{count} descriptors wanted, {len(self.free)} free")
        slots = [self.free.popleft() for _ in range(count)]
        head = slots[0]
        self.chains[head] = slots
        for i, seg in enumerate(direct):
            last = i == count - 1
            flags = (0 if last else DESC_F.NEXT) | (DESC_F.WRITE if seg.write else 0)
            self.write_desc(
                self.areas.desc, slots[i], seg.addr, seg.length, flags, 0 if last else slots[i + 1]
            )
        if indirect_from is not None:
            rest = segments[indirect_from:]
            table = self.arena.alloc(layouts.DESC_SIZE * len(rest), SPLIT.desc_align)
            for i, seg in enumerate(rest):
                last = i == len(rest) - 1
                flags = (0 if last else DESC_F.NEXT) | (DESC_F.WRITE if seg.write else 0)
                self.write_desc(table, i, seg.addr, seg.length, flags, 0 if last else i + 1)
            flags = DESC_F.INDIRECT | (DESC_F.WRITE if indirect_write_flag else 0)
            self.write_desc(self.areas.desc, slots[-1], table, layouts.DESC_SIZE * len(rest), flags, 0)
        return head

    def fits(self, segments: list[Segment]) -> bool:
        return len(segments) <= len(self.free)

    # -- used side ------------------------------------------------------------------

    def used_elem_addr(self, position: int) -> int:
        return self.used.ring.ref_at(position % self.size).addr

    def take_used(self) -> list[UsedEntry]:
        """Every used entry published since the last call, in ring order."""
        now = self.used_idx()
        out = []
        while self.last_used != now:
            eid, length = self.used_elem(self.last_used)
            out.append(UsedEntry(eid, length))
            self.free.extend(self.chains.pop(eid, []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class RawPackedRing(MockPackedRing):
    """A packed ring (2.8) the conformance driver fills by hand."""

    def __init__(self, memory: ByteAccess, arena: Arena, size: int) -> None:
        self.memory = memory
        self.arena = arena
        desc = arena.alloc(layouts.packed_ring_size(size), layouts.PACKED_DESC_ALIGN)
        driver = arena.alloc(layouts.EVENT_SUPPRESS_SIZE, layouts.EVENT_SUPPRESS_ALIGN)
        device = arena.alloc(layouts.EVENT_SUPPRESS_SIZE, layouts.EVENT_SUPPRESS_ALIGN)
        super().__init__(memory, size, desc, driver, device, zero=False)  # the arena zeroed them
        self.areas = RingAreas(desc, driver, device)
        self.next_avail = 0
        self.avail_wrap = PACKED.wrap_counter_start
        self.next_used = 0
        self.used_wrap = PACKED.wrap_counter_start
        self.next_id = 0
        self.chain_len: dict[int, int] = {}  # buffer id -> descriptors its chain occupies

    def _flags(self, write: bool, nxt: bool, indirect: bool = False) -> int:
        f = PACKED_DESC_F
        flags = (f.WRITE if write else 0) | (f.NEXT if nxt else 0) | (f.INDIRECT if indirect else 0)
        return flags | (f.AVAIL if self.avail_wrap else f.USED)

    def desc_addr(self, pos: int) -> int:
        return self.areas.desc + layouts.PACKED_DESC_SIZE * pos

    def add(self, segments: list[Segment], *, indirect: bool = False) -> int:
        """Make one buffer (chain) available; the head's flags are written last (2.8.21).
        Returns its buffer id."""
        buf_id = self.next_id
        self.next_id = (self.next_id + 1) % self.size
        if indirect:
            table = self.arena.alloc(layouts.PACKED_DESC_SIZE * len(segments), 16)
            wflag = PACKED_DESC_F.WRITE
            self.store_table(table, [(s.addr, s.length, 0, wflag if s.write else 0) for s in segments])
            parts = [(table, layouts.PACKED_DESC_SIZE * len(segments), False, True)]
        else:
            parts = [(s.addr, s.length, s.write, False) for s in segments]
        if sum(self.chain_len.values()) + len(parts) > self.size:
            raise RingFull(f"{len(parts)} descriptors wanted, ring of {self.size} has too few free")
        self.chain_len[buf_id] = len(parts)
        head_pos, head = self.next_avail, (0, 0, 0, 0)
        for i, (addr, length, write, ind) in enumerate(parts):
            desc = (addr, length, buf_id, self._flags(write, i < len(parts) - 1, ind))
            if i == 0:
                head = desc
            else:
                self.store(self.next_avail, *desc)
            self._advance()
        self.store(head_pos, *head)  # the head last (2.8.21)
        return buf_id

    def _advance(self) -> None:
        self.next_avail += 1
        if self.next_avail == self.size:
            self.next_avail = 0
            self.avail_wrap ^= 1

    def take_used(self) -> list[UsedEntry]:
        """Used descriptors the device has written since the last call, in ring order.

        A used descriptor is one whose AVAIL and USED bits both equal the driver's used
        wrap counter (2.8.1); the walk skips the rest of each chain by the device's
        count, which for a conformance driver that only adds single-element indirect or
        plain chains is tracked per id in ``chain_len``."""
        out: list[UsedEntry] = []
        f = PACKED_DESC_F
        while True:
            _addr, length, buf_id, flags = self.load(self.next_used)
            avail, used = bool(flags & f.AVAIL), bool(flags & f.USED)
            if not (avail == used == bool(self.used_wrap)):
                return out
            out.append(UsedEntry(buf_id, length, flags, self.used_wrap))
            skip = self.chain_len.pop(buf_id, 1)
            for _ in range(skip):
                self.next_used += 1
                if self.next_used == self.size:
                    self.next_used = 0
                    self.used_wrap ^= 1

    # -- event suppression ----------------------------------------------------------
