"""virtio-net device model, driven register by register: header sizes, receive buffers,
the control queue, hostile chains under both error policies, queue layout, config."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.mmio_bench import Bench, make_bench
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.devices.net import NetDevice
from virtio_sim.host.devices.netbackend import Frame, LoopbackBackend, NetEndpoint
from virtio_sim.host.qdev import DeviceSpec, build_device
from virtio_sim.host.virtio_device import ErrorPolicy
from virtio_sim.layouts import MMIO_CONFIG_OFFSET, NET_CONFIG_OFFSETS, net_hdr_codec
from virtio_sim.netproto import checksum_ok, complete_checksum, net_hdr_len
from virtio_sim.ring.split import SplitDriverQueue
from virtio_sim.spec import (
    NET_ACK,
    NET_CTRL,
    NET_CTRL_MAC,
    NET_CTRL_MQ,
    NET_CTRL_RX,
    NET_F,
    NET_HDR_F,
    NET_S,
    STATUS,
    F,
    bit,
)

MAC = bytes.fromhex("525400123456")
OTHER = bytes.fromhex("021122334455")
BASE = bit(NET_F.MAC) | bit(NET_F.STATUS) | bit(NET_F.CTRL_VQ) | bit(NET_F.CTRL_RX)
MODERN = BASE | bit(F.VERSION_1)


@dataclass
class Recorder:
    """A backend that keeps what the NIC transmitted (a real backend, for assertions)."""

    name: str = "recorder"
    frames: list[Frame] = field(default_factory=list)

    def attach(self, nic: NetEndpoint) -> None:
        pass

    def detach(self, nic: NetEndpoint) -> None:
        pass

    def transmit(self, nic: NetEndpoint, frame: Frame) -> None:
        self.frames.append(frame)


@dataclass
class Nic:
    bench: Bench
    model: NetDevice
    rx: SplitDriverQueue
    tx: SplitDriverQueue
    ctrl: SplitDriverQueue | None
    backend: Recorder | LoopbackBackend

    @property
    def hdr_len(self) -> int:
        return net_hdr_len(self.bench.device.driver_features)

    def post_rx(self, size: int, token: object = "rx") -> int:
        buf = self.bench.dma.alloc(size)
        self.bench.memory.fill(buf.gpa, size, 0xEE)
        self.rx.add([], [(buf.gpa, size)], (token, buf.gpa))
        self.bench.w("QueueNotify", 0)
        return buf.gpa

    def send_chain(self, readable: list[bytes], writable: list[int] | None = None) -> None:
        outs = []
        for part in readable:
            buf = self.bench.dma.alloc(max(len(part), 1))
            self.bench.memory.write(buf.gpa, part)
            outs.append((buf.gpa, len(part)))
        ins = [(self.bench.dma.alloc(n).gpa, n) for n in writable or []]
        self.tx.add(outs, ins, "tx")
        self.bench.w("QueueNotify", 1)

    def header(self, **fields: int) -> bytes:
        feats = self.bench.device.driver_features
        nb = net_hdr_len(feats) == 12
        values = [
            fields.get(k, 0)
            for k in ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
        ]
        if nb:
            values.append(fields.get("num_buffers", 0))
        return net_hdr_codec("little", nb).pack(*values)

    def send(self, frame: bytes, **hdr: int) -> None:
        self.send_chain([self.header(**hdr) + frame])

    def ctrl_cmd(self, cls: int, cmd: int, data: bytes, ack_len: int = 1) -> int:
        assert self.ctrl is not None
        b = self.bench
        buf = b.dma.alloc(2 + len(data) + 1)
        b.memory.write(buf.gpa, bytes([cls, cmd]) + data + b"\xff")
        outs = [(buf.gpa, 2)] + ([(buf.gpa + 2, len(data))] if data else [])
        self.ctrl.add(outs, [(buf.gpa + 2 + len(data), ack_len)] if ack_len else [], "ctrl")
        b.w("QueueNotify", self.model.queue_count(b.device.driver_features) - 1)
        got = self.ctrl.get_used()
        assert got is not None
        return b.memory.read(buf.gpa + 2 + len(data), 1)[0]


def make_nic(
    features: int = MODERN,
    *,
    policy: ErrorPolicy = ErrorPolicy.NEEDS_RESET,
    backend: Recorder | LoopbackBackend | None = None,
    **kw: object,
) -> Nic:
    be = backend if backend is not None else Recorder()
    model = NetDevice(mac=MAC, backend=be, **kw)  # type: ignore[arg-type]
    b = make_bench(model, policy=policy)
    # The bench's queues use indirect tables for multi-buffer chains.
    b.negotiate(features & model.device_features() | features & bit(F.VERSION_1) | bit(F.INDIRECT_DESC))
    rx = b.setup_queue(0, 16)
    tx = b.setup_queue(1, 16)
    ctrl = b.setup_queue(2, 16) if features >> NET_F.CTRL_VQ & 1 and not features >> NET_F.MQ & 1 else None
    if features >> NET_F.MQ & 1:
        for i in range(2, 2 * model.max_pairs):
            b.setup_queue(i, 16)
        ctrl = b.setup_queue(2 * model.max_pairs, 16)
    b.driver_ok()
    return Nic(b, model, rx, tx, ctrl, be)


def used(q: SplitDriverQueue) -> list[tuple[object, int]]:
    out = []
    while (got := q.get_used()) is not None:
        out.append(got)
    return out


# --------------------------------------------------------------------------- header size


@pytest.mark.parametrize(
    "features, size",
    [
        (BASE, 10),  # legacy without MRG_RXBUF
        (BASE | bit(NET_F.MRG_RXBUF), 12),  # legacy with MRG_RXBUF: num_buffers appears
        (MODERN, 12),  # VERSION_1: num_buffers always there
        (MODERN | bit(NET_F.MRG_RXBUF), 12),
    ],
)
def test_header_size_on_transmit_and_receive(features: int, size: int) -> None:
    nic = make_nic(features, backend=LoopbackBackend())
    assert nic.model.hdr_len == size
    gpa = nic.post_rx(size + 100)
    frame = bytes(range(60))
    nic.send(frame)
    [(_, n)] = used(nic.rx)
    assert n == size + len(frame)
    data = nic.bench.memory.read(gpa, n)
    assert data[size:] == frame  # the frame starts right after a header of that size
    if size == 12:
        assert int.from_bytes(data[10:12], "little") == 1  # num_buffers


def test_transmit_header_of_the_wrong_size_shifts_the_frame() -> None:
    """A 12-byte header sent to a device that negotiated a 10-byte one is 2 bytes of data."""
    nic = make_nic(BASE)
    nic.send_chain([bytes(12) + b"payload"])
    assert nic.backend.frames[0].data == b"\0\0payload"  # type: ignore[union-attr]


def test_header_may_be_split_across_descriptors() -> None:
    nic = make_nic(MODERN)
    hdr = nic.header()
    nic.send_chain([hdr[:3], hdr[3:] + b"ab", b"cdef"])
    assert nic.backend.frames[0].data == b"abcdef"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- receive


def test_without_mrg_a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() -> None:
    nic = make_nic(MODERN, backend=LoopbackBackend())
    gpa = nic.post_rx(12 + 50)
    nic.send(b"x" * 51)  # one byte too many
    assert nic.model.stats.rx_dropped_too_big == 1
    assert used(nic.rx) == []  # the buffer was not consumed...
    nic.send(b"y" * 50)
    [((_, buf), n)] = used(nic.rx)  # ...and takes the next frame that fits
    assert buf == gpa and n == 62
    assert nic.bench.memory.read(gpa + 12, 50) == b"y" * 50


def test_mergeable_frame_spans_buffers_filling_all_but_the_last() -> None:
    nic = make_nic(MODERN | bit(NET_F.MRG_RXBUF), backend=LoopbackBackend())
    gpas = [nic.post_rx(40, i) for i in range(5)]
    frame = bytes(range(100))
    nic.send(frame)
    got = used(nic.rx)
    assert [n for _, n in got] == [40, 40, 32]  # 112 bytes: 12 header + 100 frame
    first = nic.bench.memory.read(gpas[0], 40)
    assert int.from_bytes(first[10:12], "little") == 3
    data = first[12:] + nic.bench.memory.read(gpas[1], 40) + nic.bench.memory.read(gpas[2], 32)
    assert data == frame
    assert nic.model.stats.rx_buffers == 3


def test_frames_wait_for_buffers_and_arrive_when_posted() -> None:
    nic = make_nic(MODERN, backend=LoopbackBackend())
    nic.send(b"first-frame")
    nic.send(b"second-frame")
    assert len(nic.model.rx[0].backlog) == 2
    g1 = nic.post_rx(64, 1)
    g2 = nic.post_rx(64, 2)
    assert [n for _, n in used(nic.rx)] == [12 + 11, 12 + 12]
    assert nic.bench.memory.read(g1 + 12, 11) == b"first-frame"
    assert nic.bench.memory.read(g2 + 12, 12) == b"second-frame"


def test_mergeable_frame_waits_until_enough_buffers_are_posted() -> None:
    nic = make_nic(MODERN | bit(NET_F.MRG_RXBUF), backend=LoopbackBackend())
    nic.post_rx(20, 1)
    nic.send(bytes(30))  # needs 42 bytes: the one 20-byte buffer is held, not used
    assert used(nic.rx) == []
    nic.post_rx(20, 2)
    nic.post_rx(20, 3)
    assert [(tok[0], n) for tok, n in used(nic.rx)] == [(1, 20), (2, 20), (3, 2)]  # type: ignore[index]


def test_frames_before_driver_ok_are_not_received() -> None:
    model = NetDevice(mac=MAC, backend=Recorder())
    b = make_bench(model)
    b.negotiate(MODERN)
    model.receive_frame(Frame(b"early"))
    assert model.stats.rx_not_ready == 1


def test_checksum_completed_for_a_driver_without_guest_csum() -> None:
    nic = make_nic(MODERN | bit(NET_F.CSUM), backend=LoopbackBackend(), guest_csum=False)
    assert not nic.bench.device.driver_features >> NET_F.GUEST_CSUM & 1
    frame = bytearray(bytes(range(64)))
    frame[40:42] = (0x1234).to_bytes(2, "big")  # the pseudo-header sum
    gpa = nic.post_rx(200)
    nic.send(bytes(frame), flags=NET_HDR_F.NEEDS_CSUM, csum_start=34, csum_offset=6)
    [(_, n)] = used(nic.rx)
    got = nic.bench.memory.read(gpa, n)
    assert got[0] == 0  # flags: no NEEDS_CSUM for this driver
    assert checksum_ok(got[12:], 34, 0x1234)
    assert nic.model.stats.rx_csum_completed == 1


def test_checksum_request_passed_through_with_guest_csum() -> None:
    nic = make_nic(MODERN | bit(NET_F.CSUM) | bit(NET_F.GUEST_CSUM), backend=LoopbackBackend())
    gpa = nic.post_rx(200)
    frame = bytes(range(64))
    nic.send(frame, flags=NET_HDR_F.NEEDS_CSUM, csum_start=34, csum_offset=6)
    [(_, n)] = used(nic.rx)
    hdr = net_hdr_codec("little", True).unpack(nic.bench.memory.read(gpa, 12))
    assert hdr[0] == NET_HDR_F.NEEDS_CSUM and hdr[4:6] == (34, 6)
    assert nic.bench.memory.read(gpa + 12, n - 12) == frame


def test_complete_checksum_matches_a_receiver_check() -> None:
    data = bytearray(b"\x45\x00" + bytes(range(2, 40)))
    data[10:12] = (0xBEEF).to_bytes(2, "big")
    assert complete_checksum(data, 4, 6)
    assert checksum_ok(bytes(data), 4, 0xBEEF)
    assert not complete_checksum(bytearray(8), 4, 6)  # field beyond the frame: untouched


# --------------------------------------------------------------------------- hostile chains


@pytest.mark.parametrize("policy", list(ErrorPolicy))
def test_rx_buffer_smaller_than_the_header(policy: ErrorPolicy) -> None:
    nic = make_nic(MODERN | bit(NET_F.MRG_RXBUF), policy=policy, backend=LoopbackBackend())
    nic.post_rx(8, "tiny")
    nic.send(b"frame")
    vdev = nic.bench.device
    assert [v.violation for v in vdev.violations] == ["net-rx-buffer-short"]
    if policy is ErrorPolicy.NEEDS_RESET:
        assert vdev.status & STATUS.DEVICE_NEEDS_RESET
        assert used(nic.rx) == []
    else:
        assert not vdev.status & STATUS.DEVICE_NEEDS_RESET
        assert [(tok[0], n) for tok, n in used(nic.rx)] == [("tiny", 0)]  # type: ignore[index]
        gpa = nic.post_rx(64, "ok")  # the queue keeps working and the frame still arrives
        assert [n for _, n in used(nic.rx)] == [12 + 5]
        assert nic.bench.memory.read(gpa + 12, 5) == b"frame"


@pytest.mark.parametrize("policy", list(ErrorPolicy))
@pytest.mark.parametrize(
    "readable, writable",
    [
        ([b"\0" * 5], None),  # header cut short
        ([], [16]),  # no readable data at all: only a writable buffer
    ],
)
def test_tx_chain_without_a_whole_header(
    policy: ErrorPolicy, readable: list[bytes], writable: list[int] | None
) -> None:
    nic = make_nic(MODERN, policy=policy)
    nic.send_chain(readable, writable)
    vdev = nic.bench.device
    assert [v.violation for v in vdev.violations] == ["net-tx-header-short"]
    assert nic.backend.frames == []  # type: ignore[union-attr]
    if policy is ErrorPolicy.DROP:
        assert [n for _, n in used(nic.tx)] == [0]
        nic.send(b"next")
        assert [f.data for f in nic.backend.frames] == [b"next"]  # type: ignore[union-attr]
    else:
        assert vdev.status & STATUS.DEVICE_NEEDS_RESET


def test_tx_header_without_a_frame_is_dropped_and_counted() -> None:
    nic = make_nic(MODERN)
    nic.send_chain([nic.header()])
    assert nic.model.stats.tx_empty == 1
    assert nic.backend.frames == []  # type: ignore[union-attr]
    assert [n for _, n in used(nic.tx)] == [0]
    assert not nic.bench.device.violations


def test_tx_num_buffers_not_zero_is_counted_and_ignored() -> None:
    nic = make_nic(MODERN)
    nic.send(b"data", num_buffers=7)
    assert nic.model.stats.tx_bad_num_buffers == 1
    assert [f.data for f in nic.backend.frames] == [b"data"]  # type: ignore[union-attr]


def test_tx_gso_and_bad_checksum_offsets_are_refused() -> None:
    nic = make_nic(MODERN | bit(NET_F.CSUM))
    nic.send(b"x" * 20, gso_type=1)
    nic.send(b"x" * 20, flags=NET_HDR_F.NEEDS_CSUM, csum_start=18, csum_offset=6)
    assert nic.model.stats.tx_errors == 2
    assert nic.backend.frames == []  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", list(ErrorPolicy))
@pytest.mark.parametrize("data, ack_len", [(b"", 1), (b"\x01", 0)])
def test_control_command_too_short(policy: ErrorPolicy, data: bytes, ack_len: int) -> None:
    nic = make_nic(MODERN, policy=policy)
    assert nic.ctrl is not None
    b = nic.bench
    buf = b.dma.alloc(4)
    b.memory.write(buf.gpa, bytes([NET_CTRL.RX]) + data)
    nic.ctrl.add([(buf.gpa, 1 + len(data))], [(buf.gpa + 3, ack_len)] if ack_len else [], "short")
    b.w("QueueNotify", 2)
    assert [v.violation for v in b.device.violations] == ["net-ctrl-short"]
    if policy is ErrorPolicy.DROP:
        assert used(nic.ctrl) == [("short", 0)]
        assert nic.ctrl_cmd(NET_CTRL.RX, NET_CTRL_RX.PROMISC, b"\x00") == NET_ACK.OK
    else:
        assert b.device.status & STATUS.DEVICE_NEEDS_RESET


# --------------------------------------------------------------------------- control queue


def test_rx_mode_and_mac_table_filter_frames() -> None:
    nic = make_nic(MODERN, backend=LoopbackBackend())
    m = nic.model
    to_other = OTHER + MAC + b"\x88\xb5" + bytes(50)
    to_us = MAC + OTHER + b"\x88\xb5" + bytes(50)
    multicast = bytes.fromhex("01005e000001") + MAC + bytes(52)
    assert m.filter.promisc  # QEMU: promiscuous after reset
    assert nic.ctrl_cmd(NET_CTRL.RX, NET_CTRL_RX.PROMISC, b"\x00") == NET_ACK.OK
    for f in (to_other, to_us, multicast):
        m.receive_frame(Frame(f))
    assert m.stats.rx_filtered == 2 and len(m.rx[0].backlog) == 1
    assert nic.ctrl_cmd(NET_CTRL.RX, NET_CTRL_RX.ALLMULTI, b"\x01") == NET_ACK.OK
    m.receive_frame(Frame(multicast))
    assert len(m.rx[0].backlog) == 2
    table = (1).to_bytes(4, "little") + OTHER + (0).to_bytes(4, "little")
    assert nic.ctrl_cmd(NET_CTRL.MAC, NET_CTRL_MAC.TABLE_SET, table) == NET_ACK.OK
    m.receive_frame(Frame(to_other))
    assert len(m.rx[0].backlog) == 3
    assert m.filter.uni == [OTHER]


@pytest.mark.parametrize(
    "cls, cmd, data",
    [
        (NET_CTRL.RX, NET_CTRL_RX.PROMISC, b"\x01\x01"),  # two data bytes
        (NET_CTRL.RX, NET_CTRL_RX.NOBCAST, b"\x01"),  # CTRL_RX_EXTRA not offered
        (NET_CTRL.MAC, NET_CTRL_MAC.TABLE_SET, (5).to_bytes(4, "little") + OTHER),  # claims 5
        (NET_CTRL.MAC, NET_CTRL_MAC.TABLE_SET, b"\x00\x00"),  # shorter than the count
        (NET_CTRL.MAC, NET_CTRL_MAC.TABLE_SET, bytes(8) + b"junk"),  # trailing bytes
        (NET_CTRL.MAC, NET_CTRL_MAC.ADDR_SET, OTHER[:5]),
        (NET_CTRL.MQ, NET_CTRL_MQ.VQ_PAIRS_SET, (1).to_bytes(2, "little")),  # MQ not negotiated
        (NET_CTRL.VLAN, 0, b"\x00\x00"),  # unsupported class
    ],
)
def test_malformed_or_unsupported_commands_get_err(cls: int, cmd: int, data: bytes) -> None:
    nic = make_nic(MODERN)
    before = (nic.model.filter.uni, nic.model.mac)
    assert nic.ctrl_cmd(cls, cmd, data) == NET_ACK.ERR
    assert (nic.model.filter.uni, nic.model.mac) == before
    assert not nic.bench.device.violations


def test_mac_addr_set_updates_config_and_generation() -> None:
    nic = make_nic(MODERN | bit(NET_F.CTRL_MAC_ADDR))
    b = nic.bench
    gen = b.r("ConfigGeneration")
    assert nic.ctrl_cmd(NET_CTRL.MAC, NET_CTRL_MAC.ADDR_SET, OTHER) == NET_ACK.OK
    cfg = bytes(b.transport.read(MMIO_CONFIG_OFFSET + i, 1) for i in range(6))
    assert cfg == OTHER
    assert b.r("ConfigGeneration") != gen


def test_mq_pairs_and_queue_layout() -> None:
    feats = MODERN | bit(NET_F.MQ)
    nic = make_nic(feats, mq=True, queue_pairs=3)
    b, m = nic.bench, nic.model
    assert m.queue_count(b.device.driver_features) == 7  # 3 pairs + control queue at 6
    assert m.role(6) == ("ctrl", 0) and m.role(5) == ("tx", 2)
    b.w("QueueSel", 7)
    assert b.r("QueueSizeMax") == 0
    ack = nic.ctrl_cmd(NET_CTRL.MQ, NET_CTRL_MQ.VQ_PAIRS_SET, (3).to_bytes(2, "little"))
    assert ack == NET_ACK.OK and m.curr_pairs == 3
    too_many = nic.ctrl_cmd(NET_CTRL.MQ, NET_CTRL_MQ.VQ_PAIRS_SET, (4).to_bytes(2, "little"))
    assert too_many == NET_ACK.ERR and m.curr_pairs == 3


def test_without_mq_the_control_queue_is_queue_2() -> None:
    model = NetDevice(mac=MAC, backend=Recorder(), mq=True, queue_pairs=3)
    b = make_bench(model)
    b.negotiate(MODERN)  # MQ not acked
    assert model.queue_count(b.device.driver_features) == 3
    b.w("QueueSel", 3)
    assert b.r("QueueSizeMax") == 0
    b.w("QueueSel", 2)
    assert b.r("QueueSizeMax") > 0
    b.negotiate(MODERN & ~bit(NET_F.CTRL_VQ) & ~bit(NET_F.CTRL_RX))
    assert model.queue_count(b.device.driver_features) == 2  # no control queue at all


# --------------------------------------------------------------------------- config, features


def test_config_size_follows_offered_features() -> None:
    with_mq = NetDevice(mac=MAC, backend=Recorder(), mq=True, queue_pairs=2)
    assert len(with_mq.config_space()) == NET_CONFIG_OFFSETS["mtu"]  # up to max_virtqueue_pairs
    assert with_mq.config_space()[:6] == MAC
    plain = NetDevice(mac=MAC, backend=Recorder())
    assert len(plain.config_space()) == NET_CONFIG_OFFSETS["max_virtqueue_pairs"]
    no_status = NetDevice(mac=MAC, backend=Recorder(), status=False)
    assert len(no_status.config_space()) == NET_CONFIG_OFFSETS["status"]


def test_link_down_is_a_config_change() -> None:
    nic = make_nic(MODERN)
    b = nic.bench
    status_off = MMIO_CONFIG_OFFSET + NET_CONFIG_OFFSETS["status"]
    assert b.transport.read(status_off, 2) & NET_S.LINK_UP
    b.w("InterruptACK", b.r("InterruptStatus"))
    nic.model.set_link(False)
    assert b.r("InterruptStatus") & 2  # configuration change
    assert not b.transport.read(status_off, 2) & NET_S.LINK_UP
    nic.send(b"frame")
    assert nic.model.stats.tx_link_down == 1 and nic.backend.frames == []  # type: ignore[union-attr]


def test_driver_acking_a_feature_without_its_prerequisite_is_refused() -> None:
    model = NetDevice(mac=MAC, backend=Recorder())
    b = make_bench(model)
    b.negotiate(bit(F.VERSION_1) | bit(NET_F.CTRL_RX))  # CTRL_RX without CTRL_VQ
    assert not b.r("Status") & STATUS.FEATURES_OK
    assert any("CTRL_RX" in n for n in b.device.notes)


@pytest.mark.parametrize(
    "props, message",
    [
        ({"mq": "on", "ctrl_vq": "off"}, "VIRTIO_NET_F_MQ needs VIRTIO_NET_F_CTRL_VQ"),
        ({"ctrl_vq": "off", "ctrl_rx": "on"}, "CTRL_RX needs"),
        ({"x-queue-pairs": "2"}, "need mq=on"),
        ({"mac": "52:54:00"}, "not a MAC address"),
        ({"x-backend": "tap0"}, "loopback|switch:NAME"),
        ({"x-fault": "everything"}, "x-fault"),
        ({"mrg_rxbuf": "maybe"}, "Parameter 'mrg_rxbuf' expects 'on' or 'off'"),
    ],
)
def test_qdev_refuses_bad_properties(props: dict[str, str], message: str) -> None:
    with pytest.raises(PropertyError, match=message):
        build_device(DeviceSpec("virtio-net-device", dict(props)))


def test_qdev_ctrl_vq_off_takes_its_dependents_along() -> None:
    built = build_device(DeviceSpec("virtio-net-device", {"ctrl_vq": "off"}))
    offered = built.model.device_features()
    assert not offered & (bit(NET_F.CTRL_VQ) | bit(NET_F.CTRL_RX) | bit(NET_F.CTRL_MAC_ADDR))
    assert offered & bit(NET_F.MAC)


# --------------------------------------------------------------------------- property


@settings(deadline=None, max_examples=40)
@given(
    mrg=st.booleans(),
    frames=st.lists(st.integers(1, 2500), min_size=1, max_size=6),
    sizes=st.lists(st.integers(12, 900), min_size=1, max_size=6),
)
def test_rx_placement_matches_a_simple_model(mrg: bool, frames: list[int], sizes: list[int]) -> None:
    """Frames land in posted buffers exactly as a reference model of the rules says: one
    buffer per frame and drops of what does not fit without MRG_RXBUF, all-but-last filled
    with it, frames waiting (never reordered) when the buffers run out."""
    feats = MODERN | (bit(NET_F.MRG_RXBUF) if mrg else 0)
    nic = make_nic(feats, backend=Recorder())
    hdr = nic.hdr_len
    bufs = [sizes[i % len(sizes)] for i in range(16)]
    gpas = [nic.post_rx(n, i) for i, n in enumerate(bufs)]
    payloads = [bytes([i + 1]) * n for i, n in enumerate(frames)]
    for p in payloads:
        nic.model.receive_frame(Frame(p))
    # reference model
    head, expect, dropped, waiting = 0, [], 0, 0
    for p in payloads:
        need = hdr + len(p)
        if waiting:
            waiting += 1
            continue
        if not mrg:
            if head >= len(bufs):
                waiting += 1
            elif need <= bufs[head]:
                expect.append((p, [head]))
                head += 1
            else:
                dropped += 1
            continue
        take, room = [], 0
        while room < need and head + len(take) < len(bufs):
            take.append(head + len(take))
            room += bufs[take[-1]]
        if room < need:
            waiting += 1
        else:
            expect.append((p, take))
            head += len(take)
    got = used(nic.rx)
    assert [tok[0] for tok, _ in got] == [i for _, idx in expect for i in idx]  # type: ignore[index]
    lens = iter(n for _, n in got)
    for p, idx in expect:
        data = b""
        for k, i in enumerate(idx):
            n = next(lens)
            if k + 1 < len(idx):
                assert n == bufs[i]  # every buffer but the last is filled
            data += nic.bench.memory.read(gpas[i], n)
        if hdr == 12:
            assert int.from_bytes(data[10:12], "little") == len(idx)
        assert data[hdr:] == p
    assert nic.model.stats.rx_dropped_too_big == dropped
    assert len(nic.model.rx[0].backlog) == waiting


def test_held_buffers_are_forgotten_when_the_queue_is_reset() -> None:
    """Buffers the device held for a frame belong to the old ring after a queue reset; the
    device must not complete them on the new one."""
    nic = make_nic(MODERN | bit(NET_F.MRG_RXBUF), backend=LoopbackBackend())
    b = nic.bench
    nic.post_rx(20, "old")
    nic.send(bytes(100))  # needs more than the one buffer: held, frame waits
    assert nic.model.rx[0].held
    b.w("QueueSel", 0)
    b.w("QueueReset", 1)
    nic.rx = b.setup_queue(0, 16)
    gpa = nic.post_rx(200, "new")
    assert [(tok[0], n) for tok, n in used(nic.rx)] == [("new", 112)]  # type: ignore[index]
    assert b.memory.read(gpa + 12, 100) == bytes(100)
    assert not b.device.violations
