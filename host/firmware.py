"""Firmware for our machines: build the ACPI tables of a populated machine and leave
them in guest RAM where the guest kernel will look.

x86 (microvm, q35): the RSDP in the BIOS read-only area at 0xE0000 (Linux scans
0xE0000-0xFFFFF for "RSD PTR "), the other tables below it from 0x80000 -- all in the
first MiB, which our guest leaves to firmware. arm ``virt``: the tables in the first MiB
of RAM (at 1 GiB) and the RSDP address handed over as ``acpi_rsdp=`` (what UEFI's
configuration table does on real arm64); with acpi=off a device tree instead
(:mod:`host.fdt`).
"""

from __future__ import annotations

from virtio_sim.acpi_layouts import FDT, RSDP
from virtio_sim.host.acpi import (
    AcpiPlan,
    AcpiTables,
    MmioDeviceEntry,
    PciBridgeEntry,
    ViotTopology,
    build_tables,
)
from virtio_sim.host.fdt import FdtPciHost, virt_fdt
from virtio_sim.host.machine import Machine
from virtio_sim.host.machine_types import MachineSpec
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.memory import GuestMemory
from virtio_sim.spec import PCI_CFG


def acpi_plan(machine: Machine, spec: MachineSpec) -> AcpiPlan:
    """What the DSDT lists, in QEMU's order: populated slots highest first (microvm, q35)
    or every slot lowest first (virt); the VIOT when a virtio-iommu is present."""
    populated = {s.base for s in machine.slots}
    every = spec.facts["dsdt_slots"] == "all"
    order = range(machine.mmio_slots)
    if spec.facts["dsdt_order"] == "descending":
        order = range(machine.mmio_slots - 1, -1, -1)
    slots = [i for i in order if every or machine.mmio_base + MMIO_WINDOW * i in populated]
    entries = [
        MmioDeviceEntry(i, machine.mmio_base + MMIO_WINDOW * i, MMIO_WINDOW, machine.irq_base + i)
        for i in slots
    ]
    viot = None
    iommu = next((s for s in machine.slots if s.transport.device.type.key == "iommu"), None)
    if iommu is not None:
        viot = ViotTopology(iommu.base, dict(machine.iommu_endpoints), dict(machine.iommu_pci_endpoints))
    ecam, bridge = None, None
    if machine.pci is not None:
        w = machine.pci.windows
        virt = spec.facts["arch"] == "aarch64"
        style, pio = ("virt", spec.facts["pio_base"]) if virt else ("q35", 0)
        bridge = PciBridgeEntry(machine.pci.ecam_buses or PCI_CFG.buses, w.io, w.mem, style, pio)
        if machine.pci.ecam_base is not None:
            ecam = (machine.pci.ecam_base, machine.pci.ecam_buses)
    hw_reduced = bool(spec.facts["hw_reduced"])
    return AcpiPlan(entries, spec.mmio_hid, hw_reduced=hw_reduced, viot=viot, ecam=ecam, pci=bridge)


def install_acpi(machine: Machine, memory: GuestMemory, spec: MachineSpec) -> AcpiTables:
    """Build the tables, write them into guest RAM, and tell the machine what the guest's
    boot parameters say about them."""
    facts = spec.facts
    if facts["arch"] == "x86_64":
        rsdp_at = RSDP["x86_scan_start"]
        low, high = facts["tables_low"], facts["tables_high"]
        machine.boot_params = []
    else:
        # The RSDP first, the other tables from the next aligned address after it.
        rsdp_at = spec.ram_base + facts["tables_low"]
        rsdp_span = -(-RSDP["length"] // RSDP["align"]) * RSDP["align"]
        low, high = rsdp_at + rsdp_span, spec.ram_base + facts["tables_high"]
        machine.boot_params = [f"{RSDP['cmdline_param']}={rsdp_at:#x}"]
    tables = build_tables(acpi_plan(machine, spec), rsdp_at, low, high)
    for address, blob in tables.blobs.items():
        memory.write(address, blob)
    machine.firmware = "acpi"
    return tables


def install_fdt(machine: Machine, memory: GuestMemory, spec: MachineSpec) -> int:
    """virt with acpi=off: the device tree in the first MiB of RAM, its address handed
    over on the command line (standing in for register x0 at kernel entry)."""
    facts = spec.facts
    pci = None
    if machine.pci is not None:
        io = machine.pci.windows.io
        pci = FdtPciHost(
            machine.pci.ecam_base or 0,
            machine.pci.ecam_buses,
            facts["pio_base"],
            io[1] - io[0],
            machine.pci.windows.mem,
        )
    blob = virt_fdt(machine.mmio_base, MMIO_WINDOW, machine.mmio_slots, facts["spi_base"], pci)
    if len(blob) > facts["fdt_max"]:
        raise ValueError(f"device tree of {len(blob)} bytes exceeds {facts['fdt_max']}")
    address = spec.ram_base + int(facts["fdt_offset"])
    memory.write(address, blob)
    machine.firmware = "fdt"
    machine.boot_params = [f"{FDT['cmdline_param']}={address:#x}"]
    return address
