"""virtio-balloon, the traditional memory balloon (virtio 1.3 section 5.5), stats-free.

The device asks for ``num_pages`` 4 KiB pages; the driver gives them by putting arrays of
32-bit page frame numbers (address >> 12) on the inflate queue, takes them back through
the deflate queue, and writes how many the balloon holds to ``actual`` (5.5.6). Both
config fields are little-endian even on the legacy interface (5.5.4.1), unlike the frame
numbers, which a legacy driver writes in its own byte order (QEMU's
virtio_balloon_handle_output reads them with virtio_ldl_p; Linux fills them with
cpu_to_virtio32).

The subset: queues 0 (inflateq) and 1 (deflateq) and the feature bits
VIRTIO_BALLOON_F_MUST_TELL_HOST and VIRTIO_BALLOON_F_DEFLATE_ON_OOM. QEMU's device always
offers VIRTIO_BALLOON_F_STATS_VQ and creates the statistics queue
(hw/virtio/virtio-balloon.c virtio_balloon_get_features / realize); this model never
offers it (docs/qemu-deviations.md), and neither free page hinting, page poison nor
free page reporting.

This package is the whole device: the descriptor and spec numbers here (core), the
device model in host.py, the driver and its workload in guest.py; one line in
virtio_sim/devices/__init__.py registers it.
"""

from __future__ import annotations

from virtio_sim.devices import DeviceKind
from virtio_sim.spec import PCI_CLASS

#: feature bits (5.5.3); names as the spec spells them
FEATURES = {
    "VIRTIO_BALLOON_F_MUST_TELL_HOST": 0,
    "VIRTIO_BALLOON_F_STATS_VQ": 1,
    "VIRTIO_BALLOON_F_DEFLATE_ON_OOM": 2,
    "VIRTIO_BALLOON_F_FREE_PAGE_HINT": 3,
    "VIRTIO_BALLOON_F_PAGE_POISON": 4,
    "VIRTIO_BALLOON_F_PAGE_REPORTING": 5,
}
F_MUST_TELL_HOST = FEATURES["VIRTIO_BALLOON_F_MUST_TELL_HOST"]
F_DEFLATE_ON_OOM = FEATURES["VIRTIO_BALLOON_F_DEFLATE_ON_OOM"]
#: queue indexes (5.5.2)
INFLATEQ, DEFLATEQ = 0, 1
#: a page frame number is the address divided by 4096, whatever the guest's page size (5.5.6)
PFN_SHIFT = 12
PAGE_SIZE = 1 << PFN_SHIFT
PFN_SIZE = 4  # a 32-bit frame number
#: struct virtio_balloon_config without the hinting/poison fields: le32 num_pages, le32 actual
#: (QEMU's config size when none of those features is on: virtio_balloon_config_size)
CONFIG_NUM_PAGES, CONFIG_ACTUAL, CONFIG_SIZE = 0, 4, 8
#: QEMU creates each queue with 128 entries (virtio_add_queue(vdev, 128, ...) in realize)
QUEUE_SIZE = 128
#: Linux sends at most 256 frame numbers per request (VIRTIO_BALLOON_ARRAY_PFNS_MAX)
PFNS_PER_REQUEST = 256

KIND = DeviceKind(
    key="balloon",
    qdev="virtio-balloon",
    # hw/virtio/virtio-balloon-pci.c: class_code PCI_CLASS_OTHERS
    pci_class=PCI_CLASS.others,
    host="virtio_sim.devices.balloon.host:HOST",
    guest="virtio_sim.devices.balloon.guest:GUEST",
    workloads=("balloon",),
    features=FEATURES,
    attack_queue=INFLATEQ,
)
