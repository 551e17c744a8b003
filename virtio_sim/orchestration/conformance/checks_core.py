"""Device checkers for status, reset, feature negotiation, config space, queue setup and
interrupt status: the rules every device on every transport follows."""

from __future__ import annotations

from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.layouts import (
    CONSOLE_CONFIG_OFFSETS,
    MMIO_OFFSETS,
    NET_CONFIG_OFFSETS,
    PCI_HEADER,
    VirtioIommuConfig,
    field_offsets,
    virtio_blk_config,
)
from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    ack,
    add_queue,
    bring_up,
    checker,
    default_features,
    device_touched,
    driver_ok,
    kick,
    negotiate,
    quiet,
    reset,
    submit,
    trace_mark,
    traffic_queue,
    traffic_request,
    wait_used,
)
from virtio_sim.orchestration.conformance.rawring import Segment
from virtio_sim.spec import (
    FEATURES,
    MMIO,
    MMIO_INT,
    NET_FEATURE_DEPS,
    PCI_STATUS,
    STATUS,
    F,
    bit,
    unmet_dependencies,
)

ISR_QUEUE = MMIO_INT.USED_BUFFER  # the same bits in the PCI ISR
ISR_CONFIG = MMIO_INT.CONFIG_CHANGE
OUT_OF_RAM = 1 << 46  # no guest RAM here on any machine


@checker(
    "status_driver_ok",
    ("status.dev.no-use-before-driver-ok", "init.legacy.dev-use-before-driver-ok"),
)
async def status_driver_ok(ctx: Ctx) -> None:
    """A buffer made available and kicked before DRIVER_OK: a modern device leaves it alone
    (no used entry, no interrupt); through the legacy interface it must serve it."""
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,), ok=False)
    mark = trace_mark(ctx)
    req = submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    await quiet(ctx)
    if ctx.legacy:
        ctx.log.not_applicable(
            "status.dev.no-use-before-driver-ok", "legacy interface: use before DRIVER_OK is allowed"
        )
        used = await wait_used(ctx, q, 1)
        ctx.log.check(
            "init.legacy.dev-use-before-driver-ok",
            len(used) == 1,
            f"legacy interface: buffer kicked before DRIVER_OK not served ({len(used)} used)",
        )
        return
    ctx.log.not_applicable("init.legacy.dev-use-before-driver-ok", "modern interface")
    early = ctx.rings[q].take_used()
    isr = await ack(ctx)
    ring_writes = [a for a in device_touched(ctx, mark) if a.startswith("write")]
    ok = not early and not isr & ISR_QUEUE and not ring_writes
    evidence = f"before DRIVER_OK: {len(early)} used entries, ISR {isr:#x}, device writes {ring_writes[:3]}"
    if ctx.log.check("status.dev.no-use-before-driver-ok", ok, evidence):
        await driver_ok(ctx)
        await kick(ctx, q)
        used = await wait_used(ctx, q, 1)
        if not used:
            ctx.notes.append(
                f"{ctx.key}: buffer kicked before DRIVER_OK not served after DRIVER_OK and a kick"
            )
    del req


@checker(
    "status_needs_reset",
    ("status.dev.set-needs-reset", "status.dev.needs-reset-config-notify"),
)
async def status_needs_reset(ctx: Ctx) -> None:
    """A descriptor pointing outside guest RAM is an error the device cannot recover from
    without a reset: it should say DEVICE_NEEDS_RESET and, past DRIVER_OK, must then send
    a configuration change notification."""
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,))
    req = traffic_request(ctx)
    bad = req.segments[-1]
    req.segments[-1] = Segment(OUT_OF_RAM, bad.length, bad.write)
    submit(ctx, req)
    await ack(ctx)
    await kick(ctx, q)
    await wait_used(ctx, q, 1, timeout=0.3)
    status = await ctx.t.ops.get_status()
    isr = await ack(ctx)
    if ctx.legacy:
        for rid in ("status.dev.set-needs-reset", "status.dev.needs-reset-config-notify"):
            ctx.log.not_applicable(rid, "legacy interface has no DEVICE_NEEDS_RESET")
        return
    if not status & STATUS.DEVICE_NEEDS_RESET:
        # Dropping the request (used len 0) is also a valid recovery; a SHOULD then.
        ctx.log.failed("status.dev.set-needs-reset", f"descriptor at {OUT_OF_RAM:#x}: status {status:#x}")
        ctx.log.not_applicable(
            "status.dev.needs-reset-config-notify", "device did not set DEVICE_NEEDS_RESET"
        )
        return
    ctx.log.passed("status.dev.set-needs-reset")
    if ctx.legacy:
        ctx.log.not_applicable(
            "status.dev.needs-reset-config-notify", "legacy interface has no DEVICE_NEEDS_RESET"
        )
        return
    ctx.log.check(
        "status.dev.needs-reset-config-notify",
        bool(isr & ISR_CONFIG),
        f"DEVICE_NEEDS_RESET set after DRIVER_OK, but interrupt status {isr:#x} has no config change",
    )


