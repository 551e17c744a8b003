"""Driver watch, rings family: the avail ring and every chain the driver makes available,
walked by the shared chain walker (virtio_sim/ring/walker.py) with a recording sink.

Split rings (2.7): avail idx never goes back, published entries are not changed while
live (read again within half the ring), an entry never names a descriptor not written
yet, avail.flags as the feature set allows, the legacy layout where the device expects
it, and IN_ORDER chains in ring order. Packed rings (2.8): driver event flags, the first
descriptor's wrap counter starting at 1 and the rest of the ring zeroed, every list
available with its head, within the queue size, and unchanged until used. The chain rules
themselves (bounded walk, next in range, READ before WRITE, indirect tables: feature,
not with NEXT, no nesting, the device's limit; IN_ORDER next slots) are the walker's, the
same the device rings apply; its violations map to driver ids through
:data:`WALK_VIOLATIONS`, and a device-found violation through :data:`RING_VIOLATIONS`.
A chain that walked clean goes to the device kind's framing rules.

Chains the device consumed before the watch looked (``RingView.consumed`` ahead of the
watch: vhost-user kicks coalesce) are counted in ``QueueState.consumed_unseen`` and not
judged: the driver may have completed them and reused their memory meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virtio_sim import layouts
from virtio_sim.devices.framing import Request
from virtio_sim.orchestration.conformance.driver_watch_base import Family, QueueState
from virtio_sim.ring.chain import Chain, RingError
from virtio_sim.ring.types import INDIRECT_TABLE_LIMIT
from virtio_sim.ring.view import RingView
from virtio_sim.ring.walker import ChainWalker, ViolationLog
from virtio_sim.spec import DESC_F, PACKED_DESC_F, PACKED_EVENT, PACKED_EVENT_F, F

if TYPE_CHECKING:
    from virtio_sim.orchestration.conformance.driver_watch import DriverWatch

IDX_MASK = 0xFFFF
IDX_HALF = 0x8000  # an idx that moved "forward" by more than this went backwards
#: how far back published avail entries are re-read for late changes: half the ring, so a
#: driver preparing its next entries (Linux prepares one at a time) is never mistaken
RECHECK_FRACTION = 2
#: a split indirect table has no limit of its own beyond its 32-bit length (the chain
#: length rule counts its entries against the queue size)
SPLIT_TABLE_LIMIT = (1 << 32) // layouts.DESC_SIZE
_PACKED_CODEC = layouts.fast_codec(layouts.PvirtqDesc)

#: device ring violation class -> (id on a split ring, id on a packed ring)
RING_VIOLATIONS: dict[str, tuple[str, str]] = {
    "chain-loop": ("split.desc.drv-chain-len-limit", "packed.sg.drv-queue-size-limit"),
    "next-out-of-range": ("split.chain.drv-max-queue-size", "packed.sg.drv-queue-size-limit"),
    "head-out-of-range": ("split.avail.drv-barrier-before-idx", "packed.wrap.drv-avail-encoding"),
    "nested-indirect": ("split.indirect.drv-no-nesting", "packed.indirect.drv-only-write-flag"),
    "indirect-with-next": ("split.indirect.drv-not-with-next", "packed.indirect.drv-not-in-list"),
    "indirect-not-negotiated": ("split.indirect.drv-feature", "packed.indirect.drv-feature"),
    "readable-after-writable": ("framing.drv.readable-before-writable", "packed.sg.drv-readable-first"),
    "avail-idx-jump": ("split.avail.idx-free-running", "packed.sg.drv-space-for-list"),
    "head-in-flight": ("split.avail.drv-barrier-before-idx", "packed.desc.drv-wait-used"),
    "too-many-in-flight": ("split.avail.idx-free-running", "packed.sg.drv-space-for-list"),
    "chain-too-big": ("split.desc.drv-chain-len-limit", "packed.sg.drv-device-limit"),
    "desc-wrap-bits": ("packed.wrap.drv-avail-encoding", "packed.wrap.drv-avail-encoding"),
    "chain-too-long": ("split.chain.drv-max-queue-size", "packed.sg.drv-queue-size-limit"),
    "ring-overrun": ("split.avail.idx-free-running", "packed.sg.drv-space-for-list"),
    "buffer-id-in-flight": ("packed.desc.drv-wait-used", "packed.desc.drv-wait-used"),
    "indirect-in-chain": ("packed.indirect.drv-not-in-list", "packed.indirect.drv-not-in-list"),
    "in-order-head": ("split.desc.drv-in-order-ring-order", "split.desc.drv-in-order-ring-order"),
    "in-order-next": ("split.desc.drv-in-order-next", "split.desc.drv-in-order-next"),
    "notify-data-mismatch": ("notify.data.content", "packed.notify.drv-next-off-wrap"),
    "console-rx-not-writable": ("framing.drv.readable-before-writable", "packed.sg.drv-readable-first"),
}
#: the watch's own walks: the device's table, plus the packed table limit the watch holds
#: the driver to (the device's own limit may be larger). Not mapped, so not judged: an
#: address the device cannot reach (the device reports it as it serves the chain), a
#: zero-length descriptor and a table length that is no multiple of 16 (no driver rule).
WALK_VIOLATIONS: dict[str, tuple[str, str]] = {
    **RING_VIOLATIONS,
    "indirect-too-large": ("split.chain.drv-max-queue-size", "packed.indirect.drv-device-limit"),
}


class RingRules(Family):
    CONDITIONS = {
        "split.usedsupp.drv-flags-zero-with-event-idx": "EVENT_IDX",
        "split.usedsupp.drv-flags-0-1": "!EVENT_IDX",
        "packed.sg.drv-queue-size-limit": "RING_PACKED",
        "packed.sg.drv-readable-first": "RING_PACKED",
        "packed.sg.drv-first-last": "RING_PACKED",
        "packed.wrap.drv-avail-encoding": "RING_PACKED",
        "packed.indirect.drv-feature": "RING_PACKED",
        "packed.indirect.drv-not-in-list": "RING_PACKED",
        "packed.indirect.drv-only-write-flag": "RING_PACKED",
        "packed.evsupp.reserved-zero": "RING_PACKED",
        "packed.evsupp.desc-needs-event-idx": "RING_PACKED",
        "split.avail.drv-no-decrement": "!RING_PACKED",
        "split.avail.idx-free-running": "!RING_PACKED",
        "split.avail.drv-barrier-before-idx": "!RING_PACKED",
        "split.chain.drv-max-queue-size": "!RING_PACKED",
        "split.desc.drv-chain-len-limit": "!RING_PACKED",
        "split.indirect.drv-feature": "!RING_PACKED",
        "split.indirect.drv-not-with-next": "!RING_PACKED",
        "split.indirect.drv-no-nesting": "!RING_PACKED",
        "split.desc.drv-in-order-next": "IN_ORDER",
        "split.desc.drv-in-order-ring-order": "IN_ORDER",
        "split.indirect.drv-in-order-sequential": "IN_ORDER",
        "packed.desc.zero-init": "RING_PACKED",
        "packed.wrap.init-one": "RING_PACKED",
        "packed.indirect.drv-device-limit": "RING_PACKED",
        "packed.sg.drv-device-limit": "RING_PACKED",
        "packed.desc.drv-no-change-after-avail": "RING_PACKED",
        "split.legacy.drv-native-endian": "!VERSION_1",
        "split.legacy.drv-fixed-layout": "!VERSION_1",
        "split.legacy.drv-size-and-alloc": "!VERSION_1",
        "mmio.legacy.queue-layout": "!VERSION_1",
        "pci.legacy.queue-pfn": "!VERSION_1",
    }

    chains = 0  # chains walked (made available and seen before the device took them)

    def __init__(self, watch: DriverWatch) -> None:
        super().__init__(watch)
        self.found = ViolationLog()  # the walker's sink

    # -- reading the rings ------------------------------------------------------------------

    @staticmethod
    def u16(view: RingView, addr: int) -> int:
        return int.from_bytes(view.space.read(addr, 2), view.order)

    @staticmethod
    def wrap(pos: int, size: int) -> int:
        """The driver's wrap counter at free-running descriptor position ``pos``."""
        return 1 ^ (pos // size) & 1

    def _walker(self, view: RingView, max_indirect: int, in_order: bool = False) -> ChainWalker:
        w = self.w
        return ChainWalker(
            view.space,
            view.size,
            indirect=w.has(F.INDIRECT_DESC),
            strict=True,
            max_indirect=max_indirect,
            in_order=in_order,
            desc_codec=layouts.desc_codec(view.order),
            sink=self.found,
        )

    def _violation(self, where: str, error: RingError, packed: bool, through_table: bool) -> None:
        """The walker refused the chain: the driver rule it breaks, or unmapped."""
        ids = WALK_VIOLATIONS.get(error.violation)
        message = str(error).removeprefix(f"{error.violation}: ")
        if ids is None:
            self.w.unmapped.append(f"{where}: {error}")
        elif error.violation == "in-order-next" and through_table:
            self.w.fail("split.indirect.drv-in-order-sequential", f"{where}: {message} (indirect table)")
        else:
            self.w.fail(ids[1] if packed else ids[0], f"{where}: {message}")

    def _request(self, where: str, view: RingView, chain: Chain) -> None:
        """A chain that walked clean, to the device kind's framing rules."""
        segments = [(a, n, False) for a, n in chain.readable] + [(a, n, True) for a, n in chain.writable]
        request = Request(where, view.index, view.order, view.space.read, segments)
        for framing in self.w.framings:
            framing.on_chain(request)

    # -- split rings ------------------------------------------------------------------------

    def scan_split(self, q: QueueState, view: RingView) -> int:
        """Read the avail ring at a notification; walk every entry published since."""
        w = self.w
        size = view.size
        flags = self.u16(view, view.driver)
        idx = self.u16(view, view.driver + layouts.RING_IDX_OFFSET)
        if w.has(F.EVENT_IDX):
            w.check(
                "split.usedsupp.drv-flags-zero-with-event-idx",
                flags == 0,
                f"queue {q.index}: avail.flags {flags:#x} with EVENT_IDX",
            )
        else:
            w.check(
                "split.usedsupp.drv-flags-0-1", flags in (0, 1), f"queue {q.index}: avail.flags {flags:#x}"
            )
        self.recheck_split(q, view, idx)
        if q.first_scan and w.legacy and w.transport != "vhost-user":
            q.first_scan = False
            self._legacy_layout(q, view, idx, flags)
        delta = (idx - q.seen) & IDX_MASK
        if delta >= IDX_HALF:
            w.fail(
                "split.avail.drv-no-decrement", f"queue {q.index}: avail idx went back from {q.seen} to {idx}"
            )
            q.seen = idx
            return idx
        if delta:
            # More than a ring's worth since the last look is fine when the device consumed
            # them meanwhile (kicks suppressed by EVENT_IDX, eventfd kicks coalesced); too
            # many outstanding at once is the device's "avail-idx-jump", mapped to the same id.
            w.ok("split.avail.drv-no-decrement", "split.avail.idx-free-running")
        first = q.seen if delta <= size else (idx - size) & IDX_MASK
        walker = self._walker(view, SPLIT_TABLE_LIMIT, in_order=w.has(F.IN_ORDER))
        for k in range(min(delta, size)):
            pos = (first + k) & IDX_MASK
            head = self.u16(view, view.driver + layouts.avail_entry_offset(pos % size))
            q.recent[pos] = head
            if view.consumed is not None and 0 < (view.consumed - pos) & IDX_MASK < IDX_HALF:
                q.consumed_unseen += 1  # the device took it before we looked: not ours to judge
                continue
            if head < size:
                self._walk_split(q, view, walker, head, in_order_check=delta <= size)
        q.seen = idx
        return idx

    def _legacy_layout(self, q: QueueState, view: RingView, idx: int, flags: int) -> None:
        """Legacy interfaces: the device finds the avail and used rings from the page frame
        number and the fixed layout (size from the device, used ring aligned). A driver with
        another layout or size leaves the device reading something else: at the first kick
        the avail idx must be a plausible count and the flags a defined value."""
        w = self.w
        ok = 0 < idx <= view.size and flags in (0, 1)
        why = (
            f"queue {q.index}: kicked, but the avail ring where the legacy layout of a"
            f" {view.size}-entry queue puts it reads idx {idx}, flags {flags:#x}"
            " (nothing published there: the driver laid its ring out otherwise)"
        )
        rules = ["split.legacy.drv-fixed-layout", "split.legacy.drv-size-and-alloc"]
        rules.append("mmio.legacy.queue-layout" if w.mmio else "pci.legacy.queue-pfn")
        for rule in rules:
            w.check(rule, ok, why)

    def recheck_split(self, q: QueueState, view: RingView, idx: int) -> None:
        """Entries published earlier (within half the ring of idx) must not have changed:
        a changed one was not in place when idx covered it (or was rewritten while live)."""
        w = self.w
        window = view.size // RECHECK_FRACTION
        for pos, head in list(q.recent.items()):
            if (idx - pos) & IDX_MASK > window:
                del q.recent[pos]
                continue
            now = self.u16(view, view.driver + layouts.avail_entry_offset(pos % view.size))
            if now != head:
                why = f"queue {q.index}: avail entry {pos} read {head} after idx covered it, later {now}"
                w.fail("split.avail.drv-barrier-before-idx", why)
                # from the device's side the same event: a published entry changed while live
                w.fail("cleanup.drv.no-touch-exposed", why)
                q.recent[pos] = now
            else:
                w.ok("split.avail.drv-barrier-before-idx", "cleanup.drv.no-touch-exposed")

    def _walk_split(
        self, q: QueueState, view: RingView, walker: ChainWalker, head: int, in_order_check: bool
    ) -> None:
        w = self.w
        self.chains += 1
        where = f"queue {q.index} head {head}"
        first = walker.desc_codec.unpack(
            view.space.read(view.desc + head * layouts.DESC_SIZE, layouts.DESC_SIZE)
        )
        if not any(first):
            # the driver zeroed the table at allocation: an entry naming an all-zero
            # descriptor was read before the driver wrote it (or the chain)
            w.fail(
                "split.avail.drv-barrier-before-idx",
                f"{where}: the avail entry names descriptor {head}, which is all zeroes (not written yet)",
            )
            return
        through_table = bool(first[2] & DESC_F.INDIRECT)  # the whole chain is one indirect table
        self.found.found.clear()
        chain = walker.walk_split(head, None, view.desc, first)
        if chain is None:
            loop = walker.revisit(head, view.desc)
            if loop is not None:  # a loop, whatever rule the walk hit before its budget ran out
                w.fail(
                    "split.desc.drv-chain-len-limit", f"{where}: descriptor {loop} is reached twice (a loop)"
                )
            else:
                self._violation(where, self.found.found[-1], False, through_table)
            return
        in_order = w.has(F.IN_ORDER)
        if through_table:
            w.ok("split.indirect.drv-no-nesting", "split.indirect.drv-not-with-next")
            if in_order and chain.descriptors > 2:
                w.ok("split.indirect.drv-in-order-sequential")
        elif in_order and chain.descriptors > 1:
            w.ok("split.desc.drv-in-order-next")
        if in_order and in_order_check:
            w.check(
                "split.desc.drv-in-order-ring-order",
                head == q.next_head,
                f"{where}: IN_ORDER chain starts at {head}, the next slot in ring order is {q.next_head}",
            )
        q.next_head = walker.end_slot
        w.ok("split.indirect.drv-feature")
        # The INDIRECT descriptor only points at the table: the chain's length is its
        # buffers (QEMU's seg_max = queue size - 2 counts header + segments + status, and
        # Linux 6.1's virtio_blk builds seg_max + 2 table entries)
        count = chain.descriptors - through_table
        w.check(
            "split.chain.drv-max-queue-size",
            count <= view.size,
            f"{where}: chain of {count} descriptors > queue size {view.size}",
        )
        w.ok(
            "split.desc.drv-chain-len-limit", "framing.drv.readable-before-writable"
        )  # else the walker said so
        self._request(where, view, chain)

    # -- packed rings -----------------------------------------------------------------------

    def scan_packed(self, q: QueueState, view: RingView) -> None:
        """Read the packed ring at a notification; walk every list made available since."""
        w = self.w
        ev_flags = self.u16(view, view.driver + 2)
        mode = ev_flags & PACKED_EVENT.flags_mask
        w.check(
            "packed.evsupp.reserved-zero",
            not ev_flags & ~PACKED_EVENT.flags_mask and mode != 3,
            f"queue {q.index}: driver event flags {ev_flags:#x}",
        )
        if mode == PACKED_EVENT_F.DESC:
            w.check(
                "packed.evsupp.desc-needs-event-idx",
                w.has(F.EVENT_IDX),
                f"queue {q.index}: RING_EVENT_FLAGS_DESC without EVENT_IDX",
            )
        size = view.size
        if not q.first_scan:
            self._scan_packed_from(q, view)
            return
        q.first_scan = False
        flags0 = _PACKED_CODEC.unpack(view.space.read(view.desc, layouts.PACKED_DESC_SIZE))[3]
        bits = (bool(flags0 & PACKED_DESC_F.AVAIL), bool(flags0 & PACKED_DESC_F.USED))
        if bits != (False, False) and not view.consumed:  # not yet used by the device
            w.check(
                "packed.wrap.init-one",
                bits == (True, False),
                f"queue {q.index}: first descriptor flags {flags0:#x} (a wrap counter that started at 0)",
            )
        self._scan_packed_from(q, view)
        rest = view.space.read(
            view.desc + (q.seen % size) * layouts.PACKED_DESC_SIZE,
            (size - q.seen % size) * layouts.PACKED_DESC_SIZE if q.seen < size else 0,
        )
        w.check(
            "packed.desc.zero-init",
            not any(rest),
            f"queue {q.index}: descriptors past the first available ones were not zeroed",
        )

    def _desc(self, view: RingView, pos: int) -> tuple[int, int, int, int]:
        d = layouts.PACKED_DESC_SIZE
        fields: tuple[int, int, int, int] = _PACKED_CODEC.unpack(
            view.space.read(view.desc + (pos % view.size) * d, d)
        )
        return fields

    def _scan_packed_from(self, q: QueueState, view: RingView) -> None:
        size = view.size
        self._recheck_packed(q, view)
        if view.consumed is not None:
            ahead = (view.consumed - q.seen) % (2 * size)
            if 0 < ahead <= size:
                # the device consumed these before the watch looked (its position is ahead
                # of ours): the driver may have completed them and reused their slots and
                # tables since, so they are counted, not judged
                q.consumed_unseen += ahead
                q.seen += ahead
        for _ in range(size):
            pos = q.seen
            wrap = self.wrap(pos, size)
            flags = self._desc(view, pos)[3]
            avail, used = bool(flags & PACKED_DESC_F.AVAIL), bool(flags & PACKED_DESC_F.USED)
            if avail != bool(wrap):
                return  # not made available (yet)
            if used == bool(wrap):
                q.seen += 1  # the device has used it already (served without a kick)
                continue
            n = self._walk_packed(q, view, pos)
            if n:
                q.exposed.append((pos, n, self._packed_bytes(view, pos, n)))
            q.seen += n

    @staticmethod
    def _packed_bytes(view: RingView, pos: int, n: int) -> bytes:
        size = view.size
        d = layouts.PACKED_DESC_SIZE
        return b"".join(view.space.read(view.desc + ((pos + k) % size) * d, d) for k in range(n))

    def _recheck_packed(self, q: QueueState, view: RingView) -> None:
        """Lists made available and not used yet must read as they did when exposed."""
        keep: list[tuple[int, int, bytes]] = []
        for pos, n, raw in q.exposed:
            wrap = bool(self.wrap(pos, view.size))
            flags = self._desc(view, pos)[3]
            if bool(flags & PACKED_DESC_F.USED) == wrap or bool(flags & PACKED_DESC_F.AVAIL) != wrap:
                continue  # used by the device (or the slot moved on): the driver may reuse it
            now = self._packed_bytes(view, pos, n)
            if self.w.check(
                "packed.desc.drv-no-change-after-avail",
                now == raw,
                f"queue {q.index}: available list at slot {pos % view.size} changed before it was used",
            ):
                keep.append((pos, n, raw))
        q.exposed = keep

    def _walk_packed(self, q: QueueState, view: RingView, pos: int) -> int:
        """Gather the list at ``pos`` (each descriptor available in its lap, at most the
        queue size), walk it, and return how many ring descriptors it takes."""
        w = self.w
        size = view.size
        where = f"queue {q.index} slot {pos % size}"
        self.chains += 1
        descs: list[tuple[int, int, int, int]] = []
        for count in range(1, size + 1):
            p = pos + count - 1
            wrap = self.wrap(p, size)
            desc = self._desc(view, p)
            flags = desc[3]
            avail, used = bool(flags & PACKED_DESC_F.AVAIL), bool(flags & PACKED_DESC_F.USED)
            if count > 1 and (avail != bool(wrap) or used == bool(wrap)):
                w.fail(
                    "packed.sg.drv-first-last",
                    f"{where}: the list's descriptor {count} is not available with its head",
                )
                return count - 1
            descs.append(desc)
            if flags & PACKED_DESC_F.INDIRECT or not flags & PACKED_DESC_F.NEXT:
                break
        else:
            w.fail("packed.sg.drv-queue-size-limit", f"{where}: a list longer than the queue size {size}")
            return size
        self.found.found.clear()
        chain = self._walker(view, INDIRECT_TABLE_LIMIT).walk_packed(descs[-1][2], descs)
        if chain is None:
            self._violation(where, self.found.found[-1], True, False)
            return len(descs)
        addr, length, _id, flags = descs[-1]
        if flags & PACKED_DESC_F.INDIRECT:
            w.ok("packed.indirect.drv-not-in-list", "packed.indirect.drv-device-limit")
            self._table_flags(where, view, addr, length)
        w.ok(  # the device refused none of it (its refusals are mapped in RING_VIOLATIONS)
            "packed.desc.drv-wait-used",
            "packed.sg.drv-space-for-list",
            "packed.sg.drv-device-limit",
            "packed.sg.drv-queue-size-limit",
            "packed.sg.drv-readable-first",
            "packed.wrap.drv-avail-encoding",
            "packed.indirect.drv-feature",
        )
        self._request(where, view, chain)
        return len(descs)

    def _table_flags(self, where: str, view: RingView, addr: int, length: int) -> None:
        """Entries of a packed indirect table carry no flag but WRITE (2.8.19): the walker
        ignores the others, as a device must; the driver must not set them."""
        table: Any = view.space.read(addr, length)
        for k in range(length // layouts.PACKED_DESC_SIZE):
            fl = _PACKED_CODEC.unpack_from(table, k * layouts.PACKED_DESC_SIZE)[3]
            self.w.check(
                "packed.indirect.drv-only-write-flag",
                not fl & ~PACKED_DESC_F.WRITE,
                f"{where}: indirect entry {k} flags {fl:#x}",
            )

    # -- what the device itself refused -------------------------------------------------------

    def on_ring_violation(self, index: int, violation: str, message: str) -> None:
        w = self.w
        ids = RING_VIOLATIONS.get(violation)
        if violation in ("bad-address", "dma", "ring-address"):
            # ring memory or a buffer the device cannot reach at the address given (the
            # alignment of the rings is checked by the queue family, at the first look)
            w.fail(self._address_rule(), f"queue {index}: {message}")
        elif ids is None:
            w.unmapped.append(f"queue {index}: {violation}: {message}")
        else:
            w.fail(ids[1] if w.has(F.RING_PACKED) else ids[0], f"queue {index}: {message}")

    def _address_rule(self) -> str:
        return (
            "features.drv.access-platform-iommu"
            if self.w.has(F.ACCESS_PLATFORM)
            else "features.drv.physical-addresses"
        )

    def finish(self) -> None:
        if self.chains:
            # the device reached every buffer at the address the driver gave (a ring
            # violation "bad-address"/"dma" fails the rule instead)
            self.w.ok(self._address_rule())
