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
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TextIO

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
    HostOffer,
    MemoryMode,
    host_handshake,
)
from virtio_sim.host.build import HOST_TRANSPORTS, HostConfig, HostSetup, build_host
from virtio_sim.host.devices.base import PropertyError, parse_bool
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.qdev import COMMON_PROPS, DEVICE_TYPES, format_device_option, parse_device_option
from virtio_sim.host.remote_dma import DmaPort, WireAddressSpace
from virtio_sim.host.server import BYE_REASON, CLOSED_REASON, serve
from virtio_sim.layouts import ByteOrder
from virtio_sim.lifeline import wait_for_stdin_eof
from virtio_sim.memory import GuestMemory
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
from virtio_sim.wire import Capability, ErrorCode, WireError

# Machines this host can build; QEMU's -M names. Firmware-described machines (q35, virt)
# arrive with the machines issue and register here.
MACHINES: dict[str, str] = {
    "microvm": "QEMU microvm layout: virtio-mmio slots at 0xfeb00000, IRQ 5 + slot, "
    "transports announced on the kernel command line (acpi=on: in an ACPI DSDT, GSI 16 + slot)",
    "q35": "QEMU q35 PCI: host bridge with ECAM at 0xb0000000 and 0xCF8/0xCFC, "
    "virtio-*-pci devices (transitional unless disable-legacy=on); acpi=on: ACPI tables",
    "virt": "QEMU arm virt layout: 32 virtio-mmio slots at 0x0a000000, GSIV 48 + slot, RAM at "
    "1 GiB; transports in an ACPI DSDT (acpi=off: a device tree)",
}
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
MIN_RAM = 2 << 20
SHUTDOWN_GRACE = 1.0  # seconds to say BYE to every guest on Ctrl-C


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
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    frame_timeout: float = FRAME_TIMEOUT
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
            build_host(cfg).close()
    except PropertyError as e:
        raise HostUsageError(str(e)) from None
    return HostPlan(opts, devices, transport, machine, iommu, firmware)


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

    def address_space(self, memory: GuestMemory) -> AddressSpace:
        if self.port is not None:
            return WireAddressSpace(self.port, memory)
        return IdentityAddressSpace(memory)


