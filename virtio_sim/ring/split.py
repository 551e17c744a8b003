"""Split virtqueues (virtio 1.4 section 2.7), device side and driver side.

Both sides keep private shadow state and trust nothing they read back from shared memory:

* The device reads each descriptor exactly once into a private copy, bounds every walk by
  the table size (loops and over-long chains end in :class:`RingError`, never a spin),
  validates every segment against its :class:`AddressSpace` before the request is handed
  to the device model, and never accepts an avail index that moved by more than the queue
  size or a head that is already in flight.
* The driver keeps its own record of every chain it made available (head, descriptor
  indices, writable length, token) and checks each used element against it: a used id that
  is not an in-flight head, a length larger than the chain's writable part, or a used index
  that ran ahead of what was made available raises :class:`DeviceBrokenError`.

Indices are free-running 16-bit counters; all arithmetic on them is done modulo 2^16
explicitly with :data:`IDX_MASK`.

Byte order: ``order="big"`` gives the legacy interface of a big-endian guest.

VIRTIO_F_IN_ORDER: the driver takes descriptors in ring order (head after head, ``next``
= slot + 1, as 2.7.5.3 asks) and the device checks that in strict mode. The device holds
a completion until every older buffer is complete; with ``batch_in_order`` it writes one
used element for a run of them (the id of the last, used idx advanced by the run), and
the driver completes every older in-flight buffer when it sees a later head, reporting
the skipped ones as fully written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from virtio_sim import layouts
from virtio_sim.dma import AddressSpace, DmaError
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess, MemoryAccessError
from virtio_sim.ring.chain import Chain, DeviceBrokenError, DmaBuffer, DmaPool, RingError
from virtio_sim.spec import AVAIL_F, DESC_F, NOTIFY_DATA, SPLIT, USED_F

IDX_MASK = 0xFFFF
INDIRECT_TABLE_LIMIT = 1024  # QEMU's VIRTQUEUE_MAX_SIZE
CHAIN_BYTES_LIMIT = 1 << 32  # spec 2.7.5: a chain must not exceed 2^32 bytes


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event(): did the index move past ``event`` going from ``old`` to ``new``?"""
    return ((new - event - 1) & IDX_MASK) < ((new - old) & IDX_MASK)


def check_queue_size(size: int) -> None:
    if size < 1 or size > SPLIT.max_queue_size or size & (size - 1):
        raise ValueError(f"split queue size {size} must be a power of two in 1..{SPLIT.max_queue_size}")


@dataclass(frozen=True)
class SplitRingAddresses:
    desc: int
    avail: int
    used: int


# --------------------------------------------------------------------------- device side


