"""The spec's numbers and ring bytes, pinned to literals (issue 23 item 11).

Every other test reads these numbers from specs/*.toml through virtio_sim.spec and
virtio_sim.layouts, so a wrong number there moved both sides of every comparison: moving
ACCESS_PLATFORM from bit 33 to bit 50 passed every test that does not talk to QEMU. Here
each number is written out as it stands in Linux's uapi headers (include/uapi/linux/,
torvalds/linux: virtio_config.h @06d07429, virtio_ring.h @01b944fe, virtio_mmio.h
@68c4f9c5, virtio_pci.h @1260ed77, virtio_blk.h @19bf7f8a plus the MQ/DISCARD/
WRITE_ZEROES/LIFETIME/SECURE_ERASE/ZONED additions, virtio_net.h @14de9d11 with MTU = 3
as in Linux 4.9+, virtio_ids.h) and the virtio 1.4 spec (section numbers below), and
the bytes of each ring structure are built and compared with hand-written hex. These
tests need nothing installed and always run.
"""

from __future__ import annotations

import pytest

from virtio_sim import layouts as L
from virtio_sim.spec import (
    AVAIL_F,
    BLK,
    BLK_F,
    BLK_S,
    BLK_T,
    DESC_F,
    DEVICE_ID,
    FEATURES,
    MMIO,
    MMIO_INT,
    NET_GSO,
    NET_HDR_F,
    NET_S,
    PACKED_DESC_F,
    PACKED_EVENT,
    PACKED_EVENT_F,
    PCI,
    PCI_CAP,
    PCI_CAP_ID,
    PCI_ISR,
    SPLIT,
    STATUS,
    USED_F,
    F,
)

# --------------------------------------------------------------------------- feature bits

