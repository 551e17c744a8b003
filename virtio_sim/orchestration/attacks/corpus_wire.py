"""Broken wire traffic (row X1, X4 for hostile text, and F51 for vhost-user): frames a hostile peer sends to
the host process (two-process protocol, docs/wire-protocol.md) and to the vhost-user
back-end. Each case connects, misbehaves, and must see the server end that connection
(an ERROR frame and/or a close), leak no file descriptors, and serve a well-behaved peer
that connects afterwards.

Every step waits for what it needs, never for a time: the end of the connection, a
frame, the host's own idle state (:meth:`HostServer.wait_idle`) before the next guest.
The host's timers (handshake and frame timeouts) are what some cases test; the corpus's
own bounds are backstops that only a real hang reaches, so the corpus gives the same
answers on a loaded machine (docs/error-policies.md, "Flakiness check").
"""

from __future__ import annotations

import array
import io
import os
import select
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

import trio

from virtio_sim import layouts, wire
from virtio_sim.handshake import guest_handshake, session_memory
from virtio_sim.host.machine import MICROVM_MMIO_BASE, MICROVM_MMIO_SLOTS
from virtio_sim.host.process import HostOptions, HostServer, plan_host
from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.host.vhost_user import serve_socket
from virtio_sim.layouts import fast_codec
from virtio_sim.orchestration.attacks.amplify import (
    MIB,
    AmplificationError,
    Amplified,
    finish,
    hello_latency,
    post_amplified_read,
    reset_peak_rss,
    rss,
    sparse_disk,
)
from virtio_sim.orchestration.attacks.corpus_text import hostile_guest_error
from virtio_sim.orchestration.attacks.scenario import CaseResult, Verdict
from virtio_sim.sockets import SocketFrameChannel, UnixAddress
from virtio_sim.spec import LIMITS, MMIO, VU_FLAGS, VU_LIMITS, VU_REQ
from virtio_sim.wire import (
    MAX_PAYLOAD,
    PROTOCOL_MAGIC,
    PROTOCOL_VERSION,
    Capability,
    ErrorCode,
    Hello,
    MsgType,
    Role,
)

# A backstop, not a measurement: a passing case never waits for it (each waits for an
# event), only a hang does. Generous because the corpus runs niced beside CPU hogs, where
# a step's wall time can be 50 times its CPU time.
BOUND = 60.0
HOST_TIMEOUTS = 1.0  # the in-process host's handshake and frame timeouts
FLOOD_FDS = 64
MMIO_MAGIC_AT = MICROVM_MMIO_BASE + MMIO_WINDOW * (MICROVM_MMIO_SLOTS - 1)  # first device: top slot


_HDR = fast_codec(wire.FrameHeader)

# Waits until the corpus's host has no connection open (HostServer.wait_idle); set by
# run_wire_corpus for the cases that need the host to themselves.
HOST_IDLE: ContextVar[Callable[[], Awaitable[None]]] = ContextVar("HOST_IDLE")


def header(kind: int, length: int, magic: int = PROTOCOL_MAGIC, version: int = PROTOCOL_VERSION) -> bytes:
    """A frame header with every field under our control (Frame.encode refuses lies)."""
    return _HDR.pack(magic, version, kind, 0, length)


def fds_open() -> int:
    return len(os.listdir("/proc/self/fd"))


# A case's misbehaviour; it may return a measurement for the report (its detail).
Send = Callable[[trio.socket.SocketType], Awaitable[str | None]]


class CaseFailed(Exception):
    """Raised by a case that watched the server do wrong (verdict FAILURE)."""


@dataclass(frozen=True)
class WireCase:
    id: str
    target: str  # "host" (two-process protocol) | "vhost-user"
    title: str
    send: Send
    #: host cases: the host must end this connection itself (ERROR and/or close, at once
    #: or when its timer runs out); False: the traffic is acceptable and the connection
    #: lasts until the corpus says BYE
    ends: bool = True


CASES: list[WireCase] = []


def case(cid: str, target: str, title: str, *, ends: bool = True) -> Callable[[Send], None]:
    def deco(fn: Send) -> None:
        CASES.append(WireCase(cid, target, title, fn, ends))

    return deco


