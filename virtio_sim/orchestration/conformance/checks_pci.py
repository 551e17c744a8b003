"""Device checkers for virtio over PCI: identity, the virtio capabilities and their
structures, the common configuration's select windows and queue fields, the PCI
configuration access capability, the legacy I/O header and MSI-X vector rules."""

from __future__ import annotations

from virtio_sim.guest.transport.pci_legacy import PciLegacyTransport
from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.layouts import (
    COMMON_CFG,
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    MSIX_CAP,
    PCI_HEADER,
    VIRTIO_CAP,
    VIRTIO_CFG_CAP,
)
from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    ack,
    bring_up,
    checker,
    kick,
    negotiate,
    reset,
    submit,
    traffic_queue,
    traffic_request,
    wait_used,
)
from virtio_sim.spec import DEVICE_TYPES, MSIX, PCI, PCI_CAP, PCI_CAP_ID, PCI_STATUS, STATUS, F

NO_VECTOR = PCI.msix_no_vector
ID_IDS = (
    "pci.id.dev-vendor",
    "pci.id.dev-device-id",
    "pci.id.dev-nontrans-range",
    "pci.id.dev-nontrans-revision",
    "pci.id.dev-nontrans-subsys",
    "pci.legacy.dev-revision-zero",
    "pci.legacy.dev-subsys-is-virtio-id",
    "pci.legacy.dev-transitional-id",
    "pci.legacy.dev-bar0-io",
    "pci.legacy.dev-expose-io-bar0",
    "pci.dev.pci-compliant",
)
PCI_ONLY = "virtio over PCI only"


def _skip(ctx: Ctx, ids: tuple[str, ...], why: str) -> bool:
    if ctx.t.pci is None:
        for rid in ids:
            ctx.log.not_applicable(rid, why)
        return True
    return False


@checker("pci_identity", ID_IDS, transports=("pci-modern", "pci-legacy"))
async def pci_identity(ctx: Ctx) -> None:
    """Vendor/device/revision/subsystem ids by flavour, the legacy I/O BAR 0, and the
    basic PCI rules the header must keep (capability list present and well-formed)."""
    if _skip(ctx, ID_IDS, PCI_ONLY):
        return
    d = ctx.t.pci
    assert d is not None and ctx.t.bus is not None
    vid = DEVICE_TYPES[ctx.key].id
    ctx.log.check("pci.id.dev-vendor", d.vendor_id == PCI.vendor_id, f"vendor id {d.vendor_id:#06x}")
    transitional = PCI.transitional_device_id_min <= d.device_id <= PCI.transitional_device_id_max
    modern_id = d.device_id == PCI.modern_device_id_base + vid
    ctx.log.check("pci.id.dev-device-id", modern_id or transitional, f"device id {d.device_id:#06x}")
    if transitional:
        for rid in (
            "pci.id.dev-nontrans-range",
            "pci.id.dev-nontrans-revision",
            "pci.id.dev-nontrans-subsys",
        ):
            ctx.log.not_applicable(rid, "transitional device")
        ctx.log.check(
            "pci.legacy.dev-revision-zero",
            d.revision == PCI.transitional_revision,
            f"transitional device has revision {d.revision}",
        )
        ctx.log.check(
            "pci.legacy.dev-subsys-is-virtio-id",
            d.subsystem_id == vid,
            f"subsystem id {d.subsystem_id:#x}, virtio id {vid}",
        )
        ctx.log.passed("pci.legacy.dev-transitional-id")
        bar0 = d.bar(0)
        io = bar0 is not None and bar0.is_io
        ctx.log.check("pci.legacy.dev-bar0-io", io, "transitional device without an I/O BAR 0")
        ctx.log.check("pci.legacy.dev-expose-io-bar0", io, "transitional device without an I/O BAR 0")
    else:
        ctx.log.check(
            "pci.id.dev-nontrans-range",
            PCI.device_id_min <= d.device_id <= PCI.device_id_max,
            f"device id {d.device_id:#06x}",
        )
        ctx.log.check(
            "pci.id.dev-nontrans-revision", d.revision >= PCI.modern_revision_min, f"revision {d.revision}"
        )
        ctx.log.check(
            "pci.id.dev-nontrans-subsys",
            d.subsystem_id >= PCI.modern_subsystem_id_min,
            f"subsystem id {d.subsystem_id:#x}",
        )
        for rid in (
            "pci.legacy.dev-revision-zero",
            "pci.legacy.dev-subsys-is-virtio-id",
            "pci.legacy.dev-transitional-id",
            "pci.legacy.dev-bar0-io",
            "pci.legacy.dev-expose-io-bar0",
        ):
            ctx.log.not_applicable(rid, "non-transitional device")
    status = await ctx.t.bus.read(d.bdf, PCI_HEADER["status"], 2)
    ok = bool(status & PCI_STATUS.CAP_LIST) and bool(d.caps) and not d.problems
    ctx.log.check("pci.dev.pci-compliant", ok, f"status {status:#x}, caps {d.caps}, problems {d.problems}")


