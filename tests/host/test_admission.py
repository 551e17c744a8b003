"""Who gets what before authenticating (issue 23 item 1, item 8).

A TCP host authenticates guests with an HMAC challenge. Until a peer has answered it,
the host builds, allocates and locks nothing for it: a peer without the secret that
connects and stays silent (or reconnects again and again) cannot take the drive lock
from a real guest, the connections still in the handshake are capped (the next one is
answered ERROR(BUSY) at once), and the handshake has a deadline. After authentication,
a guest that goes silent is dropped at the idle bound. The host runs in-process here
(``HostServer``), with the real socket code, so the tests can also count builds.
"""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import virtio_sim.host.process as host_process
from virtio_sim import wire
from virtio_sim.handshake import HandshakeError, auth_tag, guest_handshake
from virtio_sim.host.machine import MICROVM_MMIO_BASE, MICROVM_MMIO_SLOTS
from virtio_sim.host.process import HostOptions, HostServer, plan_host
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.sockets import Address, SocketFrameChannel, TcpAddress, connect
from virtio_sim.spec import LIMITS, MMIO
from virtio_sim.wire import PROTOCOL_VERSION, Capability, ErrorCode, Hello, MsgType, Role

SECRET = b"only the guests know"
MMIO_BASE = MICROVM_MMIO_BASE + (MICROVM_MMIO_SLOTS - 1) * MMIO_WINDOW
BOUND = 10.0  # seconds any single step may take on a loaded CI machine


@asynccontextmanager
async def tcp_host(disk: Path, **opts: Any) -> AsyncIterator[tuple[HostServer, Address, list[int]]]:
    """An in-process TCP host with a blk drive; yields it, its address and a list that
    grows by one entry per machine it builds."""
    options = HostOptions(
        listen=TcpAddress("127.0.0.1", 0),
        devices=[f"virtio-blk-device,drive={disk}"],
        ram_size=4 << 20,
        secret=SECRET,
        **opts,
    )
    server = HostServer(plan_host(options), out=io.StringIO(), err=io.StringIO())
    builds: list[int] = []
    real_build = host_process.build_host

    def counting_build(cfg: Any) -> Any:
        builds.append(1)
        return real_build(cfg)

    host_process.build_host = counting_build  # type: ignore[assignment]
    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.run)
            yield server, address, builds
            nursery.cancel_scope.cancel()
    finally:
        host_process.build_host = real_build


async def silent_peer(address: Address) -> SocketFrameChannel:
    """Connects, takes the host's HELLO (proof it was admitted to the handshake), says nothing."""
    ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
    with trio.fail_after(BOUND):
        first = await ch.receive()
    assert first.type is MsgType.HELLO, wire.parse_error(first) if first.type is MsgType.ERROR else first
    return ch


async def real_guest(address: Address) -> None:
    """Authenticate, take guest RAM (the host built and locked the drive only now), read
    the blk transport's magic value, say BYE."""
    ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
    try:
        with trio.fail_after(BOUND):
            await guest_handshake(ch, secret=SECRET, can_take_fds=False)
            await ch.send(wire.access(MsgType.MMIO_READ, 1, MMIO_BASE + MMIO_OFFSETS["MagicValue"], 4))
            assert wire.parse_read_reply(await ch.receive()) == MMIO.magic
            await ch.send(wire.bye())
    finally:
        await ch.aclose()


async def guests_gone(server: HostServer) -> None:
    """The previous guest's BYE is handled (and its drive unlocked) a moment after it left."""
    with trio.fail_after(BOUND):
        while server.guests:
            await trio.sleep(0.01)


async def test_a_silent_unauthenticated_peer_builds_and_locks_nothing(disk: Path) -> None:
    """The attack of issue 23: a peer without the secret connects and stays silent. The
    host must not have built a machine or taken the drive lock for it, so real guests
    (3 of 3, one after another, while the silent peer holds its connection) are served."""
    async with tcp_host(disk) as (server, address, builds):
        silent = await silent_peer(address)
        assert builds == []  # nothing built for a peer that has not authenticated
        for _ in range(3):
            await real_guest(address)
            await guests_gone(server)
        assert len(builds) == 3
        await silent.aclose()


async def test_a_peer_reconnecting_silently_does_not_lock_guests_out(disk: Path) -> None:
    async with tcp_host(disk, handshake_timeout=0.5) as (server, address, builds):
        served = 0
        async with trio.open_nursery() as nursery:

            async def pester() -> None:
                while True:  # connect, stay silent a moment, drop, again
                    ch = await silent_peer(address)
                    await trio.sleep(0.05)
                    await ch.aclose()

            nursery.start_soon(pester)
            for _ in range(3):
                await real_guest(address)
                await guests_gone(server)
                served += 1
            nursery.cancel_scope.cancel()
        assert served == 3 and len(builds) == 3


