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

import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from virtio_sim import layouts
from virtio_sim.dma import AddressSpace, DmaError, lease_for
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess, Lease, MemoryAccessError
from virtio_sim.ring.chain import Chain, DeviceBrokenError, DmaBuffer, DmaPool, RingError
from virtio_sim.spec import AVAIL_F, CHAIN, DESC_F, LIMITS, NOTIFY_DATA, SPLIT, USED_F

IDX_MASK = 0xFFFF
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


def _word_views(
    order: ByteOrder, avail: Lease | None, used: Lease | None, size: int
) -> tuple[memoryview, memoryview, memoryview] | None:
    """(avail as u16, used as u16, used elements as u32) views, for rings whose byte order
    is the machine's: a subscript instead of a struct call per ring word."""
    if order != sys.byteorder or struct.calcsize("H") != 2 or struct.calcsize("I") != 4:
        return None
    if avail is None or used is None:
        return None
    elems = _HDR + _USED_STRIDE * size
    return avail.view.cast("H"), used.view.cast("H"), used.view[:elems].cast("I")


INDIRECT_TABLE_LIMIT = LIMITS.indirect.max_entries  # specs/limits.toml (QEMU's VIRTQUEUE_MAX_SIZE)
CHAIN_BYTES_LIMIT = CHAIN.max_bytes  # spec 2.7.5: a chain must not exceed 2^32 bytes


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
        self._pending_error: RingError | None = None  # pop_batch(): raised by the next pop
        self._avail_idx_addr = addrs.avail + layouts.RING_IDX_OFFSET
        self._used_idx_addr = addrs.used + layouts.RING_IDX_OFFSET
        self._used_event_addr = addrs.avail + layouts.used_event_offset(size)
        self._avail_event_addr = addrs.used + layouts.avail_event_offset(size)
        self._check_ring_memory()
        self._mask = size - 1
        self._leasable = hasattr(space, "lease")
        self._dl: Lease | None = None
        self._al: Lease | None = None
        self._ul: Lease | None = None
        self._order_name: ByteOrder = order
        self._words: tuple[memoryview, memoryview, memoryview] | None = None
        self._take_leases()

    def _take_leases(self) -> None:
        """Direct windows on the three ring areas, where the address space offers them.

        Every ring access below first asks whether its lease is still valid and falls
        back to the checked path otherwise, so a revoked lease (IOMMU UNMAP, private
        pages) is never read through; leases are taken again at the next avail refresh.
        """
        if not self._leasable:
            return
        a, size, sp = self.addrs, self.size, self.space
        self._dl = lease_for(sp, a.desc, layouts.desc_table_size(size), False)
        self._al = lease_for(sp, a.avail, layouts.avail_ring_size(size), False)
        self._ul = lease_for(sp, a.used, layouts.used_ring_size(size), True)
        self._words = _word_views(self._order_name, self._al, self._ul, size)

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
        al = self._al
        if al is not None and al.valid:
            value: int = self._idx.unpack_from(al.view, _IDX_OFF)[0]
            return value
        return self._read_u16(self._avail_idx_addr)

    def avail_flags(self) -> int:
        al = self._al
        if al is not None and al.valid:
            value: int = self._idx.unpack_from(al.view, 0)[0]
            return value
        return self._read_u16(self.addrs.avail)

    def used_event(self) -> int:
        """The driver's used_event word (EVENT_IDX)."""
        al = self._al
        if al is not None and al.valid:
            value: int = self._idx.unpack_from(al.view, self._used_event_addr - self.addrs.avail)[0]
            return value
        return self._read_u16(self._used_event_addr)

    def has_available(self) -> bool:
        if self.last_avail != self._shadow_avail or self._pending_error is not None:
            return True
        self._refresh_avail()
        return self.last_avail != self._shadow_avail

    def _refresh_avail(self) -> None:
        if self._leasable and not (
            self._al is not None and self._al.valid and self._dl is not None and self._dl.valid
        ):
            self._take_leases()
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
        al = self._al
        if al is not None and al.valid:
            words = self._words
            if words is not None:
                head: int = words[0][_AVAIL_W16 + (last & self._mask)]
            else:
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
        if dl is None or not dl.valid:
            return self._walk(head)
        first: tuple[int, int, int, int] = self._desc.unpack_from(dl.view, head * _DESC_SIZE)
        addr, length, flags, _nxt = first
        if flags & (_NEXT | _INDIRECT) or not length:
            return self._walk(head, first)
        # A one-descriptor chain (the common request): of the walk's rules only the
        # buffer check applies (no next, no table; one u32 length is below 2^32).
        is_write = flags & _WRITE
        w = getattr(self.space, "fast_window", None)
        if not (
            w is not None
            and w.valid
            and w.lo <= addr
            and addr + length <= w.hi
            and (w.writable if is_write else w.readable)
        ):
            try:
                self.space.check(addr, length, bool(is_write))
            except DmaError as e:
                raise RingError("bad-address", str(e), head) from None
        if is_write:
            return Chain(head, [], [(addr, length)], 1)
        return Chain(head, [(addr, length)], [], 1)

    def pop_batch(self, limit: int) -> list[Chain]:
        """Up to ``limit`` available chains, each validated exactly as pop() does.

        Why: one call per batch instead of one per chain (the avail index is read once,
        one-descriptor chains are checked inline). A bad chain after good ones ends the
        batch: the good ones are returned, the bad head is consumed as pop() consumes it,
        and its RingError is raised by the next pop() or pop_batch() (has_available() says
        True until then), so no chain is lost and no error is skipped.
        """
        out: list[Chain] = []
        words = self._words
        if self.in_order or words is None or self._pending_error is not None:
            try:
                self._pop_each(limit, out)
            except RingError as e:
                if not out:
                    raise
                self._pending_error = e
            return out
        try:
            last = self.last_avail
            if self._shadow_avail == last:
                # as pop() does: the avail idx is read again only once the entries it
                # already announced are taken, here and for the rest of the batch below
                # (a driver that moved it backwards meets the same head checks as pop())
                self._refresh_avail()
            size, mask = self.size, self._mask
            in_flight = self.in_flight
            space = self.space
            unpack_from = self._desc.unpack_from
            al, dl = self._al, self._dl
            if al is None or dl is None:
                return self._pop_each(limit, out)
            a16, table = words[0], dl.view
            win = getattr(space, "fast_window", None)
            n = min(limit, (self._shadow_avail - last) & IDX_MASK)
            slot = last & mask
            if slot + n <= size:  # the window of avail entries, each read once
                heads = a16[_AVAIL_W16 + slot : _AVAIL_W16 + slot + n].tolist()
            else:
                k = size - slot
                heads = a16[_AVAIL_W16 + slot : _AVAIL_W16 + size].tolist()
                heads += a16[_AVAIL_W16 : _AVAIL_W16 + n - k].tolist()
            # pop()'s three head rules checked for the whole window at once; a window
            # that breaks one is checked head by head, so its error comes at the same head.
            window_ok = not heads or (
                len(in_flight) + n <= size
                and max(heads) < size
                and len(set(heads)) == n
                and in_flight.isdisjoint(heads)
            )
            for head in heads:
                if not (al.valid and dl.valid):
                    return self._pop_each(limit, out)  # a lease went away: the checked path
                last = (last + 1) & IDX_MASK
                self.last_avail = last
                if not window_ok:
                    if len(in_flight) >= size:
                        raise RingError("too-many-in-flight", f"{size} requests already in flight")
                    if head >= size:
                        raise RingError("head-out-of-range", f"avail ring names head {head} >= {size}")
                    if head in in_flight:
                        raise RingError("head-in-flight", f"head {head} made available twice")
                in_flight.add(head)
                first: tuple[int, int, int, int] = unpack_from(table, head * _DESC_SIZE)
                addr, length, flags, _nxt = first
                if flags & (_NEXT | _INDIRECT) or not length:
                    out.append(self._walk(head, first))
                    win = getattr(space, "fast_window", None)
                    continue
                is_write = flags & _WRITE
                if not (
                    win is not None
                    and win.valid
                    and win.lo <= addr
                    and addr + length <= win.hi
                    and (win.writable if is_write else win.readable)
                ):
                    try:
                        space.check(addr, length, bool(is_write))
                    except DmaError as e:
                        raise RingError("bad-address", str(e), head) from None
                    win = getattr(space, "fast_window", None)  # the check may move the window
                if is_write:
                    out.append(Chain(head, [], [(addr, length)], 1))
                else:
                    out.append(Chain(head, [(addr, length)], [], 1))
            if len(out) < limit:
                self._pop_each(limit, out)  # the idx read again, as pop() reads it
        except RingError as e:
            if not out:
                raise
            self._pending_error = e
        return out

    def _pop_each(self, limit: int, out: list[Chain]) -> list[Chain]:
        """The rest of a pop_batch() through pop() (leases gone or none)."""
        while len(out) < limit and (c := self.pop()) is not None:
            out.append(c)
        return out

    def _read_desc(self, table: int, index: int, head: int) -> tuple[int, int, int, int]:
        try:
            raw = self.space.read(table + index * layouts.DESC_SIZE, layouts.DESC_SIZE)
        except DmaError as e:
            raise RingError("ring-address", f"descriptor {index}: {e}", head) from None
        fields: tuple[int, int, int, int] = self._desc.unpack(raw)
        return fields

    def _walk(self, head: int, first: tuple[int, int, int, int] | None = None) -> Chain:
        """Walk and validate the chain at ``head``; every rule of 2.7.5 is checked here.

        Written with locals and one unpack per descriptor (from the descriptor-table lease
        when there is one): this loop runs once per descriptor of every request.
        ``first`` is the head descriptor when pop() already read it (read once only).
        """
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        size = self.size
        table_entries = size
        dl = self._dl
        table: bytes | memoryview | None = dl.view if dl is not None and dl.valid else None
        indirect = False
        unpack_from = self._desc.unpack_from
        check = self.space.check
        w = getattr(self.space, "fast_window", None)
        if w is not None and not w.valid:
            w = None
        strict = self.strict
        index = head
        indirect_slot = head  # where the INDIRECT descriptor sits in the main table
        budget = size  # descriptors left before the walk is a loop or over-long chain
        total = 0
        descriptors = 0
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
                    f"chain from head {head} is longer than {size} descriptors",
                    head,
                )
            if first is not None:
                addr, length, flags, nxt = first
                first = None
            elif table is None:
                addr, length, flags, nxt = self._read_desc(self.addrs.desc, index, head)
            else:
                addr, length, flags, nxt = unpack_from(table, index * _DESC_SIZE)
            descriptors += 1
            if flags & _INDIRECT:
                if indirect:
                    raise RingError("nested-indirect", "indirect descriptor inside an indirect table", head)
                if not self.indirect and strict:
                    raise RingError(
                        "indirect-not-negotiated",
                        "INDIRECT used without VIRTIO_F_INDIRECT_DESC",
                        head,
                    )
                if flags & _NEXT:
                    raise RingError("indirect-with-next", "INDIRECT and NEXT both set", head)
                indirect_slot = index
                if length == 0 or length % _DESC_SIZE:
                    raise RingError(
                        "indirect-bad-length",
                        f"indirect table length {length} is not a non-zero multiple of 16",
                        head,
                    )
                entries = length // _DESC_SIZE
                if entries > self.max_indirect:
                    raise RingError(
                        "indirect-too-large",
                        f"indirect table has {entries} entries (limit {self.max_indirect})",
                        head,
                    )
                try:
                    table = self.space.read(addr, length)
                except DmaError as e:
                    raise RingError("bad-address", f"indirect table: {e}", head) from None
                indirect = True
                table_entries = entries
                budget = entries
                index = 0
                continue
            is_write = flags & _WRITE
            if not is_write and writable:
                raise RingError(
                    "readable-after-writable",
                    "device-readable descriptor after a writable one",
                    head,
                )
            if length == 0 and strict:
                raise RingError("zero-length", "zero-length descriptor", head)
            total += length
            if total > CHAIN_BYTES_LIMIT:
                raise RingError("chain-too-big", "chain is longer than 2^32 bytes", head)
            if not (
                w is not None
                and w.lo <= addr
                and addr + length <= w.hi
                and (w.writable if is_write else w.readable)
                and w.valid
            ):
                try:
                    check(addr, length, bool(is_write))
                except DmaError as e:
                    raise RingError("bad-address", str(e), head) from None
            if length:
                (writable if is_write else readable).append((addr, length))
            if not flags & _NEXT:
                if self.in_order:
                    # a chain may start with plain descriptors before its INDIRECT one
                    self._next_head = ((indirect_slot if indirect else index) + 1) % size
                return Chain(head, readable, writable, descriptors)
            if self.in_order and strict and nxt != (index + 1) % table_entries:
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
        in_flight = self.in_flight
        if head not in in_flight or head in self._done:
            raise ValueError(f"device bug: head {head} is not in flight")
        if not self.in_order:
            in_flight.discard(head)
            ul = self._ul
            # _write_used() inlined (the element, then idx) unless a subclass changed it
            if ul is not None and ul.valid and type(self)._write_used is SplitDeviceQueue._write_used:
                self.published += 1
                idx = self.used_idx
                words = self._words
                if words is not None and 0 <= written <= 0xFFFFFFFF:
                    w = _ELEM_W32 + _ELEM_WORDS * (idx & self._mask)
                    u32 = words[2]
                    u32[w] = head
                    u32[w + 1] = written
                    self.used_idx = idx = (idx + 1) & IDX_MASK
                    words[1][_IDX_W16] = idx
                    return
                view = ul.view
                self._elem.pack_into(view, _HDR + _USED_STRIDE * (idx & self._mask), head, written)
                self.used_idx = idx = (idx + 1) & IDX_MASK
                self._idx.pack_into(view, _IDX_OFF, idx)
                return
            self._write_used(head, written, 1)
            return
        self._done[head] = written
        while self._order and self._order[0] in self._done:
            first = self._order.popleft()
            self._ready.append((first, self._done.pop(first)))
        if not self.batch_in_order:
            self.flush()

    def push_batch(self, completions: Sequence[tuple[int, int]]) -> None:
        """push() for each (head, written), the used index written once at the end.

        The same checks as push(); a bad head raises ValueError after the completions
        before it are published (elements, then the index)."""
        ul, words = self._ul, self._words
        if (
            self.in_order
            or words is None
            or ul is None
            or not ul.valid
            or type(self)._write_used is not SplitDeviceQueue._write_used
        ):
            for head, written in completions:
                self.push(head, written)
            return
        in_flight = self.in_flight
        u32 = words[2]
        mask = self._mask
        idx = start = self.used_idx
        try:
            for head, written in completions:
                if head not in in_flight or head in self._done:
                    raise ValueError(f"device bug: head {head} is not in flight")
                w = _ELEM_W32 + _ELEM_WORDS * (idx & mask)
                u32[w + 1] = written  # ValueError (like push's struct error) if not a u32
                u32[w] = head
                in_flight.discard(head)
                idx = (idx + 1) & IDX_MASK
        finally:
            if idx != start:
                self.published += (idx - start) & IDX_MASK
                self.used_idx = idx
                words[1][_IDX_W16] = idx  # the index after every element it covers

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
        ul = self._ul
        if ul is not None and ul.valid:  # the element first, then the index
            view = ul.view
            self._elem.pack_into(view, _HDR + _USED_STRIDE * (self.used_idx & self._mask), head, written)
            self.used_idx = idx = (self.used_idx + count) & IDX_MASK
            self._idx.pack_into(view, _IDX_OFF, idx)
            return
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
            return need_event(self.used_event(), self.used_idx, old)
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


