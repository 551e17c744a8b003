"""Leases and mapping windows: the fast data path must never outlive the translation.

A ring that took direct windows on its memory (leases) and a translated space that
caches one IOMMU mapping (its window) are only allowed to use them while the IOMMU and
the memory say nothing changed: UNMAP, DETACH, a re-ATTACH, a global bypass change, a
reset, pages made private and closing the memory all revoke them, and the next access
goes through the checked path again (and fails there if it must).
"""

from __future__ import annotations

from typing import Any

import pytest

from virtio_sim.dma import DmaError, IdentityAddressSpace, TranslatedAddressSpace, lease_for
from virtio_sim.host.iommu import EndpointTranslator, Iommu
from virtio_sim.layouts import desc_codec
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import RingError
from virtio_sim.ring.hooks import DeviceHooks, DriverHooks
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.spec import DESC_F, IOMMU_MAP_F

RW = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE
IOVA = 1 << 40
Q = 8
RING = SplitRingAddresses(0x1000, 0x1000 + 16 * Q, 0x2000)
DEV_RING = SplitRingAddresses(IOVA + RING.desc, IOVA + RING.avail, IOVA + RING.used)
DATA = 0x10000


def _translated(mem: GuestMemory, flags: int = RW) -> tuple[Iommu, TranslatedAddressSpace]:
    iommu = Iommu({1}, bypass=False)
    iommu.attach(1, 1, bypass=False)
    iommu.map(1, IOVA, IOVA + (1 << 20) - 1, 0, flags)
    return iommu, TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))


def test_memory_lease_is_a_bounded_view_revoked_by_private_pages_and_close() -> None:
    mem = GuestMemory.create(1 << 20)
    lease = mem.lease(0x100, 16)
    assert lease is not None and lease.valid and len(lease.view) == 16
    mem.write(0x100, b"A" * 16)
    assert bytes(lease.view) == b"A" * 16
    with pytest.raises(Exception, match="guest memory access"):
        mem.lease((1 << 20) - 8, 16)  # runs past the end of RAM: no lease, a clear error
    mem.mark_private(0x4000, 4096)
    assert not lease.valid  # a device would now see ciphertext somewhere: windows go
    space = IdentityAddressSpace(mem)
    assert space.lease(0x100, 16, False) is None  # and none is given while pages are private
    mem.mark_private(0x4000, 4096, private=False)
    again = space.lease(0x100, 16, False)
    assert again is not None and again.valid
    mem.close()
    assert not again.valid


@pytest.mark.parametrize("change", ["unmap", "detach", "reattach", "reset", "bypass"])
def test_every_iommu_change_revokes_leases_and_windows(change: str) -> None:
    mem = GuestMemory.create(1 << 20)
    iommu, space = _translated(mem)
    lease = space.lease(IOVA + 0x1000, 64, True)
    assert lease is not None and lease.valid
    space.check(IOVA + DATA, 64, write=True)  # caches the mapping as the window
    win = space.fast_window
    assert win is not None and win.valid
    if change == "unmap":
        iommu.unmap(1, IOVA, IOVA + (1 << 20) - 1)
    elif change == "detach":
        iommu.detach(1, 1)
    elif change == "reattach":
        iommu.attach(2, 1, bypass=False)
    elif change == "reset":
        iommu.reset()
    else:
        iommu.bypass = True
    assert not lease.valid and not win.valid
    if change != "bypass":
        with pytest.raises(DmaError):  # the checked path decides again, and refuses
            space.check(IOVA + DATA, 64, write=True)
        with pytest.raises(DmaError):
            space.read(IOVA + DATA, 4)
    mem.close()


