"""host/vhost_memory.py: guest RAM as SET_MEM_TABLE regions, addressed by guest-physical
address (the device's DMA) and by front-end virtual address (IOTLB entries). Accesses that
span two regions are split at the boundary and land in the right fd; holes are DmaErrors."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import pytest

from virtio_sim.dma import DmaError
from virtio_sim.host.vhost_memory import VhostMemoryTable

PAGE = mmap.PAGESIZE
# Two regions, adjacent by GPA and by UVA but in opposite order in the front-end's space,
# so a GPA-contiguous access is not UVA-contiguous: each address kind has its own walk.
LOW_GPA, HIGH_GPA = 0x0, PAGE
LOW_UVA, HIGH_UVA = 0x7F00_0000 + PAGE, 0x7F00_0000


def memfd(fill: int) -> int:
    fd = os.memfd_create("vhost-memory-test")
    os.write(fd, bytes([fill]) * PAGE)
    return fd


@pytest.fixture
def table() -> Iterator[VhostMemoryTable]:
    records = [(LOW_GPA, PAGE, LOW_UVA, 0), (HIGH_GPA, PAGE, HIGH_UVA, 0)]
    t = VhostMemoryTable.from_message(records, [memfd(0xAA), memfd(0xBB)])
    yield t
    t.close()


def test_a_guest_physical_access_spans_both_regions(table: VhostMemoryTable) -> None:
    assert table.read(PAGE - 2, 4) == b"\xaa\xaa\xbb\xbb"
    table.write(PAGE - 2, b"1234")
    assert table.read(PAGE - 4, 8) == b"\xaa\xaa12" + b"34\xbb\xbb"
    # the bytes are in the regions' own maps: the first two in the low fd, the rest high
    low, high = sorted(table.regions, key=lambda r: r.gpa)
    assert bytes(low.view[PAGE - 2 :]) == b"12" and bytes(high.view[:2]) == b"34"


def test_a_front_end_address_access_spans_both_regions(table: VhostMemoryTable) -> None:
    # UVA order is high region first: the last bytes of HIGH, then the first of LOW
    assert table.read_uva(HIGH_UVA + PAGE - 2, 4) == b"\xbb\xbb\xaa\xaa"
    table.write_uva(HIGH_UVA + PAGE - 1, b"xy")
    assert table.read(HIGH_GPA + PAGE - 1, 1) == b"x"  # the end of the high region ...
    assert table.read(LOW_GPA, 1) == b"y"  # ... then the start of the low one
    assert table.uva_to_gpa(LOW_UVA + 8, 8) == LOW_GPA + 8


def test_holes_are_dma_errors(table: VhostMemoryTable) -> None:
    with pytest.raises(DmaError, match="not in guest RAM"):
        table.read(2 * PAGE - 1, 2)
    with pytest.raises(DmaError, match="not in guest RAM"):
        table.write(2 * PAGE, b"z")
    with pytest.raises(DmaError, match="in no memory region"):
        table.read_uva(LOW_UVA + PAGE - 1, 2)
    with pytest.raises(DmaError, match="in no memory region"):
        table.check_uva(HIGH_UVA - 1, 1)
    table.check(0, 2 * PAGE, write=False)  # the whole of RAM is fine
