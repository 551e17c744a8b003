"""virtio-net (virtio 1.4 section 5.1), as QEMU's virtio-net-device behaves.

Queues: receiveqN at 2(N-1), transmitqN at 2(N-1)+1 for every queue pair, and the control
queue after the last pair (2N with MQ negotiated, else 2) when CTRL_VQ is negotiated. Which
role an index has is decided from the negotiated features, as QEMU re-lays its queues in
virtio_net_set_multiqueue().

Transmit: the chain's readable part is a virtio_net_hdr (10 bytes legacy, 12 with
MRG_RXBUF or VERSION_1; :func:`virtio_sim.netproto.net_hdr_len`) then the frame, split
across descriptors in any way. A chain too short for the header is a driver error for the
error policy (QEMU: "virtio-net header incorrect"); a header without frame bytes is
dropped and counted. Used length on transmit is 0, as QEMU reports it.

Receive: frames from the backend wait in a bounded per-pair backlog until the driver
posts buffers (QEMU's queued packets). Without MRG_RXBUF one buffer takes one frame; a
frame that does not fit is dropped and counted and the buffer stays available for the
next frame (QEMU's virtqueue_unpop). With MRG_RXBUF a frame spans as many buffers as it
needs, each filled completely but the last, and num_buffers in the first header says how
many. A receive buffer smaller than the header is a driver error for the error policy.

Control queue: RX mode (PROMISC, ALLMULTI), MAC table, MAC address and MQ pairs, each
answered with the ack byte; a command without a class/command head or without a writable
ack byte is a driver error for the error policy (QEMU: "virtio-net ctrl missing headers").
The receive filter follows QEMU's receive_filter(), including promiscuous mode being on
after reset until the driver turns it off.

Checksums: CSUM and GUEST_CSUM are pass-through flags. A NEEDS_CSUM frame reaches a
receiver that negotiated GUEST_CSUM with the same request; otherwise the device completes
the checksum before delivery (what tap does for a guest without offloads).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from virtio_sim.host.devices.base import DeviceModel, DeviceQueue, PropertyError
from virtio_sim.host.devices.netbackend import Frame, NetBackend
from virtio_sim.layouts import (
    NET_CONFIG_OFFSETS,
    NET_CTRL_ACK_SIZE,
    NET_CTRL_HDR_SIZE,
    ByteOrder,
    net_ctrl_mac_entries,
    net_ctrl_mq_pairs,
    net_hdr_codec,
    virtio_net_config,
)
from virtio_sim.netproto import (
    BROADCAST,
    complete_checksum,
    format_mac,
    has_num_buffers,
    is_multicast,
    net_hdr_len,
)
from virtio_sim.ring.chain import Chain, ChainReader, ChainWriter, RingError
from virtio_sim.spec import (
    FEATURES,
    NET,
    NET_ACK,
    NET_CTRL,
    NET_CTRL_MAC,
    NET_CTRL_MQ,
    NET_CTRL_RX,
    NET_F,
    NET_FEATURE_DEPS,
    NET_GSO,
    NET_HDR_F,
    NET_S,
    F,
    bit,
    unmet_dependencies,
)

DEFAULT_BACKLOG = 256  # frames waiting for receive buffers, per queue pair
CTRL_DATA_LIMIT = 1 << 16  # bytes of command data the device reads from one command
FAULTS = ("num-buffers-zero", "num-buffers-extra")  # x-fault: a lying device, for driver tests

# How far into virtio_net_config the device exposes, by offered feature (QEMU's
# feature_sizes table); the mac is always there.
_CONFIG_END_BY_FEATURE = (
    (NET_F.STATUS, "status"),
    (NET_F.MQ, "max_virtqueue_pairs"),
)
_FIELD_END = {sc.name: NET_CONFIG_OFFSETS[sc.name] + sc.sizeof() for sc in virtio_net_config().subcons}


@dataclass
class NetStats:
    """Counters a test or a run report can check; QEMU keeps most of them too."""

    tx_frames: int = 0
    tx_bytes: int = 0
    tx_empty: int = 0  # header without a frame
    tx_errors: int = 0  # frames refused (GSO without HOST_*, bad checksum offsets, oversize)
    tx_bad_num_buffers: int = 0  # num_buffers not 0 on transmit (ignored)
    tx_link_down: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_buffers: int = 0
    rx_dropped_too_big: int = 0  # no MRG_RXBUF and the frame does not fit the buffer
    rx_filtered: int = 0  # the receive filter (rx mode, MAC table) refused the frame
    rx_not_ready: int = 0  # arrived before DRIVER_OK or with the link down
    rx_backlog_dropped: int = 0  # the backlog was full
    rx_csum_completed: int = 0
    ctrl_ok: int = 0
    ctrl_err: int = 0


@dataclass
class RxFilter:
    """QEMU's rx mode and MAC table state (reset: promiscuous, empty table)."""

    promisc: bool = True
    allmulti: bool = False
    uni: list[bytes] = field(default_factory=list)
    multi: list[bytes] = field(default_factory=list)
    uni_overflow: bool = False
    multi_overflow: bool = False


