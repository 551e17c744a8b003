"""Device checkers for virtio-net (5.1): config, receive/transmit headers and buffers,
the control queue's RX and MAC classes, and the legacy interface's byte order.

Traffic needs a back-end that brings a transmitted frame back: our host devices run with
QEMU's default of a loopback here (host/devices/netbackend.py LoopbackBackend), so one
frame sent on transmitq arrives on receiveq, and the header, buffers and data the device
wrote can be judged. QEMU's devices under qtest have no netdev peer: only the config and
transmit-side completions are observable there, and the receive rules stay NOT_COVERED
with that reason (never PASS).
"""

from __future__ import annotations

import struct

from virtio_sim import layouts
from virtio_sim.netproto import net_hdr_len
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
from virtio_sim.orchestration.conformance.rawring import UsedEntry
from virtio_sim.spec import NET_ACK, NET_CTRL, NET_CTRL_MAC, NET_CTRL_RX, NET_F, NET_GSO, NET_HDR_F, NET_S

RX, TX = 0, 1
UNKNOWN_TX_FLAG = 0x80  # no spec defines it
PEER = bytes.fromhex("020000000001")  # the (imaginary) sender of our frames
OTHER = bytes.fromhex("020000000077")  # a unicast address nobody has
SMALL_RX = 64  # receive buffers that make one frame span several (MRG_RXBUF)
BIG_RX = 1526  # one buffer per frame: header + a full Ethernet frame
IP_HDR, UDP_HDR, ETH_HDR = 20, 8, 14
UDP_CSUM_OFFSET = 6

TRAFFIC_IDS = (
    "net.rx.dev-num-buffers",
    "net.rx.dev-single-buffer",
    "net.rx.dev-num-buffers-one",
    "net.rx.dev-num-buffers-mrg",
    "net.rx.dev-fill-all-but-last",
    "net.rx.dev-buffers-together",
    "net.rx.dev-flags-zero-without-guest-csum",
    "net.rx.dev-gso-gated",
    "net.rx.dev-gso-none",
    "net.rx.dev-no-rsc-info-without-rsc-ext",
    "net.rx.dev-data-valid",
    "net.rx.dev-needs-csum-rules",
    "net.tx.dev-ignore-unknown-flags",
    "net.tx.dev-csum-fields-only-with-needs-csum",
    "net.tx.dev-hdr-len-not-trusted",
    "net.tx.dev-no-rely-checksum",
    "net.legacy.hdr-native-endian-dev",
)
CTRL_IDS = (
    "net.ctrl.dev-rx-mode-cmds",
    "net.mac.dev-table-before-complete",
    "net.mac.dev-empty-on-reset",
    "net.mac.dev-config-mac-before-complete",
    "net.legacy.mac-entries-native-endian-dev",
)
CONFIG_IDS = (
    "net.cfg.dev-max-pairs",
    "net.cfg.dev-mtu-range",
    "net.cfg.dev-mtu-stable",
    "net.cfg.dev-speed",
    "net.cfg.dev-duplex",
    "net.legacy.config-native-endian-dev",
    "net.legacy.mac-writable",
)
CFG = layouts.NET_CONFIG_OFFSETS
SPEED_DUPLEX = 63  # VIRTIO_NET_F_SPEED_DUPLEX (5.1.3); no device here offers it but QEMU's with speed=


def inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return int(s)


def udp_frame(dst: bytes, payload: bytes, *, good_csum: bool = False, partial: bool = False) -> bytes:
    """Ethernet + IPv4 + UDP. The UDP checksum is deliberately wrong unless ``good_csum``;
    ``partial``: it holds the pseudo-header sum only (what a sender asking for checksum
    completion with NEEDS_CSUM leaves there)."""
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ulen = UDP_HDR + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, IP_HDR + ulen, 1, 0, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", 0xFFFF - inet_sum(ip)) + ip[12:]
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", 4000, 4001, ulen, 0) + payload
    if partial:
        csum = inet_sum(pseudo)
    elif good_csum:
        csum = (0xFFFF - inet_sum(pseudo + udp)) or 0xFFFF
    else:
        csum = 0x1234
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return dst + PEER + b"\x08\x00" + ip + udp