CAP_IDS = (
    "pci.cap.dev-cap-len",
    "pci.common.dev-present",
    "pci.common.dev-offset-align4",
    "pci.notify.dev-present",
    "pci.notify.dev-offset-align",
    "pci.notify.dev-multiplier",
    "pci.notify.dev-length",
    "pci.isr.dev-present",
    "pci.devcfg.dev-present",
    "pci.devcfg.dev-offset-align4",
    "pci.cfgcap.dev-present",
    "pci.cfgcap.dev-read",
    "pci.cfgcap.dev-write",
)
HAS_DEVICE_CONFIG = ("blk", "net", "console", "iommu")


@checker("pci_capabilities", CAP_IDS, transports=("pci-modern",))
async def pci_capabilities(ctx: Ctx) -> None:
    """Walk the vendor capabilities: each structure type present where required, offsets
    aligned, cap_len right, notify multiplier and length sane; then read and write the
    common config through the PCI configuration access capability."""
    t = ctx.t.ops
    if ctx.t.pci is None or not isinstance(t, PciModernTransport):
        for rid in CAP_IDS:
            ctx.log.not_applicable(rid, "modern virtio-pci interface only")
        return
    d, bus = ctx.t.pci, ctx.t.bus
    assert bus is not None
    caps = []
    for pos in d.find_caps(PCI_CAP_ID.VNDR):
        fields = {
            k: await bus.read(d.bdf, pos + VIRTIO_CAP[k], w)
            for k, w in (("cap_len", 1), ("cfg_type", 1), ("bar", 1), ("id", 1), ("offset", 4), ("length", 4))
        }
        fields["pos"] = pos
        caps.append(fields)
    by_type: dict[int, list[dict[str, int]]] = {}
    for c in caps:
        by_type.setdefault(c["cfg_type"], []).append(c)
    min_len = {
        PCI_CAP.NOTIFY: VIRTIO_CAP["notify_off_multiplier"] + 4,
        PCI_CAP.PCI_CFG: VIRTIO_CFG_CAP["pci_cfg_data"] + 4,
    }
    bad_len = [c for c in caps if c["cap_len"] < min_len.get(c["cfg_type"], VIRTIO_CAP["length"] + 4)]
    ctx.log.check("pci.cap.dev-cap-len", not bad_len, f"capabilities with a short cap_len: {bad_len}")
    common = by_type.get(PCI_CAP.COMMON, [])
    ctx.log.check("pci.common.dev-present", bool(common), "no common configuration capability")
    ctx.log.check("pci.common.dev-offset-align4", all(c["offset"] % 4 == 0 for c in common), f"{common}")
    notify = by_type.get(PCI_CAP.NOTIFY, [])
    ctx.log.check("pci.notify.dev-present", bool(notify), "no notification capability")
    await negotiate(ctx)
    nd = bool(ctx.offered >> F.NOTIFICATION_DATA & 1)
    align = 4 if nd else 2
    ctx.log.check("pci.notify.dev-offset-align", all(c["offset"] % align == 0 for c in notify), f"{notify}")
    mults, lens_ok = [], True
    for c in notify:
        m = await bus.read(d.bdf, c["pos"] + VIRTIO_CAP["notify_off_multiplier"], 4)
        mults.append(m)
        n_q = await t._r("num_queues")
        for qi in range(n_q):
            await t._w("queue_select", qi)
            off = await t._r("queue_notify_off")
            if c["length"] < off * m + (4 if nd else 2):
                lens_ok = False
    good_mult = all(m == 0 or (m >= 2 and not m & (m - 1)) for m in mults)
    ctx.log.check("pci.notify.dev-multiplier", good_mult, f"notify_off_multiplier {mults}")
    ctx.log.check(
        "pci.notify.dev-length",
        bool(notify) and lens_ok and all(c["length"] >= 2 for c in notify),
        f"notify lengths {[c['length'] for c in notify]}",
    )
    ctx.log.check("pci.isr.dev-present", bool(by_type.get(PCI_CAP.ISR)), "no ISR capability")
    dev = by_type.get(PCI_CAP.DEVICE, [])
    if ctx.key in HAS_DEVICE_CONFIG:
        ctx.log.check(
            "pci.devcfg.dev-present", bool(dev), "device type has config but no DEVICE_CFG capability"
        )
    else:
        ctx.log.not_applicable("pci.devcfg.dev-present", f"{ctx.key} has no device-specific configuration")
    if dev:
        ctx.log.check("pci.devcfg.dev-offset-align4", all(c["offset"] % 4 == 0 for c in dev), f"{dev}")
    else:
        ctx.log.not_applicable("pci.devcfg.dev-offset-align4", "no DEVICE_CFG capability")
    cfg = by_type.get(PCI_CAP.PCI_CFG, [])
    ctx.log.check("pci.cfgcap.dev-present", bool(cfg), "no PCI configuration access capability")
    if not cfg or not common:
        for rid in ("pci.cfgcap.dev-read", "pci.cfgcap.dev-write"):
            ctx.log.not_applicable(rid, "no PCI configuration access capability")
        return
    pos, cbar, coff = cfg[0]["pos"], common[0]["bar"], common[0]["offset"]

    async def window(reg: str, width: int) -> None:
        await bus.write(d.bdf, pos + VIRTIO_CAP["bar"], 1, cbar)
        await bus.write(d.bdf, pos + VIRTIO_CAP["offset"], 4, coff + COMMON_CFG[reg])
        await bus.write(d.bdf, pos + VIRTIO_CAP["length"], 4, width)

    await window("queue_select", 2)
    await bus.write(d.bdf, pos + VIRTIO_CFG_CAP["pci_cfg_data"], 2, 0)
    direct_size = await t._r("queue_size")
    await window("queue_size", 2)
    via_cap = await bus.read(d.bdf, pos + VIRTIO_CFG_CAP["pci_cfg_data"], 2)
    ctx.log.check(
        "pci.cfgcap.dev-read",
        via_cap == direct_size,
        f"queue_size read {via_cap} through pci_cfg_data, {direct_size} directly",
    )
    await window("device_feature_select", 4)
    await bus.write(d.bdf, pos + VIRTIO_CFG_CAP["pci_cfg_data"], 4, 1)
    sel = await t._r("device_feature_select")
    ctx.log.check(
        "pci.cfgcap.dev-write", sel == 1, f"device_feature_select reads {sel} after writing 1 via the cap"
    )
    await t._w("device_feature_select", 0)


