"""The property tables of every ``-device`` type: name, QEMU type, default, what it does.

Each device's own table sits in its host half (host/kinds.py: host/qdev_rngblk.py,
host/qdev_netcon.py, a device package's host.py); the common tables are here. They serve
three purposes: host/qdev.py refuses a property that is not in the device's table, takes
each absent property's default from it, and ``-device X,help`` prints it (as QEMU prints
its qdev properties). Defaults are QEMU 7.2's where QEMU has the property
(hw/virtio/virtio.c DEFINE_VIRTIO_COMMON_FEATURES, hw/virtio/virtio-pci.c,
hw/block/virtio-blk.c, hw/net/virtio-net.c, hw/char/virtio-serial-bus.c); ``x-``
properties are this simulator's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.spec import QEMU_PCI


@dataclass(frozen=True)
class Prop:
    type: str  # QEMU's type name as `-device X,help` shows it: bool, uint32, str, OnOffAuto, ...
    default: str | None  # as text; None: unset unless given
    help: str = ""


def b(default: bool, text: str = "") -> Prop:
    return Prop("bool", "on" if default else "off", text)


#: every device, whatever its bus (QEMU: qdev's id and bus)
QDEV_PROPS: dict[str, Prop] = {
    "id": Prop("str", None, "the device's name (unique on the machine)"),
    "bus": Prop("str", None, "the bus to plug into: pcie.0 on q35, virtio-mmio-bus.N on microvm/virt"),
}
#: every virtio device's feature switches (QEMU's DEFINE_VIRTIO_COMMON_FEATURES + ours)
COMMON_PROPS: dict[str, Prop] = {
    "event_idx": b(True, "VIRTIO_RING_F_EVENT_IDX"),
    "indirect_desc": b(True, "VIRTIO_RING_F_INDIRECT_DESC"),
    "iommu_platform": b(False, "VIRTIO_F_ACCESS_PLATFORM"),
    "x-error-policy": Prop("str", "needs-reset", "needs-reset|drop: what a ring violation does"),
    "x-strict-rings": b(True, "record ring violations the spec forbids"),
    "x-validate-access-platform": b(True, "refuse FEATURES_OK without ACCESS_PLATFORM when offered"),
    "x-dma": Prop("str", "honor", "honor|bypass|translate-always: how DMA meets an IOMMU"),
    "x-hostile": Prop("str", None, "make the device's completions lie (host/devices/hostile.py)"),
}
#: ring layout and ring features (QEMU 7.2: queue_reset on since 7.2, the rest off)
RING_PROPS: dict[str, Prop] = {
    "packed": b(False, "VIRTIO_F_RING_PACKED"),
    "in_order": b(False, "VIRTIO_F_IN_ORDER"),
    "notification_data": b(False, "VIRTIO_F_NOTIFICATION_DATA"),
    "queue_reset": b(True, "VIRTIO_F_RING_RESET"),
    # legacy-only bit 27; hw_compat_2_3 turns it off for machine types up to 2.3
    "any_layout": b(True, "VIRTIO_F_ANY_LAYOUT"),
    "x-order-platform": b(False, "VIRTIO_F_ORDER_PLATFORM"),
    "x-in-order-batch": b(False, "complete IN_ORDER buffers in batches"),
}
#: the virtio-pci proxy of a virtio-*-pci device
PCI_PROPS: dict[str, Prop] = {
    "disable-legacy": Prop("OnOffAuto", "auto", "auto: legacy off on a PCIe port, on elsewhere"),
    "disable-modern": b(False, "no virtio 1.0 interface"),
    "vectors": Prop("uint32", str(QEMU_PCI.default_vectors), "MSI-X vectors"),
    "addr": Prop("int32", None, "Slot and optional function number, example: 06.0 or 06"),
}


def props_for(model: str, pci: bool) -> dict[str, Prop]:
    """Every property a device type takes, in the order ``-device X,help`` lists them."""
    from virtio_sim.devices import kind_by_name
    from virtio_sim.host.kinds import host_half

    kind = kind_by_name(model)
    table = dict(host_half(kind.key).props) if kind is not None and kind.qdev_model else {}
    table.update(COMMON_PROPS)
    table.update(RING_PROPS)
    if pci:
        table.update(PCI_PROPS)
    table.update(QDEV_PROPS)
    return table


def take(props: dict[str, str], table: dict[str, Prop], name: str) -> str | None:
    """Pop ``name`` from the given properties, or its table default."""
    return props.pop(name, table[name].default)


def format_help(name: str, table: dict[str, Prop], defaults: dict[str, str] | None = None) -> str:
    """QEMU's ``-device NAME,help`` layout; ``defaults`` override the table's (a device
    generation's own defaults)."""
    lines = [f"{name} options:"]
    for prop in sorted(table):
        p = table[prop]
        default = (defaults or {}).get(prop, p.default)
        left = f"  {prop}=<{p.type}>"
        text = p.help + (f" (default: {default})" if default is not None else "")
        lines.append(f"{left:<30} - {text}".rstrip())
    return "\n".join(lines)
