"""A transparent relay between a guest process and a host process that reads the guest's
frames as they pass: a test learns from the traffic itself that the workload is running
(the driver's first QueueNotify, which comes only after DRIVER_OK), instead of guessing
with a sleep. Bytes and file descriptors (the guest-RAM memfd over a Unix socket) pass
unchanged, so the handshake, its HMAC and the memory mode are the host's and the guest's
own. When either side ends, the tap closes both: the survivor sees the end as it would
without the tap.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from virtio_sim import wire
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.sockets import TcpAddress, UnixAddress, parse_address
from virtio_sim.wire import HEADER_SIZE, MsgType

MMIO_WINDOW_MASK = 0x1FF  # a virtio-mmio window is 0x200 bytes
MAX_FDS = 4


class Tap:
    def __init__(self) -> None:
        self.address = ""  # what the guest connects to
        self.kicked = trio.Event()  # the guest wrote a QueueNotify register

    def watch(self, data: bytes, buf: bytearray) -> None:
        """Frames the guest sent, for the test to wait on (parsing errors are the host's
        business: the bytes pass on regardless)."""
        buf += data
        while len(buf) >= HEADER_SIZE:
            try:
                kind, seq, length = wire.decode_header(bytes(buf[:HEADER_SIZE]))
            except wire.WireError:
                buf.clear()
                return
            if len(buf) < HEADER_SIZE + length:
                return
            payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
            del buf[: HEADER_SIZE + length]
            if kind is MsgType.MMIO_WRITE:
                addr, _, _ = wire.parse_access(wire.Frame(kind, seq, payload))
                if addr & MMIO_WINDOW_MASK == MMIO_OFFSETS["QueueNotify"]:
                    self.kicked.set()


async def _guest_to_host(tap: Tap, guest: trio.socket.SocketType, host: trio.socket.SocketType) -> None:
    buf = bytearray()
    while data := await guest.recv(1 << 16):
        tap.watch(data, buf)
        await _send_all(host, data)


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def _host_to_guest(host: trio.socket.SocketType, guest: trio.socket.SocketType) -> None:
    unix = host.family == socket.AF_UNIX
    while True:
        if not unix:
            data = await host.recv(1 << 16)
            if not data:
                return
            await _send_all(guest, data)
            continue
        data, anc, _, _ = await host.recvmsg(1 << 16, socket.CMSG_SPACE(MAX_FDS * 4))
        fds = array.array("i")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % 4])
        try:
            if not data:
                return
            if fds:
                sent = await guest.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                data = data[sent:]
            await _send_all(guest, data)
        finally:
            for fd in fds:
                os.close(fd)  # passed on: the guest has its own copy


@asynccontextmanager
async def tap(host_address: str, scratch: Path) -> AsyncIterator[Tap]:
    """Relay one guest connection to the host at ``host_address``."""
    t = Tap()
    target = parse_address(host_address, listen=False)
    if isinstance(target, UnixAddress):
        private = scratch / "tap"
        private.mkdir(mode=0o700)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(str(private / "tap.sock"))
        t.address = f"unix:{private / 'tap.sock'}"
    else:
        assert isinstance(target, TcpAddress)
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await listener.bind(("127.0.0.1", 0))
        t.address = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(1)  # listening before the guest is told the address

    async def relay() -> None:
        guest, _ = await listener.accept()
        host = trio.socket.socket(listener.family, socket.SOCK_STREAM)
        with guest, host:
            await host.connect(target.path if isinstance(target, UnixAddress) else (target.host, target.port))
            async with trio.open_nursery() as n:

                async def one_way(fn: Callable[..., Awaitable[None]], *args: object) -> None:
                    with contextlib.suppress(OSError):
                        await fn(*args)
                    n.cancel_scope.cancel()  # one side ended: end the other

                n.start_soon(one_way, _guest_to_host, t, guest, host)
                n.start_soon(one_way, _host_to_guest, host, guest)

    with listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            yield t
            nursery.cancel_scope.cancel()
