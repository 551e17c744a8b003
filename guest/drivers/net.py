"""virtio-net guest driver (Linux's virtio_net.c, the parts a simulator needs).

Probe reads the config (mac with MAC, link with STATUS, max_virtqueue_pairs with MQ) and
sets up receiveq/transmitq per pair plus the control queue; :meth:`NetDriver.open` is
Linux's ndo_open: it selects the queue pairs (MQ), gives the device a locally
administered address if it has none, and posts receive buffers.

The header is 12 bytes with VERSION_1 or MRG_RXBUF and 10 bytes otherwise
(:func:`virtio_sim.netproto.net_hdr_len`), the same rule the device applies. Without
ANY_LAYOUT (a legacy device) the header travels in its own descriptor, on transmit, on
receive without MRG_RXBUF, and as the class/command descriptor of control commands.

Receive buffers are reposted as soon as their data was copied out. With MRG_RXBUF a
frame spans ``num_buffers`` used buffers; a device that reports num_buffers 0, or more
buffers than it used, or a used length shorter than the header, breaks the receive
protocol: the frame is dropped and counted as Linux does (rx_length_errors), and
:meth:`receive` raises :class:`NetRxError` so a run sees DEVICE_ERROR instead of waiting.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from virtio_sim import layouts
from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.drivers.rxpool import RxBuf, RxPool
from virtio_sim.guest.virtio import GuestVirtqueue, ProbeRefused
from virtio_sim.layouts import (
    NET_CONFIG_OFFSETS,
    NET_CTRL_ACK_SIZE,
    NET_CTRL_HDR_SIZE,
    net_ctrl_mac_entries,
    net_ctrl_mq_pairs,
    net_hdr_codec,
)
from virtio_sim.netproto import has_num_buffers, net_hdr_len
from virtio_sim.spec import (
    NET,
    NET_ACK,
    NET_CTRL,
    NET_CTRL_MAC,
    NET_CTRL_MQ,
    NET_CTRL_RX,
    NET_F,
    NET_GSO,
    NET_HDR_F,
    NET_S,
    F,
    bit,
)

_CFG = NET_CONFIG_OFFSETS
LOCAL_ADMIN_BIT = 0x02  # of the first MAC byte: a locally administered address
LEGACY_CONFIG_READS = 8  # re-reads until two agree, for config without a generation


class NetRxError(DeviceProtocolError):
    """The device broke the receive protocol (num_buffers, used length)."""


class NetCtrlError(DeviceProtocolError):
    """The device answered a control command with VIRTIO_NET_ERR."""


@dataclass
class RxFrame:
    data: bytes
    flags: int
    gso_type: int
    csum_start: int
    csum_offset: int
    buffers: int
    pair: int


@dataclass
class NetDriverStats:
    tx_frames: int = 0
    rx_frames: int = 0
    rx_buffers: int = 0
    rx_length_errors: int = 0  # Linux's counter for the protocol errors above
    rx_fill_errors: int = 0  # a non-last buffer of a merged frame was not filled
    max_buffers_per_frame: int = 0


@dataclass
class _RxQueue:
    pair: int
    pool: RxPool


class NetDriver(GuestDriver):
    type_key = "net"
    device_feature_mask = (
        bit(NET_F.MAC)
        | bit(NET_F.STATUS)
        | bit(NET_F.MRG_RXBUF)
        | bit(NET_F.CSUM)
        | bit(NET_F.GUEST_CSUM)
        | bit(NET_F.CTRL_VQ)
        | bit(NET_F.CTRL_RX)
        | bit(NET_F.CTRL_MAC_ADDR)
        | bit(NET_F.MQ)
    )
    queue_size = 256
    ctrl_queue_size = 64
    rx_buffers_per_queue = 64

    async def probe(self) -> None:
        d = self.dev
        self.hdr_len = net_hdr_len(d.features)
        self.mergeable = d.has(NET_F.MRG_RXBUF)
        self.any_layout = d.has(F.VERSION_1) or d.has(F.ANY_LAYOUT)
        self.stats = NetDriverStats()
        self.mac = await self.read_mac() if d.has(NET_F.MAC) else self._random_mac()
        self.link_up = await self.read_link()
        self.max_pairs = 1
        if d.has(NET_F.MQ):
            (pairs,) = await self.read_config_stable([(_CFG["max_virtqueue_pairs"], 2)])
            if not NET_CTRL_MQ.VQ_PAIRS_MIN <= pairs <= NET_CTRL_MQ.VQ_PAIRS_MAX:
                raise ProbeRefused("probe", f"max_virtqueue_pairs {pairs} out of range")
            self.max_pairs = pairs
        self.rxq: list[_RxQueue] = []
        self.txq: list[GuestVirtqueue] = []
        for pair in range(self.max_pairs):
            vq = await d.setup_queue(2 * pair, self.queue_size)
            self.rxq.append(_RxQueue(pair, RxPool(vq, self._rx_segments)))
            self.txq.append(await d.setup_queue(2 * pair + 1, self.queue_size))
        self.ctrlq: GuestVirtqueue | None = None
        if d.has(NET_F.CTRL_VQ):
            self.ctrlq = await d.setup_queue(2 * self.max_pairs, self.ctrl_queue_size)
        self.curr_pairs = 1
        self.frames: deque[RxFrame] = deque()
        self.opened = False

    def _order(self) -> layouts.ByteOrder:
        return self.dev.transport.guest_order if self.dev.legacy else "little"

    def _random_mac(self) -> bytes:
        raw = bytearray(os.urandom(NET.eth_alen))
        raw[0] = (raw[0] & 0xFE) | LOCAL_ADMIN_BIT  # unicast, locally administered
        return bytes(raw)

    async def read_mac(self) -> bytes:
        """Byte by byte like virtio_cread_bytes; legacy config has no generation counter,
        so read until two passes agree."""
        fields = [(_CFG["mac"] + i, 1) for i in range(NET.eth_alen)]
        if not self.dev.legacy:
            return bytes(await self.read_config_stable(fields))
        last: list[int] | None = None
        for _ in range(LEGACY_CONFIG_READS):
            now = [await self.dev.transport.read_config(off, size) for off, size in fields]
            if now == last:
                break
            last = now
        return bytes(now)

    async def read_link(self) -> bool:
        """Link state from config status (STATUS), assumed up without it."""
        if not self.dev.has(NET_F.STATUS):
            return True
        (status,) = await self.read_config_stable([(_CFG["status"], 2)])
        self.link_up = bool(status & NET_S.LINK_UP)
        return self.link_up

    # -- open: queue pairs, address, receive buffers -----------------------------

    async def open(self, rx_buffer_sizes: Sequence[int] | None = None) -> None:
        """Bring the interface up; ``rx_buffer_sizes`` (cycled) sizes the receive buffers,
        header included; default: one Ethernet frame plus the header."""
        if self.opened:
            raise RuntimeError("interface is already up")
        if self.max_pairs > 1:
            await self.set_queue_pairs(self.max_pairs)
        if not self.dev.has(NET_F.MAC) and self.dev.has(NET_F.CTRL_MAC_ADDR):
            await self.set_mac(self.mac)
        sizes = list(rx_buffer_sizes or [self.hdr_len + NET.eth_frame_max])
        if min(sizes) < self.hdr_len and self.mergeable:
            raise ValueError(f"mergeable rx buffers must hold the {self.hdr_len}-byte header")
        for rx in self.rxq:
            rx.pool.alloc(self.dev.dma, sizes, self.rx_buffers_per_queue)
        await self._refill()
        self.opened = True

    def _rx_segments(self, buf: RxBuf) -> list[tuple[int, int]]:
        addr = buf.mem.dev_addr
        if not self.any_layout and not self.mergeable and buf.size > self.hdr_len:
            return [(addr, self.hdr_len), (addr + self.hdr_len, buf.size - self.hdr_len)]
        return [(addr, buf.size)]

    async def _refill(self) -> int:
        posted = 0
        for rx in self.rxq:
            posted += await rx.pool.refill()
        return posted

    # -- receive -----------------------------------------------------------------

    def _drain(self, rx: _RxQueue) -> None:
        """Turn used receive buffers into frames (Linux's receive_buf)."""
        order = self._order()
        nb_field = has_num_buffers(self.dev.features)
        codec = net_hdr_codec(order, nb_field)
        dma = self.dev.dma
        pool = rx.pool
        done = pool.done
        while done:
            first, length = done[0]
            if length < self.hdr_len:
                pool.give_back(done.popleft()[0])
                self._rx_error(f"rx buffer used with {length} bytes, header is {self.hdr_len}")
            fields = codec.unpack(dma.read(first.mem, self.hdr_len))
            flags, gso_type, _hl, _gs, csum_start, csum_offset = fields[:6]
            count = fields[6] if self.mergeable else 1
            if count < 1:
                pool.give_back(done.popleft()[0])
                self._rx_error(f"device reported num_buffers {count}")
            if len(done) < count:
                got = len(done)
                while done:
                    pool.give_back(done.popleft()[0])
                self._rx_error(f"num_buffers {count} but only {got} buffers were used")
            parts = [done.popleft() for _ in range(count)]
            data = bytearray()
            for i, (buf, n) in enumerate(parts):
                skip = self.hdr_len if i == 0 else 0
                data += dma.read(buf.mem, n - skip, skip)
                if i + 1 < count and n != buf.size:
                    self.stats.rx_fill_errors += 1
                pool.give_back(buf)
            self.stats.rx_frames += 1
            self.stats.rx_buffers += count
            self.stats.max_buffers_per_frame = max(self.stats.max_buffers_per_frame, count)
            self.frames.append(RxFrame(bytes(data), flags, gso_type, csum_start, csum_offset, count, rx.pair))

    def _rx_error(self, why: str) -> NoReturn:
        self.stats.rx_length_errors += 1
        raise NetRxError(f"receive protocol: {why}")

    async def receive(self) -> RxFrame:
        """The next received frame (from any queue pair), waiting for one."""
        if not self.opened:
            raise RuntimeError("interface is down: call open() first")
        while True:
            for rx in self.rxq:
                self._drain(rx)
            if await self._refill():
                continue  # the awaits may have let completions in: look again
            if self.frames:
                return self.frames.popleft()
            self.dev.raise_if_broken()
            await self.dev.wait_progress()

    # -- transmit ----------------------------------------------------------------

    def tx_header(self, csum: tuple[int, int] | None = None) -> bytes:
        flags = csum_start = csum_offset = 0
        if csum is not None:
            if not self.dev.has(NET_F.CSUM):
                raise ValueError("checksum offload needs VIRTIO_NET_F_CSUM")
            flags = NET_HDR_F.NEEDS_CSUM
            csum_start, csum_offset = csum
        fields = [flags, NET_GSO.NONE, 0, 0, csum_start, csum_offset]
        nb = has_num_buffers(self.dev.features)
        if nb:
            fields.append(0)  # num_buffers is 0 on transmit
        return net_hdr_codec(self._order(), nb).pack(*fields)

    async def send(self, frame: bytes, *, pair: int = 0, csum: tuple[int, int] | None = None) -> None:
        """Transmit one frame on queue pair ``pair``; ``csum`` = (start, offset) asks the
        device to complete the checksum (CSUM)."""
        await self.send_raw(self.tx_header(csum) + frame, pair=pair)
        self.stats.tx_frames += 1

    async def send_raw(self, packet: bytes, *, pair: int = 0, split_at: int | None = None) -> int:
        """Transmit header+frame bytes as given (tests use it for malformed packets).
        The header gets its own descriptor without ANY_LAYOUT, or at ``split_at``."""
        if not 0 <= pair < self.curr_pairs:
            raise ValueError(f"queue pair {pair} is not in use ({self.curr_pairs} active)")
        if split_at is None and not self.any_layout:
            split_at = self.hdr_len
        dma = self.dev.dma
        buf = dma.alloc(max(len(packet), 1))
        try:
            dma.write(buf, packet)
            a = buf.dev_addr
            if split_at is not None and 0 < split_at < len(packet):
                out = [(a, split_at), (a + split_at, len(packet) - split_at)]
            else:
                out = [(a, len(packet))] if packet else []
            return await self.txq[pair].submit(out, [])
        finally:
            dma.free(buf)

    # -- control -----------------------------------------------------------------

    async def ctrl(self, cls: int, cmd: int, *data: bytes) -> int:
        """One control command (class/command descriptor, one descriptor per data part,
        the ack byte); returns the ack."""
        if self.ctrlq is None:
            raise NetCtrlError("no control queue (VIRTIO_NET_F_CTRL_VQ not negotiated)")
        dma = self.dev.dma
        total = NET_CTRL_HDR_SIZE + sum(len(p) for p in data) + NET_CTRL_ACK_SIZE
        buf = dma.alloc(total)
        try:
            head = layouts.VirtioNetCtrlHdr.build({"class_": cls, "cmd": cmd})
            dma.write(buf, head + b"".join(data) + b"\xff")  # 0xff: proves the device acked
            out = [(buf.dev_addr, NET_CTRL_HDR_SIZE)]
            off = NET_CTRL_HDR_SIZE
            for part in data:
                if part:
                    out.append((buf.dev_addr + off, len(part)))
                off += len(part)
            await self.ctrlq.submit(out, [(buf.dev_addr + off, NET_CTRL_ACK_SIZE)])
            return dma.read(buf, NET_CTRL_ACK_SIZE, off)[0]
        finally:
            dma.free(buf)

    async def _ctrl_ok(self, what: str, cls: int, cmd: int, *data: bytes) -> None:
        ack = await self.ctrl(cls, cmd, *data)
        if ack != NET_ACK.OK:
            raise NetCtrlError(f"{what}: device answered {ack}")

    async def set_promisc(self, on: bool) -> None:
        await self._ctrl_ok("PROMISC", NET_CTRL.RX, NET_CTRL_RX.PROMISC, bytes([on]))

    async def set_allmulti(self, on: bool) -> None:
        await self._ctrl_ok("ALLMULTI", NET_CTRL.RX, NET_CTRL_RX.ALLMULTI, bytes([on]))

    async def set_mac_table(self, uni: Sequence[bytes], multi: Sequence[bytes]) -> None:
        count = net_ctrl_mac_entries(self._order())
        tables = [count.build(len(t)) + b"".join(t) for t in (uni, multi)]
        await self._ctrl_ok("MAC_TABLE_SET", NET_CTRL.MAC, NET_CTRL_MAC.TABLE_SET, *tables)

    async def set_mac(self, mac: bytes) -> None:
        """MAC_ADDR_SET with CTRL_MAC_ADDR; a legacy driver writes the config mac instead."""
        if self.dev.has(NET_F.CTRL_MAC_ADDR):
            await self._ctrl_ok("MAC_ADDR_SET", NET_CTRL.MAC, NET_CTRL_MAC.ADDR_SET, mac)
        elif self.dev.legacy:
            for i, b in enumerate(mac):
                await self.dev.transport.write_config(_CFG["mac"] + i, 1, b)
        else:
            raise NetCtrlError("cannot change the address without VIRTIO_NET_F_CTRL_MAC_ADDR")
        self.mac = bytes(mac)

    async def set_queue_pairs(self, pairs: int) -> None:
        data = net_ctrl_mq_pairs(self._order()).build(pairs)
        await self._ctrl_ok("VQ_PAIRS_SET", NET_CTRL.MQ, NET_CTRL_MQ.VQ_PAIRS_SET, data)
        self.curr_pairs = pairs
        if self.opened:
            await self._refill()
