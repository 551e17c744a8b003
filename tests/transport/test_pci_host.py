"""The host's PCI function and virtio-pci registers, driven register by register."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pci_bench import HostBench, make_host
from virtio_sim.host.transport.pci_modern import BAR_SIZE as MODERN_BAR_SIZE
from virtio_sim.layouts import (
    COMMON_CFG,
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    LEGACY_HDR,
    MSIX_CAP,
    MSIX_ENTRY,
    PCI_HEADER,
    VIRTIO_CAP,
    VIRTIO_CFG_CAP,
    legacy_used_ring_offset,
)
from virtio_sim.spec import (
    CONF1,
    DEVICE_ID,
    MSI,
    MSIX,
    PCI,
    PCI_BAR,
    PCI_CAP,
    PCI_CAP_ID,
    PCI_CLASS,
    PCI_CMD,
    PCI_ISR,
    QEMU_PCI,
    STATUS,
    F,
    bit,
)

IO_BASE = 0xC000
MSIX_BASE = 0xC0000000
MODERN_BASE = 0xC0100000
COMMON = MODERN_BASE + QEMU_PCI.common_offset
ISR = MODERN_BASE + QEMU_PCI.isr_offset
DEVCFG = MODERN_BASE + QEMU_PCI.device_offset
NOTIFY = MODERN_BASE + QEMU_PCI.notify_offset
NO_VECTOR = PCI.msix_no_vector


def bench(tmp_path: Path, device: str = "virtio-blk-pci", transport: str = "pci-transitional") -> HostBench:
    b = HostBench(make_host(tmp_path, device, transport))
    bars = {i: a for i, a in ((0, IO_BASE), (1, MSIX_BASE), (4, MODERN_BASE)) if i in b.proxy.fn.bars}
    b.place(bars)
    return b


def common_r(b: HostBench, name: str, size: int | None = None) -> int:
    from virtio_sim.layouts import COMMON_CFG_WIDTH

    return b.m.mmio_read(COMMON + COMMON_CFG[name], size or COMMON_CFG_WIDTH[name])


def common_w(b: HostBench, name: str, value: int, size: int | None = None) -> None:
    from virtio_sim.layouts import COMMON_CFG_WIDTH

    b.m.mmio_write(COMMON + COMMON_CFG[name], size or COMMON_CFG_WIDTH[name], value)


def caps(b: HostBench) -> list[tuple[int, int]]:
    out = []
    ptr = b.cfg_r(PCI_HEADER["capabilities_ptr"], 1)
    while ptr:
        out.append((b.cfg_r(ptr, 1), ptr))
        ptr = b.cfg_r(ptr + 1, 1)
    return out


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("device", "transport", "dev_id", "rev", "subsys", "klass"),
    [
        ("virtio-blk-pci", "pci-transitional", 0x1001, 0, DEVICE_ID.blk, PCI_CLASS.storage_scsi),
        ("virtio-rng-pci", "pci-transitional", 0x1005, 0, DEVICE_ID.rng, PCI_CLASS.others),
        (
            "virtio-blk-pci",
            "pci-modern",
            0x1042,
            1,
            QEMU_PCI.subsystem_id_modern,
            PCI_CLASS.storage_scsi,
        ),
        ("virtio-rng-pci", "pci-modern", 0x1044, 1, QEMU_PCI.subsystem_id_modern, PCI_CLASS.others),
    ],
)
def test_pci_identity(
    tmp_path: Path, device: str, transport: str, dev_id: int, rev: int, subsys: int, klass: int
) -> None:
    b = HostBench(make_host(tmp_path, device, transport))
    assert b.cfg_r(PCI_HEADER["vendor_id"], 2) == PCI.vendor_id
    assert b.cfg_r(PCI_HEADER["device_id"], 2) == dev_id
    assert b.cfg_r(PCI_HEADER["revision_id"], 1) == rev
    assert b.cfg_r(PCI_HEADER["subsystem_vendor_id"], 2) == PCI.vendor_id
    assert b.cfg_r(PCI_HEADER["subsystem_id"], 2) == subsys
    assert b.cfg_r(PCI_HEADER["revision_id"], 4) >> 8 == klass
    assert b.cfg_r(PCI_HEADER["interrupt_pin"], 1) == 1


def test_absent_function_reads_all_ones_and_conf1_matches_ecam(tmp_path: Path) -> None:
    b = HostBench(make_host(tmp_path, "virtio-rng-pci"))
    assert b.m.mmio_read(b.ecam(0, (0, 9, 0)), 2) == 0xFFFF
    assert b.m.mmio_read(b.ecam(0, (3, 0, 0)), 4) == 0xFFFFFFFF
    bus, dev, fn = b.bdf
    for off in (0, 4, 8, 0x2C, 0x34, 0x3C):
        addr = CONF1.ENABLE | bus << 16 | dev << 11 | fn << 8 | off
        b.m.pio_write(CONF1.address_port, 4, addr)
        assert b.m.pio_read(CONF1.data_port, 4) == b.cfg_r(off, 4)
    # byte access to the data port picks the byte of the dword
    b.m.pio_write(CONF1.address_port, 4, CONF1.ENABLE | dev << 11)
    assert b.m.pio_read(CONF1.data_port + 2, 2) == b.cfg_r(2, 2)
    # with the enable bit clear nothing answers
    b.m.pio_write(CONF1.address_port, 4, dev << 11)
    assert b.m.pio_read(CONF1.data_port, 4) == 0xFFFFFFFF


# --------------------------------------------------------------------------- BARs, COMMAND


def test_bar_sizing_reports_size_and_type(tmp_path: Path) -> None:
    b = HostBench(make_host(tmp_path, "virtio-blk-pci"))
    sizes = {}
    for i in range(PCI_BAR.count):
        reg = b.bar_reg(i)
        orig = b.cfg_r(reg, 4)
        b.cfg_w(reg, 4, 0xFFFFFFFF)
        sizes[i] = b.cfg_r(reg, 4)
        b.cfg_w(reg, 4, orig)
    legacy_size = b.proxy.fn.bars[0].size
    assert sizes[0] == (~(legacy_size - 1) & 0xFFFFFFFF) | PCI_BAR.SPACE_IO
    assert sizes[1] & PCI_BAR.MEM_TYPE_MASK == PCI_BAR.MEM_TYPE_32
    assert sizes[1] & ~0xF == ~(b.proxy.fn.bars[1].size - 1) & 0xFFFFFFFF
    assert sizes[4] == (~(MODERN_BAR_SIZE - 1) & 0xFFFFFFFF) | PCI_BAR.MEM_TYPE_64 | PCI_BAR.MEM_PREFETCH
    assert sizes[5] == 0xFFFFFFFF  # upper half of the 64-bit BAR: all address bits
    assert sizes[2] == sizes[3] == 0  # no BAR there
    # legacy BAR: header with MSI-X fields (24 bytes) + 57 bytes of blk config (QEMU 7.2's
    # virtio-blk offers DISCARD and WRITE_ZEROES, so its config ends after
    # write_zeroes_may_unmap), rounded to a power of 2; QEMU's is the same
    assert legacy_size == 128


def test_decoding_follows_command_register(tmp_path: Path) -> None:
    b = bench(tmp_path)
    assert common_r(b, "num_queues") == 1
    b.cfg_w(PCI_HEADER["command"], 2, PCI_CMD.IO)  # memory decoding off
    assert common_r(b, "num_queues") == 0
    assert any("unassigned" in n for n in b.m.notes)
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["queue_num"], 2) == 256  # I/O still decodes
    b.cfg_w(PCI_HEADER["command"], 2, 0xFFFF)  # only the implemented bits stick
    cmd = b.cfg_r(PCI_HEADER["command"], 2)
    assert cmd & PCI_CMD.MEMORY and cmd & PCI_CMD.MASTER
    assert (
        cmd
        & ~(
            PCI_CMD.IO
            | PCI_CMD.MEMORY
            | PCI_CMD.MASTER
            | PCI_CMD.PARITY
            | PCI_CMD.SERR
            | PCI_CMD.INTX_DISABLE
        )
        == 0
    )


def test_read_only_header_fields_cannot_be_changed(tmp_path: Path) -> None:
    b = bench(tmp_path)
    for off, size in ((0, 4), (8, 4), (0x2C, 4), (0x34, 1), (0x3D, 1)):
        before = b.cfg_r(off, size)
        b.cfg_w(off, size, 0x5A5A5A5A & ((1 << 8 * size) - 1))
        assert b.cfg_r(off, size) == before
    b.cfg_w(PCI_HEADER["interrupt_line"], 1, 0x42)  # a scratch register for software
    assert b.cfg_r(PCI_HEADER["interrupt_line"], 1) == 0x42


# --------------------------------------------------------------------------- capabilities


def test_capability_list_has_virtio_structures_and_msix(tmp_path: Path) -> None:
    b = bench(tmp_path)
    found = caps(b)
    ids = [cid for cid, _ in found]
    assert ids.count(PCI_CAP_ID.VNDR) == 5 and ids.count(PCI_CAP_ID.MSIX) == 1
    by_type = {}
    for cid, off in found:
        if cid == PCI_CAP_ID.VNDR:
            by_type[b.cfg_r(off + VIRTIO_CAP["cfg_type"], 1)] = off
    assert set(by_type) == {
        PCI_CAP.COMMON,
        PCI_CAP.ISR,
        PCI_CAP.DEVICE,
        PCI_CAP.NOTIFY,
        PCI_CAP.PCI_CFG,
    }
    for cfg_type, want in (
        (PCI_CAP.COMMON, QEMU_PCI.common_offset),
        (PCI_CAP.ISR, QEMU_PCI.isr_offset),
        (PCI_CAP.DEVICE, QEMU_PCI.device_offset),
        (PCI_CAP.NOTIFY, QEMU_PCI.notify_offset),
    ):
        off = by_type[cfg_type]
        assert b.cfg_r(off + VIRTIO_CAP["bar"], 1) == QEMU_PCI.modern_mem_bar
        assert b.cfg_r(off + VIRTIO_CAP["offset"], 4) == want
    notify = by_type[PCI_CAP.NOTIFY]
    assert b.cfg_r(notify + VIRTIO_CAP["notify_off_multiplier"], 4) == QEMU_PCI.notify_off_multiplier
    # read-only: a write to a capability field does not stick
    b.cfg_w(notify + VIRTIO_CAP["offset"], 4, 0)
    assert b.cfg_r(notify + VIRTIO_CAP["offset"], 4) == QEMU_PCI.notify_offset


def test_modern_only_and_legacy_only_functions_have_their_bars(tmp_path: Path) -> None:
    modern = HostBench(make_host(tmp_path, "virtio-rng-pci", "pci-modern"))
    assert 0 not in modern.proxy.fn.bars and 4 in modern.proxy.fn.bars
    legacy = HostBench(make_host(tmp_path, "virtio-rng-pci,disable-modern=on", "pci-transitional"))
    assert 0 in legacy.proxy.fn.bars and 4 not in legacy.proxy.fn.bars
    assert PCI_CAP_ID.VNDR not in [c for c, _ in caps(legacy)]
    # legacy-only: VERSION_1 is not offered
    assert not legacy.proxy.device.device_features & bit(F.VERSION_1)


def test_pci_cfg_access_capability_reaches_the_bars(tmp_path: Path) -> None:
    b = bench(tmp_path)
    cap = next(
        off
        for cid, off in caps(b)
        if cid == PCI_CAP_ID.VNDR and b.cfg_r(off + VIRTIO_CAP["cfg_type"], 1) == PCI_CAP.PCI_CFG
    )
    c = VIRTIO_CFG_CAP
    b.cfg_w(cap + c["bar"], 1, QEMU_PCI.modern_mem_bar)
    b.cfg_w(cap + c["offset"], 4, QEMU_PCI.common_offset + COMMON_CFG["num_queues"])
    b.cfg_w(cap + c["length"], 4, 2)
    assert b.cfg_r(cap + c["pci_cfg_data"], 2) == 1
    # a write through the window: device_status
    b.cfg_w(cap + c["offset"], 4, QEMU_PCI.common_offset + COMMON_CFG["device_status"])
    b.cfg_w(cap + c["length"], 4, 1)
    b.cfg_w(cap + c["pci_cfg_data"], 1, STATUS.ACKNOWLEDGE)
    assert b.proxy.device.status == STATUS.ACKNOWLEDGE
    # bogus programming: odd length, unaligned offset, absent BAR, past the BAR
    for bar, off, length in (
        (4, 0, 3),
        (4, 1, 2),
        (2, 0, 4),
        (4, MODERN_BAR_SIZE - 2, 4),
        (9, 0, 1),
    ):
        b.cfg_w(cap + c["bar"], 1, bar)
        b.cfg_w(cap + c["offset"], 4, off)
        b.cfg_w(cap + c["length"], 4, length)
        b.cfg_r(cap + c["pci_cfg_data"], 4)
        b.cfg_w(cap + c["pci_cfg_data"], 4, 0xFFFFFFFF)
    assert b.proxy.device.status == STATUS.ACKNOWLEDGE
    assert any("pci cfg capability" in n for n in b.proxy.device.notes)


# --------------------------------------------------------------------------- common config


def test_feature_windows(tmp_path: Path) -> None:
    b = bench(tmp_path)
    offered = b.proxy.device.device_features
    common_w(b, "device_feature_select", 0)
    low = common_r(b, "device_feature")
    common_w(b, "device_feature_select", 1)
    high = common_r(b, "device_feature")
    assert high & bit(F.VERSION_1 - 32)
    # legacy-only transport bits exist on the device but not on the modern interface
    assert offered & bit(F.ANY_LAYOUT) and not low & bit(F.ANY_LAYOUT)
    assert not low & bit(F.BAD_FEATURE)
    for window in (2, 3, 0xFFFFFFFF):
        common_w(b, "device_feature_select", window)
        assert common_r(b, "device_feature") == 0
    # the legacy interface shows bits 0-31 including the legacy-only ones
    assert b.m.pio_read(IO_BASE, 4) & bit(F.ANY_LAYOUT)
    # driver feature windows >= 2 ignore writes and read 0
    common_w(b, "driver_feature_select", 5)
    common_w(b, "driver_feature", 0xFFFFFFFF)
    assert common_r(b, "driver_feature") == 0
    assert b.proxy.device.driver_features == 0


def test_queue_fields(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-blk-pci,queue-size=64")
    d = b.proxy.device
    assert common_r(b, "num_queues") == 1
    assert common_r(b, "queue_size") == 64
    common_w(b, "queue_size", 32)
    assert common_r(b, "queue_size") == 32
    common_w(b, "queue_size", 48)  # not a power of two
    assert common_r(b, "queue_size") == 32
    common_w(b, "queue_desc", 0x123456789000, 8)
    common_w(b, "queue_driver", 0x2000, 4)
    b.m.mmio_write(COMMON + COMMON_CFG["queue_driver"] + 4, 4, 0x1)
    assert common_r(b, "queue_desc") == 0x123456789000
    assert common_r(b, "queue_driver") == 0x1_00002000
    assert b.m.mmio_read(COMMON + COMMON_CFG["queue_desc"] + 4, 4) == 0x1234
    assert common_r(b, "queue_notify_off") == 0
    common_w(b, "queue_enable", 0)
    assert common_r(b, "queue_enable") == 0
    assert any("queue_enable" in n for n in d.notes)
    common_w(b, "queue_enable", 1)
    assert common_r(b, "queue_enable") == 1
    # once enabled, size and addresses are frozen
    common_w(b, "queue_size", 16)
    common_w(b, "queue_desc", 0x9000, 8)
    assert common_r(b, "queue_size") == 32 and common_r(b, "queue_desc") == 0x123456789000
    # a nonexistent queue reads size 0 and ignores writes
    common_w(b, "queue_select", 7)
    assert common_r(b, "queue_size") == 0
    common_w(b, "queue_enable", 1)
    assert common_r(b, "queue_enable") == 0
    # beyond VIRTIO_QUEUE_MAX the select is dropped
    common_w(b, "queue_select", QEMU_PCI.queue_max)
    assert common_r(b, "queue_select") == 7
    # reset clears queue state and the selector
    common_w(b, "device_status", 0)
    assert common_r(b, "queue_select") == 0 and common_r(b, "queue_enable") == 0
    assert common_r(b, "queue_size") == 64


def test_queue_reset_needs_ring_reset(tmp_path: Path) -> None:
    b = bench(tmp_path)
    d = b.proxy.device
    d.transport_features.ring_reset = True
    common_w(b, "queue_enable", 1)
    common_w(b, "queue_reset", 1)  # not negotiated yet: ignored
    assert common_r(b, "queue_enable") == 1
    common_w(b, "driver_feature_select", 1)
    common_w(b, "driver_feature", (bit(F.VERSION_1) | bit(F.RING_RESET)) >> 32)
    common_w(b, "queue_reset", 1)
    assert common_r(b, "queue_enable") == 0 and common_r(b, "queue_reset") == 0
    assert common_r(b, "queue_msix_vector") == NO_VECTOR


def test_config_generation_changes_with_device_config(tmp_path: Path) -> None:
    b = bench(tmp_path)
    model = b.proxy.device.model
    gen = common_r(b, "config_generation")
    cap_lo = b.m.mmio_read(DEVCFG, 4)
    model.size_bytes *= 2  # type: ignore[attr-defined]
    b.proxy.device.config_changed()
    assert common_r(b, "config_generation") == (gen + 1) & 0xFF
    assert b.m.mmio_read(DEVCFG, 4) == 2 * cap_lo
    b.proxy.device.config_changed()  # nothing changed: no new generation
    assert common_r(b, "config_generation") == (gen + 1) & 0xFF


def test_device_config_access_rules(tmp_path: Path) -> None:
    b = bench(tmp_path)
    capacity = b.proxy.device.model.capacity  # type: ignore[attr-defined]
    assert b.m.mmio_read(DEVCFG, 4) == capacity & 0xFFFFFFFF
    assert b.m.mmio_read(DEVCFG + 1, 2) == 0  # unaligned: ignored
    assert b.m.mmio_read(DEVCFG + 96, 4) == 0xFFFFFFFF  # past the end: all ones
    assert b.m.mmio_read(DEVCFG + 0xFFC, 4) == 0xFFFFFFFF
    b.m.mmio_write(DEVCFG + 200, 4, 1)
    notes = " ".join(b.proxy.device.notes)
    assert "ignored" in notes and "out of range" in notes


# --------------------------------------------------------------------------- width and read-only


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("device_feature_select", 1),
        ("device_status", 4),
        ("queue_select", 4),
        ("config_msix_vector", 1),
    ],
)
def test_wrong_width_common_writes_are_ignored_and_logged(tmp_path: Path, name: str, size: int) -> None:
    b = bench(tmp_path)
    before = common_r(b, name)
    common_w(b, name, 0x3, size)
    assert common_r(b, name) == before
    assert any(f"wrong size access ({size}) to common cfg field {name}" in n for n in b.proxy.device.notes)


def test_wrong_width_common_read_returns_0(tmp_path: Path) -> None:
    b = bench(tmp_path)
    assert common_r(b, "num_queues", 4) == 0
    assert common_r(b, "device_feature", 2) == 0
    assert b.m.mmio_read(COMMON + COMMON_CFG["queue_size"] + 1, 1) == 0  # inside a field
    assert b.m.mmio_read(COMMON + 0x80, 4) == 0  # beyond the structure
    assert len(b.proxy.device.notes) >= 4


@pytest.mark.parametrize(
    "name",
    ["num_queues", "device_feature", "queue_notify_off", "config_generation", "queue_notify_data"],
)
def test_read_only_common_fields_ignore_writes(tmp_path: Path, name: str) -> None:
    b = bench(tmp_path)
    before = common_r(b, name)
    common_w(b, name, 0x55)
    assert common_r(b, name) == before
    assert any(f"read-only common cfg field {name}" in n for n in b.proxy.device.notes)


def test_legacy_header_width_and_read_only_rules(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-blk-pci,vectors=0")
    d = b.proxy.device
    b.m.pio_write(IO_BASE + LEGACY_HDR["queue_sel"], 4, 3)  # wrong width
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["queue_sel"], 2) == 0
    b.m.pio_write(IO_BASE + LEGACY_HDR["queue_num"], 2, 16)  # the size is read-only
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["queue_num"], 2) == 256
    b.m.pio_write(IO_BASE + LEGACY_HDR["host_features"], 4, 0)
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["host_features"], 4) != 0
    b.m.pio_write(IO_BASE + LEGACY_HDR["isr"], 1, 1)
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["status"], 4) == 0  # wrong width read
    notes = " ".join(d.notes)
    assert "wrong size access (4) to register queue_sel" in notes
    assert "read-only register queue_num" in notes
    assert "read-only register host_features" in notes
    assert "read-only register isr" in notes


# --------------------------------------------------------------------------- interrupts


def test_isr_clears_on_read_and_drops_intx(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-rng-pci,vectors=0")
    levels: list[tuple[int, bool]] = []
    b.m.irq_out = lambda irq, level: levels.append((irq, level))
    gsi = b.cfg_r(PCI_HEADER["interrupt_line"], 1)
    b.proxy.queue_interrupt(0)
    assert levels == [(gsi, True)]
    assert b.cfg_r(PCI_HEADER["status"], 2) & 0x8  # interrupt status bit
    assert b.m.mmio_read(ISR, 1) == PCI_ISR.QUEUE
    assert levels[-1] == (gsi, False)
    assert b.m.mmio_read(ISR, 1) == 0
    b.proxy.config_interrupt()
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["isr"], 1) == PCI_ISR.QUEUE | PCI_ISR.CONFIG
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["isr"], 1) == 0
    # INTx disable keeps the line low while the ISR still records the cause
    levels.clear()
    b.cfg_w(PCI_HEADER["command"], 2, b.cfg_r(PCI_HEADER["command"], 2) | PCI_CMD.INTX_DISABLE)
    b.proxy.queue_interrupt(0)
    assert levels == []
    assert b.m.mmio_read(ISR, 1) == PCI_ISR.QUEUE
    # a wider ISR read is not an ISR read
    b.proxy.queue_interrupt(0)
    assert b.m.mmio_read(ISR, 4) == 0
    assert b.m.mmio_read(ISR, 1) == PCI_ISR.QUEUE


def _enable_msix(b: HostBench, data: list[int]) -> int:
    cap = next(off for cid, off in caps(b) if cid == PCI_CAP_ID.MSIX)
    ctl = cap + MSIX_CAP["message_control"]
    assert b.cfg_r(ctl, 2) & MSIX.table_size_mask == b.proxy.fn.msix.vectors - 1  # type: ignore[union-attr]
    for i, value in enumerate(data):
        e = MSIX_BASE + 16 * i
        b.m.mmio_write(e + MSIX_ENTRY["msg_addr_lo"], 4, MSI.x86_doorbell)
        b.m.mmio_write(e + MSIX_ENTRY["msg_data"], 4, value)
        b.m.mmio_write(e + MSIX_ENTRY["vector_control"], 4, 0)
    b.cfg_w(ctl, 2, MSIX.ENABLE)
    return ctl


def test_msix_masking_sets_pending_and_unmask_delivers(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-rng-pci")
    sent: list[tuple[int, int]] = []
    b.m.msi_out = lambda addr, data: sent.append((addr, data))
    ctl = _enable_msix(b, [0x40, 0x41])
    common_w(b, "config_msix_vector", 0)
    common_w(b, "queue_msix_vector", 1)
    assert common_r(b, "queue_msix_vector") == 1
    b.proxy.queue_interrupt(0)
    assert sent == [(MSI.x86_doorbell, 0x41)]
    pba = MSIX_BASE + b.proxy.fn.msix.pba_offset  # type: ignore[union-attr]
    # entry mask
    b.m.mmio_write(MSIX_BASE + 16 + MSIX_ENTRY["vector_control"], 4, MSIX.ENTRY_MASKED)
    b.proxy.queue_interrupt(0)
    assert len(sent) == 1
    assert b.m.mmio_read(pba, 8) == 0b10
    b.m.mmio_write(MSIX_BASE + 16 + MSIX_ENTRY["vector_control"], 4, 0)
    assert sent[-1] == (MSI.x86_doorbell, 0x41) and len(sent) == 2
    assert b.m.mmio_read(pba, 8) == 0
    # function mask
    b.cfg_w(ctl, 2, MSIX.ENABLE | MSIX.FUNCTION_MASK)
    b.proxy.config_interrupt()
    assert len(sent) == 2 and b.m.mmio_read(pba, 4) == 0b01
    b.cfg_w(ctl, 2, MSIX.ENABLE)
    assert sent[-1] == (MSI.x86_doorbell, 0x40) and b.m.mmio_read(pba, 4) == 0
    # the PBA is read-only, INTx stays quiet with MSI-X on
    b.m.mmio_write(pba, 4, 0xFFFFFFFF)
    assert b.m.mmio_read(pba, 4) == 0
    assert not b.proxy.fn.intx_level


def test_msix_vector_out_of_table_reads_no_vector(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-rng-pci")
    common_w(b, "config_msix_vector", 2)  # the table has 2 entries: 0 and 1
    assert common_r(b, "config_msix_vector") == NO_VECTOR
    common_w(b, "queue_msix_vector", 0x7FF)
    assert common_r(b, "queue_msix_vector") == NO_VECTOR
    nomsix = bench(tmp_path, "virtio-rng-pci,vectors=0")
    common_w(nomsix, "config_msix_vector", 0)
    assert common_r(nomsix, "config_msix_vector") == NO_VECTOR


def test_msi_needs_bus_mastering_and_the_apic_window(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-rng-pci")
    sent: list[tuple[int, int]] = []
    b.m.msi_out = lambda addr, data: sent.append((addr, data))
    _enable_msix(b, [0x40, 0x41])
    common_w(b, "config_msix_vector", 0)
    b.cfg_w(PCI_HEADER["command"], 2, PCI_CMD.MEMORY | PCI_CMD.IO)
    b.proxy.config_interrupt()
    assert sent == [] and any("bus mastering" in n for n in b.proxy.fn.notes)
    b.cfg_w(PCI_HEADER["command"], 2, PCI_CMD.MEMORY | PCI_CMD.IO | PCI_CMD.MASTER)
    b.m.mmio_write(MSIX_BASE + MSIX_ENTRY["msg_addr_lo"], 4, 0x1000)  # into RAM
    b.proxy.config_interrupt()
    assert sent == [] and any("outside the APIC window" in n for n in b.m.notes)


# --------------------------------------------------------------------------- legacy interface


def test_legacy_pfn_and_config_offset(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-blk-pci,queue-size=64")
    d = b.proxy.device
    q = d.queues[0]
    b.m.pio_write(IO_BASE + LEGACY_HDR["queue_pfn"], 4, 0x123)
    assert q.ready and q.desc == 0x123000
    assert q.driver == 0x123000 + 16 * 64
    assert q.device == 0x123000 + legacy_used_ring_offset(64, PCI.legacy_queue_align)
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["queue_pfn"], 4) == 0x123
    # device config at 20 without MSI-X, 24 with it
    capacity = d.model.capacity  # type: ignore[attr-defined]
    assert b.m.pio_read(IO_BASE + LEGACY_CONFIG_OFFSET, 4) == capacity
    _enable_msix(b, [0x40, 0x41])
    assert b.m.pio_read(IO_BASE + LEGACY_CONFIG_OFFSET_MSIX, 4) == capacity
    b.m.pio_write(IO_BASE + LEGACY_HDR["config_msix_vector"], 2, 1)
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["config_msix_vector"], 2) == 1
    # PFN 0 resets the whole device (QEMU)
    b.m.pio_write(IO_BASE + LEGACY_HDR["status"], 1, STATUS.ACKNOWLEDGE)
    b.m.pio_write(IO_BASE + LEGACY_HDR["queue_pfn"], 4, 0)
    assert d.status == 0 and not q.ready
    assert b.m.pio_read(IO_BASE + LEGACY_HDR["config_msix_vector"], 2) == NO_VECTOR


def test_legacy_bus_master_quirk_and_bad_feature(tmp_path: Path) -> None:
    b = bench(tmp_path, "virtio-rng-pci")
    b.cfg_w(PCI_HEADER["command"], 2, PCI_CMD.IO)
    b.m.pio_write(IO_BASE + LEGACY_HDR["status"], 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    assert b.cfg_r(PCI_HEADER["command"], 2) & PCI_CMD.MASTER
    assert b.m.pio_read(IO_BASE, 4) & bit(F.BAD_FEATURE)
    b.m.pio_write(IO_BASE + LEGACY_HDR["guest_features"], 4, bit(F.BAD_FEATURE) | bit(F.EVENT_IDX))
    assert b.proxy.device.driver_features == 0


def test_clearing_bus_master_stops_dma_and_drops_driver_ok(tmp_path: Path) -> None:
    from virtio_sim.dma import DmaError

    b = bench(tmp_path, "virtio-rng-pci")
    d = b.proxy.device
    common_w(b, "device_status", STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK)
    space = d.space_for(0)
    space.read(0x1000, 4)
    b.cfg_w(PCI_HEADER["command"], 2, PCI_CMD.MEMORY)
    assert not d.status & STATUS.DRIVER_OK
    with pytest.raises(DmaError, match="bus mastering"):
        space.read(0x1000, 4)


def test_neither_interface_is_refused() -> None:
    from virtio_sim.host.devices.base import PropertyError
    from virtio_sim.host.qdev import build_device, parse_device_option

    with pytest.raises(PropertyError, match="neither modern nor legacy"):
        build_device(parse_device_option("virtio-rng-pci,disable-legacy=on,disable-modern=on"))
    with pytest.raises(PropertyError, match="disable-legacy"):
        build_device(parse_device_option("virtio-rng-pci,disable-legacy=maybe"))