async def _with_fds(sock: trio.socket.SocketType, data: bytes, n: int) -> None:
    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]
    try:
        await sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    finally:
        for fd in fds:
            os.close(fd)


def _guest_hello(role: Role = Role.GUEST, extra: int = 0) -> bytes:
    caps = Capability.DMA_MESSAGES | Capability.LINE_IRQ | Capability(extra)
    h = Hello(PROTOCOL_VERSION, role, caps, auth=bytes(32), name="hostile")
    return wire.hello(h).encode()


# --------------------------------------------------------------------------- host wire


def _raw(data: Callable[[], bytes], half_close: bool = False) -> Send:
    async def send(sock: trio.socket.SocketType) -> None:
        await sock.send(data())
        if half_close:
            sock.shutdown(socket.SHUT_WR)

    return send


case("wire-truncated-header", "host", "3 bytes of a header, then EOF")(
    _raw(lambda: header(MsgType.HELLO, 0)[:3], True)
)
case("wire-bad-magic", "host", "a header with the wrong magic")(
    _raw(lambda: header(MsgType.HELLO, 0, magic=0xBEEF))
)
case("wire-bad-version", "host", "a header of protocol version 99")(
    _raw(lambda: header(MsgType.HELLO, 0, version=99))
)
case("wire-unknown-type", "host", "frame type 200")(_raw(lambda: header(200, 0)))
case("wire-oversized", "host", "declared length above the limit")(
    _raw(lambda: header(MsgType.HELLO, MAX_PAYLOAD + 1))
)
case("wire-length-lies", "host", "declares 100 payload bytes, sends 10, stalls")(
    _raw(lambda: header(MsgType.HELLO, 100) + bytes(10))
)
case("wire-truncated-payload-eof", "host", "declares 100 payload bytes, sends 10, EOF")(
    _raw(lambda: header(MsgType.HELLO, 100) + bytes(10), True)
)
case("wire-hello-as-host", "host", "a guest claiming the host role")(_raw(lambda: _guest_hello(Role.HOST)))
case("wire-access-before-hello", "host", "MMIO_WRITE before any HELLO")(
    _raw(lambda: wire.access(MsgType.MMIO_WRITE, 1, MMIO_MAGIC_AT, 4, 0).encode())
)
case("wire-garbage", "host", "4 KiB of pseudo-random bytes")(
    _raw(lambda: bytes((i * 73 + 19) & 0xFF for i in range(4096)))
)
case("wire-silence", "host", "connect and say nothing (handshake timeout)")(_raw(lambda: b""))
case("wire-error-markup", "host", "an ERROR of rich markup and terminal escapes instead of a HELLO")(
    _raw(lambda: hostile_guest_error("[/x] [bold]x[/bold] \x1b]0;owned\x07\x1b[2J"))
)
case("wire-error-huge", "host", "an ERROR of 60,000 characters (the protocol allows 4000)")(
    _raw(lambda: hostile_guest_error("x" * 60_000))
)


case("wire-hello-host-only-capability", "host", "a guest HELLO claiming AUTH_REQUIRED (host only)")(
    _raw(lambda: _guest_hello(extra=Capability.AUTH_REQUIRED))
)
case("wire-hello-unknown-capability", "host", "a guest HELLO with capability bit 20 (undefined)")(
    _raw(lambda: _guest_hello(extra=1 << 20))
)


@case(
    "wire-unauthenticated-crowd",
    "host",
    f"{LIMITS.host.max_unauthenticated} silent connections, then one more (BUSY, nothing built)",
)
async def _crowd(sock: trio.socket.SocketType) -> str:
    """This connection and max_unauthenticated - 1 more say nothing; the next one must be
    told BUSY at once. (Row X6: nothing is built or locked before authentication.)

    The host's handshake timer ends silent connections: on a loaded machine one may end
    before the extra connection arrives, which then rightly gets a HELLO. The host sends
    that ERROR(TIMEOUT) before it frees the slot, so an extra connection greeted while
    every silent one is still open is the host's fault; otherwise the attempt proves
    nothing and is made again (fresh connections, the host idle again)."""
    path = sock.getpeername()
    with trio.fail_after(BOUND):
        frame, void = await _crowd_attempt(path, sock)
        if void:
            await wait_hangup(sock)  # the host's timer ends it
        while void:
            await HOST_IDLE.get()()
            frame, void = await _crowd_attempt(path, None)
    if frame.type is not MsgType.ERROR or wire.parse_error(frame)[0] != ErrorCode.BUSY:
        raise CaseFailed(f"the connection past the cap got {frame.type.name}, not ERROR(BUSY)")
    return "ERROR(BUSY) past the cap"