#: every feature bit of specs/features.toml, as Linux's uapi headers / the spec number it
FEATURE_BITS = {
    # virtio_config.h (legacy ones under #ifndef VIRTIO_CONFIG_NO_LEGACY); spec 6
    "VIRTIO_F_NOTIFY_ON_EMPTY": 24,
    "VIRTIO_F_ANY_LAYOUT": 27,
    "VIRTIO_F_INDIRECT_DESC": 28,  # virtio_ring.h VIRTIO_RING_F_INDIRECT_DESC
    "VIRTIO_F_EVENT_IDX": 29,  # virtio_ring.h VIRTIO_RING_F_EVENT_IDX
    "VIRTIO_F_BAD_FEATURE": 30,  # QEMU hw/virtio/virtio.c VIRTIO_F_BAD_FEATURE (legacy probe)
    "VIRTIO_F_VERSION_1": 32,
    "VIRTIO_F_ACCESS_PLATFORM": 33,
    "VIRTIO_F_RING_PACKED": 34,
    "VIRTIO_F_IN_ORDER": 35,
    "VIRTIO_F_ORDER_PLATFORM": 36,
    "VIRTIO_F_SR_IOV": 37,
    "VIRTIO_F_NOTIFICATION_DATA": 38,
    "VIRTIO_F_NOTIF_CONFIG_DATA": 39,
    "VIRTIO_F_RING_RESET": 40,
    "VIRTIO_F_ADMIN_VQ": 41,
    "VIRTIO_F_SUSPEND": 43,  # spec 1.4, 6 Reserved Feature Bits
    # virtio_blk.h
    "VIRTIO_BLK_F_BARRIER": 0,
    "VIRTIO_BLK_F_SIZE_MAX": 1,
    "VIRTIO_BLK_F_SEG_MAX": 2,
    "VIRTIO_BLK_F_GEOMETRY": 4,
    "VIRTIO_BLK_F_RO": 5,
    "VIRTIO_BLK_F_BLK_SIZE": 6,
    "VIRTIO_BLK_F_SCSI": 7,
    "VIRTIO_BLK_F_FLUSH": 9,  # VIRTIO_BLK_F_WCE in old headers
    "VIRTIO_BLK_F_TOPOLOGY": 10,
    "VIRTIO_BLK_F_CONFIG_WCE": 11,
    "VIRTIO_BLK_F_MQ": 12,
    "VIRTIO_BLK_F_DISCARD": 13,
    "VIRTIO_BLK_F_WRITE_ZEROES": 14,
    "VIRTIO_BLK_F_LIFETIME": 15,
    "VIRTIO_BLK_F_SECURE_ERASE": 16,
    "VIRTIO_BLK_F_ZONED": 17,
    # virtio_net.h
    "VIRTIO_NET_F_CSUM": 0,
    "VIRTIO_NET_F_GUEST_CSUM": 1,
    "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS": 2,
    "VIRTIO_NET_F_MTU": 3,
    "VIRTIO_NET_F_MAC": 5,
    "VIRTIO_NET_F_GSO": 6,
    "VIRTIO_NET_F_GUEST_TSO4": 7,
    "VIRTIO_NET_F_GUEST_TSO6": 8,
    "VIRTIO_NET_F_GUEST_ECN": 9,
    "VIRTIO_NET_F_GUEST_UFO": 10,
    "VIRTIO_NET_F_HOST_TSO4": 11,
    "VIRTIO_NET_F_HOST_TSO6": 12,
    "VIRTIO_NET_F_HOST_ECN": 13,
    "VIRTIO_NET_F_HOST_UFO": 14,
    "VIRTIO_NET_F_MRG_RXBUF": 15,
    "VIRTIO_NET_F_STATUS": 16,
    "VIRTIO_NET_F_CTRL_VQ": 17,
    "VIRTIO_NET_F_CTRL_RX": 18,
    "VIRTIO_NET_F_CTRL_VLAN": 19,
    "VIRTIO_NET_F_CTRL_RX_EXTRA": 20,
    "VIRTIO_NET_F_GUEST_ANNOUNCE": 21,
    "VIRTIO_NET_F_MQ": 22,
    "VIRTIO_NET_F_CTRL_MAC_ADDR": 23,
    "VIRTIO_NET_F_GUEST_USO4": 54,
    "VIRTIO_NET_F_GUEST_USO6": 55,
    "VIRTIO_NET_F_HOST_USO": 56,
    "VIRTIO_NET_F_HASH_REPORT": 57,
    "VIRTIO_NET_F_GUEST_HDRLEN": 59,
    "VIRTIO_NET_F_RSS": 60,
    "VIRTIO_NET_F_RSC_EXT": 61,
    "VIRTIO_NET_F_STANDBY": 62,
    "VIRTIO_NET_F_SPEED_DUPLEX": 63,
    # virtio_console.h
    "VIRTIO_CONSOLE_F_SIZE": 0,
    "VIRTIO_CONSOLE_F_MULTIPORT": 1,
    "VIRTIO_CONSOLE_F_EMERG_WRITE": 2,
    # virtio_iommu.h
    "VIRTIO_IOMMU_F_INPUT_RANGE": 0,
    "VIRTIO_IOMMU_F_DOMAIN_RANGE": 1,
    "VIRTIO_IOMMU_F_MAP_UNMAP": 2,
    "VIRTIO_IOMMU_F_BYPASS": 3,
    "VIRTIO_IOMMU_F_PROBE": 4,
    "VIRTIO_IOMMU_F_MMIO": 5,
    "VIRTIO_IOMMU_F_BYPASS_CONFIG": 6,
    # virtio_balloon.h (declared in virtio_sim/devices/balloon/; Linux spells the last one
    # VIRTIO_BALLOON_F_REPORTING, the spec VIRTIO_BALLOON_F_PAGE_REPORTING)
    "VIRTIO_BALLOON_F_MUST_TELL_HOST": 0,
    "VIRTIO_BALLOON_F_STATS_VQ": 1,
    "VIRTIO_BALLOON_F_DEFLATE_ON_OOM": 2,
    "VIRTIO_BALLOON_F_FREE_PAGE_HINT": 3,
    "VIRTIO_BALLOON_F_PAGE_POISON": 4,
    "VIRTIO_BALLOON_F_PAGE_REPORTING": 5,
}


def test_every_feature_bit_is_the_headers_number() -> None:
    table = {fb.name: fb.bit for fb in FEATURES.features}
    wrong = {n: (table.get(n), bit) for n, bit in FEATURE_BITS.items() if table.get(n) != bit}
    assert not wrong, f"features.toml differs from the uapi headers (toml, header): {wrong}"
    unpinned = sorted(set(table) - set(FEATURE_BITS))
    assert not unpinned, f"pin these new feature bits here too: {unpinned}"


