"""virtio-console guest driver (Linux's virtio_console.c, the parts a simulator needs).

Probe reads the config (cols/rows with SIZE, max_nr_ports with MULTIPORT) and sets up
every queue, as Linux's init_vqs does: port 0 receiveq/transmitq, and with MULTIPORT the
control queues and a receiveq/transmitq per possible port.

:meth:`ConsoleDriver.open` is what Linux does right after DRIVER_OK: without MULTIPORT
port 0 is the console and is used at once; with it the driver posts control buffers,
sends DEVICE_READY and answers the device's messages until it has nothing more to say
(PORT_ADD -> PORT_READY, CONSOLE_PORT -> PORT_OPEN 1, RESIZE, PORT_NAME, PORT_OPEN).
The device answers each driver message synchronously enough that "no control message
pending after our last message completed" means the exchange is over; a device that
keeps talking is cut off after a bounded number of rounds.

Control messages from the device that are malformed (too short, unknown port) are
counted and ignored, as Linux does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_sim import layouts
from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.drivers.rxpool import RxPool
from virtio_sim.guest.virtio import GuestVirtqueue, ProbeRefused
from virtio_sim.layouts import (
    CONSOLE_CONFIG_OFFSETS,
    CONSOLE_CONTROL_SIZE,
    console_control_codec,
    console_resize_codec,
)
from virtio_sim.spec import CONSOLE, CONSOLE_E, CONSOLE_F, bit

_CFG = CONSOLE_CONFIG_OFFSETS
CONTROL_BUFFER_SIZE = 256
CONTROL_BUFFERS = 32
MAX_CONTROL_ROUNDS = 4096


class ConsoleProtocolError(DeviceProtocolError):
    """The console device did not behave (ports never added, writes never taken)."""


@dataclass
class GuestPort:
    id: int
    rx: RxPool
    tx: GuestVirtqueue
    is_console: bool = False
    name: str = ""
    host_open: bool = False
    guest_open: bool = False
    received: bytearray = field(default_factory=bytearray)


@dataclass
class ConsoleDriverStats:
    control_in: int = 0
    control_out: int = 0
    control_errors: int = 0
    bytes_written: int = 0
    bytes_read: int = 0


class ConsoleDriver(GuestDriver):
    type_key = "console"
    device_feature_mask = bit(CONSOLE_F.SIZE) | bit(CONSOLE_F.MULTIPORT) | bit(CONSOLE_F.EMERG_WRITE)
    queue_size = 128
    rx_buffers_per_port = 16

    async def probe(self) -> None:
        d = self.dev
        self.stats = ConsoleDriverStats()
        self.size: tuple[int, int] | None = None
        if d.has(CONSOLE_F.SIZE):
            cols, rows = await self.read_config_stable([(_CFG["cols"], 2), (_CFG["rows"], 2)])
            self.size = (cols, rows)
        self.multiport = d.has(CONSOLE_F.MULTIPORT)
        self.max_ports = 1
        if self.multiport:
            (n,) = await self.read_config_stable([(_CFG["max_nr_ports"], 4)])
            if not 1 <= n <= CONSOLE.max_ports_limit:
                raise ProbeRefused("probe", f"max_nr_ports {n} out of range")
            self.max_ports = n
        self._vqs: dict[int, tuple[GuestVirtqueue, GuestVirtqueue]] = {}
        self._vqs[0] = (
            await d.setup_queue(0, self.queue_size),
            await d.setup_queue(1, self.queue_size),
        )
        self.control_rx: RxPool | None = None
        self.control_tx: GuestVirtqueue | None = None
        if self.multiport:
            self.control_rx = RxPool(await d.setup_queue(2, self.queue_size))
            self.control_tx = await d.setup_queue(3, self.queue_size)
            for pid in range(1, self.max_ports):
                rxq = await d.setup_queue(2 * pid + 2, self.queue_size)
                txq = await d.setup_queue(2 * pid + 3, self.queue_size)
                self._vqs[pid] = (rxq, txq)
        self.ports: dict[int, GuestPort] = {}
        self.opened = False

    def _order(self) -> layouts.ByteOrder:
        return self.dev.transport.guest_order if self.dev.legacy else "little"

    @property
    def console_port(self) -> GuestPort | None:
        return next((p for p in self.ports.values() if p.is_console), None)

    # -- bring-up ---------------------------------------------------------------

    async def open(self, rx_buffer_size: int = 64) -> None:
        if self.opened:
            raise RuntimeError("console is already open")
        self.rx_buffer_size = rx_buffer_size
        self.opened = True
        if not self.multiport:
            port = await self._add_port(0)
            port.is_console = port.host_open = port.guest_open = True
            return
        assert self.control_rx is not None
        self.control_rx.alloc(self.dev.dma, [CONTROL_BUFFER_SIZE], CONTROL_BUFFERS)
        await self.control_rx.refill()
        await self.send_control(CONSOLE.bad_id, CONSOLE_E.DEVICE_READY, 1)
        await self.process_control()

    async def _add_port(self, pid: int) -> GuestPort:
        rxq, txq = self._vqs[pid]
        port = GuestPort(pid, RxPool(rxq), txq)
        port.rx.alloc(self.dev.dma, [self.rx_buffer_size], self.rx_buffers_per_port)
        await port.rx.refill()
        self.ports[pid] = port
        return port

    async def send_control(self, port_id: int, event: int, value: int) -> None:
        if self.control_tx is None:
            raise ConsoleProtocolError("no control queue (MULTIPORT not negotiated)")
        dma = self.dev.dma
        buf = dma.alloc(CONSOLE_CONTROL_SIZE)
        try:
            dma.write(buf, console_control_codec(self._order()).pack(port_id, event, value))
            await self.control_tx.submit([(buf.dev_addr, CONSOLE_CONTROL_SIZE)], [])
            self.stats.control_out += 1
        finally:
            dma.free(buf)

    async def process_control(self) -> int:
        """Handle every control message the device sent, and what our answers bring."""
        pool = self.control_rx
        if pool is None:
            return 0
        codec = console_control_codec(self._order())
        handled = 0
        for _ in range(MAX_CONTROL_ROUNDS):
            if not pool.done and pool.vq.reap():
                # Linux 6.1's control_work_handler() reads the used ring itself
                # (virtqueue_get_buf() until it is empty), not only what an interrupt
                # reaped: a message used before the interrupt was handled is read now.
                self.dev.mark_progress()
                continue
            if not pool.done:
                await pool.refill()
                if not pool.done:
                    return handled
                continue
            buf, length = pool.done.popleft()
            raw = self.dev.dma.read(buf.mem, min(length, buf.size))
            pool.give_back(buf)
            self.stats.control_in += 1
            handled += 1
            if len(raw) < CONSOLE_CONTROL_SIZE:
                self.stats.control_errors += 1
                continue
            pid, event, value = codec.unpack(raw[:CONSOLE_CONTROL_SIZE])
            await self._handle_control(pid, event, value, raw[CONSOLE_CONTROL_SIZE:])
        raise ConsoleProtocolError(f"device sent more than {MAX_CONTROL_ROUNDS} control messages")

    async def _handle_control(self, pid: int, event: int, value: int, extra: bytes) -> None:
        if event == CONSOLE_E.PORT_ADD:
            if pid >= self.max_ports or pid in self.ports:
                self.stats.control_errors += 1  # console.dev.port-add-valid broken
                return
            await self._add_port(pid)
            await self.send_control(pid, CONSOLE_E.PORT_READY, 1)
            return
        port = self.ports.get(pid)
        if port is None:
            self.stats.control_errors += 1
            return
        if event == CONSOLE_E.CONSOLE_PORT:
            port.is_console = True
            await self.open_port(pid)  # console.drv.console-port-open
        elif event == CONSOLE_E.RESIZE:
            resize = console_resize_codec(self._order())
            if len(extra) >= resize.size:
                self.size = resize.unpack(extra[: resize.size])
            else:
                self.stats.control_errors += 1
        elif event == CONSOLE_E.PORT_OPEN:
            port.host_open = bool(value)
        elif event == CONSOLE_E.PORT_NAME:
            port.name = extra.decode(errors="replace")
        elif event == CONSOLE_E.PORT_REMOVE:
            del self.ports[pid]
        else:
            self.stats.control_errors += 1

    async def open_port(self, pid: int) -> None:
        """A guest program opened the port: tell the device (PORT_OPEN 1)."""
        port = self.ports[pid]
        if self.multiport:
            await self.send_control(pid, CONSOLE_E.PORT_OPEN, 1)
        port.guest_open = True

    # -- data --------------------------------------------------------------------

    async def write(self, pid: int, data: bytes) -> None:
        port = self.ports[pid]
        if not port.guest_open:
            raise ConsoleProtocolError(f"port {pid} is not open")
        dma = self.dev.dma
        buf = dma.alloc(max(len(data), 1))
        try:
            dma.write(buf, data)
            await port.tx.submit([(buf.dev_addr, len(data))], [])
            self.stats.bytes_written += len(data)
        finally:
            dma.free(buf)

    def _drain(self, port: GuestPort) -> None:
        pool = port.rx
        while pool.done:
            buf, length = pool.done.popleft()
            port.received += self.dev.dma.read(buf.mem, length)
            self.stats.bytes_read += length
            pool.give_back(buf)

    async def read(self, pid: int, n: int) -> bytes:
        """Wait for ``n`` bytes on port ``pid`` and return them."""
        while True:
            port = self.ports.get(pid)
            if port is None:
                raise ConsoleProtocolError(f"port {pid} was removed")
            self._drain(port)
            if await port.rx.refill():
                continue
            if self.control_rx is not None and self.control_rx.done:
                await self.process_control()
                continue
            if len(port.received) >= n:
                out = bytes(port.received[:n])
                del port.received[:n]
                return out
            self.dev.raise_if_broken()
            await self.dev.wait_progress()

    async def emergency_write(self, char: int) -> None:
        """One byte through emerg_wr (EMERG_WRITE), usable before the ports are set up."""
        if not self.dev.has(CONSOLE_F.EMERG_WRITE):
            raise ConsoleProtocolError("VIRTIO_CONSOLE_F_EMERG_WRITE not negotiated")
        await self.dev.transport.write_config(_CFG["emerg_wr"], 4, char & 0xFF)
