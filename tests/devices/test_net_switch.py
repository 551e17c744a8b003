"""The learning switch between NICs, its registry, and two NIC models exchanging frames."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.support.mmio_bench import Bench, make_bench
from virtio_sim.host.devices.net import NetDevice
from virtio_sim.host.devices.netbackend import SWITCHES, Frame, Switch, SwitchRegistry
from virtio_sim.netproto import BROADCAST
from virtio_sim.ring.split import SplitDriverQueue
from virtio_sim.spec import NET_F, F, bit

A = bytes.fromhex("525400000001")
B = bytes.fromhex("525400000002")
C = bytes.fromhex("525400000003")


@dataclass(eq=False)
class Port:
    got: list[bytes] = field(default_factory=list)

    def receive_frame(self, frame: Frame) -> None:
        self.got.append(frame.data)


def frame(dst: bytes, src: bytes, body: bytes = b"payload") -> Frame:
    return Frame(dst + src + b"\x88\xb5" + body)


def test_unknown_destination_floods_then_learned_unicast_goes_to_one_port() -> None:
    sw = Switch("t")
    pa, pb, pc = Port(), Port(), Port()
    for p in (pa, pb, pc):
        sw.attach(p)
    sw.transmit(pa, frame(B, A, b"1"))  # B not learned yet: flood to b and c, never back to a
    assert (len(pa.got), len(pb.got), len(pc.got)) == (0, 1, 1)
    sw.transmit(pb, frame(A, B, b"2"))  # A was learned from the first frame
    assert (len(pa.got), len(pb.got), len(pc.got)) == (1, 1, 1)
    sw.transmit(pa, frame(B, A, b"3"))  # B learned now: only b
    assert (len(pa.got), len(pb.got), len(pc.got)) == (1, 2, 1)
    sw.transmit(pc, frame(BROADCAST, C))
    assert (len(pa.got), len(pb.got), len(pc.got)) == (2, 3, 1)
    assert sw.stats.forwarded == 2 and sw.stats.flooded == 2


def test_detached_port_gets_nothing_and_is_forgotten() -> None:
    sw = Switch("t")
    pa, pb = Port(), Port()
    sw.attach(pa)
    sw.attach(pb)
    sw.transmit(pb, frame(A, B))
    sw.detach(pb)
    sw.transmit(pa, frame(B, A))
    assert pb.got == [] and B not in sw.table
    assert sw.stats.dropped == 1  # the sender alone on the switch


def test_registry_creates_on_first_use_and_forgets_empty_switches() -> None:
    reg = SwitchRegistry()
    p1, p2 = reg.port("lan"), reg.port("lan")
    na, nb = Port(), Port()
    p1.attach(na)
    p2.attach(nb)
    assert p1.switch is p2.switch and set(reg.switches) == {"lan"}
    p1.transmit(na, frame(B, A))
    assert nb.got
    p1.detach(na)
    p2.detach(nb)
    assert reg.switches == {}


@dataclass
class LiveNic:
    model: NetDevice
    bench: Bench
    rx: SplitDriverQueue
    tx: SplitDriverQueue


def _live_nic(mac: bytes, switch: str) -> LiveNic:
    model = NetDevice(mac=mac, backend=SWITCHES.port(switch))
    b = make_bench(model)
    b.negotiate(bit(F.VERSION_1) | bit(NET_F.MAC))
    rx = b.setup_queue(0, 8)
    tx = b.setup_queue(1, 8)
    b.driver_ok()
    return LiveNic(model, b, rx, tx)


def test_two_nic_models_exchange_frames_over_a_named_switch() -> None:
    a, b = _live_nic(A, "pair-test"), _live_nic(B, "pair-test")
    try:
        rxbuf = b.bench.dma.alloc(128)
        b.rx.add([], [(rxbuf.gpa, 128)], "rx")
        b.bench.w("QueueNotify", 0)
        payload = B + A + b"\x88\xb5" + b"hello from a"
        txbuf = a.bench.dma.alloc(128)
        a.bench.memory.write(txbuf.gpa, bytes(12) + payload)  # a 12-byte header, then the frame
        a.tx.add([(txbuf.gpa, 12 + len(payload))], [], "tx")
        a.bench.w("QueueNotify", 1)
        assert a.tx.get_used() == ("tx", 0)
        assert b.rx.get_used() == ("rx", 12 + len(payload))
        assert b.bench.memory.read(rxbuf.gpa + 12, len(payload)) == payload
        assert b.bench.r("InterruptStatus") & 1  # b's driver was interrupted for its rx
        assert b.model.stats.rx_frames == 1 and a.model.stats.rx_frames == 0
    finally:
        a.model.close()
        b.model.close()
    assert "pair-test" not in SWITCHES.switches
