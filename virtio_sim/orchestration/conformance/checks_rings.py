"""Device checkers for the rings: used-entry content and publication order, descriptor
rules (no writes to readable buffers or the table, indirect and mixed chains, no layout
assumption), spurious kicks, used.flags, IN_ORDER, notification suppression with and
without EVENT_IDX (including the 16-bit wrap) and the packed ring's rules."""

from __future__ import annotations

import struct

from virtio_sim import layouts
from virtio_sim.orchestration.conformance.device_checks import (
    CHECKERS,
    Ctx,
    Request,
    ack,
    bring_up,
    checker,
    kick,
    negotiate,
    overlaps,
    snapshot,
    submit,
    trace_mark,
    traffic_queue,
    traffic_request,
    wait_used,
    written_len_problem,
)
from virtio_sim.orchestration.conformance.dut import Access
from virtio_sim.orchestration.conformance.rawring import RawPackedRing, RawSplitRing, UsedEntry
from virtio_sim.spec import AVAIL_F, PACKED_DESC_F, PACKED_EVENT, PACKED_EVENT_F, USED_F, F, bit

SPLIT_ONLY = "split ring checks; this run negotiated the packed ring"
PACKED_ONLY = "packed ring checks; this run uses split rings"
BATCH = 6  # requests per traffic round (smaller than the ring, so no wrap unless asked)


def _split_order_problems(
    trace: list[Access], mark: int, ring: RawSplitRing, reqs: dict[int, Request]
) -> tuple[list[str], list[str]]:
    """From the device's access trace: (len-before-idx problems, data-before-idx problems).

    Each write to used.idx publishes positions [old, new); each of those slots must have
    had its whole element (id and len) written since it was last published, and every
    write into the chain's writable buffers must come before the publication."""
    idx_addr = ring.areas.device + layouts.RING_IDX_OFFSET
    elem_written: dict[int, set[int]] = {}
    published = 0
    len_problems: list[str] = []
    data_problems: list[str] = []
    published_at: dict[int, int] = {}  # head -> trace index of its publication
    for i, a in enumerate(trace[mark:], start=mark):
        if not a.write:
            continue
        for slot in range(ring.size):
            base = ring.areas.device + layouts.used_elem_offset(slot)
            lo, hi = max(a.addr, base), min(a.addr + len(a.data), base + layouts.USED_ELEM_SIZE)
            if lo < hi:
                elem_written.setdefault(slot, set()).update(range(lo - base, hi - base))
        if a.addr <= idx_addr < a.addr + len(a.data) and a.addr + len(a.data) >= idx_addr + 2:
            off = idx_addr - a.addr
            new = struct.unpack_from("<H" if ring.order == "little" else ">H", a.data, off)[0]
            while published != new:
                slot = published % ring.size
                got = elem_written.pop(slot, set())
                if len(got) < layouts.USED_ELEM_SIZE:
                    len_problems.append(
                        f"used idx -> {new} published slot {slot} with only bytes {sorted(got)} written"
                    )
                raw = ring.memory.read(ring.used_elem_addr(published), layouts.USED_ELEM_SIZE)
                head = struct.unpack("<I" if ring.order == "little" else ">I", raw[:4])[0]
                published_at.setdefault(head, i)
                published = (published + 1) & 0xFFFF
    for head, at in published_at.items():
        req = reqs.get(head)
        if req is None:
            continue
        late = [
            a
            for a in trace[at + 1 :]
            if a.write and any(overlaps(a.addr, len(a.data), s.addr, s.length) for s in req.writable)
        ]
        if late:
            data_problems.append(f"head {head}: {len(late)} data write(s) after its used idx was published")
    return len_problems, data_problems


