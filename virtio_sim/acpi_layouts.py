"""ACPI table and flattened-device-tree layouts, declared once with construct.

Both sides use these: the host builds its tables from them, the guest parses QEMU's and
ours with them. The numbers (signatures, revisions, offsets, node types) are data in
specs/acpi.toml; this module holds only the shapes and the two encodings every table
writer and reader needs (checksums, AML package lengths).
"""

from __future__ import annotations

from typing import Any

import construct as cs

from virtio_sim.spec import load_toml

ACPI: dict[str, Any] = load_toml("acpi.toml")
SIG = ACPI["signatures"]
REV = ACPI["revisions"]
OEM = ACPI["oem"]
AML = ACPI["aml"]
RES = ACPI["resources"]
VIOT = ACPI["viot"]
FADT = ACPI["fadt"]
RSDP = ACPI["rsdp"]
HID = ACPI["hid"]
FDT = ACPI["fdt"]
PCI0 = ACPI["pci0"]

#: Every ACPI description table starts with this header (ACPI 6.x 5.2.6).
SdtHeader = cs.Struct(
    "signature" / cs.Bytes(4),
    "length" / cs.Int32ul,
    "revision" / cs.Int8ul,
    "checksum" / cs.Int8ul,
    "oem_id" / cs.Bytes(6),
    "oem_table_id" / cs.Bytes(8),
    "oem_revision" / cs.Int32ul,
    "creator_id" / cs.Bytes(4),
    "creator_revision" / cs.Int32ul,
)
SDT_HEADER_SIZE: int = SdtHeader.sizeof()

#: Root System Description Pointer (ACPI 2.0+: 36 bytes; 1.0: the first 20).
Rsdp = cs.Struct(
    "signature" / cs.Bytes(8),
    "checksum" / cs.Int8ul,
    "oem_id" / cs.Bytes(6),
    "revision" / cs.Int8ul,
    "rsdt_address" / cs.Int32ul,
    "length" / cs.Int32ul,
    "xsdt_address" / cs.Int64ul,
    "extended_checksum" / cs.Int8ul,
    "reserved" / cs.Bytes(3),
)
RSDP_SIZE: int = Rsdp.sizeof()

#: VIOT: the header after the SDT header, then nodes that each start with NodeHeader.
ViotHeader = cs.Struct("node_count" / cs.Int16ul, "node_offset" / cs.Int16ul, "reserved" / cs.Bytes(8))
ViotNodeHeader = cs.Struct("type" / cs.Int8ul, "reserved" / cs.Int8ul, "length" / cs.Int16ul)
ViotPciRange = cs.Struct(
    "header" / ViotNodeHeader,
    "endpoint_start" / cs.Int32ul,
    "segment_start" / cs.Int16ul,
    "segment_end" / cs.Int16ul,
    "bdf_start" / cs.Int16ul,
    "bdf_end" / cs.Int16ul,
    "output_node" / cs.Int16ul,
    "reserved" / cs.Bytes(6),
)
ViotMmio = cs.Struct(
    "header" / ViotNodeHeader,
    "endpoint" / cs.Int32ul,
    "base_address" / cs.Int64ul,
    "output_node" / cs.Int16ul,
    "reserved" / cs.Bytes(6),
)
ViotVirtioIommuPci = cs.Struct(
    "header" / ViotNodeHeader, "segment" / cs.Int16ul, "bdf" / cs.Int16ul, "reserved" / cs.Bytes(8)
)
ViotVirtioIommuMmio = cs.Struct(
    "header" / ViotNodeHeader, "reserved" / cs.Bytes(4), "base_address" / cs.Int64ul
)
VIOT_NODES: dict[int, cs.Construct] = {
    VIOT["node_pci_range"]: ViotPciRange,
    VIOT["node_mmio"]: ViotMmio,
    VIOT["node_virtio_iommu_pci"]: ViotVirtioIommuPci,
    VIOT["node_virtio_iommu_mmio"]: ViotVirtioIommuMmio,
}

#: MCFG allocation entry (PCI Firmware spec): one ECAM window.
McfgAllocation = cs.Struct(
    "base_address" / cs.Int64ul,
    "segment" / cs.Int16ul,
    "start_bus" / cs.Int8ul,
    "end_bus" / cs.Int8ul,
    "reserved" / cs.Bytes(4),
)
MCFG_RESERVED = 8  # between the SDT header and the allocations

#: Resource descriptors of a _CRS buffer (ACPI 6.x 6.4).
Memory32Fixed = cs.Struct(
    "tag" / cs.Int8ul, "length" / cs.Int16ul, "info" / cs.Int8ul, "base" / cs.Int32ul, "size" / cs.Int32ul
)
ExtendedInterruptHead = cs.Struct(
    "tag" / cs.Int8ul, "length" / cs.Int16ul, "flags" / cs.Int8ul, "count" / cs.Int8ul
)

#: Flattened device tree header (devicetree spec 5.2), big-endian.
FdtHeader = cs.Struct(
    "magic" / cs.Int32ub,
    "totalsize" / cs.Int32ub,
    "off_dt_struct" / cs.Int32ub,
    "off_dt_strings" / cs.Int32ub,
    "off_mem_rsvmap" / cs.Int32ub,
    "version" / cs.Int32ub,
    "last_comp_version" / cs.Int32ub,
    "boot_cpuid_phys" / cs.Int32ub,
    "size_dt_strings" / cs.Int32ub,
    "size_dt_struct" / cs.Int32ub,
)


def checksum_fix(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte counted as 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def sums_to_zero(data: bytes | bytearray) -> bool:
    return sum(data) & 0xFF == 0


def encode_pkg_length(body_length: int) -> bytes:
    """AML PkgLength for a body of ``body_length`` bytes (the length counts itself)."""
    for extra in range(AML["pkg_max_follow"] + 1):
        total = body_length + 1 + extra
        if extra == 0:
            if total <= AML["pkg_max_one_byte"]:
                return bytes([total])
            continue
        if total < 1 << (4 + 8 * extra):
            lead = extra << 6 | (total & 0xF)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([lead]) + rest
    raise ValueError(f"AML package of {body_length} bytes is too long to encode")


def decode_pkg_length(data: bytes, at: int) -> tuple[int, int]:
    """(package length, bytes the encoding took) at ``data[at]``; IndexError if cut short."""
    lead = data[at]
    follow = lead >> 6
    if follow == 0:
        return lead & 0x3F, 1
    value = lead & 0x0F
    for i in range(follow):
        value |= data[at + 1 + i] << (4 + 8 * i)
    return value, 1 + follow
