"""One descriptor per device kind, and the one registry every other table is derived from.

A device kind is described once, in the shared core, by a :class:`DeviceKind`: its
virtio device id (specs/devices.toml), QEMU's ``-device`` names and PCI class, the
per-device properties a device generation (specs/profiles/devices) may set, the queue the
hostile-driver corpus aims at, and where its two halves live. The halves stay beside
their code and on their own side of the layering: the host half (model factory, property
table, build defaults) is a ``virtio_sim.host...`` object, the guest half (driver class,
workloads) a ``virtio_sim.guest...`` object; its request framing rules (what a checking
device judges of the driver's requests, :mod:`virtio_sim.devices.framing`) sit in the
kind's package. The core names the halves as text and never imports them, the way QEMU's
TypeInfo and Linux's ``virtio_device_id`` tables split one
device between a device model and a driver that never see each other.

The host registries (host/qdev.py's device types, host/qdev_props.py's tables,
host/build.py's defaults, host/device_profile.py's names), the guest ones (the probe's
driver table in guest/platform.py, guest/workloads.py's WORKLOADS), the attack targets
(attacks/targets.py) and the device-profile keys (profiles.py) all read :data:`KINDS`.
Adding a device kind is one package (descriptor, host half, guest half; the last line of
:data:`KIND_MODULES` was added that way) plus one line in :data:`KIND_MODULES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module

from virtio_sim.spec import DEVICE_TYPES, FEATURES, FeatureBit


@dataclass(frozen=True)
class DeviceKind:
    """Everything about one device kind that both sides and the orchestration share."""

    #: the key of specs/devices.toml (its virtio device id): "blk", "rng", ...
    key: str
    #: QEMU's type name without the bus suffix: virtio-blk (-device virtio-blk-device /
    #: virtio-blk-pci); the console is QEMU's virtio-serial
    qdev: str
    #: the PCI class code of the virtio-*-pci function (QEMU's class_code default)
    pci_class: int
    #: "module:ATTR" of the host half (a virtio_sim.host.kinds.HostHalf)
    host: str
    #: "module:ATTR" of the guest half (a virtio_sim.guest.kinds.GuestHalf)
    guest: str
    #: QEMU's per-device properties a device profile may set ([<key>] table), name -> type
    profile_properties: Mapping[str, type] = field(default_factory=dict)
    #: the queue the hostile-driver corpus forges requests on; None: not an attack target
    attack_queue: int | None = None
    #: whether ``-device`` builds it (the virtio-iommu is the machine's iommu= property)
    qdev_model: bool = True
    #: device feature bits (name -> bit) declared beside the device instead of in
    #: specs/features.toml; registered into spec.FEATURES under this kind's key
    features: Mapping[str, int] = field(default_factory=dict)
    #: the names of the guest half's workloads, in its order: listing or checking a
    #: workload name loads no driver (guest/kinds.py checks the half has exactly these)
    workloads: tuple[str, ...] = ()
    #: "module:ATTR" of the kind's request framing rules (a virtio_sim.devices.framing
    #: Framing subclass beside the device, judged by the driver watch); None: none
    framing: str | None = None

    @property
    def device_id(self) -> int:
        """The virtio device id (virtio 1.4 chapter 5)."""
        return DEVICE_TYPES[self.key].id

    @property
    def device_name(self) -> str:
        """QEMU's bus-independent model name (virtio-mmio: ``virtio-blk-device``)."""
        return f"{self.qdev}-device"

    @property
    def pci_name(self) -> str:
        """QEMU's virtio-pci proxy name (``virtio-blk-pci``)."""
        return f"{self.qdev}-pci"


#: The registry: one line per device kind, the module holding its KIND descriptor.
KIND_MODULES = (
    "virtio_sim.devices.rng",
    "virtio_sim.devices.blk",
    "virtio_sim.devices.net",
    "virtio_sim.devices.console",
    "virtio_sim.devices.iommu",
    "virtio_sim.devices.balloon",
)


def _load() -> dict[str, DeviceKind]:
    kinds: dict[str, DeviceKind] = {}
    for name in KIND_MODULES:
        kind = import_module(name).KIND
        if not isinstance(kind, DeviceKind):
            raise TypeError(f"{name}.KIND is not a DeviceKind")
        if kind.key not in DEVICE_TYPES:
            raise ValueError(f"{name}: device kind {kind.key!r} is not in specs/devices.toml")
        if kind.key in kinds:
            raise ValueError(f"{name}: device kind {kind.key!r} registered twice")
        kinds[kind.key] = kind
        for fname, bit in kind.features.items():
            if not FEATURES.known(fname):
                FEATURES.add(FeatureBit(fname, bit, kind.key, "1.0", False, (), ""), name)
    return kinds


#: key -> descriptor, in registry order
KINDS: dict[str, DeviceKind] = _load()


def kind_by_name(name: str) -> DeviceKind | None:
    """The kind behind a QEMU device name (``virtio-serial-pci`` -> console), or None."""
    return next((k for k in KINDS.values() if name in (k.device_name, k.pci_name)), None)


def resolve(ref: str, side: str) -> object:
    """The object a ``module:ATTR`` reference names, refused unless the module lies on
    ``side`` (host or guest): the registry never lets one side load the other's code."""
    module, _, attr = ref.partition(":")
    parts = module.split(".")
    on_side = parts[:2] == ["virtio_sim", side] or (
        parts[:2] == ["virtio_sim", "devices"] and len(parts) == 4 and parts[3] == side
    )
    if not on_side or not attr:
        raise ValueError(f"{ref!r} is not a virtio_sim.{side} object")
    return getattr(import_module(module), attr)
