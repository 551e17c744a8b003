"""Framed host<->guest messages and the channels that carry them.

Host and guest exchange nothing but these frames: a guest register access is an MMIO_READ
(answered by a READ_REPLY with the same sequence number) or a posted MMIO_WRITE; a device
interrupt is a one-way IRQ. The same bytes travel over a pair of trio memory channels in
the embedded mode and over a socket between two processes, so both modes run the same
code and a decoding bug cannot hide in one of them.

Every frame is a fixed header (declared once in construct, encoded with a derived
struct codec) followed by a typed payload. Decoding validates the magic, the version, the
type, the declared length against :data:`MAX_PAYLOAD` and the payload size of the type;
anything else is a :class:`WireError`, never an exception from inside construct.

Between processes a connection starts with a handshake (HELLO both ways, then MEM_REGION
frames describing guest RAM; :mod:`virtio_sim.handshake`), and when guest RAM is not
shared the host reaches it with DMA_READ (answered by DMA_REPLY) and posted DMA_WRITE
frames. docs/wire-protocol.md has the byte layouts and the sequences.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

import construct as cs
import trio

from virtio_sim.layouts import fast_codec
from virtio_sim.peertext import cap
from virtio_sim.spec import LIMITS

PROTOCOL_MAGIC = 0x5654  # "VT"
PROTOCOL_VERSION = 1
MAX_PAYLOAD = LIMITS.wire.max_payload  # bytes; a larger declared length is a hostile or broken peer


class MsgType(enum.IntEnum):
    HELLO = 1
    MEM_REGION = 2
    MMIO_READ = 3
    MMIO_WRITE = 4
    PIO_READ = 5
    PIO_WRITE = 6
    READ_REPLY = 7
    IRQ = 8
    DMA_READ = 9
    DMA_WRITE = 10
    DMA_REPLY = 11
    ERROR = 12
    BYE = 13


class ErrorCode(enum.IntEnum):
    """The ``code`` of an ERROR frame (docs/wire-protocol.md, "Error codes")."""

    PROTOCOL = 1  # malformed, truncated or oversized frame, bad field value
    UNSUPPORTED = 2  # a frame type the sender's role must not send, no common memory mode
    VERSION = 3  # protocol version mismatch (frame header or HELLO)
    AUTH = 4  # shared-secret challenge failed, or a peer of another user
    BUSY = 5  # the host serves its maximum number of guests
    CONFIG = 6  # the host could not build the machine for this guest (HOST_REFUSED)
    SHUTDOWN = 7  # the host is shutting down (Ctrl-C / SIGTERM)
    DMA = 8  # a DMA request outside guest RAM
    TIMEOUT = 9  # handshake or frame not completed in time
    INTERNAL = 10  # a bug on the sender's side; the connection is dropped


class Role(enum.IntEnum):
    HOST = 1
    GUEST = 2


class Capability(enum.IntFlag):
    """What a HELLO sender can do; the host picks the memory mode from both sides' bits."""

    SHARED_MEMORY_FD = 1 << 0  # can pass / map guest RAM as an fd (SCM_RIGHTS, Unix socket)
    DMA_MESSAGES = 1 << 1  # can serve / issue DMA_READ, DMA_WRITE, DMA_REPLY
    LINE_IRQ = 1 << 2  # level-triggered interrupt lines (IRQ kind LINE_LEVEL)
    MSI = 1 << 3  # message-signalled interrupts (IRQ kind MSI)
    AUTH_REQUIRED = 1 << 4  # host only: the guest must answer the challenge
    BIG_ENDIAN = 1 << 5  # guest only: a big-endian CPU (the legacy interface uses its order)

    @classmethod
    def all_known(cls) -> Capability:
        out = cls(0)
        for flag in cls:
            out |= flag
        return out

    @classmethod
    def host_only(cls) -> Capability:
        """Bits only a host's HELLO may set."""
        return cls.AUTH_REQUIRED

    @classmethod
    def guest_only(cls) -> Capability:
        """Bits only a guest's HELLO may set."""
        return cls.BIG_ENDIAN


class MemRegionFlag(enum.IntFlag):
    SHARED_FD = 1 << 0  # backed by the fd that came with the first MEM_REGION (SCM_RIGHTS)
    LAST = 1 << 1  # the last region: guest RAM is complete, register traffic may start


class IrqKind(enum.IntEnum):
    LINE_LEVEL = 1  # INTx/SPI line: value = 1 asserted, 0 deasserted
    MSI = 2  # message-signalled: value = vector