async def _crowd_attempt(path: str, first: trio.socket.SocketType | None) -> tuple[wire.Frame, bool]:
    """(what the extra connection got, whether a silent one had ended by then)."""
    silent: list[SocketFrameChannel] = []
    if first is not None:
        silent.append(SocketFrameChannel(trio.SocketStream(first)))
    try:
        while len(silent) < LIMITS.host.max_unauthenticated:
            silent.append(SocketFrameChannel(await trio.open_unix_socket(path)))
        for ch in silent:
            if (await ch.receive()).type is not MsgType.HELLO:
                raise CaseFailed("a silent connection within the cap was not greeted")
        extra = SocketFrameChannel(await trio.open_unix_socket(path))
        frame = await extra.receive()
        await extra.aclose()
        return frame, frame.type is MsgType.HELLO and any(_ended_early(ch) for ch in silent)
    finally:
        for ch in silent[1 if first is not None else 0 :]:
            await ch.aclose()


def _ended_early(ch: SocketFrameChannel) -> bool:
    """The host said more than its HELLO (its timeout ERROR) or hung up; never blocks."""
    return bool(ch.take_buffered()) or bool(select.select([ch.socket.fileno()], [], [], 0)[0])


@case("wire-never-reads", "host", "after the handshake: thousands of MMIO_READs, no reply ever read")
async def _never_reads(sock: trio.socket.SocketType) -> str:
    """The host's replies pile up in the socket; its send stalls. It must drop the guest
    after its frame timeout rather than wait (or buffer) for ever."""
    ch = SocketFrameChannel(trio.SocketStream(sock), accept_fds=True, frame_timeout=BOUND)
    with trio.fail_after(BOUND):
        session = await guest_handshake(ch, secret=None, can_take_fds=True)
    if session.fd is not None:
        os.close(session.fd)
    # 2000 whole frames (72 KB) fit our socket's send buffer, so they all leave; the
    # host's replies (one small skb each) fill its send buffer after a few hundred.
    flood = wire.access(MsgType.MMIO_READ, 1, MMIO_MAGIC_AT, 4).encode() * 2000
    with trio.fail_after(BOUND):
        try:
            await ch.send_raw(flood)
        except trio.EndOfChannel:
            pass  # it hung up on us already: the reading below sees the end
    # Still reading nothing: the host's sends stall, and after its frame timeout it must
    # hang up. Reading anything now would unblock it, so watch only for the hang-up.
    with trio.move_on_after(BOUND):
        await wait_hangup(sock)
        return "dropped after its frame timeout"
    raise CaseFailed("the host kept the connection of a guest that read nothing")


async def wait_hangup(sock: trio.socket.SocketType) -> None:
    """Return once the peer has closed its end, reading nothing of what it sent: a private
    epoll set that watches only for the hang-up becomes readable when it happens."""
    watch = select.epoll()
    try:
        watch.register(sock.fileno(), select.EPOLLRDHUP)  # EPOLLHUP and EPOLLERR come unasked
        while not watch.poll(0):
            await trio.lowlevel.wait_readable(watch.fileno())
    finally:
        watch.close()


@case("wire-fd-flood", "host", f"HELLO carrying {FLOOD_FDS} file descriptors", ends=False)
async def _fd_flood(sock: trio.socket.SocketType) -> None:
    await _with_fds(sock, _guest_hello(), FLOOD_FDS)


@case("wire-hello-twice", "host", "two HELLOs")
async def _hello_twice(sock: trio.socket.SocketType) -> None:
    await sock.send(_guest_hello() + _guest_hello())