def _check_buffers(ctx: Ctx, reqs: list[Request], mark: int, table: tuple[int, int]) -> None:
    """No write to device-readable buffers or the descriptor table; no read of writable
    buffers (SHOULD NOT); readable contents unchanged when no trace exists."""
    pre = "packed" if ctx.ring == "packed" and ctx.has(F.RING_PACKED) else "split"
    bad_ro, bad_table, read_wo = [], [], []
    trace = ctx.dut.trace
    if trace is not None:
        for a in trace[mark:]:
            for r in reqs:
                for s in r.readable:
                    if a.write and overlaps(a.addr, len(a.data), s.addr, s.length):
                        bad_ro.append(
                            f"write {len(a.data)}@{a.addr:#x} into readable buffer of head {r.head}"
                        )
                for s in r.writable:
                    if not a.write and overlaps(a.addr, len(a.data), s.addr, s.length):
                        read_wo.append(f"read {len(a.data)}@{a.addr:#x} of writable buffer of head {r.head}")
            if pre == "split" and a.write and overlaps(a.addr, len(a.data), *table):
                bad_table.append(f"write {len(a.data)}@{a.addr:#x} into the descriptor table")
    else:
        for r in reqs:
            now = snapshot(ctx, r.readable)
            if now != r.readable_snapshot:
                bad_ro.append(f"readable buffer of head {r.head} changed")
    ctx.log.check(f"{pre}.desc.dev-no-write-readable", not bad_ro, "; ".join(bad_ro[:3]))
    ctx.log.check(f"{pre}.desc.dev-no-read-writable", not read_wo, "; ".join(read_wo[:3]))
    if pre == "split":
        ctx.log.check("split.desc.dev-no-write-table", not bad_table, "; ".join(bad_table[:3]))
    if trace is None:
        # reads, and writes of the table, leave nothing behind in final states
        ctx.log.untested(f"{pre}.desc.dev-no-read-writable", "no access trace: device reads unseen")
        if pre == "split":
            ctx.log.untested("split.desc.dev-no-write-table", "no access trace: table writes unseen")