FrameHeader = cs.Struct(
    "magic" / cs.Int16ul,
    "version" / cs.Int8ul,
    "type" / cs.Int8ul,
    "seq" / cs.Int32ul,
    "length" / cs.Int32ul,
)
HEADER_SIZE: int = FrameHeader.sizeof()
_HEADER = fast_codec(FrameHeader)

# Payload layouts per message type (fixed-size ones; HELLO/ERROR/DMA carry variable data).
AccessPayload = cs.Struct("addr" / cs.Int64ul, "size" / cs.Int8ul, "_pad" / cs.Bytes(7), "value" / cs.Int64ul)
ReadReplyPayload = cs.Struct("value" / cs.Int64ul)
IrqPayload = cs.Struct("kind" / cs.Int8ul, "_pad" / cs.Bytes(3), "line" / cs.Int32ul, "value" / cs.Int32ul)
NONCE_SIZE = 32
AUTH_TAG_SIZE = 32  # HMAC-SHA256
HelloPayload = cs.Struct(
    "version" / cs.Int16ul,  # protocol version the sender speaks
    "role" / cs.Int8ul,  # Role
    "_pad" / cs.Bytes(1),
    "capabilities" / cs.Int32ul,  # Capability bits
    "ram_size" / cs.Int64ul,  # host: guest RAM bytes; guest: 0
    "nonce" / cs.Bytes(NONCE_SIZE),  # host: the challenge; guest: zeros
    "auth" / cs.Bytes(AUTH_TAG_SIZE),  # guest: HMAC-SHA256(secret, context + nonce); host: zeros
    "name" / cs.PascalString(cs.Int8ul, "utf8"),  # free text for logs
    "cmdline" / cs.PascalString(cs.Int16ul, "utf8"),  # host: the kernel command line
    cs.Terminated,
)
MemRegionPayload = cs.Struct(
    "gpa" / cs.Int64ul,  # guest-physical base
    "size" / cs.Int64ul,
    "offset" / cs.Int64ul,  # offset into the shared object (SHARED_FD) or the guest's own RAM
    "flags" / cs.Int32ul,  # MemRegionFlag bits
    "_pad" / cs.Bytes(4),
)
DmaReadPayload = cs.Struct("addr" / cs.Int64ul, "length" / cs.Int32ul, "_pad" / cs.Bytes(4))
DmaWriteHeader = cs.Struct("addr" / cs.Int64ul)  # followed by the bytes to write
DmaReplyHeader = cs.Struct("status" / cs.Int32ul, "_pad" / cs.Bytes(4))  # then data or reason
ErrorPayload = cs.Struct("code" / cs.Int32ul, "message" / cs.PascalString(cs.Int16ul, "utf8"))

_ACCESS = fast_codec(AccessPayload)
_READ_REPLY = fast_codec(ReadReplyPayload)
_IRQ = fast_codec(IrqPayload)
_MEM_REGION = fast_codec(MemRegionPayload)
_DMA_READ = fast_codec(DmaReadPayload)
_DMA_WRITE = fast_codec(DmaWriteHeader)
_DMA_REPLY = fast_codec(DmaReplyHeader)

_FIXED_SIZES = {
    MsgType.MMIO_READ: _ACCESS.size,
    MsgType.MMIO_WRITE: _ACCESS.size,
    MsgType.PIO_READ: _ACCESS.size,
    MsgType.PIO_WRITE: _ACCESS.size,
    MsgType.READ_REPLY: _READ_REPLY.size,
    MsgType.IRQ: _IRQ.size,
    MsgType.BYE: 0,
    MsgType.MEM_REGION: _MEM_REGION.size,
    MsgType.DMA_READ: _DMA_READ.size,
}
# Variable-size payloads that still have a fixed-size head.
_MIN_SIZES = {MsgType.DMA_WRITE: _DMA_WRITE.size, MsgType.DMA_REPLY: _DMA_REPLY.size}

# The largest DMA transfer one frame carries; longer transfers are split by the sender.
MAX_DMA_CHUNK = LIMITS.wire.max_dma_chunk
DMA_OK = 0

ACCESS_SIZES = (1, 2, 4, 8)


class SendStalledError(trio.EndOfChannel):
    """The peer took none of a frame for ``frame_timeout`` seconds: it does not read.
    The stream is unusable afterwards (a frame may be half sent). Raised by the socket
    channels (virtio_sim/sockets.py); defined here, with the frames, so that the host's
    frame server catches it without importing the socket code (an embedded run has none)."""


