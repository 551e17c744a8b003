"""virtio-console device model on the register bench: port 0, the MULTIPORT control
protocol, hostile chains under both error policies, emergency write, chardev backends."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.mmio_bench import Bench, make_bench
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.devices.chardev import CharBackend, FileChar, LoopbackChar, StdioChar, chardev_from_spec
from virtio_sim.host.devices.console import ConsoleDevice
from virtio_sim.host.qdev import DeviceSpec, build_device
from virtio_sim.host.virtio_device import ErrorPolicy
from virtio_sim.layouts import CONSOLE_CONFIG_OFFSETS, MMIO_CONFIG_OFFSET, console_control_codec
from virtio_sim.ring.hooks import DeviceHooks
from virtio_sim.ring.split import SplitDriverQueue
from virtio_sim.spec import CONSOLE, CONSOLE_E, CONSOLE_F, LIMITS, STATUS, F, bit

CTRL = console_control_codec("little")
MULTI = bit(F.VERSION_1) | bit(F.INDIRECT_DESC) | bit(CONSOLE_F.MULTIPORT)


@dataclass
class Con:
    bench: Bench
    model: ConsoleDevice
    queues: dict[int, SplitDriverQueue]

    def post(self, index: int, size: int, token: object = "rx") -> int:
        buf = self.bench.dma.alloc(size)
        self.queues[index].add([], [(buf.gpa, size)], (token, buf.gpa))
        self.bench.w("QueueNotify", index)
        return buf.gpa

    def send(self, index: int, data: bytes, writable: int = 0) -> None:
        buf = self.bench.dma.alloc(max(len(data) + writable, 1))
        self.bench.memory.write(buf.gpa, data)
        outs = [(buf.gpa, len(data))] if data else []
        ins = [(buf.gpa + len(data), writable)] if writable else []
        self.queues[index].add(outs, ins, "tx")
        self.bench.w("QueueNotify", index)

    def used(self, index: int) -> list[tuple[object, int]]:
        out = []
        while (got := self.queues[index].get_used()) is not None:
            out.append(got)
        return out

    def control(self, port: int, event: int, value: int) -> None:
        self.send(3, CTRL.pack(port, event, value))

    def control_messages(self) -> list[tuple[int, int, int, bytes]]:
        out = []
        for (_, gpa), n in self.used(2):  # type: ignore[misc]
            raw = self.bench.memory.read(gpa, n)
            out.append((*CTRL.unpack(raw[:8]), raw[8:]))
        return out


def make_con(features: int, *, policy: ErrorPolicy = ErrorPolicy.NEEDS_RESET, **kw: object) -> Con:
    kw.setdefault("console", LoopbackChar())
    model = ConsoleDevice(**kw)  # type: ignore[arg-type]
    b = make_bench(model, policy=policy)
    b.negotiate(features & (model.device_features() | bit(F.VERSION_1) | bit(F.INDIRECT_DESC)))
    count = model.queue_count(b.device.driver_features)
    queues = {i: b.setup_queue(i, 16) for i in range(count)}
    b.driver_ok()
    return Con(b, model, queues)


def test_single_port_loopback_echo_and_used_lengths() -> None:
    con = make_con(bit(F.VERSION_1), max_ports=1)
    assert con.model.queue_count(con.bench.device.driver_features) == 2
    con.bench.w("QueueSel", 2)
    assert con.bench.r("QueueSizeMax") == 0  # no control queue without MULTIPORT
    gpas = [con.post(0, 8, i) for i in range(3)]
    con.send(1, b"hello, console!!!")  # 17 bytes over 8-byte buffers
    assert [n for _, n in con.used(1)] == [0]  # transmit: used length 0, as QEMU
    assert [n for _, n in con.used(0)] == [8, 8, 1]
    data = b"".join(con.bench.memory.read(g, 8) for g in gpas)[:17]
    assert data == b"hello, console!!!"


def test_multiport_handshake_and_port_open_gates_data() -> None:
    con = make_con(MULTI, max_ports=4, extra_ports=[LoopbackChar()], size=(80, 25))
    for _ in range(8):
        con.post(2, 64)
    con.control(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)
    adds = con.control_messages()
    assert [(p, e) for p, e, _, _ in adds] == [(0, CONSOLE_E.PORT_ADD), (1, CONSOLE_E.PORT_ADD)]
    con.control(0, CONSOLE_E.PORT_READY, 1)
    msgs = con.control_messages()
    assert [(p, e, v) for p, e, v, _ in msgs] == [(0, CONSOLE_E.CONSOLE_PORT, 1), (0, CONSOLE_E.PORT_OPEN, 1)]
    con.control(1, CONSOLE_E.PORT_READY, 1)
    msgs = con.control_messages()
    assert [(p, e) for p, e, _, _ in msgs] == [(1, CONSOLE_E.PORT_NAME), (1, CONSOLE_E.PORT_OPEN)]
    assert msgs[0][3] == b"org.virtio-sim.port.1"
    # port 1 (queues 4/5): data waits until the guest opens the port
    gpa = con.post(4, 64)
    con.send(5, b"port one data")
    assert con.used(4) == []
    con.control(1, CONSOLE_E.PORT_OPEN, 1)
    assert [n for _, n in con.used(4)] == [13]
    assert con.bench.memory.read(gpa, 13) == b"port one data"


def test_resize_is_sent_for_the_console_port_with_size() -> None:
    con = make_con(MULTI | bit(CONSOLE_F.SIZE), max_ports=2, size=(132, 43))
    for _ in range(4):
        con.post(2, 64)
    con.control(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)
    con.control_messages()
    con.control(0, CONSOLE_E.PORT_READY, 1)
    resize = [m for m in con.control_messages() if m[1] == CONSOLE_E.RESIZE]
    assert resize and resize[0][3] == (132).to_bytes(2, "little") + (43).to_bytes(2, "little")
    cfg = con.bench.transport
    assert cfg.read(MMIO_CONFIG_OFFSET + CONSOLE_CONFIG_OFFSETS["cols"], 2) == 132
    assert cfg.read(MMIO_CONFIG_OFFSET + CONSOLE_CONFIG_OFFSETS["max_nr_ports"], 4) == 2


def test_emergency_write_goes_to_port0_backend() -> None:
    captured: list[bytes] = []

    class Capture(CharBackend):
        def write(self, data: bytes) -> None:
            captured.append(data)

    model = ConsoleDevice(console=Capture(), max_ports=1)
    b = make_bench(model)
    # before any negotiation: console.dev.emerg-wr-anytime
    b.transport.write(MMIO_CONFIG_OFFSET + CONSOLE_CONFIG_OFFSETS["emerg_wr"], 4, 0x1234_0041)
    assert captured == [b"A"]


@pytest.mark.parametrize("policy", list(ErrorPolicy))
def test_control_message_shorter_than_its_header(policy: ErrorPolicy) -> None:
    con = make_con(MULTI, policy=policy, max_ports=2)
    con.send(3, b"\x00\x00\x00")
    vdev = con.bench.device
    assert [v.violation for v in vdev.violations] == ["console-control-short"]
    if policy is ErrorPolicy.DROP:
        assert [n for _, n in con.used(3)] == [0]
        con.post(2, 64)
        con.control(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)  # still served
        assert con.control_messages()[0][1] == CONSOLE_E.PORT_ADD
    else:
        assert vdev.status & STATUS.DEVICE_NEEDS_RESET


@pytest.mark.parametrize("policy", list(ErrorPolicy))
def test_receive_buffer_without_writable_space(policy: ErrorPolicy) -> None:
    con = make_con(bit(F.VERSION_1) | bit(F.INDIRECT_DESC), policy=policy, max_ports=1)
    con.send(0, b"readable only")  # a device-readable buffer on a receive queue
    con.send(1, b"data")  # the loopback now has bytes for port 0
    assert [v.violation for v in con.bench.device.violations] == ["console-rx-not-writable"]
    if policy is ErrorPolicy.DROP:
        gpa = con.post(0, 16)
        assert [n for _, n in con.used(0)] == [0, 4]
        assert con.bench.memory.read(gpa, 4) == b"data"


def test_control_receive_buffer_too_small_for_a_message() -> None:
    con = make_con(MULTI, max_ports=2)
    con.post(2, 4)
    con.control(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)
    assert [v.violation for v in con.bench.device.violations] == ["console-control-buffer-short"]


def test_unknown_ports_and_events_are_noted_not_fatal() -> None:
    con = make_con(MULTI, max_ports=2)
    con.control(7, CONSOLE_E.PORT_READY, 1)
    con.control(0, 99, 0)
    assert not con.bench.device.violations
    msgs = con.model.events.messages
    assert any("unknown port 7" in m for m in msgs) and any("unexpected control event 99" in m for m in msgs)


def test_file_chardev_receives_guest_output(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    con = make_con(bit(F.VERSION_1), max_ports=1, console=chardev_from_spec(f"file:{path}"))
    con.send(1, b"line one\n")
    con.send(1, b"line two\n")
    con.model.close()
    assert path.read_bytes() == b"line one\nline two\n"


def test_file_chardev_unopenable_is_a_property_error(tmp_path: Path) -> None:
    with pytest.raises(PropertyError, match="Could not open"):
        FileChar(str(tmp_path / "no" / "such" / "dir" / "log"))


async def test_stdio_chardev_writes_stdout_and_reads_stdin_in_the_trio_loop() -> None:
    out = io.BytesIO()
    r, w = os.pipe()
    got: list[bytes] = []
    char = StdioChar(out=out, in_fd=r)
    char.attach(got.append)
    char.write(b"to stdout")
    assert out.getvalue() == b"to stdout"
    char.start()  # inside trio: the reader thread hands input to this loop
    os.write(w, b"from stdin")
    os.close(w)
    with trio.fail_after(5):
        while not got:
            await trio.sleep(0.01)
    assert b"".join(got) == b"from stdin"
    os.close(r)


@pytest.mark.parametrize(
    "props, message",
    [
        ({"max_ports": "0"}, "maximum ports supported"),
        ({"max_ports": "512"}, "maximum ports supported"),
        ({"max_ports": "2", "x-ports": "2"}, "do not fit"),
        ({"x-size": "80"}, "COLSxROWS"),
        ({"x-size": "0x25"}, "COLSxROWS"),
        ({"x-console": "tty"}, "loopback, file:PATH or stdio"),
        ({"emergency-write": "sometimes"}, "Parameter 'emergency-write' expects 'on' or 'off'"),
    ],
)
def test_qdev_refuses_bad_serial_properties(props: dict[str, str], message: str) -> None:
    with pytest.raises(PropertyError, match=message):
        build_device(DeviceSpec("virtio-serial-device", dict(props)))


def test_qdev_features_follow_properties() -> None:
    def offered(props: dict[str, str]) -> int:
        return build_device(DeviceSpec("virtio-serial-device", props)).model.device_features()

    assert offered({}) == bit(CONSOLE_F.MULTIPORT) | bit(CONSOLE_F.EMERG_WRITE)  # QEMU: 31 ports
    assert offered({"max_ports": "1", "emergency-write": "off"}) == 0
    assert offered({"max_ports": "1", "x-size": "80x25"}) == bit(CONSOLE_F.SIZE) | bit(CONSOLE_F.EMERG_WRITE)


def test_huge_transmit_chain_is_capped() -> None:
    """Descriptors may all point at the same memory: the device takes a bounded amount."""
    captured: list[int] = []

    class Count(CharBackend):
        def write(self, data: bytes) -> None:
            captured.append(len(data))

    con = make_con(bit(F.VERSION_1) | bit(F.INDIRECT_DESC), max_ports=1, console=Count())
    b = con.bench
    buf = b.dma.alloc(1 << 20)
    con.queues[1].add([(buf.gpa, 1 << 20)] * 8, [], "huge")  # 8 MiB through one MiB of memory
    b.w("QueueNotify", 1)
    assert captured == [LIMITS.console.tx_chain_bytes]
    assert [n for _, n in con.used(1)] == [0]
    assert any("only the first" in m for m in con.model.events.messages)


def test_host_input_backlog_is_bounded() -> None:
    """A backend flooding a port the guest never reads: the backlog stops at the bound and
    the rest is counted as dropped, never kept."""
    limit = LIMITS.console.rx_backlog_bytes
    con = make_con(bit(F.VERSION_1), max_ports=1)
    port = con.model.ports[0]
    con.model.host_input(0, bytes(limit - 10))
    con.model.host_input(0, bytes(30))
    con.model.host_input(0, bytes(5))
    assert len(port.backlog) == limit and port.dropped == 25
    con.post(0, 64)
    assert [n for _, n in con.used(0)] == [64]  # still served from the backlog


def test_control_message_read_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8 MiB control message (one MiB of memory, eight times): the device reads at most
    the bound, uses the header and completes it."""
    from virtio_sim.host.devices import console as console_module

    sizes: list[int] = []

    class Reader(console_module.ChainReader):
        def read(self, n: int) -> bytes:
            sizes.append(n)
            return super().read(n)

    monkeypatch.setattr(console_module, "ChainReader", Reader)
    con = make_con(MULTI, max_ports=4)
    for _ in range(4):
        con.post(2, 64)
    buf = con.bench.dma.alloc(1 << 20)
    con.bench.memory.write(buf.gpa, CTRL.pack(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1))
    con.queues[3].add([(buf.gpa, 1 << 20)] * 8, [], "huge")
    con.bench.w("QueueNotify", 3)
    assert sizes == [LIMITS.console.control_message_bytes]
    assert [n for _, n in con.used(3)] == [0]
    assert [e for _, e, _, _ in con.control_messages()] == [CONSOLE_E.PORT_ADD]


