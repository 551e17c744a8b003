"""The device trees we hand the guest, read by the reference tool: Debian's ``dtc``.

Our blob is built by host/fdt.py (a few dozen lines of FDT tokens); dtc is the tool QEMU's
own trees are checked with. It must read ours without a warning (it reads QEMU 7.2's
``-M virt,dumpdtb=`` output without one), and compiling its source back must give a
tree our guest parser reads identically.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from virtio_sim.acpi_layouts import FDT
from virtio_sim.guest.fdt import parse_fdt
from virtio_sim.host.build import HostConfig, build_host

DTC_INSTALL_HINT = "apt-get install device-tree-compiler"

pytestmark = pytest.mark.skipif(shutil.which("dtc") is None, reason=f"dtc not found: {DTC_INSTALL_HINT}")


def _installed_fdt(tmp_path: Path, device: str, transport: str) -> bytes:
    """The device tree build_host leaves in guest RAM for ``-M virt,acpi=off``."""
    setup = build_host(
        HostConfig([device], transport, 8 << 20, machine="virt,acpi=off", scratch_dir=str(tmp_path))
    )
    try:
        (param,) = [p for p in setup.machine.boot_params if p.startswith(FDT["cmdline_param"] + "=")]
        address = int(param.partition("=")[2], 0)
        header = setup.memory.read(address, 8)
        return setup.memory.read(address, int.from_bytes(header[4:8], "big"))
    finally:
        setup.close()


def _dtc(args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["dtc", *args], input=data, capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("device", "transport"),
    [("virtio-blk-device", "mmio-v2"), ("virtio-rng-device", "mmio-v1"), ("virtio-blk-pci", "pci-modern")],
)
def test_dtc_reads_our_device_tree_without_warnings(tmp_path: Path, device: str, transport: str) -> None:
    blob = _installed_fdt(tmp_path, device, transport)
    decompiled = _dtc(["-I", "dtb", "-O", "dts"], blob)
    assert decompiled.returncode == 0, decompiled.stderr.decode()
    assert decompiled.stderr.decode() == ""  # no "Warning (...)" of dtc's checks
    source = decompiled.stdout.decode()
    assert source.count('compatible = "virtio,mmio";') == 32  # every slot, as QEMU's virt
    assert "interrupt-parent = <0x8002>;" in source and "interrupt-controller;" in source
    assert ('compatible = "pci-host-ecam-generic";' in source) == transport.startswith("pci-")
    # dtc's own binary of that source reads the same through our guest's parser
    recompiled = _dtc(["-I", "dts", "-O", "dtb"], decompiled.stdout)
    assert recompiled.returncode == 0, recompiled.stderr.decode()
    assert parse_fdt(recompiled.stdout) == parse_fdt(blob)
