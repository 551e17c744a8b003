"""QEMU's ACPI tables through fw_cfg: the table loader run here, checked against iasl.

The loader unit tests need no QEMU: they build loader scripts by hand, including hostile
ones. The ``qemu`` tests read the real tables of microvm (x86) and virt (aarch64) and
check what firmware would check: every checksum, the RSDP -> XSDT -> FADT -> DSDT chain,
and, through the real ``iasl -d``, that the DSDT lists the LNRO0005 transports where
QEMU put them.
"""

from __future__ import annotations

import itertools
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from virtio_sim.layouts import (
    FW_CFG_LOADER_ENTRY_SIZE,
    FwCfgLoaderAddChecksum,
    FwCfgLoaderAddPointer,
    FwCfgLoaderAllocate,
)
from virtio_sim.orchestration.qemu.fw_cfg import (
    LOADER,
    ArmVirtFwCfgPort,
    FwCfg,
    FwCfgError,
    LinkedTables,
    WindowPlacer,
    X86FwCfgPort,
    link_tables,
    read_acpi,
)
from virtio_sim.orchestration.qemu.qtest import spawn_qtest
from virtio_sim.orchestration.qemu.tools import QEMU_ARM, QEMU_X86, require_qemu


def _cmd(command: int, body: bytes) -> bytes:
    return (command.to_bytes(4, "little") + body).ljust(FW_CFG_LOADER_ENTRY_SIZE, b"\0")


def allocate(name: str, align: int = 16, zone: int = LOADER["zone_high"]) -> bytes:
    return _cmd(LOADER["allocate"], FwCfgLoaderAllocate.build({"file": name, "align": align, "zone": zone}))


def add_pointer(dest: str, src: str, offset: int, size: int) -> bytes:
    body = FwCfgLoaderAddPointer.build({"dest_file": dest, "src_file": src, "offset": offset, "size": size})
    return _cmd(LOADER["add_pointer"], body)


def add_checksum(name: str, offset: int, start: int, length: int) -> bytes:
    body = FwCfgLoaderAddChecksum.build({"file": name, "offset": offset, "start": start, "length": length})
    return _cmd(LOADER["add_checksum"], body)


def test_loader_links_pointers_and_fixes_checksums() -> None:
    files = {"a": bytes(16), "b": (0x10).to_bytes(4, "little") + bytes(12)}
    script = allocate("a", zone=LOADER["zone_fseg"]) + allocate("b") + add_pointer("b", "a", 0, 4)
    script += add_checksum("b", 8, 0, 16) + bytes(FW_CFG_LOADER_ENTRY_SIZE)  # QEMU pads with zeros
    linked = link_tables(files, script, WindowPlacer((0x1000, 0x2000), (0xE0000, 0xF0000)))
    assert linked.addresses == {"a": 0xE0000, "b": 0x1000}
    assert int.from_bytes(linked.blobs["b"][:4], "little") == 0xE0000 + 0x10
    assert sum(linked.blobs["b"]) & 0xFF == 0


@pytest.mark.parametrize(
    ("files", "script", "message"),
    [
        ({"a": bytes(8)}, allocate("nope"), "fw_cfg does not have"),
        ({"a": bytes(8)}, allocate("a") + allocate("a"), "twice"),
        ({"a": bytes(8)}, allocate("a", align=3), "alignment 3"),
        ({"a": bytes(8)}, allocate("a") + add_pointer("a", "zz", 0, 4), "not allocated"),
        ({"a": bytes(8)}, allocate("a") + add_pointer("a", "a", 6, 4), "outside its blob"),
        ({"a": bytes(8)}, allocate("a") + add_pointer("a", "a", 0, 3), "outside its blob"),
        ({"a": bytes(8)}, allocate("a") + add_checksum("a", 0, 4, 8), "outside the blob"),
        ({"a": bytes(8)}, allocate("a") + _cmd(77, b""), "command 77 is unknown"),
        ({"a": bytes(8)}, allocate("a")[:100], "whole 128-byte commands"),
        ({"a": bytes(0x2000)}, allocate("a"), "does not fit"),
        ({"a": bytes(8)}, allocate("a", zone=9), "unknown zone 9"),
    ],
)
def test_hostile_loader_scripts_are_refused(files: dict[str, bytes], script: bytes, message: str) -> None:
    with pytest.raises(FwCfgError, match=message):
        link_tables(files, script, WindowPlacer((0x1000, 0x2000)))


# --------------------------------------------------------------------------- real QEMU

HEADER = struct.Struct("<4sI")  # signature, length: the start of every ACPI table
RSDP_XSDT_OFFSET = 24
XSDT_ENTRIES = 36
FADT_DSDT32 = 40
FADT_XDSDT = 140


def _table(linked: LinkedTables, addr: int) -> bytes:
    base = linked.addresses["etc/acpi/tables"]
    blob = linked.blobs["etc/acpi/tables"]
    sig, length = HEADER.unpack_from(blob, addr - base)
    table = bytes(blob[addr - base : addr - base + length])
    assert sum(table) & 0xFF == 0, f"{sig!r} checksum"
    return table