class _SeenAtCompletion(DeviceHooks):
    """Records, when the control transmit queue's used entry is written, how many control
    messages the device had delivered on the control receive queue by then."""

    def __init__(self, model: ConsoleDevice) -> None:
        self.model = model
        self.delivered: list[int] = []

    def write_used(self, ring: Any, head: int, written: int, count: int) -> None:
        self.delivered.append(self.model.stats.control_out)
        super().write_used(ring, head, written, count)


def test_answers_are_delivered_before_the_control_message_completes() -> None:
    """QEMU's control_out() (hw/char/virtio-serial-bus.c, the same in every version since
    0.13) calls handle_control_message() before virtqueue_push(): when the driver sees its
    DEVICE_READY or PORT_READY used, the PORT_ADDs or the CONSOLE_PORT it caused are
    already in the receive queue's used ring. A driver in another process relies on it."""
    con = make_con(MULTI, max_ports=4, extra_ports=[LoopbackChar()])
    for _ in range(8):
        con.post(2, 64)
    q = con.bench.device.queue(3)
    assert q is not None and q.ring is not None
    seen = _SeenAtCompletion(con.model)
    q.ring.hooks = seen
    con.control(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)
    con.control(0, CONSOLE_E.PORT_READY, 1)
    assert seen.delivered == [2, 4]  # two PORT_ADDs, then CONSOLE_PORT and PORT_OPEN
