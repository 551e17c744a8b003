"""The linux-6.1 profile's feature tables follow the kernel's own, per transport.

Measured against the real Linux 6.1 (guest sysfs features on our devices over
vhost-user): it acks VIRTIO_F_RING_RESET on modern virtio-pci only (virtio_pci_modern.c
vp_transport_features, 6.0+), never on virtio-mmio, whose finalize_features runs only
vring_transport_features; and its virtio_blk features[] table carries GEOMETRY,
TOPOLOGY, CONFIG_WCE, DISCARD, WRITE_ZEROES, which QEMU 7.2's virtio-blk offers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio

from virtio_sim.guest.profile import guest_policy
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import ProfileError, load_driver_profile
from virtio_sim.spec import BLK_F, F

LINUX_61_BLK_TABLE = {  # v6.1 drivers/block/virtio_blk.c features[]
    "SEG_MAX", "SIZE_MAX", "GEOMETRY", "RO", "BLK_SIZE", "FLUSH", "TOPOLOGY", "CONFIG_WCE",
    "MQ", "DISCARD", "WRITE_ZEROES", "SECURE_ERASE",
}  # fmt: skip


def _acked(transport: str, device: str) -> int:
    prof = load_driver_profile("linux-6.1")
    cfg = RunConfig(device=device, workload="rng", transport=transport, guest=guest_policy(prof))
    result = trio.run(run_embedded, cfg)
    assert result.outcome is Outcome.OK, result.detail
    return result.driver_features


@pytest.mark.parametrize(
    ("transport", "ring_reset"),
    [("pci-modern", True), ("pci-transitional", True), ("mmio-v2", False)],
)
def test_ring_reset_is_acked_on_modern_pci_only(transport: str, ring_reset: bool) -> None:
    acked = _acked(transport, "virtio-rng-device,queue_reset=on")
    assert bool(acked >> F.RING_RESET & 1) is ring_reset
    assert acked >> F.VERSION_1 & 1 and acked >> F.EVENT_IDX & 1  # the rest stays


def test_profile_blk_table_is_the_kernels() -> None:
    prof = load_driver_profile("linux-6.1")
    expected = 0
    for name in LINUX_61_BLK_TABLE:
        expected |= 1 << getattr(BLK_F, name)
    assert prof.device_features["blk"] == expected
    assert prof.features_on("mmio-v2") == prof.transport_features & ~(1 << F.RING_RESET)
    assert prof.features_on("pci-modern") == prof.transport_features


def test_transport_only_names_are_checked(tmp_path: Path) -> None:
    src = Path(load_driver_profile.__code__.co_filename).parents[1] / "specs/profiles/drivers/linux-6.1.toml"
    text = src.read_text().replace('["pci-modern", "pci-transitional"]', '["pci-modren"]')
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ProfileError, match="transport_only"):
        load_driver_profile("bad", tmp_path)


def test_guest_policy_carries_the_transport_rule() -> None:
    policy = guest_policy(load_driver_profile("linux-6.1"))
    assert policy.driver.transport_only == {1 << F.RING_RESET: ("pci-modern", "pci-transitional")}
    assert replace(policy).driver.transport_only  # copied with the policy