def test_the_named_feature_bits_the_code_uses() -> None:
    assert (F.INDIRECT_DESC, F.EVENT_IDX, F.VERSION_1, F.ACCESS_PLATFORM) == (28, 29, 32, 33)
    assert (F.RING_PACKED, F.IN_ORDER, F.ORDER_PLATFORM, F.SR_IOV) == (34, 35, 36, 37)
    assert (F.NOTIFICATION_DATA, F.NOTIF_CONFIG_DATA, F.RING_RESET) == (38, 39, 40)
    assert (F.NOTIFY_ON_EMPTY, F.ANY_LAYOUT, F.BAD_FEATURE) == (24, 27, 30)
    assert (BLK_F.SEG_MAX, BLK_F.BLK_SIZE, BLK_F.FLUSH, BLK_F.RO, BLK_F.CONFIG_WCE) == (2, 6, 9, 5, 11)


def test_accessing_platform_is_bit_33_on_the_wire_of_a_device() -> None:
    """End to end: a device built with iommu_platform=on shows bit 33 in the DeviceFeatures
    register at the MMIO offsets of virtio_mmio.h, whatever the tables say."""
    from virtio_sim.dma import IdentityAddressSpace
    from virtio_sim.host.qdev import build_device, parse_device_option
    from virtio_sim.host.transport.mmio import MmioTransport
    from virtio_sim.host.virtio_device import VirtioDevice
    from virtio_sim.memory import GuestMemory

    built = build_device(parse_device_option("virtio-rng-device,iommu_platform=on"))
    memory = GuestMemory.create(1 << 20)
    try:
        dev = VirtioDevice(
            built.model, lambda f: IdentityAddressSpace(memory), transport_features=built.transport_features
        )
        t = MmioTransport(dev, legacy=False, set_irq_level=lambda level: None)
        assert t.read(0x000, 4) == 0x74726976 and t.read(0x004, 4) == 2  # "virt", version 2
        t.write(0x014, 4, 1)  # VIRTIO_MMIO_DEVICE_FEATURES_SEL: the high word
        high = t.read(0x010, 4)  # VIRTIO_MMIO_DEVICE_FEATURES
    finally:
        memory.close()
    assert high & 0x2, f"ACCESS_PLATFORM is not bit 33: high word {high:#x}"
    assert high & 0x1, f"VERSION_1 is not bit 32: high word {high:#x}"


# --------------------------------------------------------------------------- status, ids


def test_status_bits() -> None:
    # virtio_config.h VIRTIO_CONFIG_S_*; SUSPEND: spec 1.4 2.1
    assert (STATUS.ACKNOWLEDGE, STATUS.DRIVER, STATUS.DRIVER_OK, STATUS.FEATURES_OK) == (1, 2, 4, 8)
    assert (STATUS.SUSPEND, STATUS.DEVICE_NEEDS_RESET, STATUS.FAILED) == (16, 0x40, 0x80)


def test_device_ids() -> None:
    # virtio_ids.h VIRTIO_ID_NET/BLOCK/CONSOLE/RNG/IOMMU
    assert (DEVICE_ID.net, DEVICE_ID.blk, DEVICE_ID.console, DEVICE_ID.rng, DEVICE_ID.iommu) == (
        1,
        2,
        3,
        4,
        23,
    )


# --------------------------------------------------------------------------- virtio-mmio

#: virtio_mmio.h VIRTIO_MMIO_* (our register names: spec 4.2.2)
MMIO_REGISTERS = {
    "MagicValue": 0x000,
    "Version": 0x004,
    "DeviceID": 0x008,
    "VendorID": 0x00C,
    "DeviceFeatures": 0x010,
    "DeviceFeaturesSel": 0x014,
    "DriverFeatures": 0x020,
    "DriverFeaturesSel": 0x024,
    "GuestPageSize": 0x028,
    "QueueSel": 0x030,
    "QueueSizeMax": 0x034,  # QUEUE_NUM_MAX
    "QueueSize": 0x038,  # QUEUE_NUM
    "QueueAlign": 0x03C,
    "QueuePFN": 0x040,
    "QueueReady": 0x044,
    "QueueNotify": 0x050,
    "InterruptStatus": 0x060,
    "InterruptACK": 0x064,
    "Status": 0x070,
    "QueueDescLow": 0x080,
    "QueueDescHigh": 0x084,
    "QueueDriverLow": 0x090,  # QUEUE_AVAIL_LOW
    "QueueDriverHigh": 0x094,
    "QueueDeviceLow": 0x0A0,  # QUEUE_USED_LOW
    "QueueDeviceHigh": 0x0A4,
    "SHMSel": 0x0AC,  # spec 4.2.2 (shared memory regions)
    "SHMLenLow": 0x0B0,
    "SHMLenHigh": 0x0B4,
    "SHMBaseLow": 0x0B8,
    "SHMBaseHigh": 0x0BC,
    "QueueReset": 0x0C0,  # spec 4.2.2
    "ConfigGeneration": 0x0FC,
}