@dataclass
class _RxState:
    """One receive queue: frames waiting for buffers, and buffers waiting for frames."""

    backlog: deque[Frame] = field(default_factory=deque)
    held: list[Chain] = field(default_factory=list)  # popped, not used (QEMU would unpop)
    ring: object | None = None  # the ring the held chains belong to


class NetDevice(DeviceModel):
    type_key = "net"
    queue_max_size = 256

    def __init__(
        self,
        *,
        mac: bytes,
        backend: NetBackend,
        mrg_rxbuf: bool = True,
        status: bool = True,
        csum: bool = True,
        guest_csum: bool = True,
        ctrl_vq: bool = True,
        ctrl_rx: bool = True,
        ctrl_mac_addr: bool = True,
        mq: bool = False,
        queue_pairs: int = 1,
        backlog: int = DEFAULT_BACKLOG,
        fault: str | None = None,
    ) -> None:
        super().__init__()
        if len(mac) != NET.eth_alen:
            raise PropertyError(f"mac must be {NET.eth_alen} bytes")
        if not NET_CTRL_MQ.VQ_PAIRS_MIN <= queue_pairs <= NET_CTRL_MQ.VQ_PAIRS_MAX:
            raise PropertyError(f"queue pairs {queue_pairs} out of range")
        if queue_pairs > 1 and not mq:
            raise PropertyError("several queue pairs need mq=on")
        if fault is not None and fault not in FAULTS:
            raise PropertyError(f"unknown fault {fault!r} ({'|'.join(FAULTS)})")
        self.conf_mac = bytes(mac)
        self.backend = backend
        self.max_pairs = queue_pairs
        self.fault = fault
        self.backlog_limit = backlog
        offered = bit(NET_F.MAC)
        for on, b in (
            (mrg_rxbuf, NET_F.MRG_RXBUF),
            (status, NET_F.STATUS),
            (csum, NET_F.CSUM),
            (guest_csum, NET_F.GUEST_CSUM),
            (ctrl_vq, NET_F.CTRL_VQ),
            (ctrl_rx, NET_F.CTRL_RX),
            (ctrl_mac_addr, NET_F.CTRL_MAC_ADDR),
            (mq, NET_F.MQ),
        ):
            if on:
                offered |= bit(b)
        broken = unmet_dependencies(offered, NET_FEATURE_DEPS)
        if broken:
            names = ", ".join(
                f"{FEATURES.names(bit(d.feature), 'net')[0]} needs "
                + " or ".join(FEATURES.names(sum(bit(r) for r in d.requires), "net"))
                for d in broken
            )
            raise PropertyError(f"inconsistent virtio-net features: {names}")
        self.offered = offered
        self.num_queues = 2 * queue_pairs + (1 if ctrl_vq else 0)
        self.link_up = True
        self.stats = NetStats()
        self._reset_state()
        backend.attach(self)

    def _reset_state(self) -> None:
        self.mac = self.conf_mac  # QEMU restores the configured address on reset
        self.active = False
        self.curr_pairs = 1
        self.filter = RxFilter()
        self.rx = [_RxState() for _ in range(self.max_pairs)]

    def close(self) -> None:
        self.backend.detach(self)

    # -- features, queues, config ---------------------------------------------

    def device_features(self) -> int:
        return self.offered

    def validate_features(self, acked: int) -> str | None:
        broken = unmet_dependencies(acked, NET_FEATURE_DEPS)
        if broken:
            names = [FEATURES.names(bit(d.feature), "net")[0] for d in broken]
            return f"acked without their prerequisites: {', '.join(names)}"
        return None

    def _pairs_for(self, features: int) -> int:
        return self.max_pairs if features >> NET_F.MQ & 1 else 1

    def queue_size_for(self, index: int) -> int:
        """QEMU creates the control queue with 64 entries, rx/tx with 256
        (virtio_net_device_realize; measured under QEMU 7.2 on every pc-i440fx type)."""
        return NET.ctrl_queue_size if index == 2 * self.max_pairs else self.queue_max_size

    def queue_count(self, features: int) -> int:
        ctrl = 1 if features >> NET_F.CTRL_VQ & 1 else 0
        return 2 * self._pairs_for(features) + ctrl

    def role(self, index: int) -> tuple[str, int]:
        """("rx"|"tx", pair) or ("ctrl", 0) for a queue index under the negotiated features."""
        pairs = self._pairs_for(self.features)
        if index < 2 * pairs:
            return ("tx" if index & 1 else "rx", index // 2)
        if self.has_feature(NET_F.CTRL_VQ) and index == 2 * pairs:
            return ("ctrl", 0)
        return ("none", 0)

    @property
    def hdr_len(self) -> int:
        return net_hdr_len(self.features)

    def config_space(self) -> bytes:
        decl = virtio_net_config(self.order)
        values: dict[str, object] = {sc.name: 0 for sc in decl.subcons}
        values.update(
            mac=self.mac,
            status=NET_S.LINK_UP if self.link_up else 0,
            max_virtqueue_pairs=self.max_pairs,
        )
        end = _FIELD_END["mac"]  # the mac always, the rest by feature
        for feature, name in _CONFIG_END_BY_FEATURE:
            if self.offered >> feature & 1:
                end = max(end, _FIELD_END[name])
        return bytes(decl.build(values))[:end]

    def config_write(self, offset: int, data: bytes) -> None:
        """Legacy drivers set the address by writing the config mac (QEMU accepts it
        while neither VERSION_1 nor CTRL_MAC_ADDR is negotiated); the rest is read-only."""
        mac_end = _FIELD_END["mac"]
        modern = self.has_feature(F.VERSION_1) or self.has_feature(NET_F.CTRL_MAC_ADDR)
        if offset + len(data) <= mac_end and not modern:
            raw = bytearray(self.mac)
            raw[offset : offset + len(data)] = data
            self.mac = bytes(raw)
            self.events.note(f"net: driver wrote the config mac: {format_mac(self.mac)}")
            return
        super().config_write(offset, data)

    def set_link(self, up: bool) -> None:
        """The backend's link came up or went down (QEMU's set_link): a config change."""
        self.link_up = up
        if self.hooks is not None and self.offered >> NET_F.STATUS & 1:
            self.hooks.config_changed()

    # -- lifecycle ---------------------------------------------------------------

    def activate(self, features: int, order: ByteOrder) -> None:
        super().activate(features, order)
        self.active = True
        if self.hooks is not None:
            # Buffers a legacy driver made available before DRIVER_OK are served now.
            for index in range(self.queue_count(features)):
                self.hooks.kick_from_device(index)

    def reset(self) -> None:
        super().reset()
        self._reset_state()

    # -- serving ---------------------------------------------------------------

    def process(self, queue: DeviceQueue) -> int:
        if not self.active:
            return 0  # served when the driver sets DRIVER_OK
        kind, pair = self.role(queue.index)
        if kind == "tx":
            return self._process_tx(queue, pair)
        if kind == "rx":
            return self._process_rx(queue, pair)
        if kind == "ctrl":
            return self._process_ctrl(queue)
        self.events.note(f"net: queue {queue.index} has no role under the negotiated features")
        return 0

    # -- transmit ----------------------------------------------------------------

    def _process_tx(self, queue: DeviceQueue, pair: int) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            done += 1
            frame = self._parse_tx(queue, chain, pair)
            queue.push(chain.head, 0)
            if frame is None:
                continue
            if not self.link_up:
                self.stats.tx_link_down += 1
                continue
            self.stats.tx_frames += 1
            self.stats.tx_bytes += len(frame.data)
            self.backend.transmit(self, frame)
        return done

    def _parse_tx(self, queue: DeviceQueue, chain: Chain, pair: int) -> Frame | None:
        """The frame of one transmit chain, None if it is dropped; RingError if malformed."""
        hdr_len = self.hdr_len
        if chain.writable:
            self.events.note(f"net: tx chain {chain.head} has device-writable buffers (ignored)")
        reader = ChainReader(queue.space, chain.readable)
        raw = reader.read(hdr_len)
        if len(raw) < hdr_len:
            raise RingError(
                "net-tx-header-short",
                f"tx chain {chain.head} has {len(raw)} readable bytes, the header needs {hdr_len}",
                chain.head,
            )
        nb = has_num_buffers(self.features)
        fields = net_hdr_codec(self.order, nb).unpack(raw)
        flags, gso_type, _hlen, _gso_size, csum_start, csum_offset = fields[:6]
        if nb and fields[6]:
            self.stats.tx_bad_num_buffers += 1
            self.events.note(f"net: tx chain {chain.head} has num_buffers {fields[6]}, not 0")
        if reader.remaining == 0:
            self.stats.tx_empty += 1
            self.events.note(f"net: tx chain {chain.head} carries a header and no frame")
            return None
        limit = NET.max_packet + NET.eth_hlen
        if reader.remaining > limit:
            self.stats.tx_errors += 1
            self.events.note(f"net: tx frame of {reader.remaining} bytes exceeds {limit}")
            return None
        data = reader.read(reader.remaining)
        if gso_type & ~NET_GSO.ECN != NET_GSO.NONE:
            self.stats.tx_errors += 1
            self.events.note(f"net: tx gso_type {gso_type} without a HOST_* GSO feature")
            return None
        partial: tuple[int, int] | None = None
        if flags & NET_HDR_F.NEEDS_CSUM:
            if not self.has_feature(NET_F.CSUM):
                self.events.note("net: NEEDS_CSUM on transmit without VIRTIO_NET_F_CSUM (ignored)")
            elif csum_start + csum_offset + 2 > len(data):
                self.stats.tx_errors += 1
                self.events.note(
                    f"net: tx checksum at {csum_start}+{csum_offset} is beyond the {len(data)}-byte frame"
                )
                return None
            else:
                partial = (csum_start, csum_offset)
        return Frame(data, partial, pair)

    # -- receive -----------------------------------------------------------------

    def receive_frame(self, frame: Frame) -> None:
        """The backend delivers a frame (NetEndpoint)."""
        if not self.active or not self.link_up:
            self.stats.rx_not_ready += 1
            return
        if not self._accept(frame.data):
            self.stats.rx_filtered += 1
            return
        pair = frame.queue_hint % self.curr_pairs
        state = self.rx[pair]
        if len(state.backlog) >= self.backlog_limit:
            self.stats.rx_backlog_dropped += 1
            return
        state.backlog.append(frame)
        if self.hooks is not None:
            self.hooks.kick_from_device(2 * pair)

    def _accept(self, data: bytes) -> bool:
        """QEMU's receive_filter() without VLANs."""
        f = self.filter
        if f.promisc:
            return True
        if len(data) < NET.eth_alen:
            return False
        dst = data[: NET.eth_alen]
        if is_multicast(dst):
            if dst == BROADCAST:
                return True
            return f.allmulti or f.multi_overflow or dst in f.multi
        return f.uni_overflow or dst == self.mac or dst in f.uni

    def _process_rx(self, queue: DeviceQueue, pair: int) -> int:
        state = self.rx[pair]
        ring = getattr(queue, "ring", queue)
        if state.ring is not ring:  # the queue was reset or re-created: old chains are gone
            state.held.clear()
            state.ring = ring
        done = 0
        while state.backlog:
            outcome = self._deliver(queue, state, state.backlog[0])
            if outcome == "wait":
                break
            state.backlog.popleft()
            done += 1
        return done

    def _next_chain(self, queue: DeviceQueue, state: _RxState) -> Chain | None:
        if state.held:
            return state.held.pop(0)
        chain = queue.pop()
        if chain is None:
            return None
        hdr_len = self.hdr_len
        if chain.writable_len < hdr_len:
            what = f"{chain.writable_len} writable bytes" if chain.writable else "no writable buffer"
            raise RingError(
                "net-rx-buffer-short",
                f"rx chain {chain.head} has {what}, the header needs {hdr_len}",
                chain.head,
            )
        if chain.readable:
            self.events.note(f"net: rx chain {chain.head} has device-readable buffers (ignored)")
        return chain

    def _deliver(self, queue: DeviceQueue, state: _RxState, frame: Frame) -> str:
        """Place one frame: "done", "dropped" (counted) or "wait" (not enough buffers)."""
        mrg = self.has_feature(NET_F.MRG_RXBUF)
        need = self.hdr_len + len(frame.data)
        chains: list[Chain] = []
        room = 0
        try:
            while room < need:
                chain = self._next_chain(queue, state)
                if chain is None:
                    state.held[:0] = chains
                    return "wait"
                chains.append(chain)
                room += chain.writable_len
                if not mrg:
                    break
        except RingError:
            state.held[:0] = chains  # the good ones stay available for the next frame
            raise
        if room < need:  # only without MRG_RXBUF: one buffer, too small
            state.held[:0] = chains
            self.stats.rx_dropped_too_big += 1
            self.events.note(
                f"net: {len(frame.data)}-byte frame does not fit a {room}-byte rx buffer; dropped"
            )
            return "dropped"
        payload = self._rx_header(frame, len(chains)) + self._rx_data(frame)
        pos = 0
        for chain in chains:
            writer = ChainWriter(queue.space, chain.writable)
            written = writer.write(payload[pos : pos + chain.writable_len])
            pos += written
            queue.push(chain.head, written)
        self.stats.rx_frames += 1
        self.stats.rx_bytes += len(frame.data)
        self.stats.rx_buffers += len(chains)
        return "done"

    def _rx_data(self, frame: Frame) -> bytes:
        if frame.partial_csum is None or self.has_feature(NET_F.GUEST_CSUM):
            return frame.data
        data = bytearray(frame.data)
        complete_checksum(data, *frame.partial_csum)
        self.stats.rx_csum_completed += 1
        return bytes(data)

    def _rx_header(self, frame: Frame, buffers: int) -> bytes:
        flags = csum_start = csum_offset = 0
        if frame.partial_csum is not None and self.has_feature(NET_F.GUEST_CSUM):
            flags = NET_HDR_F.NEEDS_CSUM
            csum_start, csum_offset = frame.partial_csum
        fields = [flags, NET_GSO.NONE, 0, 0, csum_start, csum_offset]
        nb = has_num_buffers(self.features)
        if nb:
            if self.fault == "num-buffers-zero":
                buffers = 0
            elif self.fault == "num-buffers-extra":
                buffers += 1
            fields.append(buffers)
        return net_hdr_codec(self.order, nb).pack(*fields)

    # -- control -----------------------------------------------------------------

    def _process_ctrl(self, queue: DeviceQueue) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            done += 1
            if chain.readable_len < NET_CTRL_HDR_SIZE or chain.writable_len < NET_CTRL_ACK_SIZE:
                raise RingError(
                    "net-ctrl-short",
                    f"control command {chain.head} has {chain.readable_len} readable and "
                    f"{chain.writable_len} writable bytes (needs {NET_CTRL_HDR_SIZE} and "
                    f"{NET_CTRL_ACK_SIZE})",
                    chain.head,
                )
            reader = ChainReader(queue.space, chain.readable)
            cls, cmd = reader.read(NET_CTRL_HDR_SIZE)
            if reader.remaining > CTRL_DATA_LIMIT:
                ack = self._ctrl_err(f"command data of {reader.remaining} bytes")
            else:
                ack = self._ctrl(cls, cmd, reader.read(reader.remaining))
            if ack == NET_ACK.OK:
                self.stats.ctrl_ok += 1
            ChainWriter(queue.space, chain.writable).write(bytes([ack]))
            queue.push(chain.head, NET_CTRL_ACK_SIZE)
        return done

    def _ctrl_err(self, why: str) -> int:
        self.stats.ctrl_err += 1
        self.events.note(f"net: control command refused: {why}")
        return NET_ACK.ERR

    def _ctrl(self, cls: int, cmd: int, data: bytes) -> int:
        if cls == NET_CTRL.RX:
            return self._ctrl_rx(cmd, data)
        if cls == NET_CTRL.MAC:
            return self._ctrl_mac(cmd, data)
        if cls == NET_CTRL.MQ:
            return self._ctrl_mq(cmd, data)
        return self._ctrl_err(f"unsupported class {cls} command {cmd}")

    def _ctrl_rx(self, cmd: int, data: bytes) -> int:
        if not self.has_feature(NET_F.CTRL_RX):
            return self._ctrl_err("RX class without VIRTIO_NET_F_CTRL_RX")
        if cmd not in (NET_CTRL_RX.PROMISC, NET_CTRL_RX.ALLMULTI):
            return self._ctrl_err(f"RX command {cmd} (CTRL_RX_EXTRA is not offered)")
        if len(data) != 1:
            return self._ctrl_err(f"RX command {cmd} with {len(data)} data bytes, not 1")
        if cmd == NET_CTRL_RX.PROMISC:
            self.filter.promisc = bool(data[0])
        else:
            self.filter.allmulti = bool(data[0])
        return NET_ACK.OK

    def _ctrl_mac(self, cmd: int, data: bytes) -> int:
        alen = NET.eth_alen
        if cmd == NET_CTRL_MAC.ADDR_SET:
            if len(data) != alen:
                return self._ctrl_err(f"MAC_ADDR_SET with {len(data)} bytes")
            self.mac = bytes(data)
            if self.hooks is not None:
                self.hooks.config_changed()
            return NET_ACK.OK
        if cmd != NET_CTRL_MAC.TABLE_SET:
            return self._ctrl_err(f"MAC command {cmd}")
        count = net_ctrl_mac_entries(self.order)
        csize = count.sizeof()
        tables: list[list[bytes]] = []
        pos = 0
        for _ in range(2):  # unicast, then multicast
            if len(data) < pos + csize:
                return self._ctrl_err("MAC_TABLE_SET shorter than its entry counts")
            n = count.parse(data[pos : pos + csize])
            pos += csize
            if n > (len(data) - pos) // alen:
                return self._ctrl_err(f"MAC_TABLE_SET claims {n} entries it does not carry")
            tables.append([data[pos + i * alen : pos + (i + 1) * alen] for i in range(n)])
            pos += n * alen
        if pos != len(data):
            return self._ctrl_err(f"MAC_TABLE_SET has {len(data) - pos} trailing bytes")
        uni, multi = tables
        cap = NET.qemu_mac_table_entries
        f = self.filter
        f.uni_overflow = len(uni) > cap
        f.uni = [] if f.uni_overflow else uni
        f.multi_overflow = len(multi) > cap - len(f.uni)
        f.multi = [] if f.multi_overflow else multi
        return NET_ACK.OK

    def _ctrl_mq(self, cmd: int, data: bytes) -> int:
        if not self.has_feature(NET_F.MQ):
            return self._ctrl_err("MQ class without VIRTIO_NET_F_MQ")
        codec = net_ctrl_mq_pairs(self.order)
        if cmd != NET_CTRL_MQ.VQ_PAIRS_SET or len(data) != codec.sizeof():
            return self._ctrl_err(f"MQ command {cmd} with {len(data)} data bytes")
        pairs = codec.parse(data)
        if not NET_CTRL_MQ.VQ_PAIRS_MIN <= pairs <= self.max_pairs:
            return self._ctrl_err(f"{pairs} queue pairs (device has {self.max_pairs})")
        self.curr_pairs = pairs
        return NET_ACK.OK