class WireError(Exception):
    """A frame that is malformed, oversized, of an unknown type or version.

    ``code`` is the ERROR code the receiver answers with before dropping the connection.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Frame:
    type: MsgType
    seq: int
    payload: bytes

    def encode(self) -> bytes:
        return (
            _HEADER.pack(PROTOCOL_MAGIC, PROTOCOL_VERSION, self.type, self.seq, len(self.payload))
            + self.payload
        )


def decode_header(raw: bytes) -> tuple[MsgType, int, int]:
    """Validate a frame header; returns (type, seq, payload length)."""
    if len(raw) != HEADER_SIZE:
        raise WireError(f"truncated frame header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic, version, mtype, seq, length = _HEADER.unpack(raw)
    if magic != PROTOCOL_MAGIC:
        raise WireError(f"bad frame magic {magic:#06x}")
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})",
            ErrorCode.VERSION,
        )
    try:
        kind = MsgType(mtype)
    except ValueError:
        raise WireError(f"unknown message type {mtype}") from None
    if length > MAX_PAYLOAD:
        raise WireError(f"declared payload length {length} exceeds the limit {MAX_PAYLOAD}")
    fixed = _FIXED_SIZES.get(kind)
    if fixed is not None and length != fixed:
        raise WireError(f"{kind.name} payload must be {fixed} bytes, not {length}")
    least = _MIN_SIZES.get(kind)
    if least is not None and length < least:
        raise WireError(f"{kind.name} payload must be at least {least} bytes, not {length}")
    return kind, seq, length


def decode(raw: bytes) -> Frame:
    kind, seq, length = decode_header(raw[:HEADER_SIZE])
    payload = raw[HEADER_SIZE:]
    if len(payload) != length:
        raise WireError(f"frame payload is {len(payload)} bytes, header says {length}")
    return Frame(kind, seq, payload)


# --------------------------------------------------------------------------- constructors


def access(kind: MsgType, seq: int, addr: int, size: int, value: int = 0) -> Frame:
    return Frame(kind, seq, _ACCESS.pack(addr, size, b"", value))


def parse_access(frame: Frame) -> tuple[int, int, int]:
    addr, size, _, value = _ACCESS.unpack(frame.payload)
    if size not in ACCESS_SIZES:
        raise WireError(f"access size {size} is not 1, 2, 4 or 8")
    if value >> (8 * size):
        raise WireError(f"value {value:#x} does not fit a {size}-byte access")
    return addr, size, value


def read_reply(seq: int, value: int) -> Frame:
    return Frame(MsgType.READ_REPLY, seq, _READ_REPLY.pack(value))


def parse_read_reply(frame: Frame) -> int:
    value: int = _READ_REPLY.unpack(frame.payload)[0]
    return value


def irq(kind: IrqKind, line: int, value: int) -> Frame:
    return Frame(MsgType.IRQ, 0, _IRQ.pack(kind, b"", line, value))


def parse_irq(frame: Frame) -> tuple[IrqKind, int, int]:
    kind, _, line, value = _IRQ.unpack(frame.payload)
    try:
        return IrqKind(kind), line, value
    except ValueError:
        raise WireError(f"unknown interrupt kind {kind}") from None


def _parse_var(declaration: Any, frame: Frame) -> Any:
    try:
        return declaration.parse(frame.payload)
    except (cs.ConstructError, UnicodeDecodeError) as e:
        raise WireError(f"malformed {frame.type.name} payload: {e}") from None


def error(code: int, message: str) -> Frame:
    """An ERROR frame; the message is cut to the protocol's bound (max_error_chars)."""
    return Frame(MsgType.ERROR, 0, ErrorPayload.build({"code": code, "message": cap(message)}))


def parse_error(frame: Frame) -> tuple[int, str]:
    """(code, message) of an ERROR frame. A peer's message longer than the protocol allows
    (its u16 length admits 65535 bytes) is cut to max_error_chars here, on receive, so no
    caller keeps or shows more (the guest CLI took 70 s to render 60,000 characters)."""
    p = _parse_var(ErrorPayload, frame)
    return int(p.code), cap(str(p.message))


def bye() -> Frame:
    return Frame(MsgType.BYE, 0, b"")


@dataclass(frozen=True)
class Hello:
    version: int
    role: Role
    capabilities: Capability
    ram_size: int = 0
    nonce: bytes = bytes(NONCE_SIZE)
    auth: bytes = bytes(AUTH_TAG_SIZE)
    name: str = ""
    cmdline: str = ""


def hello(h: Hello) -> Frame:
    payload = HelloPayload.build(
        {
            "version": h.version,
            "role": h.role,
            "_pad": b"\0",
            "capabilities": h.capabilities,
            "ram_size": h.ram_size,
            "nonce": h.nonce,
            "auth": h.auth,
            "name": h.name.encode()[:255].decode(errors="ignore"),
            "cmdline": h.cmdline,
        }
    )
    return Frame(MsgType.HELLO, 0, bytes(payload))