@case("wire-bad-access-size", "host", "after the handshake: a 16-byte MMIO read")
async def _bad_size(sock: trio.socket.SocketType) -> None:
    await sock.send(header(MsgType.MMIO_READ, 0) + b"")  # an access frame with no payload


@case("wire-unsolicited-dma-reply", "host", "a DMA_REPLY nobody asked for")
async def _dma_reply(sock: trio.socket.SocketType) -> None:
    await sock.send(header(MsgType.DMA_REPLY, 12) + bytes(12))


# Row X5: request amplification (virtio_sim/orchestration/attacks/amplify.py). The host process of the
# corpus serves a read-only blk drive of AMPLIFY.total + 1 MiB (sparse) in slot 2.
AMPLIFY = Amplified()
AMPLIFY_RSS_BOUND = 64 * MIB  # host peak RSS growth for the whole request
# A bystander's HELLO must come back while the request still runs, within this share of
# the request's own time: both are measured on one clock under one load, so the check
# holds on a loaded machine as on an idle one. (tests/attacks/test_amplification.py measures
# the absolute latency: 0.3-44 ms, goal < 100 ms.)
AMPLIFY_HELLO_SHARE = 0.1
BLK_AT = MMIO_MAGIC_AT - MMIO_WINDOW  # the second device


@case(
    "wire-blk-amplification",
    "host",
    f"indirect table of {AMPLIFY.entries} entries on one {AMPLIFY.buffer_size // MIB} MiB buffer: "
    f"a {AMPLIFY.total // MIB} MiB blk read",
    ends=False,
)
async def _amplification(sock: trio.socket.SocketType) -> str:
    ch = SocketFrameChannel(trio.SocketStream(sock), accept_fds=True, frame_timeout=BOUND)
    with trio.fail_after(BOUND):
        mem = session_memory(await guest_handshake(ch, secret=None, can_take_fds=True))
    try:
        reset_peak_rss()  # the host runs in this process
        _, before = rss()
        served_at: list[float] = []

        async def serve_attack() -> None:
            await finish(ch, mem, AMPLIFY)
            served_at.append(trio.current_time())

        with trio.fail_after(BOUND):
            posted_at = trio.current_time()
            async with trio.open_nursery() as nursery:
                await post_amplified_read(ch, mem, BLK_AT, AMPLIFY)
                nursery.start_soon(serve_attack)
                latency = await hello_latency(await trio.open_unix_socket(sock.getpeername()))
                hello_at = trio.current_time()
        _, peak = rss()
    except AmplificationError as e:
        raise CaseFailed(str(e)) from None
    finally:
        mem.backing.close()
    growth = peak - before
    measured = f"HELLO in {latency * 1000:.1f} ms meanwhile; host peak RSS +{growth / MIB:.1f} MiB"
    if hello_at > served_at[0]:
        raise CaseFailed(f"a new connection's HELLO waited for the device ({measured})")
    took = served_at[0] - posted_at
    if latency > AMPLIFY_HELLO_SHARE * took or growth > AMPLIFY_RSS_BOUND:
        raise CaseFailed(f"over the bound: {measured}; the request took {took:.1f}s")
    return measured


# --------------------------------------------------------------------------- vhost-user


def vu(request: int, payload: bytes = b"", size: int | None = None, flags: int = VU_FLAGS.version) -> bytes:
    n = len(payload) if size is None else size
    return layouts.vhost_user_header_codec.pack(request, flags, n) + payload


def _vu_raw(data: Callable[[], bytes], half_close: bool = False) -> Send:
    return _raw(data, half_close)


case("vu-truncated-header", "vhost-user", "half a message header, then EOF")(
    _vu_raw(lambda: vu(VU_REQ.GET_FEATURES)[:5], True)
)
case("vu-bad-version", "vhost-user", "header flags with version 2")(
    _vu_raw(lambda: vu(VU_REQ.GET_FEATURES, flags=2))
)
case("vu-unknown-request", "vhost-user", "request 0x7777")(_vu_raw(lambda: vu(0x7777)))
case("vu-oversized", "vhost-user", f"payload size {VU_LIMITS.max_payload + 1} (one above the limit)")(
    _vu_raw(lambda: vu(VU_REQ.SET_FEATURES, size=VU_LIMITS.max_payload + 1))
)
case("vu-size-lies", "vhost-user", "SET_FEATURES declaring 8 bytes, sending 4, EOF")(
    _vu_raw(lambda: vu(VU_REQ.SET_FEATURES, bytes(4), size=8), True)
)
case("vu-wrong-payload-size", "vhost-user", "SET_FEATURES with a 4-byte payload")(
    _vu_raw(lambda: vu(VU_REQ.SET_FEATURES, bytes(4)))
)


