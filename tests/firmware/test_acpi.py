"""Our ACPI tables checked by the guest's reader, by the real ``iasl -d`` and against
QEMU's AML; the PCI host bridge found through MCFG and its _CRS (arm virt's through either
firmware); the parsers against hostile tables."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.machine_runs import bound_probes, run_machine
from virtio_sim.acpi_layouts import decode_pkg_length, encode_pkg_length
from virtio_sim.guest.acpi import (
    AcpiError,
    parse_dsdt,
    parse_fadt,
    parse_mcfg,
    parse_resources,
    parse_root,
    parse_rsdp,
    parse_sdt,
    parse_viot,
)
from virtio_sim.guest.fdt import parse_fdt
from virtio_sim.guest.firmware import discover
from virtio_sim.host import acpi as host_acpi
from virtio_sim.host.acpi import AcpiPlan, MmioDeviceEntry, ViotTopology, build_tables, sdt
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.machine_types import MACHINE_FACTS
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome

# --------------------------------------------------------------------------- iasl


def _tables(machine: str, devices: list[str], transport: str = "mmio-v2") -> dict[str, bytes]:
    setup = build_host(HostConfig(devices, transport, 8 << 20, machine=machine, scratch_dir="/tmp"))
    try:
        assert setup.machine_spec is not None
        from virtio_sim.host.firmware import acpi_plan

        plan = acpi_plan(setup.machine, setup.machine_spec)
        tables = build_tables(plan, 0xE0000, 0x80000, 0xE0000)
        by_sig = {bytes(b[:4]).decode(): b for b in tables.blobs.values()}
        rsdp = parse_rsdp(by_sig["RSD "])
        assert rsdp.revision == 2 and tables.blobs[rsdp.xsdt_address] == by_sig["XSDT"]
        return by_sig
    finally:
        setup.close()


def _iasl(tmp_path: Path, name: str, data: bytes) -> str:
    iasl = shutil.which("iasl")
    assert iasl, "iasl is missing: apt-get install acpica-tools"
    (tmp_path / f"{name}.aml").write_bytes(data)
    p = subprocess.run([iasl, "-d", f"{name}.aml"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return (tmp_path / f"{name}.dsl").read_text()


@pytest.mark.tool("iasl")
def test_iasl_accepts_every_table(tmp_path: Path) -> None:
    t = _tables("q35,iommu=virtio", ["virtio-rng-pci"], "pci-modern")
    assert set(t) == {"RSD ", "DSDT", "FACP", "VIOT", "MCFG", "XSDT"}
    dsdt = _iasl(tmp_path, "dsdt", t["DSDT"])
    assert "Device (VR07)" in dsdt and 'Name (_HID, "LNRO0005")' in dsdt and "Name (_CCA, One)" in dsdt
    assert "0xFEB00E00" in dsdt and "0x00000200" in dsdt and "0x00000017" in dsdt  # GSI 16 + 7
    assert "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive" in dsdt
    fadt = _iasl(tmp_path, "facp", t["FACP"])
    assert "DSDT Address : 0000000000080000" in fadt and "Hardware Reduced (V5) : 0" in fadt
    # q35's host bridge in QEMU's shape, its _CRS decoded by iasl as the ASL QEMU's has
    assert "Device (PCI0)" in dsdt and 'EisaId ("PNP0A08")' in dsdt and 'EisaId ("PNP0A03")' in dsdt
    assert "Name (_SEG, Zero)" in dsdt and "Name (_BBN, Zero)" in dsdt
    assert "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode," in dsdt
    assert dsdt.count("WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,") == 2
    assert "IO (Decode16,\n                    0x0CF8," in dsdt
    assert "0xC0000000,         // Range Minimum\n                    0xFEBFFFFF" in dsdt
    assert (
        "0x0000C000,         // Range Minimum" not in dsdt and "0xC000,             // Range Minimum" in dsdt
    )
    mcfg = _iasl(tmp_path, "mcfg", t["MCFG"])
    assert "Base Address : 00000000B0000000" in mcfg and "End Bus Number : FF" in mcfg
    xsdt = _iasl(tmp_path, "xsdt", t["XSDT"])
    assert xsdt.count("ACPI Table Address") == 3
    # (iasl 20200925 refuses a bare RSDP file; _tables checked it with the guest's reader)
    # iasl 20200925 cannot decode VIOT: it must still accept the header and dump the bytes,
    # and our parser reads what the bytes say.
    viot = _iasl(tmp_path, "viot", t["VIOT"])
    assert 'Signature : "VIOT"' in viot and f"Table Length : {len(t['VIOT']):08X}" in viot
    info = parse_viot(t["VIOT"])
    assert (info.iommu_kind, info.iommu_address, info.pci_endpoints) == ("mmio", 0xFEB00E00, {8: 8})


@pytest.mark.tool("iasl")
def test_iasl_virt_dsdt_has_every_slot(tmp_path: Path) -> None:
    t = _tables("virt,x-mmio-hid=QEMU1AF4", ["virtio-rng-device"])
    dsl = _iasl(tmp_path, "dsdt", t["DSDT"])
    assert dsl.count('"QEMU1AF4"') == 32 and "LNRO0005" not in dsl
    assert "0x0A000000" in dsl and f"0x{0x0A000000 + 0x200 * 31:08X}" in dsl
    assert "0x00000030" in dsl and f"0x{48 + 31:08X}" in dsl  # GSIV 48 + slot, as QEMU
    fadt = _iasl(tmp_path, "facp", t["FACP"])
    assert "Hardware Reduced (V5) : 1" in fadt


# --------------------------------------------------------------------------- parsers


def test_parsers_read_what_the_host_wrote() -> None:
    entries = [MmioDeviceEntry(7, 0xFEB00E00, 0x200, 23), MmioDeviceEntry(2, 0xFEB00400, 0x200, 18)]
    viot = ViotTopology(0xFEB00E00, {0xFEB00400: 1}, {0x10: 0x10, 0x18: 0x18})
    tables = build_tables(AcpiPlan(entries, viot=viot, ecam=(0xB0000000, 256)), 0xE0000, 0x80000, 0xE0000)
    rsdp = parse_rsdp(tables.blobs[0xE0000])
    root = parse_root(tables.blobs[rsdp.xsdt_address])
    sigs = {bytes(tables.blobs[a][:4]).decode(): a for a in root}
    assert parse_fadt(tables.blobs[sigs["FACP"]]) == tables.names["DSDT"]
    devs = parse_dsdt(tables.blobs[tables.names["DSDT"]]).devices
    assert [(d.path, d.hid, d.uid, d.cca, d.memory, d.interrupts) for d in devs] == [
        ("\\_SB.VR07", "LNRO0005", 7, 1, [(0xFEB00E00, 0x200)], [23]),
        ("\\_SB.VR02", "LNRO0005", 2, 1, [(0xFEB00400, 0x200)], [18]),
    ]
    v = parse_viot(tables.blobs[sigs["VIOT"]])
    assert v.mmio_endpoints == {0xFEB00400: 1} and v.pci_endpoints == {0x10: 0x10, 0x18: 0x18}
    assert parse_mcfg(tables.blobs[sigs["MCFG"]]) == [(0xB0000000, 0, 0, 255)]


def _fixed(table: bytearray) -> bytes:
    table[9] = 0
    table[9] = -sum(table) & 0xFF
    return bytes(table)


def test_hostile_tables_are_refused_with_reasons() -> None:
    good = sdt("DSDT", 2, host_acpi.dsdt_aml([MmioDeviceEntry(0, 0x0A000000, 0x200, 48)]))
    bad_sum = bytearray(good)
    bad_sum[-1] ^= 0xFF
    with pytest.raises(AcpiError, match="bad checksum"):
        parse_dsdt(bytes(bad_sum))
    with pytest.raises(AcpiError, match=r"only .* present"):
        parse_dsdt(good[:-3])
    lying = bytearray(good)
    lying[4:8] = (1 << 30).to_bytes(4, "little")
    with pytest.raises(AcpiError, match="impossible length"):
        parse_dsdt(bytes(lying))
    absurd = bytearray(good)
    absurd[37:41] = b"\xff\xff\xff\xff"  # Scope's PkgLength: 3 more bytes, ~256 MiB
    with pytest.raises(AcpiError, match="claims"):
        parse_dsdt(_fixed(absurd))
    assert parse_dsdt(sdt("DSDT", 2, b"\x10\x05_SB_")).devices == []  # an empty scope is fine
    deep = b"\x5b\x82\x05DEV_"
    for _ in range(40):  # Devices nested 40 deep
        body = b"DEV_" + deep
        deep = b"\x5b\x82" + encode_pkg_length(len(body)) + body
    with pytest.raises(AcpiError, match="nested deeper"):
        parse_dsdt(sdt("DSDT", 2, deep))
    with pytest.raises(AcpiError, match="RSDP: bad checksum"):
        parse_rsdp(b"RSD PTR " + bytes(12))
    with pytest.raises(AcpiError, match="not a list of 8-byte"):
        parse_root(sdt("XSDT", 1, bytes(5)))
    viot = bytearray(host_acpi.viot(ViotTopology(0x1000, {0x2000: 1})))
    viot[36:38] = (500).to_bytes(2, "little")  # node_count past the end
    with pytest.raises(AcpiError, match=r"past the end|bad length"):
        parse_viot(_fixed(viot))


def test_q35_pci_comes_from_mcfg_and_the_host_bridge_crs() -> None:
    from virtio_sim.guest.pci import PciFirmware, parse_pci_param
    from virtio_sim.host.machine import Q35_ECAM_BASE, Q35_ECAM_BUSES, Q35_PCI_IO_WINDOW, Q35_PCI_MEM_WINDOW

    setup = build_host(
        HostConfig(["virtio-rng-pci"], "pci-modern", 8 << 20, machine="q35", scratch_dir="/tmp")
    )
    try:
        cmdline = setup.machine.kernel_cmdline()
        assert parse_pci_param(cmdline) is None and "virtio_sim.pci" not in cmdline  # no stand-in
        view = discover(setup.memory, cmdline)
        assert view.errors == [] and view.pci_bridge == "\\_SB.PCI0"
        want = PciFirmware(Q35_ECAM_BASE, Q35_ECAM_BUSES, Q35_PCI_MEM_WINDOW, Q35_PCI_IO_WINDOW, "acpi")
        assert view.pci == want
    finally:
        setup.close()
    # the whole run enumerates through the ECAM the MCFG gave
    r = run_machine("q35", "virtio-rng-pci")
    assert r.outcome is Outcome.OK and [p["source"] for p in bound_probes(r)] == ["pci"]
    # without ACPI the command line still stands in for the tables
    setup = build_host(HostConfig(["virtio-rng-pci"], "pci-modern", 8 << 20, machine="q35,acpi=off"))
    try:
        fw = parse_pci_param(setup.machine.kernel_cmdline())
        assert fw is not None and fw.source == "cmdline" and fw.ecam_base == Q35_ECAM_BASE
    finally:
        setup.close()


@pytest.mark.parametrize("transport", ["pci-modern", "pci-legacy"])
def test_virt_pcie_host_found_through_acpi(transport: str, tmp_path: Path) -> None:
    from virtio_sim.guest.pci import PciFirmware

    virt = MACHINE_FACTS["virt"]
    cfg = HostConfig(["virtio-blk-pci"], transport, 8 << 20, machine="virt", scratch_dir=str(tmp_path))
    setup = build_host(cfg)
    try:
        cmdline = setup.machine.kernel_cmdline()
        assert "virtio_sim.pci" not in cmdline
        view = discover(setup.memory, cmdline, virt["ram_base"])
        assert view.errors == [] and view.pci_bridge == "\\_SB.PCI0"
        # QEMU 7.2 virt: ECAM 0x3f000000 for 16 buses, MMIO 0x10000000-0x3efeffff, 64 KiB
        # of I/O ports; no MSI controller in our tables, so INTx only
        mem, io = tuple(virt["pci_mem"]), tuple(virt["pci_io"])
        assert view.pci == PciFirmware(0x3F000000, 16, mem, io, source="acpi", msi=False)
        assert setup.machine.pci is not None
        fn = setup.machine.pci.functions[(0, 1, 0)]  # the device, after the host bridge
        assert fn.gsi == 36  # slot 1, INTA: (1 + 1 - 1) mod 4 = SPI 3 + 1, GSIV 32 + 4
    finally:
        setup.close()
    cfg_run = RunConfig("virtio-blk-pci", "blk-rw", transport=transport, machine="virt")
    r = trio.run(run_embedded, cfg_run)
    assert r.outcome is Outcome.OK, r.detail
    assert [(p["device"], p["source"]) for p in bound_probes(r)] == [("blk", "pci")]


def test_virt_pcie_host_found_through_the_device_tree(tmp_path: Path) -> None:
    from virtio_sim.guest.fdt import FdtError
    from virtio_sim.guest.pci import PciFirmware
    from virtio_sim.guest.pci_firmware import pci_from_fdt

    virt = MACHINE_FACTS["virt"]
    cfg = HostConfig(
        ["virtio-blk-pci"], "pci-legacy", 8 << 20, machine="virt,acpi=off", scratch_dir=str(tmp_path)
    )
    setup = build_host(cfg)
    try:
        view = discover(setup.memory, setup.machine.kernel_cmdline(), virt["ram_base"])
        assert view.source == "fdt" and view.errors == [] and view.pci_bridge == "/pcie@10000000"
        mem, io = tuple(virt["pci_mem"]), tuple(virt["pci_io"])
        assert view.pci == PciFirmware(0x3F000000, 16, mem, io, source="fdt", msi=False)
        dtb = setup.memory.read(view.tables["FDT"], 0x10000)
        (node,) = [
            n
            for n in parse_fdt(bytes(dtb)[: int.from_bytes(bytes(dtb)[4:8], "big")])
            if n.path.startswith("/pcie")
        ]
        assert node.cells("bus-range") == [0, 15] and node.reg == [(0x3F000000, 16 << 20)]
        node.props["ranges"] = node.props["ranges"][:-4]  # a ranges list cut short
        with pytest.raises(FdtError, match="7-cell entries"):
            pci_from_fdt(node, 2)
    finally:
        setup.close()
    r = trio.run(
        run_embedded, RunConfig("virtio-blk-pci", "blk-rw", transport="pci-legacy", machine="virt,acpi=off")
    )
    assert r.outcome is Outcome.OK, r.detail
    assert [(p["device"], p["source"]) for p in bound_probes(r)] == [("blk", "pci")]


@pytest.mark.tool("iasl")
def test_iasl_accepts_virt_pci_tables(tmp_path: Path) -> None:
    t = _tables("virt", ["virtio-rng-pci"], "pci-modern")
    dsdt = _iasl(tmp_path, "dsdt", t["DSDT"])
    assert "Device (PCI0)" in dsdt and 'EisaId ("PNP0A08")' in dsdt and "Name (_CCA, One)" in dsdt
    assert "0x10000000,         // Range Minimum\n                    0x3EFEFFFF" in dsdt
    assert "DWordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange," in dsdt
    assert "0x3EFF0000,         // Translation Offset" in dsdt
    mcfg = _iasl(tmp_path, "mcfg", t["MCFG"])
    assert "Base Address : 000000003F000000" in mcfg and "End Bus Number : 0F" in mcfg
    assert "Hardware Reduced (V5) : 1" in _iasl(tmp_path, "facp", t["FACP"])


def test_host_bridge_reader_follows_qemus_scope_form_and_refuses_bad_windows() -> None:
    from virtio_sim.guest.acpi import AcpiDevice
    from virtio_sim.guest.pci_firmware import pci_from_acpi

    # QEMU q35: Device (PCI0) in Scope (_SB), its _CRS later in Scope (\_SB.PCI0)
    head = host_acpi.name("_HID", host_acpi.eisa_id("PNP0A08"))
    crs = (
        host_acpi.address_space(2, 2, 0, 0, 0xFF)
        + host_acpi.address_space(2, 1, 3, 0x0D00, 0xFFFF)
        + host_acpi.address_space(4, 0, 1, 0x04000000, 0xAFFFFFFF)
        + host_acpi.address_space(4, 0, 1, 0xC0000000, 0xFEBFFFFF)
        + host_acpi.address_space(8, 0, 3, 1 << 32, (9 << 32) - 1)
        + b"\x79\x00"
    )
    inner = b"\\\x2e_SB_PCI0" + host_acpi.name("_CRS", host_acpi.buffer(crs))
    later = bytes([0x10]) + encode_pkg_length(len(inner)) + inner
    aml = host_acpi.scope("_SB", host_acpi.device("PCI0", head)) + later
    (dev,) = parse_dsdt(sdt("DSDT", 2, aml)).devices
    assert dev.hid == "PNP0A08" and dev.bus_ranges == [(0, 0xFF)] and dev.io_windows == [(0x0D00, 0xFFFF)]
    assert dev.mem_windows[-1] == (1 << 32, (9 << 32) - 1)
    fw = pci_from_acpi(dev, [(0xB0000000, 0, 0, 255)])
    # the largest 32-bit window and the largest I/O window; ECAM from the MCFG
    assert (fw.ecam_base, fw.ecam_buses, fw.mem, fw.io) == (
        0xB0000000,
        256,
        (0x04000000, 0xB0000000),
        (0xD00, 0x10000),
    )
    assert pci_from_acpi(dev, None).ecam_base is None  # no MCFG: 0xCF8/0xCFC
    with pytest.raises(AcpiError, match="no allocation covers segment 0"):
        pci_from_acpi(dev, [(0xB0000000, 1, 0, 255)])
    with pytest.raises(AcpiError, match="no I/O window"):
        pci_from_acpi(AcpiDevice("\\_SB.PCI0", mem_windows=[(0xC0000000, 0xFEBFFFFF)]), None)
    bad = AcpiDevice("B")
    with pytest.raises(AcpiError, match="inconsistent"):  # maximum below minimum
        parse_resources(host_acpi.address_space(4, 0, 1, 0xC0000000, 0xBFFFFFFF) + b"\x79\x00", bad)
    with pytest.raises(AcpiError, match="need 23"):  # a DWord descriptor cut to a Word's size
        parse_resources(b"\x87\x0d\x00" + bytes(13) + b"\x79\x00", bad)


def test_crs_descriptors_checked() -> None:
    from virtio_sim.guest.acpi import AcpiDevice

    dev = AcpiDevice("X")
    with pytest.raises(AcpiError, match="claims"):
        parse_resources(b"\x86\x09\x00\x01", dev)
    with pytest.raises(AcpiError, match="no end tag"):
        parse_resources(b"\x22\x00\x01", dev)
    ok = AcpiDevice("Y")
    parse_resources(b"\x22\x00\x01\x79\x00", ok)
    assert ok.interrupts == [8]


@given(st.integers(min_value=0, max_value=(1 << 28) - 5))
def test_pkg_length_round_trip(n: int) -> None:
    enc = encode_pkg_length(n)
    assert decode_pkg_length(enc + bytes(4), 0) == (n + len(enc), len(enc))


PARSERS = (parse_rsdp, parse_root, parse_fadt, parse_dsdt, parse_viot, parse_mcfg, parse_sdt)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["DSDT", "VIOT", "XSDT", "FACP", "MCFG"]))
def test_arbitrary_bytes_only_raise_acpi_error(body: bytes, sig: str) -> None:
    """Random AML/table bodies behind a valid header (so the parsers get past the checksum),
    and raw random bytes: nothing but AcpiError comes out."""
    for data in (sdt(sig, 2, body), body):
        for parse in PARSERS:
            try:
                parse(data)  # type: ignore[operator]
            except AcpiError:
                pass


# --------------------------------------------------------------------------- vs QEMU's AML


def _qemu_dsdt(arch: str, args: list[str]) -> bytes:
    """QEMU's own DSDT, read through fw_cfg and linked as firmware would, found by the
    guest's reader from the RSDP."""
    from virtio_sim.orchestration.qemu.fw_cfg import (
        ArmVirtFwCfgPort,
        FwCfg,
        WindowPlacer,
        X86FwCfgPort,
        read_acpi,
    )
    from virtio_sim.orchestration.qemu.qtest import spawn_qtest
    from virtio_sim.orchestration.qemu.tools import QEMU_ARM, QEMU_X86, require_qemu

    x86 = arch == "x86_64"
    q = spawn_qtest(require_qemu(QEMU_X86 if x86 else QEMU_ARM), arch, args)
    try:
        port = X86FwCfgPort(q.client) if x86 else ArmVirtFwCfgPort(q.client)
        window = (
            WindowPlacer((0x80000, 0xE0000), (0xE0000, 0x100000))
            if x86
            else WindowPlacer((0x40000000, 0x40100000))
        )
        linked = read_acpi(FwCfg(port), window)
    finally:
        q.close()
    mem = {linked.addresses[n]: bytes(b) for n, b in linked.blobs.items()}

    def read(address: int) -> bytes:
        base = max(a for a in mem if a <= address)
        return mem[base][address - base :]

    rsdp = parse_rsdp(read(linked.rsdp_address))
    root = parse_root(read(rsdp.xsdt_address or rsdp.rsdt_address))
    fadt = next(read(a) for a in root if read(a)[:4] == b"FACP")
    return read(parse_fadt(fadt))