def test_unmap_revokes_only_what_overlaps_the_range() -> None:
    """UNMAP of one mapping forgets that range only: a lease and the cached translations
    of another mapping stay good (what a driver that maps and unmaps a buffer per request
    relies on: its ring leases survive every request's UNMAP)."""
    mem = GuestMemory.create(1 << 20)
    iommu = Iommu({1}, bypass=False)
    iommu.attach(1, 1, bypass=False)
    ring, buf, other = IOVA, IOVA + 0x10000, IOVA + 0x20000
    iommu.map(1, ring, ring + 0xFFFF, 0, RW)
    iommu.map(1, buf, buf + 0xFFF, 0x10000, RW)
    iommu.map(1, other, other + 0xFFF, 0x11000, RW)
    space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
    ring_lease = space.lease(ring + 0x100, 64, True)
    buf_lease = space.lease(buf, 64, True)
    assert ring_lease is not None and buf_lease is not None
    space.read(other, 4)  # a translation cached for the third mapping
    misses = iommu.iotlb_misses
    assert iommu.unmap(1, buf, buf + 0xFFF) == 0
    assert ring_lease.valid and not buf_lease.valid
    space.translator.translate(other, 4, False)
    assert iommu.iotlb_misses == misses  # still cached: not in the unmapped range
    with pytest.raises(DmaError, match="no mapping"):
        space.read(buf, 4)
    assert iommu.unmap(1, ring, ring + 0xFFFF) == 0
    assert not ring_lease.valid
    mem.close()


def test_unmap_of_range_a_keeps_leases_on_b_up_to_the_byte() -> None:
    """Leases on B that end right where A starts, or start right after A ends, stay
    usable after A's UNMAP; a lease reaching one byte into A is revoked (a wrong overlap
    test in either direction shows here)."""
    mem = GuestMemory.create(1 << 20)
    iommu = Iommu({1}, bypass=False)
    iommu.attach(1, 1, bypass=False)
    below, a, above = IOVA, IOVA + 0x1000, IOVA + 0x2000
    iommu.map(1, below, below + 0xFFF, 0x10000, RW)
    iommu.map(1, a, a + 0xFFF, 0x11000, RW)
    iommu.map(1, above, above + 0xFFF, 0x12000, RW)
    space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
    touching_below = space.lease(a - 64, 64, True)  # [a-64, a): ends where A starts
    touching_above = space.lease(above, 64, True)  # starts right after A's last byte
    in_a = space.lease(a + 0xFC0, 64, True)  # A's last 64 bytes
    assert touching_below is not None and touching_above is not None and in_a is not None
    assert iommu.unmap(1, a, a + 0xFFF) == 0
    assert touching_below.valid and touching_above.valid  # B is still usable ...
    assert not in_a.valid  # ... A is not
    mem.write(0x10FC0, b"below!")
    assert bytes(touching_below.view[:6]) == b"below!"  # and B still reads the right RAM
    with pytest.raises(DmaError, match="no mapping"):
        space.read(a + 0xFC0, 4)  # A faults through the checked path, as before
    mem.close()


def test_window_keeps_permissions_and_bounds() -> None:
    mem = GuestMemory.create(1 << 20)
    iommu = Iommu({1}, bypass=False)
    iommu.attach(1, 1, bypass=False)
    iommu.map(1, IOVA, IOVA + 0xFFFF, 0, IOMMU_MAP_F.READ)
    space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
    space.check(IOVA, 16, write=False)
    assert space.fast_window is not None and not space.fast_window.writable
    with pytest.raises(DmaError, match="no permission"):
        space.check(IOVA + 0x100, 16, write=True)  # read-only mapping: the window says so
    with pytest.raises(DmaError, match="no mapping"):
        space.check(IOVA + 0xFFF8, 16, write=False)  # runs past the mapping's end
    with pytest.raises(DmaError):
        space.write(IOVA, b"x")
    faults = len(iommu.faults)
    assert space.lease(IOVA, 16, True) is None  # no writable lease on a read-only mapping
    assert len(iommu.faults) == faults  # and asking logged no fault
    assert lease_for(space, IOVA, 16, False) is not None
    mem.close()


def _ring(mem: GuestMemory, space: TranslatedAddressSpace) -> tuple[SplitDriverQueue, SplitDeviceQueue]:
    drv = SplitDriverQueue(mem, Q, RING)
    dev = SplitDeviceQueue(space, Q, DEV_RING)
    return drv, dev


