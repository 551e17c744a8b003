"""virtio-rng (virtio 1.4 section 5.4): QEMU's virtio-rng, Linux's virtio-rng.c."""

from __future__ import annotations

from virtio_sim.devices import DeviceKind
from virtio_sim.spec import PCI_CLASS

KIND = DeviceKind(
    key="rng",
    qdev="virtio-rng",
    # hw/virtio/virtio-rng-pci.c: class_id PCI_CLASS_OTHERS (measured, specs/pci.toml)
    pci_class=PCI_CLASS.others,
    host="virtio_sim.host.qdev_rngblk:HOST_RNG",
    guest="virtio_sim.guest.workloads_rng:GUEST",
    workloads=("rng", "rng-soak", "rng-queue-reset", "rng-remove"),
    profile_properties={"any_layout": bool},
    attack_queue=0,  # the request queue
    framing="virtio_sim.devices.rng.framing:RngFraming",
)
