"""vhost-user messages on the Unix socket: read one request (with its fds), write a reply.

Every message is a 12-byte header (request, flags, size; layouts.VhostUserHeader) and
``size`` payload bytes; file descriptors ride along as SCM_RIGHTS ancillary data on the
header. The front-end is trusted no more than a guest: the header's version must be 1,
the size must stay under the protocol's largest payload, the fds must fit the limit, and
a connection that ends inside a message is a truncated message, not a clean end.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field

import trio

from virtio_sim import layouts
from virtio_sim.spec import VU_FLAGS, VU_LIMITS, VU_REQUEST_NAMES

_FD_SIZE = struct.calcsize("i")


class VhostUserProtocolError(Exception):
    """The front-end broke the protocol; the connection cannot go on."""


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return VU_REQUEST_NAMES.get(self.request, f"request {self.request}")

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VU_FLAGS.need_reply)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            fds.extend(arr)
    return fds


async def receive_message(sock: trio.socket.SocketType) -> Message | None:
    """The next message, or None when the front-end closed the connection between messages."""
    anc_size = socket.CMSG_SPACE(VU_LIMITS.max_fds * _FD_SIZE)
    header = b""
    fds: list[int] = []
    try:
        while len(header) < layouts.VHOST_USER_HEADER_SIZE:
            data, anc, flags, _ = await sock.recvmsg(layouts.VHOST_USER_HEADER_SIZE - len(header), anc_size)
            fds += _take_fds(anc)
            if flags & socket.MSG_CTRUNC or len(fds) > VU_LIMITS.max_fds:
                raise VhostUserProtocolError(
                    f"more than {VU_LIMITS.max_fds} file descriptors with one message"
                )
            if not data:
                if header or fds:
                    raise VhostUserProtocolError("connection closed inside a message header")
                return None
            header += data
        request, flags, size = layouts.vhost_user_header_codec.unpack(header)
        if flags & VU_FLAGS.version_mask != VU_FLAGS.version:
            raise VhostUserProtocolError(f"message version {flags & VU_FLAGS.version_mask} (expected 1)")
        if size > VU_LIMITS.max_payload:
            raise VhostUserProtocolError(f"payload size {size} exceeds {VU_LIMITS.max_payload}")
        payload = b""
        while len(payload) < size:
            chunk = await sock.recv(size - len(payload))
            if not chunk:
                raise VhostUserProtocolError(
                    f"connection closed inside a {size}-byte payload ({len(payload)} received)"
                )
            payload += chunk
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return Message(request, flags, payload, fds)


def encode_reply(request: int, payload: bytes) -> bytes:
    flags = VU_FLAGS.version | VU_FLAGS.reply
    return layouts.vhost_user_header_codec.pack(request, flags, len(payload)) + payload


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = await sock.send(view)
        view = view[n:]


def expect_size(msg: Message, size: int) -> None:
    if len(msg.payload) != size:
        raise VhostUserProtocolError(f"{msg.name}: payload of {len(msg.payload)} bytes, expected {size}")


def payload_u64(msg: Message) -> int:
    expect_size(msg, layouts.VhostUserU64.sizeof())
    value: int = layouts.vhost_user_u64_codec.unpack(msg.payload)[0]
    return value


def payload_vring_state(msg: Message) -> tuple[int, int]:
    expect_size(msg, layouts.VhostUserVringState.sizeof())
    index, num = layouts.vhost_user_vring_state_codec.unpack(msg.payload)
    return int(index), int(num)


def u64_payload(value: int) -> bytes:
    return layouts.vhost_user_u64_codec.pack(value)


def vring_state_payload(index: int, num: int) -> bytes:
    return layouts.vhost_user_vring_state_codec.pack(index, num)
