"""virtio-console (virtio 1.4 section 5.3), as QEMU's virtio-serial-device behaves.

Port 0 is the console (QEMU's ``virtconsole``) on queues 0 (receiveq) and 1 (transmitq).
With MULTIPORT (offered when max_ports > 1, as QEMU does) queues 2 and 3 are the control
receiveq/transmitq and port k >= 1 uses queues 2k+2 / 2k+3; extra ports are QEMU's
``virtserialport``\\ s.

Control protocol (driver -> device on the control transmitq, device -> driver on the
control receiveq, one struct virtio_console_control per buffer): the driver sends
DEVICE_READY; the device answers PORT_ADD for every port; the driver answers PORT_READY
per port; the device then nominates the console (CONSOLE_PORT, RESIZE when a size is
configured and SIZE negotiated) and reports its own side open (PORT_OPEN 1); the driver
opens a port with PORT_OPEN 1. With MULTIPORT, data reaches a port's receiveq only while
the guest has it open (QEMU's guest_connected); without it port 0 is always connected.

Transmit buffers are consumed whole and completed with used length 0; receive buffers
take as many bytes as they hold. A control message shorter than its 8-byte header, a
control receive buffer too small for the message, or a receive buffer without writable
space is a driver error for the error policy (QEMU silently drops the first; reporting
it is more useful to a conformance run).

RESIZE data is ``cols, rows`` as the spec's struct virtio_console_resize says (Linux reads
it as rows, cols).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from virtio_sim.host.devices.base import DeviceModel, DeviceQueue, PropertyError
from virtio_sim.host.devices.chardev import CharBackend
from virtio_sim.layouts import (
    CONSOLE_CONFIG_OFFSETS,
    CONSOLE_CONTROL_SIZE,
    ByteOrder,
    console_control_codec,
    console_resize_codec,
    virtio_console_config,
)
from virtio_sim.ring.chain import ChainReader, ChainWriter, RingError
from virtio_sim.spec import CONSOLE, CONSOLE_E, CONSOLE_F, LIMITS, bit

# bounds from specs/limits.toml [console]
CONTROL_DATA_LIMIT = LIMITS.console.control_message_bytes  # bytes of one control message the device reads
RX_BACKLOG_LIMIT = LIMITS.console.rx_backlog_bytes  # bytes waiting for a port's receive buffers
TX_CHAIN_LIMIT = LIMITS.console.tx_chain_bytes  # bytes taken from one transmit chain (may repeat memory)


@dataclass
class Port:
    id: int
    backend: CharBackend
    is_console: bool = False
    name: str = ""
    guest_ready: bool = False  # the driver sent PORT_READY 1
    guest_open: bool = False  # the driver sent PORT_OPEN 1
    host_open: bool = True  # the backend side is connected
    backlog: bytearray = field(default_factory=bytearray)
    bytes_in: int = 0  # guest -> host
    bytes_out: int = 0  # host -> guest
    dropped: int = 0  # bytes lost to a full backlog


@dataclass
class ConsoleStats:
    control_in: int = 0  # messages from the driver
    control_out: int = 0  # messages to the driver
    control_dropped: int = 0  # device messages lost before the driver took any
    emergency_bytes: int = 0


class ConsoleDevice(DeviceModel):
    type_key = "console"
    queue_max_size = 128  # QEMU's virtio-serial data queue size

    def __init__(
        self,
        *,
        console: CharBackend,
        max_ports: int = CONSOLE.qemu_max_ports,
        extra_ports: list[CharBackend] | None = None,
        emergency_write: bool = True,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        extra = extra_ports or []
        if not 1 <= max_ports <= CONSOLE.max_ports_limit:
            raise PropertyError(f"maximum ports supported: {CONSOLE.max_ports_limit}")
        if 1 + len(extra) > max_ports:
            raise PropertyError(f"{1 + len(extra)} ports do not fit max_ports={max_ports}")
        self.max_ports = max_ports
        self.size = size
        self.ports = [Port(0, console, is_console=True)] + [
            Port(i + 1, b, name=f"org.virtio-sim.port.{i + 1}") for i, b in enumerate(extra)
        ]
        for port in self.ports:
            port.backend.attach(self._input_for(port.id))
        offered = 0
        if size is not None:
            offered |= bit(CONSOLE_F.SIZE)
        if max_ports > 1:
            offered |= bit(CONSOLE_F.MULTIPORT)
        if emergency_write:
            offered |= bit(CONSOLE_F.EMERG_WRITE)
        self.offered = offered
        self.num_queues = 2 * max_ports + 2 if max_ports > 1 else 2
        self.stats = ConsoleStats()
        self._reset_state()

    def queue_size_for(self, index: int) -> int:
        """QEMU's virtio-serial: the control queues (2 and 3) have 32 entries, the data
        queues 128 (virtio_serial_device_realize; measured under QEMU 7.2)."""
        return CONSOLE.control_queue_size if index in (2, 3) else self.queue_max_size

    def _input_for(self, port_id: int) -> Callable[[bytes], None]:
        def deliver(data: bytes) -> None:
            self.host_input(port_id, data)

        return deliver

    def _reset_state(self) -> None:
        self.active = False
        self.control_out: deque[bytes] = deque()
        for p in self.ports:
            p.guest_ready = p.guest_open = False
            p.backlog.clear()

    def close(self) -> None:
        for p in self.ports:
            p.backend.close()

    # -- features, queues, config ------------------------------------------------

    def device_features(self) -> int:
        return self.offered

    @property
    def multiport(self) -> bool:
        return self.has_feature(CONSOLE_F.MULTIPORT)

    def queue_count(self, features: int) -> int:
        return 2 * self.max_ports + 2 if features >> CONSOLE_F.MULTIPORT & 1 else 2

    def role(self, index: int) -> tuple[str, int]:
        """("rx"|"tx", port id) or ("c_rx"|"c_tx", 0) under the negotiated features."""
        if index < 2:
            return ("tx" if index & 1 else "rx", 0)
        if not self.multiport:
            return ("none", 0)
        if index == 2:
            return ("c_rx", 0)
        if index == 3:
            return ("c_tx", 0)
        return ("tx" if index & 1 else "rx", index // 2 - 1)

    @staticmethod
    def rx_queue(port_id: int) -> int:
        return 0 if port_id == 0 else 2 * port_id + 2

    def config_space(self) -> bytes:
        cols, rows = self.size or (0, 0)
        full = bytes(
            virtio_console_config(self.order).build(
                {"cols": cols, "rows": rows, "max_nr_ports": self.max_ports, "emerg_wr": 0}
            )
        )
        # QEMU's virtio-serial ends its config space before emerg_wr when it does not
        # offer EMERG_WRITE (emergency-write=off, machine types up to 2.7)
        if not self.offered >> CONSOLE_F.EMERG_WRITE & 1:
            return full[: CONSOLE_CONFIG_OFFSETS["emerg_wr"]]
        return full

    def config_write(self, offset: int, data: bytes) -> None:
        """Only emerg_wr is writable: its low byte goes to port 0's backend, at any time."""
        if offset == CONSOLE_CONFIG_OFFSETS["emerg_wr"] and self.offered >> CONSOLE_F.EMERG_WRITE & 1:
            char = int.from_bytes(data, self.order) & 0xFF
            self.stats.emergency_bytes += 1
            self.ports[0].backend.write(bytes([char]))
            return
        super().config_write(offset, data)

    # -- lifecycle ---------------------------------------------------------------

    def activate(self, features: int, order: ByteOrder) -> None:
        super().activate(features, order)
        self.active = True
        for p in self.ports:
            p.backend.start()
        if self.hooks is not None:
            for index in range(self.queue_count(features)):
                self.hooks.kick_from_device(index)

    def reset(self) -> None:
        super().reset()
        self._reset_state()

    # -- host side ---------------------------------------------------------------

    def _port(self, port_id: int) -> Port | None:
        return self.ports[port_id] if 0 <= port_id < len(self.ports) else None

    def host_input(self, port_id: int, data: bytes) -> None:
        """A backend has bytes for the guest on ``port_id``."""
        port = self._port(port_id)
        if port is None or not self.active:
            return
        room = RX_BACKLOG_LIMIT - len(port.backlog)
        if len(data) > room:
            port.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        port.backlog += data
        if self.hooks is not None:
            self.hooks.kick_from_device(self.rx_queue(port_id))

    def _connected(self, port: Port) -> bool:
        return port.guest_open if self.multiport else port.id == 0

    def _send_control(self, port_id: int, event: int, value: int, extra: bytes = b"") -> None:
        msg = console_control_codec(self.order).pack(port_id, event, value) + extra
        self.control_out.append(msg)
        if self.hooks is not None:
            self.hooks.kick_from_device(2)

    # -- serving ---------------------------------------------------------------

    def process(self, queue: DeviceQueue) -> int:
        if not self.active:
            return 0
        kind, port_id = self.role(queue.index)
        if kind == "c_tx":
            return self._process_control_tx(queue)
        if kind == "c_rx":
            return self._process_control_rx(queue)
        port = self._port(port_id)
        if port is None:
            if kind == "tx":  # a port that does not exist: QEMU discards its data
                return self._discard(queue, port_id)
            return 0
        if kind == "tx":
            return self._process_tx(queue, port)
        if kind == "rx":
            return self._process_rx(queue, port)
        self.events.note(f"console: queue {queue.index} has no role under the negotiated features")
        return 0

    def _discard(self, queue: DeviceQueue, port_id: int) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            self.events.note(f"console: data for nonexistent port {port_id} discarded")
            queue.push(chain.head, 0)
            done += 1
        return done

    def _process_tx(self, queue: DeviceQueue, port: Port) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            done += 1
            if chain.writable:
                self.events.note(f"console: tx chain {chain.head} has writable buffers (ignored)")
            if chain.readable_len > TX_CHAIN_LIMIT:
                self.events.note(
                    f"console: tx chain {chain.head} carries {chain.readable_len} bytes;"
                    f" only the first {TX_CHAIN_LIMIT} are taken"
                )
            data = ChainReader(queue.space, chain.readable).read(TX_CHAIN_LIMIT)
            queue.push(chain.head, 0)
            port.bytes_in += len(data)
            if not port.host_open:
                continue  # QEMU discards output for a port nobody listens to
            port.backend.write(data)
        return done

    def _process_rx(self, queue: DeviceQueue, port: Port) -> int:
        done = 0
        while port.backlog and self._connected(port):
            chain = queue.pop()
            if chain is None:
                break
            if not chain.writable:
                raise RingError(
                    "console-rx-not-writable",
                    f"rx chain {chain.head} of port {port.id} has no device-writable buffer",
                    chain.head,
                )
            writer = ChainWriter(queue.space, chain.writable)
            n = writer.write(port.backlog[: chain.writable_len])
            del port.backlog[:n]
            port.bytes_out += n
            queue.push(chain.head, n)
            done += 1
        return done

    def _process_control_rx(self, queue: DeviceQueue) -> int:
        done = 0
        while self.control_out:
            chain = queue.pop()
            if chain is None:
                break
            msg = self.control_out[0]
            if chain.writable_len < len(msg):
                raise RingError(
                    "console-control-buffer-short",
                    f"control rx chain {chain.head} has {chain.writable_len} writable bytes "
                    f"for a {len(msg)}-byte message",
                    chain.head,
                )
            self.control_out.popleft()
            ChainWriter(queue.space, chain.writable).write(msg)
            queue.push(chain.head, len(msg))
            self.stats.control_out += 1
            done += 1
        return done

    def _process_control_tx(self, queue: DeviceQueue) -> int:
        done = 0
        codec = console_control_codec(self.order)
        while (chain := queue.pop()) is not None:
            done += 1
            if chain.readable_len < CONSOLE_CONTROL_SIZE:
                raise RingError(
                    "console-control-short",
                    f"control message {chain.head} has {chain.readable_len} bytes, "
                    f"the header needs {CONSOLE_CONTROL_SIZE}",
                    chain.head,
                )
            raw = ChainReader(queue.space, chain.readable).read(min(chain.readable_len, CONTROL_DATA_LIMIT))
            self.stats.control_in += 1
            port_id, event, value = codec.unpack(raw[:CONSOLE_CONTROL_SIZE])
            # Answer first, complete second, as QEMU's control_out() does
            # (hw/char/virtio-serial-bus.c: handle_control_message() before virtqueue_push(),
            # in every version since 0.13): a driver that sees its DEVICE_READY used finds
            # the PORT_ADDs it caused already in the receive queue's used ring.
            self._handle_control(port_id, event, value)
            queue.push(chain.head, 0)
        return done

    def _handle_control(self, port_id: int, event: int, value: int) -> None:
        if event == CONSOLE_E.DEVICE_READY:
            if not value:
                self.events.note("console: the driver failed to initialise (DEVICE_READY 0)")
                return
            for p in self.ports:
                self._send_control(p.id, CONSOLE_E.PORT_ADD, 1)
            return
        port = self._port(port_id)
        if port is None:
            self.events.note(f"console: control event {event} for unknown port {port_id}")
            return
        if event == CONSOLE_E.PORT_READY:
            if not value:
                self.events.note(f"console: the driver failed to add port {port_id}")
                return
            port.guest_ready = True
            if port.is_console:
                self._send_control(port.id, CONSOLE_E.CONSOLE_PORT, 1)
                if self.size is not None and self.has_feature(CONSOLE_F.SIZE):
                    cols, rows = self.size
                    resize = console_resize_codec(self.order).pack(cols, rows)
                    self._send_control(port.id, CONSOLE_E.RESIZE, 0, resize)
            if port.name:
                self._send_control(port.id, CONSOLE_E.PORT_NAME, 1, port.name.encode())
            if port.host_open:
                self._send_control(port.id, CONSOLE_E.PORT_OPEN, 1)
        elif event == CONSOLE_E.PORT_OPEN:
            port.guest_open = bool(value)
            if port.guest_open and port.backlog and self.hooks is not None:
                self.hooks.kick_from_device(self.rx_queue(port.id))
        else:
            self.events.note(f"console: unexpected control event {event} from the driver")