@checker(
    "reset_behaviour",
    (
        "reset.dev.status-zero",
        "reset.dev.quiet-after-reset",
        "pci.common.dev-reset-on-zero",
        "pci.common.dev-queue-enable-reset",
        "mmio.dev.reset-clears",
        "mmio.legacy.dev-reset-clears-pfn",
    ),
)
async def reset_behaviour(ctx: Ctx) -> None:
    """Reset reads back 0, clears queue enables / PFNs and interrupt status, and after it
    the device touches no queue even when the driver kicks a stale one."""
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,))
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    await wait_used(ctx, q, 1)  # leaves an interrupt pending, deliberately not acked
    ring = ctx.rings[q]
    await ctx.t.ops.set_status(0)
    status = await ctx.t.ops.get_status()
    ctx.log.check("reset.dev.status-zero", status == 0, f"status reads {status:#x} after writing 0")
    kind = ctx.t.kind
    if kind.startswith("pci"):
        ctx.log.check(
            "pci.common.dev-reset-on-zero", status == 0, f"device_status reads {status:#x} after reset"
        )
    else:
        ctx.log.not_applicable("pci.common.dev-reset-on-zero", f"transport {kind}")
    link, base = ctx.dut.link, ctx.t.mmio_base
    if kind == "mmio-v2" and base is not None:
        await link.write(base + MMIO_OFFSETS["QueueSel"], 4, q)
        ready = await link.read(base + MMIO_OFFSETS["QueueReady"], 4)
        istat = await link.read(base + MMIO_OFFSETS["InterruptStatus"], 4)
        ctx.log.check(
            "mmio.dev.reset-clears",
            ready == 0 and istat == 0,
            f"after reset QueueReady={ready} InterruptStatus={istat:#x}",
        )
    else:
        ctx.log.not_applicable("mmio.dev.reset-clears", f"transport {kind}")
    if kind == "mmio-v1" and base is not None:
        await link.write(base + MMIO_OFFSETS["QueueSel"], 4, q)
        pfn = await link.read(base + MMIO_OFFSETS["QueuePFN"], 4)
        ctx.log.check("mmio.legacy.dev-reset-clears-pfn", pfn == 0, f"QueuePFN reads {pfn:#x} after reset")
    else:
        ctx.log.not_applicable("mmio.legacy.dev-reset-clears-pfn", f"transport {kind}")
    ops = ctx.t.ops
    if isinstance(ops, PciModernTransport):
        await ops._w("queue_select", q)
        enable = await ops._r("queue_enable")
        ctx.log.check(
            "pci.common.dev-queue-enable-reset", enable == 0, f"queue_enable reads {enable} after reset"
        )
    else:
        ctx.log.not_applicable("pci.common.dev-queue-enable-reset", f"transport {kind}")
    # A stale buffer and kick after reset: nothing may happen.
    await ack(ctx)
    mark = trace_mark(ctx)
    used_before = ring.take_used()
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    await quiet(ctx)
    touched = device_touched(ctx, mark)
    late = ring.take_used()
    isr = await ack(ctx)
    ctx.log.check(
        "reset.dev.quiet-after-reset",
        not touched and not late and not isr,
        f"after reset: {len(late)} used entries, ISR {isr:#x}, accesses {touched[:3]}",
    )
    del used_before