def parse_hello(frame: Frame) -> Hello:
    p = _parse_var(HelloPayload, frame)
    try:
        role = Role(p.role)
    except ValueError:
        raise WireError(f"HELLO names an unknown role {p.role}") from None
    return Hello(
        version=int(p.version),
        role=role,
        capabilities=Capability(int(p.capabilities)),
        ram_size=int(p.ram_size),
        nonce=bytes(p.nonce),
        auth=bytes(p.auth),
        name=str(p.name),
        cmdline=str(p.cmdline),
    )


def mem_region(gpa: int, size: int, offset: int, flags: MemRegionFlag) -> Frame:
    return Frame(MsgType.MEM_REGION, 0, _MEM_REGION.pack(gpa, size, offset, flags, b""))


def parse_mem_region(frame: Frame) -> tuple[int, int, int, MemRegionFlag]:
    gpa, size, offset, flags, _ = _MEM_REGION.unpack(frame.payload)
    if flags & ~int(MemRegionFlag.SHARED_FD | MemRegionFlag.LAST):
        raise WireError(f"MEM_REGION has unknown flags {flags:#x}")
    return gpa, size, offset, MemRegionFlag(flags)


def dma_read(seq: int, addr: int, length: int) -> Frame:
    return Frame(MsgType.DMA_READ, seq, _DMA_READ.pack(addr, length, b""))


def parse_dma_read(frame: Frame) -> tuple[int, int]:
    addr, length, _ = _DMA_READ.unpack(frame.payload)
    if length > MAX_DMA_CHUNK:
        raise WireError(f"DMA_READ of {length} bytes exceeds the chunk limit {MAX_DMA_CHUNK}")
    return addr, length


DMA_WRITE_HEADER_SIZE = _DMA_WRITE.size  # the address in front of a DMA_WRITE's bytes


def dma_write(addr: int, data: bytes | bytearray | memoryview) -> Frame:
    return Frame(MsgType.DMA_WRITE, 0, _DMA_WRITE.pack(addr) + bytes(data))


def parse_dma_write(frame: Frame) -> tuple[int, bytes]:
    (addr,) = _DMA_WRITE.unpack_from(frame.payload)
    data = frame.payload[_DMA_WRITE.size :]
    if len(data) > MAX_DMA_CHUNK:
        raise WireError(f"DMA_WRITE of {len(data)} bytes exceeds the chunk limit {MAX_DMA_CHUNK}")
    return addr, data


def dma_reply(seq: int, status: int, data: bytes = b"") -> Frame:
    """status DMA_OK with the bytes read, or an ErrorCode with a UTF-8 reason."""
    return Frame(MsgType.DMA_REPLY, seq, _DMA_REPLY.pack(status, b"") + data)


def parse_dma_reply(frame: Frame) -> tuple[int, bytes]:
    status, _ = _DMA_REPLY.unpack_from(frame.payload)
    return int(status), frame.payload[_DMA_REPLY.size :]


# --------------------------------------------------------------------------- channels


class FrameChannel(Protocol):
    """A bidirectional, ordered, reliable stream of encoded frames."""

    async def send(self, frame: Frame) -> None: ...

    async def receive(self) -> Frame:
        """The next frame; raises trio.EndOfChannel when the peer is gone."""
        ...

    async def aclose(self) -> None: ...


class MemoryFrameChannel:
    """One end of an embedded link: encoded frames over trio memory channels.

    Frames are encoded on send and decoded on receive, exactly as over a socket, so the
    embedded mode exercises the real codec.
    """

    def __init__(self, tx: trio.MemorySendChannel[bytes], rx: trio.MemoryReceiveChannel[bytes]) -> None:
        self._tx = tx
        self._rx = rx

    async def send(self, frame: Frame) -> None:
        try:
            await self._tx.send(frame.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio.EndOfChannel("peer closed the link") from None

    async def send_raw(self, raw: bytes) -> None:
        """Send bytes as they are (tests use this to inject malformed frames)."""
        await self._tx.send(raw)

    async def receive(self) -> Frame:
        try:
            raw = await self._rx.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel("link closed") from None
        return decode(raw)

    async def aclose(self) -> None:
        await self._tx.aclose()
        await self._rx.aclose()


def memory_link(buffer: float = 1024) -> tuple[MemoryFrameChannel, MemoryFrameChannel]:
    """A connected (host end, guest end) pair for the embedded mode."""
    h2g_tx, h2g_rx = trio.open_memory_channel[bytes](buffer)
    g2h_tx, g2h_rx = trio.open_memory_channel[bytes](buffer)
    return MemoryFrameChannel(h2g_tx, g2h_rx), MemoryFrameChannel(g2h_tx, h2g_rx)
