"""A machine: guest RAM, an MMIO bus with virtio-mmio transports, and interrupt lines.

This is the small machine the core slice needs: QEMU microvm's virtio-mmio layout (slots
of 0x200 bytes from 0xfeb00000, IRQ 5 + slot, devices placed from the highest slot down as
QEMU 7.2 does). The guest learns the transports the way Linux's ``virtio_mmio.device=``
kernel parameter tells it (``size@base:irq``); firmware tables come with the machines issue.

Accesses to addresses where no device sits read as 0 and are ignored on write (QEMU's
unassigned memory), recorded in :attr:`Machine.notes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from host.transport.mmio import MMIO_WINDOW, MmioTransport
from host.virtio_device import VirtioDevice
from virtio_sim.memory import GuestMemory

MICROVM_MMIO_BASE = 0xFEB00000
MICROVM_MMIO_SLOTS = 8
MICROVM_IRQ_BASE = 5


@dataclass
class MmioSlot:
    base: int
    irq: int
    transport: MmioTransport


class Machine:
    def __init__(
        self,
        memory: GuestMemory,
        *,
        mmio_base: int = MICROVM_MMIO_BASE,
        mmio_slots: int = MICROVM_MMIO_SLOTS,
        irq_base: int = MICROVM_IRQ_BASE,
    ) -> None:
        self.memory = memory
        self.mmio_base = mmio_base
        self.mmio_slots = mmio_slots
        self.irq_base = irq_base
        self.slots: list[MmioSlot] = []
        self.notes: list[str] = []
        self.irq_out: Callable[[int, bool], None] = lambda irq, level: None
        #: transport base -> virtio-iommu endpoint id, for devices behind the IOMMU
        self.iommu_endpoints: dict[int, int] = {}

    def add_mmio_device(self, device: VirtioDevice, *, legacy: bool) -> MmioSlot:
        """Place a device in the highest free slot (QEMU microvm's order)."""
        slot_index = self.mmio_slots - 1 - len(self.slots)
        if slot_index < 0:
            raise ValueError(f"no free virtio-mmio slot (machine has {self.mmio_slots})")
        irq = self.irq_base + slot_index

        def set_level(level: bool) -> None:
            self.irq_out(irq, level)

        transport = MmioTransport(device, legacy=legacy, set_irq_level=set_level)
        slot = MmioSlot(self.mmio_base + MMIO_WINDOW * slot_index, irq, transport)
        self.slots.append(slot)
        return slot

    def kernel_cmdline(self) -> str:
        """Linux's virtio_mmio.device= parameters describing every populated slot.

        With a virtio-iommu, ``virtio_sim.viot=IOMMU:BASE@EP,...`` tells the guest which
        transports sit behind it and their endpoint ids (what ACPI's VIOT table carries).
        """
        params = [
            f"virtio_mmio.device={MMIO_WINDOW:#x}@{s.base:#x}:{s.irq}"
            for s in sorted(self.slots, key=lambda s: s.base)
        ]
        iommu = next((s for s in self.slots if s.transport.device.type.key == "iommu"), None)
        if iommu is not None:
            eps = ",".join(f"{base:#x}@{ep}" for base, ep in sorted(self.iommu_endpoints.items()))
            params.append(f"virtio_sim.viot={iommu.base:#x}:{eps}")
        return " ".join(params)

    def _find(self, addr: int, size: int) -> tuple[MmioSlot, int] | None:
        for s in self.slots:
            if s.base <= addr and addr + size <= s.base + MMIO_WINDOW:
                return s, addr - s.base
        return None

    def mmio_read(self, addr: int, size: int) -> int:
        hit = self._find(addr, size)
        if hit is None:
            self.notes.append(f"read of unassigned address {addr:#x}/{size}")
            return 0
        slot, off = hit
        return slot.transport.read(off, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        hit = self._find(addr, size)
        if hit is None:
            self.notes.append(f"write of unassigned address {addr:#x}/{size}")
            return
        slot, off = hit
        slot.transport.write(off, size, value)

    @property
    def devices(self) -> list[VirtioDevice]:
        return [s.transport.device for s in self.slots]
