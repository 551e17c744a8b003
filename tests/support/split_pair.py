"""A split driver queue and device queue over one guest memory (Pair), its memory layout, and
the reference checks the split-ring tests share (tests/ring/test_split*.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim import layouts as L
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.mock import MockPool, split_layout
from virtio_sim.ring.split import IDX_MASK, SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures

MAX_SEGS = 8  # segments per chain in the random tests
MAX_SEG_LEN = 300
SLOT = 4096  # data bytes reserved per in-flight chain (MAX_SEGS * (MAX_SEG_LEN + gap) fits)
GAP = 8  # canary bytes between the segments of a chain
CANARY = 0xCC


def in_window(event: int, old: int, new: int) -> bool:
    """Reference for need_event: is ``event`` one of the indices in [old, new) (mod 2^16)?"""
    return ((event - old) & IDX_MASK) < ((new - old) & IDX_MASK)


@dataclass
class Layout:
    desc: int
    avail: int
    used: int
    pool: int
    pool_size: int
    data: int
    total: int

    @classmethod
    def for_queue(cls, q: int, slots: int | None = None) -> Layout:
        desc, avail, used = split_layout(0x1000, q)  # minimum alignments only
        pool = L.align_up(used + L.used_ring_size(q), 0x1000)
        pool_size = 0x40000
        data = pool + pool_size
        total = data + SLOT * (slots if slots is not None else q) + 0x1000
        return cls(desc, avail, used, pool, pool_size, data, total)


class Pair:
    """A driver queue and a device queue sharing one ring in one guest memory."""

    def __init__(
        self,
        q: int,
        *,
        event_idx: bool = False,
        indirect: bool = False,
        order: L.ByteOrder = "little",
        start: int = 0,
        slots: int | None = None,
        max_indirect: int | None = None,
    ) -> None:
        self.q = q
        self.order = order
        self.event_idx = event_idx
        self.layout = lay = Layout.for_queue(q, slots)
        self.mem = GuestMemory.create(lay.total)
        self.space = IdentityAddressSpace(self.mem)
        self.addrs = SplitRingAddresses(lay.desc, lay.avail, lay.used)
        self.pool = MockPool(lay.pool, lay.pool_size) if indirect else None
        drv_features = RingFeatures(event_idx=event_idx)
        dev_features = RingFeatures(event_idx=event_idx, indirect=indirect)
        self.driver = SplitDriverQueue(
            self.mem, q, self.addrs, drv_features, indirect_pool=self.pool, order=order
        )
        self.device = SplitDeviceQueue(
            self.space, q, self.addrs, dev_features, order=order, max_indirect=max_indirect
        )
        self.idx = L.ring_index_codec(order)
        if start:
            self.set_indices(start)

    def set_indices(self, n: int) -> None:
        """Both sides as if ``n`` chains had gone round; notifications enabled at ``n``."""
        d, v = self.driver, self.device
        d.avail_idx = d._kicked_avail = d.last_used = n
        v.last_avail = v._shadow_avail = v.used_idx = v._signalled_used = n
        self.write_u16(self.addrs.avail + L.RING_IDX_OFFSET, n)
        self.write_u16(self.addrs.used + L.RING_IDX_OFFSET, n)
        self.write_u16(self.addrs.avail + L.used_event_offset(self.q), n)
        self.write_u16(self.addrs.used + L.avail_event_offset(self.q), n)

    def read_u16(self, addr: int) -> int:
        value: int = self.idx.unpack(self.mem.read(addr, 2))[0]
        return value

    def write_u16(self, addr: int, value: int) -> None:
        self.mem.write(addr, self.idx.pack(value))

    @property
    def avail_event(self) -> int:
        return self.read_u16(self.addrs.used + L.avail_event_offset(self.q))

    @property
    def used_event(self) -> int:
        return self.read_u16(self.addrs.avail + L.used_event_offset(self.q))

    def close(self) -> None:
        self.mem.close()


def pattern(token: int, n: int) -> bytes:
    return bytes((token * 31 + i * 7 + 1) % 251 for i in range(n))
