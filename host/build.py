"""Build a host from QEMU-style options: guest RAM, a machine, its devices.

Both the embedded mode and the host process build their side here, so a device option
means the same thing in either. Anything the options get wrong is a PropertyError raised
before the guest runs (the run's outcome is then HOST_REFUSED).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from host.devices.base import PropertyError
from host.devices.iommu import IommuDevice
from host.iommu import EndpointTranslator, Iommu, UnisolatedAddressSpace
from host.machine import Machine
from host.qdev import BuiltDevice, DeviceSpec, build_device, parse_device_option
from host.virtio_device import VirtioDevice
from virtio_sim.dma import AddressSpace, IdentityAddressSpace, TranslatedAddressSpace
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import GuestMemory
from virtio_sim.netproto import nth_mac
from virtio_sim.spec import NET, F

HOST_TRANSPORTS = ("mmio-v2", "mmio-v1")
IOMMU_KINDS = ("none", "virtio-iommu")
DEFAULT_DISK_SIZE = 1 << 20


@dataclass
class HostConfig:
    devices: list[str]
    transport: str = "mmio-v2"
    ram_size: int = 64 << 20
    seed: int | None = None
    guest_order: ByteOrder = "little"
    scratch_dir: str | None = None  # where default disk images are created
    iommu: str = "none"  # QEMU's machine property: none | virtio-iommu
    # How devices reach guest RAM, asked each time a device sets up a ring: identity over
    # the shared map by default; the process host supplies DMA over the wire for TCP.
    # An IOMMU translates on top of it.
    address_space: Callable[[GuestMemory], AddressSpace] | None = None


@dataclass
class HostSetup:
    memory: GuestMemory
    machine: Machine
    devices: list[VirtioDevice] = field(default_factory=list)
    built: list[BuiltDevice] = field(default_factory=list)
    iommu: Iommu | None = None
    iommu_device: VirtioDevice | None = None
    #: raw-GPA address spaces of devices behind the IOMMU (evidence for OK_NO_ISOLATION)
    unisolated: list[UnisolatedAddressSpace] = field(default_factory=list)

    @property
    def unisolated_accesses(self) -> int:
        return sum(s.unisolated_accesses for s in self.unisolated)

    def evidence(self) -> dict[str, Any]:
        """What the host saw, as plain data (RunResult.add_host_evidence folds it in)."""
        return {
            "devices": [
                {
                    "device_features": vdev.device_features,
                    "notes": list(vdev.notes),
                    "violations": [dict(v.__dict__) for v in vdev.violations],
                }
                for vdev in self.devices
            ],
            "machine_notes": list(self.machine.notes),
            "iommu": self._iommu_evidence(),
        }

    def _iommu_evidence(self) -> dict[str, Any] | None:
        if self.iommu is None:
            return None
        faults = self.iommu.faults
        return {
            "faults": [f"{f.address:#x} ep {f.endpoint} reason {f.reason}" for f in faults[:8]],
            "fault_count": len(faults),
            "unisolated_accesses": self.unisolated_accesses,
            "iotlb_hits": self.iommu.iotlb_hits,
            "iotlb_misses": self.iommu.iotlb_misses,
            "first_fault_address": faults[0].address if faults else 0,
        }

    def close(self) -> None:
        for b in self.built:
            close = getattr(b.model, "close", None)
            if close:
                close()
        self.memory.close()


def _apply_defaults(spec: DeviceSpec, cfg: HostConfig, index: int) -> None:
    """Fill in what a one-line run leaves out: a scratch disk, the entropy seed."""
    if spec.driver == "virtio-blk-device" and "drive" not in spec.props:
        if cfg.scratch_dir is None:
            raise PropertyError("drive property not set")
        disk = os.path.join(cfg.scratch_dir, f"disk{index}.img")
        with open(disk, "wb") as f:
            f.truncate(DEFAULT_DISK_SIZE)
        spec.props["drive"] = disk
    if spec.driver == "virtio-rng-device" and cfg.seed is not None:
        spec.props.setdefault("x-seed", str(cfg.seed))
    if spec.driver == "virtio-net-device":
        # QEMU counts its default NIC address up per NIC; here per device slot.
        spec.props.setdefault("mac", nth_mac(NET.qemu_default_mac, index))


def build_host(cfg: HostConfig) -> HostSetup:
    if cfg.transport not in HOST_TRANSPORTS:
        raise PropertyError(f"unknown transport {cfg.transport!r}")
    specs = [parse_device_option(d) for d in cfg.devices]
    built: list[BuiltDevice] = []
    try:
        for i, spec in enumerate(specs):
            _apply_defaults(spec, cfg, i)
            built.append(build_device(spec))
    except PropertyError:
        for b in built:
            close = getattr(b.model, "close", None)
            if close:
                close()
        raise
    if cfg.iommu not in IOMMU_KINDS:
        raise PropertyError(f"Property 'iommu' doesn't take value '{cfg.iommu}' ({'|'.join(IOMMU_KINDS)})")
    memory = GuestMemory.create(cfg.ram_size)
    machine = Machine(memory)
    setup = HostSetup(memory, machine, built=built)
    legacy = cfg.transport == "mmio-v1"
    make_ram = cfg.address_space or IdentityAddressSpace
    if cfg.iommu == "virtio-iommu":
        # Endpoint ids: the devices in command-line order, from 1 (the VIOT says which is which).
        setup.iommu = Iommu(set(range(1, len(built) + 1)))
        iommu_dev = VirtioDevice(IommuDevice(setup.iommu), lambda f: make_ram(memory))
        iommu_dev.guest_order = cfg.guest_order
        machine.add_mmio_device(iommu_dev, legacy=legacy)
        setup.iommu_device = iommu_dev
    for endpoint, b in enumerate(built, start=1):
        vdev = VirtioDevice(
            b.model,
            _space_for(memory, setup.iommu, endpoint, b.dma_mode, setup, make_ram),
            transport_features=b.transport_features,
            policy=b.policy,
            strict_rings=b.strict_rings,
            validate_access_platform=b.validate_access_platform,
        )
        vdev.guest_order = cfg.guest_order
        slot = machine.add_mmio_device(vdev, legacy=legacy)
        if setup.iommu is not None:
            machine.iommu_endpoints[slot.base] = endpoint
        setup.devices.append(vdev)
    return setup


def _space_for(
    memory: GuestMemory,
    iommu: Iommu | None,
    endpoint: int,
    dma_mode: str,
    setup: HostSetup,
    make_ram: Callable[[GuestMemory], AddressSpace] = IdentityAddressSpace,
) -> Callable[[int], AddressSpace]:
    """How this device's DMA meets the IOMMU, decided when the driver's features are known.

    ``honor`` (QEMU with iommu_platform): translated when ACCESS_PLATFORM was negotiated,
    raw GPAs otherwise; ``bypass`` (QEMU before 2.9, or a lying device): always raw GPAs;
    ``translate-always`` (a lying device): always translated.
    """

    def space(features: int) -> AddressSpace:
        if iommu is None:
            return make_ram(memory)
        negotiated = bool(features >> F.ACCESS_PLATFORM & 1)
        if dma_mode == "translate-always" or (dma_mode == "honor" and negotiated):
            translator = EndpointTranslator(iommu, endpoint)
            return TranslatedAddressSpace(memory, translator, make_ram(memory))
        raw = UnisolatedAddressSpace(memory, iommu, endpoint, make_ram(memory))
        setup.unisolated.append(raw)
        return raw

    return space