@checker(
    "split_used_ring",
    (
        "split.used.len-bytes-written",
        "split.used.dev-len-before-idx",
        "split.used.dev-data-before-idx",
        "split.desc.dev-no-write-readable",
        "split.desc.dev-no-read-writable",
        "split.desc.dev-no-write-table",
        "framing.dev.no-layout-assumption",
        "split.indirect.dev-ignore-write-flag",
        "split.indirect.dev-mixed-chain",
        "split.availsupp.dev-spurious",
        "split.availsupp.dev-flags-0-1",
        "split.availsupp.dev-flags-zero-with-event-idx",
        "inorder.dev.use-in-order",
        "features.access-platform.clear-means-physical",
        "split.legacy.dev-fixed-layout",
    ),
)
async def split_used_ring(ctx: Ctx) -> None:
    """A round of requests in every layout the spec allows; each used entry is checked
    (head id, len = bytes written), and with a trace the publication order too."""
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,))
    ring = ctx.rings[q]
    if isinstance(ring, RawPackedRing):
        for rid in CHECKERS["split_used_ring"].ids:
            if rid.startswith(("split.", "framing.")):
                ctx.log.not_applicable(rid, SPLIT_ONLY)
        return
    mark = trace_mark(ctx)
    reqs: list[Request] = []
    indirect = ctx.has(F.INDIRECT_DESC)
    for v in range(BATCH):
        r = traffic_request(ctx, variant=v % 2)
        if not ring.fits(r.segments):
            break  # a small queue (QEMU's rng has 8 entries): a shorter batch
        reqs.append(submit(ctx, r))
    await kick(ctx, q)
    used = await wait_used(ctx, q, len(reqs))
    by_head = {r.head: r for r in reqs}
    problems = _len_problems(ctx, reqs, used)
    ctx.log.check("split.used.len-bytes-written", not problems, "; ".join(problems[:4]))
    served = {u.id for u in used}
    ctx.log.check(
        "framing.dev.no-layout-assumption",
        all(r.head in served for r in reqs[1::2]),
        "a request with its header split over two descriptors was not served",
    )
    if indirect:
        r = submit(ctx, traffic_request(ctx), indirect=True, indirect_write_flag=True)
        await kick(ctx, q)
        got = await wait_used(ctx, q, 1)
        reqs.append(r)
        by_head[r.head] = r
        ctx.log.check(
            "split.indirect.dev-ignore-write-flag",
            [u.id for u in got] == [r.head],
            f"an INDIRECT descriptor with WRITE set: used {got}",
        )
    else:
        ctx.log.not_applicable(
            "split.indirect.dev-ignore-write-flag", "VIRTIO_F_INDIRECT_DESC not negotiated"
        )
    if ctx.has(F.IN_ORDER):
        ids = [u.id for u in used]
        ctx.log.check(
            "inorder.dev.use-in-order",
            ids == [r.head for r in reqs][: len(ids)],
            f"IN_ORDER: used ids {ids}, made available {[r.head for r in reqs]}",
        )
    else:
        ctx.log.not_applicable("inorder.dev.use-in-order", "VIRTIO_F_IN_ORDER not negotiated")
    if not ctx.has(F.ACCESS_PLATFORM):
        ctx.log.check(
            "features.access-platform.clear-means-physical",
            not problems,
            "without ACCESS_PLATFORM the device did not serve buffers at their guest-physical addresses",
        )
    if ctx.legacy:
        ctx.log.check(
            "split.legacy.dev-fixed-layout",
            not problems,
            "legacy contiguous ring (avail after table, used at the alignment) not served",
        )
    else:
        ctx.log.not_applicable("split.legacy.dev-fixed-layout", "modern interface")
    if ctx.dut.trace is not None:
        len_p, data_p = _split_order_problems(ctx.dut.trace, mark, ring, by_head)
        ctx.log.check("split.used.dev-len-before-idx", not len_p, "; ".join(len_p[:3]))
        ctx.log.check("split.used.dev-data-before-idx", not data_p, "; ".join(data_p[:3]))
    else:
        ctx.log.untested("split.used.dev-len-before-idx", "the back-end gives no access trace: order unseen")
        ctx.log.untested("split.used.dev-data-before-idx", "the back-end gives no access trace: order unseen")
    _check_buffers(ctx, reqs, mark, (ring.areas.desc, layouts.desc_table_size(ring.size)))
    flags = ring.used_flags()
    if ctx.has(F.EVENT_IDX):
        ctx.log.not_applicable("split.availsupp.dev-flags-0-1", "VIRTIO_F_EVENT_IDX negotiated")
        ctx.log.check("split.availsupp.dev-flags-zero-with-event-idx", flags == 0, f"used.flags {flags:#x}")
    else:
        ctx.log.not_applicable(
            "split.availsupp.dev-flags-zero-with-event-idx", "VIRTIO_F_EVENT_IDX not negotiated"
        )
        ctx.log.check(
            "split.availsupp.dev-flags-0-1", flags in (0, USED_F.NO_NOTIFY), f"used.flags {flags:#x}"
        )
    # Spurious kicks: nothing new, the device must cope and keep serving.
    before = ring.used_idx()
    await kick(ctx, q)
    await kick(ctx, q)
    after = ring.used_idx()
    r = submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    more = await wait_used(ctx, q, 1)
    ctx.log.check(
        "split.availsupp.dev-spurious",
        after == before and [u.id for u in more] == [r.head],
        f"spurious kicks moved used idx {before}->{after}; next request served: {bool(more)}",
    )
    if indirect:
        # Plain and indirect chains interleaved in one batch (QEMU 7.2 breaks on this).
        await bring_up(ctx, (q,))
        batch = []
        fresh = ctx.rings[q]
        assert isinstance(fresh, RawSplitRing)
        for i, v in enumerate((0, 1, 0, 1, 0, 1)):
            r = traffic_request(ctx, variant=v)
            if not fresh.fits(r.segments if i != 2 else r.segments[:1]):
                break
            batch.append(submit(ctx, r, indirect=i == 2))
        await kick(ctx, q)
        got = await wait_used(ctx, q, len(batch))
        status = await ctx.t.ops.get_status()
        mixed_problems = _len_problems(ctx, batch, got)
        if mixed_problems:
            ctx.log.failed(
                "split.used.len-bytes-written",
                f"plain and indirect chains in one batch: {'; '.join(mixed_problems[:2])}, "
                f"status {status:#x}",
            )
        # Last, on its own and on a fresh device: a plain descriptor then an INDIRECT one.
        await bring_up(ctx, (q,))
        mixed = submit(ctx, traffic_request(ctx, variant=1), indirect_from=1)
        await kick(ctx, q)
        got = await wait_used(ctx, q, 1)
        status = await ctx.t.ops.get_status()
        ctx.log.check(
            "split.indirect.dev-mixed-chain",
            [u.id for u in got] == [mixed.head],
            f"a plain descriptor followed by an INDIRECT one: used {got}, status {status:#x}",
        )


