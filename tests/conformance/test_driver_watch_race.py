"""The driver watch looking later than the device: consumed chains are counted, not judged.

Over vhost-user, kicks coalesce and the back-end serves whatever is available, so the
watch may read a ring after the device consumed (and the driver completed) some chains.
Linux then frees a completed chain's indirect table (virtio_ring.c detach_buf_split:
kfree(indir_desc)) and the memory is taken by something else; packed, it reuses the
slots. Judging such a chain judges whatever the memory holds now: a false FAIL (seen as
split.indirect.drv-no-nesting in one of four CI runs against real Linux 6.1). These tests
build the ring with the mock ring, let a real device queue consume a chain, let the
driver reuse the memory, and only then let the watch look.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.driver_watch import DriverWatch
from virtio_sim.orchestration.conformance.findings import FindingLog
from virtio_sim.ring.api import DeviceRing
from virtio_sim.ring.mock import MockPackedRing, MockSplitRing, split_layout
from virtio_sim.ring.packed import PackedDeviceQueue
from virtio_sim.ring.split import SplitDeviceQueue
from virtio_sim.ring.types import RingAddresses, RingFeatures
from virtio_sim.ring.view import RingView, consumed_position
from virtio_sim.spec import DESC_F, PACKED_DESC_F, F, bit

Q = 8
TABLE = 0x3000  # the indirect table the driver frees after completion
DATA = 0x8000


@dataclass
class Source:
    """The RingSource a device would be: one queue, seen through the device's ring."""

    space: IdentityAddressSpace
    addrs: RingAddresses
    packed: bool
    driver_features: int
    device: DeviceRing | None = None
    device_features: int = 0

    def ring_view(self, index: int) -> RingView | None:
        a = self.addrs
        return RingView(
            index, Q, Q, a.desc, a.avail, a.used, True, self.packed, "little", self.space,
            consumed=consumed_position(self.device),
        )  # fmt: skip


def _watch(source: Source, device_type: str) -> tuple[DriverWatch, FindingLog]:
    log = FindingLog(load_catalog().level_of)
    watch = DriverWatch(log, source, transport="vhost-user", device_type=device_type, vantage="vhost-user")
    return watch, log


def test_a_split_chain_consumed_before_the_watch_looked_is_counted_not_judged() -> None:
    mem = GuestMemory.create(0x10000)
    try:
        ring = MockSplitRing(mem, Q, *split_layout(0x1000, Q))
        space = IdentityAddressSpace(mem)
        addrs = RingAddresses(ring.desc_addr, ring.avail_addr, ring.used_addr)
        source = Source(space, addrs, False, bit(F.VERSION_1) | bit(F.INDIRECT_DESC))
        ring.table(TABLE, 1).store(0, DATA, 64, DESC_F.WRITE)  # one writable entropy buffer
        ring.desc_table.store(0, TABLE, 16, DESC_F.INDIRECT)
        ring.make_available(0)
        device = SplitDeviceQueue(space, Q, addrs, RingFeatures(indirect=True))
        source.device = device
        chain = device.pop()
        assert chain is not None and chain.writable == [(DATA, 64)]
        device.push(chain.head, 64)
        # completed: Linux frees the table, and its memory now holds other bytes, here a
        # descriptor-shaped word with INDIRECT set (what a walk would call nesting)
        ring.table(TABLE, 1).store(0, DATA, 64, DESC_F.INDIRECT)
        watch, log = _watch(source, "rng")
        watch.on_notify(0, 0, 0)  # the (coalesced) kick the watch sees late
        watch.finish()
        assert [(f.requirement, f.evidence) for f in log.failures()] == []
        assert watch.queues[0].consumed_unseen == 1 and watch.chains == 0
        # a chain made available after the look is judged as usual
        ring.table(0x3100, 1).store(0, DATA, 64, DESC_F.WRITE)
        ring.desc_table.store(1, 0x3100, 16, DESC_F.INDIRECT)
        ring.make_available(1)
        watch.on_notify(0, 0, 0)
        assert watch.chains == 1 and watch.queues[0].consumed_unseen == 1
    finally:
        mem.close()


def test_a_packed_list_consumed_before_the_watch_looked_is_counted_not_judged() -> None:
    """Packed: the device marks only a list's first slot used (2.8.7), so the rest of a
    used list still reads as available; without the device's position the watch took the
    status slot of a completed blk request for a request of its own (no header)."""
    mem = GuestMemory.create(0x10000)
    try:
        desc, driver, device_area = 0x1000, 0x1000 + 16 * Q, 0x1000 + 16 * Q + 4
        ring = MockPackedRing(mem, Q, desc, driver, device_area)
        space = IdentityAddressSpace(mem)
        addrs = RingAddresses(desc, driver, device_area)
        source = Source(space, addrs, True, bit(F.VERSION_1) | bit(F.RING_PACKED))
        avail = ring.avail_bits()
        ring.store(1, DATA + 16, 1, 7, avail | PACKED_DESC_F.WRITE)  # status byte
        ring.store(0, DATA, 16, 7, avail | PACKED_DESC_F.NEXT)  # blk header, flags last
        device = PackedDeviceQueue(space, Q, addrs, RingFeatures())
        source.device = device
        chain = device.pop()
        assert chain is not None and chain.descriptors == 2
        device.push(chain.head, 1)
        watch, log = _watch(source, "blk")
        watch.on_notify(0, 0, 0)
        watch.finish()
        # neither the status slot as a request (blk.req.format) nor the used first slot
        # as the driver's initial wrap counter (packed.wrap.init-one)
        assert [(f.requirement, f.evidence) for f in log.failures()] == []
        assert watch.queues[0].consumed_unseen == 2 and watch.chains == 0
    finally:
        mem.close()