def test_ring_stops_at_unmap_instead_of_using_a_stale_translation() -> None:
    mem = GuestMemory.create(1 << 20)
    iommu, space = _translated(mem)
    drv, dev = _ring(mem, space)
    drv.add([], [(IOVA + DATA, 64)], "a")
    chain = dev.pop()
    assert chain is not None and chain.writable == [(IOVA + DATA, 64)]
    dev.push(chain.head, 64)
    assert drv.get_used() == ("a", 64)
    assert dev._dl is not None and dev._dl.valid  # the ring is on its leases
    # The guest unmaps the ring and the buffers; the descriptor table in RAM still holds
    # a perfectly valid chain, but the device must not reach it any more.
    iommu.unmap(1, IOVA, IOVA + (1 << 20) - 1)
    drv.add([], [(IOVA + DATA, 64)], "b")
    with pytest.raises(RingError, match="ring-address"):
        dev.pop()
    assert iommu.faults  # the refusal went through the IOMMU, which logged a fault
    mem.close()


def test_ring_buffer_check_follows_a_remap() -> None:
    """A window for the buffer mapping is dropped at UNMAP; a buffer in the hole fails."""
    mem = GuestMemory.create(1 << 20)
    iommu = Iommu({1}, bypass=False)
    iommu.attach(1, 1, bypass=False)
    iommu.map(1, IOVA, IOVA + 0xFFFF, 0, RW)  # rings
    iommu.map(1, IOVA + 0x10000, IOVA + 0x1FFFF, 0x10000, RW)  # buffers
    space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
    drv, dev = _ring(mem, space)
    drv.add([], [(IOVA + DATA, 64)], "a")
    chain = dev.pop()
    assert chain is not None
    dev.push(chain.head, 0)
    drv.get_used()
    iommu.unmap(1, IOVA + 0x10000, IOVA + 0x1FFFF)
    drv.add([], [(IOVA + DATA, 64)], "b")
    with pytest.raises(RingError, match="bad-address"):
        dev.pop()
    # the head was consumed and stays in flight for the drop policy; the rings' own
    # mapping is untouched, so the queue keeps working for buffers that are mapped
    (bad,) = dev.in_flight
    dev.push(bad, 0)
    assert drv.get_used() == ("b", 0)
    iommu.map(1, IOVA + 0x20000, IOVA + 0x20FFF, 0x20000, RW)
    drv.add([], [(IOVA + 0x20000, 64)], "c")
    chain = dev.pop()
    assert chain is not None and chain.writable == [(IOVA + 0x20000, 64)]
    mem.close()


def test_lease_path_reads_each_descriptor_once() -> None:
    """TOCTOU with leases: the chain is the snapshot taken at pop(), whatever the guest
    writes into the descriptor afterwards."""
    mem = GuestMemory.create(1 << 20)
    space = IdentityAddressSpace(mem)
    drv = SplitDriverQueue(mem, Q, RING)
    dev = SplitDeviceQueue(space, Q, RING)
    head = drv.add([(DATA, 16)], [(DATA + 64, 32)], "t")
    chain = dev.pop()
    assert chain is not None
    assert dev._dl is not None and dev._dl.valid
    mem.write(RING.desc + 16 * head, desc_codec().pack(0xDEAD0000, 0xFFFF, DESC_F.WRITE, 0))
    assert chain.readable == [(DATA, 16)] and chain.writable == [(DATA + 64, 32)]
    mem.close()


def test_fast_paths_honour_the_rings_hooks() -> None:
    """Checkers give rings hooks that misbehave on purpose (tests/conformance/broken_*.py);
    the lease paths must not go around them."""

    class TakesFromTheTop(DriverHooks):
        def take(self, ring: Any) -> int:
            value: int = ring.free.popleft()
            return value

    class ReportsOneMore(DeviceHooks):
        def write_used(self, ring: Any, head: int, written: int, count: int) -> None:
            ring.write_used(head, written + 1, count)

    mem = GuestMemory.create(1 << 20)
    drv = SplitDriverQueue(mem, Q, RING)
    drv.hooks = TakesFromTheTop()
    dev = SplitDeviceQueue(IdentityAddressSpace(mem), Q, RING)
    dev.hooks = ReportsOneMore()
    assert drv.add([], [(DATA, 64)], "a") == Q - 1
    assert drv.add_batch([((), ((DATA, 64),), "b")]) == [Q - 2]
    a, b = dev.pop_batch(Q)
    dev.push(a.head, 10)
    dev.push_batch([(b.head, 20)])
    assert drv.get_used_batch() == [("a", 11), ("b", 21)]
    mem.close()