COMMON_IDS = (
    "pci.common.dev-feature-window",
    "pci.common.dev-driver-feature-readback",
    "pci.common.dev-queue-size-unavailable",
    "pci.common.dev-queue-size-pow2",
    "pci.access.dev-64bit-halves",
)


@checker("pci_common_cfg", COMMON_IDS, transports=("pci-modern",))
async def pci_common_cfg(ctx: Ctx) -> None:
    """Select windows of device_feature/driver_feature, queue_size of absent queues and
    its power-of-two rule, and 64-bit queue addresses written as two halves."""
    t = ctx.t.ops
    if not isinstance(t, PciModernTransport):
        for rid in COMMON_IDS:
            ctx.log.not_applicable(rid, "modern virtio-pci interface only")
        return
    await reset(ctx)
    await t.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    full = await t.get_features()
    windows = []
    for sel in range(4):
        await t._w("device_feature_select", sel)
        windows.append(await t._r("device_feature"))
    expect = [(full >> (32 * s)) & 0xFFFFFFFF for s in range(4)]
    ctx.log.check(
        "pci.common.dev-feature-window",
        windows == expect,
        f"device_feature windows {[hex(w) for w in windows]}, expected {[hex(e) for e in expect]}",
    )
    wrote, back = [], []
    for sel, value in ((0, full & 0xFFFFFFFF), (1, full >> 32 & 0xFFFFFFFF)):
        await t._w("driver_feature_select", sel)
        await t._w("driver_feature", value)
        wrote.append(value)
    for sel in (0, 1):
        await t._w("driver_feature_select", sel)
        back.append(await t._r("driver_feature"))
    ctx.log.check(
        "pci.common.dev-driver-feature-readback",
        back == wrote,
        f"driver_feature wrote {[hex(v) for v in wrote]}, read {[hex(v) for v in back]}",
    )
    n_q = await t._r("num_queues")
    await t._w("queue_select", n_q)
    absent = await t._r("queue_size")
    ctx.log.check(
        "pci.common.dev-queue-size-unavailable",
        absent == 0,
        f"queue_size of absent queue {n_q} reads {absent}",
    )
    sizes = []
    for qi in range(n_q):
        await t._w("queue_select", qi)
        sizes.append(await t._r("queue_size"))
    ctx.log.check(
        "pci.common.dev-queue-size-pow2",
        all(s == 0 or not s & (s - 1) for s in sizes),
        f"queue sizes {sizes}",
    )
    await t._w("queue_select", 0)
    addr = (0x12345 << 32) | 0x6789A000
    base = t.common.address + COMMON_CFG["queue_desc"]
    await ctx.dut.link.write(base + 4, 4, addr >> 32)  # high half first
    await ctx.dut.link.write(base, 4, addr & 0xFFFFFFFF)
    lo = await ctx.dut.link.read(base, 4)
    hi = await ctx.dut.link.read(base + 4, 4)
    ctx.log.check(
        "pci.access.dev-64bit-halves",
        (hi << 32 | lo) == addr,
        f"queue_desc written as halves {addr:#x}, reads {hi << 32 | lo:#x}",
    )
    await reset(ctx)


