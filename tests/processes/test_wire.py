"""The pieces under the process mode: handshake frames, the socket channel, fd passing,
addresses, listener safety, and the CLI's refusals (exit status 2)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.processes import CLI, ROOT
from virtio_sim import wire
from virtio_sim.guest.link import HostLink
from virtio_sim.handshake import (
    HandshakeError,
    HostOffer,
    MemoryMode,
    guest_handshake,
    host_handshake,
    session_memory,
)
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.server import serve
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration import cli
from virtio_sim.sockets import (
    AddressError,
    ListenError,
    SocketFrameChannel,
    TcpAddress,
    UnixAddress,
    open_listener,
    parse_address,
)
from virtio_sim.wire import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Capability,
    ErrorCode,
    Hello,
    MemRegionFlag,
    MsgType,
    Role,
    WireError,
)


def test_handshake_frames_round_trip() -> None:
    h = Hello(
        PROTOCOL_VERSION,
        Role.HOST,
        Capability.SHARED_MEMORY_FD | Capability.AUTH_REQUIRED,
        ram_size=64 << 20,
        nonce=bytes(range(32)),
        name="h",
        cmdline="virtio_mmio.device=0x200@0x1:5",
    )
    assert wire.parse_hello(wire.decode(wire.hello(h).encode())) == h
    f = wire.decode(wire.mem_region(0, 1 << 20, 4096, MemRegionFlag.LAST).encode())
    assert wire.parse_mem_region(f) == (0, 1 << 20, 4096, MemRegionFlag.LAST)
    f = wire.decode(wire.dma_read(7, 0x1000, 64).encode())
    assert (f.seq, wire.parse_dma_read(f)) == (7, (0x1000, 64))
    assert wire.parse_dma_write(wire.decode(wire.dma_write(0x2000, b"abc").encode())) == (
        0x2000,
        b"abc",
    )
    f = wire.decode(wire.dma_reply(7, ErrorCode.DMA, b"no").encode())
    assert wire.parse_dma_reply(f) == (ErrorCode.DMA, b"no")


@pytest.mark.parametrize(
    "frame, message",
    [
        (wire.Frame(MsgType.HELLO, 0, b"\x01\x00\x02"), "malformed HELLO"),
        (wire.mem_region(0, 1, 0, MemRegionFlag(0x80)), "unknown flags"),
        (wire.dma_read(0, 0, wire.MAX_DMA_CHUNK + 1), "chunk limit"),
    ],
)
def test_malformed_handshake_and_dma_payloads(frame: wire.Frame, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse = {
            MsgType.HELLO: wire.parse_hello,
            MsgType.MEM_REGION: wire.parse_mem_region,
            MsgType.DMA_READ: wire.parse_dma_read,
        }[frame.type]
        parse(wire.decode(frame.encode()))


def test_short_dma_frames_are_rejected_by_the_header() -> None:
    raw = wire._HEADER.pack(wire.PROTOCOL_MAGIC, PROTOCOL_VERSION, MsgType.DMA_WRITE, 0, 3) + b"abc"
    with pytest.raises(WireError, match="at least 8 bytes"):
        wire.decode(raw)


@settings(deadline=None, max_examples=200)
@given(st.sampled_from(list(MsgType)), st.binary(max_size=200))
def test_any_payload_parses_or_raises_wire_error(mtype: MsgType, payload: bytes) -> None:
    parsers = {
        MsgType.HELLO: wire.parse_hello,
        MsgType.MEM_REGION: wire.parse_mem_region,
        MsgType.DMA_READ: wire.parse_dma_read,
        MsgType.DMA_WRITE: wire.parse_dma_write,
        MsgType.DMA_REPLY: wire.parse_dma_reply,
        MsgType.ERROR: wire.parse_error,
        MsgType.IRQ: wire.parse_irq,
        MsgType.MMIO_WRITE: wire.parse_access,
    }
    raw = wire._HEADER.pack(wire.PROTOCOL_MAGIC, PROTOCOL_VERSION, mtype, 0, len(payload)) + payload
    try:
        frame = wire.decode(raw)
        parser = parsers.get(frame.type)
        if parser is not None:
            parser(frame)
    except WireError:
        pass


# --------------------------------------------------------------------------- channel


def _pair() -> tuple[SocketFrameChannel, SocketFrameChannel]:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return (
        SocketFrameChannel(trio.SocketStream(a), frame_timeout=0.5),
        SocketFrameChannel(trio.SocketStream(b), accept_fds=True, frame_timeout=0.5),
    )


async def test_socket_channel_carries_frames_and_passes_guest_ram() -> None:
    with trio.fail_after(10):
        host_end, guest_end = _pair()
        memory = GuestMemory.create(4 << 20)
        memory.write(0x1234, b"shared!")
        offer = HostOffer(4 << 20, "cmdline", memory.regions, memory.backing.fd)
        async with trio.open_nursery() as n:
            got: list[MemoryMode] = []

            async def host_side() -> None:
                got.append((await host_handshake(host_end, offer))[1])

            n.start_soon(host_side)
            session = await guest_handshake(guest_end, secret=None, can_take_fds=True)
        assert got == [MemoryMode.SHARED] and session.mode is MemoryMode.SHARED
        assert session.cmdline == "cmdline" and session.ram_size == 4 << 20
        assert session.fd is not None and session.fd != memory.backing.fd
        mapped = session_memory(session)
        # Both sides see the very same pages.
        assert mapped.read(0x1234, 7) == b"shared!"
        mapped.write(0x2000, b"from the guest")
        assert memory.read(0x2000, 14) == b"from the guest"
        mapped.close()
        memory.close()
        await host_end.aclose()
        with pytest.raises(trio.EndOfChannel):
            await guest_end.receive()


async def test_socket_channel_truncation_and_stall() -> None:
    with trio.fail_after(10):
        a, b = _pair()
        frame = wire.access(MsgType.MMIO_WRITE, 0, 0x10, 4, 1).encode()
        await a.send_raw(frame[: HEADER_SIZE + 4])
        with pytest.raises(WireError, match=r"incomplete after 0\.5s") as e:
            await b.receive()
        assert e.value.code is ErrorCode.TIMEOUT
        a, b = _pair()
        await a.send_raw(frame[:5])
        await a.aclose()
        with pytest.raises(WireError, match="truncated frame"):
            await b.receive()


async def test_handshake_refusals() -> None:
    with trio.fail_after(10):
        memory = GuestMemory.create(4 << 20)
        for guest_secret, where in ((b"guess", "host"), (None, "guest")):
            host_end, guest_end = _pair()
            offer = HostOffer(4 << 20, "", memory.regions, None, secret=b"key")
            host_errors: list[HandshakeError] = []

            async def host_side() -> None:
                try:
                    await host_handshake(host_end, offer)  # noqa: B023
                except HandshakeError as err:
                    host_errors.append(err)  # noqa: B023
                    # What the host process does: answer with ERROR, then hang up.
                    await host_end.send(wire.error(err.code, str(err)))  # noqa: B023
                await host_end.aclose()  # noqa: B023

            async with trio.open_nursery() as n:
                n.start_soon(host_side)
                with pytest.raises(HandshakeError) as e:
                    await guest_handshake(guest_end, secret=guest_secret, can_take_fds=False)
            assert e.value.code is ErrorCode.AUTH
            assert host_errors and host_errors[0].code is ErrorCode.AUTH
            if where == "host":  # the host judged the answer
                assert "wrong shared secret" in str(e.value)
            else:  # the guest knew it had nothing to answer with, and told the host
                assert "requires a shared secret" in str(e.value)
                assert "guest has no shared secret" in str(host_errors[0])
        memory.close()


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "text, listen, expect",
    [
        ("unix:/run/x.sock", False, UnixAddress("/run/x.sock")),
        ("unix:", True, UnixAddress(None)),
        ("tcp::0", True, TcpAddress("127.0.0.1", 0)),
        ("tcp:0.0.0.0:5000", True, TcpAddress("0.0.0.0", 5000)),
        ("tcp:[::1]:7", False, TcpAddress("::1", 7)),
    ],
)
def test_parse_address(text: str, listen: bool, expect: object) -> None:
    assert parse_address(text, listen=listen) == expect


async def test_listening_never_changes_the_process_umask(tmp_path: Path) -> None:
    """The umask is the whole process's, and bind() awaits: a listener that narrowed it
    around the bind left it narrowed when two listeners opened at once (A saves 022, B
    saves A's 177, A restores 022, B restores 177). Every file any thread created later
    was then 0600 and every directory 0600: chromium, started by a later test, died on
    SIGTRAP in its own profile directory. The socket is private because its directory
    is (0700, ours, checked), and is chmod-ed 0600 after the bind."""
    before = os.umask(0o022)
    try:
        listeners = []

        async def one(i: int) -> None:
            listeners.append(await open_listener(UnixAddress(str(tmp_path / f"d{i}" / "h.sock"))))

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
        now = os.umask(0o022)
        assert oct(now) == oct(0o022)
        for lst in listeners:
            assert isinstance(lst.address, UnixAddress) and lst.address.path is not None
            assert stat.S_IMODE(os.stat(lst.address.path).st_mode) == 0o600
            await lst.aclose()
    finally:
        os.umask(before)


@pytest.mark.parametrize("text", ["unix:", "tcp:host", "tcp:h:99999", "tcp:h:0", "udp:x:1", "x"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text, listen=False)


async def test_listener_is_private_and_cleans_up(tmp_path: Path) -> None:
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir()
    shared_dir.chmod(0o755)  # others may enter: no place for a socket
    with pytest.raises(ListenError, match="accessible by other users"):
        await open_listener(UnixAddress(str(shared_dir / "h.sock")))
    assert not (shared_dir / "h.sock").exists()
    fresh = tmp_path / "new" / "deeper" / "h.sock"
    lst = await open_listener(UnixAddress(str(fresh)))
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    with pytest.raises(ListenError, match="already listening"):
        await open_listener(UnixAddress(str(fresh)))
    await lst.aclose()
    assert not fresh.exists() and not fresh.parent.exists()
    # A stale socket left by a killed host is replaced.
    private = tmp_path / "p"
    private.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(private / "h.sock"))
    stale.close()
    lst = await open_listener(UnixAddress(str(private / "h.sock")))
    await lst.aclose()
    assert private.exists()  # not ours to remove
    tcp = await open_listener(parse_address("tcp::0", listen=True))
    assert isinstance(tcp.address, TcpAddress) and tcp.address.host == "127.0.0.1"
    await tcp.aclose()


async def test_a_socket_directory_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """Whoever owns a symlink on the way decides where the socket lands (and can repoint
    it between our checks and bind()): the host refuses and names the real directory."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    for path in (tmp_path / "link" / "h.sock", tmp_path / "link" / "new" / "h.sock"):
        with pytest.raises(ListenError, match=f"goes through a symbolic link .*{real}"):
            await open_listener(UnixAddress(str(path)))
    assert list(real.iterdir()) == []  # nothing created behind the link


# --------------------------------------------------------------------------- CLI refusals


RNG = "-device virtio-rng-device"
REFUSALS = [
    (f"host --listen unix: -M pc {RNG}", "unsupported machine type 'pc'"),
    (f"host --listen unix: -M microvm,smm=on {RNG}", "Property 'microvm-machine.smm' not found"),
    (f"host --listen unix: -M microvm,iommu=intel {RNG}", "doesn't take value 'intel'"),
    (f"host --listen unix: {RNG} -global virtio-rng-device.nope=1", "'virtio-rng-device.nope' not"),
    ("host --listen unix: -device virtio-gpu-device", "not a valid device model name"),
    (
        f"host --listen unix: {RNG} -global virtio-mmio.force-legacy=maybe",
        "'force-legacy' expects 'on' or 'off'",
    ),
    (f"host --listen tcp::0 {RNG}", "needs a shared secret"),
    (f"host --listen tcp::0 --secret x --memory shared {RNG}", "cannot be shared over TCP"),
    (f"host --listen unix:/tmp/x.sock {RNG}", "accessible by other users"),
    (f"host --listen sctp:1 {RNG}", "must be unix:PATH or tcp:HOST:PORT"),
    ("host --listen unix:", "no -device given"),
    ("guest --connect unix:/x --workload nope", "unknown workload 'nope'"),
    ("guest --connect unix:/x --workload rng --driver linux-9.9", "no such profile"),
    (f"run {RNG.replace('-device', '--device')} --workload rng --link tcp", "--link needs"),
]


@pytest.mark.parametrize("args, message", REFUSALS)
def test_cli_refuses_with_status_2(args: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Refusals happen before anything runs, so the CLI's main() is called in-process.
    assert cli.main(args.split()) == 2
    assert message in capsys.readouterr().err


def test_the_real_command_exits_2() -> None:
    p = subprocess.run(
        [*CLI, *f"host --listen unix: -M pc {RNG}".split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "unsupported machine type 'pc'" in p.stderr
    assert '"event": "refused"' in p.stdout  # machine-readable for a supervising program


def test_secret_file_must_be_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    os.chmod(secret, 0o644)
    args = ["guest", "--connect", "unix:/x", "--workload", "rng", "--secret-file", str(secret)]
    assert cli.main(args) == 2
    assert "readable by others" in capsys.readouterr().err


def test_machine_help_lists_microvm(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["host", "--listen", "unix:", "-M", "help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Supported machines are:" and lines[1].startswith("microvm")


async def test_an_interrupt_raised_between_guest_accesses_is_sent_at_once() -> None:
    """Device work a backend starts on its own (console input, a frame from the network)
    can raise an interrupt while the guest is idle; the host sends it without waiting for
    the guest's next access."""
    setup = build_host(HostConfig(devices=["virtio-rng-device"], seed=1))
    try:
        host_end, guest_end = wire.memory_link()
        link = HostLink(guest_end)
        seen: list[tuple[wire.IrqKind, int, int]] = []
        got = trio.Event()

        def on_irq(kind: wire.IrqKind, line: int, value: int) -> None:
            seen.append((kind, line, value))
            got.set()

        link.irq_handler = on_irq
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                n.start_soon(serve, host_end, setup.machine)
                n.start_soon(link.run)
                await trio.sleep(0.05)
                slot = setup.machine.slots[0]
                setup.machine.irq_out(slot.irq, True)  # as a backend's input would
                await got.wait()
                n.cancel_scope.cancel()
        assert seen == [(wire.IrqKind.LINE_LEVEL, slot.irq, 1)]
    finally:
        setup.close()
