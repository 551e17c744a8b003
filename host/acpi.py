"""ACPI tables for our machines, as real AML bytecode and binary tables.

A guest on microvm or arm ``virt`` finds its virtio-mmio transports only through
firmware, as Linux does: the DSDT holds one ``Device`` per transport with ``_HID``
``LNRO0005``, ``_UID``, ``_CCA`` and a ``_CRS`` (Memory32Fixed + Extended Interrupt),
in the shape QEMU 7.2 writes (microvm: populated slots only; virt: every slot). A VIOT
says which transports and PCI functions sit behind the virtio-iommu; an MCFG gives q35's
ECAM window; the FADT points at the DSDT, the XSDT at the rest, the RSDP at the XSDT.

Everything here is pure: :func:`build_tables` returns the tables placed at given
addresses, :mod:`host.firmware` writes them into guest RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_sim.acpi_layouts import (
    AML,
    FADT,
    HID,
    MCFG_RESERVED,
    OEM,
    PCI0,
    RES,
    REV,
    RSDP,
    RSDP_SIZE,
    SDT_HEADER_SIZE,
    SIG,
    VIOT,
    ExtendedInterruptHead,
    McfgAllocation,
    Memory32Fixed,
    Rsdp,
    SdtHeader,
    ViotHeader,
    ViotMmio,
    ViotPciRange,
    ViotVirtioIommuMmio,
    checksum_fix,
    encode_pkg_length,
)

FADT_LENGTH = 276  # ACPI 6.x FADT
EISA_ID_LENGTH = 7
NAME_SEG = 4
TABLE_ALIGN = 16
VIOT_NODE_ALIGN = 8


# --------------------------------------------------------------------------- AML


def name_seg(name: str) -> bytes:
    """A 4-character AML NameSeg (``_SB`` -> ``_SB_``)."""
    if not 1 <= len(name) <= NAME_SEG or not name.isascii():
        raise ValueError(f"bad AML name segment {name!r}")
    return name.ljust(NAME_SEG, "_").encode()


def integer(value: int) -> bytes:
    """The shortest AML data object for ``value`` (Zero, One, Byte/Word/DWord/QWordConst)."""
    if value == 0:
        return bytes([AML["zero_op"]])
    if value == 1:
        return bytes([AML["one_op"]])
    for prefix, size in (("byte_prefix", 1), ("word_prefix", 2), ("dword_prefix", 4), ("qword_prefix", 8)):
        if value < 1 << (8 * size):
            return bytes([AML[prefix]]) + value.to_bytes(size, "little")
    raise ValueError(f"{value:#x} does not fit an AML integer")


def string(text: str) -> bytes:
    return bytes([AML["string_prefix"]]) + text.encode("ascii") + b"\0"


def name(seg: str, data: bytes) -> bytes:
    return bytes([AML["name_op"]]) + name_seg(seg) + data


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([AML["buffer_op"]]) + encode_pkg_length(len(body)) + body


def device(seg: str, body: bytes) -> bytes:
    inner = name_seg(seg) + body
    return bytes([AML["ext_op_prefix"], AML["ext_device_op"]]) + encode_pkg_length(len(inner)) + inner


def scope(seg: str, body: bytes) -> bytes:
    inner = name_seg(seg) + body
    return bytes([AML["scope_op"]]) + encode_pkg_length(len(inner)) + inner


def resource_template(base: int, size: int, gsi: int) -> bytes:
    """Memory32Fixed(ReadWrite, base, size) + Interrupt(Consumer, Level, ActiveHigh) {gsi}."""
    mem = Memory32Fixed.build(
        {
            "tag": RES["memory32_fixed"],
            "length": RES["memory32_fixed_length"],
            "info": RES["read_write"],
            "base": base,
            "size": size,
        }
    )
    irq_head = {"tag": RES["extended_interrupt"], "length": 6, "flags": RES["interrupt_consumer_level_high"]}
    irq = ExtendedInterruptHead.build({**irq_head, "count": 1}) + gsi.to_bytes(4, "little")
    end = bytes([RES["end_tag"], 0])
    return buffer(mem + irq + end)


@dataclass(frozen=True)
class MmioDeviceEntry:
    """One virtio-mmio transport as the DSDT describes it."""

    slot: int
    base: int
    size: int
    gsi: int


def virtio_mmio_device(entry: MmioDeviceEntry, hid: str) -> bytes:
    body = (
        name("_HID", string(hid))
        + name("_UID", integer(entry.slot))
        + name("_CCA", integer(1))
        + name("_CRS", resource_template(entry.base, entry.size, entry.gsi))
    )
    return device(f"VR{entry.slot:02d}", body)


def eisa_id(text: str) -> bytes:
    """``EisaId("PNP0A08")``: three letters of 5 bits and four hex digits in a DWordConst."""
    if len(text) != EISA_ID_LENGTH or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id {text!r}")
    a, b, c = (ord(ch) - ord("@") for ch in text[:3])
    raw = bytes([a << 2 | b >> 3, (b & 0x7) << 5 | c, int(text[3:5], 16), int(text[5:7], 16)])
    return bytes([AML["dword_prefix"]]) + raw


def _large(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + len(body).to_bytes(2, "little") + body


def address_space(width: int, kind: int, type_flags: int, low: int, high: int, translation: int = 0) -> bytes:
    """Word/DWord/QWord address space descriptor (producer, MinFixed, MaxFixed, PosDecode)."""
    tag = {2: RES["word_address"], 4: RES["dword_address"], 8: RES["qword_address"]}[width]
    fields = (0, low, high, translation, high - low + 1)
    head = bytes([kind, RES["address_flags_fixed"], type_flags])
    return _large(tag, head + b"".join(v.to_bytes(width, "little") for v in fields))


def io_port(base: int, length: int) -> bytes:
    """IO(Decode16, base, base, 1, length)."""
    span = base.to_bytes(2, "little") * 2
    return bytes([RES["io_port"], RES["io_decode16"]]) + span + bytes([1, length])


@dataclass(frozen=True)
class PciBridgeEntry:
    """q35's host bridge as its DSDT Device says: buses and the windows it forwards."""

    buses: int
    io: tuple[int, int]  # [start, end)
    mem: tuple[int, int]  # [start, end), below 4 GiB
    style: str = "q35"  # "q35" | "virt" (QEMU's two _CRS shapes)
    io_translation: int = 0  # virt: port p is CPU address io_translation + p


