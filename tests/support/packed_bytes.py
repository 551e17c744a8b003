"""Packed-ring bytes for the packed-ring tests (tests/ring/test_packed*.py): the flag and event
numbers retyped from virtio 1.4 section 2.8 on purpose (a wrong constant in specs/ or
layouts.py shows up as a failure rather than agreeing with itself), and plain-struct readers
and writers of descriptor slots and event areas.
"""

from __future__ import annotations

from tests.support.ringpair import RingPair

# Retyped from the spec on purpose (see the module docstring).
NEXT, WRITE, INDIRECT, AVAIL, USED = 0x1, 0x2, 0x4, 0x80, 0x8000
EV_ENABLE, EV_DISABLE, EV_DESC = 0, 1, 2
WRAP_BIT = 1 << 15


def rd(p: RingPair, slot: int) -> tuple[int, int, int, int]:
    """(addr, len, id, flags) of ring slot ``slot``, decoded with plain struct."""
    import struct

    raw = p.mem.read(p.addrs.desc + 16 * slot, 16)
    out: tuple[int, int, int, int] = struct.unpack("<QIHH", raw)
    return out


def put(p: RingPair, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
    import struct

    p.mem.write(p.addrs.desc + 16 * slot, struct.pack("<QIHH", addr, length, buf_id, flags))


def event(p: RingPair, area: int) -> tuple[int, int]:
    import struct

    out: tuple[int, int] = struct.unpack("<HH", p.mem.read(area, 4))
    return out


def set_event(p: RingPair, area: int, word: int, flags: int) -> None:
    import struct

    p.mem.write(area, struct.pack("<HH", word, flags))