@checker(
    "features",
    (
        "features.dev.offer-version-1",
        "features.dev.no-unsupported-offer",
        "features.dev.offer-deps",
        "features.dev.reject-via-features-ok",
        "features.dev.accept-valid-subset",
        "features.dev.renegotiate-same",
        "features.dev.sriov-no-offer",
        "mmio.features.no-admin-vq",
        "features.legacy.dev-offer-any-layout",
        "features.legacy.dev-detect-legacy-driver",
        "init.legacy.dev-early-config-write",
    ),
)
async def features(ctx: Ctx) -> None:
    """What is offered (known bits, dependencies, VERSION_1, no SR-IOV/admin queues) and
    how FEATURES_OK answers: refusal of an unoffered bit, acceptance of a valid subset
    and of the same set again after a reset."""
    await reset(ctx)
    ops = ctx.t.ops
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    offered = await ops.get_features()
    ctx.offered = offered
    unknown = [b for b in range(64) if offered >> b & 1 and FEATURES.lookup(b, ctx.key) is None]
    ctx.log.check(
        "features.dev.no-unsupported-offer", not unknown, f"offers undefined feature bits {unknown}"
    )
    deps = unmet_dependencies(offered, NET_FEATURE_DEPS) if ctx.key == "net" else []
    ctx.log.check(
        "features.dev.offer-deps",
        not deps,
        f"offers {[ctx.feature_name(d.feature) for d in deps]} without their prerequisites",
    )
    ctx.log.check(
        "features.dev.sriov-no-offer",
        not offered >> F.SR_IOV & 1,
        "offers VIRTIO_F_SR_IOV without an SR-IOV capability",
    )
    if ctx.t.kind.startswith("mmio"):
        admin_vq = 41  # VIRTIO_F_ADMIN_VQ, not offerable over MMIO
        ctx.log.check(
            "mmio.features.no-admin-vq", not offered >> admin_vq & 1, "offers VIRTIO_F_ADMIN_VQ on mmio"
        )
    else:
        ctx.log.not_applicable("mmio.features.no-admin-vq", f"transport {ctx.t.kind}")
    if ctx.legacy:
        ctx.log.not_applicable("features.dev.offer-version-1", "legacy interface shows 32 feature bits")
        ctx.log.check(
            "features.legacy.dev-offer-any-layout",
            bool(offered >> F.ANY_LAYOUT & 1),
            f"transitional device offers {offered:#x} without VIRTIO_F_ANY_LAYOUT",
        )
        # A legacy driver may write device config before the feature step: write a config
        # byte back with its own value right after ACKNOWLEDGE, then use the device.
        await reset(ctx)
        await ops.set_status(STATUS.ACKNOWLEDGE)
        early = CONFIG_SIZES.get(ctx.key, 0)
        if early:
            await ops.write_config(0, 1, await ops.read_config(0, 1))
        # Detecting a legacy driver: serving a legacy-layout ring without VERSION_1 acked.
        q = traffic_queue(ctx)
        await negotiate_keep(ctx)
        await add_queue(ctx, q)
        await driver_ok(ctx)
        submit(ctx, traffic_request(ctx))
        await kick(ctx, q)
        used = await wait_used(ctx, q, 1)
        if early:
            ctx.log.check(
                "init.legacy.dev-early-config-write",
                len(used) == 1,
                "after a config write before the feature step the device did not serve a buffer",
            )
        else:
            ctx.log.not_applicable("init.legacy.dev-early-config-write", f"{ctx.key} has no device config")
        ctx.log.check(
            "features.legacy.dev-detect-legacy-driver",
            len(used) == 1,
            "no VERSION_1 acked, legacy ring layout not served",
        )
        for rid in (
            "features.dev.reject-via-features-ok",
            "features.dev.accept-valid-subset",
            "features.dev.renegotiate-same",
        ):
            ctx.log.not_applicable(rid, "legacy interface has no FEATURES_OK")
        return
    ctx.log.not_applicable("features.legacy.dev-offer-any-layout", "modern interface")
    ctx.log.not_applicable("init.legacy.dev-early-config-write", "modern interface")
    ctx.log.not_applicable("features.legacy.dev-detect-legacy-driver", "modern interface")
    ctx.log.check(
        "features.dev.offer-version-1",
        bool(offered >> F.VERSION_1 & 1),
        f"device features {offered:#x} lack VIRTIO_F_VERSION_1",
    )
    # An unoffered bit: the lowest transport bit the device does not offer.
    candidates = [
        b
        for b in (
            F.EVENT_IDX,
            F.INDIRECT_DESC,
            F.RING_PACKED,
            F.IN_ORDER,
            F.RING_RESET,
            F.NOTIFICATION_DATA,
            F.ORDER_PLATFORM,
            50,
        )
        if not offered >> b & 1
    ]
    base = default_features(ctx, offered)
    extra = candidates[0] if candidates else 50
    accepted = await negotiate(ctx, base | bit(extra), check=False)
    ctx.log.check(
        "features.dev.reject-via-features-ok",
        not accepted,
        f"FEATURES_OK accepted with unoffered {ctx.feature_name(extra)} acked",
    )
    minimal = bit(F.VERSION_1) | (offered & bit(F.ACCESS_PLATFORM))
    ok_min = await negotiate(ctx, minimal, check=False)
    ctx.log.check(
        "features.dev.accept-valid-subset", ok_min, f"FEATURES_OK refused for the subset {minimal:#x}"
    )
    first = await negotiate(ctx, base, check=False)
    again = await negotiate(ctx, base, check=False)
    ctx.log.check(
        "features.dev.renegotiate-same",
        again or not first,
        f"features {base:#x} accepted once, refused after a reset",
    )