def _dsdt(linked: LinkedTables) -> bytes:
    rsdp = linked.blobs["etc/acpi/rsdp"]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp) & 0xFF == 0
    xsdt = _table(linked, struct.unpack_from("<Q", rsdp, RSDP_XSDT_OFFSET)[0])
    assert xsdt[:4] == b"XSDT"
    for at in range(XSDT_ENTRIES, len(xsdt), 8):
        table = _table(linked, struct.unpack_from("<Q", xsdt, at)[0])
        if table[:4] == b"FACP":
            xdsdt = struct.unpack_from("<Q", table, FADT_XDSDT)[0] if len(table) >= FADT_XDSDT + 8 else 0
            dsdt = _table(linked, xdsdt or struct.unpack_from("<I", table, FADT_DSDT32)[0])
            assert dsdt[:4] == b"DSDT"
            return dsdt
    raise AssertionError("no FADT in the XSDT")


def _disassemble(aml: bytes, tmp_path: Path) -> str:
    iasl = shutil.which("iasl")
    assert iasl, "iasl is missing: apt-get install acpica-tools"
    (tmp_path / "dsdt.aml").write_bytes(aml)
    subprocess.run([iasl, "-d", "dsdt.aml"], cwd=tmp_path, check=True, capture_output=True)
    return (tmp_path / "dsdt.dsl").read_text()


@pytest.mark.qemu
@pytest.mark.tool("iasl")
def test_microvm_tables_list_the_populated_transports(tmp_path: Path) -> None:
    q = spawn_qtest(
        require_qemu(QEMU_X86),
        "x86_64",
        ["-M", "microvm,ioapic2=off,pit=off", "-m", "64M", "-device", "virtio-rng-device",
         "-device", "virtio-rng-device"],
    )  # fmt: skip
    try:
        linked = read_acpi(
            FwCfg(X86FwCfgPort(q.client)), WindowPlacer((0x80000, 0xE0000), (0xE0000, 0x100000))
        )
    finally:
        q.close()
    assert 0xE0000 <= linked.rsdp_address < 0x100000  # where Linux's x86 scan looks
    dsl = _disassemble(_dsdt(linked), tmp_path)
    assert dsl.count('"LNRO0005"') == 2  # microvm lists populated slots only
    # The first -device sits in the highest of the 8 slots (0xfeb00e00, IOAPIC pin 16 + 7).
    assert "0xFEB00E00" in dsl and "0xFEB00C00" in dsl and "0xFEB00A00" not in dsl
    assert "0x00000017" in dsl and "0x00000016" in dsl


@pytest.mark.qemu
@pytest.mark.qemu_arm
@pytest.mark.tool("iasl")
def test_arm_virt_tables_list_all_32_transports(tmp_path: Path) -> None:
    q = spawn_qtest(
        require_qemu(QEMU_ARM),
        "aarch64",
        ["-M", "virt", "-cpu", "cortex-a57", "-m", "64M", "-device", "virtio-rng-device"],
    )
    try:
        fw = FwCfg(ArmVirtFwCfgPort(q.client))
        linked = read_acpi(fw, WindowPlacer((0x40000000, 0x40100000)))
    finally:
        q.close()
    blobs = sorted((linked.addresses[n], linked.addresses[n] + len(b)) for n, b in linked.blobs.items())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(blobs))
    dsl = _disassemble(_dsdt(linked), tmp_path)
    assert dsl.count('"LNRO0005"') == 32  # virt lists every slot, populated or not
    for slot in (0, 31):
        assert f"Device (VR{slot:02d})" in dsl
        assert f"0x{0x0A000000 + 0x200 * slot:08X}" in dsl
        assert f"0x{32 + 16 + slot:08X}" in dsl  # SPI 16 + slot, as a GSIV (32 + SPI)


@pytest.mark.qemu
def test_dma_reads_what_the_data_register_reads() -> None:
    """fw_cfg DMA (used for the big blobs) and byte reads agree, file by file."""
    q = spawn_qtest(require_qemu(QEMU_X86), "x86_64", ["-M", "q35,pit=off", "-m", "64M"])
    try:
        by_dma = FwCfg(X86FwCfgPort(q.client), dma_window=(0x80000, 0xE0000))
        by_bytes = FwCfg(X86FwCfgPort(q.client))
        assert by_dma.has_dma()
        for name in ("etc/acpi/rsdp", "etc/table-loader"):
            assert by_dma.read_file(name) == by_bytes.read_file(name)
        tables = by_dma.read_file("etc/acpi/tables")
        assert len(tables) == by_dma.files()["etc/acpi/tables"].size and b"DSDT" in tables
        with pytest.raises(FwCfgError, match="does not fit the DMA window"):
            FwCfg(X86FwCfgPort(q.client), dma_window=(0x80000, 0x80100)).read_file("etc/acpi/tables")
    finally:
        q.close()
