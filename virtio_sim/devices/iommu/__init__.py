"""virtio-iommu (virtio 1.4 section 5.13): the machine's iommu= property builds it (host/
build.py), not ``-device``; Linux's virtio-iommu.c binds it."""

from __future__ import annotations

from virtio_sim.devices import DeviceKind
from virtio_sim.spec import PCI_CLASS

KIND = DeviceKind(
    key="iommu",
    qdev="virtio-iommu",
    pci_class=PCI_CLASS.others,  # hw/virtio/virtio-iommu-pci.c: PCI_CLASS_OTHERS
    host="",
    guest="virtio_sim.guest.drivers.iommu:GUEST",
    qdev_model=False,
    framing="virtio_sim.devices.iommu.framing:IommuFraming",
)