async def negotiate_keep(ctx: Ctx) -> None:
    """The feature step without a reset (legacy: the device was already touched)."""
    ops = ctx.t.ops
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    ctx.offered = await ops.get_features()
    ctx.features = default_features(ctx, ctx.offered)
    await ops.set_features(ctx.features)


@checker(
    "config_space",
    (
        "config.dev.readable-before-features-ok",
        "mmio.dev.config-generation",
        "pci.common.dev-config-generation",
    ),
)
async def config_space(ctx: Ctx) -> None:
    """Config readable before FEATURES_OK (same values after); the generation is stable
    while nothing changes and moves when the config does (driver write of a writable
    field, or a device-side change where the back-end can provoke one)."""
    size = CONFIG_SIZES.get(ctx.key, 0)
    ops = ctx.t.ops
    await reset(ctx)
    await ops.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    before = [await ops.read_config(off, 1) for off in range(size)]
    await negotiate(ctx)
    after = [await ops.read_config(off, 1) for off in range(size)]
    if size:
        diff = [i for i in range(size) if before[i] != after[i] and i not in VOLATILE.get(ctx.key, ())]
        ctx.log.check(
            "config.dev.readable-before-features-ok",
            not diff,
            f"config bytes {diff[:8]} differ between before and after FEATURES_OK",
        )
    else:
        ctx.log.not_applicable("config.dev.readable-before-features-ok", f"{ctx.key} has no device config")
    rid = {"mmio-v2": "mmio.dev.config-generation", "pci-modern": "pci.common.dev-config-generation"}.get(
        ctx.t.kind
    )
    for other in ("mmio.dev.config-generation", "pci.common.dev-config-generation"):
        if other != rid:
            ctx.log.not_applicable(other, f"transport {ctx.t.kind}")
    if rid is None:
        return
    g0 = await ops.config_generation()
    g1 = await ops.config_generation()
    if not ctx.log.check(rid, g0 == g1, f"generation moved {g0} -> {g1} with no change"):
        return
    await driver_ok(ctx)
    # A device-side change (a driver's own write is no inconsistency it could observe).
    changed = ctx.dut.poke_config()
    if not changed:
        # half a rule: "stable while nothing changes" held, "moves on a change" was not seen
        ctx.log.untested(rid, "no device-side config change could be provoked on this device")
        return
    g2 = await ops.config_generation()
    ctx.log.check(rid, g2 != g1, f"config changed but generation stayed {g1}")


_BLK_CFG = field_offsets(virtio_blk_config())
#: config bytes compared before/after FEATURES_OK (fields every offer set has)
CONFIG_SIZES = {
    "blk": _BLK_CFG["max_discard_sectors"],
    "iommu": VirtioIommuConfig.sizeof(),
    "net": NET_CONFIG_OFFSETS["mtu"],
    "console": CONSOLE_CONFIG_OFFSETS["emerg_wr"],
}
VOLATILE: dict[str, tuple[int, ...]] = {}
BLK_WRITEBACK_OFFSET = _BLK_CFG["writeback"]


