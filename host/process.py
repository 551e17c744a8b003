"""The host process: ``virtio-sim host --listen ADDR -M microvm -device ... [-global ...]``.

It listens on a Unix socket (guest RAM shared as a memfd passed at the handshake) or on
TCP (guest RAM reached with DMA messages, guests authenticated by a shared secret), and
serves several guests at once: each connection gets its own machine, built by
:func:`host.build.build_host` from the same options, with its own guest RAM and its own
scratch disks, and is served by :func:`host.server.serve`, exactly as in the embedded
mode. One guest's garbage, death or refusal ends only its own connection.

Output: human-readable log lines on stderr; one JSON object per line on stdout for
programs (``listening`` with the real address, ``guest-ended`` with the host's evidence
for that guest, ``refused`` when the options cannot work). ``--once`` serves exactly one
guest and exits with its fate (0 BYE, 3 vanished, 1 refused or protocol error), which is
what ``virtio-sim run --processes`` uses. SIGINT/SIGTERM send BYE to every guest, remove
the socket and exit 130.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import outcome
import trio

from virtio_sim import wire
from virtio_sim.dma import AddressSpace, IdentityAddressSpace
from virtio_sim.exit_codes import (
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PEER_LOST,
    EXIT_USAGE,
)
from virtio_sim.handshake import (
    HANDSHAKE_TIMEOUT,
    HandshakeError,
    HostHello,
    MemoryMode,
    host_authenticate,
    host_send_regions,
    pick_mode,
)
from virtio_sim.host.build import HOST_TRANSPORTS, HostConfig, HostSetup, build_host
from virtio_sim.host.devices.base import PropertyError, parse_bool
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.machine_types import MACHINE_DESCRIPTIONS
from virtio_sim.host.qdev import COMMON_PROPS, DEVICE_TYPES, format_device_option, parse_device_option
from virtio_sim.host.remote_dma import DmaPort, WireAddressSpace
from virtio_sim.host.server import BYE_REASON, CLOSED_REASON, serve
from virtio_sim.layouts import ByteOrder
from virtio_sim.lifeline import wait_for_stdin_eof
from virtio_sim.memory import GuestMemory, MemoryRegion
from virtio_sim.peertext import peer_text
from virtio_sim.sockets import (
    FRAME_TIMEOUT,
    Address,
    Listener,
    ListenError,
    SocketFrameChannel,
    TcpAddress,
    open_listener,
    peer_credentials,
)
from virtio_sim.spec import LIMITS
from virtio_sim.wire import Capability, ErrorCode, Hello, WireError

# Machines this host can build (QEMU's -M names; -M help prints them, host/qdev_help.py).
MACHINES: dict[str, str] = MACHINE_DESCRIPTIONS
# Machine properties (-M NAME,PROP=VALUE) each machine takes, as QEMU's -M does.
MACHINE_PROPS: dict[str, tuple[str, ...]] = {
    "microvm": ("iommu", "acpi", "x-mmio-hid"),
    "q35": ("iommu", "acpi", "x-mmio-hid"),
    "virt": ("iommu", "acpi", "x-mmio-hid"),
}
# Properties that put the guest's discovery on firmware tables (host/firmware.py); virt
# always has them. Plain microvm / q35 keep announcing devices on the command line.
FIRMWARE_PROPS = ("acpi", "x-mmio-hid")
MMIO_GLOBAL_DRIVER = "virtio-mmio"
NET_BACKEND_PROP = "x-backend"
SWITCH_PREFIX = "switch:"
MMIO_GLOBAL_PROPS = ("force-legacy",)
DEFAULT_MAX_GUESTS = LIMITS.host.max_guests
DEFAULT_MAX_UNAUTHENTICATED = LIMITS.host.max_unauthenticated
IDLE_TIMEOUT = LIMITS.host.idle_timeout_ms / 1000
MIN_RAM = 2 << 20
SHUTDOWN_GRACE = 1.0  # seconds to say BYE to every guest on Ctrl-C
SWITCH_INTERVAL = 0.0005  # seconds; see HostServer.run


class HostUsageError(ValueError):
    """Options that cannot work; reported before listening (exit status 2)."""


@dataclass
class HostOptions:
    listen: Address
    devices: list[str]
    machine: str = "microvm"
    globals_: list[str] = field(default_factory=list)
    ram_size: int = 64 << 20
    seed: int | None = None
    secret: bytes | None = None
    max_guests: int = DEFAULT_MAX_GUESTS
    once: bool = False
    memory: str = "auto"  # auto | shared | dma
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # accept -> authenticated
    frame_timeout: float = FRAME_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT  # an authenticated guest that sends nothing this long
    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED
    lifeline: bool = False  # shut down when stdin closes (the parent died)


@dataclass
class HostPlan:
    """Checked options: what every connection builds."""

    opts: HostOptions
    devices: list[str]
    transport: str
    machine: str = "microvm"
    iommu: str = "none"
    #: the -M value for host/machine_types.py when the machine has firmware tables
    firmware_machine: str | None = None
    #: what the trial build showed, announced to guests before anything is built for them
    cmdline: str = ""
    regions: list[MemoryRegion] = field(default_factory=list)


def apply_globals(devices: list[str], globals_: list[str]) -> tuple[list[str], str]:
    """QEMU's ``-global driver.prop=value``: a default for every device of that driver.

    ``virtio-mmio.force-legacy=on`` selects the legacy (version 1) mmio interface, as in
    QEMU. Returns the device options with the defaults filled in, and the transport.
    """
    specs = [parse_device_option(d) for d in devices]
    transport = "mmio-v2"
    for g in globals_:
        target, eq, value = g.partition("=")
        driver, dot, prop = target.rpartition(".")
        if not eq or not dot or not driver or not prop:
            raise PropertyError(f"Invalid -global '{g}': expected driver.property=value")
        if driver == MMIO_GLOBAL_DRIVER:
            if prop not in MMIO_GLOBAL_PROPS:
                raise PropertyError(f"Property '{driver}.{prop}' not found")
            transport = "mmio-v1" if parse_bool(prop, value) else "mmio-v2"
            continue
        entry = DEVICE_TYPES.get(driver)
        if entry is None:
            raise PropertyError(f"-global: '{driver}' is not a valid device model name")
        if prop not in entry[1] and prop not in COMMON_PROPS:
            raise PropertyError(f"Property '{driver}.{prop}' not found")
        for spec in specs:
            if spec.driver == driver:
                spec.props.setdefault(prop, value)
    return [format_device_option(s) for s in specs], transport


def plan_host(opts: HostOptions) -> HostPlan:
    """Check everything that can be checked before listening; HostUsageError otherwise."""
    machine, props = parse_machine_option(opts.machine)
    if not opts.devices:
        raise HostUsageError("no -device given: a host without devices has nothing to serve")
    if opts.ram_size < MIN_RAM:
        raise HostUsageError("guest RAM (-m) must be at least 2M")
    if opts.max_guests < 1:
        raise HostUsageError("--max-guests must be at least 1")
    if opts.max_unauthenticated < 1:
        raise HostUsageError("the limit of unauthenticated connections must be at least 1")
    if opts.memory not in ("auto", "shared", "dma"):
        raise HostUsageError(f"--memory must be auto, shared or dma, not {opts.memory!r}")
    if isinstance(opts.listen, TcpAddress):
        if opts.memory == "shared":
            raise HostUsageError("guest RAM cannot be shared over TCP (--memory shared)")
        if opts.secret is None:
            raise HostUsageError("a TCP host needs a shared secret (--secret-file FILE or VIRTIO_SIM_SECRET)")
    try:
        devices, transport = apply_globals(opts.devices, opts.globals_)
        if machine == "q35":
            # Devices land on the PCI bus; each device's disable-legacy/disable-modern
            # decide its interfaces (transitional by default, as on QEMU's root bus).
            transport = "pci-transitional"
        iommu = props.get("iommu", "none")
        firmware = opts.machine if machine == "virt" or set(props) & set(FIRMWARE_PROPS) else None
        if firmware is not None:
            iommu = "none"  # the machine spec carries it (iommu=virtio)
            if isinstance(opts.listen, TcpAddress) or opts.memory == "dma":
                raise PropertyError(
                    f"-M {opts.machine}: firmware tables live in guest RAM, which this host "
                    "must share with the guest (a unix: listener without --memory dma)"
                )
        if transport not in HOST_TRANSPORTS:
            raise PropertyError(f"unknown transport {transport!r}")
        # A trial build catches bad properties and unreadable drives before any guest
        # connects, with the same messages the embedded mode gives.
        with tempfile.TemporaryDirectory(prefix="virtio-sim-check-") as scratch:
            cfg = HostConfig(devices, transport, opts.ram_size, opts.seed, scratch_dir=scratch)
            cfg.iommu = iommu
            cfg.machine = firmware
            trial = build_host(cfg)
            try:
                cmdline, regions = trial.machine.kernel_cmdline(), list(trial.memory.regions)
            finally:
                trial.close()
    except PropertyError as e:
        raise HostUsageError(str(e)) from None
    return HostPlan(opts, devices, transport, machine, iommu, firmware, cmdline, regions)


def parse_machine_option(text: str) -> tuple[str, dict[str, str]]:
    """``microvm,iommu=virtio-iommu`` -> ("microvm", {"iommu": "virtio-iommu"})."""
    name, *rest = text.split(",")
    if name not in MACHINES:
        raise HostUsageError(
            f"unsupported machine type '{name}' (this host builds: {', '.join(MACHINES)}; see -M help)"
        )
    props: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key not in MACHINE_PROPS.get(name, ()):
            raise HostUsageError(f"Property '{name}-machine.{key}' not found")
        props[key] = value
    return name, props


def private_switches(devices: list[str], ident: int) -> list[str]:
    """Each guest gets its own machine, network switches included: ``switch:lan`` of guest
    3 is ``switch:guest3.lan``, so NICs of one machine meet and two guests never do."""
    out = []
    for text in devices:
        spec = parse_device_option(text)
        backend = spec.props.get(NET_BACKEND_PROP, "")
        if backend.startswith(SWITCH_PREFIX):
            spec.props[NET_BACKEND_PROP] = f"{SWITCH_PREFIX}guest{ident}.{backend[len(SWITCH_PREFIX) :]}"
        out.append(format_device_option(spec))
    return out


def lock_drives(setup: HostSetup) -> None:
    """Take QEMU-style image locks: two guests never write one disk image at once."""
    for b in setup.built:
        model = b.model
        if isinstance(model, BlkDevice):
            mode = fcntl.LOCK_SH if model.read_only else fcntl.LOCK_EX
            try:
                fcntl.flock(model.fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PropertyError(
                    f'Failed to get "write" lock on {model.path}: the image is in use by another guest'
                ) from None


class _Connection:
    """One guest connection's state, reachable from the signal handler."""

    def __init__(self, ident: int, channel: SocketFrameChannel) -> None:
        self.ident = ident
        self.channel = channel
        self.port: DmaPort | None = None
        self.authenticated = False
        # Once authenticated, the guest is served on an event loop in a thread of its own
        # (HostServer._guest_thread); the main loop reaches it through these.
        self.token: trio.lowlevel.TrioToken | None = None
        self.stop: trio.Event | None = None  # set on the guest's loop: say BYE and stop
        self.stop_requested = False

    def address_space(self, memory: GuestMemory) -> AddressSpace:
        if self.port is not None:
            return WireAddressSpace(self.port, memory)
        return IdentityAddressSpace(memory)


