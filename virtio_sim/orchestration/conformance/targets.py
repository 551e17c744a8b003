"""Conformance targets: what ``--target`` names.

``host:DEVICE[,props]`` is one of our host devices (a QEMU-style -device string, e.g.
``host:virtio-blk-pci,serial=x``), ``qemu:DEVICE[,props]`` the same device model of a
real QEMU under qtest, ``driver:PROFILE[,props]`` a guest driver profile watched by the
checking device. The text is every campaign's KIND:NAME[,k=v] (campaign/target.py), read
strictly: a bad target is a :class:`TargetError` (usage error, exit 2), never a run that
silently checks something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_sim.orchestration.campaign.target import TargetTextError, parse_target_text

KINDS = ("host", "qemu", "driver")
TRANSPORTS = ("mmio-v2", "mmio-v1", "pci-modern", "pci-transitional", "pci-legacy")
RINGS = ("split", "packed")


class TargetError(TargetTextError):
    """The --target (or --transport/--ring) cannot be used."""


#: each kind and what its name is
KIND_NAMES = {"host": "DEVICE", "qemu": "DEVICE", "driver": "PROFILE"}


@dataclass(frozen=True)
class Target:
    kind: str  # host | qemu | driver
    name: str  # device name or driver profile
    props: dict[str, str] = field(default_factory=dict)

    @property
    def device_option(self) -> str:
        """The -device string (name plus properties) for device targets."""
        return ",".join([self.name, *(f"{k}={v}" for k, v in self.props.items())])


def parse_target(spec: str) -> Target:
    """The campaign's target text (virtio_sim/orchestration/campaign/target.py) with conformance's kinds."""
    t = parse_target_text(spec, KIND_NAMES, error=TargetError)
    return Target(t.kind, t.name, dict(t.props))


def check_transport_ring(transport: str, ring: str) -> None:
    if transport not in TRANSPORTS:
        raise TargetError(f"unknown transport {transport!r} ({'|'.join(TRANSPORTS)})")
    if ring not in RINGS:
        raise TargetError(f"unknown ring {ring!r} ({'|'.join(RINGS)})")
    if ring == "packed" and transport in ("mmio-v1", "pci-legacy"):
        raise TargetError(f"the packed ring needs VERSION_1, which transport {transport} does not have")


def device_for_transport(name: str, transport: str) -> str:
    """``virtio-rng`` / ``virtio-rng-device`` / ``virtio-rng-pci`` -> the name the
    transport needs (mmio devices are ``-device``, PCI ones ``-pci``)."""
    base = name.removesuffix("-pci").removesuffix("-device")
    pci = transport.startswith("pci")
    if name.endswith("-pci") and not pci:
        raise TargetError(f"{name} is a PCI device; transport {transport} is virtio-mmio")
    if name.endswith("-device") and pci:
        raise TargetError(f"{name} is a virtio-mmio device; transport {transport} is PCI")
    return f"{base}-pci" if pci else f"{base}-device"
