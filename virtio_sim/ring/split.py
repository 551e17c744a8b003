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
from typing import Any, NamedTuple

from virtio_sim import layouts
from virtio_sim.dma import AddressSpace, DmaError
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess, Lease, MemoryAccessError
from virtio_sim.ring.access import NO_LEASE, NO_WINDOW, RingMemory, WordViews
from virtio_sim.ring.batch import DeviceBatchCalls, DriverBatchCalls
from virtio_sim.ring.chain import Chain, DeviceBrokenError, DmaBuffer, DmaPool, RingError, make_chain
from virtio_sim.ring.hooks import DeviceHooks, DriverHooks
from virtio_sim.ring.types import (
    IDX_MASK,
    INDIRECT_TABLE_LIMIT,
    NO_FEATURES,
    QueueFullError,
    RingAddresses,
    RingFeatures,
)
from virtio_sim.ring.walker import ChainWalker
from virtio_sim.spec import AVAIL_F, DESC_F, NOTIFY_DATA, SPLIT, USED_F

_NEXT, _WRITE, _INDIRECT = DESC_F.NEXT, DESC_F.WRITE, DESC_F.INDIRECT
_DESC_SIZE = layouts.DESC_SIZE
_HDR = layouts.RING_HEADER_SIZE  # avail entries and used elements start after it
_AVAIL_STRIDE = layouts.AVAIL_ENTRY_SIZE
_USED_STRIDE = layouts.USED_ELEM_SIZE
_IDX_OFF = layouts.RING_IDX_OFFSET
# Word indices into a ring area cast to native u16/u32 (when the ring's byte order is the
# machine's): the index word, the first avail entry, and the first used element's id.
_IDX_W16 = _IDX_OFF // _AVAIL_STRIDE
_AVAIL_W16 = _HDR // _AVAIL_STRIDE
_ELEM_W32 = _HDR // 4
_ELEM_WORDS = _USED_STRIDE // 4


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event(): did the index move past ``event`` going from ``old`` to ``new``?"""
    return ((new - event - 1) & IDX_MASK) < ((new - old) & IDX_MASK)


def check_queue_size(size: int) -> None:
    if size < 1 or size > SPLIT.max_queue_size or size & (size - 1):
        raise ValueError(f"split queue size {size} must be a power of two in 1..{SPLIT.max_queue_size}")


SplitRingAddresses = RingAddresses  # the name the transports and tests know


# --------------------------------------------------------------------------- device side


class SplitDeviceQueue(DeviceBatchCalls):
    """The device's view of one split virtqueue."""

    def __init__(
        self,
        space: AddressSpace,
        size: int,
        addrs: RingAddresses,
        features: RingFeatures = NO_FEATURES,
        *,
        order: ByteOrder = "little",
        max_indirect: int | None = None,
    ) -> None:
        check_queue_size(size)
        self.space = space
        self.published = 0
        self.size = size
        self.addrs = addrs
        self.features = features
        self.event_idx = features.event_idx
        self.indirect = features.indirect
        self.strict = features.strict
        self.in_order = features.in_order
        self.batch_in_order = features.batch_in_order
        self.hooks: DeviceHooks | None = None  # see virtio_sim.ring.hooks
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
        self.mem = RingMemory(space, order)  # leases or checked accesses, byte order
        self.walker = ChainWalker(
            space,
            size,
            indirect=self.indirect,
            strict=self.strict,
            max_indirect=self.max_indirect,
            in_order=self.in_order,
            desc_codec=self.mem.desc,
        )
        self._desc, self._elem, self._idx = self.mem.desc, self.mem.elem, self.mem.u16
        self.last_avail = 0
        self._shadow_avail = 0
        self.used_idx = 0
        self._signalled_used = 0
        self._signalled_valid = False
        self.in_flight: set[int] = set()
        self._pending_error: RingError | None = None  # pop_batch(): raised by the next pop
        self._avail_idx_addr = addrs.avail + layouts.RING_IDX_OFFSET
        self._used_idx_addr = addrs.used + layouts.RING_IDX_OFFSET
        self._used_event_addr = addrs.avail + layouts.used_event_offset(size)
        self._avail_event_addr = addrs.used + layouts.avail_event_offset(size)
        self._check_ring_memory()
        self._mask = size - 1
        # what pop() reads the buffer window from (a space without one: never a window)
        self._wspace = space if hasattr(space, "fast_window") else NO_WINDOW
        self._dl: Lease = NO_LEASE
        self._al: Lease = NO_LEASE
        self._ul: Lease = NO_LEASE
        self._words: WordViews | None = None
        self._take_leases()

    def _take_leases(self) -> None:
        """Direct windows on the three ring areas, where the address space offers them.

        Every ring access below first asks whether its lease is still valid and falls
        back to the checked path otherwise, so a revoked lease (IOMMU UNMAP, private
        pages) is never read through; leases are taken again at the next avail refresh.
        """
        mem = self.mem
        if not mem.leasable:
            return
        a, size = self.addrs, self.size
        self._dl = mem.lease(a.desc, layouts.desc_table_size(size), False)
        self._al = mem.lease(a.avail, layouts.avail_ring_size(size), False)
        self._ul = mem.lease(a.used, layouts.used_ring_size(size), True)
        self._words = mem.word_views(self._al, self._ul, size)

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
        return self.mem.read_u16(addr)

    def avail_idx(self) -> int:
        al = self._al
        if al.valid:
            value: int = self._idx.unpack_from(al.view, _IDX_OFF)[0]
            return value
        return self._read_u16(self._avail_idx_addr)

    def avail_flags(self) -> int:
        al = self._al
        if al.valid:
            value: int = self._idx.unpack_from(al.view, 0)[0]
            return value
        return self._read_u16(self.addrs.avail)

    def used_event(self) -> int:
        """The driver's used_event word (EVENT_IDX)."""
        al = self._al
        if al.valid:
            value: int = self._idx.unpack_from(al.view, self._used_event_addr - self.addrs.avail)[0]
            return value
        return self._read_u16(self._used_event_addr)

    def has_available(self) -> bool:
        if self.last_avail != self._shadow_avail or self._pending_error is not None:
            return True
        self._refresh_avail()
        return self.last_avail != self._shadow_avail

    def _refresh_avail(self) -> None:
        al = self._al
        if not (al.valid and self._dl.valid) and self.mem.leasable:
            self._take_leases()
            al = self._al
        words = self._words
        if words is not None and al.valid:
            idx: int = words[0][_IDX_W16]
        else:
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
        if self._pending_error is not None:
            err, self._pending_error = self._pending_error, None
            raise err
        last = self.last_avail
        if last == self._shadow_avail:
            self._refresh_avail()
            if last == self._shadow_avail:
                return None
        size = self.size
        words = self._words
        al = self._al
        if words is not None and al.valid:
            head: int = words[0][_AVAIL_W16 + (last & self._mask)]
        elif al.valid:
            head = self._idx.unpack_from(al.view, _HDR + _AVAIL_STRIDE * (last & self._mask))[0]
        else:
            head = self._read_u16(self.addrs.avail + layouts.avail_entry_offset(last % size))
        self.last_avail = (last + 1) & IDX_MASK
        in_flight = self.in_flight
        if len(in_flight) >= size:
            # Consumed like every other bad head: raising before last_avail moved would
            # make a drop policy retry the same slot forever.
            raise RingError("too-many-in-flight", f"{size} requests already in flight")
        if head >= size:
            raise RingError("head-out-of-range", f"avail ring names head {head} >= {size}")
        if head in in_flight:
            # No head attached: completing it would complete the first request too.
            raise RingError("head-in-flight", f"head {head} made available twice")
        # The head counts as in flight even if its chain is malformed, so that a drop
        # policy can give it back with push(head, 0).
        in_flight.add(head)
        if self.in_order:
            self._order.append(head)
            expected, self._next_head = self._next_head, head
            if head != expected and self.strict:
                raise RingError("in-order-head", f"IN_ORDER chain starts at {head}, not at {expected}", head)
            chain = self._walk(head)
            self._writable[head] = chain.writable_len
            return chain
        dl = self._dl
        if not dl.valid:
            return self._walk(head)
        first: tuple[int, int, int, int] = self._desc.unpack_from(dl.view, head * _DESC_SIZE)
        addr, length, flags, _nxt = first
        if flags & (_NEXT | _INDIRECT) or not length:
            return self._walk(head, first)
        # A one-descriptor chain (the common request): of the walk's rules only the
        # buffer check applies (no next, no table; one u32 length is below 2^32), inside
        # the space's window two comparisons.
        w = self._wspace.fast_window
        if flags & _WRITE:
            if w is None or not (w.valid and w.writable and w.lo <= addr and addr + length <= w.hi):
                self._check_buffer(head, addr, length, True)
            return make_chain(Chain, (head, [], [(addr, length)], 1))
        if w is None or not (w.valid and w.readable and w.lo <= addr and addr + length <= w.hi):
            self._check_buffer(head, addr, length, False)
        return make_chain(Chain, (head, [(addr, length)], [], 1))

    def _check_buffer(self, head: int, addr: int, length: int, write: bool) -> None:
        """The address space's check of a one-descriptor chain's buffer (outside the window)."""
        try:
            self.space.check(addr, length, write)
        except DmaError as e:
            raise RingError("bad-address", str(e), head) from None

    def _read_desc(self, table: int, index: int, head: int) -> tuple[int, int, int, int]:
        raw = self.mem.read(table + index * layouts.DESC_SIZE, layouts.DESC_SIZE, f"descriptor {index}", head)
        fields: tuple[int, int, int, int] = self._desc.unpack(raw)
        return fields

    def _walk(self, head: int, first: tuple[int, int, int, int] | None = None) -> Chain:
        """Walk and validate the chain at ``head`` (every rule of 2.7.5: the shared
        walker, :class:`~virtio_sim.ring.walker.ChainWalker`); through the descriptor
        table lease when it is valid. ``first`` is the head descriptor pop() already read."""
        dl = self._dl
        walker = self.walker
        chain = walker.walk_split(head, dl.view if dl.valid else None, self.addrs.desc, first)
        assert chain is not None  # the walker's sink raises
        if self.in_order:
            self._next_head = walker.end_slot
        return chain

    # -- completing ----------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Publish one used element: the element first, then the index.

        With IN_ORDER the element waits until every older buffer is complete (and, with
        ``batch_in_order``, until flush()).
        """
        in_flight = self.in_flight
        if self.in_order:
            if head not in in_flight or head in self._done:
                raise ValueError(f"device bug: head {head} is not in flight")
            self._done[head] = written
            while self._order and self._order[0] in self._done:
                first = self._order.popleft()
                self._ready.append((first, self._done.pop(first)))
            if not self.batch_in_order:
                self.flush()
            return
        try:
            in_flight.remove(head)
        except KeyError:
            raise ValueError(f"device bug: head {head} is not in flight") from None
        words = self._words
        ul = self._ul
        # write_used() inlined (the element, then idx) unless hooks are set
        if ul.valid and self.hooks is None:
            self.published += 1
            idx = self.used_idx
            if words is not None:
                w = _ELEM_W32 + _ELEM_WORDS * (idx & self._mask)
                u32 = words[2]
                try:
                    u32[w + 1] = written  # out of u32 range: nothing written, struct says why
                except (TypeError, ValueError):
                    self._elem.pack_into(ul.view, _HDR + _USED_STRIDE * (idx & self._mask), head, written)
                u32[w] = head
                self.used_idx = idx = (idx + 1) & IDX_MASK
                words[1][_IDX_W16] = idx
                return
            view = ul.view
            self._elem.pack_into(view, _HDR + _USED_STRIDE * (idx & self._mask), head, written)
            self.used_idx = idx = (idx + 1) & IDX_MASK
            self._idx.pack_into(view, _IDX_OFF, idx)
            return
        self._publish(head, written, 1)

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
            self._publish(head, written, len(batch))

    def _publish(self, head: int, written: int, count: int) -> None:
        hooks = self.hooks
        if hooks is None:
            self.write_used(head, written, count)
        else:
            hooks.write_used(self, head, written, count)

    def write_used(self, head: int, written: int, count: int) -> None:
        """Publish one used element covering ``count`` buffers: the element, then the
        index. No check: push() checked ``head``; hooks and attacks call this directly."""
        self.published += 1  # used entries written: progress the core can see
        ul = self._ul
        if ul.valid:  # the element first, then the index
            view = ul.view
            self._elem.pack_into(view, _HDR + _USED_STRIDE * (self.used_idx & self._mask), head, written)
            self.used_idx = idx = (self.used_idx + count) & IDX_MASK
            self._idx.pack_into(view, _IDX_OFF, idx)
            return
        slot = self.used_idx % self.size
        mem = self.mem
        mem.write(
            self.addrs.used + layouts.used_elem_offset(slot),
            self._elem.pack(head, written),
            "used ring",
            head,
        )
        self.used_idx = (self.used_idx + count) & IDX_MASK
        mem.write(self._used_idx_addr, self._idx.pack(self.used_idx), "used ring", head)

    def write_used_idx(self, idx: int) -> None:
        """Write the used index word alone (``used_idx`` is left as it is): hooks and
        attacks that publish an index the elements do not back."""
        self.mem.write_u16(self._used_idx_addr, idx & IDX_MASK, "used ring")

    def needs_interrupt(self) -> bool:
        wanted = self._needs_interrupt()
        hooks = self.hooks
        return wanted if hooks is None else hooks.needs_interrupt(self, wanted)

    def _needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        if self._ready:
            self.flush()
        if self.event_idx:
            old = self._signalled_used
            valid = self._signalled_valid
            self._signalled_used = self.used_idx
            self._signalled_valid = True
            if not valid:
                return True
            return need_event(self.used_event(), self.used_idx, old)
        return not self.avail_flags() & AVAIL_F.NO_INTERRUPT

    # -- notification suppression -------------------------------------------

    def set_notification(self, enable: bool) -> None:
        """Ask the driver for kicks (enable) or not; with EVENT_IDX via avail_event."""
        if self.event_idx:
            if enable:
                self.mem.write_u16(self._avail_event_addr, self._shadow_avail, "used ring")
        else:
            self.mem.write_u16(self.addrs.used, 0 if enable else USED_F.NO_NOTIFY, "used ring")

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
        self._pending_error = None
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


class _Inflight(NamedTuple):
    """A chain the driver made available (a tuple: built in C by :data:`_new_inflight`)."""

    token: Any
    descs: Sequence[int]  # ring descriptor indices owned by this chain
    writable_len: int
    indirect: DmaBuffer | None


_new_inflight: Callable[[type[_Inflight], tuple[Any, Sequence[int], int, DmaBuffer | None]], _Inflight] = (
    tuple.__new__
)


class SplitDriverQueue(DriverBatchCalls):
    """The driver's side of one split virtqueue, in the spirit of Linux's virtio_ring."""

    def __init__(
        self,
        memory: ByteAccess,
        size: int,
        ring_gpa: RingAddresses,
        features: RingFeatures = NO_FEATURES,
        *,
        indirect_pool: DmaPool | None = None,
        order: ByteOrder = "little",
        on_broken: Callable[[DeviceBrokenError], None] | None = None,
    ) -> None:
        check_queue_size(size)
        self.memory = memory
        self.size = size
        self.gpa = ring_gpa
        self.features = features
        self.event_idx = features.event_idx
        self.indirect_pool = indirect_pool  # indirect tables come from here (None: none)
        self.in_order = in_order = features.in_order
        self.hooks: DriverHooks | None = None  # see virtio_sim.ring.hooks
        self.mem = RingMemory(memory, order)  # leases or plain reads/writes, byte order
        self._desc, self._elem, self._idx = self.mem.desc, self.mem.elem, self.mem.u16
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
        self._mask = size - 1
        self._init_rings()
        self._dl: Lease = NO_LEASE
        self._al: Lease = NO_LEASE
        self._ul: Lease = NO_LEASE
        self._words: WordViews | None = None
        self._take_leases()

    def _take_leases(self) -> bool:
        """Direct windows on the rings in guest RAM (the driver's own memory); False when
        the memory offers none (a qtest link) and every access goes through read/write."""
        mem = self.mem
        if not mem.leasable:
            return False
        g, size = self.gpa, self.size
        self._dl = mem.lease(g.desc, layouts.desc_table_size(size), True)
        self._al = mem.lease(g.avail, layouts.avail_ring_size(size), True)
        self._ul = mem.lease(g.used, layouts.used_ring_size(size), True)
        self._words = mem.word_views(self._al, self._ul, size)
        return self._leases_valid()

    def _leases_valid(self) -> bool:
        return self._dl.valid and self._al.valid and self._ul.valid

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
        use_indirect: bool | None = None,
    ) -> int:
        """Make one chain available: ``out`` device-readable, then ``in_`` device-writable.

        (``use_indirect`` may be passed by position: a keyword-only parameter makes
        CPython 3.11 call the function through its slow, unspecialised path.)"""
        if self.broken:
            raise self.broken
        words = self._words
        if words is not None and len(out) + len(in_) == 1 and not use_indirect and self.hooks is None:
            dl, free = self._dl, self.free
            if free and dl.valid and self._al.valid and self._ul.valid:
                # One buffer through the ring leases (the common request): descriptor,
                # avail entry, then the index (see _add for every other chain).
                head = free.popleft() if self.in_order else free.pop()
                if out:
                    (a, n), writable_len, fl = out[0], 0, 0
                else:
                    (a, n), fl = in_[0], _WRITE
                    writable_len = n
                self._desc.pack_into(dl.view, head * _DESC_SIZE, a, n, fl, 0)
                self.inflight[head] = _new_inflight(_Inflight, (token, (head,), writable_len, None))
                idx = self.avail_idx
                a16 = words[0]
                a16[_AVAIL_W16 + (idx & self._mask)] = head
                self.avail_idx = idx = (idx + 1) & IDX_MASK
                a16[_IDX_W16] = idx  # the index last: the chain is complete
                return head
        hooks = self.hooks
        if hooks is not None:
            use_indirect = hooks.use_indirect(self, use_indirect)
            head = self._add(out, in_, token, use_indirect)
            hooks.added(self, head)
            return head
        return self._add(out, in_, token, use_indirect)

    def _add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        token: Any,
        use_indirect: bool | None,
    ) -> int:
        """add() for every chain the inline path does not take."""
        direct = self._leases_valid()
        if not direct and self.mem.leasable:  # revoked (pages made private): again
            direct = self._take_leases()
        nsegs = len(out) + len(in_)
        if (
            direct
            and not use_indirect
            and (use_indirect is not None or self.indirect_pool is None or nsegs == 1)
        ):
            # Without indirect tables (a single buffer never takes one unless asked),
            # written through the ring leases (see _add_direct).
            return self._add_direct(out, in_, token)
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
            last = len(segs) - 1
            pack = self._desc.pack
            entries = b"".join(  # the whole table in one write
                pack(a, n, fl | (DESC_F.NEXT if i < last else 0), i + 1 if i < last else 0)
                for i, (a, n, fl) in enumerate(segs)
            )
            self.memory.write(table.gpa, entries)
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

    def _add_direct(self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]], token: Any) -> int:
        """add() without indirect tables, writing through the ring leases (held valid)."""
        nsegs = len(out) + len(in_)
        if not nsegs:
            raise ValueError("a chain needs at least one buffer")
        free = self.free
        if nsegs > len(free):
            raise QueueFullError(f"chain needs {nsegs} descriptors, {len(free)} free")
        take = self._take
        descs = [take() for _ in range(nsegs)]
        view = self._dl.view
        pack_into = self._desc.pack_into
        last = nsegs - 1
        i = 0
        for a, n in out:
            nxt = descs[i + 1] if i < last else 0
            pack_into(view, descs[i] * _DESC_SIZE, a, n, _NEXT if i < last else 0, nxt)
            i += 1
        writable_len = 0
        for a, n in in_:
            nxt = descs[i + 1] if i < last else 0
            pack_into(view, descs[i] * _DESC_SIZE, a, n, (_WRITE | _NEXT) if i < last else _WRITE, nxt)
            writable_len += n
            i += 1
        head = descs[0]
        self.inflight[head] = _Inflight(token, descs, writable_len, None)
        avail = self._al.view
        idx = self.avail_idx
        self._idx.pack_into(avail, _HDR + _AVAIL_STRIDE * (idx & self._mask), head)
        self.avail_idx = idx = (idx + 1) & IDX_MASK
        self._idx.pack_into(avail, _IDX_OFF, idx)  # the index last: the chain is complete
        return head

    def _take(self) -> int:
        hooks = self.hooks
        return self.next_free() if hooks is None else hooks.take(self)

    def next_free(self) -> int:
        """Take the ring's next free descriptor: in ring order with IN_ORDER, otherwise
        the most recently freed one (Linux's free list)."""
        return self.free.popleft() if self.in_order else self.free.pop()

    def _release(self, descs: Sequence[int]) -> None:
        self.free.extend(descs if self.in_order else reversed(descs))

    def notify_data(self) -> tuple[int, int]:
        """(next_off, next_wrap): the low 15 bits and bit 15 of the avail idx."""
        shift = NOTIFY_DATA.off_mask.bit_length()
        return self.avail_idx & NOTIFY_DATA.off_mask, self.avail_idx >> shift & 1

    def _read_u16(self, addr: int) -> int:
        value: int = self._idx.unpack(self.memory.read(addr, 2))[0]
        return value

    def used_flags(self) -> int:
        """The device's used.flags word (VIRTQ_USED_F_NO_NOTIFY)."""
        return self._used_u16(0)

    def desc(self, index: int) -> tuple[int, int, int, int]:
        """Descriptor ``index`` of the table as written: (addr, len, flags, next)."""
        raw = self.memory.read(self.gpa.desc + index * layouts.DESC_SIZE, layouts.DESC_SIZE)
        fields: tuple[int, int, int, int] = self._desc.unpack(raw)
        return fields

    def set_desc(self, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        """Overwrite descriptor ``index`` (hooks of broken drivers)."""
        self._write_desc(self.gpa.desc, index, addr, length, flags, nxt)

    def _used_u16(self, offset: int) -> int:
        """A 16-bit word of the used ring (through the lease when there is one)."""
        ul = self._ul
        if ul.valid:
            value: int = self._idx.unpack_from(ul.view, offset)[0]
            return value
        return self._read_u16(self.gpa.used + offset)

    def kick_prepare(self) -> bool:
        """Whether the device wants a notification for what was added since the last kick."""
        old, new = self._kicked_avail, self.avail_idx
        self._kicked_avail = new
        if old == new:
            wanted = False
        elif self.event_idx:
            event = self._used_u16(layouts.avail_event_offset(self.size))
            wanted = need_event(event, new, old)
        else:
            wanted = not self._used_u16(0) & USED_F.NO_NOTIFY
        hooks = self.hooks
        return wanted if hooks is None else hooks.kick(self, wanted)

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
        words = self._words
        if words is not None and not self.in_order and self._ul.valid:
            # Through the used-ring words, without IN_ORDER (nothing is ever held in
            # _completed then): the same checks as _get_used.
            last = self.last_used
            used_idx: int = words[1][_IDX_W16]
            if used_idx == last:
                return None
            inflight = self.inflight
            ahead = (used_idx - last) & IDX_MASK
            if ahead > len(inflight):
                raise self._mark_broken(
                    "used-idx-jump",
                    f"used idx {used_idx} is {ahead} ahead but only {len(inflight)} in flight",
                )
            w = _ELEM_W32 + _ELEM_WORDS * (last & self._mask)
            u32 = words[2]
            head: int = u32[w]
            st = inflight.get(head)  # the keys are heads below the queue size
            if st is None:
                raise self._mark_broken("used-bad-id", f"used id {head} is not an in-flight head")
            length: int = u32[w + 1]
            token, descs, writable_len, indirect = st
            if length > writable_len:
                raise self._mark_broken(
                    "used-bad-len", f"used len {length} > writable length {writable_len} of head {head}"
                )
            self.last_used = (last + 1) & IDX_MASK
            del inflight[head]
            if len(descs) == 1:
                self.free.append(head)
            else:
                self._release(descs)
            if indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(indirect)
            return token, length
        return self._get_used()

    def _get_used(self) -> tuple[Any, int] | None:
        """get_used() through struct codecs: IN_ORDER, a ring in the other byte order, or
        no used-ring lease (checked reads)."""
        if self._completed:
            return self._completed.popleft()
        ul = self._ul
        if ul.valid:
            used_idx: int = self._idx.unpack_from(ul.view, _IDX_OFF)[0]
        else:
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
        if ul.valid:
            head, length = self._elem.unpack_from(ul.view, _HDR + _USED_STRIDE * slot)
        else:
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
        return self._used_u16(_IDX_OFF) != self.last_used

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
