"""Legacy-interface byte order: a big-endian guest (ppc64, s390) drives a transitional
device through its legacy interface with guest-native rings, config and request headers;
when the host is told the wrong order the run ends as CORRUPTION or DEVICE_ERROR."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pci_bench import HostBench, make_host
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.layouts import LEGACY_CONFIG_OFFSET, LEGACY_HDR, field_offsets, virtio_blk_config
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.spec import QEMU_PCI

MODELS = (("virtio-rng-device", "rng"), ("virtio-blk-device", "blk-rw"))


@pytest.mark.parametrize(("device", "workload"), MODELS)
@pytest.mark.parametrize("transport", ["pci-legacy", "mmio-v1"])
async def test_big_endian_legacy_guest_works(transport: str, device: str, workload: str) -> None:
    r = await run_embedded(
        RunConfig(device, workload, transport=transport, guest=GuestPolicy(guest_order="big"))
    )
    assert r.outcome is Outcome.OK, r.detail
    assert "VIRTIO_F_VERSION_1" not in r.negotiated


@pytest.mark.parametrize(("device", "workload"), MODELS)
@pytest.mark.parametrize("transport", ["pci-modern", "pci-transitional", "mmio-v2"])
async def test_big_endian_modern_guest_is_little_endian_everywhere(
    transport: str, device: str, workload: str
) -> None:
    r = await run_embedded(
        RunConfig(device, workload, transport=transport, guest=GuestPolicy(guest_order="big"))
    )
    assert r.outcome is Outcome.OK, r.detail


@pytest.mark.parametrize(("device", "workload"), MODELS)
@pytest.mark.parametrize("transport", ["pci-legacy", "mmio-v1"])
@pytest.mark.parametrize(("guest", "host"), [("big", "little"), ("little", "big")])
async def test_mismatched_byte_order_is_detected(
    transport: str, device: str, workload: str, guest: str, host: str
) -> None:
    r = await run_embedded(
        RunConfig(
            device,
            workload,
            transport=transport,
            guest=GuestPolicy(guest_order=guest),  # type: ignore[arg-type]
            host_guest_order=host,  # type: ignore[arg-type]
            timeout=5,
        )
    )
    # never OK: the guest sees garbage (CORRUPTION) or the device breaks on byte-swapped
    # addresses. On these legacy interfaces QEMU's virtio_error() tells the driver nothing
    # (no DEVICE_NEEDS_RESET without VERSION_1), so the driver waits: HANG, with the
    # device's violation as the evidence of the mismatch
    assert r.outcome in (Outcome.CORRUPTION, Outcome.DEVICE_ERROR, Outcome.HANG), (r.outcome, r.detail)
    if r.outcome is Outcome.HANG:
        assert r.violations and "the run stalled" in r.detail, r.detail


@pytest.mark.parametrize("order", ["little", "big"])
def test_legacy_device_config_is_guest_native(tmp_path: Path, order: str) -> None:
    setup = make_host(tmp_path, "virtio-blk-pci,vectors=0", "pci-transitional", guest_order=order)
    try:
        b = HostBench(setup)
        b.place({0: 0xC000, 4: 0xC0100000})
        capacity = setup.devices[0].model.capacity  # type: ignore[attr-defined]
        off = field_offsets(virtio_blk_config())["capacity"]
        raw = bytes(b.m.pio_read(0xC000 + LEGACY_CONFIG_OFFSET + off + i, 1) for i in range(8))
        assert raw == capacity.to_bytes(8, order)  # type: ignore[arg-type]
        # the modern interface of the same device is little-endian
        dev_cfg = 0xC0100000 + QEMU_PCI.device_offset + off
        modern = bytes(b.m.mmio_read(dev_cfg + i, 1) for i in range(8))
        assert modern == capacity.to_bytes(8, "little")
        # header registers are little-endian port registers whatever the guest
        assert b.m.pio_read(0xC000 + LEGACY_HDR["queue_num"], 2) == 256
    finally:
        setup.close()
