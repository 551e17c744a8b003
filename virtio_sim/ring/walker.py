"""One chain walker for split and packed rings: the descriptor rules of 2.7.5 and 2.8.

Why one: the rules a device applies to a chain (a bounded walk, the switch to an indirect
table, and the same check on every segment: READ after WRITE, zero length, the 2^32-byte
limit, the address) are the same for both formats; only how the next descriptor is found
differs (split: the ``next`` field, bounded by a budget; packed: the following ring slots,
which the packed queue gathers first because each must carry this lap's wrap bits).

Violations go to a sink chosen by the user of the walker: :func:`raise_violation` (the
device rings: a :class:`RingError` that the device's error policy handles) or a
:class:`ViolationLog` (a checker that wants to record and go on). When the sink returns,
the walk of that chain stops and the walker returns None.

Model: rust-vmm virtio-queue keeps the queue state (indices), the descriptor chain
iterator and guest memory apart; here the queue classes keep the state, this walker is
the iterator with its checks, and :mod:`virtio_sim.ring.access` is the memory.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NoReturn, Protocol

from virtio_sim import layouts
from virtio_sim.dma import AddressSpace, DmaError
from virtio_sim.ring.chain import Chain, RingError
from virtio_sim.ring.types import CHAIN_BYTES_LIMIT
from virtio_sim.spec import DESC_F, PACKED_DESC_F

_DESC_SIZE = layouts.DESC_SIZE
assert layouts.PACKED_DESC_SIZE == _DESC_SIZE
_NEXT, _WRITE, _INDIRECT = DESC_F.NEXT, DESC_F.WRITE, DESC_F.INDIRECT
_P_NEXT, _P_WRITE, _P_INDIRECT = PACKED_DESC_F.NEXT, PACKED_DESC_F.WRITE, PACKED_DESC_F.INDIRECT
_PACKED_DESC = layouts.PACKED_DESC_CODEC


class ViolationSink(Protocol):
    """Where a walker reports a broken rule; returning stops the walk of that chain."""

    def __call__(self, violation: str, message: str, head: int | None) -> None: ...


def raise_violation(violation: str, message: str, head: int | None) -> NoReturn:
    """The device rings' sink: the violation is a :class:`RingError`."""
    raise RingError(violation, message, head)


class ViolationLog:
    """A sink that records every violation (as a RingError) and lets the caller go on."""

    def __init__(self) -> None:
        self.found: list[RingError] = []

    def __call__(self, violation: str, message: str, head: int | None) -> None:
        self.found.append(RingError(violation, message, head))