@checker(
    "queue_setup",
    (
        "split.qsize.power-of-two",
        "mmio.dev.queue-ready-readback",
        "mmio.dev.no-access-when-not-ready",
        "mmio.dev.magic",
        "mmio.dev.version-2",
        "mmio.dev.little-endian",
        "mmio.dev.shm-nonexistent",
    ),
)
async def queue_setup(ctx: Ctx) -> None:
    """Queue sizes, and on mmio: identity registers, QueueReady read-back, no queue access
    while QueueReady is 0, absent shared memory regions."""
    await negotiate(ctx)
    sizes = []
    index = 0
    while index < 8:
        try:
            n = await ctx.t.ops.queue_max_size(index)
        except Exception:
            break
        if not n:
            break
        sizes.append(n)
        index += 1
    if ctx.ring == "split" or not ctx.has(F.RING_PACKED):
        bad = [n for n in sizes if n & (n - 1) or n > 32768]
        ctx.log.check("split.qsize.power-of-two", bool(sizes) and not bad, f"queue sizes {sizes}")
    else:
        ctx.log.not_applicable("split.qsize.power-of-two", "packed ring negotiated")
    kind, base, link = ctx.t.kind, ctx.t.mmio_base, ctx.dut.link
    mmio_ids = (
        "mmio.dev.queue-ready-readback",
        "mmio.dev.no-access-when-not-ready",
        "mmio.dev.magic",
        "mmio.dev.version-2",
        "mmio.dev.little-endian",
        "mmio.dev.shm-nonexistent",
    )
    if base is None:
        for rid in mmio_ids:
            ctx.log.not_applicable(rid, f"transport {kind}")
        return
    magic = await link.read(base + MMIO_OFFSETS["MagicValue"], 4)
    ctx.log.check("mmio.dev.magic", magic == MMIO.magic, f"MagicValue {magic:#x}")
    # "virt" only reads as MMIO.magic when the register is little-endian.
    ctx.log.check(
        "mmio.dev.little-endian", magic == MMIO.magic, f"MagicValue {magic:#x} is not little-endian 'virt'"
    )
    version = await link.read(base + MMIO_OFFSETS["Version"], 4)
    if kind == "mmio-v2":
        ctx.log.check("mmio.dev.version-2", version == MMIO.version_modern, f"Version reads {version}")
    else:
        ctx.log.not_applicable("mmio.dev.version-2", "legacy device")
        for rid in (
            "mmio.dev.queue-ready-readback",
            "mmio.dev.no-access-when-not-ready",
            "mmio.dev.shm-nonexistent",
        ):
            ctx.log.not_applicable(rid, "legacy device (no QueueReady / SHM registers)")
        return
    await link.write(base + MMIO_OFFSETS["SHMSel"], 4, 0)
    shm = [
        await link.read(base + MMIO_OFFSETS[r], 4)
        for r in ("SHMLenLow", "SHMLenHigh", "SHMBaseLow", "SHMBaseHigh")
    ]
    ctx.log.check(
        "mmio.dev.shm-nonexistent",
        all(v == 0xFFFFFFFF for v in shm),
        f"SHM region 0 (none exists) reads len/base {[hex(v) for v in shm]}",
    )
    q = 0
    ring = await add_queue(ctx, q)
    await link.write(base + MMIO_OFFSETS["QueueSel"], 4, q)
    r1 = await link.read(base + MMIO_OFFSETS["QueueReady"], 4)
    await link.write(base + MMIO_OFFSETS["QueueReady"], 4, 0)
    r0 = await link.read(base + MMIO_OFFSETS["QueueReady"], 4)
    ctx.log.check(
        "mmio.dev.queue-ready-readback", r1 == 1 and r0 == 0, f"QueueReady read {r1} after 1, {r0} after 0"
    )
    await driver_ok(ctx)
    mark = trace_mark(ctx)
    req = traffic_request(ctx)
    if req.queue != q:
        req.queue = q
    try:
        submit(ctx, req)
    except Exception:
        pass
    await kick(ctx, q)
    await quiet(ctx)
    touched = device_touched(ctx, mark)
    used = ring.take_used()
    ctx.log.check(
        "mmio.dev.no-access-when-not-ready",
        not touched and not used,
        f"queue with QueueReady=0 was accessed: {touched[:3]}, {len(used)} used",
    )