def pci_host_bridge(bridge: PciBridgeEntry) -> bytes:
    """``Device(PCI0)`` in QEMU q35's shape: _HID PNP0A08, _CID PNP0A03, _ADR, _UID, _SEG,
    _BBN and a _CRS with the bus range, the 0xCF8 config ports, the I/O ranges either side
    of them (the upper one ending at the bridge's window), the VGA hole and the 32-bit
    memory window."""
    if bridge.style == "virt":
        return _virt_pci_host_bridge(bridge)
    io_flags, rw_cache, rw_nocache = (
        RES["io_flags_entire_range"],
        RES["memory_flags_rw_cacheable"],
        RES["memory_flags_rw_noncacheable"],
    )
    crs = (
        address_space(2, RES["space_bus"], 0, 0, bridge.buses - 1)
        + io_port(PCI0["conf1_port"], PCI0["conf1_ports"])
        + address_space(2, RES["space_io"], io_flags, 0, PCI0["conf1_port"] - 1)
        + address_space(2, RES["space_io"], io_flags, bridge.io[0], bridge.io[1] - 1)
        + address_space(4, RES["space_memory"], rw_cache, PCI0["vga_start"], PCI0["vga_end"])
        + address_space(4, RES["space_memory"], rw_nocache, bridge.mem[0], bridge.mem[1] - 1)
        + bytes([RES["end_tag"], 0])
    )
    body = (
        name("_HID", eisa_id(HID["pci_express_root"]))
        + name("_CID", eisa_id(HID["pci_root"]))
        + name("_ADR", integer(0))
        + name("_UID", integer(0))
        + name("_SEG", integer(0))
        + name("_BBN", integer(0))
        + name("_CRS", buffer(crs))
    )
    return device("PCI0", body)


