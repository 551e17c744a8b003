"""Test helpers: a host device behind an mmio transport, driven register by register."""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim import layouts
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.guest.dma import DirectDma
from virtio_sim.host.devices.base import DeviceModel
from virtio_sim.host.transport.mmio import MmioTransport
from virtio_sim.host.virtio_device import ErrorPolicy, VirtioDevice
from virtio_sim.layouts import MMIO_OFFSETS as R
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.split import SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import STATUS


@dataclass
class Bench:
    """One device on an mmio transport, plus a hand-driven driver queue."""

    memory: GuestMemory
    device: VirtioDevice
    transport: MmioTransport
    dma: DirectDma
    irq_levels: list[bool]

    def r(self, reg: str) -> int:
        return self.transport.read(R[reg], 4)

    def w(self, reg: str, value: int) -> None:
        self.transport.write(R[reg], 4, value)

    def negotiate(self, features: int | None = None) -> int:
        self.w("Status", 0)
        self.w("Status", STATUS.ACKNOWLEDGE)
        self.w("Status", STATUS.ACKNOWLEDGE | STATUS.DRIVER)
        self.w("DeviceFeaturesSel", 0)
        lo = self.r("DeviceFeatures")
        self.w("DeviceFeaturesSel", 1)
        hi = self.r("DeviceFeatures")
        offered = hi << 32 | lo
        acked = offered if features is None else features
        self.w("DriverFeaturesSel", 0)
        self.w("DriverFeatures", acked & 0xFFFFFFFF)
        self.w("DriverFeaturesSel", 1)
        self.w("DriverFeatures", acked >> 32)
        self.w("Status", STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK)
        return acked

    def setup_queue(self, index: int, size: int, *, event_idx: bool = False) -> SplitDriverQueue:
        d = layouts.desc_table_size(size)
        a = layouts.avail_ring_size(size)
        u = layouts.used_ring_size(size)
        area = self.dma.alloc(layouts.align_up(d + a, 4) + u, 16)
        addrs = SplitRingAddresses(area.gpa, area.gpa + d, area.gpa + layouts.align_up(d + a, 4))
        q = SplitDriverQueue(
            self.memory, size, addrs, RingFeatures(event_idx=event_idx), indirect_pool=self.dma
        )
        self.w("QueueSel", index)
        self.w("QueueSize", size)
        for reg, addr in (
            ("QueueDesc", addrs.desc),
            ("QueueDriver", addrs.avail),
            ("QueueDevice", addrs.used),
        ):
            self.w(reg + "Low", addr & 0xFFFFFFFF)
            self.w(reg + "High", addr >> 32)
        self.w("QueueReady", 1)
        return q

    def driver_ok(self) -> None:
        self.w("Status", self.r("Status") | STATUS.DRIVER_OK)


def make_bench(
    model: DeviceModel, *, policy: ErrorPolicy = ErrorPolicy.NEEDS_RESET, legacy: bool = False
) -> Bench:
    memory = GuestMemory.create(8 << 20)
    device = VirtioDevice(model, lambda f: IdentityAddressSpace(memory), policy=policy)
    levels: list[bool] = []
    transport = MmioTransport(device, legacy=legacy, set_irq_level=levels.append)
    dma = DirectDma(memory, PageAllocator(1 << 20, 8 << 20))
    return Bench(memory, device, transport, dma, levels)
