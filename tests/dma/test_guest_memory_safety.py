"""Private (encrypted) guest memory and DMA canaries: what a misbehaving device leaves behind."""

from __future__ import annotations

import trio

from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.guest.profile import guest_policy
from virtio_sim.host import qdev
from virtio_sim.host.devices.base import DeviceQueue
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import load_driver_profile


def test_device_sees_ciphertext_in_private_pages() -> None:
    mem = GuestMemory.create(1 << 20)
    try:
        space = IdentityAddressSpace(mem)
        mem.write(0x3000, b"secret data")
        mem.mark_private(0x3000, 4096)
        seen = space.read(0x3000, 11)
        assert seen != b"secret data"
        assert space.read(0x3000, 11) == seen  # deterministic ciphertext
        space.write(0x3000, b"from device")
        assert mem.read(0x3000, 11) != b"from device"  # lands scrambled for the guest
        mem.mark_private(0x3000, 4096, private=False)
        space.write(0x3000, b"shared page")
        assert mem.read(0x3000, 11) == b"shared page"
    finally:
        mem.close()


def _sev(driver: str, device: str, transport: str = "mmio-v2") -> Outcome:
    cfg = RunConfig(
        device=device, workload="blk-rw", transport=transport, guest=guest_policy(load_driver_profile(driver))
    )
    return trio.run(run_embedded, cfg).outcome


def test_restricted_guest_outcomes() -> None:
    # Without ACCESS_PLATFORM an old SEV guest hands the device encrypted rings: the device
    # gives up (NEEDS_RESET), which Linux's virtio-blk ignores, so the guest hangs.
    assert _sev("linux-5.4-sev", "virtio-blk-device") is Outcome.HANG
    # With it, the DMA API bounces through the shared window and everything works (on a
    # blk without DISCARD: with it, 5.4's discard overflow is CORRUPTION, test_blk_discard).
    assert _sev("linux-5.4-sev", "virtio-blk-device,iommu_platform=on,discard=off") is Outcome.OK
    assert _sev("linux-5.4-sev", "virtio-blk-device,iommu_platform=on") is Outcome.CORRUPTION
    # A 5.10+ guest refuses such a device cleanly instead.
    assert _sev("linux-6.1-sev", "virtio-blk-device") is Outcome.FAILED_CLEAN
    assert _sev("linux-6.1-sev", "virtio-blk-device", "mmio-v1") is Outcome.FAILED_CLEAN


class _ScribblingRng(RngDevice):
    """A hostile entropy device: fills the buffer, then writes 4 bytes past its end."""

    def process(self, queue: DeviceQueue) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            addr, n = chain.writable[0]
            queue.space.write(addr, b"\x11" * n)
            queue.space.write(addr + n, b"\x66" * 4)
            queue.push(chain.head, n)
            done += 1
        return done


def test_device_write_outside_buffer_is_corruption(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _factory, props = qdev.DEVICE_TYPES["virtio-rng-device"]
    monkeypatch.setitem(qdev.DEVICE_TYPES, "virtio-rng-device", (lambda p: _ScribblingRng(), props))
    r = trio.run(run_embedded, RunConfig(device="virtio-rng-device", workload="rng", seed=None))
    assert r.outcome is Outcome.CORRUPTION
    assert "outside a" in r.detail and "canary" in r.detail