def _len_problems(ctx: Ctx, reqs: list[Request], used: list[UsedEntry]) -> list[str]:
    by_head = {r.head: r for r in reqs}
    problems = []
    for u in used:
        found = by_head.get(u.id)
        if found is None:
            problems.append(f"used id {u.id} names no outstanding head")
            continue
        p = written_len_problem(ctx, found, u)
        if p:
            problems.append(f"head {u.id}: {p}")
    if len(used) != len(reqs):
        problems.append(f"{len(used)} of {len(reqs)} requests completed")
    return problems


async def _one(ctx: Ctx, q: int) -> tuple[list[UsedEntry], int]:
    await ack(ctx)
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    used = await wait_used(ctx, q, 1)
    return used, await ack(ctx) & 1


@checker(
    "split_notify_suppression",
    (
        "split.usedsupp.dev-ignore-used-event",
        "split.usedsupp.dev-flags1-no-notify",
        "split.usedsupp.dev-flags0-notify",
        "split.usedsupp.dev-ignore-flags-bit0",
        "split.usedsupp.dev-event-idx-notify",
        "split.usedsupp.dev-event-idx-else-quiet",
    ),
)
async def split_notify_suppression(ctx: Ctx) -> None:
    """avail.flags / used_event as the driver sets them, and whether the device interrupts."""
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,))
    ring = ctx.rings[q]
    if isinstance(ring, RawPackedRing):
        for rid in CHECKERS["split_notify_suppression"].ids:
            ctx.log.not_applicable(rid, SPLIT_ONLY)
        return
    if not ctx.has(F.EVENT_IDX):
        for rid in (
            "split.usedsupp.dev-ignore-flags-bit0",
            "split.usedsupp.dev-event-idx-notify",
            "split.usedsupp.dev-event-idx-else-quiet",
        ):
            ctx.log.not_applicable(rid, "VIRTIO_F_EVENT_IDX not negotiated")
        ring.set_used_event(0x7777)  # garbage the device must ignore
        ring.set_avail_flags(0)
        used, irq = await _one(ctx, q)
        ctx.log.check(
            "split.usedsupp.dev-flags0-notify",
            bool(used) and bool(irq),
            f"avail.flags 0: used {len(used)}, interrupt {irq}",
        )
        ctx.log.check(
            "split.usedsupp.dev-ignore-used-event",
            bool(used) and bool(irq),
            "no EVENT_IDX: a stale used_event suppressed the interrupt",
        )
        ring.set_avail_flags(AVAIL_F.NO_INTERRUPT)
        used, irq = await _one(ctx, q)
        ctx.log.check(
            "split.usedsupp.dev-flags1-no-notify",
            bool(used) and not irq,
            f"avail.flags NO_INTERRUPT: used {len(used)}, interrupt {irq}",
        )
        return
    for rid in (
        "split.usedsupp.dev-ignore-used-event",
        "split.usedsupp.dev-flags1-no-notify",
        "split.usedsupp.dev-flags0-notify",
    ):
        ctx.log.not_applicable(rid, "VIRTIO_F_EVENT_IDX negotiated")
    ring.set_avail_flags(AVAIL_F.NO_INTERRUPT)  # must be ignored with EVENT_IDX
    ring.set_used_event(ring.used_idx())  # interrupt for the next entry
    used, irq = await _one(ctx, q)
    ctx.log.check(
        "split.usedsupp.dev-event-idx-notify",
        bool(used) and bool(irq),
        f"used_event = the next entry's position: used {len(used)}, interrupt {irq}",
    )
    ctx.log.check(
        "split.usedsupp.dev-ignore-flags-bit0",
        bool(used) and bool(irq),
        "EVENT_IDX: avail.flags NO_INTERRUPT suppressed a due interrupt",
    )
    ring.set_used_event(ring.used_idx() + 5)  # far ahead: no interrupt for the next one
    used, irq = await _one(ctx, q)
    ctx.log.check(
        "split.usedsupp.dev-event-idx-else-quiet",
        bool(used) and not irq,
        f"used_event far ahead: used {len(used)}, interrupt {irq}",
    )


