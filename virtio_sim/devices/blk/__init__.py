"""virtio-blk (virtio 1.4 section 5.2): QEMU's virtio-blk, Linux's virtio_blk.c."""

from __future__ import annotations

from virtio_sim.devices import DeviceKind
from virtio_sim.spec import PCI_CLASS

#: QEMU's virtio-blk properties that machine types (hw_compat_X_Y) change
BLK_PROFILE_PROPERTIES: dict[str, type] = {
    "scsi": bool, "config-wce": bool, "discard": bool, "write-zeroes": bool,
    "queue-size": int, "seg-max-adjust": bool, "num-queues": int, "any_layout": bool,
}  # fmt: skip

KIND = DeviceKind(
    key="blk",
    qdev="virtio-blk",
    pci_class=PCI_CLASS.storage_scsi,  # hw/virtio/virtio-blk-pci.c: PCI_CLASS_STORAGE_SCSI
    host="virtio_sim.host.qdev_rngblk:HOST_BLK",
    guest="virtio_sim.guest.workloads_blk:GUEST",
    workloads=("blk-rw", "blk-rw-no-probe"),
    profile_properties=BLK_PROFILE_PROPERTIES,
    attack_queue=0,  # request queue 0
    framing="virtio_sim.devices.blk.framing:BlkFraming",
)
