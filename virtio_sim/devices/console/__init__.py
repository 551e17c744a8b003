"""virtio-console (virtio 1.4 section 5.3): QEMU's virtio-serial, Linux's virtio_console.c."""

from __future__ import annotations

from virtio_sim.devices import DeviceKind
from virtio_sim.spec import PCI_CLASS

KIND = DeviceKind(
    key="console",
    qdev="virtio-serial",  # QEMU's name for the console device
    pci_class=PCI_CLASS.communication_other,  # hw/virtio/virtio-serial-pci.c
    host="virtio_sim.host.qdev_netcon:HOST_CONSOLE",
    guest="virtio_sim.guest.workloads_console:GUEST",
    workloads=("console-echo", "console-write"),
    profile_properties={"emergency-write": bool, "max_ports": int, "any_layout": bool},
    attack_queue=1,  # port 0's transmit queue
    framing="virtio_sim.devices.console.framing:ConsoleFraming",
)
