"""Device checkers for virtio-console (5.3) with MULTIPORT: the ports the device adds and
removes on the control receiveq, and the byte order of config and control messages
through the legacy interface.

The conformance driver sends DEVICE_READY on the control transmitq and reads every
control message the device answers with (one struct virtio_console_control per buffer),
decoded in the guest's byte order on the legacy interface: a device writing the other
order shows up as port ids and events no device could mean.
"""

from __future__ import annotations

from virtio_sim import layouts
from virtio_sim.layouts import ByteOrder
from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    Request,
    add_queue,
    buffer,
    checker,
    driver_ok,
    kick,
    negotiate,
    submit,
    wait_used,
)
from virtio_sim.spec import CONSOLE, CONSOLE_E, CONSOLE_F

IDS = (
    "console.dev.port-add-valid",
    "console.dev.port-remove-valid",
    "console.legacy.config-native-endian-dev",
    "console.legacy.control-native-endian-dev",
)
C_RX, C_TX = 2, 3
CONTROL_BUFFER = 64  # room for a control message and its data (RESIZE, PORT_NAME)
KNOWN_EVENTS = {
    CONSOLE_E.PORT_ADD,
    CONSOLE_E.PORT_REMOVE,
    CONSOLE_E.CONSOLE_PORT,
    CONSOLE_E.RESIZE,
    CONSOLE_E.PORT_OPEN,
    CONSOLE_E.PORT_NAME,
}


@checker("console_control", IDS, keys=("console",))
async def console_control(ctx: Ctx) -> None:
    await negotiate(ctx)
    if not ctx.has(CONSOLE_F.MULTIPORT):
        for rid in IDS:
            ctx.log.not_applicable(
                rid, "VIRTIO_CONSOLE_F_MULTIPORT not negotiated (no control queues, no max_nr_ports)"
            )
        return
    order: ByteOrder = "big" if ctx.legacy and ctx.order == "big" else "little"
    off = layouts.CONSOLE_CONFIG_OFFSETS["max_nr_ports"]
    raw = bytes([await ctx.t.ops.read_config(off + i, 1) for i in range(4)])
    max_nr = int.from_bytes(raw, order)
    if ctx.legacy:
        ctx.log.check(
            "console.legacy.config-native-endian-dev",
            1 <= max_nr <= CONSOLE.max_ports_limit,
            f"max_nr_ports reads {max_nr:#x} in the {ctx.order}-endian guest's order (bytes {raw.hex()})",
        )
    else:
        ctx.log.not_applicable("console.legacy.config-native-endian-dev", "modern interface")
    for q in (0, 1, C_RX, C_TX):
        await add_queue(ctx, q)
    await driver_ok(ctx)
    posted = [submit(ctx, Request(C_RX, [buffer(ctx, CONTROL_BUFFER, write=True)], None)) for _ in range(32)]
    await kick(ctx, C_RX)
    codec = layouts.console_control_codec(order)
    ready = codec.pack(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)
    submit(ctx, Request(C_TX, [buffer(ctx, ready, write=False)], 0))
    await kick(ctx, C_TX)
    await wait_used(ctx, C_TX, 1)
    used = await wait_used(ctx, C_RX, 1)
    by_head = {r.head: r for r in posted}
    messages = []
    for u in used:
        r = by_head.get(u.id)
        if r is None or u.length < layouts.CONSOLE_CONTROL_SIZE:
            continue
        data = ctx.dut.memory.read(r.segments[0].addr, layouts.CONSOLE_CONTROL_SIZE)
        messages.append(codec.unpack(data))
    added: list[int] = []
    bad_add, bad_remove, odd = [], [], []
    for port, event, value in messages:
        if event not in KNOWN_EVENTS or port >= max_nr:
            odd.append((port, event, value))
        if event == CONSOLE_E.PORT_ADD:
            if port in added or port >= max_nr:
                bad_add.append(port)
            added.append(port)
        elif event == CONSOLE_E.PORT_REMOVE and port not in added:
            bad_remove.append(port)
    if ctx.legacy:
        ctx.log.check(
            "console.legacy.control-native-endian-dev",
            bool(messages) and not odd,
            f"control messages read in the {ctx.order}-endian guest's order: {messages[:4]}",
        )
    else:
        ctx.log.not_applicable("console.legacy.control-native-endian-dev", "modern interface")
    if not added:
        why = "the device added no port after DEVICE_READY (it has none): nothing to judge"
        for rid in ("console.dev.port-add-valid", "console.dev.port-remove-valid"):
            ctx.log.untested(rid, why)
        return
    ctx.log.check(
        "console.dev.port-add-valid",
        not bad_add,
        f"PORT_ADD for ports {added} (max_nr_ports {max_nr}): repeated or out of range {bad_add}",
    )
    ctx.log.check(
        "console.dev.port-remove-valid", not bad_remove, f"PORT_REMOVE for ports never added: {bad_remove}"
    )
