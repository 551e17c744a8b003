"""QEMU's machines as the qtest back-end uses them, and the firmware work nobody else does.

A run names a transport (mmio-v1, mmio-v2, pci-modern, ...) and our ``-device`` options.
Here they become a QEMU command line on the matching machine (microvm for virtio-mmio,
q35 for virtio-pci) with QEMU's own device names and properties, and after QEMU started,
the two things firmware would have done before the guest kernel looks around:

* q35: enable MMCONFIG (the MCH's PCIEXBAR, as SeaBIOS does) before QEMU builds its
  tables, so that they carry an MCFG;
* every machine: QEMU's ACPI tables are read from fw_cfg, linked into guest RAM and the
  RSDP handed over as ``acpi_rsdp=``; the guest finds the virtio-mmio transports (microvm,
  virt) in QEMU's DSDT, a virtio-iommu-pci's endpoints in QEMU's VIOT, and on q35 the
  ECAM in QEMU's MCFG and the PCI windows in its PCI0 host bridge's _CRS.
* q35: SeaBIOS writes each function's interrupt line; we do it through 0xCF8/0xCFC with
  QEMU's PIRQ routing.

A guest whose virtio_mmio driver matches no ACPI id (Linux before 4.2) runs microvm with
``acpi=off``: QEMU then has no tables and appends ``virtio_mmio.device=`` itself, which
:func:`describe_mmio` reproduces (IRQ 5 + slot).

The machine facts are data: specs/qemu_machines.toml.
"""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtio_sim.host.build import PCI_TRANSPORT_PROPS, PCI_TRANSPORTS
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import model_name, parse_device_option, pci_name
from virtio_sim.layouts import MMIO_OFFSETS, PCI_HEADER
from virtio_sim.orchestration.qemu.fw_cfg import (
    LinkedTables,
    WindowPlacer,
    fw_cfg_for,
    install_tables,
    read_acpi,
)
from virtio_sim.orchestration.qemu.qtest import QtestClient
from virtio_sim.spec import CONF1, MMIO, PCI_CFG, load_toml

MMIO_TRANSPORTS = ("mmio-v1", "mmio-v2", "mmio")
QEMU_TRANSPORTS = (*MMIO_TRANSPORTS, *PCI_TRANSPORTS)
DEFAULT_DISK_SIZE = 1 << 20
DWORD = 4
OUR_EXTENSIONS = "x-"  # properties QEMU does not have (QEMU's own x- ones are not used here)

_FACTS: dict[str, Any] = load_toml("qemu_machines.toml")


#: versioned machine types (QEMU's compat machines) -> the family whose facts they share
VERSIONED_FAMILIES = {"pc-i440fx-": "pc", "pc-q35-": "q35"}


def machine_family(machine: str) -> str:
    """``pc-i440fx-2.6`` -> ``pc``, ``pc-q35-5.0`` -> ``q35``; other names are their own."""
    for prefix, family in VERSIONED_FAMILIES.items():
        if machine.startswith(prefix):
            return family
    return machine


def _fact(machine: str, key: str) -> Any:
    family = machine_family(machine)
    try:
        return _FACTS[family][key]
    except KeyError:
        raise KeyError(f"specs/qemu_machines.toml: [{family}] has no {key!r}") from None


@dataclass
class QemuDevices:
    """QEMU arguments for a run's devices, plus what could not be carried over."""

    args: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # QEMU device names, in order
    disks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


MMIO_MACHINES = ("microvm", "virt")
PCI_MACHINES = ("q35", "pc")


def machine_of(transport: str, machine: str | None = None) -> str:
    """The QEMU machine a run uses: microvm (or arm ``virt``) for virtio-mmio, q35 for PCI."""
    if transport in MMIO_TRANSPORTS:
        if machine is None:
            return "microvm"
        if machine in MMIO_MACHINES:
            return machine
        choices = ", ".join(MMIO_MACHINES)
        raise PropertyError(f"machine {machine!r} has no virtio-mmio transports here ({choices})")
    if transport in PCI_TRANSPORTS:
        if machine is None:
            return "q35"
        if machine_family(machine) in PCI_MACHINES:
            return machine
        raise PropertyError(
            f"PCI transports run on q35, pc-q35-X.Y or pc-i440fx-X.Y here, not on {machine!r}"
        )
    raise PropertyError(f"transport {transport!r} has no QEMU machine here ({', '.join(QEMU_TRANSPORTS)})")


