"""``-M microvm|q35|virt[,acpi=on|off][,iommu=virtio][,x-mmio-hid=HID]``: QEMU-style
machine selection, checked before anything is built.

The facts of each machine (memory map, slots, interrupt numbering, where firmware tables
go) are data in specs/machines.toml. Refusals use QEMU's wording where QEMU has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from virtio_sim.acpi_layouts import HID
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev_props import Prop
from virtio_sim.spec import load_toml

MACHINE_FACTS: dict[str, dict[str, Any]] = load_toml("machines.toml")
MMIO_HIDS = (HID["virtio_mmio"], HID["qemu_vendor"])
IOMMU_VALUES = {"none": "none", "virtio": "virtio-iommu", "virtio-iommu": "virtio-iommu"}
ON_OFF = {"on": True, "off": False, "auto": None}
#: what each machine is (``-M help``)
MACHINE_DESCRIPTIONS = {
    "microvm": "QEMU microvm: virtio-mmio slots at 0xfeb00000, transports on the kernel command line"
    " (acpi=on: an ACPI DSDT)",
    "q35": "QEMU q35: PCIe host bridge with ECAM at 0xb0000000, virtio-*-pci devices, ACPI tables",
    "virt": "QEMU arm virt: 32 virtio-mmio slots at 0x0a000000, a PCIe host, ACPI tables"
    " (acpi=off: a device tree)",
}
#: the machine properties this builder parses (``-M NAME,help``); which machine takes
#: which is the "props" list of specs/machines.toml
MACHINE_PROPS: dict[str, Prop] = {
    "acpi": Prop("OnOffAuto", "auto", "Enable ACPI (auto: the machine's default)"),
    "iommu": Prop("str", "none", "none|virtio: a virtio-iommu on an mmio slot, described by a VIOT"),
    "x-mmio-hid": Prop("str", HID["virtio_mmio"], f"{'|'.join(MMIO_HIDS)}: the DSDT _HID of virtio-mmio"),
    "x-platform": Prop(
        "str", "none", "none|viommu|viommu-pt|tce|xen-pv: the guest's DMA platform (docs/dma-api-2015.md)"
    ),
}


def machine_props(name: str) -> dict[str, Prop]:
    facts = MACHINE_FACTS.get(name)
    if facts is None:
        raise PropertyError(
            f"unsupported machine type '{name}' (this host builds: {', '.join(MACHINE_FACTS)}); "
            "Use -machine help to list supported machines"
        )
    return {k: MACHINE_PROPS[k] for k in facts["props"]}


#: x-platform values (docs/dma-api-2015.md): an emulated x86 IOMMU the guest turns on
#: (viommu) or leaves in passthrough (viommu-pt), a pseries-like always-on TCE IOMMU (tce),
#: a Xen-PV-like pseudo-physical/machine split (xen-pv)
PLATFORMS = ("none", "viommu", "viommu-pt", "tce", "xen-pv")


@dataclass(frozen=True)
class MachineSpec:
    name: str
    acpi: bool
    iommu: str = "none"  # "none" | "virtio-iommu"
    mmio_hid: str = HID["virtio_mmio"]
    #: the platform's DMA model (host/platform.py): none, viommu, viommu-pt, tce, xen-pv
    platform: str = "none"

    @property
    def facts(self) -> dict[str, Any]:
        return MACHINE_FACTS[self.name]

    @property
    def irq_base(self) -> int:
        return int(self.facts["irq_base_acpi" if self.acpi else "irq_base"])

    @property
    def ram_base(self) -> int:
        return int(self.facts["ram_base"])


def parse_machine(text: str) -> MachineSpec:
    """Parse a ``-M`` value; PropertyError with a QEMU-like message when it is wrong."""
    name, *rest = text.split(",")
    table = machine_props(name)
    facts = MACHINE_FACTS[name]
    acpi: bool = bool(facts["acpi_default"])
    iommu = "none"
    platform = "none"
    hid = HID["virtio_mmio"]
    for item in rest:
        key, eq, value = item.partition("=")
        if key not in table:
            raise PropertyError(f"Property '{name}-machine.{key}' not found")
        if not eq:
            raise PropertyError(f"Property '{name}-machine.{key}' needs a value")
        if key == "acpi":
            if value not in ON_OFF:
                raise PropertyError(f"Parameter 'acpi' does not accept value '{value}'")
            choice = ON_OFF[value]
            acpi = bool(facts["acpi_default"]) if choice is None else choice
        elif key == "iommu":
            if value not in IOMMU_VALUES:
                raise PropertyError(
                    f"Property '{name}-machine.iommu' doesn't take value '{value}' (none|virtio)"
                )
            iommu = IOMMU_VALUES[value]
        elif key == "x-platform":
            if value not in PLATFORMS:
                choices = "|".join(PLATFORMS)
                prop = f"{name}-machine.x-platform"
                raise PropertyError(f"Property '{prop}' doesn't take value '{value}' ({choices})")
            platform = value
        elif key == "x-mmio-hid":
            if value not in MMIO_HIDS:
                choices = "|".join(MMIO_HIDS)
                prop = f"{name}-machine.x-mmio-hid"
                raise PropertyError(f"Property '{prop}' doesn't take value '{value}' ({choices})")
            hid = value
    if hid != HID["virtio_mmio"] and not acpi:
        raise PropertyError(f"Property '{name}-machine.x-mmio-hid' needs acpi=on (the HID lives in the DSDT)")
    if platform != "none" and not facts["pci"]:
        raise PropertyError(f"Property '{name}-machine.x-platform' needs a machine with PCI")
    return MachineSpec(name, acpi, iommu, hid, platform)


def check_placement(
    spec: MachineSpec, transport: str, first_device: str, pci_transports: tuple[str, ...]
) -> None:
    """A machine without a PCI bus refuses PCI transports; q35 has no virtio-mmio bus for
    user devices (its mmio slots carry only the virtio-iommu of iommu=virtio here); virt's
    PCIe host is described by ACPI or by the device tree."""
    is_pci = transport in pci_transports
    if is_pci and not spec.facts["pci"]:
        raise PropertyError(f"No 'PCI' bus found for device '{first_device}' (machine {spec.name})")
    if not is_pci and not spec.facts["user_mmio"]:
        raise PropertyError(f"No 'virtio-bus' bus found for device '{first_device}' (machine {spec.name})")


FOUR_GIB = 1 << 32


def ram_layout(name: str, ram_size: int) -> list[tuple[int, int]]:
    """Where ``-m`` RAM lands in the guest-physical map, per machine (``(gpa, size)``).

    q35 (QEMU 7.2 hw/i386/pc_q35.c ``pc_q35_init``): below 4 GiB up to ``lowmem``, which
    is 2 GiB when the guest has 0xB0000000 bytes or more and 0xB0000000 otherwise; the rest
    from 4 GiB. microvm (hw/i386/microvm.c ``microvm_memory_init``: ``lowmem = 0xc0000000``):
    below 4 GiB up to 3 GiB, the rest from 4 GiB. arm virt (hw/arm/virt.c): one block from
    1 GiB.
    """
    facts = MACHINE_FACTS[name]
    base = int(facts["ram_base"])
    lowmem = facts.get("lowmem_small")
    if lowmem is None:
        return [(base, ram_size)]
    if ram_size >= int(facts["lowmem_threshold"]):
        lowmem = int(facts["lowmem_big"])
    lowmem = int(lowmem)
    if ram_size <= lowmem:
        return [(base, ram_size)]
    return [(base, lowmem), (FOUR_GIB, ram_size - lowmem)]


#: the largest -m this host accepts (sparse memfd: only touched pages cost anything)
MAX_RAM = 1 << 40
_SUFFIXES = {"": 20, "B": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_ram_size(text: str) -> int:
    """QEMU's ``-m`` syntax: ``[size=]N[K|M|G|T]``, a bare number meaning MiB (QEMU's
    default suffix for -m); ``PropertyError`` in QEMU's words when it is not a size."""
    value = text.strip()
    if value.startswith("size="):
        value = value[len("size=") :]
    num, suffix = value, ""
    if value and value[-1].upper() in "BKMGT" and not value[-1].isdigit():
        num, suffix = value[:-1], value[-1].upper()
    try:
        amount = float(num) if "." in num else int(num, 10)
    except ValueError:
        raise PropertyError(f"invalid ram size: {text}") from None
    size = int(amount * (1 << _SUFFIXES[suffix]))
    if size <= 0:
        raise PropertyError(f"invalid ram size: {text}")
    if size > MAX_RAM:
        raise PropertyError(f"ram size too large: {text} (this host allows up to 1T)")
    return size