@checker("notify_on_empty", ("features.legacy.dev-notify-on-empty",))
async def notify_on_empty(ctx: Ctx) -> None:
    """VIRTIO_F_NOTIFY_ON_EMPTY (legacy interface): with the bit negotiated and every
    interrupt suppressed (avail.flags NO_INTERRUPT, no EVENT_IDX), the device still
    interrupts once the queue has run empty. QEMU 7.2 offers the bit on every device
    (notify_on_empty=on) and honours it in virtio_split_should_notify()."""
    rid = "features.legacy.dev-notify-on-empty"
    if not ctx.legacy or ctx.ring == "packed":
        ctx.log.not_applicable(rid, "a legacy-interface feature; this run uses the modern interface")
        return
    q = traffic_queue(ctx)
    await negotiate(ctx)
    if not ctx.offered >> F.NOTIFY_ON_EMPTY & 1:
        ctx.log.not_applicable(rid, "VIRTIO_F_NOTIFY_ON_EMPTY not offered")
        return
    want = (ctx.features | bit(F.NOTIFY_ON_EMPTY)) & ~bit(F.EVENT_IDX)
    await bring_up(ctx, (q,), accept=want)
    ring = ctx.rings[q]
    assert isinstance(ring, RawSplitRing)
    ring.set_avail_flags(AVAIL_F.NO_INTERRUPT)
    used, irq = await _one(ctx, q)  # one buffer: used, and the queue is empty again
    ctx.log.check(
        rid,
        bool(used) and bool(irq),
        f"NOTIFY_ON_EMPTY, avail.flags NO_INTERRUPT, the queue run empty: used {len(used)}, interrupt {irq}",
    )


WRAP_RING = 256


@checker(
    "split_event_idx_wrap", ("split.usedsupp.dev-event-idx-notify", "split.usedsupp.dev-event-idx-else-quiet")
)
async def split_event_idx_wrap(ctx: Ctx) -> None:
    """used_event across the 16-bit wrap of used idx: drive 65536 completions in batches
    and ask for an interrupt exactly at positions 0xFFFF and 0 (need_event's modular
    comparison); a device comparing without wrap gets one of them wrong."""
    q = traffic_queue(ctx)
    if ctx.ring != "split" or ctx.key != "rng" or not ctx.thorough:
        return  # only rng makes 65536 requests cheap; other devices get the basic test
    await bring_up(ctx, (q,), size=WRAP_RING)
    ring = ctx.rings[q]
    if isinstance(ring, RawPackedRing) or not ctx.has(F.EVENT_IDX) or ring.size != WRAP_RING:
        return
    seg = traffic_request(ctx).segments
    target = 0xFFFF - 2
    ring.set_used_event(0x8000)  # not in the way while filling
    while ring.last_used < target and ring.last_used + WRAP_RING - 1 <= target:
        for _ in range(WRAP_RING - 1):
            ring.make_available(ring.add(seg), publish=False)
        ring.publish()
        await kick(ctx, q)
        got = await wait_used(ctx, q, WRAP_RING - 1)
        if len(got) != WRAP_RING - 1:
            ctx.notes.append(f"event-idx wrap: only {len(got)} of {WRAP_RING - 1} served")
            return
    while ring.last_used != target:
        ring.make_available(ring.add(seg))
        await kick(ctx, q)
        await wait_used(ctx, q, 1)
    await ack(ctx)
    results = []
    for event in (0xFFFF, 0x0000):
        # Complete up to position `event` one at a time: interrupt exactly when position == event.
        ring.set_used_event(event)
        fired = []
        while True:
            pos = ring.last_used
            ring.make_available(ring.add(seg))
            await kick(ctx, q)
            await wait_used(ctx, q, 1)
            fired.append((pos, bool(await ack(ctx) & 1)))
            if pos == event:
                break
        results.append(fired)
    pairs = [(p, f, ev) for run, ev in zip(results, (0xFFFF, 0), strict=True) for p, f in run]
    missed = [(p, ev) for p, f, ev in pairs if p == ev and not f]
    extra = [(p, ev) for p, f, ev in pairs if p != ev and f]
    ctx.log.check(
        "split.usedsupp.dev-event-idx-notify",
        not missed,
        f"across the used idx wrap, no interrupt at (position, used_event) {missed}",
    )
    ctx.log.check(
        "split.usedsupp.dev-event-idx-else-quiet",
        not extra,
        f"across the used idx wrap, interrupts at (position, used_event) {extra[:4]}",
    )
    ctx.notes.append(
        f"event-idx wrap: used idx driven through 0xffff -> 0 ({len(pairs)} checked completions)"
    )