class HostServer:
    def __init__(self, plan: HostPlan, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.plan = plan
        self.opts = plan.opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live: dict[int, _Connection] = {}
        self.next_id = 0
        self.interrupted: int | None = None
        self.last_end: str | None = None

    # -- output -----------------------------------------------------------------

    def log(self, message: str) -> None:
        print(f"virtio-sim host: {peer_text(message)}", file=self.err, flush=True)  # guests' words are data

    def emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), file=self.out, flush=True)

    # -- main -------------------------------------------------------------------

    async def run(self) -> int:
        try:
            listener = await open_listener(self.opts.listen)
        except ListenError as e:
            self.log(f"error: {e}")
            self.emit({"event": "refused", "detail": str(e)})
            return EXIT_USAGE
        try:
            self.log(
                f"listening on {listener.address} (machine {self.opts.machine}, "
                f"{len(self.plan.devices)} device(s), up to {self.opts.max_guests} guests)"
            )
            self.emit({"event": "listening", "address": str(listener.address)})
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
        """A live connection counts against --max-guests from the moment it is accepted."""
        channel = SocketFrameChannel(stream, frame_timeout=self.opts.frame_timeout)
        conn = _Connection(self._new_id(), channel)
        self.live[conn.ident] = conn
        return conn

    async def _accept_loop(self, listener: Listener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # e.g. out of file descriptors: keep serving the others
                self.log(f"accept failed: {e}")
                await trio.sleep(0.1)
                continue
            if len(self.live) >= self.opts.max_guests:
                nursery.start_soon(self._refuse_busy, stream, self._new_id())
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
                with contextlib.suppress(Exception):
                    await conn.channel.send(wire.bye())
        scope.cancel()

    async def _refuse_busy(self, stream: trio.SocketStream, ident: int) -> None:
        channel = SocketFrameChannel(stream)
        msg = f"the host already serves {self.opts.max_guests} guests"
        self.log(f"guest {ident}: refused: {msg}")
        with trio.move_on_after(SHUTDOWN_GRACE):
            await _send_quietly(channel, wire.error(ErrorCode.BUSY, msg))
        await channel.aclose()
        self.emit({"event": "guest-ended", "guest": ident, "end": "refused", "reason": msg})

    # -- one guest --------------------------------------------------------------

    async def _connection(self, conn: _Connection) -> None:
        channel, ident = conn.channel, conn.ident
        peer = channel.peer()
        record: dict[str, Any] = {"event": "guest-ended", "guest": ident, "peer": peer}
        self.log(f"guest {ident}: connected ({peer})")
        try:
            end, reason = await self._session(conn, record)
        except Exception as e:  # a bug here must not take the other guests down
            end, reason = "error", f"internal error: {e!r}"
            await _send_quietly(channel, wire.error(ErrorCode.INTERNAL, reason))
        finally:
            del self.live[ident]
            with trio.CancelScope(shield=True):
                await channel.aclose()
        record.update(end=end, reason=reason)
        self.last_end = end
        what = {"clean": "ended", "lost": "LOST", "refused": "refused"}.get(end, "dropped")
        self.log(f"guest {ident}: {what}: {reason}")
        self.emit(record)

    async def _session(self, conn: _Connection, record: dict[str, Any]) -> tuple[str, str]:
        """Build, handshake, serve; returns (end kind, reason)."""
        channel = conn.channel
        if channel.is_unix:
            creds = peer_credentials(channel.socket)
            if creds is not None and creds[1] != os.getuid():
                return await _refuse(channel, ErrorCode.AUTH, f"peer uid {creds[1]} is not ours")
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
                return await self._serve_setup(conn, setup, record)
            finally:
                setup.close()

    async def _serve_setup(
        self, conn: _Connection, setup: HostSetup, record: dict[str, Any]
    ) -> tuple[str, str]:
        channel = conn.channel
        try:
            lock_drives(setup)
        except PropertyError as e:
            return await _refuse(channel, ErrorCode.CONFIG, str(e))
        share = channel.is_unix and self.opts.memory != "dma"
        offer = HostOffer(
            ram_size=self.opts.ram_size,
            cmdline=setup.machine.kernel_cmdline(),
            regions=setup.memory.regions,
            shared_fd=setup.memory.backing.fd if share else None,
            secret=self.opts.secret,
            name=f"virtio-sim host ({self.plan.machine})",
            force_mode=MemoryMode.DMA if self.opts.memory == "dma" else None,
        )
        try:
            with trio.fail_after(self.opts.handshake_timeout):
                hello, mode = await host_handshake(channel, offer)
        except trio.TooSlowError:
            msg = f"no handshake within {self.opts.handshake_timeout:g}s"
            return await _refuse(channel, ErrorCode.TIMEOUT, msg)
        except HandshakeError as e:
            return await _refuse(channel, e.code, str(e))
        except WireError as e:
            return await _refuse(channel, e.code, str(e))
        except trio.EndOfChannel as e:
            return "lost", f"{CLOSED_REASON} during the handshake ({e})"
        # The guest's CPU byte order is a machine property QEMU knows from the target;
        # here the guest states it, and the legacy interface of every device follows it.
        order: ByteOrder = "big" if hello.capabilities & Capability.BIG_ENDIAN else "little"
        for vdev in [*setup.devices, *([setup.iommu_device] if setup.iommu_device else [])]:
            vdev.guest_order = order
        if mode is MemoryMode.DMA:
            conn.port = DmaPort(channel, reply_timeout=self.opts.frame_timeout)
        record["memory"] = str(mode)
        self.log(f"guest {conn.ident}: handshake done ({hello.name!r}, guest RAM {mode})")
        reason = await serve(channel, setup.machine, dma=conn.port)
        record["evidence"] = setup.evidence()
        if conn.port is not None:
            p = conn.port
            record["dma"] = {
                "reads": p.reads,
                "writes": p.writes,
                "bytes_read": p.bytes_read,
                "bytes_written": p.bytes_written,
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
