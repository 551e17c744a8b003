"""The connection handshake between a host process and a guest process.

::

    guest                                   host
      | ------------- connect -------------> |
      | <-- HELLO(version, caps, RAM size,   |
      |           kernel cmdline, nonce) --- |
      | --- HELLO(version, caps,             |
      |           HMAC(secret, nonce)) ----> |  checks version, secret, memory mode
      | <-- MEM_REGION ... MEM_REGION(LAST)  |  first one carries the memfd (SCM_RIGHTS)
      | ====== register traffic ============ |

The host speaks first so that the guest learns the boot information (RAM size, the
kernel command line naming the virtio-mmio transports) and the challenge in one frame.
Any refusal is an ERROR frame with an :class:`~virtio_sim.wire.ErrorCode` and the end of
the connection; both sides raise :class:`HandshakeError` with the same code.

Guest RAM travels in one of two ways, chosen by the host from both sides' capabilities:

* ``shared``: the regions live in the host's memfd, passed with the first MEM_REGION;
  the guest maps it and both sides touch the same pages (Unix sockets only).
* ``dma``: the guest backs the regions with its own private memory and the host reaches
  them with DMA_READ / DMA_WRITE frames (TCP, or a Unix peer that cannot take an fd).

Authentication: when the host has a shared secret it sets AUTH_REQUIRED and the guest
must answer ``HMAC-SHA256(secret, AUTH_CONTEXT + nonce)``; the nonce is fresh per
connection, so a recorded answer is useless. This authenticates the guest only; it does
not encrypt anything (TCP therefore listens on loopback unless told otherwise).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from typing import Protocol

from virtio_sim import wire
from virtio_sim.memory import GuestMemory, MemoryAccessError, MemoryRegion, SharedMemoryObject
from virtio_sim.spec import LIMITS
from virtio_sim.wire import (
    AUTH_TAG_SIZE,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Capability,
    ErrorCode,
    FrameChannel,
    Hello,
    MemRegionFlag,
    MsgType,
    Role,
)

HANDSHAKE_TIMEOUT = LIMITS.host.handshake_deadline_ms / 1000  # accept -> authenticated
AUTH_CONTEXT = b"virtio-sim guest auth v1\0"
MAX_REGIONS = LIMITS.wire.max_memory_regions
MAX_GUEST_RAM = LIMITS.wire.max_guest_ram  # a larger RAM size in a HELLO is a broken or hostile host


class MemoryMode(enum.StrEnum):
    SHARED = "shared"
    DMA = "dma"


class HandshakeError(Exception):
    """A refused handshake; ``detail`` is the peer's own words when it sent an ERROR."""

    def __init__(self, message: str, code: ErrorCode, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail if detail is not None else message


class FdChannel(FrameChannel, Protocol):
    """A frame channel that can pass file descriptors (a Unix socket)."""

    async def send_with_fds(self, frame: wire.Frame, fds: list[int]) -> None: ...

    def take_fd(self) -> int | None: ...


def auth_tag(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, AUTH_CONTEXT + nonce, hashlib.sha256).digest()


async def _expect(channel: FrameChannel, wanted: MsgType, who: str) -> wire.Frame:
    frame = await channel.receive()
    if frame.type is MsgType.ERROR:
        code, message = wire.parse_error(frame)
        try:
            err = ErrorCode(code)
        except ValueError:
            err = ErrorCode.PROTOCOL
        raise HandshakeError(f"{who} refused the connection: {message}", err, message)
    if frame.type is not wanted:
        raise HandshakeError(
            f"expected {wanted.name} from the {who}, got {frame.type.name}", ErrorCode.PROTOCOL
        )
    return frame


def _check_version(h: Hello, who: str) -> None:
    if h.version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"{who} speaks protocol version {h.version}, this side speaks {PROTOCOL_VERSION}",
            ErrorCode.VERSION,
        )


# --------------------------------------------------------------------------- host


@dataclass
class HostHello:
    """What the host says before the guest authenticated: nothing that costs a machine.

    ``cmdline`` and ``ram_size`` come from the host's plan (its trial build), so a
    connection is authenticated before anything is built, allocated or locked for it.
    """

    ram_size: int
    cmdline: str
    can_share: bool  # the guest-RAM memfd can be passed (Unix socket, shared memory allowed)
    secret: bytes | None = None
    name: str = "virtio-sim host"
    force_mode: MemoryMode | None = None


@dataclass
class HostOffer:
    """What the host tells a guest at the handshake (all of it, machine already built)."""

    ram_size: int
    cmdline: str
    regions: list[MemoryRegion]
    shared_fd: int | None  # the guest-RAM memfd, when it may be shared (Unix socket)
    secret: bytes | None = None
    name: str = "virtio-sim host"
    force_mode: MemoryMode | None = None

    def hello(self) -> HostHello:
        return HostHello(
            self.ram_size, self.cmdline, self.shared_fd is not None, self.secret, self.name, self.force_mode
        )


