"""The property tables of every ``-device`` type: name, QEMU type, default, what it does.

One table serves three purposes: host/qdev.py refuses a property that is not in the
device's table, takes each absent property's default from it, and ``-device X,help``
prints it (as QEMU prints its qdev properties). Defaults are QEMU 7.2's where QEMU has the
property (hw/virtio/virtio.c DEFINE_VIRTIO_COMMON_FEATURES, hw/virtio/virtio-pci.c,
hw/block/virtio-blk.c, hw/net/virtio-net.c, hw/char/virtio-serial-bus.c); ``x-``
properties are this simulator's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.spec import CONSOLE, NET, QEMU_PCI


@dataclass(frozen=True)
class Prop:
    type: str  # QEMU's type name as `-device X,help` shows it: bool, uint32, str, OnOffAuto, ...
    default: str | None  # as text; None: unset unless given
    help: str = ""


def _b(default: bool, text: str = "") -> Prop:
    return Prop("bool", "on" if default else "off", text)


#: every device, whatever its bus (QEMU: qdev's id and bus)
QDEV_PROPS: dict[str, Prop] = {
    "id": Prop("str", None, "the device's name (unique on the machine)"),
    "bus": Prop("str", None, "the bus to plug into: pcie.0 on q35, virtio-mmio-bus.N on microvm/virt"),
}
#: every virtio device's feature switches (QEMU's DEFINE_VIRTIO_COMMON_FEATURES + ours)
COMMON_PROPS: dict[str, Prop] = {
    "event_idx": _b(True, "VIRTIO_RING_F_EVENT_IDX"),
    "indirect_desc": _b(True, "VIRTIO_RING_F_INDIRECT_DESC"),
    "iommu_platform": _b(False, "VIRTIO_F_ACCESS_PLATFORM"),
    "x-error-policy": Prop("str", "needs-reset", "needs-reset|drop: what a ring violation does"),
    "x-strict-rings": _b(True, "record ring violations the spec forbids"),
    "x-validate-access-platform": _b(True, "refuse FEATURES_OK without ACCESS_PLATFORM when offered"),
    "x-dma": Prop("str", "honor", "honor|bypass|translate-always: how DMA meets an IOMMU"),
    "x-hostile": Prop("str", None, "make the device's completions lie (host/devices/hostile.py)"),
}
#: ring layout and ring features (QEMU 7.2: queue_reset on since 7.2, the rest off)
RING_PROPS: dict[str, Prop] = {
    "packed": _b(False, "VIRTIO_F_RING_PACKED"),
    "in_order": _b(False, "VIRTIO_F_IN_ORDER"),
    "notification_data": _b(False, "VIRTIO_F_NOTIFICATION_DATA"),
    "queue_reset": _b(True, "VIRTIO_F_RING_RESET"),
    # legacy-only bit 27; hw_compat_2_3 turns it off for machine types up to 2.3
    "any_layout": _b(True, "VIRTIO_F_ANY_LAYOUT"),
    "x-order-platform": _b(False, "VIRTIO_F_ORDER_PLATFORM"),
    "x-in-order-batch": _b(False, "complete IN_ORDER buffers in batches"),
}
#: the virtio-pci proxy of a virtio-*-pci device
PCI_PROPS: dict[str, Prop] = {
    "disable-legacy": Prop("OnOffAuto", "auto", "auto: legacy off on a PCIe port, on elsewhere"),
    "disable-modern": _b(False, "no virtio 1.0 interface"),
    "vectors": Prop("uint32", str(QEMU_PCI.default_vectors), "MSI-X vectors"),
    "addr": Prop("int32", None, "Slot and optional function number, example: 06.0 or 06"),
}
#: per device type (the bus-independent model name), besides the common ones
DEVICE_PROPS: dict[str, dict[str, Prop]] = {
    "virtio-rng-device": {
        "x-seed": Prop("uint64", None, "seed a reproducible entropy stream"),
        "x-queue-size": Prop("uint16", None, "request queue size (power of 2)"),
    },
    "virtio-blk-device": {
        "drive": Prop("str", None, "Node name or ID of a block device (-drive id=...) or a raw image path"),
        "readonly": _b(False, "VIRTIO_BLK_F_RO"),
        "serial": Prop("str", "virtio-sim-blk", "the disk's serial (VIRTIO_BLK_T_GET_ID)"),
        "queue-size": Prop("uint16", "256", "request queue size (power of 2, 2..1024)"),
        "logical_block_size": Prop("size", "512", "A power of two between 512 B and 2 MiB"),
        "physical_block_size": Prop("size", "512", "A power of two between 512 B and 2 MiB"),
        "num-queues": Prop("uint16", "1", "request queues"),
        # QEMU's virtio-blk switches (their 7.2 defaults; machine types before change them)
        "scsi": _b(False, "VIRTIO_BLK_F_SCSI (legacy)"),
        "config-wce": _b(True, "VIRTIO_BLK_F_CONFIG_WCE"),
        "discard": _b(True, "VIRTIO_BLK_F_DISCARD"),
        "write-zeroes": _b(True, "VIRTIO_BLK_F_WRITE_ZEROES"),
        "seg-max-adjust": _b(True, "seg_max follows the queue size"),
    },
    "virtio-net-device": {
        "mac": Prop("str", NET.qemu_default_mac, "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56"),
        "netdev": Prop("str", None, "ID of a netdev to use as a backend (-netdev hubport,...)"),
        "mrg_rxbuf": _b(True, "VIRTIO_NET_F_MRG_RXBUF"),
        "mq": _b(False, "VIRTIO_NET_F_MQ"),
        "ctrl_vq": _b(True, "VIRTIO_NET_F_CTRL_VQ"),
        "ctrl_rx": _b(True, "VIRTIO_NET_F_CTRL_RX (needs ctrl_vq)"),
        "ctrl_mac_addr": _b(True, "VIRTIO_NET_F_CTRL_MAC_ADDR (needs ctrl_vq)"),
        "csum": _b(True, "VIRTIO_NET_F_CSUM"),
        "guest_csum": _b(True, "VIRTIO_NET_F_GUEST_CSUM"),
        "status": _b(True, "VIRTIO_NET_F_STATUS"),
        "x-backend": Prop("str", "loopback", "loopback|switch:NAME (what netdev= names)"),
        "x-queue-pairs": Prop("uint16", "1", "queue pairs (a netdev's queues=)"),
        "x-fault": Prop("str", None, "num-buffers-zero|num-buffers-extra: lie in num_buffers"),
    },
    "virtio-serial-device": {
        "max_ports": Prop("uint32", str(CONSOLE.qemu_max_ports), "ports (MULTIPORT when > 1)"),
        "emergency-write": _b(True, "VIRTIO_CONSOLE_F_EMERGENCY_WRITE"),
        "chardev": Prop("str", None, "ID of a chardev for the console at port 0 (-chardev ...)"),
        "x-console": Prop("str", "loopback", "loopback|file:PATH|stdio: the port-0 console"),
        "x-ports": Prop("uint32", "0", "more ports 1..K on loopback chardevs"),
        "x-size": Prop("str", None, "COLSxROWS: offer VIRTIO_CONSOLE_F_SIZE"),
    },
}


def props_for(model: str, pci: bool) -> dict[str, Prop]:
    """Every property a device type takes, in the order ``-device X,help`` lists them."""
    table = dict(DEVICE_PROPS.get(model, {}))
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
