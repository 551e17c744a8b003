"""VIRTIO_F_RING_RESET: resetting one queue while the device keeps running (2.6.1, and the
QueueReset / queue_reset registers of virtio-mmio and virtio-pci)."""

from __future__ import annotations

from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    add_queue,
    bring_up,
    checker,
    device_touched,
    kick,
    quiet,
    submit,
    trace_mark,
    traffic_queue,
    traffic_request,
    wait_used,
)
from virtio_sim.orchestration.conformance.rawring import RawSplitRing
from virtio_sim.spec import F

RESET_POLLS = 100
VQRESET_IDS = (
    "vqreset.dev.stop",
    "vqreset.dev.default-state",
    "vqreset.dev.reenable-honour-config",
    "pci.common.dev-queue-reset-zero-on-reset",
    "pci.common.dev-queue-reset-zero-after-enable",
    "pci.common.dev-queue-reset-action",
    "pci.common.dev-queue-reset-done",
    "pci.common.dev-queue-reset-busy",
    "mmio.dev.queue-reset-zero-on-reset",
    "mmio.dev.queue-reset-zero-after-ready",
    "mmio.dev.queue-reset-action",
    "mmio.dev.queue-reset-done",
    "mmio.dev.queue-reset-busy",
)
NEW_SIZE = 32


class _Regs:
    """QueueReset/QueueReady (mmio) or queue_reset/queue_enable (PCI) of one queue."""

    def __init__(self, ctx: Ctx, q: int) -> None:
        self.ctx, self.q = ctx, q
        self.prefix = "pci.common.dev-queue-reset-" if ctx.t.pci is not None else "mmio.dev.queue-reset-"

    async def _select(self) -> None:
        t, link, base = self.ctx.t.ops, self.ctx.dut.link, self.ctx.t.mmio_base
        if isinstance(t, PciModernTransport):
            await t._w("queue_select", self.q)
        elif base is not None:
            await link.write(base + MMIO_OFFSETS["QueueSel"], 4, self.q)

    async def read(self, which: str) -> int:
        await self._select()
        t, link, base = self.ctx.t.ops, self.ctx.dut.link, self.ctx.t.mmio_base
        if isinstance(t, PciModernTransport):
            return int(await t._r("queue_reset" if which == "reset" else "queue_enable"))
        assert base is not None
        return int(
            await link.read(base + MMIO_OFFSETS["QueueReset" if which == "reset" else "QueueReady"], 4)
        )

    async def reset(self) -> None:
        await self._select()
        t, link, base = self.ctx.t.ops, self.ctx.dut.link, self.ctx.t.mmio_base
        if isinstance(t, PciModernTransport):
            await t._w("queue_reset", 1)
        else:
            assert base is not None
            await link.write(base + MMIO_OFFSETS["QueueReset"], 4, 1)


@checker("queue_reset", VQRESET_IDS)
async def queue_reset(ctx: Ctx) -> None:
    """Reset one queue after traffic: the registers say so, the old ring is left alone,
    and the queue re-enabled with another size and addresses starts from scratch there."""
    modern = ctx.t.kind in ("mmio-v2", "pci-modern")
    prefix = "pci.common.dev-queue-reset-" if ctx.t.pci is not None else "mmio.dev.queue-reset-"
    others = [r for r in VQRESET_IDS if r.startswith(("pci.common", "mmio.dev")) and not r.startswith(prefix)]
    for rid in others:
        ctx.log.not_applicable(rid, f"transport {ctx.t.kind}")
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,))
    if not modern or not ctx.has(F.RING_RESET):
        for rid in VQRESET_IDS:
            if rid not in others:
                ctx.log.not_applicable(rid, "VIRTIO_F_RING_RESET not negotiated")
        return
    regs = _Regs(ctx, q)
    r0 = await regs.read("reset")
    ctx.log.check(prefix + ("zero-after-enable" if ctx.t.pci else "zero-after-ready"), r0 == 0,
                  f"queue reset register reads {r0} with the queue enabled")  # fmt: skip
    old = ctx.rings[q]
    for _ in range(2):
        submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    await wait_used(ctx, q, 2)
    await regs.reset()
    # "busy": the register reads 1 while the reset is in progress, so the first 0 it reads
    # must mean done: the queue stopped at that instant and its old ring left alone after
    polls = 0
    rst = await regs.read("reset")
    while rst and polls < RESET_POLLS:
        polls += 1
        rst = await regs.read("reset")
    ready_at_zero = await regs.read("ready") if rst == 0 else None
    rst, ready = await regs.read("reset"), await regs.read("ready")
    ctx.log.check(
        prefix + "done", rst == 0 and ready == 0, f"after the queue reset: reset {rst}, enabled {ready}"
    )
    ctx.log.check(
        prefix + "action", ready == 0, f"writing 1 to the queue reset left the queue enabled ({ready})"
    )
    # The old ring: a new buffer and a kick must go unnoticed.
    mark = trace_mark(ctx)
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    await quiet(ctx)
    late = old.take_used()
    touched = device_touched(ctx, mark)
    evidence = f"after the queue reset: {len(late)} used on the old ring, accesses {touched[:3]}"
    ctx.log.check("vqreset.dev.stop", not late and not touched, evidence)
    if ready_at_zero is not None:  # never 0: the "done" rule has failed, busy is not reached
        ctx.log.check(
            prefix + "busy",
            ready_at_zero == 0 and not late and not touched,
            f"queue reset read 0 after {polls} polls with the queue reading enabled {ready_at_zero}; "
            f"the old ring afterwards: {len(late)} used, accesses {touched[:3]}",
        )
    # Re-enable with another size at other addresses.
    if ready:
        # the queue never stopped: re-enabling it is not what the driver can do next
        why = "the queue reset did not take effect (see " + prefix + "action), so it cannot be re-enabled"
        for rid in ("vqreset.dev.reenable-honour-config", "vqreset.dev.default-state"):
            ctx.log.untested(rid, why)
        await ctx.t.ops.set_status(0)
        after = await regs.read("reset")
        ctx.log.check(
            prefix + "zero-on-reset", after == 0, f"queue reset register reads {after} after device reset"
        )
        return
    fresh = await add_queue(ctx, q, NEW_SIZE)
    r = submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    got = await wait_used(ctx, q, 1)
    idx = fresh.used_idx() if isinstance(fresh, RawSplitRing) else None
    ctx.log.check("vqreset.dev.reenable-honour-config", [u.id for u in got] == [r.head],
                  f"re-enabled with {NEW_SIZE} entries at new addresses: used {got}")  # fmt: skip
    ctx.log.check("vqreset.dev.default-state", bool(got) and (idx is None or idx == 1),
                  f"after the reset the device's used index continued at {idx} (expected 1)")  # fmt: skip
    await ctx.t.ops.set_status(0)
    after = await regs.read("reset")
    ctx.log.check(
        prefix + "zero-on-reset", after == 0, f"queue reset register reads {after} after device reset"
    )
