"""The one-descriptor pop paths check a buffer against the space's window by direction.

Why a test of its own: since the ring hot paths were tightened (#24), a one-descriptor
chain's buffer is checked inline against the translated space's cached IOMMU mapping
(``fast_window``), split by the descriptor's WRITE flag. A window over a read-only
mapping must not let a device-writable buffer through: the device would write guest
memory the IOMMU forbids it to. The readable chain first primes the window with exactly
that read-only mapping, so the writable chain meets the inline check, not the slow path.
"""

from __future__ import annotations

from typing import Any

import pytest

from virtio_sim.dma import TranslatedAddressSpace
from virtio_sim.host.iommu import EndpointTranslator, Iommu
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import RingError
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue
from virtio_sim.ring.types import RingAddresses
from virtio_sim.spec import IOMMU_MAP_F

IOVA = 1 << 40
Q = 8
RING = RingAddresses(0x1000, 0x1000 + 16 * Q, 0x2000)
DEV_RING = RingAddresses(IOVA + RING.desc, IOVA + RING.avail, IOVA + RING.used)
READ_ONLY = 0x100000  # guest-physical: mapped for the device without WRITE
RO_IOVA = IOVA + READ_ONLY


def _queues(fmt: str, mem: GuestMemory) -> tuple[Any, Any, TranslatedAddressSpace]:
    iommu = Iommu({1}, bypass=False)
    iommu.attach(1, 1, bypass=False)
    iommu.map(1, IOVA, IOVA + 0xFFFFF, 0, IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE)  # the rings
    iommu.map(1, RO_IOVA, RO_IOVA + 0xFFFFF, READ_ONLY, IOMMU_MAP_F.READ)
    space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
    if fmt == "split":
        return SplitDriverQueue(mem, Q, RING), SplitDeviceQueue(space, Q, DEV_RING), space
    return PackedDriverQueue(mem, Q, RING), PackedDeviceQueue(space, Q, DEV_RING), space


@pytest.mark.parametrize("fmt", ["split", "packed"])
def test_a_read_only_window_refuses_a_device_writable_buffer(fmt: str) -> None:
    mem = GuestMemory.create(4 << 20)
    try:
        drv, dev, space = _queues(fmt, mem)
        drv.add([(RO_IOVA, 64)], [], "read")
        chain = dev.pop()
        assert chain is not None and chain.readable == [(RO_IOVA, 64)]
        w = space.fast_window
        assert w is not None and w.valid and w.readable and not w.writable  # primed: read-only
        assert w.lo <= RO_IOVA + 0x1000 < w.hi
        drv.add([], [(RO_IOVA + 0x1000, 64)], "write")
        with pytest.raises(RingError) as e:
            dev.pop()
        assert e.value.violation == "bad-address" and e.value.head is not None
        assert e.value.head in dev.in_flight  # consumed, for a drop policy to complete
        assert mem.read(READ_ONLY + 0x1000, 64) == bytes(64)
    finally:
        mem.close()