@dataclass(frozen=True)
class MachineFacts:
    """What the qtest back-end must know of one QEMU machine (specs/qemu_machines.toml)."""

    name: str
    arch: str
    ram_base: int
    irq_controller: str
    irq_line_offset: int  # intercepted line n is interrupt n + this for the guest

    @classmethod
    def of(cls, machine: str) -> MachineFacts:
        return cls(
            machine,
            str(_fact(machine, "arch")),
            int(_fact(machine, "ram_base")),
            str(_fact(machine, "irq_controller")),
            int(_fact(machine, "irq_line_offset")),
        )


def qemu_devices(options: list[str], transport: str, scratch: Path) -> QemuDevices:
    """Our ``-device`` options as QEMU arguments on the machine for ``transport``."""
    out = QemuDevices()
    pci = transport in PCI_TRANSPORTS
    for i, text in enumerate(options):
        spec = parse_device_option(text)
        base = model_name(spec.driver)
        name = spec.driver
        if pci and base == spec.driver:
            name = pci_name(spec.driver) or ""
            if not name:
                raise PropertyError(f"No 'virtio-pci' flavour of device '{spec.driver}'")
        elif not pci and base != spec.driver:
            raise PropertyError(f"No 'PCI' bus found for device '{spec.driver}'")
        props = dict(spec.props)
        if pci:
            for k, v in PCI_TRANSPORT_PROPS[transport].items():
                props.setdefault(k, v)
        if base == "virtio-net-device":
            out.args += net_peer(i, props.pop("x-backend", "loopback"))
            props["netdev"] = f"net{i}"
        if base == "virtio-blk-device":
            disk = props.pop("drive", None)
            if disk is None:
                disk = str(scratch / f"disk{i}.img")
                with open(disk, "wb") as f:
                    f.truncate(DEFAULT_DISK_SIZE)
            disk = os.path.abspath(disk)
            out.disks.append(disk)
            out.args += ["-drive", f"file={disk.replace(',', ',,')},format=raw,if=none,id=drive{i}"]
            props["drive"] = f"drive{i}"
        kept = []
        for k, v in props.items():
            if k.startswith(OUR_EXTENSIONS):
                out.notes.append(f"{name}: {k}={v} is ours, not QEMU's (QEMU ran without it)")
            else:
                kept.append(f"{k}={v.replace(',', ',,')}")  # QEMU judges the rest itself
        out.args += ["-device", ",".join([name, *kept])]
        if base == "virtio-serial-device":
            # the virtconsole at port 0 our model always has, on a chardev that echoes
            out.args += [*echo_chardev(f"con{i}"), "-device", f"virtconsole,chardev=con{i}"]
        out.names.append(name)
    return out


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 nobody uses right now (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def net_peer(index: int, backend: str) -> list[str]:
    """QEMU's netdev for our ``x-backend``: ``loopback`` is a UDP socket netdev that sends to
    itself (every frame comes back, as our loopback backend does); ``switch:NAME`` is a
    hubport on a hub per name (QEMU's hub floods like our switch does for unknown MACs)."""
    if backend == "loopback":
        port = free_udp_port()
        addr = f"127.0.0.1:{port}"
        return ["-netdev", f"socket,id=net{index},udp={addr},localaddr={addr}"]
    if backend.startswith("switch:") and len(backend) > len("switch:"):
        hub = zlib.crc32(backend[len("switch:") :].encode()) & 0x7FFF
        return ["-netdev", f"hubport,id=net{index},hubid={hub}"]
    raise PropertyError(f"Property 'x-backend' doesn't take value '{backend}' (loopback|switch:NAME)")


def echo_chardev(name: str) -> list[str]:
    """A chardev that hands back what the guest writes (our console's loopback): UDP to
    itself."""
    port = free_udp_port()
    return ["-chardev", f"udp,id={name},host=127.0.0.1,port={port},localaddr=127.0.0.1,localport={port}"]


def machine_args(
    transport: str, ram_size: int, machine: str | None = None, *, acpi: bool = True
) -> list[str]:
    """QEMU's -M/-m/-cpu/-global arguments; ``acpi=False`` only on microvm (acpi=off)."""
    machine = machine_of(transport, machine)
    spec = _fact(machine, "machine")
    family = machine_family(machine)
    if family != machine:  # a versioned compat machine: its type, the family's options
        spec = machine + spec.removeprefix(family)
    if not acpi:
        if machine != "microvm":
            raise PropertyError(f"only microvm runs here without ACPI, not {machine!r}")
        spec += ",acpi=off"
    args = ["-M", spec, "-m", f"{ram_size >> 20}M"]
    if "cpu" in _FACTS[family]:
        args += ["-cpu", _fact(machine, "cpu")]
    if transport == "mmio-v1":
        args += ["-global", "virtio-mmio.force-legacy=on"]
    elif transport == "mmio-v2":
        args += ["-global", "virtio-mmio.force-legacy=off"]
    return args


def irq_controller(transport: str, machine: str | None = None) -> str:
    return str(_fact(machine_of(transport, machine), "irq_controller"))


# --------------------------------------------------------------------------- firmware


def install_acpi(client: QtestClient, machine: str) -> LinkedTables:
    """Do what SeaBIOS/EDK2 do with QEMU's ACPI tables: read them from fw_cfg, run the
    table loader into the machine's firmware window and leave them in guest RAM."""
    facts = _FACTS[machine_family(machine)]
    if "pciexbar_offset" in facts:
        enable_mmconfig(client, machine)
    high = tuple(_fact(machine, "acpi_high"))
    fseg = tuple(facts["acpi_fseg"]) if "acpi_fseg" in facts else None
    # The blobs are read by DMA into the window they are then linked into.
    fw = fw_cfg_for(client, _fact(machine, "arch"), high)
    linked = read_acpi(fw, WindowPlacer(high, fseg))
    install_tables(client.memwrite, linked)
    return linked


def describe_mmio(client: QtestClient, machine: str = "microvm", *, acpi: bool = True) -> str:
    """``virtio_mmio.device=`` for every populated transport: what QEMU's microvm itself
    appends to a -kernel command line when ACPI is off (auto-kernel-cmdline)."""
    base, stride = _fact(machine, "mmio_base"), _fact(machine, "mmio_stride")
    irq_base = _fact(machine, "irq_base" if acpi else "irq_base_acpi_off")
    params = []
    for slot in range(_fact(machine, "mmio_slots")):
        addr = base + slot * stride
        if client.read(addr + MMIO_OFFSETS["MagicValue"], DWORD) != MMIO.magic:
            continue
        if client.read(addr + MMIO_OFFSETS["DeviceID"], DWORD) == 0:
            continue  # an empty transport
        params.append(f"virtio_mmio.device={stride:#x}@{addr:#x}:{irq_base + slot}")
    return " ".join(params)


def enable_mmconfig(client: QtestClient, machine: str = "q35") -> None:
    """SeaBIOS's mch_mmconfig_setup: the upper half of PCIEXBAR first, then base | enable.
    From then on QEMU decodes ECAM there, and the ACPI tables it builds next carry an MCFG."""
    offset = _fact(machine, "pciexbar_offset")
    _cfg_write(client, 0, 0, offset + DWORD, DWORD, 0)
    _cfg_write(
        client, 0, 0, offset, DWORD, _fact(machine, "pciexbar_base") | _fact(machine, "pciexbar_enable")
    )


def _conf1(bus: int, dev: int, fn: int, offset: int) -> int:
    return (
        CONF1.ENABLE
        | bus << CONF1.bus_shift
        | dev << CONF1.device_shift
        | fn << CONF1.function_shift
        | offset & CONF1.register_mask
    )


def _cfg_read(client: QtestClient, dev: int, fn: int, offset: int, size: int) -> int:
    client.pio_write(CONF1.address_port, DWORD, _conf1(0, dev, fn, offset))
    return client.pio_read(CONF1.data_port + offset % DWORD, size)


def _cfg_write(client: QtestClient, dev: int, fn: int, offset: int, size: int, value: int) -> None:
    client.pio_write(CONF1.address_port, DWORD, _conf1(0, dev, fn, offset))
    client.pio_write(CONF1.data_port + offset % DWORD, size, value)


def piix_irq(slot: int, pin: int) -> int | None:
    """The ISA IRQ INTx ``pin`` (1 = INTA) of a bus-0 ``slot`` reaches on QEMU's i440fx
    once firmware routed PIRQ A-D (SeaBIOS: pci_slot_get_irq for the PIIX)."""
    if not 1 <= pin <= 4:
        return None
    irqs = _fact("pc", "pirq_irqs")
    return int(irqs[(pin - 1 + slot - 1) % len(irqs)])


def route_piix_pirqs(client: QtestClient) -> None:
    """SeaBIOS's piix_isa_bridge_setup: PIRQ A-D of the PIIX3 (00:01.0) to their IRQs."""
    bridge, register = _fact("pc", "isa_bridge_slot"), _fact("pc", "pirq_route_register")
    for i, irq in enumerate(_fact("pc", "pirq_irqs")):
        _cfg_write(client, bridge, 0, register + i, 1, irq)


def q35_gsi(slot: int, pin: int) -> int | None:
    """The IOAPIC pin INTx ``pin`` (1 = INTA) of a bus-0 ``slot`` reaches on QEMU's q35."""
    if not 1 <= pin <= 4 or slot >= _fact("q35", "routed_slots"):
        return None
    rotation = _fact("q35", "pirq_rotation")
    pirq = _fact("q35", "pirq_first") + (slot + pin - 1) % rotation
    return int(_fact("q35", "pirq_gsi_base") + pirq)


IOMMU_DEVICE = "virtio-iommu-pci"  # QEMU's virtio-iommu; it translates PCI endpoints only


def route_pci_interrupts(client: QtestClient, machine: str = "q35") -> None:
    """Program every bus-0 function's interrupt line, as SeaBIOS does (QEMU's q35 PIRQ
    routing). Nothing is described on the command line any more: the ECAM comes from
    QEMU's MCFG (after :func:`enable_mmconfig`) and the windows from its PCI0 _CRS; a
    virtio-iommu-pci and its endpoints from its VIOT (all through ``acpi_rsdp=``).
    On i440fx (``pc``, ``pc-i440fx-X.Y``) the PIIX3's PIRQ routing is set up first."""
    pc = machine_family(machine) == "pc"
    if pc:
        route_piix_pirqs(client)
    for dev in range(PCI_CFG.devices_per_bus):
        functions = 1
        for fn in range(PCI_CFG.functions_per_device):
            if fn >= functions:
                break
            vendor = _cfg_read(client, dev, fn, PCI_HEADER["vendor_id"], 2)
            if vendor in (PCI_CFG.absent_vendor, 0):
                if fn == 0:
                    break
                continue
            header = _cfg_read(client, dev, fn, PCI_HEADER["header_type"], 1)
            if fn == 0 and header & PCI_CFG.header_type_multifunction:
                functions = PCI_CFG.functions_per_device
            pin = _cfg_read(client, dev, fn, PCI_HEADER["interrupt_pin"], 1)
            gsi = piix_irq(dev, pin) if pc else q35_gsi(dev, pin)
            if gsi is not None:
                _cfg_write(client, dev, fn, PCI_HEADER["interrupt_line"], 1, gsi)


def describe(client: QtestClient, transport: str, machine: str | None = None, *, acpi: bool = True) -> str:
    """What the command line must still say besides ``acpi_rsdp=``: nothing on q35 (its
    interrupt lines are programmed here; ECAM and windows are in QEMU's tables) or on the
    mmio machines with ACPI, whose DSDT lists the transports; microvm's own
    ``virtio_mmio.device=`` list with acpi=off."""
    if transport in PCI_TRANSPORTS:
        route_pci_interrupts(client, machine_of(transport, machine))
        return ""
    name = machine_of(transport, machine)
    return "" if acpi else describe_mmio(client, name, acpi=False)