def test_mmio_register_offsets_and_identity() -> None:
    got = {k: v for k, v in L.MMIO_OFFSETS.items() if not k.startswith("_")}
    assert got == MMIO_REGISTERS
    assert L.MMIO_CONFIG_OFFSET == 0x100  # VIRTIO_MMIO_CONFIG
    assert (MMIO.magic, MMIO.version_legacy, MMIO.version_modern) == (0x74726976, 1, 2)
    assert (MMIO_INT.USED_BUFFER, MMIO_INT.CONFIG_CHANGE) == (1 << 0, 1 << 1)  # VIRTIO_MMIO_INT_*


# --------------------------------------------------------------------------- virtio-pci


def test_pci_capability_types_and_layout() -> None:
    # virtio_pci.h VIRTIO_PCI_CAP_*_CFG
    assert (PCI_CAP.COMMON, PCI_CAP.NOTIFY, PCI_CAP.ISR, PCI_CAP.DEVICE, PCI_CAP.PCI_CFG) == (1, 2, 3, 4, 5)
    assert (PCI_CAP.SHARED_MEMORY, PCI_CAP.VENDOR) == (8, 9)
    # VIRTIO_PCI_CAP_VNDR/NEXT/LEN/CFG_TYPE/BAR/OFFSET/LENGTH, VIRTIO_PCI_NOTIFY_CAP_MULT
    assert {k: L.VIRTIO_CAP[k] for k in ("cap_vndr", "cap_next", "cap_len", "cfg_type", "bar")} == {
        "cap_vndr": 0, "cap_next": 1, "cap_len": 2, "cfg_type": 3, "bar": 4,
    }  # fmt: skip
    assert (L.VIRTIO_CAP["id"], L.VIRTIO_CAP["offset"], L.VIRTIO_CAP["length"]) == (5, 8, 12)
    assert L.VIRTIO_CAP["notify_off_multiplier"] == 16
    assert L.VIRTIO_CFG_CAP["pci_cfg_data"] == 16
    assert PCI_CAP_ID.VNDR == 0x09 and PCI_CAP_ID.MSIX == 0x11  # PCI_CAP_ID_VNDR, PCI_CAP_ID_MSIX
    assert (PCI_ISR.QUEUE, PCI_ISR.CONFIG) == (0x1, 0x2)  # VIRTIO_PCI_ISR_CONFIG
    assert PCI.msix_no_vector == 0xFFFF  # VIRTIO_MSI_NO_VECTOR
    assert PCI.vendor_id == 0x1AF4  # Red Hat / Qumranet (spec 4.1.2)
    assert (PCI.modern_device_id_base, PCI.transitional_device_id_min) == (0x1040, 0x1000)


def test_pci_common_cfg_offsets() -> None:
    # virtio_pci.h VIRTIO_PCI_COMMON_*
    assert L.COMMON_CFG == {
        "device_feature_select": 0, "device_feature": 4, "driver_feature_select": 8,
        "driver_feature": 12, "config_msix_vector": 16, "num_queues": 18, "device_status": 20,
        "config_generation": 21, "queue_select": 22, "queue_size": 24, "queue_msix_vector": 26,
        "queue_enable": 28, "queue_notify_off": 30, "queue_desc": 32, "queue_driver": 40,
        "queue_device": 48, "queue_notify_data": 56, "queue_reset": 58,
        "admin_queue_index": 60, "admin_queue_num": 62,
    }  # fmt: skip


