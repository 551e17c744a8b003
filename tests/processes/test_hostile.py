"""A host process against hostile or broken clients: each is refused cleanly with an ERROR
frame and the connection dropped, and the host goes on serving the next real guest.

The clients here speak the protocol by hand over a real socket (Unix or TCP), the host is a
real ``virtio-sim host`` process, and after every abuse a real ``virtio-sim guest`` process
must still complete a verified workload against the same host.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.support.processes import Proc, expect_error, host, raw_channel, run_guest
from virtio_sim import wire
from virtio_sim.handshake import HandshakeError, HostSession, MemoryMode, auth_tag, guest_handshake
from virtio_sim.host.machine import MICROVM_MMIO_BASE, MICROVM_MMIO_SLOTS
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.sockets import SocketFrameChannel, UnixAddress, open_listener
from virtio_sim.spec import MMIO, F
from virtio_sim.wire import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Capability,
    ErrorCode,
    Hello,
    MemRegionFlag,
    MsgType,
    Role,
)

SECRET = b"correct horse"
# microvm: the first device sits in the highest slot
MMIO_BASE = MICROVM_MMIO_BASE + (MICROVM_MMIO_SLOTS - 1) * MMIO_WINDOW


def _header(mtype: int, length: int, *, version: int = PROTOCOL_VERSION, seq: int = 0) -> bytes:
    return wire._HEADER.pack(wire.PROTOCOL_MAGIC, version, mtype, seq, length)


class Target:
    def __init__(self, h: Proc, link: str, secret_file: Path) -> None:
        self.h = h
        self.link = link
        self.secret_file = secret_file

    async def channel(self) -> SocketFrameChannel:
        return await raw_channel(self.h.address)

    async def handshake(self, ch: SocketFrameChannel) -> HostSession:
        return await guest_handshake(ch, secret=SECRET, can_take_fds=self.link == "unix")

    async def still_serves(self) -> None:
        """The proof that the host survived: a real guest process runs a verified workload."""
        g = await run_guest(
            self.h.address, "--workload", "rng", "--seed", "5", "--json",
            "--secret-file", str(self.secret_file),
        )  # fmt: skip
        assert g.proc.returncode == 0, g.stderr
        assert g.json_result()["workload"]["verified_stream"] is True
        assert self.h.proc.returncode is None


@asynccontextmanager
async def target(tmp_path: Path, link: str, *extra: str) -> AsyncIterator[Target]:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    os.chmod(secret_file, 0o600)
    listen = "unix:" if link == "unix" else "tcp:127.0.0.1:0"
    async with host(
        "--listen", listen, "-device", "virtio-rng-device", "--seed", "5",
        "--secret-file", str(secret_file), "--max-guests", "16", "--max-unauthenticated", "16",
        "--handshake-timeout", "1", "--frame-timeout", "1", *extra,
    ) as h:  # fmt: skip
        yield Target(h, link, secret_file)


LINKS = pytest.mark.parametrize("link", ["unix", "tcp"])


async def _first_frame(ch: SocketFrameChannel) -> wire.Frame:
    frame = await ch.receive()
    assert frame.type is MsgType.HELLO  # the host always speaks first
    return frame


async def _abuse_garbage(t: Target) -> None:
    ch = await t.channel()
    await _first_frame(ch)
    await ch.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    code, message = await expect_error(ch)
    assert code == ErrorCode.PROTOCOL and "bad frame magic" in message


async def _abuse_truncated(t: Target) -> None:
    ch = await t.channel()
    await _first_frame(ch)
    raw = wire.hello(Hello(PROTOCOL_VERSION, Role.GUEST, Capability.DMA_MESSAGES)).encode()
    await ch.send_raw(raw[: HEADER_SIZE + 5])  # the header promises more than comes
    ch.socket.shutdown(socket.SHUT_WR)
    code, message = await expect_error(ch)
    assert code == ErrorCode.PROTOCOL and "truncated frame" in message


async def _abuse_oversized(t: Target) -> None:
    ch = await t.channel()
    await _first_frame(ch)
    # Only the header: the host must answer without waiting for 4 GiB of payload.
    await ch.send_raw(_header(MsgType.HELLO, 0xFFFFFFFF))
    code, message = await expect_error(ch)
    assert code == ErrorCode.PROTOCOL and f"exceeds the limit {MAX_PAYLOAD}" in message
    # The same after the handshake, in the middle of register traffic.
    ch = await t.channel()
    await t.handshake(ch)
    await ch.send_raw(_header(MsgType.MMIO_WRITE, MAX_PAYLOAD + 1))
    code, message = await expect_error(ch)
    assert code == ErrorCode.PROTOCOL and "exceeds the limit" in message


async def _abuse_versions(t: Target) -> None:
    # A frame header from a future protocol.
    ch = await t.channel()
    await _first_frame(ch)
    await ch.send_raw(_header(MsgType.HELLO, 0, version=PROTOCOL_VERSION + 1))
    code, message = await expect_error(ch)
    assert code == ErrorCode.VERSION and "unsupported protocol version" in message
    # A current header carrying a HELLO that claims another version.
    ch = await t.channel()
    nonce = wire.parse_hello(await _first_frame(ch)).nonce
    future = Hello(PROTOCOL_VERSION + 1, Role.GUEST, Capability.DMA_MESSAGES, auth=auth_tag(SECRET, nonce))
    await ch.send(wire.hello(future))
    code, message = await expect_error(ch)
    assert code == ErrorCode.VERSION and "protocol version 2" in message


async def _abuse_after_handshake(t: Target) -> None:
    ch = await t.channel()
    session = await t.handshake(ch)
    assert session.mode is (MemoryMode.SHARED if t.link == "unix" else MemoryMode.DMA)
    # A well-formed read first: the connection works ...
    await ch.send(wire.access(MsgType.MMIO_READ, 1, MMIO_BASE + MMIO_OFFSETS["MagicValue"], 4))
    assert wire.parse_read_reply(await ch.receive()) == MMIO.magic
    # ... then a frame a guest must never send.
    await ch.send(wire.read_reply(9, 0))
    code, message = await expect_error(ch)
    assert code == ErrorCode.UNSUPPORTED and "unexpected READ_REPLY" in message
    # A bad access size.
    ch = await t.channel()
    await t.handshake(ch)
    await ch.send(wire.Frame(MsgType.MMIO_WRITE, 0, wire._ACCESS.pack(0, 3, b"", 0)))
    code, message = await expect_error(ch)
    assert code == ErrorCode.PROTOCOL and "access size" in message
    # A DMA_REPLY nobody asked for.
    ch = await t.channel()
    await t.handshake(ch)
    await ch.send(wire.dma_reply(77, wire.DMA_OK, b"x"))
    code, message = await expect_error(ch)
    if t.link == "tcp":
        assert code == ErrorCode.PROTOCOL and "unknown request 77" in message
    else:  # shared RAM: there is no DMA on this connection at all
        assert code == ErrorCode.UNSUPPORTED and "unexpected DMA_REPLY" in message


@LINKS
async def test_malformed_frames_are_refused_and_the_host_serves_on(tmp_path: Path, link: str) -> None:
    """Garbage, truncated frames, oversized lengths, wrong versions and frames out of place,
    before and after the handshake: each gets an ERROR with its code and a hang-up. Other
    connections (they all run at once here) are unaffected, and a real guest then runs."""
    with trio.fail_after(30):
        async with target(tmp_path, link) as t:
            async with trio.open_nursery() as n:
                for abuse in (
                    _abuse_garbage,
                    _abuse_truncated,
                    _abuse_oversized,
                    _abuse_versions,
                    _abuse_after_handshake,
                ):
                    n.start_soon(abuse, t)
            ended = await t.h.ended(9)
            assert len(ended) == 9 and all(e["end"] in ("error", "refused") for e in ended)
            await t.still_serves()


@LINKS
async def test_wrong_or_missing_secret(tmp_path: Path, link: str) -> None:
    with trio.fail_after(30):
        async with target(tmp_path, link) as t:
            ch = await t.channel()
            with pytest.raises(HandshakeError, match="wrong shared secret"):
                await guest_handshake(ch, secret=b"guess", can_take_fds=False)
            # A replayed answer to an old challenge is no better than a guess.
            ch = await t.channel()
            old_nonce = wire.parse_hello(await _first_frame(ch)).nonce
            ch2 = await t.channel()
            await _first_frame(ch2)
            replay = Hello(
                PROTOCOL_VERSION, Role.GUEST, Capability.DMA_MESSAGES, auth=auth_tag(SECRET, old_nonce)
            )
            await ch2.send(wire.hello(replay))
            code, message = await expect_error(ch2)
            assert code == ErrorCode.AUTH and "wrong shared secret" in message
            await ch.aclose()
            # The guest command without the secret says what is missing.
            g = await run_guest(t.h.address, "--workload", "rng")
            assert g.proc.returncode == 1
            assert "requires a shared secret" in g.stderr
            ended = [e for e in t.h.events() if e["event"] == "guest-ended"]
            assert [e["end"] for e in ended].count("refused") >= 2
            await t.still_serves()


async def _stall_mid_frame(t: Target) -> None:
    ch = await t.channel()
    await t.handshake(ch)
    write = wire.access(MsgType.MMIO_WRITE, 0, MMIO_BASE, 4, 0).encode()
    await ch.send_raw(write[: HEADER_SIZE + 3])  # ... and then nothing
    code, message = await expect_error(ch, timeout=5)
    assert code == ErrorCode.TIMEOUT and "incomplete" in message


async def _never_say_hello(t: Target) -> None:
    ch = await t.channel()
    code, message = await expect_error(ch, timeout=5)  # we never answer the HELLO
    assert code == ErrorCode.TIMEOUT and "no handshake" in message


async def _regs(ch: SocketFrameChannel, writes: list[tuple[str, int]]) -> None:
    for reg, value in writes:
        await ch.send(wire.access(MsgType.MMIO_WRITE, 0, MMIO_BASE + MMIO_OFFSETS[reg], 4, value))


async def _never_answer_dma(t: Target) -> None:
    """Over TCP a device waits for the guest's DMA_REPLY; a guest that stays silent is
    dropped after the timeout instead of holding the device (and a host thread) forever."""
    ch = await t.channel()
    assert (await t.handshake(ch)).mode is MemoryMode.DMA
    ring = 0x100000
    await _regs(
        ch,
        [
            ("QueueSel", 0),
            ("QueueSize", 16),
            ("QueueDescLow", ring),
            ("QueueDriverLow", ring + 0x1000),
            ("QueueDeviceLow", ring + 0x2000),
            ("QueueReady", 1),
            ("QueueNotify", 0),  # the device now reads the avail ring over DMA
        ],
    )
    seen = []
    while True:
        frame = await ch.receive()
        seen.append(frame.type)
        if frame.type is MsgType.ERROR:
            code, message = wire.parse_error(frame)
            break
    assert MsgType.DMA_READ in seen  # which we ignore
    assert code == ErrorCode.TIMEOUT and "did not answer a DMA read" in message


async def test_stalling_peers_are_dropped_after_their_timeout(tmp_path: Path) -> None:
    """A frame that stops halfway, a client that never says HELLO, a guest that never
    answers a DMA read: each is dropped with ERROR(TIMEOUT); nothing waits forever."""
    with trio.fail_after(30):
        async with target(tmp_path, "tcp") as t:
            async with trio.open_nursery() as n:
                for stall in (_stall_mid_frame, _never_say_hello, _never_answer_dma):
                    n.start_soon(stall, t)
            await t.still_serves()


@LINKS
async def test_posted_writes_are_ordered_with_later_reads(tmp_path: Path, link: str) -> None:
    """Writes are posted (no reply) and a read sent right behind them sees all of them."""
    with trio.fail_after(30):
        async with target(tmp_path, link) as t:
            ch = await t.channel()
            await t.handshake(ch)
            features = []
            for sel in (0, 1, 0, 1):
                await _regs(ch, [("DeviceFeaturesSel", sel)])
                await ch.send(
                    wire.access(MsgType.MMIO_READ, sel + 10, MMIO_BASE + MMIO_OFFSETS["DeviceFeatures"], 4)
                )
            await _regs(ch, [("Status", 1), ("Status", 3)])
            await ch.send(wire.access(MsgType.MMIO_READ, 20, MMIO_BASE + MMIO_OFFSETS["Status"], 4))
            replies = []
            while len(replies) < 5:
                frame = await ch.receive()
                assert frame.type is MsgType.READ_REPLY  # writes produced no replies
                replies.append((frame.seq, wire.parse_read_reply(frame)))
            features = [v for seq, v in replies[:4]]
            assert [seq for seq, _ in replies] == [10, 11, 10, 11, 20]
            assert features[0] == features[2] and features[1] == features[3]
            assert features[1] >> (F.VERSION_1 - 32) & 1  # VERSION_1 is in the high word
            assert replies[4][1] == 3
            await ch.send(wire.bye())
            await t.still_serves()


async def test_connection_limit(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with target(tmp_path, "unix", "--max-guests", "2") as t:
            held = [await t.channel() for _ in range(2)]
            for ch in held:
                await t.handshake(ch)
            third = await t.channel()
            code, message = await expect_error(third)
            assert code == ErrorCode.BUSY and "already serves 2 guests" in message
            for ch in held:
                await ch.send(wire.bye())
                await ch.aclose()
            await t.h.wait_for(lambda: sum(e["event"] == "guest-ended" for e in t.h.events()) >= 3)
            await t.still_serves()


# --------------------------------------------------------------------------- hostile host


def _host_hello(version: int = PROTOCOL_VERSION, ram: int = 16 << 20) -> wire.Frame:
    caps = Capability.DMA_MESSAGES | Capability.LINE_IRQ
    return wire.hello(Hello(version, Role.HOST, caps, ram_size=ram, cmdline=""))


HOSTILE_HOSTS = {
    "garbage": ([b"\x00" * 64], 1, "malformed frame from the host"),
    "future version": ([_host_hello(version=9).encode()], 1, "protocol version 9"),
    "shared RAM without an fd": (
        [
            _host_hello().encode(),
            wire.mem_region(0, 16 << 20, 0, MemRegionFlag.SHARED_FD | MemRegionFlag.LAST).encode(),
        ],
        1,
        "arrived without an fd",
    ),
    "RAM where no kernel can boot": (
        [
            _host_hello().encode(),
            wire.mem_region(1 << 31, 16 << 20, 0, MemRegionFlag.LAST).encode(),
        ],
        1,
        "cannot boot",
    ),
    "regions that do not add up": (
        [_host_hello().encode(), wire.mem_region(0, 1 << 20, 0, MemRegionFlag.LAST).encode()],
        1,
        "add up to",
    ),
    "hangs up in the handshake": ([_host_hello().encode()], 3, "closed the connection"),
}


async def _hostile_host_case(case: str) -> None:
    frames, status, message = HOSTILE_HOSTS[case]
    listener = await open_listener(UnixAddress(None))
    try:
        async with trio.open_nursery() as n:

            async def serve_once() -> None:
                stream = await listener.accept()
                ch = SocketFrameChannel(stream)
                for raw in frames:
                    await ch.send_raw(raw)
                if status == 3:
                    await ch.aclose()
                    return
                with trio.move_on_after(10):  # wait for the guest to hang up
                    try:
                        while True:
                            await ch.receive()
                    except (trio.EndOfChannel, wire.WireError):
                        pass

            n.start_soon(serve_once)
            g = await run_guest(str(listener.address), "--workload", "rng", timeout=20)
            n.cancel_scope.cancel()
    finally:
        await listener.aclose()
    assert g.proc.returncode == status, (case, g.stderr)
    assert message in g.stderr, (case, g.stderr)
    assert "Traceback" not in g.stderr, (case, g.stderr)


async def test_guest_process_against_hostile_hosts() -> None:
    """The guest is as careful as the host: a broken host gets a clear message and a
    non-zero status, never a traceback or a hang (one guest process per case, at once)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for case in HOSTILE_HOSTS:
                n.start_soon(_hostile_host_case, case)