async def test_the_connection_past_the_unauthenticated_cap_gets_busy(disk: Path) -> None:
    """With the default bounds, four silent peers are in the handshake; the fifth is told
    BUSY at once (not CONFIG: nothing was built, so no drive lock can fail)."""
    cap = LIMITS.host.max_unauthenticated
    async with tcp_host(disk) as (server, address, builds):
        held = [await silent_peer(address) for _ in range(cap)]
        extra = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            frame = await extra.receive()
        assert frame.type is MsgType.ERROR
        code, message = wire.parse_error(frame)
        assert code == ErrorCode.BUSY and "waiting to authenticate" in message
        assert builds == []
        # Room again once one of them gives up; a real guest gets in.
        await held.pop().aclose()
        with trio.fail_after(BOUND):
            while server.unauthenticated >= cap:
                await trio.sleep(0.01)
        await real_guest(address)
        for ch in held:
            await ch.aclose()


async def test_the_handshake_has_a_deadline_from_accept(disk: Path) -> None:
    async with tcp_host(disk, handshake_timeout=0.5) as (_, address, builds):
        ch = await silent_peer(address)
        start = trio.current_time()
        with trio.fail_after(BOUND):
            frame = await ch.receive()
        assert trio.current_time() - start >= 0.4
        code, message = wire.parse_error(frame)
        assert code == ErrorCode.TIMEOUT and "no handshake within 0.5s" in message
        assert builds == []
        await ch.aclose()


async def test_an_idle_authenticated_guest_is_dropped_at_its_bound(disk: Path) -> None:
    async with tcp_host(disk, idle_timeout=0.5) as (server, address, _):
        ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            await guest_handshake(ch, secret=SECRET, can_take_fds=False)
        start = trio.current_time()
        with trio.fail_after(BOUND):
            frame = await ch.receive()
        idle = trio.current_time() - start
        assert idle >= 0.4
        code, message = wire.parse_error(frame)
        assert code == ErrorCode.TIMEOUT and "sent nothing for 0.5s" in message
        with trio.fail_after(BOUND):
            with pytest.raises(trio.EndOfChannel):
                await ch.receive()  # and the connection is closed
        await ch.aclose()
        with trio.fail_after(BOUND):
            while server.live:
                await trio.sleep(0.01)
        # The drive lock went with it: the next guest is served.
        await real_guest(address)


async def test_a_guest_claiming_a_host_only_capability_is_refused(disk: Path) -> None:
    async with tcp_host(disk) as (_, address, builds):
        ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            nonce = wire.parse_hello(await ch.receive()).nonce
            caps = Capability.DMA_MESSAGES | Capability.LINE_IRQ | Capability.AUTH_REQUIRED
            hello = Hello(PROTOCOL_VERSION, Role.GUEST, caps, auth=auth_tag(SECRET, nonce), name="liar")
            await ch.send(wire.hello(hello))
            frame = await ch.receive()
        assert frame.type is MsgType.ERROR
        code, message = wire.parse_error(frame)
        assert code == ErrorCode.PROTOCOL and "host-only capability AUTH_REQUIRED" in message
        assert builds == []
        await ch.aclose()


async def test_capability_bits_no_protocol_version_defines_are_refused(disk: Path) -> None:
    async with tcp_host(disk) as (_, address, _):
        ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            nonce = wire.parse_hello(await ch.receive()).nonce
            caps = Capability.DMA_MESSAGES | Capability(1 << 20)
            await ch.send(wire.hello(Hello(PROTOCOL_VERSION, Role.GUEST, caps, auth=auth_tag(SECRET, nonce))))
            code, message = wire.parse_error(await ch.receive())
        assert code == ErrorCode.PROTOCOL and "0x100000" in message and "does not define" in message
        await ch.aclose()


async def test_a_host_claiming_a_guest_only_capability_is_refused() -> None:
    """The guest checks the host's HELLO the same way (BIG_ENDIAN is a guest's CPU)."""
    a, b = socket.socketpair()
    host_end = SocketFrameChannel(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    guest_end = SocketFrameChannel(trio.SocketStream(trio.socket.from_stdlib_socket(b)))
    caps = Capability.DMA_MESSAGES | Capability.BIG_ENDIAN
    await host_end.send(wire.hello(Hello(PROTOCOL_VERSION, Role.HOST, caps, ram_size=1 << 20)))
    with trio.fail_after(BOUND), pytest.raises(HandshakeError, match="guest-only capability BIG_ENDIAN"):
        await guest_handshake(guest_end, secret=None, can_take_fds=False)
    await host_end.aclose()
    await guest_end.aclose()