# -- packed ------------------------------------------------------------------------------

PACKED_IDS = (
    "packed.wrap.dev-used-encoding",
    "packed.used.write-flag-and-len",
    "packed.indirect.dev-ignore-reserved",
    "packed.dev.process-in-order",
    "packed.dev.used-in-completion-order",
    "packed.desc.dev-no-write-readable",
    "packed.desc.dev-no-read-writable",
    "packed.desc.dev-avail-change",
    "packed.desc.dev-no-change-after-used",
    "packed.sg.dev-list-order",
    "packed.evsupp.dev-desc-needs-event-idx",
    "packed.evsupp.dev-honour-driver-area",
)
PACKED_RING = 8  # small, so a few rounds cross the wrap several times


@checker("packed_ring", PACKED_IDS)
async def packed_ring(ctx: Ctx) -> None:
    """Rounds of requests over an 8-entry packed ring (every round crosses a wrap): used
    descriptor encoding, len/WRITE, order, readable buffers untouched, descriptors not
    made available ignored, event suppression modes."""
    q = traffic_queue(ctx)
    if ctx.ring != "packed":
        for rid in PACKED_IDS:
            ctx.log.not_applicable(rid, PACKED_ONLY)
        return
    await bring_up(ctx, (q,), size=PACKED_RING)
    ring = ctx.rings[q]
    if not isinstance(ring, RawPackedRing):
        for rid in PACKED_IDS:
            ctx.log.not_applicable(rid, "VIRTIO_F_RING_PACKED not offered")
        return
    mark = trace_mark(ctx)
    enc, lens, order, after_used, served_wrong, missing, traced = [], [], [], [], [], [], []
    in_order = ctx.has(F.IN_ORDER)
    reqs: list[Request] = []
    for rnd in range(5):
        batch = []
        for v in range(2 if rnd != 2 else 1):
            r = traffic_request(ctx, variant=v)
            # round 2: one indirect buffer (if negotiated), table entries carry junk ids
            submit(ctx, r, indirect=rnd == 2 and ctx.has(F.INDIRECT_DESC))
            batch.append(r)
        round_mark = trace_mark(ctx)
        await kick(ctx, q)
        used = await wait_used(ctx, q, len(batch))
        reqs += batch
        after_used += _writes_after_used(ctx, ring, round_mark, rnd)
        if len(used) < len(batch):
            mis = _misencoded_used(ctx, ring)
            if mis:
                enc.append(f"round {rnd}: {mis}")
                break  # the driver cannot see past a descriptor it does not recognise as used
        ids = [u.id for u in used]
        if ctx.dut.trace is not None:
            traced += [f"{p} (round {rnd})" for p in _round_order(ctx, ring, round_mark, batch, ids)]
        heads = [r.head for r in batch]
        if sorted(ids) != sorted(heads):
            missing.append(f"round {rnd}: used ids {ids}, available {heads}")
        elif in_order and ids != heads:
            # without IN_ORDER a device may complete buffers in any order (2.8.9); with it,
            # in the order they were made available (2.8.21.3)
            order.append(f"round {rnd}: used ids {ids}, available {heads} under IN_ORDER")
        by_head = {r.head: r for r in batch}
        for u in used:
            found = by_head.get(u.id)
            if found is None:
                continue
            r = found
            avail, usedb = bool(u.flags & PACKED_DESC_F.AVAIL), bool(u.flags & PACKED_DESC_F.USED)
            if not (avail == usedb == bool(u.wrap)):
                enc.append(f"id {u.id}: flags {u.flags:#x} with used wrap counter {u.wrap}")
            wrote = bool(u.flags & PACKED_DESC_F.WRITE)
            p = written_len_problem(ctx, r, u)
            if p:
                served_wrong.append(f"id {u.id}: {p}")
            if p or (u.length > 0) != wrote:
                lens.append(f"id {u.id}: len {u.length}, WRITE {wrote}: {p or 'WRITE does not match len'}")
    ctx.log.check("packed.wrap.dev-used-encoding", not enc, "; ".join(enc[:3]))
    ctx.log.check("packed.used.write-flag-and-len", not lens, "; ".join(lens[:3]))
    _packed_order(ctx, order + missing, traced)
    ctx.log.check(
        "packed.sg.dev-list-order",
        not missing and not served_wrong,
        f"multi-descriptor lists not consumed in order: {(missing + served_wrong)[:3]}",
    )
    if ctx.has(F.INDIRECT_DESC):
        ctx.log.check(
            "packed.indirect.dev-ignore-reserved",
            not served_wrong and not missing,
            f"an indirect table with ids in its entries was not served: {(missing + served_wrong)[:2]}",
        )
    else:
        ctx.log.not_applicable("packed.indirect.dev-ignore-reserved", "VIRTIO_F_INDIRECT_DESC not negotiated")
    _check_buffers(ctx, reqs, mark, (ring.areas.desc, 0))
    # A descriptor the device marked used is not written again in that round (trace only).
    if ctx.dut.trace is not None:
        ctx.log.check(
            "packed.desc.dev-no-change-after-used",
            not after_used,
            f"device wrote descriptors after marking them used: {after_used[:3]}",
        )
    else:
        ctx.log.untested("packed.desc.dev-no-change-after-used", "no access trace of the device")
    # A descriptor whose AVAIL bit does not match the driver's wrap counter is not available.
    before = ring.take_used()
    pos = ring.next_avail
    seg = traffic_request(ctx).segments
    wrong = PACKED_DESC_F.USED if ring.avail_wrap else PACKED_DESC_F.AVAIL
    raw = struct.pack(
        "<QIHH",
        seg[0].addr,
        seg[0].length,
        0,
        (PACKED_DESC_F.WRITE if seg[0].write else 0) | (PACKED_DESC_F.NEXT if len(seg) > 1 else 0) | wrong,
    )
    ctx.dut.memory.write(ring.desc_addr(pos), raw)
    await kick(ctx, q)
    stray = await wait_used(ctx, q, 1, timeout=0.2)
    ctx.log.check(
        "packed.desc.dev-avail-change",
        not stray,
        f"descriptor with AVAIL/USED not matching the wrap counter was used: {stray}",
    )
    del before
    # Event suppression: DISABLE / ENABLE / DESC.
    _, dflags = ring.device_event()
    mode = dflags & PACKED_EVENT.flags_mask
    ok_mode = mode != 3 and (mode != PACKED_EVENT_F.DESC or ctx.has(F.EVENT_IDX))
    ctx.log.check("packed.evsupp.dev-desc-needs-event-idx", ok_mode, f"device event flags {dflags:#x}")
    await _reset_ring_state(ctx, q)
    ring = ctx.rings[q]
    assert isinstance(ring, RawPackedRing)
    results = []
    ring.set_driver_event(PACKED_EVENT_F.DISABLE)
    used, irq = await _one(ctx, q)
    results.append(("DISABLE", bool(used), irq, 0))
    ring.set_driver_event(PACKED_EVENT_F.ENABLE)
    used, irq = await _one(ctx, q)
    results.append(("ENABLE", bool(used), irq, 1))
    if ctx.has(F.EVENT_IDX):
        far = (ring.next_used + 2) % ring.size | (ring.used_wrap << PACKED_EVENT.wrap_shift)
        ring.set_driver_event(PACKED_EVENT_F.DESC, far)
        used, irq = await _one(ctx, q)
        results.append(("DESC far", bool(used), irq, 0))
        near = ring.next_used | (ring.used_wrap << PACKED_EVENT.wrap_shift)
        ring.set_driver_event(PACKED_EVENT_F.DESC, near)
        used, irq = await _one(ctx, q)
        results.append(("DESC next", bool(used), irq, 1))
    bad = [r for r in results if not r[1] or r[2] != r[3]]
    ctx.log.check(
        "packed.evsupp.dev-honour-driver-area", not bad, f"(mode, served, interrupt, expected): {bad}"
    )


