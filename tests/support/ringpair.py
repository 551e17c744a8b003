"""Driver and device queues of either ring format over one guest memory, for ring tests."""

from __future__ import annotations

from typing import Any

from virtio_sim import layouts as L
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.mock import MockPool, split_layout
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures

RING_BASE = 0x1000


def ring_bytes(fmt: str, q: int) -> int:
    if fmt == "packed":
        return L.packed_ring_size(q) + 2 * L.EVENT_SUPPRESS_SIZE
    return L.align_up(L.desc_table_size(q) + L.avail_ring_size(q), 4) + L.used_ring_size(q)


class RingPair:
    """One driver queue and one device queue of format ``fmt`` ("split" or "packed")."""

    def __init__(
        self,
        fmt: str,
        q: int,
        *,
        event_idx: bool = False,
        indirect: bool = False,
        in_order: bool = False,
        batch: bool = False,
        data_size: int = 1 << 20,
        max_indirect: int | None = None,
        strict: bool = True,
        memory: GuestMemory | None = None,
        base: int = RING_BASE,
    ) -> None:
        self.fmt = fmt
        self.q = q
        rings = L.align_up(ring_bytes(fmt, q), 0x1000)
        self.pool_base = base + rings
        self.pool_size = 0x40000
        self.data = self.pool_base + self.pool_size
        self.total = self.data + data_size
        self.own_memory = memory is None
        self.mem = memory if memory is not None else GuestMemory.create(self.total)
        self.space = IdentityAddressSpace(self.mem)
        if fmt == "packed":
            drv = base + L.packed_ring_size(q)
            self.addrs = SplitRingAddresses(base, drv, drv + L.EVENT_SUPPRESS_SIZE)
        else:
            self.addrs = SplitRingAddresses(*split_layout(base, q))
        self.pool = MockPool(self.pool_base, self.pool_size) if indirect else None
        self.driver: Any
        self.device: Any
        drv_features = RingFeatures(event_idx=event_idx, in_order=in_order)
        dev_features = RingFeatures(event_idx, indirect, in_order, batch, strict)
        if fmt == "packed":
            self.driver = PackedDriverQueue(self.mem, q, self.addrs, drv_features, indirect_pool=self.pool)
            self.device = PackedDeviceQueue(
                self.space, q, self.addrs, dev_features, max_indirect=max_indirect
            )
        else:
            self.driver = SplitDriverQueue(self.mem, q, self.addrs, drv_features, indirect_pool=self.pool)
            self.device = SplitDeviceQueue(self.space, q, self.addrs, dev_features, max_indirect=max_indirect)

    def close(self) -> None:
        if self.own_memory:
            self.mem.close()

    def __enter__(self) -> RingPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
