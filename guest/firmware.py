"""The guest's firmware reader: RSDP -> XSDT (or RSDT) -> FADT -> DSDT, plus VIOT and MCFG.

The PCI host bridge (the DSDT's PNP0A08/PNP0A03 Device) gives the PCI windows and the
MCFG its ECAM (:mod:`guest.pci_firmware`).

Linux finds the RSDP through ``acpi_rsdp=`` (kexec, EFI, and our arm ``virt``) or by
scanning the x86 BIOS area 0xE0000-0xFFFFF on 16-byte boundaries; so does
:func:`discover`. What it returns is what a driver match needs: every virtio-mmio
candidate Device with its _HID, _UID, window and interrupt, and the VIOT topology. Tables
that cannot be trusted are reported as errors (the caller decides whether the boot can go
on); nothing here raises anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from virtio_sim.acpi_layouts import FDT, HID, RSDP, RSDP_SIZE, SDT_HEADER_SIZE, SIG
from virtio_sim.guest.pci import PciFirmware
from virtio_sim.memory import ByteAccess

# The ACPI and device-tree parsers are imported when the firmware has tables to parse:
# a guest told of its devices on the command line (microvm's default) never needs them.
if TYPE_CHECKING:
    from virtio_sim.guest.acpi import AcpiDevice, ViotInfo

#: _HIDs under which a virtio-mmio transport may be described (Linaro's, QEMU's vendor space)
VIRTIO_MMIO_HIDS = (HID["virtio_mmio"], HID["qemu_vendor"])
_DTB_PARAM = re.compile(rf"(?:^|\s){re.escape(FDT['cmdline_param'])}=(0x[0-9a-fA-F]+|\d+)")
FDT_HEADER = 40
_RSDP_PARAM = re.compile(rf"(?:^|\s){RSDP['cmdline_param']}=(0x[0-9a-fA-F]+|\d+)")
MAX_TABLES = 64


@dataclass
class FirmwareMmio:
    """A virtio-mmio transport candidate as the DSDT describes it."""

    path: str
    hid: str
    uid: int | str | None
    base: int
    size: int
    irq: int


@dataclass
class FirmwareView:
    """What the firmware told the guest (``source`` is "none" when it told nothing)."""

    source: str = "none"  # "none" | "acpi" | "fdt"
    rsdp_address: int | None = None
    tables: dict[str, int] = field(default_factory=dict)  # signature -> address
    mmio: list[FirmwareMmio] = field(default_factory=list)
    viot: ViotInfo | None = None
    #: the PCI host bridge's windows and ECAM (DSDT PNP0A08/PNP0A03 Device + MCFG)
    pci: PciFirmware | None = None
    pci_bridge: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read(memory: ByteAccess, address: int, length: int) -> bytes:
    try:
        return bytes(memory.read(address, length))
    except Exception as e:
        from virtio_sim.guest.acpi import AcpiError

        raise AcpiError(f"cannot read {length} bytes at {address:#x}: {e}") from None


def read_table(memory: ByteAccess, address: int) -> bytes:
    """A whole table at ``address``, its header's length checked before it is believed."""
    from virtio_sim.guest.acpi import table_length

    header = _read(memory, address, SDT_HEADER_SIZE)
    return _read(memory, address, table_length(header, f" at {address:#x}"))


def find_rsdp(memory: ByteAccess, cmdline: str, ram_base: int) -> int | None:
    """``acpi_rsdp=`` first; else, on an x86 layout (RAM at 0), the BIOS-area scan."""
    m = _RSDP_PARAM.search(cmdline)
    if m is not None:
        return int(str(m.group(1)), 0)
    if ram_base != 0:
        return None
    start, end = int(RSDP["x86_scan_start"]), int(RSDP["x86_scan_end"])
    try:
        area = bytes(memory.read(start, end - start))
    except Exception:
        return None
    sig = SIG["rsdp"].encode()
    align = int(RSDP["align"])
    last = len(area) - RSDP_SIZE
    off = area.find(sig)  # the signature search runs in C; only aligned hits count
    while 0 <= off <= last:
        if off % align == 0:
            from virtio_sim.guest.acpi import AcpiError, parse_rsdp

            try:
                parse_rsdp(area[off : off + RSDP_SIZE])
            except AcpiError:
                pass  # Linux's scan also skips a signature with a bad checksum
            else:
                return start + off
        off = area.find(sig, off + 1)
    return None