def test_pci_legacy_header() -> None:
    # virtio_pci.h VIRTIO_PCI_HOST_FEATURES .. VIRTIO_MSI_QUEUE_VECTOR, CONFIG_OFF
    assert L.LEGACY_HDR == {
        "host_features": 0, "guest_features": 4, "queue_pfn": 8, "queue_num": 12, "queue_sel": 14,
        "queue_notify": 16, "status": 18, "isr": 19, "config_msix_vector": 20, "queue_msix_vector": 22,
    }  # fmt: skip
    assert (L.LEGACY_CONFIG_OFFSET, L.LEGACY_CONFIG_OFFSET_MSIX) == (20, 24)
    assert (PCI.legacy_pfn_shift, PCI.legacy_queue_align) == (12, 4096)  # QUEUE_ADDR_SHIFT, VRING_ALIGN


# --------------------------------------------------------------------------- split ring bytes


def test_split_ring_flags() -> None:
    # virtio_ring.h VRING_DESC_F_*, VRING_USED_F_NO_NOTIFY, VRING_AVAIL_F_NO_INTERRUPT
    assert (DESC_F.NEXT, DESC_F.WRITE, DESC_F.INDIRECT) == (1, 2, 4)
    assert (AVAIL_F.NO_INTERRUPT, USED_F.NO_NOTIFY) == (1, 1)
    # VRING_DESC_ALIGN_SIZE, VRING_AVAIL_ALIGN_SIZE, VRING_USED_ALIGN_SIZE
    assert (SPLIT.desc_align, SPLIT.avail_align, SPLIT.used_align) == (16, 2, 4)
    assert SPLIT.max_queue_size == 32768  # spec 2.7: Queue Size up to 32768


def test_split_descriptor_bytes() -> None:
    """struct vring_desc: le64 addr, le32 len, le16 flags, le16 next (16 bytes)."""
    raw = L.desc_codec().pack(0x1122334455667788, 0x99AABBCC, DESC_F.NEXT | DESC_F.WRITE, 7)
    assert raw == bytes.fromhex("8877665544332211ccbbaa9903000700")
    assert L.DESC_SIZE == 16
    big = L.desc_codec("big").pack(0x1122334455667788, 0x99AABBCC, 3, 7)  # legacy big-endian guest
    assert big == bytes.fromhex("112233445566778899aabbcc00030007")
    # by field name too: a positional pack cannot see two same-sized fields swapped
    fields = {"addr": 0x1122334455667788, "len": 0x99AABBCC, "flags": 3, "next": 7}
    assert L.VirtqDesc.build(fields) == raw and L.virtq_desc("big").build(fields) == big
    assert L.field_offsets(L.VirtqDesc) == {"addr": 0, "len": 8, "flags": 12, "next": 14}
    assert L.field_offsets(L.VirtqUsedElem) == {"id": 0, "len": 4}


def test_avail_and_used_ring_bytes() -> None:
    """struct vring_avail {flags, idx, ring[num]} + used_event; struct vring_used {flags,
    idx, vring_used_elem {le32 id, le32 len}[num]} + avail_event."""
    avail = L.virtq_avail(4).build({"flags": 1, "idx": 3, "ring": [0, 1, 2, 0x1234], "used_event": 9})
    assert avail == bytes.fromhex("0100030000000100020034120900")
    used = L.virtq_used(2).build(
        {"flags": 1, "idx": 2, "ring": [{"id": 5, "len": 0x200}, {"id": 0x10, "len": 1}], "avail_event": 7}
    )
    assert used == bytes.fromhex("01000200050000000002000010000000010000000700")
    assert L.RING_IDX_OFFSET == 2 and L.USED_ELEM_SIZE == 8
    assert L.used_event_offset(256) == 4 + 2 * 256  # vring_used_event: avail->ring[num]
    assert L.avail_event_offset(256) == 4 + 8 * 256  # vring_avail_event: used->ring[num]


@pytest.mark.parametrize("num, align", [(256, 4096), (128, 4096), (8, 4096), (1024, 64)])
def test_legacy_vring_layout_is_linux_vring_init(num: int, align: int) -> None:
    """virtio_ring.h vring_init(): used = ALIGN(16*num + 2*(3+num), align) and vring_size()
    = that + 2*3 + 8*num; the spec's virtq_size() (2.7 legacy) also aligns the used part."""
    used_at = (16 * num + 2 * (3 + num) + align - 1) & ~(align - 1)
    assert L.legacy_used_ring_offset(num, align) == used_at
    linux_size = used_at + 2 * 3 + 8 * num
    assert L.legacy_vring_size(num, align) == (linux_size + align - 1) & ~(align - 1)
    assert (L.legacy_used_ring_offset(256, 4096), L.legacy_vring_size(256, 4096)) == (8192, 12288)