class SplitDeviceQueue:
    """The device's view of one split virtqueue."""

    def __init__(
        self,
        space: AddressSpace,
        size: int,
        addrs: SplitRingAddresses,
        *,
        event_idx: bool = False,
        indirect: bool = False,
        order: ByteOrder = "little",
        strict: bool = True,
        max_indirect: int | None = None,
        in_order: bool = False,
        batch_in_order: bool = False,
    ) -> None:
        check_queue_size(size)
        self.space = space
        self.published = 0
        self.size = size
        self.addrs = addrs
        self.event_idx = event_idx
        self.indirect = indirect
        self.strict = strict
        self.in_order = in_order
        self.batch_in_order = batch_in_order
        self.warnings: list[str] = []
        self._next_head = 0  # IN_ORDER: the slot the next chain must start at
        self._order: deque[int] = deque()  # IN_ORDER: heads in avail order
        self._writable: dict[int, int] = {}  # IN_ORDER: head -> writable length
        self._done: dict[int, int] = {}  # IN_ORDER: head -> written, held back
        self._ready: list[tuple[int, int]] = []  # IN_ORDER: (head, written) to write
        self._last_claim: int | None = None  # NOTIFICATION_DATA: the previous avail idx
        # Linux may build indirect tables longer than a small queue; QEMU caps any chain at
        # VIRTQUEUE_MAX_SIZE (1024) entries, and so do we unless told otherwise.
        self.max_indirect = max_indirect if max_indirect is not None else max(size, INDIRECT_TABLE_LIMIT)
        self._desc = layouts.desc_codec(order)
        self._elem = layouts.used_elem_codec(order)
        self._idx = layouts.ring_index_codec(order)
        self.last_avail = 0
        self._shadow_avail = 0
        self.used_idx = 0
        self._signalled_used = 0
        self._signalled_valid = False
        self.in_flight: set[int] = set()
        self._avail_idx_addr = addrs.avail + layouts.RING_IDX_OFFSET
        self._used_idx_addr = addrs.used + layouts.RING_IDX_OFFSET
        self._used_event_addr = addrs.avail + layouts.used_event_offset(size)
        self._avail_event_addr = addrs.used + layouts.avail_event_offset(size)
        self._check_ring_memory()

    def _check_ring_memory(self) -> None:
        a = self.addrs
        try:
            self.space.check(a.desc, layouts.desc_table_size(self.size), write=False)
            self.space.check(a.avail, layouts.avail_ring_size(self.size), write=False)
            self.space.check(a.used, layouts.used_ring_size(self.size), write=True)
        except DmaError as e:
            raise RingError("ring-address", f"ring memory is not accessible: {e}") from None

    # -- reading -------------------------------------------------------------

    def _read_u16(self, addr: int) -> int:
        try:
            value: int = self._idx.unpack(self.space.read(addr, 2))[0]
        except DmaError as e:
            raise RingError("ring-address", str(e)) from None
        return value

    def avail_idx(self) -> int:
        return self._read_u16(self._avail_idx_addr)

    def avail_flags(self) -> int:
        return self._read_u16(self.addrs.avail)

    def has_available(self) -> bool:
        if self.last_avail != self._shadow_avail:
            return True
        self._refresh_avail()
        return self.last_avail != self._shadow_avail

    def _refresh_avail(self) -> None:
        idx = self.avail_idx()
        pending = (idx - self.last_avail) & IDX_MASK
        if pending > self.size:
            raise RingError(
                "avail-idx-jump",
                f"avail idx {idx} is {pending} ahead of last_avail {self.last_avail}"
                f" (queue size {self.size})",
            )
        self._shadow_avail = idx

    def pop(self) -> Chain | None:
        """The next available chain, validated, or None when the ring is empty.

        On a malformed chain the head is consumed (last_avail advances) before the
        RingError is raised, so a drop policy can complete it and nothing is retried
        forever.
        """
        if not self.has_available():
            return None
        slot = self.last_avail % self.size
        head = self._read_u16(self.addrs.avail + layouts.avail_entry_offset(slot))
        self.last_avail = (self.last_avail + 1) & IDX_MASK
        if len(self.in_flight) >= self.size:
            # Consumed like every other bad head: raising before last_avail moved would
            # make a drop policy retry the same slot forever.
            raise RingError("too-many-in-flight", f"{self.size} requests already in flight")
        if head >= self.size:
            raise RingError("head-out-of-range", f"avail ring names head {head} >= {self.size}")
        if head in self.in_flight:
            # No head attached: completing it would complete the first request too.
            raise RingError("head-in-flight", f"head {head} made available twice")
        # The head counts as in flight even if its chain is malformed, so that a drop
        # policy can give it back with push(head, 0).
        self.in_flight.add(head)
        if self.in_order:
            self._order.append(head)
            expected, self._next_head = self._next_head, head
            if head != expected and self.strict:
                raise RingError("in-order-head", f"IN_ORDER chain starts at {head}, not at {expected}", head)
        chain = self._walk(head)
        if self.in_order:
            self._writable[head] = chain.writable_len
        return chain

    def _read_desc(self, table: int, index: int, head: int) -> tuple[int, int, int, int]:
        try:
            raw = self.space.read(table + index * layouts.DESC_SIZE, layouts.DESC_SIZE)
        except DmaError as e:
            raise RingError("ring-address", f"descriptor {index}: {e}", head) from None
        fields: tuple[int, int, int, int] = self._desc.unpack(raw)
        return fields

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        table_entries = self.size
        indirect_table: bytes | None = None
        index = head
        indirect_slot = head  # where the INDIRECT descriptor sits in the main table
        budget = self.size  # descriptors left before the walk is a loop or over-long chain
        total = 0
        while True:
            if index >= table_entries:
                raise RingError(
                    "next-out-of-range",
                    f"descriptor next {index} >= table size {table_entries}",
                    head,
                )
            budget -= 1
            if budget < 0:
                raise RingError(
                    "chain-loop",
                    f"chain from head {head} is longer than {self.size} descriptors",
                    head,
                )
            if indirect_table is None:
                addr, length, flags, nxt = self._read_desc(self.addrs.desc, index, head)
            else:
                off = index * layouts.DESC_SIZE
                addr, length, flags, nxt = self._desc.unpack_from(indirect_table, off)
            chain.descriptors += 1
            if flags & DESC_F.INDIRECT:
                if indirect_table is not None:
                    raise RingError("nested-indirect", "indirect descriptor inside an indirect table", head)
                if not self.indirect and self.strict:
                    raise RingError(
                        "indirect-not-negotiated",
                        "INDIRECT used without VIRTIO_F_INDIRECT_DESC",
                        head,
                    )
                if flags & DESC_F.NEXT:
                    raise RingError("indirect-with-next", "INDIRECT and NEXT both set", head)
                indirect_slot = index
                if length == 0 or length % layouts.DESC_SIZE:
                    raise RingError(
                        "indirect-bad-length",
                        f"indirect table length {length} is not a non-zero multiple of 16",
                        head,
                    )
                entries = length // layouts.DESC_SIZE
                if entries > self.max_indirect:
                    raise RingError(
                        "indirect-too-large",
                        f"indirect table has {entries} entries (limit {self.max_indirect})",
                        head,
                    )
                try:
                    indirect_table = self.space.read(addr, length)
                except DmaError as e:
                    raise RingError("bad-address", f"indirect table: {e}", head) from None
                table_entries = entries
                budget = entries
                index = 0
                continue
            is_write = bool(flags & DESC_F.WRITE)
            if not is_write and chain.writable:
                raise RingError(
                    "readable-after-writable",
                    "device-readable descriptor after a writable one",
                    head,
                )
            if length == 0 and self.strict:
                raise RingError("zero-length", "zero-length descriptor", head)
            total += length
            if total > CHAIN_BYTES_LIMIT:
                raise RingError("chain-too-big", "chain is longer than 2^32 bytes", head)
            try:
                self.space.check(addr, length, write=is_write)
            except DmaError as e:
                raise RingError("bad-address", str(e), head) from None
            if length:
                (chain.writable if is_write else chain.readable).append((addr, length))
            if not flags & DESC_F.NEXT:
                if self.in_order and indirect_table is None:
                    self._next_head = (index + 1) % self.size
                elif self.in_order:
                    # a chain may start with plain descriptors before its INDIRECT one
                    self._next_head = (indirect_slot + 1) % self.size
                return chain
            if self.in_order and self.strict and nxt != (index + 1) % table_entries:
                raise RingError(
                    "in-order-next",
                    f"IN_ORDER descriptor {index} chains to {nxt}, not to the next slot",
                    head,
                )
            index = nxt

    # -- completing ----------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Publish one used element: the element first, then the index.

        With IN_ORDER the element waits until every older buffer is complete (and, with
        ``batch_in_order``, until flush()).
        """
        if head not in self.in_flight or head in self._done:
            raise ValueError(f"device bug: head {head} is not in flight")
        if not self.in_order:
            self.in_flight.discard(head)
            self._write_used(head, written, 1)
            return
        self._done[head] = written
        while self._order and self._order[0] in self._done:
            first = self._order.popleft()
            self._ready.append((first, self._done.pop(first)))
        if not self.batch_in_order:
            self.flush()

    def flush(self) -> None:
        """Write the held IN_ORDER completions; a batch ends at a short write."""
        ready, self._ready = self._ready, []
        while ready:
            n = 0
            while n + 1 < len(ready) and self.batch_in_order:
                head, written = ready[n]
                if written != self._writable.get(head):
                    break  # skipped buffers count as fully written: only full ones join
                n += 1
            batch, ready = ready[: n + 1], ready[n + 1 :]
            for head, _ in batch:
                self.in_flight.discard(head)
                self._writable.pop(head, None)
            head, written = batch[-1]
            self._write_used(head, written, len(batch))

    def _write_used(self, head: int, written: int, count: int) -> None:
        self.published += 1  # used entries written: progress the core can see
        slot = self.used_idx % self.size
        try:
            self.space.write(self.addrs.used + layouts.used_elem_offset(slot), self._elem.pack(head, written))
            self.used_idx = (self.used_idx + count) & IDX_MASK
            self.space.write(self._used_idx_addr, self._idx.pack(self.used_idx))
        except DmaError as e:
            raise RingError("ring-address", f"used ring: {e}", head) from None

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        self.flush()
        if self.event_idx:
            old = self._signalled_used
            valid = self._signalled_valid
            self._signalled_used = self.used_idx
            self._signalled_valid = True
            if not valid:
                return True
            return need_event(self._read_u16(self._used_event_addr), self.used_idx, old)
        return not self.avail_flags() & AVAIL_F.NO_INTERRUPT

    # -- notification suppression -------------------------------------------

    def set_notification(self, enable: bool) -> None:
        """Ask the driver for kicks (enable) or not; with EVENT_IDX via avail_event."""
        try:
            if self.event_idx:
                if enable:
                    self.space.write(self._avail_event_addr, self._idx.pack(self._shadow_avail))
            else:
                flags = 0 if enable else USED_F.NO_NOTIFY
                self.space.write(self.addrs.used, self._idx.pack(flags))
        except DmaError as e:
            raise RingError("ring-address", f"used ring: {e}") from None

    def check_notify_data(self, next_off: int, next_wrap: int) -> str | None:
        """Compare a NOTIFICATION_DATA claim (the driver's new avail idx) with the ring.

        A claim behind what the device already consumed is stale, not wrong; a claim
        ahead of the avail idx in memory names buffers that were never made available.
        """
        claim = (next_off | next_wrap << NOTIFY_DATA.off_mask.bit_length()) & IDX_MASK
        last = self._last_claim
        if last is not None and (claim - last) & IDX_MASK > IDX_MASK // 2:
            return f"notification avail idx {claim} goes back behind {last}"
        stale = ((self.last_avail - claim) & IDX_MASK) <= self.size  # at or behind last_avail
        pending = (self.avail_idx() - self.last_avail) & IDX_MASK
        if not stale and (claim - self.last_avail) & IDX_MASK > pending:
            return f"notification says avail idx {claim}, the ring says {self.avail_idx()}"
        self._last_claim = claim
        return None

    def reset(self) -> None:
        self.last_avail = self._shadow_avail = self.used_idx = 0
        self._signalled_valid = False
        self.in_flight.clear()
        self._next_head = 0
        self._last_claim = None
        self._order.clear()
        self._writable.clear()
        self._done.clear()
        self._ready.clear()

    def resume(self, last_avail: int) -> None:
        """Start from a ring another device instance served before (vhost's
        SET_VRING_BASE): continue at ``last_avail`` and at the used index found in memory.

        Chains between the two indices were in flight when the ring stopped; they are not
        re-served (a front-end that restarts a ring it stopped cleanly has none).
        """
        self.last_avail = self._shadow_avail = last_avail & IDX_MASK
        self.used_idx = self._read_u16(self._used_idx_addr)
        self._signalled_valid = False
        self.in_flight.clear()


# --------------------------------------------------------------------------- driver side


@dataclass
class _Inflight:
    token: Any
    descs: list[int]  # ring descriptor indices owned by this chain
    writable_len: int
    indirect: DmaBuffer | None


class QueueFullError(Exception):
    """Not enough free descriptors for the chain."""


class SplitDriverQueue:
    """The driver's side of one split virtqueue, in the spirit of Linux's virtio_ring."""

    def __init__(
        self,
        memory: ByteAccess,
        size: int,
        ring_gpa: SplitRingAddresses,
        *,
        event_idx: bool = False,
        indirect_pool: DmaPool | None = None,
        order: ByteOrder = "little",
        on_broken: Callable[[DeviceBrokenError], None] | None = None,
        in_order: bool = False,
    ) -> None:
        check_queue_size(size)
        self.memory = memory
        self.size = size
        self.gpa = ring_gpa
        self.event_idx = event_idx
        self.indirect_pool = indirect_pool
        self.in_order = in_order
        self._desc = layouts.desc_codec(order)
        self._elem = layouts.used_elem_codec(order)
        self._idx = layouts.ring_index_codec(order)
        # Free descriptors. Normally a stack (pop() gives 0 first); with IN_ORDER a queue
        # in ring order, taken from the left, so chains occupy consecutive slots.
        self.free: deque[int] = deque(range(size) if in_order else range(size - 1, -1, -1))
        self.inflight: dict[int, _Inflight] = {}  # insertion order == avail order
        self._completed: deque[tuple[Any, int]] = deque()  # rest of an IN_ORDER batch
        self.avail_idx = 0
        self._kicked_avail = 0
        self.last_used = 0
        self.broken: DeviceBrokenError | None = None
        self.on_broken = on_broken
        self._init_rings()

    def _init_rings(self) -> None:
        """The driver zeroes both rings when it allocates them (spec 2.7)."""
        self.memory.write(self.gpa.desc, bytes(layouts.desc_table_size(self.size)))
        self.memory.write(self.gpa.avail, bytes(layouts.avail_ring_size(self.size)))
        self.memory.write(self.gpa.used, bytes(layouts.used_ring_size(self.size)))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def _write_desc(self, base: int, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(base + index * layouts.DESC_SIZE, self._desc.pack(addr, length, flags, nxt))

    def add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        token: Any,
        *,
        use_indirect: bool | None = None,
    ) -> int:
        """Make one chain available: ``out`` device-readable, then ``in_`` device-writable."""
        if self.broken:
            raise self.broken
        segs = [(a, n, 0) for a, n in out] + [(a, n, DESC_F.WRITE) for a, n in in_]
        if not segs:
            raise ValueError("a chain needs at least one buffer")
        if use_indirect is None:
            use_indirect = self.indirect_pool is not None and len(segs) > 1
        if use_indirect and self.indirect_pool is None:
            raise ValueError("indirect descriptors were not negotiated")
        writable_len = sum(n for _, n in in_)
        if use_indirect:
            assert self.indirect_pool is not None
            if not self.free:
                raise QueueFullError("no free descriptor for the indirect chain")
            table = self.indirect_pool.alloc(layouts.DESC_SIZE * len(segs), layouts.DESC_SIZE)
            for i, (a, n, fl) in enumerate(segs):
                more = i + 1 < len(segs)
                self._write_desc(table.gpa, i, a, n, fl | (DESC_F.NEXT if more else 0), i + 1 if more else 0)
            head = self._take()
            # The table is as long as the chain, not as the (possibly larger) pool buffer.
            table_len = layouts.DESC_SIZE * len(segs)
            self._write_desc(self.gpa.desc, head, table.dev_addr, table_len, DESC_F.INDIRECT, 0)
            descs = [head]
        else:
            if len(segs) > len(self.free):
                raise QueueFullError(f"chain needs {len(segs)} descriptors, {len(self.free)} free")
            descs = [self._take() for _ in segs]
            for i, (a, n, fl) in enumerate(segs):
                more = i + 1 < len(segs)
                self._write_desc(
                    self.gpa.desc,
                    descs[i],
                    a,
                    n,
                    fl | (DESC_F.NEXT if more else 0),
                    descs[i + 1] if more else 0,
                )
            head = descs[0]
            table = None
        self.inflight[head] = _Inflight(token, descs, writable_len, table)
        slot = self.avail_idx % self.size
        self.memory.write(self.gpa.avail + layouts.avail_entry_offset(slot), self._idx.pack(head))
        self.avail_idx = (self.avail_idx + 1) & IDX_MASK
        self.memory.write(self.gpa.avail + layouts.RING_IDX_OFFSET, self._idx.pack(self.avail_idx))
        return head

    def _take(self) -> int:
        return self.free.popleft() if self.in_order else self.free.pop()

    def _release(self, descs: list[int]) -> None:
        self.free.extend(descs if self.in_order else reversed(descs))

    def notify_data(self) -> tuple[int, int]:
        """(next_off, next_wrap): the low 15 bits and bit 15 of the avail idx."""
        shift = NOTIFY_DATA.off_mask.bit_length()
        return self.avail_idx & NOTIFY_DATA.off_mask, self.avail_idx >> shift & 1

    def _read_u16(self, addr: int) -> int:
        value: int = self._idx.unpack(self.memory.read(addr, 2))[0]
        return value

    def kick_prepare(self) -> bool:
        """Whether the device wants a notification for what was added since the last kick."""
        old, new = self._kicked_avail, self.avail_idx
        self._kicked_avail = new
        if old == new:
            return False
        if self.event_idx:
            event = self._read_u16(self.gpa.used + layouts.avail_event_offset(self.size))
            return need_event(event, new, old)
        return not self._read_u16(self.gpa.used) & USED_F.NO_NOTIFY

    def _mark_broken(self, violation: str, message: str) -> DeviceBrokenError:
        err = DeviceBrokenError(violation, message)
        self.broken = err
        if self.on_broken:
            self.on_broken(err)
        return err

    def get_used(self) -> tuple[Any, int] | None:
        """Reap one used element: (token, length), or None when nothing new was used."""
        if self.broken:
            raise self.broken
        if self._completed:
            return self._completed.popleft()
        used_idx = self._read_u16(self.gpa.used + layouts.RING_IDX_OFFSET)
        if used_idx == self.last_used:
            return None
        ahead = (used_idx - self.last_used) & IDX_MASK
        if ahead > len(self.inflight):
            raise self._mark_broken(
                "used-idx-jump",
                f"used idx {used_idx} is {ahead} ahead but only {len(self.inflight)} in flight",
            )
        slot = self.last_used % self.size
        head, length = self._elem.unpack(
            self.memory.read(self.gpa.used + layouts.used_elem_offset(slot), layouts.USED_ELEM_SIZE)
        )
        state = self.inflight.get(head) if head < self.size else None
        if state is None:
            raise self._mark_broken("used-bad-id", f"used id {head} is not an in-flight head")
        if length > state.writable_len:
            raise self._mark_broken(
                "used-bad-len",
                f"used len {length} > writable length {state.writable_len} of head {head}",
            )
        batch = [head]
        if self.in_order:
            batch = list(self.inflight)
            batch = batch[: batch.index(head) + 1]
            if len(batch) > ahead:
                raise self._mark_broken(
                    "used-idx-jump",
                    f"IN_ORDER used id {head} completes {len(batch)} buffers but used idx moved by {ahead}",
                )
        self.last_used = (self.last_used + len(batch)) & IDX_MASK
        for h in batch:
            st = self.inflight.pop(h)
            self._release(st.descs)
            if st.indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(st.indirect)
            self._completed.append((st.token, length if h == head else st.writable_len))
        return self._completed.popleft()

    def more_used(self) -> bool:
        if self._completed:
            return True
        return self._read_u16(self.gpa.used + layouts.RING_IDX_OFFSET) != self.last_used

    def enable_cb(self) -> bool:
        """Ask for interrupts again; True if used buffers are already pending (race check)."""
        if self.event_idx:
            self.memory.write(
                self.gpa.avail + layouts.used_event_offset(self.size),
                self._idx.pack(self.last_used),
            )
        else:
            self.memory.write(self.gpa.avail, self._idx.pack(0))
        return self.more_used()

    def disable_cb(self) -> None:
        if not self.event_idx:
            self.memory.write(self.gpa.avail, self._idx.pack(AVAIL_F.NO_INTERRUPT))

    def detach_all(self) -> list[Any]:
        """After a device reset: take back every in-flight chain, return their tokens."""
        tokens = [s.token for s in self.inflight.values()]
        for s in self.inflight.values():
            self._release(s.descs)
            if s.indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(s.indirect)
        self.inflight.clear()
        if self.in_order:  # a reset device expects the next chain at slot 0 again
            self.free = deque(range(self.size))
        return tokens  # completions already taken off the ring stay for get_used()


__all__ = [
    "MemoryAccessError",
    "QueueFullError",
    "SplitDeviceQueue",
    "SplitDriverQueue",
    "SplitRingAddresses",
    "need_event",
]
