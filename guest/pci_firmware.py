"""PCI as ACPI describes it: the host bridge Device of the DSDT and the MCFG.

Linux's pci_root driver binds the Device whose _HID or _CID is PNP0A08 (PCI Express) or
PNP0A03 (PCI), takes its bus range and the I/O and memory windows it produces from its
_CRS, and reaches configuration space through the MCFG allocation of the bridge's segment
(ECAM); without an MCFG it falls back to the 0xCF8/0xCFC ports on x86. This module turns
those tables into the :class:`~guest.pci.PciFirmware` our enumeration uses.

The guest places BARs itself (it is its own firmware), one window per kind: the largest
32-bit memory window and the largest I/O window the bridge produces.
"""

from __future__ import annotations

from virtio_sim.acpi_layouts import FDT, HID
from virtio_sim.guest.acpi import AcpiDevice, AcpiError
from virtio_sim.guest.fdt import FdtError, FdtNode
from virtio_sim.guest.pci import PciFirmware
from virtio_sim.spec import PCI_CFG

HOST_BRIDGE_IDS = (HID["pci_express_root"], HID["pci_root"])
FOUR_GIB = 1 << 32


def is_host_bridge(dev: AcpiDevice) -> bool:
    return dev.hid in HOST_BRIDGE_IDS or any(c in HOST_BRIDGE_IDS for c in dev.cids)


def _largest(windows: list[tuple[int, int]]) -> tuple[int, int] | None:
    if not windows:
        return None
    low, high = max(windows, key=lambda w: w[1] - w[0])
    return low, high + 1


def pci_from_fdt(node: FdtNode, parent_address_cells: int) -> PciFirmware:
    """A ``pci-host-ecam-generic`` node: ECAM from reg, buses from bus-range, the I/O and
    32-bit memory windows from ranges. No msi-parent is read: INTx only."""
    if len(node.reg) != 1:
        raise FdtError(f"{node.path}: needs one reg entry (the ECAM window)")
    ecam_base, ecam_size = node.reg[0]
    if node.cells("#address-cells") != [FDT["pci_address_cells"]] or node.cells("#size-cells") != [
        FDT["pci_size_cells"]
    ]:
        raise FdtError(f"{node.path}: a PCI host needs #address-cells 3 and #size-cells 2")
    bus_range = node.cells("bus-range") or [0, (ecam_size >> PCI_CFG.ecam_bus_shift) - 1]
    if len(bus_range) != 2 or bus_range[1] < bus_range[0]:
        raise FdtError(f"{node.path}: bad bus-range {bus_range}")
    step = FDT["pci_address_cells"] + parent_address_cells + FDT["pci_size_cells"]
    ranges = node.cells("ranges")
    if not ranges or len(ranges) % step:
        raise FdtError(f"{node.path}: ranges is not a list of {step}-cell entries")

    def number(cells: list[int]) -> int:
        value = 0
        for c in cells:
            value = value << 32 | c
        return value

    io: tuple[int, int] | None = None
    mem: tuple[int, int] | None = None
    for at in range(0, len(ranges), step):
        entry = ranges[at : at + step]
        space = entry[0] >> FDT["pci_space_shift"] & FDT["pci_space_mask"]
        child = number(entry[1:3])
        size = number(entry[3 + parent_address_cells :])
        if space == FDT["pci_space_io"]:
            io = (child, child + size)
        elif space == FDT["pci_space_mem32"] and child + size <= FOUR_GIB:
            mem = (child, child + size)
    if io is None or mem is None:
        raise FdtError(f"{node.path}: ranges has no {'I/O' if io is None else '32-bit memory'} window")
    buses = min(bus_range[1] + 1, ecam_size >> PCI_CFG.ecam_bus_shift, PCI_CFG.buses)
    return PciFirmware(ecam_base, buses, mem, io, source="fdt", msi=False)


def pci_from_acpi(
    bridge: AcpiDevice, mcfg: list[tuple[int, int, int, int]] | None, *, msi: bool = True
) -> PciFirmware:
    """The bridge's windows and the ECAM of its segment; AcpiError when its _CRS lacks a
    window the enumeration needs or the MCFG does not cover its buses."""
    mem = _largest([w for w in bridge.mem_windows if w[1] < FOUR_GIB])
    io = _largest(bridge.io_windows)
    if mem is None or io is None:
        missing = "32-bit memory" if mem is None else "I/O"
        raise AcpiError(f"{bridge.path}: _CRS produces no {missing} window")
    segment = bridge.seg or 0
    first_bus = bridge.bus_ranges[0][0] if bridge.bus_ranges else bridge.bbn or 0
    ecam_base, buses = None, 0
    for base, seg, start, end in mcfg or []:
        if seg == segment and start <= first_bus <= end:
            # MCFG's base address is that of bus 0 of the segment, whatever its start bus.
            ecam_base, buses = base, min(end + 1, PCI_CFG.buses)
            break
    else:
        if mcfg:
            raise AcpiError(f"MCFG: no allocation covers segment {segment} bus {first_bus}")
    return PciFirmware(ecam_base, buses, mem, io, source="acpi", msi=msi)