# --------------------------------------------------------------------------- packed ring bytes


def test_packed_ring_numbers() -> None:
    # virtio_ring.h VRING_PACKED_DESC_F_AVAIL 7, VRING_PACKED_DESC_F_USED 15,
    # VRING_PACKED_EVENT_FLAG_ENABLE/DISABLE/DESC 0/1/2, VRING_PACKED_EVENT_F_WRAP_CTR 15
    assert (PACKED_DESC_F.AVAIL, PACKED_DESC_F.USED) == (1 << 7, 1 << 15)
    assert (PACKED_EVENT_F.ENABLE, PACKED_EVENT_F.DISABLE, PACKED_EVENT_F.DESC) == (0, 1, 2)
    assert (PACKED_EVENT.wrap_shift, PACKED_EVENT.off_mask) == (15, 0x7FFF)


def test_packed_descriptor_and_event_bytes() -> None:
    """struct vring_packed_desc {le64 addr, le32 len, le16 id, le16 flags};
    struct vring_packed_desc_event {le16 off_wrap, le16 flags}."""
    desc = L.PvirtqDesc.build({"addr": 0x1000, "len": 0x20, "id": 3, "flags": (1 << 7) | 2 | 1})
    assert desc == bytes.fromhex("00100000000000002000000003008300")
    assert L.PACKED_DESC_SIZE == 16 and L.PACKED_DESC_OFFSETS == {"addr": 0, "len": 8, "id": 12, "flags": 14}
    event = L.PvirtqEventSuppress.build({"desc": (1 << 15) | 5, "flags": 2})
    assert event == bytes.fromhex("05800200") and L.EVENT_SUPPRESS_SIZE == 4


# --------------------------------------------------------------------------- device request bytes


def test_blk_numbers_and_request_header_bytes() -> None:
    # virtio_blk.h VIRTIO_BLK_T_*, VIRTIO_BLK_S_*, VIRTIO_BLK_ID_BYTES; struct virtio_blk_outhdr
    assert (BLK_T.IN, BLK_T.OUT, BLK_T.FLUSH, BLK_T.GET_ID) == (0, 1, 4, 8)
    assert (BLK_T.DISCARD, BLK_T.WRITE_ZEROES, BLK_T.SECURE_ERASE) == (11, 13, 14)
    assert (BLK_S.OK, BLK_S.IOERR, BLK_S.UNSUPP) == (0, 1, 2)
    assert (BLK.id_bytes, BLK.sector_size) == (20, 512)
    assert L.blk_req_header_codec().pack(BLK_T.OUT, 0, 0x0102) == bytes.fromhex(
        "01000000000000000201000000000000"
    )
    cfg = L.field_offsets(L.virtio_blk_config())
    assert (cfg["capacity"], cfg["size_max"], cfg["seg_max"], cfg["blk_size"]) == (0, 8, 12, 20)
    assert cfg["writeback"] == 32  # virtio_blk_config.wce, after the topology fields


def test_net_numbers_and_header_bytes() -> None:
    # virtio_net.h VIRTIO_NET_HDR_F_*, VIRTIO_NET_HDR_GSO_*, VIRTIO_NET_S_*, struct virtio_net_hdr_v1
    assert (NET_HDR_F.NEEDS_CSUM, NET_HDR_F.DATA_VALID) == (1, 2)
    assert (NET_GSO.NONE, NET_GSO.TCPV4, NET_GSO.UDP, NET_GSO.TCPV6, NET_GSO.ECN) == (0, 1, 3, 4, 0x80)
    assert (NET_S.LINK_UP, NET_S.ANNOUNCE) == (1, 2)
    assert (L.NET_HDR_SIZE, L.NET_HDR_LEGACY_SIZE) == (12, 10)
    hdr = L.net_hdr_codec().pack(1, 4, 0x36, 0x5A8, 0x22, 0x10, 2)
    assert hdr == bytes.fromhex("01043600a805220010000200")
    assert {k: L.NET_CONFIG_OFFSETS[k] for k in ("mac", "status", "max_virtqueue_pairs", "mtu")} == {
        "mac": 0, "status": 6, "max_virtqueue_pairs": 8, "mtu": 10,
    }  # fmt: skip
