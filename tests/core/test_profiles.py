"""Profiles load, and every kind of mistake in a profile is reported with file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtio_sim.profiles import (
    ProfileError,
    list_profiles,
    load_device_profile,
    load_driver_profile,
)
from virtio_sim.spec import F

REQUIRED_DRIVERS = {
    "linux-3.18", "linux-3.18-ppc64be", "linux-4.0", "linux-4.6-xen", "linux-4.8",
    "linux-5.0", "linux-5.4-sev", "linux-6.1", "linux-6.1-sev",
}  # fmt: skip
REQUIRED_DEVICES = {
    "qemu-2.3", "qemu-2.6", "qemu-2.7", "qemu-2.9", "qemu-4.2", "qemu-7.2",
    "translate-without-bit", "bit-without-translate",
}  # fmt: skip


def test_every_required_profile_exists_and_loads() -> None:
    assert set(list_profiles("drivers")) >= REQUIRED_DRIVERS
    assert set(list_profiles("devices")) >= REQUIRED_DEVICES
    for name in list_profiles("drivers"):
        load_driver_profile(name)
    for name in list_profiles("devices"):
        load_device_profile(name)


def test_profile_facts() -> None:
    old = load_driver_profile("linux-4.0")
    assert not old.transport_features >> F.ACCESS_PLATFORM & 1
    assert load_driver_profile("linux-4.8").transport_features >> F.ACCESS_PLATFORM & 1
    assert load_driver_profile("linux-3.18").mmio_versions == (1,)
    assert not load_driver_profile("linux-3.18").features_ok
    assert load_driver_profile("linux-3.18-ppc64be").endianness == "big"
    assert load_driver_profile("linux-4.6-xen").dma_api == "xen"
    sev = load_driver_profile("linux-6.1-sev")
    assert sev.restricted_memory and sev.refuse_unrestricted
    assert not load_driver_profile("linux-5.4-sev").refuse_unrestricted
    assert "iommu_platform" not in load_device_profile("qemu-2.7").properties
    assert "iommu_platform" in load_device_profile("qemu-2.9").properties
    assert not load_device_profile("qemu-2.9").mmio_v2
    assert load_device_profile("qemu-7.2").defaults["queue_reset"] is True
    assert load_device_profile("translate-without-bit").access_platform_offer == "never"
    assert load_device_profile("bit-without-translate").dma == "bypass"


GOOD_DRIVER = """
description = "x"
transport_features = ["VIRTIO_F_VERSION_1"]
transports = ["mmio-v2"]
mmio_versions = [2]
pci_match = "any"
acpi_hids = []
dt_compatibles = []
dma_api = "never"
features_ok = true
endianness = "little"
[device_features]
blk = ["VIRTIO_BLK_F_FLUSH"]
"""


@pytest.mark.parametrize(
    "edit, message",
    [
        (("features_ok = true", "features_ok = true\ncolour = 'red'"), "unknown key 'colour'"),
        (('["VIRTIO_F_VERSION_1"]', '["VIRTIO_F_VERSION_9"]'), "unknown feature 'VIRTIO_F_VERSION_9'"),
        (('["VIRTIO_BLK_F_FLUSH"]', '["VIRTIO_F_VERSION_1"]'), "belongs to transport, not blk"),
        (('["mmio-v2"]', '["isa"]'), "unknown transport 'isa'"),
        (('dma_api = "never"', 'dma_api = "sometimes"'), "key 'dma_api' must be one of"),
        (('endianness = "little"', ""), "missing key(s) endianness"),
        (("features_ok = true", "features_ok = 1"), "key 'features_ok' must be a bool"),
        (("[device_features]", "[device_features"), "invalid TOML"),
    ],
)
def test_bad_driver_profiles(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    (tmp_path / "bad.toml").write_text(GOOD_DRIVER.replace(*edit))
    with pytest.raises(ProfileError) as e:
        load_driver_profile("bad", tmp_path)
    assert message in str(e.value)
    assert "bad.toml" in str(e.value)


def test_good_driver_profile_from_dir(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text(GOOD_DRIVER)
    assert load_driver_profile("ok", tmp_path).mmio_versions == (2,)


def test_bad_device_profiles(tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_text('description = "x"\nproperties = ["warp_drive"]\n')
    with pytest.raises(ProfileError, match="unknown property 'warp_drive'"):
        load_device_profile("d", tmp_path)
    (tmp_path / "d.toml").write_text('description = "x"\nproperties = []\n[defaults]\npacked = true\n')
    with pytest.raises(ProfileError, match=r"defaults.packed"):
        load_device_profile("d", tmp_path)
    with pytest.raises(ProfileError, match="no such profile"):
        load_device_profile("nope", tmp_path)
