"""virtio-mmio version 1 (legacy) per QEMU: GuestPageSize, QueueAlign, QueuePFN, only
feature word 0, and the force-legacy property with QEMU's default of true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mmio_bench import make_bench
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.layouts import MMIO_OFFSETS as R
from virtio_sim.layouts import desc_table_size, legacy_used_ring_offset
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.spec import MMIO, STATUS, F, bit


def test_pfn_uses_guest_page_size_and_queue_align() -> None:
    b = make_bench(RngDevice(seed=1), legacy=True)
    q = b.device.queues[0]
    b.w("GuestPageSize", 0x2000)
    b.w("QueueSel", 0)
    b.w("QueueSize", 64)
    b.w("QueueAlign", 0x4000)
    b.w("QueuePFN", 0x10)
    assert q.ready
    assert q.desc == 0x10 * 0x2000
    assert q.driver == q.desc + desc_table_size(64)
    assert q.device == q.desc + legacy_used_ring_offset(64, 0x4000)
    assert b.r("QueuePFN") == 0x10
    # PFN 0 takes the queue down
    b.w("QueuePFN", 0)
    assert not q.ready and b.r("QueuePFN") == 0


def test_bad_page_size_and_align_are_refused() -> None:
    b = make_bench(RngDevice(seed=1), legacy=True)
    b.w("QueueSel", 0)
    b.w("QueueAlign", 0)  # CVE-2017-17381: never divide by it
    b.w("QueueAlign", 3000)
    b.w("QueuePFN", 0x10)  # no GuestPageSize yet
    assert not b.device.queues[0].ready
    b.w("GuestPageSize", 3000)
    notes = " ".join(b.device.notes)
    assert "QueueAlign 0" in notes and "QueueAlign 3000" in notes
    assert "before GuestPageSize" in notes and "GuestPageSize 3000" in notes


def test_only_feature_word_0() -> None:
    b = make_bench(RngDevice(seed=1), legacy=True)
    assert not b.device.device_features & bit(F.VERSION_1)
    b.w("DeviceFeaturesSel", 1)
    assert b.r("DeviceFeatures") == 0
    b.w("DeviceFeaturesSel", 0)
    assert b.r("DeviceFeatures") & bit(F.EVENT_IDX)
    b.w("DriverFeaturesSel", 1)
    b.w("DriverFeatures", 0xFFFFFFFF)
    assert b.device.driver_features == 0
    assert any("DriverFeaturesSel > 0" in n for n in b.device.notes)
    b.w("DriverFeaturesSel", 0)
    b.w("DriverFeatures", bit(F.EVENT_IDX))
    assert b.device.driver_features == bit(F.EVENT_IDX)


def test_v2_only_registers_are_undefined_in_v1() -> None:
    b = make_bench(RngDevice(seed=1), legacy=True)
    b.w("QueueReady", 1)
    b.w("QueueDescLow", 0x1000)
    assert not b.device.queues[0].ready and b.device.queues[0].desc == 0
    assert b.transport.read(R["ConfigGeneration"], 4) == 0
    b.w("Status", STATUS.ACKNOWLEDGE)
    assert b.r("Version") == MMIO.version_legacy


@pytest.mark.parametrize(
    ("globals_", "version"),
    [({}, MMIO.version_legacy), ({"virtio-mmio.force-legacy": "false"}, MMIO.version_modern)],
)
def test_force_legacy_property_defaults_to_true(
    tmp_path: Path, globals_: dict[str, str], version: int
) -> None:
    setup = build_host(
        HostConfig(
            devices=["virtio-rng-device"],
            transport="mmio",
            scratch_dir=str(tmp_path),
            ram_size=4 << 20,
            globals=globals_,
        )
    )
    try:
        assert setup.machine.slots[0].transport.version == version
    finally:
        setup.close()


def test_unknown_global_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PropertyError):
        build_host(
            HostConfig(devices=["virtio-rng-device"], transport="mmio", globals={"virtio-mmio.nope": "1"})
        )


async def test_qemu_default_mmio_is_legacy_end_to_end() -> None:
    r = await run_embedded(RunConfig("virtio-blk-device", "blk-rw", transport="mmio"))
    assert r.outcome is Outcome.OK and r.transport == "mmio-v1"
    r = await run_embedded(
        RunConfig(
            "virtio-blk-device",
            "blk-rw",
            transport="mmio",
            globals={"virtio-mmio.force-legacy": "off"},
        )
    )
    assert r.outcome is Outcome.OK and r.transport == "mmio-v2"
