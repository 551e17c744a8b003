"""A machine: guest RAM, an MMIO bus with virtio-mmio transports, interrupt lines, and
optionally q35's PCI host bridge with virtio-pci functions.

This is the small machine the core slice needs: QEMU microvm's virtio-mmio layout (slots
of 0x200 bytes from 0xfeb00000, IRQ 5 + slot, devices placed from the highest slot down as
QEMU 7.2 does). Without firmware (the default machine, QEMU microvm's acpi=off) the guest
learns the transports from Linux's ``virtio_mmio.device=`` kernel parameter
(``size@base:irq``); a machine built with ``-M`` gets ACPI tables or a device tree from
:mod:`host.firmware` and the command line then carries only :attr:`Machine.boot_params`.
A machine with PCI (``attach_q35_pci``) but no ACPI tables describes its ECAM window and
BAR windows on the command line (``virtio_sim.pci=ecam@BASE/BUSES,mem@START-END,io@START-END``),
standing in for ACPI's MCFG table and the host bridge's _CRS; with ACPI (``-M q35``) the
tables carry them.

Accesses to addresses where no device sits read as 0 and are ignored on write (QEMU's
unassigned memory), recorded in :attr:`Machine.notes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtio_sim.host.transport.mmio import MMIO_WINDOW, MmioTransport
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.memory import GuestMemory
from virtio_sim.spec import MMIO, MSI

if TYPE_CHECKING:  # a machine without a PCI bus (microvm) never imports the PCI code
    from virtio_sim.host.pci import PciHost
    from virtio_sim.host.transport.virtio_pci import VirtioPciProxy

MICROVM_MMIO_BASE = 0xFEB00000
MICROVM_MMIO_SLOTS = 8
MICROVM_IRQ_BASE = 5

# QEMU q35 (hw/pci-host/q35.c, hw/i386/pc.c): MMCONFIG at 0xb0000000 for 256 buses, BARs
# in the 32-bit hole below the IOAPIC, I/O BARs from 0xc000 as SeaBIOS places them, and
# the PCI interrupt pins swizzled onto the PIRQ lines that the IOAPIC sees as GSI 16-23.
Q35_ECAM_BASE = 0xB0000000
Q35_ECAM_BUSES = 256
Q35_PCI_MEM_WINDOW = (0xC0000000, 0xFEC00000)
Q35_PCI_IO_WINDOW = (0xC000, 0x10000)
Q35_PIRQ_GSI_BASE = 16
Q35_PIRQ_LINES = 8
PCI_CMDLINE_PARAM = "virtio_sim.pci"


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
        #: PCI requester id -> virtio-iommu endpoint id (the same number, as in the VIOT)
        self.iommu_pci_endpoints: dict[int, int] = {}
        self.msi_out: Callable[[int, int], None] = lambda address, data: None
        self.pci: PciHost | None = None
        self.pci_devices: list[VirtioPciProxy] = []
        #: set by host/firmware.py: the guest learns the mmio transports and the IOMMU
        #: topology from tables in RAM, and its command line says only ``boot_params``
        self.firmware: str | None = None
        self.boot_params: list[str] = []
        #: None: unpopulated slots are unassigned memory (the default machine); a bool:
        #: every slot is a transport, as in QEMU, the empty ones backend-less (device id
        #: 0) with this force-legacy setting
        self.empty_transports_legacy: bool | None = None
        #: system devices at fixed addresses (the platform IOMMU's register window)
        self.sysdevs: list[Any] = []
        #: extra kernel parameters the boot loader passes (the platform's description)
        self.platform_params: list[str] = []

    def add_mmio_device(self, device: VirtioDevice, *, legacy: bool, bus: int | None = None) -> MmioSlot:
        """Place a device in the highest free slot (QEMU microvm's order), or on
        ``virtio-mmio-bus.<bus>`` when the device named its bus."""
        used = {(slot.base - self.mmio_base) // MMIO_WINDOW for slot in self.slots}
        if bus is not None:
            if not 0 <= bus < self.mmio_slots:
                raise ValueError(f"Bus 'virtio-mmio-bus.{bus}' not found")
            if bus in used:
                raise ValueError(f"Bus 'virtio-mmio-bus.{bus}' is full")
            slot_index = bus
        else:
            free = [i for i in range(self.mmio_slots) if i not in used]
            if not free:
                raise ValueError(f"no free virtio-mmio slot (machine has {self.mmio_slots})")
            slot_index = free[-1]
        irq = self.irq_base + slot_index

        def set_level(level: bool) -> None:
            self.irq_out(irq, level)

        transport = MmioTransport(device, legacy=legacy, set_irq_level=set_level)
        slot = MmioSlot(self.mmio_base + MMIO_WINDOW * slot_index, irq, transport)
        self.slots.append(slot)
        return slot

    # -- PCI ---------------------------------------------------------------------------

    def attach_q35_pci(self) -> PciHost:
        """Give the machine q35's PCI host bridge (ECAM and 0xCF8/0xCFC) at 00:00.0."""
        from virtio_sim.host.pci import PciHost, PciWindows, q35_host_bridge

        host = PciHost(
            PciWindows(Q35_PCI_MEM_WINDOW, Q35_PCI_IO_WINDOW),
            ecam_base=Q35_ECAM_BASE,
            ecam_buses=Q35_ECAM_BUSES,
            conf1=True,
            irq_base=Q35_PIRQ_GSI_BASE,
            irq_count=Q35_PIRQ_LINES,
        )
        host.irq_out = lambda irq, level: self.irq_out(irq, level)
        host.msi_out = self._msi
        host.plug(q35_host_bridge(), slot=0)
        self.pci = host
        return host

    def attach_virt_pci(self, facts: dict[str, Any]) -> PciHost:
        """Give the machine arm virt's PCIe host bridge: ECAM only (no 0xCF8 ports), INTx
        A-D on GSIV 35-38 swizzled by slot, no MSI controller (specs/machines.toml)."""
        from virtio_sim.host.pci import PciHost, PciWindows, gpex_host_bridge

        host = PciHost(
            PciWindows(tuple(facts["pci_mem"]), tuple(facts["pci_io"])),
            ecam_base=facts["ecam_base"],
            ecam_buses=facts["ecam_buses"],
            conf1=False,
            irq_base=facts["intx_gsi_base"],
            irq_count=facts["intx_lines"],
        )
        host.irq_out = lambda irq, level: self.irq_out(irq, level)
        host.msi_out = self._msi
        host.plug(gpex_host_bridge(), slot=0)
        self.pci = host
        return host

    def add_pci_device(self, proxy: VirtioPciProxy, slot: int | None = None, function: int = 0) -> None:
        if self.pci is None:
            raise ValueError("this machine has no PCI bus")
        self.pci.plug(proxy.fn, slot, function)
        self.pci_devices.append(proxy)

    def _msi(self, address: int, data: int) -> None:
        """An MSI is a write to the interrupt controller's window; anywhere else it is a
        stray DMA write, which this machine drops and notes."""
        if MSI.x86_doorbell <= address < MSI.x86_doorbell + MSI.x86_doorbell_size:
            self.msi_out(address, data)
        else:
            self.notes.append(f"MSI write {data:#x} to {address:#x} outside the APIC window")

    def pio_read(self, port: int, size: int) -> int:
        value = self.pci.pio_read(port, size) if self.pci else None
        if value is None:
            self.notes.append(f"read of unassigned port {port:#x}/{size}")
            return (1 << (8 * size)) - 1  # nothing drives the bus: all ones
        return value

    def pio_write(self, port: int, size: int, value: int) -> None:
        if not (self.pci and self.pci.pio_write(port, size, value)):
            self.notes.append(f"write of unassigned port {port:#x}/{size}")

    def kernel_cmdline(self) -> str:
        """Linux's virtio_mmio.device= parameters describing every populated slot, and
        what ACPI's MCFG and the host bridge's _CRS would say about PCI.

        With a virtio-iommu, ``virtio_sim.viot=IOMMU:BASE@EP,...`` tells the guest which
        transports sit behind it and their endpoint ids (what ACPI's VIOT table carries).
        """
        params = [
            f"virtio_mmio.device={MMIO_WINDOW:#x}@{s.base:#x}:{s.irq}"
            for s in sorted(self.slots, key=lambda s: s.base)
        ]
        if self.firmware is not None:
            # The DSDT lists the transports and the VIOT the IOMMU topology.
            params = list(self.boot_params)
        if self.pci is not None and self.firmware != "acpi":
            # Without ACPI (the default machine, -M q35,acpi=off) the command line stands
            # in for the MCFG and the host bridge's _CRS.
            w = self.pci.windows
            parts = []
            if self.pci.ecam_base is not None:
                parts.append(f"ecam@{self.pci.ecam_base:#x}/{self.pci.ecam_buses}")
            parts.append(f"mem@{w.mem[0]:#x}-{w.mem[1]:#x}")
            parts.append(f"io@{w.io[0]:#x}-{w.io[1]:#x}")
            params.append(f"{PCI_CMDLINE_PARAM}={','.join(parts)}")
        params += self.platform_params
        iommu = next((s for s in self.slots if s.transport.device.type.key == "iommu"), None)
        if iommu is not None and self.firmware is None:
            items = [f"{base:#x}@{ep}" for base, ep in sorted(self.iommu_endpoints.items())]
            items += [f"pci:{rid:#x}@{ep}" for rid, ep in sorted(self.iommu_pci_endpoints.items())]
            eps = ",".join(items)
            params.append(f"virtio_sim.viot={iommu.base:#x}:{eps}")
        return " ".join(params)

    def _find(self, addr: int, size: int) -> tuple[MmioSlot, int] | None:
        for s in self.slots:
            if s.base <= addr and addr + size <= s.base + MMIO_WINDOW:
                return s, addr - s.base
        return None

    def _empty_slot(self, addr: int) -> int | None:
        """Offset inside a backend-less transport of QEMU's layout, or None."""
        if self.empty_transports_legacy is None:
            return None
        if not self.mmio_base <= addr < self.mmio_base + MMIO_WINDOW * self.mmio_slots:
            return None
        return (addr - self.mmio_base) % MMIO_WINDOW

    def _empty_read(self, offset: int) -> int:
        """QEMU's virtio-mmio without a backend: magic, version, vendor, device id 0."""
        if offset == MMIO_OFFSETS["MagicValue"]:
            return MMIO.magic
        if offset == MMIO_OFFSETS["Version"]:
            return MMIO.version_legacy if self.empty_transports_legacy else MMIO.version_modern
        if offset == MMIO_OFFSETS["VendorID"]:
            return MMIO.qemu_vendor_id
        return 0

    def mmio_read(self, addr: int, size: int) -> int:
        for dev in self.sysdevs:
            if dev.contains(addr):
                return int(dev.read(addr, size))
        if self.pci is not None:
            value = self.pci.mmio_read(addr, size)
            if value is not None:
                return value
        hit = self._find(addr, size)
        if hit is None:
            empty = self._empty_slot(addr)
            if empty is not None:
                return self._empty_read(empty)
            self.notes.append(f"read of unassigned address {addr:#x}/{size}")
            return 0
        slot, off = hit
        return slot.transport.read(off, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        for dev in self.sysdevs:
            if dev.contains(addr):
                dev.write(addr, size, value)
                return
        if self.pci is not None and self.pci.mmio_write(addr, size, value):
            return
        hit = self._find(addr, size)
        if hit is None:
            if self._empty_slot(addr) is not None:
                self.notes.append(f"write to backend-less virtio-mmio transport at {addr:#x}")
                return
            self.notes.append(f"write of unassigned address {addr:#x}/{size}")
            return
        slot, off = hit
        slot.transport.write(off, size, value)

    @property
    def devices(self) -> list[VirtioDevice]:
        return [s.transport.device for s in self.slots] + [p.device for p in self.pci_devices]
