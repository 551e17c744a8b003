"""The guest process: ``virtio-sim guest --connect ADDR --workload NAME [--json]``.

Connects to a host process, runs the handshake (which brings the boot information and
guest RAM: the host's memfd over a Unix socket, private memory served to the host's DMA
requests over TCP), then runs :func:`guest.boot.run_guest`, the very function the
embedded mode runs, and prints the guest's half of the result.

If the host dies, drops the link or shuts down while the guest runs, the guest says so on
stderr and exits with status 3 (EXIT_PEER_LOST) as soon as the link reports it. SIGINT /
SIGTERM end the run, say BYE to the host and exit with status 130.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass, replace

import trio

from virtio_sim import wire
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.exit_codes import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PEER_LOST
from virtio_sim.guest.boot import BootInfo, run_guest
from virtio_sim.guest.link import HostLink
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.guest.profile import guest_policy
from virtio_sim.handshake import (
    HANDSHAKE_TIMEOUT,
    HandshakeError,
    MemoryMode,
    guest_handshake,
    session_memory,
)
from virtio_sim.lifeline import wait_for_stdin_eof
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import load_driver_profile
from virtio_sim.sockets import (
    Address,
    ConnectError,
    SocketFrameChannel,
    UnixAddress,
    connect,
)
from virtio_sim.spec import load_toml
from virtio_sim.wire import ErrorCode, WireError

MIN_GUEST_RAM = 2 << 20
#: where the machines this guest knows put RAM (specs/machines.toml: x86 at 0, virt at 1 GiB)
BOOTABLE_RAM_BASES = frozenset(int(m["ram_base"]) for m in load_toml("machines.toml").values())


def guest_policy_for(profile: str | None) -> GuestPolicy:
    """The guest's policy: a driver generation from specs/profiles/drivers, or the
    current one. Raises ProfileError for an unknown or broken profile."""
    if profile is None:
        return GuestPolicy()
    return guest_policy(load_driver_profile(profile))


@dataclass
class GuestOptions:
    connect: Address
    workload: str
    profile: str | None = None  # a driver profile name; None: the current driver
    seed: int | None = None
    timeout: float = 10.0
    secret: bytes | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    lifeline: bool = False  # stop when stdin closes (the parent died)
    pci_force_legacy: bool = False  # Linux's virtio_pci.force_legacy=1


@dataclass
class GuestExit:
    """How a guest process ends: its status, its result (if it got that far), a message."""

    status: int
    result: RunResult | None = None
    message: str | None = None


async def guest_main(opts: GuestOptions) -> GuestExit:
    try:
        stream = await connect(opts.connect)
    except ConnectError as e:
        return GuestExit(EXIT_FAIL, message=str(e))
    channel = SocketFrameChannel(stream, accept_fds=isinstance(opts.connect, UnixAddress))
    interrupted: list[int] = []
    outcome = GuestExit(EXIT_INTERRUPTED, message="interrupted")
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as main:

                    async def watch_signals() -> None:
                        async for signum in signals:
                            interrupted.append(signum)
                            main.cancel()
                            return

                    async def watch_lifeline() -> None:
                        await wait_for_stdin_eof()
                        interrupted.append(signal.SIGHUP)
                        main.cancel()

                    nursery.start_soon(watch_signals)
                    if opts.lifeline:
                        nursery.start_soon(watch_lifeline)
                    outcome = await _session(channel, opts)
                nursery.cancel_scope.cancel()
        if interrupted:
            why = (
                "parent went away (stdin closed)"
                if interrupted[0] == signal.SIGHUP
                else f"interrupted by {signal.Signals(interrupted[0]).name}"
            )
            outcome = GuestExit(EXIT_INTERRUPTED, outcome.result, why)
            with trio.move_on_after(1):
                await _send_quietly(channel, wire.bye())
    finally:
        with trio.CancelScope(shield=True):
            await channel.aclose()
    return outcome


async def _session(channel: SocketFrameChannel, opts: GuestOptions) -> GuestExit:
    policy = guest_policy_for(opts.profile)
    if opts.pci_force_legacy:
        policy = replace(policy, pci_force_legacy=True)
    # A guest with encrypted (private) memory does not hand the host a plain map of its
    # RAM: the host then reaches it by DMA and sees ciphertext in private pages, as a
    # device of a confidential VM does.
    share = channel.is_unix and not policy.driver.restricted_memory
    try:
        with trio.fail_after(opts.handshake_timeout):
            session = await guest_handshake(
                channel, secret=opts.secret, can_take_fds=share, big_endian=policy.guest_order == "big"
            )
    except trio.TooSlowError:
        return GuestExit(
            EXIT_FAIL, message=f"host did not finish the handshake in {opts.handshake_timeout:g}s"
        )
    except HandshakeError as e:
        if e.code is ErrorCode.CONFIG:
            refused = RunResult(Outcome.HOST_REFUSED, detail=e.detail)
            return GuestExit(EXIT_FAIL, refused, str(e))
        if e.code is ErrorCode.SHUTDOWN:
            return GuestExit(EXIT_PEER_LOST, message=str(e))
        return GuestExit(EXIT_FAIL, message=f"handshake failed ({e.code.name}): {e}")
    except WireError as e:
        await _send_quietly(channel, wire.error(e.code, str(e)))
        return GuestExit(EXIT_FAIL, message=f"malformed frame from the host: {e}")
    except trio.EndOfChannel as e:
        return GuestExit(EXIT_PEER_LOST, message=f"host closed the connection in the handshake ({e})")
    try:
        memory = session_memory(session)
    except HandshakeError as e:
        await _send_quietly(channel, wire.error(e.code, str(e)))
        return GuestExit(EXIT_FAIL, message=str(e))
    ram_base = min(r.gpa for r in session.regions)
    if (
        session.ram_size < MIN_GUEST_RAM
        or ram_base not in BOOTABLE_RAM_BASES
        or not memory.contains(ram_base, session.ram_size)
    ):
        # The guest kernel allocates from 1 MiB up in one block of RAM where one of the
        # machines puts it (0 on x86, 1 GiB on arm virt).
        memory.close()
        msg = f"cannot boot in {session.ram_size} bytes of RAM laid out as {session.regions}"
        await _send_quietly(channel, wire.error(ErrorCode.UNSUPPORTED, msg))
        return GuestExit(EXIT_FAIL, message=msg)
    try:
        link = HostLink(channel)
        if session.mode is MemoryMode.DMA:
            # The host's accesses see guest RAM as a device does (ciphertext where private).
            link.dma_memory = IdentityAddressSpace(memory)
        result = await run_guest(
            link,
            memory,
            BootInfo(session.cmdline, session.ram_size, ram_base),
            opts.workload,
            seed=opts.seed,
            policy=policy,
            timeout=opts.timeout,
        )
    finally:
        memory.close()
    if link.peer_failure is not None:
        return GuestExit(EXIT_PEER_LOST, result, f"host link lost: {link.peer_failure}")
    return GuestExit(EXIT_OK if result.outcome is Outcome.OK else EXIT_FAIL, result)


async def _send_quietly(channel: SocketFrameChannel, frame: wire.Frame) -> None:
    with contextlib.suppress(trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(frame)
