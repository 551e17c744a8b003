"""Build a host from QEMU-style options: guest RAM, a machine, its devices.

Both the embedded mode and the host process build their side here, so a device option
means the same thing in either. Anything the options get wrong is a PropertyError raised
before the guest runs (the run's outcome is then HOST_REFUSED).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from host.devices.base import PropertyError, parse_bool
from host.machine import Machine
from host.pci import BusMasterGate, PciFunction
from host.qdev import (
    BuiltDevice,
    DeviceSpec,
    build_device,
    model_name,
    parse_device_option,
    pci_name,
)
from host.transport.virtio_pci import VirtioPciProxy
from host.virtio_device import VirtioDevice
from virtio_sim.dma import AddressSpace, IdentityAddressSpace
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import GuestMemory

PCI_TRANSPORTS = ("pci-modern", "pci-transitional", "pci-legacy")
HOST_TRANSPORTS = ("mmio-v2", "mmio-v1", "mmio", *PCI_TRANSPORTS)
DEFAULT_DISK_SIZE = 1 << 20

# What each PCI transport choice sets on a virtio-*-pci device unless the user did.
# pci-legacy is the transitional device; the guest is told to drive its legacy interface.
PCI_TRANSPORT_PROPS: dict[str, dict[str, str]] = {
    "pci-modern": {"disable-legacy": "on", "disable-modern": "off"},
    "pci-transitional": {"disable-legacy": "off", "disable-modern": "off"},
    "pci-legacy": {"disable-legacy": "off", "disable-modern": "off"},
}
# QEMU -global properties this host knows, with QEMU's defaults.
GLOBAL_DEFAULTS = {"virtio-mmio.force-legacy": "on"}


@dataclass
class HostConfig:
    devices: list[str]
    transport: str = "mmio-v2"
    ram_size: int = 64 << 20
    seed: int | None = None
    guest_order: ByteOrder = "little"
    scratch_dir: str | None = None  # where default disk images are created
    globals: dict[str, str] = field(default_factory=dict)  # QEMU -global driver.prop=value


@dataclass
class HostSetup:
    memory: GuestMemory
    machine: Machine
    devices: list[VirtioDevice] = field(default_factory=list)
    built: list[BuiltDevice] = field(default_factory=list)

    def close(self) -> None:
        for b in self.built:
            close = getattr(b.model, "close", None)
            if close:
                close()
        self.memory.close()


def _apply_defaults(spec: DeviceSpec, cfg: HostConfig, index: int) -> None:
    """Fill in what a one-line run leaves out: a scratch disk, the entropy seed."""
    base = model_name(spec.driver)
    if base == "virtio-blk-device" and "drive" not in spec.props:
        if cfg.scratch_dir is None:
            raise PropertyError("drive property not set")
        disk = os.path.join(cfg.scratch_dir, f"disk{index}.img")
        with open(disk, "wb") as f:
            f.truncate(DEFAULT_DISK_SIZE)
        spec.props["drive"] = disk
    if base == "virtio-rng-device" and cfg.seed is not None:
        spec.props.setdefault("x-seed", str(cfg.seed))


def _place_on_bus(spec: DeviceSpec, transport: str) -> None:
    """Fit a device name to the transport's bus (QEMU refuses a device on the wrong bus;
    here a bus-independent ``virtio-X-device`` name follows the transport chosen)."""
    is_pci = model_name(spec.driver) != spec.driver
    if transport in PCI_TRANSPORTS:
        if not is_pci:
            name = pci_name(spec.driver)
            if name is None:
                raise PropertyError(f"No 'virtio-pci' flavour of device '{spec.driver}'")
            spec.driver = name
        for k, v in PCI_TRANSPORT_PROPS[transport].items():
            spec.props.setdefault(k, v)
    elif is_pci:
        raise PropertyError(f"No 'PCI' bus found for device '{spec.driver}'")


def mmio_force_legacy(cfg: HostConfig) -> bool:
    """mmio-v1 / mmio-v2 pick the version; plain mmio follows virtio-mmio.force-legacy."""
    if cfg.transport == "mmio-v1":
        return True
    if cfg.transport == "mmio-v2":
        return False
    key = "virtio-mmio.force-legacy"
    return parse_bool(key, cfg.globals.get(key, GLOBAL_DEFAULTS[key]))


def build_host(cfg: HostConfig) -> HostSetup:
    if cfg.transport not in HOST_TRANSPORTS:
        raise PropertyError(f"unknown transport {cfg.transport!r}")
    for key in cfg.globals:
        if key not in GLOBAL_DEFAULTS:
            raise PropertyError(f"global {key} is not a property this host knows")
    force_legacy = mmio_force_legacy(cfg)
    specs = [parse_device_option(d) for d in cfg.devices]
    built: list[BuiltDevice] = []
    try:
        for i, spec in enumerate(specs):
            _place_on_bus(spec, cfg.transport)
            _apply_defaults(spec, cfg, i)
            built.append(build_device(spec))
    except PropertyError:
        for b in built:
            close = getattr(b.model, "close", None)
            if close:
                close()
        raise
    memory = GuestMemory.create(cfg.ram_size)
    machine = Machine(memory)
    if cfg.transport in PCI_TRANSPORTS:
        machine.attach_q35_pci()
    setup = HostSetup(memory, machine, built=built)
    try:
        for b in built:
            vdev = _plug(machine, memory, b, force_legacy)
            vdev.guest_order = cfg.guest_order
            setup.devices.append(vdev)
    except (PropertyError, ValueError) as e:
        setup.close()
        raise PropertyError(str(e)) from None
    return setup


def _plug(
    machine: Machine, memory: GuestMemory, b: BuiltDevice, force_legacy: bool
) -> VirtioDevice:
    if b.pci is None:
        vdev = VirtioDevice(
            b.model,
            lambda features: IdentityAddressSpace(memory),
            transport_features=b.transport_features,
            policy=b.policy,
            strict_rings=b.strict_rings,
        )
        machine.add_mmio_device(vdev, legacy=force_legacy)
        return vdev
    # A PCI device's DMA goes through its function: no bus mastering, no access.
    holder: list[PciFunction] = []

    def space_for(features: int) -> AddressSpace:
        return BusMasterGate(IdentityAddressSpace(memory), lambda: holder[0] if holder else None)

    vdev = VirtioDevice(
        b.model,
        space_for,
        transport_features=b.transport_features,
        policy=b.policy,
        strict_rings=b.strict_rings,
    )
    opts = b.pci
    proxy = VirtioPciProxy(
        vdev,
        modern=opts.modern,
        legacy=opts.legacy,
        vectors=opts.vectors,
        class_code=opts.class_code,
        name=b.spec.driver,
    )
    holder.append(proxy.fn)
    machine.add_pci_device(proxy, opts.slot, opts.function)
    return vdev