def _misencoded_used(ctx: Ctx, ring: RawPackedRing) -> str | None:
    """The descriptor where the driver expects the next used one: AVAIL == USED (the
    device's mark) but not equal to the used wrap counter is a wrongly encoded used
    descriptor (what the driver wrote has AVAIL != USED)."""
    raw = ctx.dut.memory.read(ring.desc_addr(ring.next_used), layouts.PACKED_DESC_SIZE)
    _addr, length, buf_id, flags = struct.unpack("<QIHH", raw)
    avail, usedb = bool(flags & PACKED_DESC_F.AVAIL), bool(flags & PACKED_DESC_F.USED)
    if avail == usedb and avail != bool(ring.used_wrap):
        return (
            f"slot {ring.next_used}: id {buf_id} len {length} flags {flags:#x} marked used with "
            f"AVAIL=USED={int(avail)}, but the used wrap counter is {ring.used_wrap}"
        )
    return None


def _writes_after_used(ctx: Ctx, ring: RawPackedRing, mark: int, rnd: int) -> list[str]:
    """Device writes to a descriptor slot after the write that set its flags (marked it
    used), since ``mark``: the slot is the driver's again and must not change."""
    if ctx.dut.trace is None:
        return []
    size = layouts.PACKED_DESC_SIZE
    flags_at = size - 2  # le16 flags close the 16-byte descriptor
    used_slots: set[int] = set()
    out = []
    for a in ctx.dut.trace[mark:]:
        if not a.write or not overlaps(a.addr, len(a.data), ring.areas.desc, ring.size * size):
            continue
        first = (a.addr - ring.areas.desc) // size
        last = (a.addr + len(a.data) - 1 - ring.areas.desc) // size
        for slot in range(first, last + 1):
            if slot in used_slots:
                out.append(f"round {rnd}: slot {slot} written ({len(a.data)}@{a.addr:#x}) after it was used")
        for slot in range(first, last + 1):
            lo = ring.areas.desc + slot * size + flags_at
            if overlaps(a.addr, len(a.data), lo, 2):
                used_slots.add(slot)
    return out


