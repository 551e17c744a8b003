"""The order in which a guest driver writes its split avail rings, seen write by write.

A driver MUST make a ring entry visible before the avail idx that covers it (2.7.13.3.1,
``split.avail.drv-barrier-before-idx``). Looking at the ring when the driver kicks cannot
tell a driver that wrote idx first: by the kick the entry is there too. This watch sees
every write the guest makes to guest RAM, in order, and decides the rule at the moment an
idx write lands: every entry the new idx covers must have been written since the entry
was last published.

It needs the guest's writes to go through ``GuestMemory.write``: :func:`observe_guest_writes`
turns the memory's direct windows (leases) off for the run, so the driver and the device
both take the checked path. Runs that exercise the lease fast path instead do not attach
it (the rule is then decided, or not, from what the ring shows at each kick).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from virtio_sim import layouts
from virtio_sim.host.observer import RingSource
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.conformance.findings import FindingLog

RULE = "split.avail.drv-barrier-before-idx"
PACKED_FLAGS_RULE = "packed.avail.drv-barrier-before-flags"
PACKED_LIST_RULE = "packed.sg.drv-first-last"
IDX_MASK = 0xFFFF
DESC = 16  # a packed descriptor: le64 addr, le32 len, le16 id, le16 flags
FLAGS_AT = 14
F_NEXT, F_AVAIL, F_USED = 1, 1 << 7, 1 << 15


@dataclass
class _Ring:
    driver: int  # the avail ring's guest address
    size: int
    idx: int = 0  # the avail idx last published
    written: set[int] = field(default_factory=set)  # entry slots written since published


@dataclass
class _Packed:
    desc: int
    size: int
    addr_written: set[int] = field(default_factory=set)  # slots whose addr was written
    pos: int = 0  # linear position of the next list's first descriptor (the device's next)


class AvailWriteOrder:
    """Decides RULE for every split queue of ``sources`` from the guest's writes, and for
    packed ones PACKED_FLAGS_RULE (a descriptor's addr written before the flags that make
    it available; the device never writes addr) and PACKED_LIST_RULE (a list's first
    descriptor made available only after the rest of the list is)."""

    def __init__(self, log: FindingLog, sources: list[RingSource], queues: int = 8) -> None:
        #: reads guest RAM (set by observe_guest_writes): the packed list rule looks around
        self.memory_read: Callable[[int, int], bytes] | None = None
        self.log = log
        self.sources = sources
        self.queues = queues
        self.rings: dict[tuple[int, int], _Ring] = {}
        self.packed: dict[tuple[int, int], _Packed] = {}
        self.decided = 0

    def _views(self, packed: bool = False) -> list[tuple[tuple[int, int], int, int, str]]:
        out: list[tuple[tuple[int, int], int, int, str]] = []
        for n, src in enumerate(self.sources):
            for i in range(self.queues):
                view = src.ring_view(i)
                if view is None or view.packed != packed or not view.driver:
                    continue
                out.append(((n, i), view.desc if packed else view.driver, view.size, view.order))
        return out

    def on_write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self._on_packed_write(addr, data)
        end = addr + len(data)
        for key, driver, size, order in self._views():
            ring_lo = driver + layouts.avail_entry_offset(0)
            ring_hi = driver + layouts.avail_entry_offset(size)
            idx_at = driver + layouts.RING_IDX_OFFSET
            if end <= driver or addr >= ring_hi:
                continue
            ring = self.rings.get(key)
            if ring is None or ring.driver != driver or ring.size != size:
                ring = self.rings[key] = _Ring(driver, size)
            if end > ring_lo and addr < ring_hi:
                first = max(0, (addr - ring_lo) // 2)
                last = min(size - 1, (end - 1 - ring_lo) // 2)
                ring.written.update(range(first, last + 1))
            if addr <= idx_at and end >= idx_at + 2:
                raw = bytes(data[idx_at - addr : idx_at - addr + 2])
                new = int.from_bytes(raw, "big" if order == "big" else "little")
                if addr < idx_at:  # a write of the whole header (ring initialisation)
                    ring.idx, ring.written = new, set()
                    continue
                self._publish(key, ring, new)

    def _publish(self, key: tuple[int, int], ring: _Ring, new: int) -> None:
        count = (new - ring.idx) & IDX_MASK
        if count > ring.size:  # not a publication (a reset ring, a wild write): start over
            ring.idx, ring.written = new, set()
            return
        missing = [pos for pos in range(ring.idx, ring.idx + count) if pos % ring.size not in ring.written]
        for pos in range(ring.idx, ring.idx + count):
            ring.written.discard(pos % ring.size)
        ring.idx = new
        if missing:
            self.log.failed(
                RULE,
                f"queue {key[1]}: avail idx {new} written before the ring entries at positions "
                f"{[p & IDX_MASK for p in missing][:4]} (seen write by write)",
            )
        elif count:
            self.decided += 1
            self.log.passed(RULE)

    def _on_packed_write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        end = addr + len(data)
        for key, desc, size, _order in self._views(packed=True):
            if end <= desc or addr >= desc + size * DESC:
                continue
            ring = self.packed.get(key)
            if ring is None or ring.desc != desc or ring.size != size:
                ring = self.packed[key] = _Packed(desc, size)
            first = max(0, (addr - desc) // DESC)
            last = min(size - 1, (end - 1 - desc) // DESC)
            for slot in range(first, last + 1):
                base = desc + slot * DESC
                if addr <= base and end >= base + 8:
                    ring.addr_written.add(slot)
                if addr <= base + FLAGS_AT and end >= base + FLAGS_AT + 2:
                    at = base + FLAGS_AT - addr
                    flags = int.from_bytes(bytes(data[at : at + 2]), "little")
                    if bool(flags & F_AVAIL) != bool(flags & F_USED):  # made available
                        self._made_available(key, ring, slot, flags)

    def _flags(self, ring: _Packed, slot: int) -> int:
        assert self.memory_read is not None
        raw = self.memory_read(ring.desc + (slot % ring.size) * DESC + FLAGS_AT, 2)
        return int.from_bytes(raw, "little")

    def _made_available(self, key: tuple[int, int], ring: _Packed, slot: int, flags: int) -> None:
        if slot in ring.addr_written:
            self.log.passed(PACKED_FLAGS_RULE)
        else:
            self.log.failed(
                PACKED_FLAGS_RULE,
                f"queue {key[1]}: descriptor {slot} made available (flags {flags:#x}) "
                "before its addr was written",
            )
        ring.addr_written.discard(slot)
        if self.memory_read is None or slot != ring.pos % ring.size:
            return  # a later descriptor of a list written before its head: judged with the head
        if bool(flags & F_AVAIL) != bool(_lap_wrap(ring.pos, ring.size)):
            return
        # the list's first descriptor is exposed: every descriptor it chains to must be too
        q, missing = ring.pos, None
        f = flags
        while f & F_NEXT and q - ring.pos < ring.size:
            q += 1
            f = self._flags(ring, q)
            if bool(f & F_AVAIL) == bool(f & F_USED) or bool(f & F_AVAIL) != bool(_lap_wrap(q, ring.size)):
                missing = q % ring.size
                break
        ring.pos = q + 1
        if missing is not None:
            self.log.failed(
                PACKED_LIST_RULE,
                f"queue {key[1]}: list head {slot} made available before descriptor {missing} of its list",
            )
        elif q > ring.pos - 1 or flags & F_NEXT:
            self.log.passed(PACKED_LIST_RULE)


def _lap_wrap(pos: int, size: int) -> int:
    """The wrap counter of linear position ``pos`` (1 on the first lap, 2.8.1)."""
    return 1 ^ (pos // size & 1)


def observe_guest_writes(memory: GuestMemory, watch: AvailWriteOrder) -> Callable[[], None]:
    """Route every write to ``memory`` through ``watch`` (after it lands) and turn its
    leases off, for one run; returns the undo."""
    inner = memory.write
    watch.memory_read = memory.read

    def write(addr: int, data: bytes | bytearray | memoryview) -> None:
        inner(addr, data)
        watch.on_write(addr, data)

    memory.write = write  # type: ignore[method-assign]
    memory.lease = lambda addr, length, write=True: None  # type: ignore[method-assign]

    def undo() -> None:
        del memory.write
        del memory.lease

    return undo
