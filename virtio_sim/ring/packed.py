"""Packed virtqueues (virtio 1.4 section 2.8), device side and driver side.

One descriptor ring carries both directions. The driver makes a descriptor available by
setting its AVAIL flag to the driver's wrap counter and USED to the inverse; the device
marks a buffer used by overwriting one descriptor with AVAIL == USED == the device's wrap
counter. Both wrap counters start at 1 and flip each time their side passes the ring end.
A chain's buffer id is in its last descriptor, and both sides skip over the whole chain
(its length in ring descriptors) when it is made available and when it is used, so used
descriptors are written in completion order at consecutive positions.

Positions are kept as free-running Python integers ("linear positions"): slot =
pos % size, wrap counter = start ^ (pos // size & 1). That makes every comparison exact:
an event suppression offset/wrap pair names one linear position in any window of two
laps, so "did the driver or device pass that descriptor" is a plain interval test, and no
queue size (powers of two or not, up to 32768) needs special cases.

Both sides trust nothing read back from shared memory, as for split rings:

* The device reads each descriptor once into a private copy. The walk is bounded by the
  queue size and by the slots not already in flight; every descriptor after the head must
  itself be available for its lap; the buffer id must be in range and not in flight;
  segments are checked against the device's :class:`AddressSpace`. Errors are
  :class:`RingError` with a violation name; once the buffer id is known (the structural
  walk succeeded) the chain is consumed, so a drop policy can complete it with length 0.
* The driver checks each used descriptor against its own record of buffers in flight
  (id known, length not above the writable part) and raises :class:`DeviceBrokenError`.

VIRTIO_F_IN_ORDER: the device holds completions until all older buffers are done, and
with ``batch_in_order`` writes one used descriptor for a run of them (id of the last,
placed at the first's position, skipping the whole run); the driver completes every
older in-flight buffer when it sees a later id, reporting the skipped ones as fully
written (their whole writable length).
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from virtio_sim import layouts
from virtio_sim.dma import AddressSpace, DmaError
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess, Lease
from virtio_sim.ring.access import NO_LEASE, NO_WINDOW, RingMemory
from virtio_sim.ring.batch import DeviceBatchCalls, DriverBatchCalls
from virtio_sim.ring.chain import Chain, DeviceBrokenError, DmaBuffer, DmaPool, RingError, make_chain
from virtio_sim.ring.hooks import DeviceHooks, DriverHooks
from virtio_sim.ring.types import NO_FEATURES, QueueFullError, RingAddresses, RingFeatures
from virtio_sim.ring.walker import ChainWalker
from virtio_sim.spec import PACKED, PACKED_DESC_F, PACKED_EVENT, PACKED_EVENT_F

# desc = descriptor ring, avail = driver event suppression (the driver area),
# used = device event suppression (the device area): the transports' three addresses.
PackedRingAddresses = RingAddresses

_DESC = layouts.PACKED_DESC_CODEC
_EVENT = layouts.EVENT_SUPPRESS_CODEC
_U16 = layouts.PACKED_U16_CODEC
_DESC_SIZE = layouts.PACKED_DESC_SIZE
_LEN_OFF = layouts.PACKED_DESC_OFFSETS["len"]
_FLAGS_OFF = layouts.PACKED_DESC_OFFSETS["flags"]
_EV_FLAGS_OFF = layouts.EVENT_SUPPRESS_OFFSETS["flags"]
_EV_DESC_OFF = layouts.EVENT_SUPPRESS_OFFSETS["desc"]
_AVAIL_USED = PACKED_DESC_F.AVAIL | PACKED_DESC_F.USED
_F_AVAIL, _F_USED = PACKED_DESC_F.AVAIL, PACKED_DESC_F.USED
_F_NEXT, _F_WRITE, _F_INDIRECT = PACKED_DESC_F.NEXT, PACKED_DESC_F.WRITE, PACKED_DESC_F.INDIRECT
_WRAP_START = PACKED.wrap_counter_start
# The descriptor's fields before the flags, and (len, id): written ahead of the flags word.
_BODY = struct.Struct(_DESC.format[:4])  # (addr, len, id)
_LEN_ID = struct.Struct(_DESC.format[0] + _DESC.format[2:4])  # (len, id)
assert _BODY.size == _FLAGS_OFF and _LEN_ID.size == _FLAGS_OFF - _LEN_OFF
# The flags of an available / a used descriptor by lap parity (pos // size & 1): a table
# instead of the wrap-counter arithmetic on every call.
_AVAIL_BY_LAP = tuple(_F_AVAIL if _WRAP_START ^ lap else _F_USED for lap in (0, 1))
_USED_BY_LAP = tuple(_AVAIL_USED if _WRAP_START ^ lap else 0 for lap in (0, 1))
# The flags word of descriptor ``slot`` in the ring seen as native u16 (little-endian hosts).
_DESC_W16 = _DESC_SIZE // 2
_FLAGS_W16 = _FLAGS_OFF // 2
_NATIVE_LE = sys.byteorder == "little" and struct.calcsize("H") == 2


def check_packed_queue_size(size: int) -> None:
    """Any size from 1 to 32768; packed rings need no power of two (2.8.10)."""
    if size < 1 or size > PACKED.max_queue_size:
        raise ValueError(f"packed queue size {size} must be in 1..{PACKED.max_queue_size}")


def lap_wrap(pos: int, size: int) -> int:
    """The wrap counter that goes with linear position ``pos``."""
    return PACKED.wrap_counter_start ^ (pos // size & 1)


def avail_flags(pos: int, size: int) -> int:
    """AVAIL = wrap counter, USED = its inverse: 'made available in this lap'."""
    return PACKED_DESC_F.AVAIL if lap_wrap(pos, size) else PACKED_DESC_F.USED


def used_flags(pos: int, size: int) -> int:
    """AVAIL == USED == wrap counter: 'used in this lap'."""
    return _AVAIL_USED if lap_wrap(pos, size) else 0


def is_avail(flags: int, pos: int, size: int) -> bool:
    return flags & _AVAIL_USED == avail_flags(pos, size)


def is_used(flags: int, pos: int, size: int) -> bool:
    return flags & _AVAIL_USED == used_flags(pos, size)


def off_wrap(pos: int, size: int) -> int:
    """The event suppression ``desc`` word naming linear position ``pos``."""
    return pos % size | lap_wrap(pos, size) << PACKED_EVENT.wrap_shift


def event_position(word: int, near: int, size: int) -> int | None:
    """The linear position named by an off_wrap word: the first one at or after ``near``.

    None when the offset is not a slot of this ring (a malformed word).
    """
    off = word & PACKED_EVENT.off_mask
    if off >= size:
        return None
    wrap = word >> PACKED_EVENT.wrap_shift & 1
    base = off + (0 if wrap == PACKED.wrap_counter_start else size)
    return near + (base - near) % (2 * size)


def event_crossed(word: int, old: int, new: int, size: int) -> bool:
    """Did moving from ``old`` to ``new`` pass the descriptor named by ``word``?

    The packed analogue of vring_need_event(). A malformed word counts as crossed: a
    spurious notification is harmless, a missing one hangs the other side.
    """
    event = event_position(word, old, size)
    return event is None or event < new


class _Desc(NamedTuple):
    addr: int
    len: int
    id: int
    flags: int


# --------------------------------------------------------------------------- device side


class PackedDeviceQueue(DeviceBatchCalls):
    """The device's view of one packed virtqueue."""

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
        check_packed_queue_size(size)
        if order != "little":
            raise ValueError("packed rings exist only with VERSION_1, which is little-endian")
        self.space = space
        self.published = 0
        self.size = size
        self.addrs = addrs
        self.features = features
        self.event_idx = features.event_idx
        self.indirect = features.indirect
        self.in_order = features.in_order
        self.batch_in_order = features.batch_in_order
        self.strict = features.strict
        self.hooks: DeviceHooks | None = None  # see virtio_sim.ring.hooks
        self.max_indirect = max_indirect if max_indirect is not None else size
        self.walker = ChainWalker(
            space, size, indirect=self.indirect, strict=self.strict, max_indirect=self.max_indirect
        )
        self.warnings: list[str] = []
        # buffer id -> ring descriptors the chain occupied (what the used side skips): an
        # int per buffer, not a record (one record per request was a tenth of the ring's time)
        self._buffers: dict[int, int] = {}
        self._order: deque[int] = deque()  # IN_ORDER: ids in the order they were made available
        self._writable: dict[int, int] = {}  # IN_ORDER: id -> writable length (batches need it)
        self._written: dict[int, int] = {}  # IN_ORDER: id -> written, pushed but held back
        self._ready: list[int] = []  # IN_ORDER: pushed ids whose used descriptor is not written
        self._pending_error: RingError | None = None  # pop_batch(): raised by the next pop
        self.reset()
        self._check_ring_memory()
        self.mem = RingMemory(space)  # leases or checked accesses (packed rings: little-endian)
        # what pop() reads the buffer window from (a space without one: never a window)
        self._wspace = space if hasattr(space, "fast_window") else NO_WINDOW
        self._dl: Lease = NO_LEASE  # descriptor ring (read and written)
        self._el: Lease = NO_LEASE  # driver event suppression (read)
        self._d16: memoryview | None = None  # the descriptor ring lease as native u16
        self._take_leases()

    def _take_leases(self) -> None:
        """Direct windows on the descriptor ring and the driver's event area, where the
        space offers them; every use checks ``valid`` and falls back to checked accesses
        (see :class:`~virtio_sim.memory.Lease`)."""
        mem = self.mem
        if mem.leasable:
            a = self.addrs
            self._dl = dl = mem.lease(a.desc, layouts.packed_ring_size(self.size), True)
            self._el = mem.lease(a.avail, layouts.EVENT_SUPPRESS_SIZE, False)
            self._d16 = dl.view.cast("H") if dl.valid and _NATIVE_LE else None

    def reset(self) -> None:
        """Back to the state of a freshly enabled queue: slot 0, both wrap counters 1."""
        self._avail_pos = 0  # next descriptor to read
        self._used_pos = 0  # next used descriptor to write
        self._in_flight_descs = 0
        self._signalled = 0
        self._signalled_valid = False
        self._last_claim = 0  # NOTIFICATION_DATA claims never go back
        self._pending_error = None
        self._buffers.clear()
        self._order.clear()
        self._writable.clear()
        self._written.clear()
        self._ready.clear()

    def _check_ring_memory(self) -> None:
        a = self.addrs
        if self.strict and (
            a.desc % layouts.PACKED_DESC_ALIGN
            or a.avail % layouts.EVENT_SUPPRESS_ALIGN
            or a.used % layouts.EVENT_SUPPRESS_ALIGN
        ):
            raise RingError(
                "ring-alignment",
                f"packed ring areas {a.desc:#x}/{a.avail:#x}/{a.used:#x} are not aligned"
                f" to {layouts.PACKED_DESC_ALIGN}/{layouts.EVENT_SUPPRESS_ALIGN}",
            )
        try:
            self.space.check(a.desc, layouts.packed_ring_size(self.size), write=True)
            self.space.check(a.avail, layouts.EVENT_SUPPRESS_SIZE, write=False)
            self.space.check(a.used, layouts.EVENT_SUPPRESS_SIZE, write=True)
        except DmaError as e:
            raise RingError("ring-address", f"ring memory is not accessible: {e}") from None

    # -- positions ------------------------------------------------------------

    @property
    def last_avail(self) -> int:
        return self._avail_pos % self.size

    @property
    def avail_wrap(self) -> int:
        return lap_wrap(self._avail_pos, self.size)

    @property
    def used_idx(self) -> int:
        return self._used_pos % self.size

    @property
    def used_wrap(self) -> int:
        return lap_wrap(self._used_pos, self.size)

    @property
    def in_flight(self) -> dict[int, int]:
        """Buffer ids popped and not yet written back as used (-> their ring descriptors)."""
        return self._buffers

    # -- reading ----------------------------------------------------------------

    def _read_desc(self, pos: int) -> _Desc:
        slot = pos % self.size
        raw = self.mem.read(self.addrs.desc + slot * _DESC_SIZE, _DESC_SIZE, f"descriptor {slot}")
        return _Desc(*_DESC.unpack(raw))

    def _flags_at(self, pos: int) -> int:
        slot = pos % self.size
        addr = self.addrs.desc + slot * _DESC_SIZE + _FLAGS_OFF
        return self.mem.read_u16(addr, f"descriptor {slot} flags")

    def has_available(self) -> bool:
        if self._pending_error is not None:
            return True
        return is_avail(self._flags_at(self._avail_pos), self._avail_pos, self.size)

    def pop(self) -> Chain | None:
        """The next available chain, validated, or None when nothing new is available."""
        if self._pending_error is not None:
            err, self._pending_error = self._pending_error, None
            raise err
        pos, size = self._avail_pos, self.size
        dl = self._dl
        if not dl.valid:
            self._take_leases()
            dl = self._dl
            if not dl.valid:
                return self._pop_from(pos, self._read_desc(pos))
        raw: tuple[int, int, int, int] = _DESC.unpack_from(dl.view, pos % size * _DESC_SIZE)
        addr, length, buf_id, flags = raw
        if flags & _AVAIL_USED != _AVAIL_BY_LAP[pos // size & 1]:
            return None  # not made available in this lap
        if flags & (_F_NEXT | _F_INDIRECT) or not length:
            return self._pop_from(pos, _Desc(*raw))
        # A one-descriptor buffer (the common request): the same checks, in pop's order.
        if self._in_flight_descs >= size:
            raise RingError("ring-overrun", f"slot {pos % size} made available while every slot is in flight")
        if buf_id >= size:
            raise RingError("buffer-id-out-of-range", f"buffer id {buf_id} >= queue size {size}")
        buffers = self._buffers
        if buf_id in buffers:
            raise RingError("buffer-id-in-flight", f"buffer id {buf_id} made available twice")
        self._avail_pos = pos + 1
        self._in_flight_descs += 1
        buffers[buf_id] = 1
        is_write = flags & _F_WRITE
        if self.in_order:
            self._order.append(buf_id)
            self._writable[buf_id] = length if is_write else 0
        # inside the space's window the buffer check is two comparisons
        w = self._wspace.fast_window
        if is_write:
            if w is None or not (w.valid and w.writable and w.lo <= addr and addr + length <= w.hi):
                self._check_buffer(buf_id, addr, length, True)
            return make_chain(Chain, (buf_id, [], [(addr, length)], 1))
        if w is None or not (w.valid and w.readable and w.lo <= addr and addr + length <= w.hi):
            self._check_buffer(buf_id, addr, length, False)
        return make_chain(Chain, (buf_id, [(addr, length)], [], 1))

    def _check_buffer(self, buf_id: int, addr: int, length: int, write: bool) -> None:
        """The address space's check of a one-descriptor buffer (outside the window); a
        refused buffer counts as not writable (what an IN_ORDER batch skips by)."""
        try:
            self.space.check(addr, length, write=write)
        except DmaError as e:
            if self.in_order:
                self._writable[buf_id] = 0
            raise RingError("bad-address", str(e), buf_id) from None

    def _pop_from(self, pos: int, first: _Desc) -> Chain | None:
        """pop() for any chain, its head descriptor already read (once)."""
        size = self.size
        if not is_avail(first.flags, pos, size):
            return None
        room = size - self._in_flight_descs  # slots the driver may legally have filled
        descs = [first]
        while descs[-1].flags & PACKED_DESC_F.NEXT:
            n = len(descs)
            if n >= size:
                raise RingError(
                    "chain-too-long", f"chain at slot {pos % size} is longer than the ring ({size})"
                )
            if n >= room:
                raise RingError(
                    "ring-overrun",
                    f"chain at slot {pos % size} runs into {size - room} slots still in flight",
                )
            p = pos + n
            d = self._read_desc(p)
            if not is_avail(d.flags, p, size):
                raise RingError(
                    "desc-wrap-bits",
                    f"descriptor {n} of the chain at slot {pos % size} (slot {p % size}) is not"
                    f" available for wrap counter {lap_wrap(p, size)} (flags {d.flags:#06x})",
                )
            descs.append(d)
        if room < len(descs):
            raise RingError("ring-overrun", f"slot {pos % size} made available while every slot is in flight")
        buf_id = descs[-1].id
        if buf_id >= size:
            raise RingError("buffer-id-out-of-range", f"buffer id {buf_id} >= queue size {size}")
        if buf_id in self._buffers:
            # No head attached: completing it would complete the first buffer too.
            raise RingError("buffer-id-in-flight", f"buffer id {buf_id} made available twice")
        # Consumed from here on, even if malformed, so that a drop policy can complete it.
        self._avail_pos += len(descs)
        self._in_flight_descs += len(descs)
        self._buffers[buf_id] = len(descs)
        if self.in_order:
            self._order.append(buf_id)
            self._writable[buf_id] = 0  # until the walk succeeds
        chain = self.walker.walk_packed(buf_id, descs)
        assert chain is not None  # the walker's sink raises
        if self.in_order:
            self._writable[buf_id] = chain.writable_len
        return chain

    # -- completing ---------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Mark buffer ``head`` used with ``written`` bytes.

        Without IN_ORDER the used descriptor is written at once. With it, completions wait
        until every older buffer is complete and are then written (one by one, or as one
        batch entry at the next flush() when ``batch_in_order``).
        """
        if self.in_order:
            if head not in self._buffers or head in self._written:
                raise ValueError(f"device bug: buffer {head} is not in flight")
            self._written[head] = written
            order = self._order
            while order and order[0] in self._written:
                self._ready.append(order.popleft())  # in flight until written
            if not self.batch_in_order:
                self.flush()
            return
        descs = self._buffers.pop(head, None)
        if descs is None:
            raise ValueError(f"device bug: buffer {head} is not in flight")
        dl = self._dl
        # write_used() through the lease, unless hooks are set
        if dl.valid and self.hooks is None:
            self.published += 1
            pos, size = self._used_pos, self.size
            slot = pos % size
            flags = _USED_BY_LAP[pos // size & 1] | (_F_WRITE if written else 0)
            _LEN_ID.pack_into(dl.view, slot * _DESC_SIZE + _LEN_OFF, written, head)  # len and id,
            d16 = self._d16  # then the flags
            if d16 is not None:
                d16[slot * _DESC_W16 + _FLAGS_W16] = flags
            else:
                _U16.pack_into(dl.view, slot * _DESC_SIZE + _FLAGS_OFF, flags)
            self._used_pos = pos + descs
            self._in_flight_descs -= descs
            return
        self._publish(head, written, descs)

    def flush(self) -> None:
        """Write the held IN_ORDER completions; a batch ends at a short write."""
        ready, self._ready = self._ready, []
        written_of, writable_of = self._written, self._writable
        while ready:
            n = 0
            while n + 1 < len(ready) and self.batch_in_order:
                buf_id = ready[n]
                if written_of[buf_id] != writable_of[buf_id]:
                    break  # skipped buffers count as fully written: only full ones join
                n += 1
            batch, ready = ready[: n + 1], ready[n + 1 :]
            skip = written = 0
            for buf_id in batch:
                skip += self._buffers.pop(buf_id)
                writable_of.pop(buf_id, None)
                written = written_of.pop(buf_id)
            self._publish(batch[-1], written, skip)

    def _publish(self, buf_id: int, written: int, skip: int) -> None:
        hooks = self.hooks
        if hooks is None:
            self.write_used(buf_id, written, skip)
        else:
            hooks.write_used(self, buf_id, written, skip)

    def write_used(self, buf_id: int, written: int, skip: int) -> None:
        """Write one used descriptor at the used position and skip ``skip`` ring slots:
        len and id first, then the flags. No check: push() checked ``buf_id``; hooks and
        attacks call this directly."""
        self.published += 1  # used entries written: progress the core can see
        pos = self._used_pos
        flags = used_flags(pos, self.size) | (PACKED_DESC_F.WRITE if written else 0)
        raw = _DESC.pack(0, written, buf_id, flags)
        addr = self.addrs.desc + (pos % self.size) * _DESC_SIZE
        mem = self.mem
        mem.write(addr + _LEN_OFF, raw[_LEN_OFF:_FLAGS_OFF], "used descriptor", buf_id)  # len and id,
        mem.write(addr + _FLAGS_OFF, raw[_FLAGS_OFF:], "used descriptor", buf_id)  # then the flags
        self._used_pos += skip
        self._in_flight_descs -= skip

    # -- notifications ----------------------------------------------------------

    def _read_event(self, addr: int) -> tuple[int, int]:
        el = self._el
        if addr == self.addrs.avail and el.valid:
            word, flags = _EVENT.unpack_from(el.view, 0)
            return word, flags
        raw = self.mem.read(addr, layouts.EVENT_SUPPRESS_SIZE, "event suppression")
        word, flags = _EVENT.unpack(raw)
        return word, flags

    def needs_interrupt(self) -> bool:
        """Whether the driver event suppression asks for an interrupt for what was used."""
        wanted = self._needs_interrupt()
        hooks = self.hooks
        return wanted if hooks is None else hooks.needs_interrupt(self, wanted)

    def _needs_interrupt(self) -> bool:
        if self._ready:
            self.flush()
        old, new = self._signalled, self._used_pos
        valid = self._signalled_valid
        self._signalled, self._signalled_valid = new, True
        word, flags = self._read_event(self.addrs.avail)
        mode = flags & PACKED_EVENT.flags_mask
        if mode == PACKED_EVENT_F.DISABLE:
            return False
        if mode == PACKED_EVENT_F.ENABLE:
            return True
        if mode != PACKED_EVENT_F.DESC or not self.event_idx:
            self.warnings.append(f"driver event suppression flags {flags:#x} are not valid")
            return True
        return not valid or event_crossed(word, old, new, self.size)

    def set_notification(self, enable: bool) -> None:
        """Tell the driver whether (and with EVENT_IDX, from where) to notify."""
        base, what = self.addrs.used, "device event suppression"
        if not enable:
            mode = PACKED_EVENT_F.DISABLE
        elif self.event_idx:
            self.mem.write_u16(
                base + _EV_DESC_OFF, off_wrap(self._avail_pos, self.size), what
            )  # offset first
            mode = PACKED_EVENT_F.DESC
        else:
            mode = PACKED_EVENT_F.ENABLE
        self.mem.write_u16(base + _EV_FLAGS_OFF, mode, what)

    def check_notify_data(self, next_off: int, next_wrap: int) -> str | None:
        """Compare a NOTIFICATION_DATA claim with the ring.

        The claim says every descriptor before (next_off, next_wrap) is available. A claim
        behind what the device already consumed is stale, not wrong (the driver may have
        added more before the device got to the notification), but claims never go back,
        never exceed the ring, and never name descriptors that are not available.
        """
        size = self.size
        if next_off >= size:
            return f"next_off {next_off} is not a slot of a {size}-entry ring"
        word = next_off | next_wrap << PACKED_EVENT.wrap_shift
        claim = event_position(word, self._avail_pos - size, size)
        assert claim is not None
        where = f"next_off {next_off} next_wrap {next_wrap}"
        if claim < self._last_claim:
            return f"{where} goes back behind an earlier notification or the ring start"
        if claim - self._used_pos > size:
            return f"{where} is more than the ring ahead of the used position"
        for p in range(self._avail_pos, claim):
            if not is_avail(self._flags_at(p), p, size):
                return f"{where} but slot {p % size} is not available"
        self._last_claim = claim
        return None


# --------------------------------------------------------------------------- driver side


class _DrvBuffer(NamedTuple):
    """A buffer the driver made available (a tuple: built in C by :data:`_new_drv_buffer`)."""

    token: Any
    descs: int  # ring descriptors it occupies
    writable_len: int
    indirect: DmaBuffer | None


_new_drv_buffer: Callable[[type[_DrvBuffer], tuple[Any, int, int, DmaBuffer | None]], _DrvBuffer] = (
    tuple.__new__
)


class PackedDriverQueue(DriverBatchCalls):
    """The driver's side of one packed virtqueue, in the spirit of Linux's virtio_ring."""

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
        check_packed_queue_size(size)
        if order != "little":
            raise ValueError("packed rings exist only with VERSION_1, which is little-endian")
        self.memory = memory
        self.size = size
        self.gpa = ring_gpa
        self.features = features
        self.event_idx = features.event_idx
        self.indirect_pool = indirect_pool  # indirect tables come from here (None: none)
        self.in_order = features.in_order
        self.hooks: DriverHooks | None = None  # see virtio_sim.ring.hooks
        self.on_broken = on_broken
        self.broken: DeviceBrokenError | None = None
        #: used descriptors with a non-zero len but WRITE clear (QEMU 7.2 writes every one
        #: so); the len was used, as Linux uses it: evidence for conformance reports
        self.len_without_write = 0
        self.free_ids: list[int] = list(range(size - 1, -1, -1))  # stack; 0 comes first
        self.inflight: dict[int, _DrvBuffer] = {}  # insertion order == avail order
        self._free = size
        self._avail_pos = 0
        self._kicked_pos = 0
        self._used_pos = 0
        self._completed: deque[tuple[Any, int]] = deque()  # rest of an IN_ORDER batch
        self._init_rings()
        self.mem = RingMemory(memory)  # leases or plain reads/writes (little-endian)
        self._dl: Lease = NO_LEASE
        self._ul: Lease = NO_LEASE  # the device event suppression area (read)
        self._d16: memoryview | None = None  # the descriptor ring lease as native u16
        self._take_leases()

    def _take_leases(self) -> None:
        """Direct windows on the descriptor ring and the device's event suppression area
        in guest RAM (the driver's own memory)."""
        if self.mem.leasable:
            self._dl = dl = self.mem.lease(self.gpa.desc, layouts.packed_ring_size(self.size), True)
            self._ul = self.mem.lease(self.gpa.used, layouts.EVENT_SUPPRESS_SIZE, False)
            self._d16 = dl.view.cast("H") if dl.valid and _NATIVE_LE else None

    def _init_rings(self) -> None:
        """Zeroed rings: nothing available, and both event structures say ENABLE."""
        self.memory.write(self.gpa.desc, bytes(layouts.packed_ring_size(self.size)))
        self.memory.write(self.gpa.avail, bytes(layouts.EVENT_SUPPRESS_SIZE))
        self.memory.write(self.gpa.used, bytes(layouts.EVENT_SUPPRESS_SIZE))

    @property
    def num_free(self) -> int:
        return self._free

    @property
    def next_avail(self) -> int:
        return self._avail_pos % self.size

    @property
    def avail_wrap(self) -> int:
        return lap_wrap(self._avail_pos, self.size)

    @property
    def last_used(self) -> int:
        return self._used_pos % self.size

    @property
    def used_wrap(self) -> int:
        return lap_wrap(self._used_pos, self.size)

    def _desc_addr(self, pos: int) -> int:
        return self.gpa.desc + (pos % self.size) * _DESC_SIZE

    def add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        token: Any,
        use_indirect: bool | None = None,
    ) -> int:
        """Make one buffer available; returns its buffer id.

        (``use_indirect`` may be passed by position: a keyword-only parameter makes
        CPython 3.11 call the function through its slow, unspecialised path.)"""
        if self.broken:
            raise self.broken
        if len(out) + len(in_) == 1 and not use_indirect and self.hooks is None:
            dl, free_ids = self._dl, self.free_ids
            if dl.valid and self._free and free_ids:
                # One descriptor through the lease (the common request): id, address and
                # length, then the head's flags (see _add for every other chain).
                pos, size = self._avail_pos, self.size
                if out:
                    a, n = out[0]
                    writable_len, fl = 0, _AVAIL_BY_LAP[pos // size & 1]
                else:
                    a, n = in_[0]
                    writable_len, fl = n, _F_WRITE | _AVAIL_BY_LAP[pos // size & 1]
                buf_id = free_ids.pop()
                slot = pos % size
                _BODY.pack_into(dl.view, slot * _DESC_SIZE, a, n, buf_id)
                d16 = self._d16  # the head's flags last
                if d16 is not None:
                    d16[slot * _DESC_W16 + _FLAGS_W16] = fl
                else:
                    _U16.pack_into(dl.view, slot * _DESC_SIZE + _FLAGS_OFF, fl)
                self._avail_pos = pos + 1
                self._free -= 1
                self.inflight[buf_id] = _new_drv_buffer(_DrvBuffer, (token, 1, writable_len, None))
                return buf_id
        hooks = self.hooks
        if hooks is not None:
            use_indirect = hooks.use_indirect(self, use_indirect)
            buf_id = self._add(out, in_, token, use_indirect)
            hooks.added(self, buf_id)
            return buf_id
        return self._add(out, in_, token, use_indirect)

    def next_free(self) -> int:
        """Take the ring's next free buffer id (the most recently freed one)."""
        return self.free_ids.pop()

    def _add(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        token: Any,
        use_indirect: bool | None,
    ) -> int:
        """add() for every chain the inline path does not take; leases revoked since
        are taken again for the next add()."""
        if not self._dl.valid:
            self._take_leases()
        w = PACKED_DESC_F.WRITE
        segs = [(a, n, 0) for a, n in out] + [(a, n, w) for a, n in in_]
        if not segs:
            raise ValueError("a chain needs at least one buffer")
        if use_indirect is None:
            use_indirect = self.indirect_pool is not None and len(segs) > 1
        if use_indirect and self.indirect_pool is None:
            raise ValueError("indirect descriptors were not negotiated")
        needed = 1 if use_indirect else len(segs)
        if needed > self._free:
            raise QueueFullError(f"buffer needs {needed} descriptors, {self._free} free")
        buf_id = self.next_free() if self.hooks is None else self.hooks.take(self)
        table: DmaBuffer | None = None
        if use_indirect:
            assert self.indirect_pool is not None
            table_len = _DESC_SIZE * len(segs)
            table = self.indirect_pool.alloc(table_len, _DESC_SIZE)
            entries = b"".join(_DESC.pack(a, n, 0, fl) for a, n, fl in segs)
            self.memory.write(table.gpa, entries)
            # The table is as long as the chain, not as the (possibly larger) pool buffer.
            descs = [(table.dev_addr, table_len, PACKED_DESC_F.INDIRECT)]
        else:
            nxt = PACKED_DESC_F.NEXT
            descs = [(a, n, fl | (nxt if i + 1 < len(segs) else 0)) for i, (a, n, fl) in enumerate(segs)]
        pos = self._avail_pos
        # Every descriptor after the head is complete before the head becomes available.
        for i in range(1, len(descs)):
            a, n, fl = descs[i]
            flags = fl | avail_flags(pos + i, self.size)
            self.memory.write(self._desc_addr(pos + i), _DESC.pack(a, n, buf_id, flags))
        a, n, fl = descs[0]
        raw = _DESC.pack(a, n, buf_id, fl | avail_flags(pos, self.size))
        head = self._desc_addr(pos)
        self.memory.write(head, raw[:_FLAGS_OFF])
        self.memory.write(head + _FLAGS_OFF, raw[_FLAGS_OFF:])  # the head's flags last
        self._avail_pos += len(descs)
        self._free -= len(descs)
        self.inflight[buf_id] = _DrvBuffer(token, len(descs), sum(n for _, n in in_), table)
        return buf_id

    def _read_event(self, addr: int) -> tuple[int, int]:
        ul = self._ul
        if addr == self.gpa.used and ul.valid:
            word, flags = _EVENT.unpack_from(ul.view, 0)
        else:
            word, flags = _EVENT.unpack(self.memory.read(addr, layouts.EVENT_SUPPRESS_SIZE))
        return word, flags

    def kick_prepare(self) -> bool:
        """Whether the device event suppression asks for a notification for what was added."""
        old, new = self._kicked_pos, self._avail_pos
        self._kicked_pos = new
        if old == new:
            wanted = False
        else:
            word, flags = self._read_event(self.gpa.used)
            mode = flags & PACKED_EVENT.flags_mask
            if mode == PACKED_EVENT_F.DESC and self.event_idx:
                wanted = event_crossed(word, old, new, self.size)
            else:
                wanted = mode != PACKED_EVENT_F.DISABLE
        hooks = self.hooks
        return wanted if hooks is None else hooks.kick(self, wanted)

    def notify_data(self) -> tuple[int, int]:
        return self.next_avail, self.avail_wrap

    def _mark_broken(self, violation: str, message: str) -> DeviceBrokenError:
        err = DeviceBrokenError(violation, message)
        self.broken = err
        if self.on_broken:
            self.on_broken(err)
        return err

    def more_used(self) -> bool:
        if self._completed:
            return True
        raw = self.memory.read(self._desc_addr(self._used_pos) + _FLAGS_OFF, 2)
        flags: int = _U16.unpack(raw)[0]
        return is_used(flags, self._used_pos, self.size)

    def get_used(self) -> tuple[Any, int] | None:
        """Reap one used buffer: (token, length), or None when nothing new was used."""
        if self.broken:
            raise self.broken
        if self._completed:
            return self._completed.popleft()
        pos, size = self._used_pos, self.size
        dl = self._dl
        if dl.valid:
            _addr, length, buf_id, flags = _DESC.unpack_from(dl.view, pos % size * _DESC_SIZE)
        else:
            _addr, length, buf_id, flags = _DESC.unpack(self.memory.read(self._desc_addr(pos), _DESC_SIZE))
        if flags & _AVAIL_USED != _USED_BY_LAP[pos // size & 1]:
            return None  # not used in this lap
        inflight = self.inflight
        state = inflight.get(buf_id)
        if state is None:
            raise self._mark_broken("used-bad-id", f"used id {buf_id} is not a buffer in flight")
        # len is taken as written even without WRITE, as Linux 6.1 does
        # (virtqueue_get_buf_ctx_packed reads desc[last_used].len unconditionally) and as
        # QEMU 7.2 needs (virtqueue_packed_fill_desc never sets WRITE). The spec's "driver
        # ignores len without WRITE" (2.8.4) is judged by conformance, not by the ring.
        if length and not flags & _F_WRITE:
            self.len_without_write += 1
        token, descs, writable_len, indirect = state
        if length > writable_len:
            raise self._mark_broken(
                "used-bad-len",
                f"used len {length} > writable length {writable_len} of buffer {buf_id}",
            )
        if not self.in_order:
            del inflight[buf_id]
            self._used_pos = pos + descs
            self._free += descs
            self.free_ids.append(buf_id)
            if indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(indirect)
            return token, length
        batch: list[int] = []
        for i in self.inflight:
            batch.append(i)
            if i == buf_id:
                break
        for i in batch:
            st = self.inflight.pop(i)
            self._used_pos += st.descs
            self._free += st.descs
            self.free_ids.append(i)
            if st.indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(st.indirect)
            self._completed.append((st.token, length if i == buf_id else st.writable_len))
        return self._completed.popleft()

    def enable_cb(self) -> bool:
        """Ask for interrupts again; True if used buffers are already pending (race check)."""
        base = self.gpa.avail
        if self.event_idx:
            word = off_wrap(self._used_pos, self.size)
            self.memory.write(base + _EV_DESC_OFF, _U16.pack(word))
            mode = PACKED_EVENT_F.DESC
        else:
            mode = PACKED_EVENT_F.ENABLE
        self.memory.write(base + _EV_FLAGS_OFF, _U16.pack(mode))
        return self.more_used()

    def disable_cb(self) -> None:
        self.memory.write(self.gpa.avail + _EV_FLAGS_OFF, _U16.pack(PACKED_EVENT_F.DISABLE))

    def detach_all(self) -> list[Any]:
        """After a device or queue reset: take back every buffer in flight, in avail order."""
        tokens = [s.token for s in self.inflight.values()]
        for i, s in self.inflight.items():
            self._free += s.descs
            self.free_ids.append(i)
            if s.indirect is not None and self.indirect_pool is not None:
                self.indirect_pool.free(s.indirect)
        self.inflight.clear()
        return tokens  # completions already taken off the ring stay for get_used()


__all__ = [
    "PackedDeviceQueue",
    "PackedDriverQueue",
    "PackedRingAddresses",
    "QueueFullError",
    "check_packed_queue_size",
    "event_crossed",
    "lap_wrap",
]