def _virt_pci_host_bridge(bridge: PciBridgeEntry) -> bytes:
    """arm virt's ``Device(PCI0)`` (QEMU's acpi_dsdt_add_gpex): _HID/_CID, _SEG, _BBN, _UID,
    _CCA and a _CRS with the bus range, the 32-bit MMIO window and the I/O window as a
    DWordIO whose translation offset is the PIO window's CPU address. (QEMU also writes
    _PRT for INTx and a _STR; our guest takes the INTx line from config space.)"""
    crs = (
        address_space(2, RES["space_bus"], 0, 0, bridge.buses - 1)
        + address_space(
            4, RES["space_memory"], RES["memory_flags_rw_noncacheable"], bridge.mem[0], bridge.mem[1] - 1
        )
        + address_space(
            4,
            RES["space_io"],
            RES["io_flags_entire_range"],
            bridge.io[0],
            bridge.io[1] - 1,
            bridge.io_translation,
        )
        + bytes([RES["end_tag"], 0])
    )
    body = (
        name("_HID", eisa_id(HID["pci_express_root"]))
        + name("_CID", eisa_id(HID["pci_root"]))
        + name("_SEG", integer(0))
        + name("_BBN", integer(0))
        + name("_UID", integer(0))
        + name("_CCA", integer(1))
        + name("_CRS", buffer(crs))
    )
    return device("PCI0", body)


def dsdt_aml(
    entries: list[MmioDeviceEntry], hid: str = HID["virtio_mmio"], pci: PciBridgeEntry | None = None
) -> bytes:
    """The DSDT's AML: ``Scope(_SB)`` with the PCI host bridge (q35) and one Device per
    transport, in the order given (the caller follows QEMU's order and choice of slots)."""
    devices = pci_host_bridge(pci) if pci is not None else b""
    devices += b"".join(virtio_mmio_device(e, hid) for e in entries)
    return scope("_SB", devices) if devices else b""


# --------------------------------------------------------------------------- tables


def sdt(signature: str, revision: int, body: bytes) -> bytes:
    """A description table: header with the right length and checksum, then ``body``."""
    header = SdtHeader.build(
        {
            "signature": signature.encode(),
            "length": SDT_HEADER_SIZE + len(body),
            "revision": revision,
            "checksum": 0,
            "oem_id": OEM["oem_id"].encode(),
            "oem_table_id": OEM["oem_table_id"].encode(),
            "oem_revision": OEM["oem_revision"],
            "creator_id": OEM["creator_id"].encode(),
            "creator_revision": OEM["creator_revision"],
        }
    )
    table = bytearray(header + body)
    table[9] = checksum_fix(table)
    return bytes(table)


def fadt(dsdt_address: int, *, hw_reduced: bool) -> bytes:
    body = bytearray(FADT_LENGTH - SDT_HEADER_SIZE)

    def put(offset: int, value: int, size: int) -> None:
        body[offset - SDT_HEADER_SIZE : offset - SDT_HEADER_SIZE + size] = value.to_bytes(size, "little")

    if dsdt_address < 1 << 32:
        put(FADT["dsdt32_offset"], dsdt_address, 4)
    put(FADT["x_dsdt_offset"], dsdt_address, 8)
    put(FADT["flags_offset"], FADT["hw_reduced_acpi"] if hw_reduced else 0, 4)
    put(FADT["minor_revision_offset"], REV["fadt_minor"], 1)
    return sdt(SIG["fadt"], REV["fadt"], bytes(body))


def mcfg(ecam_base: int, buses: int) -> bytes:
    alloc = McfgAllocation.build(
        {"base_address": ecam_base, "segment": 0, "start_bus": 0, "end_bus": buses - 1, "reserved": bytes(4)}
    )
    return sdt(SIG["mcfg"], REV["mcfg"], bytes(MCFG_RESERVED) + alloc)


@dataclass
class ViotTopology:
    """Who sits behind the virtio-iommu: mmio transports by base, PCI functions by
    requester id, each with its endpoint id."""

    iommu_base: int  # the virtio-iommu's own virtio-mmio transport
    mmio_endpoints: dict[int, int] = field(default_factory=dict)
    pci_endpoints: dict[int, int] = field(default_factory=dict)