def _round_order(ctx: Ctx, ring: RawPackedRing, mark: int, batch: list[Request], ids: list[int]) -> list[str]:
    """From the trace of one round: processing started in ring order (the first read of
    each request's head slot comes in submission order) and used descriptors were written
    in completion order (a request completes with its last access to its own buffers)."""
    assert ctx.dut.trace is not None
    size = layouts.PACKED_DESC_SIZE
    trace = ctx.dut.trace[mark:]
    problems = []
    first_read = []
    for r in batch:
        lo = ring.areas.desc + (r.head % ring.size) * size
        first_read.append(
            next(
                (i for i, a in enumerate(trace) if not a.write and overlaps(a.addr, len(a.data), lo, size)),
                -1,
            )
        )
    if first_read != sorted(first_read):
        problems.append(
            f"process: head slots {[r.head for r in batch]} first read at trace steps {first_read}"
        )
    done = {}
    for r in batch:
        steps = [
            i
            for i, a in enumerate(trace)
            for s in r.segments
            if overlaps(a.addr, len(a.data), s.addr, s.length)
        ]
        done[r.head] = max(steps, default=-1)
    known = [i for i in ids if i in done]
    by_completion = sorted(known, key=lambda i: done[i])
    if known != by_completion:
        problems.append(f"used: ids written {known}, completed in order {by_completion}")
    return problems


def _packed_order(ctx: Ctx, order: list[str], traced: list[str]) -> None:
    """packed.dev.process-in-order / used-in-completion-order. With the device's trace:
    from the reads and writes of each round (``traced``). Without one (QEMU): decided only
    under IN_ORDER, where used ids must follow the available order; otherwise the order a
    device completes buffers in is its own (2.8.9) and these stay NOT_COVERED."""
    if ctx.dut.trace is not None:
        proc = [p for p in traced if p.startswith("process")] + order
        used = [p for p in traced if p.startswith("used")] + order
        ctx.log.check("packed.dev.process-in-order", not proc, "; ".join(proc[:3]))
        ctx.log.check("packed.dev.used-in-completion-order", not used, "; ".join(used[:3]))
        return
    if ctx.has(F.IN_ORDER):
        ctx.log.check("packed.dev.process-in-order", not order, "; ".join(order[:3]))
        ctx.log.check("packed.dev.used-in-completion-order", not order, "; ".join(order[:3]))
        return
    ctx.log.untested("packed.dev.process-in-order", "no access trace and no IN_ORDER: read order unseen")
    ctx.log.untested(
        "packed.dev.used-in-completion-order", "no access trace and no IN_ORDER: completion order unseen"
    )


async def _reset_ring_state(ctx: Ctx, q: int) -> None:
    await bring_up(ctx, (q,), size=PACKED_RING)
