"""A flattened device tree for the arm ``virt`` machine booted without ACPI.

What QEMU's virt writes for its virtio-mmio transports (checked against its ``dumpdtb``
output in the tests): under a root with #address-cells = #size-cells = 2, one node
``virtio_mmio@<base>`` per transport, lowest address first, with compatible
"virtio,mmio", reg <0 base 0 0x200>, interrupts <SPI spi edge-rising> and dma-coherent,
and the GICv2 node those interrupts refer to (the root's interrupt-parent), so that
``dtc -I dtb -O dts`` reads the blob without a warning, as it reads QEMU's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from virtio_sim.acpi_layouts import FDT, FdtHeader
from virtio_sim.host.machine_types import MACHINE_FACTS
from virtio_sim.spec import PCI_CFG

CELLS = 2
RSVMAP_END = bytes(16)  # the memory reservation map: just its terminating entry
ROOT_COMPATIBLE = "linux,dummy-virt"


class _Builder:
    def __init__(self) -> None:
        self.struct = bytearray()
        self.strings = bytearray()
        self._offsets: dict[str, int] = {}

    def _token(self, token: int) -> None:
        self.struct += struct.pack(">I", token)

    def _pad(self) -> None:
        self.struct += bytes(-len(self.struct) % 4)

    def begin(self, name: str) -> None:
        self._token(FDT["begin_node"])
        self.struct += name.encode() + b"\0"
        self._pad()

    def end(self) -> None:
        self._token(FDT["end_node"])

    def prop(self, name: str, value: bytes) -> None:
        if name not in self._offsets:
            self._offsets[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        self._token(FDT["prop"])
        self.struct += struct.pack(">II", len(value), self._offsets[name]) + value
        self._pad()

    def cells(self, name: str, *values: int) -> None:
        self.prop(name, b"".join(struct.pack(">I", v) for v in values))

    def string(self, name: str, text: str) -> None:
        self.prop(name, text.encode() + b"\0")

    def finish(self) -> bytes:
        self._token(FDT["end"])
        header_size = FdtHeader.sizeof()
        off_rsv = header_size
        off_struct = off_rsv + len(RSVMAP_END)
        off_strings = off_struct + len(self.struct)
        total = off_strings + len(self.strings)
        header = FdtHeader.build(
            {
                "magic": FDT["magic"],
                "totalsize": total,
                "off_dt_struct": off_struct,
                "off_dt_strings": off_strings,
                "off_mem_rsvmap": off_rsv,
                "version": FDT["version"],
                "last_comp_version": FDT["last_comp_version"],
                "boot_cpuid_phys": 0,
                "size_dt_strings": len(self.strings),
                "size_dt_struct": len(self.struct),
            }
        )
        return bytes(header) + RSVMAP_END + bytes(self.struct) + bytes(self.strings)


@dataclass(frozen=True)
class FdtPciHost:
    """virt's PCIe host as its device-tree node says: ECAM, buses, I/O and MMIO windows."""

    ecam_base: int
    buses: int
    pio_base: int
    io_size: int
    mem: tuple[int, int]  # [start, end), bus address == CPU address


def _pair(value: int) -> tuple[int, int]:
    return value >> 32, value & 0xFFFFFFFF


def pci_host_node(b: _Builder, pci: FdtPciHost) -> None:
    """``pcie@<mmio>`` as QEMU's create_pcie() writes it (without interrupt-map: our guest
    reads each function's INTx line from config space)."""
    mem_base, mem_size = pci.mem[0], pci.mem[1] - pci.mem[0]
    ecam_size = pci.buses << PCI_CFG.ecam_bus_shift
    b.begin(f"pcie@{mem_base:x}")
    b.string("compatible", FDT["pci_host_compatible"])
    b.string("device_type", "pci")
    b.cells("#address-cells", FDT["pci_address_cells"])
    b.cells("#size-cells", FDT["pci_size_cells"])
    b.cells("linux,pci-domain", 0)
    b.cells("bus-range", 0, pci.buses - 1)
    b.prop("dma-coherent", b"")
    b.cells("reg", *_pair(pci.ecam_base), *_pair(ecam_size))
    io_space = FDT["pci_space_io"] << FDT["pci_space_shift"]
    mem_space = FDT["pci_space_mem32"] << FDT["pci_space_shift"]
    b.cells(
        "ranges",
        *(io_space, 0, 0, *_pair(pci.pio_base), *_pair(pci.io_size)),
        *(mem_space, *_pair(mem_base), *_pair(mem_base), *_pair(mem_size)),
    )
    b.end()


def gic_node(b: _Builder) -> None:
    """``intc@<dist>`` as QEMU's fdt_add_gic_node() writes it for GICv2 (without the
    v2m MSI frame, which we do not model)."""
    facts = MACHINE_FACTS["virt"]
    dist, cpu = facts["gic_dist"], facts["gic_cpu"]
    b.begin(f"intc@{dist[0]:x}")
    b.cells("phandle", facts["gic_phandle"])
    b.cells("reg", *_pair(dist[0]), *_pair(dist[1]), *_pair(cpu[0]), *_pair(cpu[1]))
    b.string("compatible", FDT["gic_compatible"])
    b.prop("ranges", b"")
    b.cells("#size-cells", CELLS)
    b.cells("#address-cells", CELLS)
    b.prop("interrupt-controller", b"")
    b.cells("#interrupt-cells", FDT["gic_interrupt_cells"])
    b.end()


def virt_fdt(mmio_base: int, stride: int, slots: int, spi_base: int, pci: FdtPciHost | None = None) -> bytes:
    """The device tree of a virt machine's virtio-mmio transports (all slots, as QEMU) and,
    when it has one, its PCIe host."""
    b = _Builder()
    b.begin("")
    b.cells("interrupt-parent", MACHINE_FACTS["virt"]["gic_phandle"])
    b.cells("#address-cells", CELLS)
    b.cells("#size-cells", CELLS)
    b.string("compatible", ROOT_COMPATIBLE)
    for slot in range(slots):
        base = mmio_base + stride * slot
        b.begin(f"virtio_mmio@{base:x}")
        b.prop("dma-coherent", b"")
        b.cells("interrupts", FDT["gic_spi"], spi_base + slot, FDT["irq_edge_rising"])
        b.cells("reg", base >> 32, base & 0xFFFFFFFF, 0, stride)
        b.string("compatible", FDT["virtio_mmio_compatible"])
        b.end()
    if pci is not None:
        pci_host_node(b, pci)
    gic_node(b)
    b.end()
    return b.finish()