LEGACY_IDS = (
    "pci.legacy.dev-width-consistent",
    "pci.legacy.dev-config-offset",
    "pci.legacy.dev-high-features-unacked",
)


@checker("pci_legacy_header", LEGACY_IDS, transports=("pci-legacy",))
async def pci_legacy_header(ctx: Ctx) -> None:
    """The legacy I/O header: config right after the 20-byte header (MSI-X off), the same
    bytes at every access width, and only 32 feature bits."""
    t = ctx.t.ops
    if not isinstance(t, PciLegacyTransport):
        for rid in LEGACY_IDS:
            ctx.log.not_applicable(rid, "legacy virtio-pci interface only")
        return
    await negotiate(ctx)
    size = {"blk": 8, "net": 8, "console": 8, "iommu": 8}.get(ctx.key, 0)
    if not size:
        for rid in ("pci.legacy.dev-width-consistent", "pci.legacy.dev-config-offset"):
            ctx.log.not_applicable(rid, f"{ctx.key} has no device config")
    else:
        base = t.base + LEGACY_CONFIG_OFFSET
        by1 = bytes([await ctx.dut.link.pio_read(base + i, 1) for i in range(size)])
        by4 = b""
        for i in range(0, size, 4):
            by4 += (await ctx.dut.link.pio_read(base + i, 4)).to_bytes(4, ctx.dut.guest_order)
        ctx.log.check(
            "pci.legacy.dev-width-consistent", by1 == by4, f"1-byte {by1.hex()} vs 4-byte {by4.hex()}"
        )
        via_ops = bytes([await t.read_config(i, 1) for i in range(size)])
        ctx.log.check(
            "pci.legacy.dev-config-offset",
            via_ops == by1 and LEGACY_CONFIG_OFFSET_MSIX > LEGACY_CONFIG_OFFSET,
            f"config at {LEGACY_CONFIG_OFFSET} reads {by1.hex()}",
        )
    feats = await ctx.dut.link.pio_read(t.base, 4)
    ctx.log.check(
        "pci.legacy.dev-high-features-unacked",
        not feats >> 32 and not ctx.features >> 32,
        f"legacy host_features {feats:#x}",
    )


MSIX_IDS = (
    "pci.msix.dev-table-size",
    "pci.msix.dev-vector-count",
    "pci.msix.dev-map-any",
    "pci.msix.dev-unmap",
    "pci.msix.dev-readback",
    "pci.msix.dev-unmapped-on-reset",
    "pci.msix.dev-report-failure",
    "pci.msix.dev-no-vector-no-irq",
    "pci.msix.dev-no-config-vector-no-irq",
)