@dataclass(slots=True)
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
        self._mask = size - 1
        self._init_rings()
        self._dl: Lease | None = None
        self._al: Lease | None = None
        self._ul: Lease | None = None
        self._order_name: ByteOrder = order
        self._words: tuple[memoryview, memoryview, memoryview] | None = None
        self._leasable = hasattr(memory, "lease")
        self._take_leases()

    def _take_leases(self) -> bool:
        """Direct windows on the rings in guest RAM (the driver's own memory); False when
        the memory offers none (a qtest link) and every access goes through read/write."""
        if not self._leasable:
            return False
        g, size = self.gpa, self.size
        self._dl = lease_for(self.memory, g.desc, layouts.desc_table_size(size), True)
        self._al = lease_for(self.memory, g.avail, layouts.avail_ring_size(size), True)
        self._ul = lease_for(self.memory, g.used, layouts.used_ring_size(size), True)
        self._words = _word_views(self._order_name, self._al, self._ul, size)
        return self._leases_valid()

    def _leases_valid(self) -> bool:
        dl, al, ul = self._dl, self._al, self._ul
        return dl is not None and al is not None and ul is not None and dl.valid and al.valid and ul.valid

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
        dl, al, ul = self._dl, self._al, self._ul
        if not (dl is not None and al is not None and ul is not None and dl.valid and al.valid and ul.valid):
            if self._leasable and self._take_leases():  # revoked (pages made private): again
                dl, al, ul = self._dl, self._al, self._ul
            else:
                dl = None
        nsegs = len(out) + len(in_)
        if (
            dl is not None
            and al is not None
            and not use_indirect
            and (use_indirect is not None or self.indirect_pool is None or nsegs == 1)
        ):
            # Without indirect tables (a single buffer never takes one unless asked),
            # written through the ring leases (see _add_direct).
            free = self.free
            if nsegs == 1 and free:
                head = self._take()  # a subclass may choose descriptors differently
                if out:
                    (a, n), writable_len, fl = out[0], 0, 0
                else:
                    (a, n), fl = in_[0], _WRITE
                    writable_len = n
                self._desc.pack_into(dl.view, head * _DESC_SIZE, a, n, fl, 0)
                self.inflight[head] = _Inflight(token, [head], writable_len, None)
                idx = self.avail_idx
                words = self._words
                if words is not None:
                    a16 = words[0]
                    a16[_AVAIL_W16 + (idx & self._mask)] = head
                    self.avail_idx = idx = (idx + 1) & IDX_MASK
                    a16[_IDX_W16] = idx  # the index last: the chain is complete
                    return head
                avail = al.view
                self._idx.pack_into(avail, _HDR + _AVAIL_STRIDE * (idx & self._mask), head)
                self.avail_idx = idx = (idx + 1) & IDX_MASK
                self._idx.pack_into(avail, _IDX_OFF, idx)  # the index last: the chain is complete
                return head
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

    def add_batch(
        self, chains: Sequence[tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]], Any]]
    ) -> list[int]:
        """add() for each (out, in_, token); one-buffer chains are written inline and the
        avail index once, after every entry (other chains go through add(), which decides
        about indirect tables). Returns the heads. QueueFullError (or any error) part-way
        leaves the chains before it made available, as single adds would."""
        heads: list[int] = []
        dl, al, words = self._dl, self._al, self._words
        if self.broken:
            raise self.broken
        if (
            words is None
            or dl is None
            or al is None
            or not (dl.valid and al.valid)
            or self.in_order
            or type(self)._take is not SplitDriverQueue._take
        ):
            for out, in_, token in chains:
                heads.append(self.add(out, in_, token))
            return heads
        free, inflight = self.free, self.inflight
        view, pack_into = dl.view, self._desc.pack_into
        a16 = words[0]
        mask = self._mask
        idx = start = self.avail_idx
        try:
            for out, in_, token in chains:
                if len(out) + len(in_) != 1 or not free:  # add() decides about indirect
                    if idx != start:  # publish what came before, then the general path
                        self.avail_idx = idx
                        a16[_IDX_W16] = idx
                    heads.append(self.add(out, in_, token))  # QueueFullError when full
                    idx = start = self.avail_idx
                    continue
                head = free.pop()
                if out:
                    (a, n), fl, writable_len = out[0], 0, 0
                else:
                    (a, n), fl = in_[0], _WRITE
                    writable_len = n
                pack_into(view, head * _DESC_SIZE, a, n, fl, 0)
                inflight[head] = _Inflight(token, [head], writable_len, None)
                a16[_AVAIL_W16 + (idx & mask)] = head
                idx = (idx + 1) & IDX_MASK
                heads.append(head)
        finally:
            if idx != start:
                self.avail_idx = idx
                a16[_IDX_W16] = idx  # the index last: every chain before it is complete
        return heads

    def get_used_batch(self) -> list[tuple[Any, int]]:
        """Every used element published so far, each checked as get_used() checks it.

        A device error part-way returns the good completions before it; the driver is
        then broken and the next call raises, as get_used() would."""
        if self.broken:
            raise self.broken
        done: list[tuple[Any, int]] = list(self._completed)
        self._completed.clear()
        ul, words = self._ul, self._words
        if self.in_order or words is None or ul is None or not ul.valid:
            try:
                while (r := self.get_used()) is not None:
                    done.append(r)
            except DeviceBrokenError:
                if not done:
                    raise
            return done
        last = self.last_used
        used_idx: int = words[1][_IDX_W16]
        ahead = (used_idx - last) & IDX_MASK
        inflight = self.inflight
        if ahead > len(inflight):
            err = self._mark_broken(
                "used-idx-jump",
                f"used idx {used_idx} is {ahead} ahead but only {len(inflight)} in flight",
            )
            if not done:
                raise err
            return done
        u32, mask, size, free = words[2], self._mask, self.size, self.free
        plain_release = type(self)._release is SplitDriverQueue._release
        for _ in range(ahead):
            w = _ELEM_W32 + _ELEM_WORDS * (last & mask)
            head, length = u32[w], u32[w + 1]
            st = inflight.get(head) if head < size else None
            if st is None:
                err = self._mark_broken("used-bad-id", f"used id {head} is not an in-flight head")
                break
            if length > st.writable_len:
                err = self._mark_broken(
                    "used-bad-len",
                    f"used len {length} > writable length {st.writable_len} of head {head}",
                )
                break
            last = (last + 1) & IDX_MASK
            self.last_used = last
            del inflight[head]
            descs = st.descs
            if len(descs) == 1 and plain_release:
                free.append(descs[0])
            else:
                self._release(descs)
            if st.indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(st.indirect)
            done.append((st.token, length))
        else:
            return done
        if not done:
            raise err
        return done

    def _add_direct(self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]], token: Any) -> int:
        """add() without indirect tables, writing through the ring leases (held valid)."""
        assert self._dl is not None and self._al is not None
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

    def _used_u16(self, offset: int) -> int:
        """A 16-bit word of the used ring (through the lease when there is one)."""
        ul = self._ul
        if ul is not None and ul.valid:
            value: int = self._idx.unpack_from(ul.view, offset)[0]
            return value
        return self._read_u16(self.gpa.used + offset)

    def kick_prepare(self) -> bool:
        """Whether the device wants a notification for what was added since the last kick."""
        old, new = self._kicked_avail, self.avail_idx
        self._kicked_avail = new
        if old == new:
            return False
        if self.event_idx:
            event = self._used_u16(layouts.avail_event_offset(self.size))
            return need_event(event, new, old)
        return not self._used_u16(0) & USED_F.NO_NOTIFY

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
        ul = self._ul
        if ul is not None and ul.valid and not self.in_order:
            # Through the used-ring lease, without IN_ORDER: the same checks as below.
            view = ul.view
            last = self.last_used
            words = self._words
            used_idx: int = (
                words[1][_IDX_W16] if words is not None else self._idx.unpack_from(view, _IDX_OFF)[0]
            )
            if used_idx == last:
                return None
            inflight = self.inflight
            ahead = (used_idx - last) & IDX_MASK
            if ahead > len(inflight):
                raise self._mark_broken(
                    "used-idx-jump",
                    f"used idx {used_idx} is {ahead} ahead but only {len(inflight)} in flight",
                )
            if words is not None:
                w = _ELEM_W32 + _ELEM_WORDS * (last & self._mask)
                u32 = words[2]
                head, length = u32[w], u32[w + 1]
            else:
                head, length = self._elem.unpack_from(view, _HDR + _USED_STRIDE * (last & self._mask))
            st = inflight.get(head) if head < self.size else None
            if st is None:
                raise self._mark_broken("used-bad-id", f"used id {head} is not an in-flight head")
            if length > st.writable_len:
                raise self._mark_broken(
                    "used-bad-len",
                    f"used len {length} > writable length {st.writable_len} of head {head}",
                )
            self.last_used = (last + 1) & IDX_MASK
            del inflight[head]
            descs = st.descs
            if len(descs) == 1 and type(self)._release is SplitDriverQueue._release:
                self.free.append(descs[0])
            else:
                self._release(descs)
            if st.indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(st.indirect)
            return st.token, length
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
