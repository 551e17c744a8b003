"""The device tree of arm virt (acpi=off): our FDT read by the guest's parser, hostile
trees, whole runs that find their devices through it.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.machine_runs import bound_probes, run_machine
from virtio_sim.guest.fdt import FdtError, FdtNode, parse_fdt
from virtio_sim.guest.firmware import discover
from virtio_sim.guest.profile import guest_policy
from virtio_sim.host.acpi import AcpiPlan, MmioDeviceEntry, build_tables
from virtio_sim.host.fdt import virt_fdt
from virtio_sim.host.machine_types import MACHINE_FACTS
from virtio_sim.memory import GuestMemory
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import load_driver_profile

# --------------------------------------------------------------------------- device tree


def test_virt_without_acpi_boots_from_the_device_tree() -> None:
    r = run_machine("virt,acpi=off", "virtio-blk-device", "blk-rw")
    assert r.outcome is Outcome.OK, r.detail
    (bound,) = bound_probes(r)
    assert (
        bound["where"] == "virtio-mmio@0xa003e00"
        and bound["source"] == "fdt:/virtio_mmio@a003e00 virtio,mmio"
    )
    no_of = guest_policy(load_driver_profile("linux-6.1"))
    no_of = replace(no_of, dt_compatibles=())
    assert run_machine("virt,acpi=off", "virtio-rng-device", guest=no_of).outcome is Outcome.NOT_PROBED


@pytest.mark.qemu
@pytest.mark.qemu_arm
def test_our_device_tree_matches_qemus_virtio_nodes(tmp_path: Path) -> None:
    """QEMU's own virt DTB (dumpdtb) read by the guest's parser: its virtio-mmio nodes
    are exactly the ones our host writes, in the same order."""
    from virtio_sim.orchestration.qemu.tools import QEMU_ARM, require_qemu

    dtb = tmp_path / "virt.dtb"
    subprocess.run(
        [
            require_qemu(QEMU_ARM),
            "-M",
            f"virt,dumpdtb={dtb}",
            "-cpu",
            "cortex-a57",
            "-m",
            "64M",
            "-nographic",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    facts = MACHINE_FACTS["virt"]

    def virtio(nodes: list[FdtNode]) -> list[tuple[str, list[tuple[int, int]], list[int], list[str], bool]]:
        return [
            (n.path, n.reg, n.cells("interrupts"), n.compatible, "dma-coherent" in n.props)
            for n in nodes
            if "virtio,mmio" in n.compatible
        ]

    ours = virtio(
        parse_fdt(virt_fdt(facts["mmio_base"], facts["mmio_stride"], facts["mmio_slots"], facts["spi_base"]))
    )
    theirs = virtio(parse_fdt(dtb.read_bytes()))
    assert len(ours) == 32 and ours == theirs
    # the PCIe host node: QEMU's I/O and 32-bit MMIO ranges, cells and domain; its ECAM is
    # the high one (0x40_1000_0000, 256 buses) where ours is QEMU's low ECAM (highmem-ecam
    # off: 0x3f000000, 16 buses), and its 64-bit window and msi-map we do not have
    from virtio_sim.host.fdt import FdtPciHost

    pci = FdtPciHost(
        facts["ecam_base"], facts["ecam_buses"], facts["pio_base"], 0x10000, tuple(facts["pci_mem"])
    )
    mine = virt_fdt(facts["mmio_base"], facts["mmio_stride"], facts["mmio_slots"], facts["spi_base"], pci)
    (our_pci,) = [n for n in parse_fdt(mine) if "pci-host-ecam-generic" in n.compatible]
    (their_pci,) = [n for n in parse_fdt(dtb.read_bytes()) if "pci-host-ecam-generic" in n.compatible]
    assert our_pci.path == their_pci.path == "/pcie@10000000"
    for prop in ("#address-cells", "#size-cells", "linux,pci-domain"):
        assert our_pci.cells(prop) == their_pci.cells(prop)
    assert our_pci.cells("ranges") == their_pci.cells("ranges")[:14]  # I/O, then 32-bit MMIO
    assert their_pci.reg == [(0x4010000000, 256 << 20)] and our_pci.reg == [(0x3F000000, 16 << 20)]


def test_hostile_device_trees_are_refused() -> None:
    good = virt_fdt(0x0A000000, 0x200, 2, 16)
    assert len([n for n in parse_fdt(good) if "virtio,mmio" in n.compatible]) == 2
    with pytest.raises(FdtError, match="bad magic"):
        parse_fdt(b"\0" * 64)
    lying = bytearray(good)
    lying[4:8] = (len(good) + 100).to_bytes(4, "big")
    with pytest.raises(FdtError, match=r"only .* present"):
        parse_fdt(bytes(lying))
    huge = bytearray(good)
    huge[4:8] = (1 << 30).to_bytes(4, "big")
    with pytest.raises(FdtError, match="impossible total size"):
        parse_fdt(bytes(huge))
    cut = bytearray(good)
    cut[36:40] = (8).to_bytes(4, "big")  # size_dt_struct: the structure ends mid-node
    with pytest.raises(FdtError):
        parse_fdt(bytes(cut))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400))
def test_arbitrary_device_tree_bytes_only_raise_fdt_error(noise: bytes, at: int) -> None:
    blob = bytearray(virt_fdt(0x0A000000, 0x200, 2, 16))
    at = min(at, len(blob))
    blob[at : at + len(noise)] = noise
    for data in (bytes(blob), noise):
        try:
            parse_fdt(data)
        except FdtError:
            pass


def test_discover_reports_hostile_tables_in_guest_memory() -> None:
    """The guest's firmware reader on RAM with hostile tables: every failure is a reported
    error, a bad RSDP checksum in the BIOS area is skipped as Linux's scan skips it."""
    mem = GuestMemory.create(2 << 20)
    try:
        tables = build_tables(
            AcpiPlan([MmioDeviceEntry(7, 0xFEB00E00, 0x200, 23)]), 0xE0000, 0x80000, 0xE0000
        )
        for address, blob in tables.blobs.items():
            mem.write(address, blob)
        view = discover(mem, "")
        assert view.source == "acpi" and not view.errors and [m.base for m in view.mmio] == [0xFEB00E00]
        xsdt = tables.names["XSDT"]
        entry = bytearray(mem.read(xsdt, 36 + 8))
        entry[36:44] = (3 << 20).to_bytes(8, "little")  # the FADT "lives" past the end of RAM
        entry[9] = 0
        entry[9] = -sum(entry) & 0xFF
        mem.write(xsdt, bytes(entry))
        view = discover(mem, "")
        assert view.errors and "cannot read" in view.errors[0]
        mem.write(0xE0008, b"\x00")  # break the RSDP checksum: the scan finds nothing
        assert discover(mem, "").source == "none"
        bad_param = discover(mem, "acpi_rsdp=0x7fffffff")
        assert bad_param.source == "acpi" and "cannot read" in bad_param.errors[0]
    finally:
        mem.close()