def udp_csum_ok(frame: bytes) -> bool:
    ip = frame[ETH_HDR : ETH_HDR + IP_HDR]
    udp = frame[ETH_HDR + IP_HDR :]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return inet_sum(pseudo + udp) == 0xFFFF


class Net:
    """The conformance driver's view of one virtio-net: queues up, mac known."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.hdr_len = net_hdr_len(ctx.features)
        self.codec = layouts.net_hdr_codec(ctx.order, self.hdr_len == layouts.NET_HDR_SIZE)
        self.mac = b""
        #: every receive buffer posted and not used yet, by head (frames land in the oldest)
        self.rx_pool: dict[int, Request] = {}

    async def up(self) -> None:
        ctx = self.ctx
        await negotiate(ctx)
        self.hdr_len = net_hdr_len(ctx.features)
        self.codec = layouts.net_hdr_codec(ctx.order, self.hdr_len == layouts.NET_HDR_SIZE)
        self.rx_pool.clear()
        for q in (RX, TX, *([2] if ctx.has(NET_F.CTRL_VQ) else [])):
            await add_queue(ctx, q)
        self.mac = bytes([await ctx.t.ops.read_config(CFG["mac"] + i, 1) for i in range(6)])
        await driver_ok(ctx)

    def hdr(self, flags: int = 0, hdr_len: int = 0, csum: tuple[int, int] = (0, 0)) -> bytes:
        fields = [flags, NET_GSO.NONE, hdr_len, 0, csum[0], csum[1]]
        if self.hdr_len == layouts.NET_HDR_SIZE:
            fields.append(0)
        return self.codec.pack(*fields)

    async def post_rx(self, count: int, size: int) -> list[Request]:
        reqs = [
            submit(self.ctx, Request(RX, [buffer(self.ctx, size, write=True)], None)) for _ in range(count)
        ]
        self.rx_pool.update((r.head, r) for r in reqs)
        await kick(self.ctx, RX)
        return reqs

    async def send(self, frame: bytes, hdr: bytes | None = None) -> bool:
        """One frame on transmitq (header in its own descriptor: no layout assumed);
        True when the device completed it."""
        ctx = self.ctx
        segs = [buffer(ctx, self.hdr() if hdr is None else hdr, write=False), buffer(ctx, frame, write=False)]
        submit(ctx, Request(TX, segs, 0))
        await kick(ctx, TX)
        return bool(await wait_used(ctx, TX, 1))

    async def receive(self, posted: list[Request]) -> list[tuple[dict[str, int], bytes, list[UsedEntry]]]:
        """Frames delivered into ``posted`` buffers: (header fields, frame bytes, entries)."""
        ctx = self.ctx
        used = await wait_used(ctx, RX, 1, timeout=0.3)
        by_head = self.rx_pool
        del posted  # a frame lands in whichever posted buffers come first
        out = []
        i = 0
        while i < len(used):
            first = by_head.pop(used[i].id, None)
            if first is None:
                break
            raw = ctx.dut.memory.read(first.segments[0].addr, used[i].length)
            fields = dict(zip(_FIELDS, self.codec.unpack(raw[: self.hdr_len]), strict=False))
            n = max(1, fields.get("num_buffers", 1))
            entries = used[i : i + n]
            data = raw[self.hdr_len :]
            for u in entries[1:]:
                r = by_head.pop(u.id, None)
                if r is not None:
                    data += ctx.dut.memory.read(r.segments[0].addr, u.length)
            out.append((fields, data, entries))
            i += n
        return out

    async def ctrl(self, cls: int, cmd: int, data: bytes) -> int | None:
        """One control command; the ack byte (None: not completed)."""
        ctx = self.ctx
        ack = buffer(ctx, 1, write=True, fill=0xEE)
        segs = [buffer(ctx, bytes([cls, cmd]), write=False)]
        if data:
            segs.append(buffer(ctx, data, write=False))
        submit(ctx, Request(2, [*segs, ack], 1))
        await kick(ctx, 2)
        if not await wait_used(ctx, 2, 1):
            return None
        return int(ctx.dut.memory.read(ack.addr, 1)[0])


_FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset", "num_buffers")


@checker("net_traffic", TRAFFIC_IDS, keys=("net",))
async def net_traffic(ctx: Ctx) -> None:
    """Frames through the loopback: receive header and buffer rules, transmit header
    fields the device must ignore or not trust."""
    net = Net(ctx)
    await net.up()
    mrg = ctx.has(NET_F.MRG_RXBUF)
    if ctx.dut.backend != "host":
        for rid in TRAFFIC_IDS:
            ctx.log.untested(rid, "QEMU under qtest has no netdev peer: no frame comes back to judge")
        return
    # 1. a frame that spans several small buffers (MRG_RXBUF), or one big buffer
    size = SMALL_RX if mrg else BIG_RX
    posted = await net.post_rx(8 if mrg else 2, size)
    frame = udp_frame(net.mac, bytes(range(256))[:180])
    sent = await net.send(frame)
    got = await net.receive(posted)
    if not sent or not got:
        for rid in TRAFFIC_IDS:
            ctx.log.error(rid, f"the loopback frame did not come back (tx completed {sent}, rx {len(got)})")
        return
    fields, data, entries = got[0]
    nb = fields.get("num_buffers")
    lens = [u.length for u in entries]
    if nb is not None:
        ctx.log.check(
            "net.rx.dev-num-buffers", nb == len(entries), f"num_buffers {nb}, buffers used {len(entries)}"
        )
    else:
        ctx.log.not_applicable("net.rx.dev-num-buffers", "the legacy 10-byte header has no num_buffers")
    ctx.log.check(
        "net.rx.dev-buffers-together" if mrg else "net.rx.dev-single-buffer",
        data == frame,
        f"{len(entries)} buffers {lens}, frame back intact {data == frame}",
    )
    if mrg:
        ctx.log.check(
            "net.rx.dev-num-buffers-mrg",
            nb == len(entries) and len(entries) > 1,
            f"a {len(frame)}-byte frame in {size}-byte buffers: num_buffers {nb}, used {lens}",
        )
        ctx.log.check(
            "net.rx.dev-fill-all-but-last",
            all(n == size for n in lens[:-1]),
            f"buffer lengths {lens} (each but the last must be full: {size})",
        )
        for rid in ("net.rx.dev-single-buffer", "net.rx.dev-num-buffers-one"):
            ctx.log.not_applicable(rid, "VIRTIO_NET_F_MRG_RXBUF negotiated")
    else:
        ctx.log.check("net.rx.dev-single-buffer", len(entries) == 1, f"one frame in {len(entries)} buffers")
        if nb is not None:
            ctx.log.check("net.rx.dev-num-buffers-one", nb == 1, f"num_buffers {nb} without MRG_RXBUF")
        else:
            ctx.log.not_applicable(
                "net.rx.dev-num-buffers-one", "the legacy 10-byte header has no num_buffers"
            )
        for rid in (
            "net.rx.dev-num-buffers-mrg",
            "net.rx.dev-fill-all-but-last",
            "net.rx.dev-buffers-together",
        ):
            ctx.log.not_applicable(rid, "VIRTIO_NET_F_MRG_RXBUF not negotiated")
    if ctx.legacy:
        # the header fields came back in the guest's order: num_buffers (when there) and
        # the frame reassembled from them
        ok = data == frame and (nb is None or nb == len(entries))
        ctx.log.check(
            "net.legacy.hdr-native-endian-dev",
            ok,
            f"{ctx.order}-endian guest: num_buffers read {nb} for {len(entries)} buffers",
        )
    else:
        ctx.log.not_applicable("net.legacy.hdr-native-endian-dev", "modern interface")
    flags, gso = fields["flags"], fields["gso_type"]
    if ctx.has(NET_F.GUEST_CSUM):
        ctx.log.not_applicable(
            "net.rx.dev-flags-zero-without-guest-csum", "VIRTIO_NET_F_GUEST_CSUM negotiated"
        )
    else:
        ctx.log.check("net.rx.dev-flags-zero-without-guest-csum", flags == 0, f"rx header flags {flags:#x}")
    guest_gso = any(ctx.has(b) for b in (NET_F.GUEST_TSO4, NET_F.GUEST_TSO6, NET_F.GUEST_UFO))
    ctx.log.check(
        "net.rx.dev-gso-gated", gso == NET_GSO.NONE or guest_gso, f"gso_type {gso} without guest GSO"
    )
    if guest_gso:
        ctx.log.not_applicable("net.rx.dev-gso-none", "a guest GSO feature is negotiated")
    else:
        ctx.log.check("net.rx.dev-gso-none", gso == NET_GSO.NONE, f"gso_type {gso}")
    ctx.log.check(
        "net.rx.dev-no-rsc-info-without-rsc-ext",
        not flags & NET_HDR_F.RSC_INFO,
        f"rx flags {flags:#x} carry RSC_INFO",
    )
    # the frame's UDP checksum is wrong and NEEDS_CSUM was clear: nothing may call it valid
    valid = bool(flags & NET_HDR_F.DATA_VALID)
    ctx.log.check(
        "net.tx.dev-no-rely-checksum",
        not valid,
        "a frame sent with a wrong checksum and NEEDS_CSUM clear came back DATA_VALID",
    )
    if ctx.has(NET_F.GUEST_CSUM):
        ctx.log.check("net.rx.dev-data-valid", not valid, "DATA_VALID on a frame whose UDP checksum is wrong")
    else:
        ctx.log.not_applicable("net.rx.dev-data-valid", "VIRTIO_NET_F_GUEST_CSUM not negotiated")
    await _tx_header_rules(ctx, net, size, mrg)


async def _tx_header_rules(ctx: Ctx, net: Net, size: int, mrg: bool) -> None:
    async def roundtrip(frame: bytes, hdr: bytes) -> tuple[dict[str, int], bytes] | None:
        posted = await net.post_rx(8 if mrg else 2, size)
        if not await net.send(frame, hdr):
            return None
        got = await net.receive(posted)
        return (got[0][0], got[0][1]) if got else None

    frame = udp_frame(net.mac, b"unknown flag")
    back = await roundtrip(frame, net.hdr(flags=UNKNOWN_TX_FLAG))
    ctx.log.check(
        "net.tx.dev-ignore-unknown-flags",
        back is not None and back[1] == frame,
        f"tx flags {UNKNOWN_TX_FLAG:#x}: frame back intact: {back is not None and back[1] == frame}",
    )
    frame = udp_frame(net.mac, b"csum fields")
    start, off = ETH_HDR + IP_HDR, UDP_CSUM_OFFSET
    back = await roundtrip(frame, net.hdr(csum=(start - 10, off + 2)))
    ok = back is not None and back[1] == frame and not back[0]["flags"] & NET_HDR_F.NEEDS_CSUM
    ctx.log.check(
        "net.tx.dev-csum-fields-only-with-needs-csum",
        ok,
        "csum_start/csum_offset set without NEEDS_CSUM changed the frame or the rx header",
    )
    frame = udp_frame(net.mac, b"hdr_len")
    back = await roundtrip(frame, net.hdr(hdr_len=0xFFFF))
    ctx.log.check(
        "net.tx.dev-hdr-len-not-trusted",
        back is not None and back[1] == frame,
        "a GSO_NONE frame with hdr_len 0xffff was not forwarded intact",
    )
    if not ctx.has(NET_F.CSUM):
        ctx.log.not_applicable(
            "net.rx.dev-needs-csum-rules", "VIRTIO_NET_F_CSUM not negotiated (no NEEDS_CSUM to send)"
        )
        return
    frame = udp_frame(net.mac, b"partial checksum", partial=True)
    back = await roundtrip(frame, net.hdr(flags=NET_HDR_F.NEEDS_CSUM, csum=(start, off)))
    if back is None:
        ctx.log.error("net.rx.dev-needs-csum-rules", "the NEEDS_CSUM frame did not come back")
        return
    hdr, data = back
    if hdr["flags"] & NET_HDR_F.NEEDS_CSUM:
        ok = (hdr["csum_start"], hdr["csum_offset"]) == (start, off) and data == frame
        where = f"{hdr['csum_start']}/{hdr['csum_offset']}"
        why = f"NEEDS_CSUM back with start/offset {where}, frame intact {data == frame}"
        if ctx.has(NET_F.GUEST_CSUM):
            ctx.log.check("net.rx.dev-needs-csum-rules", ok, why)
        else:
            ctx.log.failed("net.rx.dev-needs-csum-rules", "NEEDS_CSUM set on rx without GUEST_CSUM: " + why)
    else:
        # completed by the device on the way: the checksum must now be right
        ctx.log.check(
            "net.rx.dev-needs-csum-rules",
            udp_csum_ok(data),
            "a NEEDS_CSUM frame came back without NEEDS_CSUM and with a wrong checksum",
        )


@checker("net_control", CTRL_IDS, keys=("net",))
async def net_control(ctx: Ctx) -> None:
    """RX mode commands; a MAC table in force when its command completes, empty again
    after a reset; MAC_ADDR_SET visible in config on completion."""
    net = Net(ctx)
    await net.up()
    if not ctx.has(NET_F.CTRL_VQ):
        for rid in CTRL_IDS:
            ctx.log.not_applicable(rid, "VIRTIO_NET_F_CTRL_VQ not negotiated")
        return
    if ctx.has(NET_F.CTRL_RX):
        acks = [
            await net.ctrl(NET_CTRL.RX, cmd, bytes([on]))
            for cmd in (NET_CTRL_RX.PROMISC, NET_CTRL_RX.ALLMULTI)
            for on in (1, 0)
        ]
        ctx.log.check(
            "net.ctrl.dev-rx-mode-cmds", acks == [NET_ACK.OK] * 4, f"PROMISC/ALLMULTI on/off acks {acks}"
        )
        await _mac_table(ctx, net)
    else:
        for rid in (
            "net.ctrl.dev-rx-mode-cmds",
            "net.mac.dev-table-before-complete",
            "net.mac.dev-empty-on-reset",
            "net.legacy.mac-entries-native-endian-dev",
        ):
            ctx.log.not_applicable(rid, "VIRTIO_NET_F_CTRL_RX not negotiated")
    if ctx.has(NET_F.CTRL_MAC_ADDR):
        new = bytes.fromhex("020000000042")
        ack = await net.ctrl(NET_CTRL.MAC, NET_CTRL_MAC.ADDR_SET, new)
        now = bytes([await ctx.t.ops.read_config(CFG["mac"] + i, 1) for i in range(6)])
        ctx.log.check(
            "net.mac.dev-config-mac-before-complete",
            ack == NET_ACK.OK and now == new,
            f"MAC_ADDR_SET {new.hex()}: ack {ack}, config mac then {now.hex()}",
        )
    else:
        ctx.log.not_applicable(
            "net.mac.dev-config-mac-before-complete", "VIRTIO_NET_F_CTRL_MAC_ADDR not negotiated"
        )


async def _mac_table(ctx: Ctx, net: Net) -> None:
    if ctx.dut.backend != "host":
        for rid in (
            "net.mac.dev-table-before-complete",
            "net.mac.dev-empty-on-reset",
            "net.legacy.mac-entries-native-endian-dev",
        ):
            ctx.log.untested(rid, "QEMU under qtest has no netdev peer: filtering is not observable")
        return
    entries = layouts.net_ctrl_mac_entries(ctx.order)
    table = entries.build(1) + OTHER + entries.build(0)
    extra = bytes.fromhex("020000000088")

    async def delivered(dst: bytes) -> bool:
        posted = await net.post_rx(8, BIG_RX)
        await net.send(udp_frame(dst, b"filter"))
        got = await net.receive(posted)
        return bool(got)

    filtering = not await delivered(extra)  # an address in no table: dropped if the filter works
    ack = await net.ctrl(NET_CTRL.MAC, NET_CTRL_MAC.TABLE_SET, table)
    now = await delivered(OTHER)
    if not filtering:
        for rid in ("net.mac.dev-table-before-complete", "net.mac.dev-empty-on-reset"):
            ctx.log.untested(rid, "the device delivers frames for any address here: no filter to observe")
    else:
        rid = (
            "net.legacy.mac-entries-native-endian-dev" if ctx.legacy else "net.mac.dev-table-before-complete"
        )
        ctx.log.check(
            rid,
            ack == NET_ACK.OK and now,
            f"MAC_TABLE_SET [{OTHER.hex()}] ({ctx.order}-endian counts): ack {ack}, "
            f"frame to it delivered {now}",
        )
        if ctx.legacy and now:
            ctx.log.passed("net.mac.dev-table-before-complete")
    if not ctx.legacy:
        ctx.log.not_applicable("net.legacy.mac-entries-native-endian-dev", "modern interface")
    if filtering:
        await net.up()  # a device reset, then the same bring-up
        # promiscuous again after a reset (QEMU's virtio_net_reset sets promisc = 1): off
        # first, so that what is left to judge is the MAC table
        await net.ctrl(NET_CTRL.RX, NET_CTRL_RX.PROMISC, b"\0")
        after = await delivered(OTHER)
        ctx.log.check(
            "net.mac.dev-empty-on-reset",
            not after,
            f"after a reset a frame to {OTHER.hex()} was still delivered",
        )


@checker("net_config", CONFIG_IDS, keys=("net",))
async def net_config(ctx: Ctx) -> None:
    """Config fields in range for the features offered; legacy byte order and mac writes."""
    ops = ctx.t.ops
    await negotiate(ctx)
    offered = ctx.offered

    async def field(name: str, size: int) -> int:
        raw = bytes([await ops.read_config(CFG[name] + i, 1) for i in range(size)])
        return int.from_bytes(raw, "big" if ctx.order == "big" and ctx.legacy else "little")

    if offered >> NET_F.MQ & 1:
        pairs = await field("max_virtqueue_pairs", 2)
        ctx.log.check("net.cfg.dev-max-pairs", 1 <= pairs <= 0x8000, f"max_virtqueue_pairs {pairs}")
    else:
        ctx.log.not_applicable("net.cfg.dev-max-pairs", "VIRTIO_NET_F_MQ not offered")
    if offered >> NET_F.MTU & 1:
        mtu = await field("mtu", 2)
        ctx.log.check("net.cfg.dev-mtu-range", 68 <= mtu <= 65535, f"mtu {mtu}")
        net = Net(ctx)
        await net.up()
        again = await field("mtu", 2)
        ctx.log.check("net.cfg.dev-mtu-stable", again == mtu, f"mtu {mtu}, after DRIVER_OK {again}")
        await negotiate(ctx)
    else:
        for rid in ("net.cfg.dev-mtu-range", "net.cfg.dev-mtu-stable"):
            ctx.log.not_applicable(rid, "VIRTIO_NET_F_MTU not offered")
    if ctx.has(SPEED_DUPLEX):
        speed, duplex = await field("speed", 4), await field("duplex", 1)
        ctx.log.check("net.cfg.dev-speed", speed <= 0x7FFFFFFF or speed == 0xFFFFFFFF, f"speed {speed:#x}")
        ctx.log.check("net.cfg.dev-duplex", duplex in (0, 1, 0xFF), f"duplex {duplex:#x}")
    else:
        for rid in ("net.cfg.dev-speed", "net.cfg.dev-duplex"):
            ctx.log.not_applicable(rid, "VIRTIO_NET_F_SPEED_DUPLEX not negotiated")
    if not ctx.legacy:
        for rid in ("net.legacy.config-native-endian-dev", "net.legacy.mac-writable"):
            ctx.log.not_applicable(rid, "modern interface")
        return
    if offered >> NET_F.STATUS & 1:
        status = await field("status", 2)
        ctx.log.check(
            "net.legacy.config-native-endian-dev",
            status & ~(NET_S.LINK_UP | NET_S.ANNOUNCE) == 0 and bool(status & NET_S.LINK_UP),
            f"status reads {status:#06x} in the {ctx.order}-endian guest's order (link is up)",
        )
    else:
        ctx.log.not_applicable("net.legacy.config-native-endian-dev", "VIRTIO_NET_F_STATUS not offered")
    new = bytes.fromhex("020000000099")
    for i, b in enumerate(new):
        await ops.write_config(CFG["mac"] + i, 1, b)
    now = bytes([await ops.read_config(CFG["mac"] + i, 1) for i in range(6)])
    ctx.log.check(
        "net.legacy.mac-writable", now == new, f"wrote mac {new.hex()} into config, reads {now.hex()}"
    )