async def host_handshake(channel: FrameChannel, offer: HostOffer) -> tuple[Hello, MemoryMode]:
    """Run the host side in one go; returns the guest's HELLO and the memory mode in force.

    Raises HandshakeError or WireError (the caller answers with an ERROR frame). The host
    process runs the steps apart (:func:`host_authenticate`, then it builds the machine,
    then :func:`host_send_regions`) so that nothing is built for an unauthenticated peer.
    """
    hello = offer.hello()
    guest = await host_authenticate(channel, hello)
    mode = pick_mode(hello, guest.capabilities)
    await host_send_regions(channel, offer.regions, mode, offer.shared_fd)
    return guest, mode


async def host_authenticate(channel: FrameChannel, offer: HostHello) -> Hello:
    """Send the host's HELLO with a fresh challenge; return the guest's checked HELLO.

    Checks version, role, capability bits and (with a secret) the HMAC answer. Raises
    HandshakeError or WireError.
    """
    nonce = secrets.token_bytes(NONCE_SIZE)
    caps = Capability.DMA_MESSAGES | Capability.LINE_IRQ
    if offer.can_share:
        caps |= Capability.SHARED_MEMORY_FD
    if offer.secret is not None:
        caps |= Capability.AUTH_REQUIRED
    await channel.send(
        wire.hello(
            Hello(
                PROTOCOL_VERSION,
                Role.HOST,
                caps,
                ram_size=offer.ram_size,
                nonce=nonce,
                name=offer.name,
                cmdline=offer.cmdline,
            )
        )
    )
    guest = wire.parse_hello(await _expect(channel, MsgType.HELLO, "guest"))
    _check_version(guest, "the guest")
    if guest.role is not Role.GUEST:
        raise HandshakeError("the peer says it is not a guest", ErrorCode.PROTOCOL)
    if offer.secret is not None and not hmac.compare_digest(guest.auth, auth_tag(offer.secret, nonce)):
        raise HandshakeError("authentication failed: wrong shared secret", ErrorCode.AUTH)
    check_capabilities(guest.capabilities, Role.GUEST)
    return guest


def check_capabilities(caps: int, role: Role) -> None:
    """Refuse capability bits the sender's role may not claim, or that no version-1 peer
    defines (docs/wire-protocol.md, HELLO). A guest claiming AUTH_REQUIRED, or a host
    claiming BIG_ENDIAN, is broken or hostile: its other bits cannot be trusted either."""
    unknown = caps & ~int(Capability.all_known())
    if unknown:
        raise HandshakeError(
            f"the {role.name.lower()}'s HELLO sets capability bits 0x{unknown:x} that protocol "
            f"version {PROTOCOL_VERSION} does not define",
            ErrorCode.PROTOCOL,
        )
    other = Capability.host_only() if role is Role.GUEST else Capability.guest_only()
    wrong = Capability(caps) & other
    if wrong:
        names = ", ".join(flag.name or str(flag.value) for flag in Capability if flag & wrong)
        owner = "host" if role is Role.GUEST else "guest"
        raise HandshakeError(
            f"the {role.name.lower()} claims {owner}-only capability {names}", ErrorCode.PROTOCOL
        )


async def host_send_regions(
    channel: FrameChannel, regions: list[MemoryRegion], mode: MemoryMode, shared_fd: int | None
) -> None:
    """The MEM_REGION frames that end the handshake; the first carries the memfd (shared)."""
    for i, r in enumerate(regions):
        flags = MemRegionFlag(0)
        if i == len(regions) - 1:
            flags |= MemRegionFlag.LAST
        if mode is MemoryMode.SHARED:
            flags |= MemRegionFlag.SHARED_FD
        frame = wire.mem_region(r.gpa, r.size, r.offset, flags)
        if mode is MemoryMode.SHARED and i == 0:
            assert shared_fd is not None
            await _fd_channel(channel).send_with_fds(frame, [shared_fd])
        else:
            await channel.send(frame)


def pick_mode(offer: HostHello, guest_caps: Capability) -> MemoryMode:
    """The memory mode from the host's offer and the guest's capabilities."""
    can_share = offer.can_share and guest_caps & Capability.SHARED_MEMORY_FD
    can_dma = bool(guest_caps & Capability.DMA_MESSAGES)
    if offer.force_mode is MemoryMode.SHARED and not can_share:
        raise HandshakeError(
            "this host only shares guest RAM (--memory shared) and the guest cannot map it",
            ErrorCode.UNSUPPORTED,
        )
    if offer.force_mode is MemoryMode.DMA or not can_share:
        if not can_dma:
            raise HandshakeError(
                "no common way to reach guest RAM (guest has neither a shared map nor DMA)",
                ErrorCode.UNSUPPORTED,
            )
        return MemoryMode.DMA
    return MemoryMode.SHARED


def _fd_channel(channel: FrameChannel) -> FdChannel:
    if not hasattr(channel, "send_with_fds"):
        raise HandshakeError("this channel cannot pass file descriptors", ErrorCode.INTERNAL)
    return channel  # type: ignore[return-value]


# --------------------------------------------------------------------------- guest


