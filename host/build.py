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
from host.machine import Machine
from host.qdev import BuiltDevice, DeviceSpec, build_device, parse_device_option
from host.virtio_device import VirtioDevice
from virtio_sim.dma import AddressSpace, IdentityAddressSpace
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import GuestMemory

HOST_TRANSPORTS = ("mmio-v2", "mmio-v1")
DEFAULT_DISK_SIZE = 1 << 20


@dataclass
class HostConfig:
    devices: list[str]
    transport: str = "mmio-v2"
    ram_size: int = 64 << 20
    seed: int | None = None
    guest_order: ByteOrder = "little"
    scratch_dir: str | None = None  # where default disk images are created
    # How devices reach guest RAM, asked each time a device sets up a ring: identity over
    # the shared map by default; the process host supplies DMA over the wire for TCP.
    address_space: Callable[[GuestMemory], AddressSpace] | None = None


@dataclass
class HostSetup:
    memory: GuestMemory
    machine: Machine
    devices: list[VirtioDevice] = field(default_factory=list)
    built: list[BuiltDevice] = field(default_factory=list)

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
    memory = GuestMemory.create(cfg.ram_size)
    machine = Machine(memory)
    setup = HostSetup(memory, machine, built=built)
    make_space = cfg.address_space or IdentityAddressSpace
    for b in built:
        vdev = VirtioDevice(
            b.model,
            lambda features: make_space(memory),
            transport_features=b.transport_features,
            policy=b.policy,
            strict_rings=b.strict_rings,
        )
        vdev.guest_order = cfg.guest_order
        machine.add_mmio_device(vdev, legacy=cfg.transport == "mmio-v1")
        setup.devices.append(vdev)
    return setup