def viot(topology: ViotTopology) -> bytes:
    """VIOT: a virtio-iommu (mmio) node first, then its mmio endpoints and PCI ranges."""
    iommu_offset = SDT_HEADER_SIZE + ViotHeader.sizeof()
    nodes = [
        ViotVirtioIommuMmio.build(
            {
                "header": {
                    "type": VIOT["node_virtio_iommu_mmio"],
                    "reserved": 0,
                    "length": ViotVirtioIommuMmio.sizeof(),
                },
                "reserved": bytes(4),
                "base_address": topology.iommu_base,
            }
        )
    ]
    for base, ep in sorted(topology.mmio_endpoints.items()):
        nodes.append(
            ViotMmio.build(
                {
                    "header": {"type": VIOT["node_mmio"], "reserved": 0, "length": ViotMmio.sizeof()},
                    "endpoint": ep,
                    "base_address": base,
                    "output_node": iommu_offset,
                    "reserved": bytes(6),
                }
            )
        )
    for rid, ep in sorted(topology.pci_endpoints.items()):
        nodes.append(
            ViotPciRange.build(
                {
                    "header": {
                        "type": VIOT["node_pci_range"],
                        "reserved": 0,
                        "length": ViotPciRange.sizeof(),
                    },
                    "endpoint_start": ep,
                    "segment_start": 0,
                    "segment_end": 0,
                    "bdf_start": rid,
                    "bdf_end": rid,
                    "output_node": iommu_offset,
                    "reserved": bytes(6),
                }
            )
        )
    head = ViotHeader.build({"node_count": len(nodes), "node_offset": iommu_offset, "reserved": bytes(8)})
    return sdt(SIG["viot"], REV["viot"], head + b"".join(nodes))


def xsdt(addresses: list[int]) -> bytes:
    return sdt(SIG["xsdt"], REV["xsdt"], b"".join(a.to_bytes(8, "little") for a in addresses))


def rsdp(xsdt_address: int) -> bytes:
    raw = bytearray(
        Rsdp.build(
            {
                "signature": SIG["rsdp"].encode(),
                "checksum": 0,
                "oem_id": OEM["oem_id"].encode(),
                "revision": REV["rsdp"],
                "rsdt_address": 0,
                "length": RSDP_SIZE,
                "xsdt_address": xsdt_address,
                "extended_checksum": 0,
                "reserved": bytes(3),
            }
        )
    )
    raw[8] = checksum_fix(raw[: RSDP["v1_length"]])
    raw[32] = checksum_fix(raw)
    return bytes(raw)


@dataclass
class AcpiTables:
    """Tables placed at guest-physical addresses: ``blobs`` maps address -> bytes."""

    rsdp_address: int
    blobs: dict[int, bytes]
    names: dict[str, int]  # signature -> address


@dataclass
class AcpiPlan:
    """What a machine's tables must say."""

    mmio: list[MmioDeviceEntry]
    hid: str = HID["virtio_mmio"]
    hw_reduced: bool = True
    viot: ViotTopology | None = None
    ecam: tuple[int, int] | None = None  # (base, buses) for an MCFG
    pci: PciBridgeEntry | None = None  # the host bridge Device of the DSDT


def _align(value: int) -> int:
    return -(-value // TABLE_ALIGN) * TABLE_ALIGN


def build_tables(plan: AcpiPlan, rsdp_address: int, tables_start: int, tables_end: int) -> AcpiTables:
    """Lay out DSDT, FADT, optional VIOT and MCFG, then the XSDT, from ``tables_start``."""
    blobs: dict[int, bytes] = {}
    names: dict[str, int] = {}
    at = tables_start

    def place(signature: str, table: bytes) -> int:
        nonlocal at
        if at + len(table) > tables_end:
            raise ValueError(f"ACPI tables do not fit below {tables_end:#x}")
        address = at
        blobs[address] = table
        names[signature] = address
        at = _align(at + len(table))
        return address

    dsdt_address = place(SIG["dsdt"], sdt(SIG["dsdt"], REV["dsdt"], dsdt_aml(plan.mmio, plan.hid, plan.pci)))
    listed = [place(SIG["fadt"], fadt(dsdt_address, hw_reduced=plan.hw_reduced))]
    if plan.viot is not None:
        listed.append(place(SIG["viot"], viot(plan.viot)))
    if plan.ecam is not None:
        listed.append(place(SIG["mcfg"], mcfg(*plan.ecam)))
    xsdt_address = place(SIG["xsdt"], xsdt(listed))
    blobs[rsdp_address] = rsdp(xsdt_address)
    names[SIG["rsdp"]] = rsdp_address
    return AcpiTables(rsdp_address, blobs, names)