@case("vu-fd-flood", "vhost-user", f"SET_VRING_KICK carrying {VU_LIMITS.max_fds + 8} fds")
async def _vu_fd_flood(sock: trio.socket.SocketType) -> None:
    await _with_fds(sock, vu(VU_REQ.SET_VRING_KICK, (0).to_bytes(8, "little")), VU_LIMITS.max_fds + 8)


@case("vu-fds-on-get", "vhost-user", "GET_FEATURES carrying 4 unexpected fds")
async def _vu_fds_get(sock: trio.socket.SocketType) -> None:
    await _with_fds(sock, vu(VU_REQ.GET_FEATURES), 4)


def _mem_table(regions: list[tuple[int, int, int, int]]) -> bytes:
    payload = layouts.build_vhost_user_memory(regions)
    return vu(VU_REQ.SET_MEM_TABLE, payload, flags=VU_FLAGS.version | VU_FLAGS.need_reply)


@case("vu-mem-table-too-many-regions", "vhost-user", "SET_MEM_TABLE with more regions than fds and the limit")
async def _vu_regions(sock: trio.socket.SocketType) -> None:
    n = max(VU_LIMITS.max_mem_regions, VU_LIMITS.max_fds) + 1
    await _with_fds(sock, _mem_table([(i << 20, 1 << 20, i << 20, 0) for i in range(n)]), 2)


@case("vu-mem-table-overlap", "vhost-user", "two overlapping memory regions")
async def _vu_overlap(sock: trio.socket.SocketType) -> None:
    await _with_fds(sock, _mem_table([(0, 1 << 20, 0, 0), (1 << 19, 1 << 20, 1 << 30, 0)]), 2)


@case("vu-ring-addr-before-memory", "vhost-user", "SET_VRING_ADDR and ENABLE before any memory table")
async def _vu_ring_first(sock: trio.socket.SocketType) -> None:
    addr = layouts.vhost_user_vring_addr_codec.pack(0, 0, 0x7F0000000000, 0x7F0000001000, 0x7F0000002000, 0)
    state = layouts.vhost_user_vring_state_codec.pack(0, 1)
    ack = VU_FLAGS.version | VU_FLAGS.need_reply
    await sock.send(
        vu(VU_REQ.SET_VRING_ADDR, addr, flags=ack) + vu(VU_REQ.SET_VRING_ENABLE, state, flags=ack)
    )
    await sock.send(vu(VU_REQ.SET_VRING_KICK, (0x100).to_bytes(8, "little")))  # NOFD flag: polling kick


@case("vu-vring-num-zero-and-huge", "vhost-user", "SET_VRING_NUM 0 and 0xffff")
async def _vu_num(sock: trio.socket.SocketType) -> None:
    ack = VU_FLAGS.version | VU_FLAGS.need_reply
    for n in (0, 0xFFFF, 3):
        await sock.send(vu(VU_REQ.SET_VRING_NUM, layouts.vhost_user_vring_state_codec.pack(0, n), flags=ack))
    await sock.send(vu(VU_REQ.SET_VRING_NUM, layouts.vhost_user_vring_state_codec.pack(999, 8), flags=ack))
    sock.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------------------- running


async def _closed_within(sock: trio.socket.SocketType, seconds: float) -> bool:
    """Read (and drop) what arrives until the peer ends the connection; False if it has
    not within ``seconds``."""
    with trio.move_on_after(seconds):
        while True:
            try:
                data = await sock.recv(65536)
            except OSError:
                return True
            if not data:
                return True
    return False