def _mmio_of(dev: AcpiDevice) -> FirmwareMmio:
    from virtio_sim.guest.acpi import AcpiError

    if len(dev.memory) != 1 or len(dev.interrupts) != 1:
        raise AcpiError(
            f"{dev.path} ({dev.hid}): _CRS has {len(dev.memory)} memory and {len(dev.interrupts)} "
            "interrupt resources, virtio-mmio needs one of each"
        )
    base, size = dev.memory[0]
    return FirmwareMmio(dev.path, dev.hid or "", dev.uid, base, size, dev.interrupts[0])


def discover(memory: ByteAccess, cmdline: str, ram_base: int = 0) -> FirmwareView:
    view = FirmwareView()
    rsdp_at = find_rsdp(memory, cmdline, ram_base)
    if rsdp_at is None:
        dtb = _DTB_PARAM.search(cmdline)
        if dtb is not None:
            _discover_fdt(memory, int(str(dtb.group(1)), 0), view)
        return view
    from virtio_sim.guest.acpi import (
        AcpiError,
        parse_dsdt,
        parse_fadt,
        parse_mcfg,
        parse_root,
        parse_rsdp,
        parse_viot,
    )
    from virtio_sim.guest.pci_firmware import is_host_bridge, pci_from_acpi

    view.rsdp_address = rsdp_at
    view.source = "acpi"
    try:
        rsdp = parse_rsdp(_read(memory, rsdp_at, RSDP_SIZE))
        root_at = rsdp.xsdt_address or rsdp.rsdt_address
        if not root_at:
            raise AcpiError("RSDP: neither XSDT nor RSDT address")
        addresses = parse_root(read_table(memory, root_at))
        view.tables[SIG["xsdt"] if rsdp.xsdt_address else SIG["rsdt"]] = root_at
        if len(addresses) > MAX_TABLES:
            raise AcpiError(f"root table lists {len(addresses)} tables")
        for address in addresses:
            header = _read(memory, address, 4)
            view.tables.setdefault(header.decode("latin-1"), address)
        fadt_at = view.tables.get(SIG["fadt"])
        if fadt_at is None:
            raise AcpiError("no FADT in the root table")
        dsdt_at = parse_fadt(read_table(memory, fadt_at))
        view.tables[SIG["dsdt"]] = dsdt_at
        dsdt = parse_dsdt(read_table(memory, dsdt_at))
        view.notes += dsdt.notes
        for dev in dsdt.devices:
            if dev.hid in VIRTIO_MMIO_HIDS:
                view.mmio.append(_mmio_of(dev))
        bridge = next((d for d in dsdt.devices if is_host_bridge(d)), None)
        if bridge is not None:
            mcfg_at = view.tables.get(SIG["mcfg"])
            mcfg = parse_mcfg(read_table(memory, mcfg_at)) if mcfg_at is not None else None
            # MSIs need a target: x86's LAPIC window is architectural; on arm (RAM not at 0)
            # an MSI controller would have to be in the tables, and ours carry none.
            view.pci = pci_from_acpi(bridge, mcfg, msi=ram_base == 0)
            view.pci_bridge = bridge.path
        viot_at = view.tables.get(SIG["viot"])
        if viot_at is not None:
            view.viot = parse_viot(read_table(memory, viot_at))
            view.notes += view.viot.notes
    except AcpiError as e:
        view.errors.append(str(e))
    return view


def _discover_fdt(memory: ByteAccess, address: int, view: FirmwareView) -> None:
    """Nodes compatible with "virtio,mmio": reg and the GIC SPI as its GSIV."""
    from virtio_sim.guest.acpi import AcpiError
    from virtio_sim.guest.fdt import FdtError, fdt_size, parse_fdt
    from virtio_sim.guest.pci_firmware import pci_from_fdt

    view.source = "fdt"
    view.tables["FDT"] = address
    try:
        try:
            blob = _read(memory, address, fdt_size(_read(memory, address, FDT_HEADER)))
            nodes = parse_fdt(blob)
        except AcpiError as e:
            raise FdtError(str(e)) from None
        root_cells = nodes[0].cells("#address-cells") if nodes else []
        for node in nodes:
            if FDT["pci_host_compatible"] in node.compatible and view.pci is None:
                view.pci = pci_from_fdt(node, root_cells[0] if root_cells else 2)
                view.pci_bridge = node.path
            if FDT["virtio_mmio_compatible"] not in node.compatible:
                continue
            irqs = node.cells("interrupts")
            if len(node.reg) != 1 or len(irqs) != 3 or irqs[0] != FDT["gic_spi"]:
                raise FdtError(f"{node.path}: needs one reg entry and one GIC SPI interrupt")
            base, size = node.reg[0]
            irq = FDT["gic_spi_gsiv_base"] + irqs[1]
            view.mmio.append(FirmwareMmio(node.path, FDT["virtio_mmio_compatible"], None, base, size, irq))
    except FdtError as e:
        view.errors.append(str(e))