def _device_aml(dsdt: bytes, name: str) -> bytes:
    at = dsdt.index(b"\x5b\x82")
    at = dsdt.index(name.encode(), at) - 2
    while dsdt[at : at + 2] != b"\x5b\x82":
        at -= 1
    length, _ = decode_pkg_length(dsdt, at + 2)
    return dsdt[at : at + 2 + length]


@pytest.mark.qemu
def test_our_virtio_mmio_aml_is_byte_identical_to_qemus_microvm() -> None:
    dsdt = _qemu_dsdt(
        "x86_64", ["-M", "microvm,ioapic2=off,pit=off", "-m", "64M", "-device", "virtio-rng-device"]
    )
    ours = host_acpi.virtio_mmio_device(MmioDeviceEntry(7, 0xFEB00E00, 0x200, 16 + 7), "LNRO0005")
    assert _device_aml(dsdt, "VR07") == ours
    assert [d.path for d in parse_dsdt(dsdt).devices if d.hid == "LNRO0005"] == ["\\_SB.VR07"]


@pytest.mark.qemu
@pytest.mark.qemu_arm
def test_our_virtio_mmio_aml_is_byte_identical_to_qemus_virt() -> None:
    dsdt = _qemu_dsdt("aarch64", ["-M", "virt", "-cpu", "cortex-a57", "-m", "64M"])
    ours = parse_dsdt(_tables("virt", ["virtio-rng-device"])["DSDT"]).devices
    theirs = [d for d in parse_dsdt(dsdt).devices if d.hid == "LNRO0005"]
    assert [(d.path, d.memory, d.interrupts) for d in ours] == [
        (d.path, d.memory, d.interrupts) for d in theirs
    ]
    for slot in (0, 1, 30, 31):
        entry = MmioDeviceEntry(slot, 0x0A000000 + 0x200 * slot, 0x200, 48 + slot)
        assert _device_aml(dsdt, f"VR{slot:02d}") == host_acpi.virtio_mmio_device(entry, "LNRO0005")