@dataclass
class _Authenticated:
    """What a guest's own thread takes over from the main loop."""

    conn: _Connection
    fd: int  # the connection's socket (a duplicate: the main loop closed its own)
    buffered: bytes  # received after the guest's HELLO, not yet framed
    hello: Hello
    mode: MemoryMode
    record: dict[str, Any]


class HostServer:
    def __init__(self, plan: HostPlan, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.plan = plan
        self.opts = plan.opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live: dict[int, _Connection] = {}  # every open connection (BYE on shutdown)
        self.next_id = 0
        self.interrupted: int | None = None
        self.last_end: str | None = None
        self._output = threading.Lock()  # guest threads log too: whole lines only
        self._ended = trio.Event()  # set (and replaced) each time a connection is over
        self._refusing = 0  # connections being told BUSY (never in ``live``)

    # -- output -----------------------------------------------------------------

    def log(self, message: str) -> None:
        with self._output:  # guests' words are data
            self.err.write(f"virtio-sim host: {peer_text(message)}\n")
            self.err.flush()

    def emit(self, event: dict[str, Any]) -> None:
        with self._output:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()

    # -- main -------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> int:
        """Serve until done; returns the exit status. Under ``nursery.start`` it reports
        the listening address once ``listen()`` has returned, so a connect cannot be
        refused (the socket file exists from ``bind()`` on, which is too early)."""
        # Each authenticated guest runs on a thread of its own; the main loop (accept,
        # handshakes) must get the GIL back quickly while a guest's device works. With
        # CPython's default 5 ms switch interval every wake-up of the loop can wait 5 ms.
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(old_interval, SWITCH_INTERVAL))
        try:
            return await self._run(task_status)
        finally:
            sys.setswitchinterval(old_interval)

    async def _run(self, task_status: trio.TaskStatus[Address]) -> int:
        try:
            listener = await open_listener(self.opts.listen)
        except ListenError as e:
            self.log(f"error: {e}")
            self.emit({"event": "refused", "detail": str(e)})
            task_status.started(self.opts.listen)
            return EXIT_USAGE
        try:
            self.log(
                f"listening on {listener.address} (machine {self.opts.machine}, "
                f"{len(self.plan.devices)} device(s), up to {self.opts.max_guests} guests)"
            )
            self.emit({"event": "listening", "address": str(listener.address)})
            task_status.started(listener.address)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_signals, signals, nursery.cancel_scope)
                    if self.opts.lifeline:
                        nursery.start_soon(self._watch_lifeline, nursery.cancel_scope)
                    if self.opts.once:
                        stream = await listener.accept()
                        await listener.aclose()  # nobody else may connect
                        await self._connection(self._register(stream))
                    else:
                        await self._accept_loop(listener, nursery)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        if self.interrupted is not None:
            self.log(f"shut down on {signal.Signals(self.interrupted).name}")
            return EXIT_INTERRUPTED
        if self.opts.once:
            return self._exit_for(self.last_end)
        return EXIT_OK

    @staticmethod
    def _exit_for(end: str | None) -> int:
        if end == "clean":
            return EXIT_OK
        if end == "lost":
            return EXIT_PEER_LOST
        return EXIT_FAIL

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _register(self, stream: trio.SocketStream) -> _Connection:
        """A connection costs a socket and a task until its peer authenticates."""
        channel = SocketFrameChannel(stream, frame_timeout=self.opts.frame_timeout)
        conn = _Connection(self._new_id(), channel)
        self.live[conn.ident] = conn
        return conn

    async def wait_idle(self) -> None:
        """Return once no connection is open: every handshake and every guest over, its
        socket closed and its thread done. A caller that must see how the host treats one
        guest on its own (the wire corpus's next guest after an attack) waits for this,
        not for a time: under load the host finishes when it finishes."""
        while self.live or self._refusing:
            await self._ended.wait()

    def _note_ended(self) -> None:
        self._ended.set()
        self._ended = trio.Event()

    @property
    def guests(self) -> int:
        """Authenticated connections: what --max-guests counts."""
        return sum(1 for c in self.live.values() if c.authenticated)

    @property
    def unauthenticated(self) -> int:
        return sum(1 for c in self.live.values() if not c.authenticated)

    def _busy(self) -> str | None:
        """Why a new connection must be turned away now, or None."""
        if self.guests >= self.opts.max_guests:
            return f"the host already serves {self.opts.max_guests} guests"
        if self.unauthenticated >= self.opts.max_unauthenticated:
            return (
                f"{self.opts.max_unauthenticated} connections are already waiting to authenticate; "
                "try again later"
            )
        return None

    async def _accept_loop(self, listener: Listener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # e.g. out of file descriptors: keep serving the others
                self.log(f"accept failed: {e}")
                await trio.sleep(0.1)
                continue
            busy = self._busy()
            if busy is not None:
                self._refusing += 1
                nursery.start_soon(self._refuse_busy, stream, self._new_id(), busy)
            else:
                nursery.start_soon(self._connection, self._register(stream))

    async def _watch_signals(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for signum in signals:
            await self._shut_down(signum, signal.Signals(signum).name, scope)
            return

    async def _watch_lifeline(self, scope: trio.CancelScope) -> None:
        await wait_for_stdin_eof()
        # The parent is gone (its end of our stdin closed): as good as a hangup.
        await self._shut_down(signal.SIGHUP, "parent went away (stdin closed)", scope)

    async def _shut_down(self, signum: int, why: str, scope: trio.CancelScope) -> None:
        self.interrupted = signum
        self.log(f"{why}: saying BYE to {len(self.live)} guest(s)")
        with trio.move_on_after(SHUTDOWN_GRACE):
            for conn in list(self.live.values()):
                if conn.authenticated:  # served on its own loop
                    self._stop_guest(conn)
                    continue
                with contextlib.suppress(Exception):
                    await conn.channel.send(wire.bye())
        scope.cancel()

    async def _refuse_busy(self, stream: trio.SocketStream, ident: int, msg: str) -> None:
        channel = SocketFrameChannel(stream)
        self.log(f"guest {ident}: refused: {msg}")
        try:
            with trio.move_on_after(SHUTDOWN_GRACE):
                await _send_quietly(channel, wire.error(ErrorCode.BUSY, msg))
            await channel.aclose()
        finally:
            self._refusing -= 1
            self._note_ended()
        self.emit({"event": "guest-ended", "guest": ident, "end": "refused", "reason": msg})

    # -- one guest --------------------------------------------------------------

    async def _connection(self, conn: _Connection) -> None:
        channel, ident = conn.channel, conn.ident  # the main loop's channel, until handed off
        peer = channel.peer()
        record: dict[str, Any] = {"event": "guest-ended", "guest": ident, "peer": peer}
        self.log(f"guest {ident}: connected ({peer})")
        try:
            end, reason = await self._session(conn, record)
        except Exception as e:  # a bug here must not take the other guests down
            end, reason = "error", f"internal error: {e!r}"
            await _send_quietly(channel, wire.error(ErrorCode.INTERNAL, reason))
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()
            del self.live[ident]
            self._note_ended()
        record.update(end=end, reason=reason)
        self.last_end = end
        what = {"clean": "ended", "lost": "LOST", "refused": "refused"}.get(end, "dropped")
        self.log(f"guest {ident}: {what}: {reason}")
        self.emit(record)

    async def _session(self, conn: _Connection, record: dict[str, Any]) -> tuple[str, str]:
        """Authenticate, then build, lock, finish the handshake and serve.

        Until the peer has answered the challenge nothing is built, allocated or locked
        for it, and the whole handshake has one deadline from accept: a silent or slow
        peer costs a socket and a task for at most that long, and never holds a drive.
        """
        channel = conn.channel
        if channel.is_unix:
            creds = peer_credentials(channel.socket)
            if creds is not None and creds[1] != os.getuid():
                return await _refuse(channel, ErrorCode.AUTH, f"peer uid {creds[1]} is not ours")
        share = channel.is_unix and self.opts.memory != "dma"
        offer = HostHello(
            ram_size=self.opts.ram_size,
            cmdline=self.plan.cmdline,
            can_share=share,
            secret=self.opts.secret,
            name=f"virtio-sim host ({self.plan.machine})",
            force_mode=MemoryMode.DMA if self.opts.memory == "dma" else None,
        )
        try:
            with trio.fail_after(self.opts.handshake_timeout):
                hello = await host_authenticate(channel, offer)
            mode = pick_mode(offer, hello.capabilities)
        except trio.TooSlowError:
            msg = f"no handshake within {self.opts.handshake_timeout:g}s"
            return await _refuse(channel, ErrorCode.TIMEOUT, msg)
        except HandshakeError as e:
            return await _refuse(channel, e.code, str(e))
        except WireError as e:
            return await _refuse(channel, e.code, str(e))
        except trio.EndOfChannel as e:
            return "lost", f"{CLOSED_REASON} during the handshake ({e})"
        if self.guests >= self.opts.max_guests:
            busy = f"the host already serves {self.opts.max_guests} guests"
            return await _refuse(channel, ErrorCode.BUSY, busy)
        conn.authenticated = True
        return await self._hand_off(conn, hello, mode, record)

    async def _hand_off(
        self, conn: _Connection, hello: Hello, mode: MemoryMode, record: dict[str, Any]
    ) -> tuple[str, str]:
        """Serve the authenticated guest on an event loop and a thread of its own.

        Device work is synchronous (a 1000 MiB blk request copies for seconds); on its
        own thread it cannot delay another guest's frames or a new connection's
        handshake, and nothing of one guest's work passes through another's loop.
        """
        old = conn.channel
        fd = os.dup(old.socket.fileno())
        buffered = old.take_buffered()
        with trio.CancelScope(shield=True):
            await old.aclose()  # closes our descriptor only: the connection lives on in fd
        guest = _Authenticated(conn, fd, buffered, hello, mode, record)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        ended: list[outcome.Outcome[tuple[str, str]]] = []

        def deliver(result: outcome.Outcome[tuple[str, str]]) -> None:  # in the guest thread
            ended.append(result)
            token.run_sync_soon(done.set)

        trio.lowlevel.start_thread_soon(functools.partial(self._guest_thread, guest), deliver)
        try:
            await done.wait()
        except trio.Cancelled:  # the host stops (or its caller cancelled it): so does the guest
            self._stop_guest(conn)
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return ended[0].unwrap()

    @staticmethod
    def _stop_guest(conn: _Connection) -> None:
        """Tell a guest's own loop to say BYE and stop (from the main loop)."""
        conn.stop_requested = True
        if conn.token is not None and conn.stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                conn.token.run_sync_soon(conn.stop.set)

    def _guest_thread(self, guest: _Authenticated) -> tuple[str, str]:
        return trio.run(self._guest_loop, guest)

    async def _guest_loop(self, guest: _Authenticated) -> tuple[str, str]:
        conn, hello, mode, record = guest.conn, guest.hello, guest.mode, guest.record
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=guest.fd))
        channel = SocketFrameChannel(trio.SocketStream(sock), frame_timeout=self.opts.frame_timeout)
        channel.preload(guest.buffered)
        conn.channel = channel
        stop = trio.Event()
        conn.stop = stop
        conn.token = trio.lowlevel.current_trio_token()
        result: list[tuple[str, str]] = []

        async def watch_stop(scope: trio.CancelScope) -> None:
            await stop.wait()
            with trio.move_on_after(SHUTDOWN_GRACE):
                await _send_quietly(channel, wire.bye())
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_stop, nursery.cancel_scope)
                if conn.stop_requested:  # the host began to shut down before we listened
                    stop.set()
                try:
                    result.append(await self._build_and_serve(conn, hello, mode, record))
                except Exception as e:  # a bug here must not take the other guests down
                    reason = f"internal error: {e!r}"
                    await _send_quietly(channel, wire.error(ErrorCode.INTERNAL, reason))
                    result.append(("error", reason))
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()
        return result[0] if result else ("error", "the host shut down")

    async def _build_and_serve(
        self, conn: _Connection, hello: Hello, mode: MemoryMode, record: dict[str, Any]
    ) -> tuple[str, str]:
        channel = conn.channel
        with tempfile.TemporaryDirectory(prefix="virtio-sim-guest-") as scratch:
            cfg = HostConfig(
                private_switches(self.plan.devices, conn.ident),
                self.plan.transport,
                self.opts.ram_size,
                self.opts.seed,
                scratch_dir=scratch,
                iommu=self.plan.iommu,
                address_space=conn.address_space,
                machine=self.plan.firmware_machine,
            )
            try:
                setup = build_host(cfg)
            except PropertyError as e:
                return await _refuse(channel, ErrorCode.CONFIG, str(e))
            try:
                return await self._serve_setup(conn, setup, hello, mode, record)
            finally:
                setup.close()

    async def _serve_setup(
        self, conn: _Connection, setup: HostSetup, hello: Hello, mode: MemoryMode, record: dict[str, Any]
    ) -> tuple[str, str]:
        channel = conn.channel
        try:
            lock_drives(setup)
        except PropertyError as e:
            return await _refuse(channel, ErrorCode.CONFIG, str(e))
        if setup.machine.kernel_cmdline() != self.plan.cmdline or setup.memory.regions != self.plan.regions:
            # What the guest was told at HELLO must be the machine it gets.
            msg = "this guest's machine differs from the one announced at HELLO"
            return await _refuse(channel, ErrorCode.INTERNAL, msg)
        if mode is MemoryMode.DMA:  # ready before the guest can send its first access
            conn.port = DmaPort(channel, reply_timeout=self.opts.frame_timeout)
        try:
            with trio.fail_after(self.opts.handshake_timeout):
                await host_send_regions(
                    channel,
                    setup.memory.regions,
                    mode,
                    setup.memory.backing.fd if mode is MemoryMode.SHARED else None,
                )
        except trio.TooSlowError:
            return await _refuse(channel, ErrorCode.TIMEOUT, "the guest did not take its memory regions")
        except HandshakeError as e:
            return await _refuse(channel, e.code, str(e))
        except trio.EndOfChannel as e:
            return "lost", f"{CLOSED_REASON} during the handshake ({e})"
        # The guest's CPU byte order is a machine property QEMU knows from the target;
        # here the guest states it, and the legacy interface of every device follows it.
        order: ByteOrder = "big" if hello.capabilities & Capability.BIG_ENDIAN else "little"
        for vdev in [*setup.devices, *([setup.iommu_device] if setup.iommu_device else [])]:
            vdev.guest_order = order
        record["memory"] = str(mode)
        self.log(f"guest {conn.ident}: handshake done ({hello.name!r}, guest RAM {mode})")
        reason = await serve(channel, setup.machine, dma=conn.port, idle_timeout=self.opts.idle_timeout)
        record["evidence"] = setup.evidence()
        if conn.port is not None:
            p = conn.port
            record["dma"] = {
                "reads": p.reads,
                "writes": p.writes,
                "bytes_read": p.bytes_read,
                "bytes_written": p.bytes_written,
                "peak_unsent_frames": p.peak_unsent_frames,
                "peak_unsent_bytes": p.peak_unsent_bytes,
            }
        if reason == BYE_REASON:
            return "clean", reason
        if reason.startswith(CLOSED_REASON):
            return "lost", f"{reason} before BYE: the guest died or dropped the link"
        return "error", reason


async def _refuse(channel: SocketFrameChannel, code: ErrorCode, message: str) -> tuple[str, str]:
    with trio.move_on_after(SHUTDOWN_GRACE):
        await _send_quietly(channel, wire.error(code, message))
    return "refused", f"{code.name}: {message}"


async def _send_quietly(channel: SocketFrameChannel, frame: wire.Frame) -> None:
    with contextlib.suppress(trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(frame)


def host_main(opts: HostOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Plan, then serve until done; returns the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        plan = plan_host(opts)
    except HostUsageError as e:
        print(json.dumps({"event": "refused", "detail": str(e)}), file=out, flush=True)
        print(f"virtio-sim host: error: {e}", file=err, flush=True)
        return EXIT_USAGE
    return trio.run(HostServer(plan, out, err).run)
