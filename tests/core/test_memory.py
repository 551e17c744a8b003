"""GuestMemory bounds checking, multi-region spans, and the identity address space."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_sim.dma import DmaError, IdentityAddressSpace
from virtio_sim.memory import (
    ADDRESS_LIMIT,
    GuestMemory,
    MemoryAccessError,
    MemoryRegion,
    SharedMemoryObject,
    check_range,
)

SIZE = 0x4000


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory.create(SIZE)
    yield m
    m.close()


def make_memory(regions: list[tuple[int, int, int]], backing_size: int) -> GuestMemory:
    backing = SharedMemoryObject.create_memfd(backing_size)
    return GuestMemory(backing, [MemoryRegion(gpa, size, off) for gpa, size, off in regions])


def backing_bytes(m: GuestMemory) -> bytes:
    return bytes(m.backing.map[:])


def expect_error(addr: int, length: int, reason: str) -> str:
    return f"guest memory access [{addr:#x}, +{length:#x}): {reason}"


# --------------------------------------------------------------------------- single region


def test_create_is_zeroed_and_sized(mem: GuestMemory) -> None:
    assert mem.size == SIZE
    assert mem.read(0, SIZE) == bytes(SIZE)
    assert len(mem.regions) == 1


def test_read_write_in_range(mem: GuestMemory) -> None:
    mem.write(0, b"head")
    mem.write(SIZE - 4, bytearray(b"tail"))
    mem.write(0x100, memoryview(b"middle"))
    assert mem.read(0, 4) == b"head"
    assert mem.read(SIZE - 4, 4) == b"tail"
    assert mem.read(0x100, 6) == b"middle"
    assert mem.read(SIZE, 0) == b""
    mem.write(SIZE, b"")  # zero bytes at the very end is fine


def test_nonzero_base() -> None:
    m = GuestMemory.create(0x1000, base=0x8000_0000)
    try:
        m.write(0x8000_0000, b"x")
        assert m.read(0x8000_0000, 1) == b"x"
        assert m.backing.map[0] == ord("x")
        with pytest.raises(MemoryAccessError) as e:
            m.read(0x7FFF_FFFF, 2)
        assert str(e.value) == expect_error(0x7FFF_FFFF, 2, "address 0x7fffffff is not in guest RAM")
        with pytest.raises(MemoryAccessError):
            m.read(0, 1)
    finally:
        m.close()


@pytest.mark.parametrize(
    ("addr", "length", "reason"),
    [
        (SIZE - 1, 2, f"address {SIZE:#x} is not in guest RAM"),
        (SIZE, 1, f"address {SIZE:#x} is not in guest RAM"),
        (0x1_0000_0000, 16, "address 0x100000000 is not in guest RAM"),
        (-1, 1, "address is not a 64-bit value"),
        (-16, 32, "address is not a 64-bit value"),
        (0, -1, "negative length"),
        (ADDRESS_LIMIT, 1, "address is not a 64-bit value"),
        (ADDRESS_LIMIT - 1, 2, "range wraps past 2^64"),
        (ADDRESS_LIMIT - 16, 0xFFFF_FFFF, "range wraps past 2^64"),
    ],
)
def test_read_out_of_range(mem: GuestMemory, addr: int, length: int, reason: str) -> None:
    with pytest.raises(MemoryAccessError) as e:
        mem.read(addr, length)
    assert e.value.addr == addr
    assert e.value.length == length
    assert e.value.reason == reason
    assert str(e.value) == expect_error(addr, length, reason)
    with pytest.raises(MemoryAccessError, match="guest memory access"):
        mem.check(addr, length)
    assert not mem.contains(addr, length)


@pytest.mark.parametrize(
    ("addr", "length", "reason"),
    [
        (SIZE - 4, 8, f"address {SIZE:#x} is not in guest RAM"),
        (SIZE + 4, 8, f"address {SIZE + 4:#x} is not in guest RAM"),
        (-4, 8, "address is not a 64-bit value"),
        (ADDRESS_LIMIT - 4, 8, "range wraps past 2^64"),
    ],
)
def test_write_out_of_range_writes_nothing(mem: GuestMemory, addr: int, length: int, reason: str) -> None:
    mem.write(0, bytes(range(256)) * (SIZE // 256))
    before = backing_bytes(mem)
    with pytest.raises(MemoryAccessError) as e:
        mem.write(addr, b"\xee" * length)
    assert str(e.value) == expect_error(addr, length, reason)
    assert backing_bytes(mem) == before


def test_check_range_directly() -> None:
    check_range(0, 0)
    check_range(ADDRESS_LIMIT - 1, 1)
    with pytest.raises(MemoryAccessError, match="address is not a 64-bit value"):
        check_range(ADDRESS_LIMIT, 0)
    with pytest.raises(MemoryAccessError, match=r"wraps past 2\^64"):
        check_range(ADDRESS_LIMIT - 1, 2)
    with pytest.raises(MemoryAccessError, match="negative length"):
        check_range(0, -5)


def test_view_and_fill(mem: GuestMemory) -> None:
    mem.fill(0x10, 0x20, 0xAB)
    assert mem.read(0x0F, 0x22) == b"\x00" + b"\xab" * 0x20 + b"\x00"
    view = mem.view(0x10, 4)
    assert bytes(view) == b"\xab" * 4
    view[0] = 0x01  # zero-copy: writes through to guest RAM
    assert mem.read(0x10, 1) == b"\x01"
    view.release()
    with pytest.raises(MemoryAccessError, match="guest memory access"):
        mem.view(SIZE - 2, 4)
    with pytest.raises(MemoryAccessError, match="guest memory access"):
        mem.fill(SIZE - 2, 4)
    assert mem.contains(0, SIZE)
    assert mem.contains(SIZE, 0)


def test_shared_object_is_shared() -> None:
    """A second mapping of the same object (the other process) sees the same bytes."""
    m = GuestMemory.create(0x2000)
    peer_backing = SharedMemoryObject.attach(os.dup(m.backing.fd), 0x2000)
    peer = GuestMemory(peer_backing, [MemoryRegion(0, 0x2000, 0)])
    try:
        m.write(0x1234, b"shared")
        assert peer.read(0x1234, 6) == b"shared"
        peer.write(0x10, b"back")
        assert m.read(0x10, 4) == b"back"
        with pytest.raises(MemoryAccessError, match="has only 8192 bytes"):
            SharedMemoryObject.attach(m.backing.fd, 0x4000)
    finally:
        peer.close()
        m.close()


# --------------------------------------------------------------------------- regions


def test_region_validation() -> None:
    backing = SharedMemoryObject.create_memfd(0x3000)
    try:
        with pytest.raises(ValueError, match="overlap"):
            GuestMemory(backing, [MemoryRegion(0, 0x2000, 0), MemoryRegion(0x1000, 0x1000, 0x2000)])
        with pytest.raises(ValueError, match="does not fit"):
            GuestMemory(backing, [MemoryRegion(0, 0x2000, 0x2000)])
        with pytest.raises(ValueError, match="does not fit"):
            GuestMemory(backing, [MemoryRegion(0, 0, 0)])
        with pytest.raises(MemoryAccessError, match=r"wraps past 2\^64"):
            GuestMemory(backing, [MemoryRegion(ADDRESS_LIMIT - 0x1000, 0x2000, 0)])
        # Regions are sorted by address whatever order they come in.
        m = GuestMemory(backing, [MemoryRegion(0x8000, 0x1000, 0), MemoryRegion(0, 0x1000, 0x1000)])
        assert [r.gpa for r in m.regions] == [0, 0x8000]
        assert m.size == 0x2000
    finally:
        backing.close()


def test_span_across_touching_regions() -> None:
    # gpa [0x1000, 0x2000) -> backing 0x2000, gpa [0x2000, 0x3000) -> backing 0x0000:
    # adjacent in guest-physical space, not in the backing object.
    m = make_memory([(0x1000, 0x1000, 0x2000), (0x2000, 0x1000, 0)], 0x3000)
    try:
        data = bytes(range(1, 65))
        m.write(0x1FE0, data)
        assert m.read(0x1FE0, 64) == data
        raw = backing_bytes(m)
        assert raw[0x2FE0:0x3000] == data[:32]
        assert raw[0:32] == data[32:]
        m.check(0x1000, 0x2000)
        assert m.contains(0x1FE0, 64)
        space = IdentityAddressSpace(m)
        space.check(0x1FF0, 0x20, write=True)
        space.write(0x1FFF, b"ab")
        assert space.read(0x1FFF, 2) == b"ab"
    finally:
        m.close()


@pytest.mark.parametrize(
    ("addr", "length", "bad"),
    [
        (0x1FF0, 0x20, 0x2000),  # runs from a region into the gap
        (0x2FF0, 0x20, 0x2FF0),  # starts in the gap
        (0x1FF0, 0x1020, 0x2000),  # region -> gap -> region
        (0x3FF0, 0x20, 0x4000),  # runs past the last region
    ],
)
def test_span_across_a_gap_fails_without_writing(addr: int, length: int, bad: int) -> None:
    # [0x1000, 0x2000) and [0x3000, 0x4000), hole in between
    m = make_memory([(0x1000, 0x1000, 0), (0x3000, 0x1000, 0x1000)], 0x2000)
    try:
        m.write(0x1000, bytes(range(256)) * 16)
        m.write(0x3000, bytes(range(255, -1, -1)) * 16)
        before = backing_bytes(m)
        reason = f"address {bad:#x} is not in guest RAM"
        with pytest.raises(MemoryAccessError) as e:
            m.write(addr, b"\xee" * length)
        assert str(e.value) == expect_error(addr, length, reason)
        assert backing_bytes(m) == before
        assert m.read(0x1FF0, 16) == before[0xFF0:0x1000]  # bytes before the gap unchanged
        assert m.read(0x3000, 16) == before[0x1000:0x1010]  # bytes after the gap unchanged
        with pytest.raises(MemoryAccessError) as e:
            m.read(addr, length)
        assert e.value.reason == reason
        assert not m.contains(addr, length)
    finally:
        m.close()


@st.composite
def region_layouts(draw: st.DrawFn) -> list[tuple[int, int]]:
    """(gpa, size) regions in address order, touching or separated by a gap."""
    n = draw(st.integers(1, 4))
    gpa = draw(st.integers(0, 64))
    out = []
    for _ in range(n):
        size = draw(st.integers(1, 64))
        out.append((gpa, size))
        gpa += size + draw(st.sampled_from([0, 0, draw(st.integers(1, 32))]))
    return out


@settings(max_examples=150, deadline=None)
@given(
    layout=region_layouts(),
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(-8, 400), st.integers(0, 120)), min_size=1, max_size=12
    ),
)
def test_random_accesses_against_a_model(
    layout: list[tuple[int, int]], ops: list[tuple[bool, int, int]]
) -> None:
    """Every access either succeeds exactly like a flat model, or fails with nothing written."""
    backing_size = sum(size for _, size in layout)
    regions, off = [], 0
    for gpa, size in reversed(layout):  # backing order differs from address order
        regions.append((gpa, size, off))
        off += size
    m = make_memory(regions, backing_size)
    try:
        mapped = {gpa + i for gpa, size in layout for i in range(size)}
        model = {a: 0 for a in mapped}
        for counter, (is_write, addr, length) in enumerate(ops, 1):
            ok = addr >= 0 and all(a in mapped for a in range(addr, addr + length))
            data = bytes((counter + i) & 0xFF for i in range(length))
            if ok:
                if is_write:
                    m.write(addr, data)
                    for i in range(length):
                        model[addr + i] = data[i]
                else:
                    assert m.read(addr, length) == bytes(model[addr + i] for i in range(length))
                m.check(addr, length)
                assert m.contains(addr, length)
            else:
                before = backing_bytes(m)
                with pytest.raises(MemoryAccessError):
                    if is_write:
                        m.write(addr, data)
                    else:
                        m.read(addr, length)
                assert backing_bytes(m) == before
                with pytest.raises(MemoryAccessError):
                    m.check(addr, length)
                assert not m.contains(addr, length)
        for gpa, size in layout:
            assert m.read(gpa, size) == bytes(model[gpa + i] for i in range(size))
    finally:
        m.close()


# --------------------------------------------------------------------------- identity DMA


def test_identity_address_space_passes_through(mem: GuestMemory) -> None:
    space = IdentityAddressSpace(mem)
    assert space.name == "identity"
    space.write(0x40, b"dma")
    assert space.read(0x40, 3) == b"dma"
    assert mem.read(0x40, 3) == b"dma"
    space.check(0, SIZE, write=False)
    space.check(0, SIZE, write=True)


@pytest.mark.parametrize(
    ("addr", "length", "reason"),
    [
        (SIZE - 2, 4, f"address {SIZE:#x} is not in guest RAM"),
        (-1, 1, "address is not a 64-bit value"),
        (ADDRESS_LIMIT - 1, 2, "range wraps past 2^64"),
    ],
)
def test_identity_address_space_turns_errors_into_dma_errors(
    mem: GuestMemory, addr: int, length: int, reason: str
) -> None:
    space = IdentityAddressSpace(mem)
    before = backing_bytes(mem)
    for call in (
        lambda: space.read(addr, length),
        lambda: space.write(addr, b"\x55" * length),
        lambda: space.check(addr, length, write=False),
        lambda: space.check(addr, length, write=True),
    ):
        with pytest.raises(DmaError) as e:
            call()
        assert not isinstance(e.value, MemoryAccessError)
        assert e.value.__cause__ is None
        assert (e.value.addr, e.value.length, e.value.reason) == (addr, length, reason)
        assert str(e.value) == f"DMA [{addr:#x}, +{length:#x}): {reason}"
    assert backing_bytes(mem) == before