@dataclass
class HostSession:
    """What the guest learned at the handshake."""

    hello: Hello
    mode: MemoryMode
    regions: list[MemoryRegion]
    fd: int | None  # the shared RAM object (mode shared); the guest owns it

    @property
    def ram_size(self) -> int:
        return self.hello.ram_size

    @property
    def cmdline(self) -> str:
        return self.hello.cmdline


async def guest_handshake(
    channel: FrameChannel,
    *,
    secret: bytes | None,
    can_take_fds: bool,
    name: str = "virtio-sim guest",
    big_endian: bool = False,
) -> HostSession:
    """Run the guest side. Raises HandshakeError (with the host's code) or WireError."""
    host = wire.parse_hello(await _expect(channel, MsgType.HELLO, "host"))
    _check_version(host, "the host")
    if host.role is not Role.HOST:
        raise HandshakeError("the peer says it is not a host", ErrorCode.PROTOCOL)
    check_capabilities(host.capabilities, Role.HOST)
    if not 0 < host.ram_size <= MAX_GUEST_RAM:
        raise HandshakeError(f"host announced {host.ram_size} bytes of RAM", ErrorCode.PROTOCOL)
    if host.capabilities & Capability.AUTH_REQUIRED and secret is None:
        await _send_quietly(channel, wire.error(ErrorCode.AUTH, "guest has no shared secret"))
        raise HandshakeError(
            "the host requires a shared secret (--secret-file or VIRTIO_SIM_SECRET)",
            ErrorCode.AUTH,
        )
    tag = auth_tag(secret, host.nonce) if secret is not None else bytes(AUTH_TAG_SIZE)
    caps = Capability.DMA_MESSAGES | Capability.LINE_IRQ
    if can_take_fds:
        caps |= Capability.SHARED_MEMORY_FD
    if big_endian:
        caps |= Capability.BIG_ENDIAN
    await channel.send(wire.hello(Hello(PROTOCOL_VERSION, Role.GUEST, caps, auth=tag, name=name)))
    regions: list[MemoryRegion] = []
    fd: int | None = None
    mode: MemoryMode | None = None
    try:
        while True:
            frame = await _expect(channel, MsgType.MEM_REGION, "host")
            gpa, size, offset, flags = wire.parse_mem_region(frame)
            this_mode = MemoryMode.SHARED if flags & MemRegionFlag.SHARED_FD else MemoryMode.DMA
            if mode is not None and this_mode is not mode:
                raise HandshakeError("MEM_REGION frames mix shared and DMA memory", ErrorCode.PROTOCOL)
            mode = this_mode
            if mode is MemoryMode.SHARED and fd is None:
                if not can_take_fds:
                    raise HandshakeError("host shares memory over a channel without fds", ErrorCode.PROTOCOL)
                fd = _fd_channel(channel).take_fd()
                if fd is None:
                    raise HandshakeError("MEM_REGION(SHARED_FD) arrived without an fd", ErrorCode.PROTOCOL)
            regions.append(MemoryRegion(gpa, size, offset))
            if len(regions) > MAX_REGIONS:
                raise HandshakeError(f"more than {MAX_REGIONS} memory regions", ErrorCode.PROTOCOL)
            if flags & MemRegionFlag.LAST:
                break
        assert mode is not None
        _check_regions(regions, host.ram_size)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return HostSession(host, mode, regions, fd)


def _check_regions(regions: list[MemoryRegion], ram_size: int) -> None:
    total = sum(r.size for r in regions)
    if total != ram_size:
        raise HandshakeError(
            f"memory regions add up to {total} bytes, HELLO announced {ram_size}",
            ErrorCode.PROTOCOL,
        )
    if any(r.size <= 0 or r.offset < 0 or r.offset + r.size > MAX_GUEST_RAM for r in regions):
        raise HandshakeError("a memory region is empty or out of range", ErrorCode.PROTOCOL)


def session_memory(session: HostSession) -> GuestMemory:
    """Guest RAM as the handshake described it: the host's map, or private memory."""
    extent = max(r.offset + r.size for r in session.regions)
    try:
        if session.mode is MemoryMode.SHARED:
            assert session.fd is not None
            if not stat.S_ISREG(os.fstat(session.fd).st_mode):
                raise HandshakeError("the shared memory fd is not a memory file", ErrorCode.PROTOCOL)
            backing = SharedMemoryObject.attach(session.fd, extent)
        else:
            backing = SharedMemoryObject.create_memfd(extent, "virtio-sim-guest-private-ram")
    except (OSError, MemoryAccessError, ValueError) as e:
        if session.fd is not None:
            with contextlib.suppress(OSError):
                os.close(session.fd)
        raise HandshakeError(f"cannot map guest RAM: {e}", ErrorCode.PROTOCOL) from None
    try:
        return GuestMemory(backing, session.regions)
    except ValueError as e:
        backing.close()
        raise HandshakeError(f"bad memory layout: {e}", ErrorCode.PROTOCOL) from None


async def _send_quietly(channel: FrameChannel, frame: wire.Frame) -> None:
    with contextlib.suppress(Exception):
        await channel.send(frame)
