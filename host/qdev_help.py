"""QEMU's help habits: ``-device help``, ``-device NAME,help``, ``-M help``, ``-M NAME,help``.

Generated from the tables the options are parsed with (host/qdev.py DEVICE_TYPES and
PCI_DEVICE_TYPES, host/qdev_props.py, host/machine_types.py), so the help cannot list a
property the parser refuses or miss one it takes. With a device generation
(``--device-profile qemu-2.6``), ``-device NAME,help`` shows that generation's defaults
and marks the properties it does not have yet.
"""

from __future__ import annotations

from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.machine_types import MACHINE_DESCRIPTIONS, MACHINE_FACTS, machine_props
from virtio_sim.host.qdev import DEVICE_TYPES, PCI_DEVICE_TYPES, device_props
from virtio_sim.host.qdev_props import format_help


def is_help(value: str) -> bool:
    """``help`` / ``?`` alone, or as the last of the options (``NAME,help``)."""
    return value in ("help", "?") or value.endswith((",help", ",?"))


def device_list() -> str:
    """``-device help``: every device name and the bus it plugs into."""
    lines = ["Virtio devices:"]
    for name in sorted([*DEVICE_TYPES, *PCI_DEVICE_TYPES]):
        bus = "PCI" if name in PCI_DEVICE_TYPES else "virtio-bus"
        lines.append(f'name "{name}", bus {bus}')
    return "\n".join(lines)


def device_help(text: str, profile: str | None = None) -> str:
    """``-device NAME,help`` (PropertyError for an unknown NAME or profile)."""
    name = text.split(",")[0]
    if name in ("help", "?"):
        return device_list()
    table = device_props(name)
    if profile is None:
        return format_help(name, table)
    from virtio_sim.profiles import ProfileError, load_device_profile

    try:
        gen = load_device_profile(profile)
    except ProfileError as e:
        raise PropertyError(str(e)) from None
    defaults = {k: ("on" if v else "off") if isinstance(v, bool) else str(v) for k, v in gen.defaults.items()}
    out = [format_help(name, table, defaults), f"(defaults of {profile}; QEMU properties {profile} lacks:"]
    qemu_props = [p for p in table if not p.startswith("x-") and p not in ("id", "bus", "addr", "drive")]
    lacking = sorted(p for p in qemu_props if p not in gen.properties and p in _GENERATION_PROPS)
    out[-1] += f" {', '.join(lacking) or 'none'})"
    return "\n".join(out)


#: properties whose presence differs between QEMU generations (specs/profiles/devices)
_GENERATION_PROPS = (
    "iommu_platform",
    "packed",
    "disable-legacy",
    "disable-modern",
    "queue_reset",
    "in_order",
    "notification_data",
)


def machine_list() -> str:
    """``-M help``."""
    lines = ["Supported machines are:"]
    lines += [f"{name:<12} {MACHINE_DESCRIPTIONS.get(name, '')}".rstrip() for name in MACHINE_FACTS]
    return "\n".join(lines)


def machine_help(text: str) -> str:
    """``-M NAME,help``."""
    name = text.split(",")[0]
    if name in ("help", "?"):
        return machine_list()
    table = machine_props(name)
    facts = MACHINE_FACTS[name]
    defaults = {"acpi": "on" if facts["acpi_default"] else "off"}
    return format_help(f"{name}-machine", table, defaults)