@checker("pci_msix", MSIX_IDS, transports=("pci-modern",))
async def pci_msix(ctx: Ctx) -> None:
    """MSI-X vector mapping through config_msix_vector/queue_msix_vector: read-back,
    unmapping, refusal of an out-of-range vector, NO_VECTOR after reset, and no interrupt
    for an unmapped queue."""
    t = ctx.t.ops
    d = ctx.t.pci
    msix = [pos for cid, pos in (d.caps if d else []) if cid == PCI_CAP_ID.MSIX]
    if not isinstance(t, PciModernTransport) or not msix or d is None or ctx.t.bus is None:
        for rid in MSIX_IDS:
            ctx.log.not_applicable(rid, "no MSI-X capability on a modern interface")
        return
    bus = ctx.t.bus
    control = await bus.read(d.bdf, msix[0] + MSIX_CAP["message_control"], 2)
    entries = (control & MSIX.table_size_mask) + 1
    ctx.log.passed("pci.msix.dev-table-size")
    ctx.log.check("pci.msix.dev-vector-count", 2 <= entries <= MSIX.max_vectors, f"{entries} vectors")
    # MSI-X enabled (all vectors masked at the function: nothing is delivered anywhere)
    await bus.write(
        d.bdf, msix[0] + MSIX_CAP["message_control"], 2, control | MSIX.ENABLE | MSIX.FUNCTION_MASK
    )
    try:
        q = traffic_queue(ctx)
        await bring_up(ctx, (q,), ok=False)
        results = []
        for vec in range(entries):
            await t._w("config_msix_vector", vec)
            results.append(await t._r("config_msix_vector"))
        ctx.log.check(
            "pci.msix.dev-map-any", results == list(range(entries)), f"config vector read-back {results}"
        )
        ctx.log.check(
            "pci.msix.dev-readback", results == list(range(entries)), f"config vector read-back {results}"
        )
        await t._w("config_msix_vector", NO_VECTOR)
        un = await t._r("config_msix_vector")
        ctx.log.check("pci.msix.dev-unmap", un == NO_VECTOR, f"config vector reads {un:#x} after NO_VECTOR")
        await t._w("config_msix_vector", entries + 3)
        refused = await t._r("config_msix_vector")
        ctx.log.check(
            "pci.msix.dev-report-failure",
            refused == NO_VECTOR,
            f"out-of-range vector {entries + 3} reads back {refused:#x}",
        )
        await t._w("queue_select", q)
        await t._w("queue_msix_vector", NO_VECTOR)
        await t.set_status(await t.get_status() | STATUS.DRIVER_OK)
        mark = len(ctx.dut.irqs)
        submit(ctx, traffic_request(ctx))
        await kick(ctx, q)
        used = await wait_used(ctx, q, 1)
        irqs = ctx.dut.interrupts_since(mark)
        ctx.log.check(
            "pci.msix.dev-no-vector-no-irq",
            bool(used) and irqs == 0,
            f"queue vector NO_VECTOR: {irqs} interrupt(s) for a used buffer",
        )
        await t._w("config_msix_vector", NO_VECTOR)
        mark = len(ctx.dut.irqs)
        if ctx.dut.poke_config():
            isr = await t.ack_interrupt()
            irqs = ctx.dut.interrupts_since(mark)
            why = f"config vector NO_VECTOR: {irqs} interrupt(s) for a config change (ISR {isr:#x})"
            ctx.log.check("pci.msix.dev-no-config-vector-no-irq", irqs == 0, why)
        else:
            ctx.log.not_applicable(
                "pci.msix.dev-no-config-vector-no-irq", "no config change could be provoked"
            )
        await t._w("queue_msix_vector", 1)
        await t._w("config_msix_vector", 0)
        await t.set_status(0)
        await t._w("queue_select", q)
        qv, cv = await t._r("queue_msix_vector"), await t._r("config_msix_vector")
        ctx.log.check(
            "pci.msix.dev-unmapped-on-reset",
            qv == NO_VECTOR and cv == NO_VECTOR,
            f"after reset queue vector {qv:#x}, config vector {cv:#x}",
        )
    finally:
        await bus.write(d.bdf, msix[0] + MSIX_CAP["message_control"], 2, control)
        await ack(ctx)
