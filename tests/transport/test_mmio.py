"""virtio-mmio register semantics, and hostile register traffic that must not hurt the host."""

from __future__ import annotations

import pytest

from tests.support.mmio_bench import make_bench
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.layouts import MMIO_CONFIG_OFFSET
from virtio_sim.layouts import MMIO_OFFSETS as R
from virtio_sim.spec import DEVICE_ID, MMIO, STATUS, F


def test_identity_registers_v2() -> None:
    b = make_bench(RngDevice(seed=1))
    assert b.r("MagicValue") == MMIO.magic
    assert b.r("Version") == MMIO.version_modern
    assert b.r("DeviceID") == DEVICE_ID.rng
    assert b.r("VendorID").to_bytes(4, "little") == b"QEMU"


def test_feature_windows_and_version_1() -> None:
    b = make_bench(RngDevice(seed=1))
    b.w("DeviceFeaturesSel", 1)
    assert b.r("DeviceFeatures") & 1 << (F.VERSION_1 - 32)
    b.w("DeviceFeaturesSel", 2)
    assert b.r("DeviceFeatures") == 0


def test_legacy_v1_has_only_feature_word_0() -> None:
    b = make_bench(RngDevice(seed=1), legacy=True)
    assert b.r("Version") == MMIO.version_legacy
    b.w("DeviceFeaturesSel", 1)
    assert b.r("DeviceFeatures") == 0
    # v2-only registers are undefined in v1: reads 0, noted
    assert b.r("ConfigGeneration") == 0
    assert any("undefined register" in n for n in b.device.notes)


def test_features_ok_refused_for_unoffered_bits() -> None:
    b = make_bench(RngDevice(seed=1))
    b.negotiate(features=1 << F.VERSION_1 | 1 << 5)  # bit 5 is not offered by rng
    assert not b.r("Status") & STATUS.FEATURES_OK
    assert any("FEATURES_OK refused" in n for n in b.device.notes)


@pytest.mark.parametrize("size", [1, 2, 8])
def test_wrong_width_register_access_is_ignored(size: int) -> None:
    b = make_bench(RngDevice(seed=1))
    assert b.transport.read(R["MagicValue"], size) == 0
    b.transport.write(R["Status"], size, STATUS.ACKNOWLEDGE)
    assert b.r("Status") == 0
    assert any("wrong size access" in n for n in b.device.notes)


@pytest.mark.parametrize("offset", [0x018, 0x0C8, 0x0F8, 0x002, 0x051])
def test_undefined_or_unaligned_offsets_are_harmless(offset: int) -> None:
    b = make_bench(RngDevice(seed=1))
    assert b.transport.read(offset, 4) == 0
    b.transport.write(offset, 4, 0xFFFFFFFF)
    assert b.r("Status") == 0 and b.r("MagicValue") == MMIO.magic


def test_write_to_read_only_and_read_of_write_only() -> None:
    b = make_bench(RngDevice(seed=1))
    b.w("MagicValue", 0)
    assert b.r("MagicValue") == MMIO.magic
    assert b.r("QueueNotify") == 0
    assert any("read-only" in n for n in b.device.notes)
    assert any("write-only" in n for n in b.device.notes)


def test_shm_registers_read_absent() -> None:
    b = make_bench(RngDevice(seed=1))
    b.w("SHMSel", 0)
    assert b.r("SHMLenLow") == b.r("SHMLenHigh") == 0xFFFFFFFF


def test_queue_size_max_and_absent_queue() -> None:
    b = make_bench(RngDevice(seed=1))
    b.w("QueueSel", 0)
    assert b.r("QueueSizeMax") > 0
    b.w("QueueSel", 7)
    assert b.r("QueueSizeMax") == 0
    b.w("QueueReady", 1)  # no such queue: nothing happens
    assert b.r("QueueReady") == 0


def test_invalid_queue_size_is_ignored() -> None:
    b = make_bench(RngDevice(seed=1))
    b.w("QueueSel", 0)
    b.w("QueueSize", 3)
    q = b.device.queues[0]
    assert q.size == q.initial_size == RngDevice.queue_max_size  # QEMU's virtio-rng: 8
    b.w("QueueSize", 1 << 20)  # beyond QueueNumMax (QEMU's VIRTQUEUE_MAX_SIZE, 1024)
    assert q.size == q.initial_size
    b.w("QueueSize", q.max_size)  # QEMU's virtio-mmio takes any size up to QueueNumMax
    assert q.size == q.max_size == 1024


def test_config_reads_past_end_and_unaligned() -> None:
    b = make_bench(RngDevice(seed=1))  # rng has an empty config space
    assert b.transport.read(MMIO_CONFIG_OFFSET, 4) == 0xFFFFFFFF  # all ones, as QEMU reads
    assert b.transport.read(MMIO_CONFIG_OFFSET + 1, 2) == 0  # unaligned on v2: refused
    assert any("config read" in n for n in b.device.notes)


def test_interrupt_ack_lowers_line() -> None:
    b = make_bench(RngDevice(seed=1))
    b.negotiate()
    q = b.setup_queue(0, 8)
    b.driver_ok()
    buf = b.dma.alloc(64)
    q.add([], [(buf.gpa, 64)], "t")
    b.w("QueueNotify", 0)
    assert b.r("InterruptStatus") & 1
    assert b.irq_levels[-1] is True
    b.w("InterruptACK", 1)
    assert b.r("InterruptStatus") == 0
    assert b.irq_levels[-1] is False
    assert q.get_used() == ("t", 64)


def test_reset_clears_queues_and_status() -> None:
    b = make_bench(RngDevice(seed=1))
    b.negotiate()
    b.setup_queue(0, 8)
    b.driver_ok()
    b.w("Status", 0)
    assert b.r("Status") == 0
    b.w("QueueSel", 0)
    assert b.r("QueueReady") == 0


def test_notify_of_nonexistent_queue_is_noted() -> None:
    b = make_bench(RngDevice(seed=1))
    b.negotiate()
    b.driver_ok()
    b.w("QueueNotify", 0xFFFF)
    assert any("nonexistent queue" in n for n in b.device.notes)