class ChainWalker:
    """Walks and validates chains for one queue (its address space, table size, rules).

    ``indirect``: VIRTIO_F_INDIRECT_DESC negotiated; ``strict``: the rules a lenient
    device lets pass (zero-length descriptors, INDIRECT without the feature, nested
    tables in packed rings, IN_ORDER next slots) are enforced; ``max_indirect``: the
    longest indirect table taken.
    """

    def __init__(
        self,
        space: AddressSpace,
        size: int,
        *,
        indirect: bool,
        strict: bool,
        max_indirect: int,
        in_order: bool = False,
        desc_codec: struct.Struct | None = None,
        sink: ViolationSink = raise_violation,
    ) -> None:
        self.space = space
        self.size = size
        self.indirect = indirect
        self.strict = strict
        self.max_indirect = max_indirect
        self.in_order = in_order
        self.desc_codec = desc_codec if desc_codec is not None else layouts.desc_codec("little")
        self.sink = sink
        #: split rings: the main-table slot after the chain last walked (IN_ORDER's next head)
        self.end_slot = 0

    # -- the rules every format shares ----------------------------------------------

    def segment(
        self,
        readable: list[tuple[int, int]],
        writable: list[tuple[int, int]],
        total: int,
        addr: int,
        length: int,
        is_write: int,
        head: int,
    ) -> int:
        """Check one buffer and add it to the chain; returns the new byte total, or -1
        when the sink took a violation."""
        if not is_write and writable:
            self.sink("readable-after-writable", "device-readable descriptor after a writable one", head)
            return -1
        if length == 0 and self.strict:
            self.sink("zero-length", "zero-length descriptor", head)
            return -1
        total += length
        if total > CHAIN_BYTES_LIMIT:
            self.sink("chain-too-big", "chain is longer than 2^32 bytes", head)
            return -1
        space = self.space
        w = getattr(space, "fast_window", None)
        if not (
            w is not None
            and w.lo <= addr
            and addr + length <= w.hi
            and (w.writable if is_write else w.readable)
            and w.valid
        ):
            try:
                space.check(addr, length, bool(is_write))
            except DmaError as e:
                self.sink("bad-address", str(e), head)
                return -1
        if length:
            (writable if is_write else readable).append((addr, length))
        return total

    def indirect_table(self, addr: int, length: int, flags: int, head: int, *, nested: bool) -> bytes | None:
        """Check an INDIRECT descriptor (split: ``nested`` inside a table) and read its
        table once; None when the sink took a violation."""
        if nested:
            self.sink("nested-indirect", "indirect descriptor inside an indirect table", head)
            return None
        if not self.indirect and self.strict:
            self.sink("indirect-not-negotiated", "INDIRECT used without VIRTIO_F_INDIRECT_DESC", head)
            return None
        if flags & _NEXT:  # the same bit in both formats
            self.sink("indirect-with-next", "INDIRECT and NEXT both set", head)
            return None
        if length == 0 or length % _DESC_SIZE:
            self.sink(
                "indirect-bad-length",
                f"indirect table length {length} is not a non-zero multiple of {_DESC_SIZE}",
                head,
            )
            return None
        entries = length // _DESC_SIZE
        if entries > self.max_indirect:
            self.sink(
                "indirect-too-large",
                f"indirect table has {entries} entries (limit {self.max_indirect})",
                head,
            )
            return None
        try:
            return self.space.read(addr, length)
        except DmaError as e:
            self.sink("bad-address", f"indirect table: {e}", head)
            return None

    # -- split rings (2.7.5) --------------------------------------------------------------

    def walk_split(
        self,
        head: int,
        table: bytes | memoryview | None,
        table_addr: int,
        first: tuple[int, int, int, int] | None = None,
    ) -> Chain | None:
        """Walk the chain at ``head`` by its ``next`` fields, from the descriptor table
        ``table`` (a lease view) or, when None, by checked reads at ``table_addr``.
        ``first`` is the head descriptor when the caller already read it (read once).

        The walk is bounded by a budget of the table size (a loop or an over-long chain
        is a violation, never a spin); an INDIRECT descriptor switches to its table with
        a budget of that table's entries."""
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        size = self.size
        table_entries = size
        in_table = False
        unpack_from = self.desc_codec.unpack_from
        in_order_strict = self.in_order and self.strict
        index = head
        indirect_slot = head  # where the INDIRECT descriptor sits in the main table
        budget = size  # descriptors left before the walk is a loop or an over-long chain
        total = 0
        descriptors = 0
        sink = self.sink
        while True:
            if index >= table_entries:
                sink("next-out-of-range", f"descriptor next {index} >= table size {table_entries}", head)
                return None
            budget -= 1
            if budget < 0:
                sink("chain-loop", f"chain from head {head} is longer than {size} descriptors", head)
                return None
            if first is not None:
                addr, length, flags, nxt = first
                first = None
            elif table is None:
                try:
                    raw = self.space.read(table_addr + index * _DESC_SIZE, _DESC_SIZE)
                except DmaError as e:
                    sink("ring-address", f"descriptor {index}: {e}", head)
                    return None
                addr, length, flags, nxt = self.desc_codec.unpack(raw)
            else:
                addr, length, flags, nxt = unpack_from(table, index * _DESC_SIZE)
            descriptors += 1
            if flags & _INDIRECT:
                indirect_slot = index
                new_table = self.indirect_table(addr, length, flags, head, nested=in_table)
                if new_table is None:
                    return None
                table, in_table = new_table, True
                table_entries = budget = length // _DESC_SIZE
                index = 0
                continue
            total = self.segment(readable, writable, total, addr, length, flags & _WRITE, head)
            if total < 0:
                return None
            if not flags & _NEXT:
                # a chain may start with plain descriptors before its INDIRECT one
                self.end_slot = ((indirect_slot if in_table else index) + 1) % size
                return Chain(head, readable, writable, descriptors)
            if in_order_strict and nxt != (index + 1) % table_entries:
                sink(
                    "in-order-next",
                    f"IN_ORDER descriptor {index} chains to {nxt}, not to the next slot",
                    head,
                )
                return None
            index = nxt

    def revisit(self, head: int, table_addr: int) -> int | None:
        """Split rings: the descriptor at which the main-table chain from ``head`` comes
        back to one it already used (a loop), or None (it ends, leaves the table, or turns
        to an indirect table first).

        Not part of a walk and never on the device's path: for a checker naming a chain
        the walk refused (a loop whose last descriptor is writable breaks READ before
        WRITE before the budget runs out, and the checker reports the loop)."""
        seen: set[int] = set()
        index = head
        while 0 <= index < self.size and index not in seen:
            seen.add(index)
            try:
                raw = self.space.read(table_addr + index * _DESC_SIZE, _DESC_SIZE)
            except DmaError:
                return None
            _addr, _length, flags, nxt = self.desc_codec.unpack(raw)
            if flags & _INDIRECT or not flags & _NEXT:
                return None
            index = nxt
        return index if index in seen else None

    # -- packed rings (2.8) ---------------------------------------------------------------

    def walk_packed(self, buf_id: int, descs: Sequence[tuple[int, int, int, int]]) -> Chain | None:
        """Check the segments of a packed chain whose ring descriptors (addr, len, id,
        flags) the queue already gathered (each available for its lap). Only the first
        may be INDIRECT; in its table the length is the chain length and only WRITE means
        anything (NEXT, ids and wrap bits are ignored; WRITE on the INDIRECT descriptor
        itself is ignored)."""
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        total = 0
        descriptors = len(descs)
        for i, (addr, length, _id, flags) in enumerate(descs):
            if not flags & _P_INDIRECT:
                total = self.segment(readable, writable, total, addr, length, flags & _P_WRITE, buf_id)
                if total < 0:
                    return None
                continue
            if i:
                self.sink("indirect-in-chain", "INDIRECT descriptor inside a chain of the ring", buf_id)
                return None
            table = self.indirect_table(addr, length, flags, buf_id, nested=False)
            if table is None:
                return None
            for k in range(length // _DESC_SIZE):
                t_addr, t_len, _tid, t_flags = _PACKED_DESC.unpack_from(table, k * _DESC_SIZE)
                descriptors += 1
                if t_flags & _P_INDIRECT and self.strict:
                    self.sink("nested-indirect", "indirect descriptor inside an indirect table", buf_id)
                    return None
                total = self.segment(readable, writable, total, t_addr, t_len, t_flags & _P_WRITE, buf_id)
                if total < 0:
                    return None
        return Chain(buf_id, readable, writable, descriptors)


__all__ = ["ChainWalker", "ViolationLog", "ViolationSink", "raise_violation"]