@checker(
    "interrupt_status",
    (
        "mmio.dev.interrupt-status-latched",
        "mmio.dev.interrupt-status-no-stray",
        "pci.isr.dev-queue-bit",
        "pci.isr.dev-clear-on-read",
        "pci.isr.dev-intx-status",
        "pci.isr.dev-config-bit",
    ),
)
async def interrupt_status(ctx: Ctx) -> None:
    """The interrupt status register: set for a used buffer before the interrupt, no
    stray bits, latched until acknowledged (mmio) / cleared by the read (PCI ISR), and
    the PCI Interrupt Status bit follows it."""
    q = traffic_queue(ctx)
    await bring_up(ctx, (q,))
    await ack(ctx)
    irq_mark = len(ctx.dut.irqs)
    submit(ctx, traffic_request(ctx))
    await kick(ctx, q)
    used = await wait_used(ctx, q, 1)
    raised = ctx.dut.interrupts_since(irq_mark)
    kind, link = ctx.t.kind, ctx.dut.link
    if kind.startswith("mmio"):
        for rid in (
            "pci.isr.dev-queue-bit",
            "pci.isr.dev-clear-on-read",
            "pci.isr.dev-intx-status",
            "pci.isr.dev-config-bit",
        ):
            ctx.log.not_applicable(rid, f"transport {kind}")
        base = ctx.t.mmio_base
        assert base is not None
        s1 = await link.read(base + MMIO_OFFSETS["InterruptStatus"], 4)
        s2 = await link.read(base + MMIO_OFFSETS["InterruptStatus"], 4)
        ctx.log.check(
            "mmio.dev.interrupt-status-latched",
            bool(used) and s1 & 1 and s2 & 1,
            f"after a used buffer InterruptStatus read {s1:#x} then {s2:#x} (not acknowledged)",
        )
        ctx.log.check(
            "mmio.dev.interrupt-status-no-stray",
            not s1 & ~1,
            f"InterruptStatus {s1:#x} has bits for events that did not happen",
        )
        await link.write(base + MMIO_OFFSETS["InterruptACK"], 4, s1)
        s3 = await link.read(base + MMIO_OFFSETS["InterruptStatus"], 4)
        if s3:
            ctx.log.failed("mmio.dev.interrupt-status-latched", f"InterruptStatus {s3:#x} after InterruptACK")
        return
    for rid in ("mmio.dev.interrupt-status-latched", "mmio.dev.interrupt-status-no-stray"):
        ctx.log.not_applicable(rid, f"transport {kind}")
    pdev, bus = ctx.t.pci, ctx.t.bus
    assert pdev is not None and bus is not None
    pci_status = await bus.read(pdev.bdf, PCI_HEADER["status"], 2)
    isr = await ack(ctx)
    again = await ack(ctx)
    pci_status_after = await bus.read(pdev.bdf, PCI_HEADER["status"], 2)
    ctx.log.check(
        "pci.isr.dev-queue-bit",
        bool(used) and bool(isr & 1) and raised > 0,
        f"used buffer: ISR {isr:#x}, {raised} interrupt(s) raised",
    )
    ctx.log.check("pci.isr.dev-clear-on-read", again == 0, f"ISR read {isr:#x} then {again:#x}")
    intx_ok = (
        bool(pci_status & PCI_STATUS.INTERRUPT) == bool(isr) and not pci_status_after & PCI_STATUS.INTERRUPT
    )
    ctx.log.check(
        "pci.isr.dev-intx-status",
        intx_ok,
        f"PCI Status {pci_status:#x} with ISR {isr:#x}; {pci_status_after:#x} after the read",
    )
    if ctx.dut.poke_config():
        isr2 = await ack(ctx)
        ctx.log.check("pci.isr.dev-config-bit", bool(isr2 & ISR_CONFIG), f"config change: ISR {isr2:#x}")
    else:
        ctx.log.not_applicable("pci.isr.dev-config-bit", "no config change could be provoked")
