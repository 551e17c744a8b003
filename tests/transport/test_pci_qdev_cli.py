"""virtio-*-pci device options (QEMU names and rules) and the pci transports on the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.layouts import (
    COMMON_CFG,
    COMMON_CFG_SIZE,
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    LEGACY_HDR,
    MSIX_CAP,
    MSIX_ENTRY_SIZE,
    PCI_HEADER,
    PCI_HEADER_SIZE,
    VIRTIO_CAP,
    VIRTIO_CFG_CAP,
    VirtioPciCap,
)


def test_pci_layouts_match_the_spec_tables() -> None:
    assert PCI_HEADER_SIZE == 0x40
    assert (PCI_HEADER["command"], PCI_HEADER["bar0"], PCI_HEADER["subsystem_id"]) == (
        4,
        0x10,
        0x2E,
    )
    assert (PCI_HEADER["capabilities_ptr"], PCI_HEADER["interrupt_line"]) == (0x34, 0x3C)
    assert VirtioPciCap.sizeof() == 16
    assert (VIRTIO_CAP["cfg_type"], VIRTIO_CAP["offset"], VIRTIO_CAP["notify_off_multiplier"]) == (
        3,
        8,
        16,
    )
    assert VIRTIO_CFG_CAP["pci_cfg_data"] == 16
    expected = {
        "device_feature_select": 0x00, "device_feature": 0x04, "driver_feature_select": 0x08,
        "driver_feature": 0x0C, "config_msix_vector": 0x10, "num_queues": 0x12,
        "device_status": 0x14, "config_generation": 0x15, "queue_select": 0x16,
        "queue_size": 0x18, "queue_msix_vector": 0x1A, "queue_enable": 0x1C,
        "queue_notify_off": 0x1E, "queue_desc": 0x20, "queue_driver": 0x28,
        "queue_device": 0x30, "queue_notify_data": 0x38, "queue_reset": 0x3A,
        "admin_queue_index": 0x3C, "admin_queue_num": 0x3E,
    }  # fmt: skip
    assert expected == COMMON_CFG and COMMON_CFG_SIZE == 64
    assert LEGACY_HDR == {
        "host_features": 0, "guest_features": 4, "queue_pfn": 8, "queue_num": 12,
        "queue_sel": 14, "queue_notify": 16, "status": 18, "isr": 19,
        "config_msix_vector": 20, "queue_msix_vector": 22,
    }  # fmt: skip
    assert (LEGACY_CONFIG_OFFSET, LEGACY_CONFIG_OFFSET_MSIX) == (20, 24)
    assert (MSIX_CAP["message_control"], MSIX_CAP["table"], MSIX_CAP["pba"], MSIX_ENTRY_SIZE) == (
        2,
        4,
        8,
        16,
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("virtio-rng-pci,disable-legacy=on,disable-modern=on", "neither modern nor legacy"),
        ("virtio-rng-pci,disable-modern=maybe", "disable-modern"),
        ("virtio-rng-pci,vectors=lots", "vectors"),
        ("virtio-rng-pci,vectors=-1", "vectors"),
        ("virtio-rng-pci,addr=40.0", "addr"),
        ("virtio-rng-pci,addr=zz", "addr"),
        ("virtio-rng-pci,nonsense=1", "virtio-rng-pci.nonsense"),
        ("virtio-rng-device,vectors=2", "virtio-rng-device.vectors"),  # not a PCI device
        ("virtio-rng-device,x-queue-size=12", "x-queue-size"),
    ],
)
def test_bad_pci_options_are_refused(option: str, message: str) -> None:
    with pytest.raises(PropertyError, match=message):
        build_device(parse_device_option(option))


def test_pci_option_resolution() -> None:
    b = build_device(parse_device_option("virtio-blk-pci,drive=/dev/null,addr=04.0,vectors=5"))
    assert b.pci is not None
    assert (b.pci.modern, b.pci.legacy) == (True, True)  # auto keeps legacy on the root bus
    assert (b.pci.slot, b.pci.function, b.pci.vectors) == (4, 0, 5)
    b = build_device(parse_device_option("virtio-rng-pci,disable-legacy=on"))
    assert b.pci is not None and (b.pci.modern, b.pci.legacy) == (True, False)
    b = build_device(parse_device_option("virtio-rng-pci,disable-modern=on"))
    assert b.pci is not None and (b.pci.modern, b.pci.legacy) == (False, True)


def test_addr_places_the_function_and_too_many_vectors_drop_msix(tmp_path: Path) -> None:
    setup = build_host(
        HostConfig(
            devices=["virtio-rng-pci,addr=06.0,vectors=4096"],
            transport="pci-transitional",
            scratch_dir=str(tmp_path),
            ram_size=4 << 20,
        )
    )
    try:
        proxy = setup.machine.pci_devices[0]
        assert proxy.fn.bdf == (0, 6, 0)
        assert proxy.fn.msix is None
        assert any("unable to init msix vectors" in n for n in proxy.device.notes)
    finally:
        setup.close()
    with pytest.raises(PropertyError, match="already in use"):
        build_host(
            HostConfig(
                devices=["virtio-rng-pci,addr=06.0", "virtio-rng-pci,addr=06.0"],
                transport="pci-modern",
                scratch_dir=str(tmp_path),
                ram_size=4 << 20,
            )
        )


@pytest.mark.parametrize("transport", ["pci-modern", "pci-transitional", "pci-legacy"])
def test_cli_runs_pci_transports(transport: str, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))  # the command line needs drive=, as QEMU does
    p = subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "run",
         "--device", f"virtio-blk-device,drive={disk}", "--workload", "blk-rw", "--json",
         "--transport", transport],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["outcome"] == "OK" and r["transport"] == transport
    assert ("VIRTIO_F_VERSION_1" in r["negotiated"]) is (transport != "pci-legacy")
