"""Wire frames: round trips and every kind of malformed frame."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from virtio_sim import wire
from virtio_sim.wire import HEADER_SIZE, MAX_PAYLOAD, MsgType, WireError


@given(st.integers(0, 2**64 - 1), st.sampled_from(wire.ACCESS_SIZES), st.data())
def test_access_round_trip(addr: int, size: int, data: st.DataObject) -> None:
    value = data.draw(st.integers(0, 2 ** (8 * size) - 1))
    f = wire.decode(wire.access(MsgType.MMIO_WRITE, 5, addr, size, value).encode())
    assert f.type is MsgType.MMIO_WRITE and f.seq == 5
    assert wire.parse_access(f) == (addr, size, value)


def test_irq_and_error_round_trip() -> None:
    f = wire.decode(wire.irq(wire.IrqKind.MSI, 3, 9).encode())
    assert wire.parse_irq(f) == (wire.IrqKind.MSI, 3, 9)
    f = wire.decode(wire.error(7, "bad thing").encode())
    assert wire.parse_error(f) == (7, "bad thing")


def _header(
    magic: int = wire.PROTOCOL_MAGIC,
    version: int = wire.PROTOCOL_VERSION,
    mtype: int = MsgType.BYE,
    length: int = 0,
) -> bytes:
    return wire._HEADER.pack(magic, version, mtype, 0, length)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00" * 3, "truncated"),
        (_header(magic=0x1234), "bad frame magic"),
        (_header(version=99), "unsupported protocol version"),
        (_header(mtype=200), "unknown message type"),
        (_header(mtype=MsgType.ERROR, length=MAX_PAYLOAD + 1), "exceeds the limit"),
        (_header(mtype=MsgType.MMIO_READ, length=3) + b"abc", "payload must be"),
        (_header(mtype=MsgType.ERROR, length=10) + b"abc", "header says"),
    ],
)
def test_malformed_frames(raw: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        wire.decode(raw)


def test_bad_access_size_and_value() -> None:
    f = wire.Frame(MsgType.MMIO_WRITE, 0, wire._ACCESS.pack(0, 3, b"", 0))
    with pytest.raises(WireError, match="access size"):
        wire.parse_access(f)
    f = wire.Frame(MsgType.MMIO_WRITE, 0, wire._ACCESS.pack(0, 1, b"", 256))
    with pytest.raises(WireError, match="does not fit"):
        wire.parse_access(f)


def test_garbage_error_payload() -> None:
    f = wire.Frame(MsgType.ERROR, 0, b"\x01")
    with pytest.raises(WireError, match="malformed ERROR"):
        wire.parse_error(f)


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_wire_error(raw: bytes) -> None:
    try:
        wire.decode(raw)
    except WireError:
        pass


async def test_memory_link_round_trip() -> None:
    host, guest = wire.memory_link()
    await guest.send(wire.access(MsgType.MMIO_READ, 1, 0x1000, 4))
    f = await host.receive()
    assert wire.parse_access(f) == (0x1000, 4, 0)
    await host.aclose()
    with pytest.raises(trio.EndOfChannel):
        await guest.receive()
    assert HEADER_SIZE == 12
