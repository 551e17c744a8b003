"""virtio-net (virtio 1.4 section 5.1): QEMU's virtio-net, Linux's virtio_net.c."""

from __future__ import annotations

from virtio_sim.devices import DeviceKind
from virtio_sim.spec import PCI_CLASS

KIND = DeviceKind(
    key="net",
    qdev="virtio-net",
    pci_class=PCI_CLASS.network_ethernet,  # hw/virtio/virtio-net-pci.c
    host="virtio_sim.host.qdev_netcon:HOST_NET",
    guest="virtio_sim.guest.workloads_net:GUEST",
    workloads=("net-loopback", "net-pair"),
    profile_properties={"any_layout": bool},
    attack_queue=1,  # the transmit queue of pair 0
    framing="virtio_sim.devices.net.framing:NetFraming",
)
