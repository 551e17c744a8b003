"""Device checkers for a driver that breaks the negotiation protocol: feature writes after
FEATURES_OK, and DRIVER_OK without FEATURES_OK on the modern interface.

The spec puts both on the driver (3.1.1); what a device does then is derived (see the
catalogue entries, both SHOULD NOT): the feature set accepted at FEATURES_OK is the one it
runs with until a reset, and a device that never accepted a set does not go live. Both are
judged from behaviour, not register read-back (QEMU's driver_feature reads back the last
write even though it ignores it).
"""

from __future__ import annotations

from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    ack,
    add_queue,
    checker,
    default_features,
    driver_ok,
    kick,
    negotiate,
    quiet,
    reset,
    submit,
    traffic_queue,
    traffic_request,
    wait_used,
)
from virtio_sim.orchestration.conformance.rawring import RawSplitRing
from virtio_sim.spec import STATUS, F, bit

LATE = "features.dev.fixed-at-features-ok"
LIVE = "status.dev.no-live-without-features-ok"
ISR_QUEUE = 1


@checker("features_fixed", (LATE, LIVE))
async def features_fixed(ctx: Ctx) -> None:
    if ctx.legacy:
        for rid in (LATE, LIVE):
            ctx.log.not_applicable(rid, "legacy interface has no FEATURES_OK")
        return
    await _late_feature_write(ctx)
    await _driver_ok_without_features_ok(ctx)


async def _late_feature_write(ctx: Ctx) -> None:
    """EVENT_IDX accepted, then written away after FEATURES_OK. With avail.flags 1 and
    used_event asking for the next entry, a device still under EVENT_IDX interrupts
    (it ignores flags bit 0); one that took the late write obeys the flag and stays quiet."""
    q = traffic_queue(ctx)
    await negotiate(ctx)
    if ctx.ring != "split" or not ctx.has(F.EVENT_IDX):
        why = "the late write is observed through EVENT_IDX on a split ring, not negotiated here"
        ctx.log.untested(LATE, why)
        return
    accepted = ctx.features
    await ctx.t.ops.set_features(accepted & ~bit(F.EVENT_IDX))
    await add_queue(ctx, q)
    await driver_ok(ctx)
    ring = ctx.rings[q]
    assert isinstance(ring, RawSplitRing)
    ring.set_avail_flags(1)
    ring.set_used_event(ring.used_idx())
    await ack(ctx)
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    used = await wait_used(ctx, q, 1)
    isr = await ack(ctx)
    ctx.log.check(
        LATE,
        bool(used) and bool(isr & ISR_QUEUE),
        f"EVENT_IDX written away after FEATURES_OK: {len(used)} used, interrupt status {isr:#x} "
        "(a device still under EVENT_IDX interrupts at used_event whatever avail.flags says)",
    )


async def _driver_ok_without_features_ok(ctx: Ctx) -> None:
    """ACKNOWLEDGE, DRIVER, features, a queue, DRIVER_OK: no FEATURES_OK ever. The device
    must not serve the kicked buffer."""
    ops = ctx.t.ops
    q = traffic_queue(ctx)
    await reset(ctx)
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    ctx.offered = await ops.get_features()
    ctx.features = default_features(ctx, ctx.offered)
    await ops.set_features(ctx.features)
    await add_queue(ctx, q)
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK)
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    await quiet(ctx)
    used = await wait_used(ctx, q, 1, timeout=0.3)
    status = await ops.get_status()
    ctx.log.check(
        LIVE,
        not used,
        f"DRIVER_OK without FEATURES_OK: the device served {len(used)} buffer(s), status {status:#x}",
    )
    await reset(ctx)