async def _drain_host(sock: trio.socket.SocketType, ends: bool) -> str | None:
    """How the host dealt with the connection: "close" (it hung up, maybe after an ERROR
    frame), "alive" (the traffic was acceptable: it ended cleanly when told BYE), or None
    (it kept the connection: stuck).

    A case the host must end (``ends``) is given time, not a probe: its timers are what
    some cases test. Otherwise the BYE goes at once; the host handles frames in order,
    so whatever it answers to the BYE comes after its answer to the traffic before it.
    """
    if ends:
        return "close" if await _closed_within(sock, BOUND) else None
    received = bytearray()
    try:
        await sock.send(wire.bye().encode())
        with trio.move_on_after(BOUND):
            while data := await sock.recv(65536):
                received += data
            return "close" if MsgType.ERROR in _frame_types(bytes(received)) else "alive"
    except OSError:
        return "close"  # it hung up with our bytes unread
    return None


def _frame_types(data: bytes) -> set[MsgType]:
    """The types of the whole frames at the start of ``data``."""
    kinds: set[MsgType] = set()
    at = 0
    while at + wire.HEADER_SIZE <= len(data):
        try:
            kind, _, length = wire.decode_header(data[at : at + wire.HEADER_SIZE])
        except wire.WireError:
            break
        kinds.add(kind)
        at += wire.HEADER_SIZE + length
    return kinds


async def _drain_vu(sock: trio.socket.SocketType, probe: bytes, wait: float = 0.5) -> str | None:
    """How the vhost-user back-end dealt with the connection: "close" (it hung up),
    "refused" (it answered a probe on the same connection: the bad request was refused
    and the connection is still usable), "alive" (it closed cleanly when probed), or
    None (neither: stuck). The back-end handles messages in order, so a probe sent
    before it has read the bad message is answered after it (or never): ``wait`` only
    saves the probe when the back-end hangs up at once."""
    if await _closed_within(sock, wait):
        return "close"
    try:
        await sock.send(probe)
    except OSError:
        return "close"
    with trio.move_on_after(BOUND):
        try:
            data = await sock.recv(65536)
        except OSError:
            return "close"
        return "refused" if data else "alive"
    return None


async def _good_host_guest(path: str) -> str | None:
    """A well-behaved guest: handshake, then read the first device's magic register."""
    stream = await trio.open_unix_socket(path)
    channel = SocketFrameChannel(stream, frame_timeout=BOUND)
    try:
        with trio.fail_after(BOUND):
            await guest_handshake(channel, secret=None, can_take_fds=False)
            await channel.send(wire.access(MsgType.MMIO_READ, 1, MMIO_MAGIC_AT, 4))
            reply = await channel.receive()
            if reply.type is not MsgType.READ_REPLY or wire.parse_read_reply(reply) != MMIO.magic:
                return f"the next guest got {reply.type.name} instead of the magic value"
            await channel.send(wire.bye())
    except Exception as e:  # the next guest failing in any way is the finding
        return f"the next guest was not served: {type(e).__name__}: {e}"
    finally:
        await stream.aclose()
    return None


async def _good_vu_frontend(tmp: str, n: int) -> str | None:
    path = os.path.join(tmp, f"ok{n}.sock")
    built = build_device(parse_device_option("virtio-rng-device"))
    got: list[object] = []

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        got.append(await serve_socket(path, built, task_status=task_status))

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await sock.connect(path)
            with trio.fail_after(BOUND):
                await sock.send(vu(VU_REQ.GET_FEATURES))
                raw = await sock.recv(layouts.VHOST_USER_HEADER_SIZE + 8)
            sock.close()
            if len(raw) != layouts.VHOST_USER_HEADER_SIZE + 8:
                return "the next front-end got no GET_FEATURES reply"
    except trio.TooSlowError:
        return "the next front-end was not answered"
    return None


async def _settled(before: int) -> bool:
    """The servers close their end of a finished connection when they get to it (and
    the collector frees what a case dropped): wait for the count to come back."""
    with trio.move_on_after(BOUND):
        while fds_open() > before + 2:
            await trio.sleep(0.02)
        return True
    return False


async def _host_idle() -> None:
    """No host connection is open (a case run on its own has no host to wait for)."""
    wait = HOST_IDLE.get(None)
    if wait is not None:
        with trio.fail_after(BOUND):
            await wait()


async def run_wire_case(c: WireCase, tmp: str, n: int, host_path: str | None) -> CaseResult:
    start = time.perf_counter()
    res = CaseResult(c.id, c.target, Verdict.HANDLED)
    measured: str | None = None
    try:
        if c.target == "host":
            assert host_path is not None
            await _host_idle()  # the case has the host to itself
            before = fds_open()
            with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as sock:
                await sock.connect(host_path)  # closed whatever the case raises
                measured = await c.send(sock)
                how = await _drain_host(sock, c.ends)
            after = None
            if how is not None:
                await _host_idle()  # done with the hostile connection: the next guest alone
                after = await _good_host_guest(host_path)
                await _host_idle()
        else:
            before = fds_open()
            path = os.path.join(tmp, f"vu{n}.sock")
            built = build_device(parse_device_option("virtio-rng-device"))
            ended: list[object] = []

            async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                ended.append(await serve_socket(path, built, task_status=task_status))

            async with trio.open_nursery() as nursery:
                await nursery.start(run)
                sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
                await sock.connect(path)
                await c.send(sock)
                how = await _drain_vu(sock, vu(VU_REQ.GET_FEATURES))
                sock.close()
            res.policy = how
            after = await _good_vu_frontend(tmp, n)
        res.detail = str(getattr(ended[0], "ended", "")) if c.target != "host" and ended else ""
        if c.target == "host" and measured:
            res.detail = measured
        if how is None:
            res.verdict, res.detail = Verdict.HANG, f"the server kept the connection open past {BOUND:g}s"
        elif after:
            res.verdict, res.detail = Verdict.FAILURE, after
        elif not await _settled(before):
            res.verdict, res.detail = Verdict.FAILURE, f"file descriptors leaked: {before} -> {fds_open()}"
        res.policy = how
    except CaseFailed as e:
        res.verdict, res.detail = Verdict.FAILURE, str(e)
    except Exception:  # anything escaping the server is the finding
        res.verdict, res.detail = Verdict.CRASH, traceback.format_exc(limit=-8)
    res.seconds = time.perf_counter() - start
    return res


class ListeningWatch(io.StringIO):
    """A host server's event output (HostServer ``out``) that notices its ``listening``
    event: the moment connections are accepted, unlike the socket file, which bind()
    creates before listen()."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = trio.Event()

    def write(self, text: str) -> int:
        if '"event": "listening"' in text:
            self.listening.set()
        return super().write(text)


async def run_wire_corpus(tmp: str, cases: list[WireCase] | None = None) -> list[CaseResult]:
    """Every wire case against one in-process host server (so 'the next guest' is served
    by the same server the hostile one attacked) and fresh vhost-user back-ends."""
    chosen = CASES if cases is None else cases
    path = os.path.join(tmp, "host.sock")
    disk = os.path.join(tmp, "amplify.img")
    sparse_disk(disk, AMPLIFY.total + MIB)
    opts = HostOptions(
        listen=UnixAddress(path),
        devices=["virtio-rng-device", f"virtio-blk-device,drive={disk},readonly=on"],
        ram_size=4 << 20,
        handshake_timeout=HOST_TIMEOUTS,
        frame_timeout=HOST_TIMEOUTS,
        max_guests=LIMITS.host.max_guests,
    )
    events = ListeningWatch()
    server = HostServer(plan_host(opts), out=events, err=open(os.devnull, "w"))  # noqa: SIM115
    results: list[CaseResult] = []
    HOST_IDLE.set(server.wait_idle)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND):
            await nursery.start(server.run)  # returns once the host listens
        # warm up: the first guest and front-end open what the server keeps for good
        # (so the fd baseline of each case is steady)
        if await _good_host_guest(path) or await _good_vu_frontend(tmp, -1):
            raise RuntimeError("the servers do not serve a good peer before any attack")
        for n, c in enumerate(chosen):
            results.append(await run_wire_case(c, tmp, n, path))
        nursery.cancel_scope.cancel()
    return results
