"""Pure ACPI parsers the guest's firmware reader uses: RSDP, XSDT/RSDT, FADT, DSDT, VIOT,
MCFG, and a small AML reader.

The AML reader understands what our host writes and what QEMU 7.2 writes around its
virtio-mmio transports and its q35 PCI host bridge (Scope, Device, Name with integers,
strings, EISA ids and resource template buffers with address space descriptors) and
steps over what it does not need by package length (Method, Field, If, Package, ...).
An opcode it cannot size ends the reading of that one term list (noted), as a driver
that only looks for its devices would do.

Every input is untrusted: a bad checksum, a short table, a length that points past the
data, an AML package that claims more bytes than its parent holds, nesting beyond
:data:`MAX_DEPTH` -- all end in :class:`AcpiError` with the place and the reason, never in
another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import construct as cs

from virtio_sim.acpi_layouts import (
    AML,
    FADT,
    MCFG_RESERVED,
    RES,
    RSDP,
    RSDP_SIZE,
    SDT_HEADER_SIZE,
    SIG,
    VIOT,
    VIOT_NODES,
    McfgAllocation,
    Rsdp,
    SdtHeader,
    ViotHeader,
    ViotNodeHeader,
    decode_pkg_length,
    sums_to_zero,
)
from virtio_sim.spec import LIMITS

MAX_DEPTH = 32  # nesting of Scope/Device/Buffer the reader follows
MAX_TABLE = LIMITS.guest.max_acpi_table  # a table longer than this is a lie (specs/limits.toml)
MAX_VIOT_NODES = 4096
MAX_PCI_RANGE = 1 << 16
# Opcodes whose body is a PkgLength-sized blob this reader skips (ACPI 6.x 20.2.5).
_SKIP_OPS = {0x12, 0x13, 0x14, 0xA0, 0xA1, 0xA2}
_SKIP_EXT_OPS = {0x81, 0x83, 0x84, 0x85, 0x86, 0x87}
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class AcpiError(Exception):
    """A firmware table this guest cannot trust or read; the message says where and why."""


@dataclass(frozen=True)
class RsdpInfo:
    revision: int
    rsdt_address: int
    xsdt_address: int
    oem_id: str


@dataclass
class AcpiDevice:
    """One ``Device`` of the namespace with the objects a driver match needs."""

    path: str
    hid: str | None = None
    uid: int | str | None = None
    cca: int | None = None
    memory: list[tuple[int, int]] = field(default_factory=list)  # (base, length)
    interrupts: list[int] = field(default_factory=list)
    cids: list[str] = field(default_factory=list)
    seg: int | None = None
    bbn: int | None = None
    # what a host bridge's _CRS produces, each range (first, last) inclusive
    bus_ranges: list[tuple[int, int]] = field(default_factory=list)
    io_windows: list[tuple[int, int]] = field(default_factory=list)
    mem_windows: list[tuple[int, int]] = field(default_factory=list)
    io_ports: list[tuple[int, int]] = field(default_factory=list)  # IO(): (base, length)
    io_translation: int = 0  # CPU address of port 0 (arm: the PIO window), from the _CRS


@dataclass
class DsdtInfo:
    devices: list[AcpiDevice]
    notes: list[str] = field(default_factory=list)  # AML this reader stepped out of


@dataclass
class ViotInfo:
    """The VIOT as the guest uses it: one virtio-iommu and its endpoints."""

    iommu_kind: str  # "mmio" | "pci"
    iommu_address: int  # mmio base, or PCI requester id
    mmio_endpoints: dict[int, int] = field(default_factory=dict)  # base -> endpoint id
    pci_endpoints: dict[int, int] = field(default_factory=dict)  # requester id -> endpoint id
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- tables


def _parse(structure: cs.Construct, data: bytes, what: str) -> Any:
    try:
        return structure.parse(data)
    except cs.ConstructError as e:
        raise AcpiError(f"{what}: cannot parse ({e})") from None


def parse_rsdp(data: bytes) -> RsdpInfo:
    """Check the RSDP's signature and checksums (the extended one from revision 2 on)."""
    if len(data) < RSDP["v1_length"]:
        raise AcpiError(f"RSDP: {len(data)} bytes, need {RSDP['v1_length']}")
    if data[:8] != SIG["rsdp"].encode():
        raise AcpiError("RSDP: no 'RSD PTR ' signature")
    if not sums_to_zero(data[: RSDP["v1_length"]]):
        raise AcpiError("RSDP: bad checksum")
    raw = bytes(data[:RSDP_SIZE]).ljust(RSDP_SIZE, b"\0")
    r = _parse(Rsdp, raw, "RSDP")
    if r.revision >= 2:
        if len(data) < RSDP_SIZE or r.length < RSDP_SIZE:
            raise AcpiError(f"RSDP: revision {r.revision} but only {min(len(data), r.length)} bytes")
        if not sums_to_zero(data[:RSDP_SIZE]):
            raise AcpiError("RSDP: bad extended checksum")
        return RsdpInfo(r.revision, r.rsdt_address, r.xsdt_address, r.oem_id.decode("latin-1"))
    return RsdpInfo(r.revision, r.rsdt_address, 0, r.oem_id.decode("latin-1"))


def table_length(header: bytes, where: str = "") -> int:
    """The length a table's header claims, refused when it cannot be true."""
    if len(header) < SDT_HEADER_SIZE:
        raise AcpiError(f"table{where}: header cut short ({len(header)} bytes)")
    length = int.from_bytes(header[4:8], "little")
    sig = header[:4].decode("latin-1")
    if not SDT_HEADER_SIZE <= length <= MAX_TABLE:
        raise AcpiError(f"{sig}{where}: impossible length {length}")
    return length


def parse_sdt(data: bytes, signature: str | None = None) -> tuple[str, int, bytes]:
    """(signature, revision, body) of a whole table, its length and checksum checked."""
    length = table_length(data)
    h = _parse(SdtHeader, bytes(data[:SDT_HEADER_SIZE]), "table header")
    sig = h.signature.decode("latin-1")
    if signature is not None and sig != signature:
        raise AcpiError(f"expected a {signature} table, found {sig!r}")
    if length > len(data):
        raise AcpiError(f"{sig}: header claims {length} bytes, only {len(data)} present")
    table = bytes(data[:length])
    if not sums_to_zero(table):
        raise AcpiError(f"{sig}: bad checksum")
    return sig, h.revision, table[SDT_HEADER_SIZE:]


def parse_root(data: bytes) -> list[int]:
    """The table addresses of an XSDT (8 bytes each) or RSDT (4 bytes each)."""
    sig, _, body = parse_sdt(data)
    width = {SIG["xsdt"]: 8, SIG["rsdt"]: 4}.get(sig)
    if width is None:
        raise AcpiError(f"expected an XSDT or RSDT, found {sig!r}")
    if len(body) % width:
        raise AcpiError(f"{sig}: body of {len(body)} bytes is not a list of {width}-byte addresses")
    return [int.from_bytes(body[i : i + width], "little") for i in range(0, len(body), width)]


def parse_fadt(data: bytes) -> int:
    """The DSDT address: X_DSDT when the FADT is long enough and sets it, else DSDT."""
    _, _, body = parse_sdt(data, SIG["fadt"])
    table = bytes(SDT_HEADER_SIZE) + body
    x_at, d_at = FADT["x_dsdt_offset"], FADT["dsdt32_offset"]
    x_dsdt = int.from_bytes(table[x_at : x_at + 8], "little") if len(table) >= x_at + 8 else 0
    dsdt = int.from_bytes(table[d_at : d_at + 4], "little") if len(table) >= d_at + 4 else 0
    if not (x_dsdt or dsdt):
        raise AcpiError("FACP: no DSDT address")
    return x_dsdt or dsdt


def parse_mcfg(data: bytes) -> list[tuple[int, int, int, int]]:
    """(ECAM base, segment, first bus, last bus) per allocation."""
    _, _, body = parse_sdt(data, SIG["mcfg"])
    size = McfgAllocation.sizeof()
    rest = body[MCFG_RESERVED:]
    if len(body) < MCFG_RESERVED or len(rest) % size:
        raise AcpiError(f"MCFG: {len(body)} body bytes is not reserved + allocations")
    out = []
    for i in range(0, len(rest), size):
        a = McfgAllocation.parse(rest[i : i + size])
        if a.end_bus < a.start_bus:
            raise AcpiError(f"MCFG: bus range {a.start_bus}-{a.end_bus} is empty")
        out.append((a.base_address, a.segment, a.start_bus, a.end_bus))
    return out


def parse_viot(data: bytes) -> ViotInfo:
    """The virtio-iommu and its endpoints. Every node must lie inside the table and every
    endpoint must point at a virtio-iommu node; one IOMMU is used (others are noted)."""
    _, _, body = parse_sdt(data, SIG["viot"])
    table = bytes(SDT_HEADER_SIZE) + body
    if len(body) < ViotHeader.sizeof():
        raise AcpiError("VIOT: header cut short")
    head = ViotHeader.parse(body)
    if head.node_count > MAX_VIOT_NODES:
        raise AcpiError(f"VIOT: {head.node_count} nodes")
    nodes: dict[int, Any] = {}
    at = head.node_offset
    for index in range(head.node_count):
        if at + ViotNodeHeader.sizeof() > len(table):
            raise AcpiError(f"VIOT: node {index} at {at:#x} lies past the end ({len(table)} bytes)")
        nh = ViotNodeHeader.parse(table[at:])
        if nh.length < ViotNodeHeader.sizeof() or at + nh.length > len(table):
            raise AcpiError(f"VIOT: node {index} at {at:#x} has a bad length {nh.length}")
        layout = VIOT_NODES.get(nh.type)
        if layout is not None:
            if nh.length < layout.sizeof():
                raise AcpiError(
                    f"VIOT: node {index} type {nh.type} is {nh.length} bytes, need {layout.sizeof()}"
                )
            nodes[at] = layout.parse(table[at : at + nh.length])
        at += nh.length
    iommus = {
        off: n
        for off, n in nodes.items()
        if n.header.type in (VIOT["node_virtio_iommu_mmio"], VIOT["node_virtio_iommu_pci"])
    }
    if not iommus:
        raise AcpiError("VIOT: no virtio-iommu node")
    chosen = min(iommus)
    node = iommus[chosen]
    if node.header.type == VIOT["node_virtio_iommu_mmio"]:
        info = ViotInfo("mmio", node.base_address)
    else:
        info = ViotInfo("pci", node.bdf)
    if len(iommus) > 1:
        info.notes.append(f"VIOT: {len(iommus)} virtio-iommu nodes; endpoints of the first are used")
    for off, n in sorted(nodes.items()):
        t = n.header.type
        if t not in (VIOT["node_mmio"], VIOT["node_pci_range"]):
            continue
        if n.output_node not in iommus:
            raise AcpiError(
                f"VIOT: endpoint node at {off:#x} points at {n.output_node:#x}, not a virtio-iommu"
            )
        if n.output_node != chosen:
            continue
        if t == VIOT["node_mmio"]:
            info.mmio_endpoints[n.base_address] = n.endpoint
            continue
        if n.bdf_end < n.bdf_start or n.segment_start != 0 or n.segment_end != 0:
            raise AcpiError(f"VIOT: PCI range node at {off:#x} is empty or outside segment 0")
        for rid in range(n.bdf_start, min(n.bdf_end, MAX_PCI_RANGE - 1) + 1):
            info.pci_endpoints[rid] = n.endpoint_start + rid - n.bdf_start
    return info


# --------------------------------------------------------------------------- AML


class _Unsupported(Exception):
    """An opcode this reader cannot size: the enclosing term list is left."""


class _Aml:
    def __init__(self, code: bytes, base: int) -> None:
        self.code = code
        self.base = base  # offset of code[0] in the table, for messages
        self.notes: list[str] = []

    def byte(self, at: int, end: int) -> int:
        if at >= end:
            raise AcpiError(f"DSDT: AML cut short at offset {self.base + at:#x}")
        return self.code[at]

    def pkg(self, at: int, end: int) -> tuple[int, int]:
        """(body start, body end) of a PkgLength at ``at``, inside ``end``."""
        self.byte(at, end)
        try:
            length, used = decode_pkg_length(self.code[:end], at)
        except IndexError:
            raise AcpiError(f"DSDT: package length cut short at {self.base + at:#x}") from None
        if length < used or at + length > end:
            raise AcpiError(
                f"DSDT: package at {self.base + at:#x} claims {length} bytes, {end - at} left in its parent"
            )
        return at + used, at + length

    def name_string(self, at: int, end: int) -> tuple[str, int]:
        prefix = ""
        while self.byte(at, end) in (AML["root_char"], AML["parent_prefix"]):
            prefix += chr(self.code[at])
            at += 1
        lead = self.byte(at, end)
        if lead == AML["null_name"]:
            return prefix, at + 1
        if lead == AML["dual_name_prefix"]:
            count, at = 2, at + 1
        elif lead == AML["multi_name_prefix"]:
            count, at = self.byte(at + 1, end), at + 2
        else:
            count = 1
        segs = []
        for _ in range(count):
            seg = self.code[at : at + 4]
            if at + 4 > end or len(seg) < 4 or not set(seg) <= _NAME_CHARS:
                raise AcpiError(f"DSDT: bad name segment at {self.base + at:#x}")
            segs.append(seg.decode().rstrip("_") or "_")
            at += 4
        return prefix + ".".join(segs), at

    def data(self, at: int, end: int, depth: int) -> tuple[Any, int]:
        op = self.byte(at, end)
        sizes = {AML["byte_prefix"]: 1, AML["word_prefix"]: 2, AML["dword_prefix"]: 4, AML["qword_prefix"]: 8}
        if op in (AML["zero_op"], AML["one_op"]):
            return op, at + 1
        if op == AML["ones_op"]:
            return (1 << 64) - 1, at + 1
        if op in sizes:
            n = sizes[op]
            if at + 1 + n > end:
                raise AcpiError(f"DSDT: integer cut short at {self.base + at:#x}")
            return int.from_bytes(self.code[at + 1 : at + 1 + n], "little"), at + 1 + n
        if op == AML["string_prefix"]:
            stop = self.code.find(b"\0", at + 1, end)
            if stop < 0:
                raise AcpiError(f"DSDT: unterminated string at {self.base + at:#x}")
            raw = self.code[at + 1 : stop]
            if not raw.isascii():
                raise AcpiError(f"DSDT: string at {self.base + at:#x} is not ASCII")
            return raw.decode(), stop + 1
        if op == AML["buffer_op"]:
            start, stop = self.pkg(at + 1, end)
            size, data_at = self.data(start, stop, depth + 1)
            if not isinstance(size, int):
                raise AcpiError(f"DSDT: buffer size at {self.base + start:#x} is not an integer")
            return bytes(self.code[data_at : min(stop, data_at + size)]), stop
        if op in (AML["package_op"], AML["var_package_op"]):
            return None, self.pkg(at + 1, end)[1]
        raise _Unsupported(f"data opcode {op:#04x} at {self.base + at:#x}")

    def terms(
        self, at: int, end: int, scope: str, depth: int, out: list[AcpiDevice], dev: AcpiDevice | None
    ) -> None:
        if depth > MAX_DEPTH:
            raise AcpiError(f"DSDT: AML nested deeper than {MAX_DEPTH} at {self.base + at:#x}")
        try:
            while at < end:
                at = self.term(at, end, scope, depth, out, dev)
        except _Unsupported as e:
            where = scope or "\\"
            self.notes.append(f"{where}: stopped reading at {e}")

    def term(
        self, at: int, end: int, scope: str, depth: int, out: list[AcpiDevice], dev: AcpiDevice | None
    ) -> int:
        op = self.byte(at, end)
        if op == AML["scope_op"]:
            start, stop = self.pkg(at + 1, end)
            nm, body = self.name_string(start, stop)
            path = _join(scope, nm)
            # Scope(\\_SB.PCI0) { Name(_CRS, ...) } adds objects to a Device declared
            # earlier (QEMU's q35 writes its host bridge's _CRS that way).
            known = next((d for d in out if d.path == path), None)
            self.terms(body, stop, path, depth + 1, out, known)
            return stop
        if op == AML["name_op"]:
            nm, at = self.name_string(at + 1, end)
            value, at = self.data(at, end, depth + 1)
            if dev is not None:
                _set_object(dev, nm, value, self)
            return at
        if op in _SKIP_OPS:
            return self.pkg(at + 1, end)[1]
        if op == AML["ext_op_prefix"]:
            ext = self.byte(at + 1, end)
            if ext == AML["ext_device_op"]:
                start, stop = self.pkg(at + 2, end)
                nm, body = self.name_string(start, stop)
                child = AcpiDevice(_join(scope, nm))
                out.append(child)
                self.terms(body, stop, child.path, depth + 1, out, child)
                return stop
            if ext in _SKIP_EXT_OPS:
                return self.pkg(at + 2, end)[1]
            if ext == AML["ext_mutex_op"]:
                _, at = self.name_string(at + 2, end)
                self.byte(at, end)  # sync level
                return at + 1
            if ext == AML["ext_event_op"]:
                return self.name_string(at + 2, end)[1]
            if ext == AML["ext_op_region_op"]:
                _, at = self.name_string(at + 2, end)
                self.byte(at, end)  # region space
                _, at = self.data(at + 1, end, depth + 1)
                _, at = self.data(at, end, depth + 1)
                return at
            raise _Unsupported(f"opcode 0x5b {ext:#04x} at {self.base + at:#x}")
        raise _Unsupported(f"opcode {op:#04x} at {self.base + at:#x}")


def _join(scope: str, name: str) -> str:
    if name.startswith("\\"):
        return name
    return f"{scope}.{name}" if scope else f"\\{name}"


def eisa_id(value: int) -> str:
    """A compressed EISA id (``EisaId("PNP0B00")``) as its 7-character string."""
    b = value.to_bytes(4, "little")
    letters = ((b[0] >> 2) & 0x1F, (b[0] & 0x3) << 3 | b[1] >> 5, b[1] & 0x1F)
    return "".join(chr(0x40 + c) for c in letters) + f"{b[2]:02X}{b[3]:02X}"


def _set_object(dev: AcpiDevice, nm: str, value: Any, aml: _Aml) -> None:
    seg = nm.rsplit(".", 1)[-1]
    if seg == "_HID":
        if isinstance(value, int) and value < 1 << 32:
            dev.hid = eisa_id(value)
        elif isinstance(value, str):
            dev.hid = value
        else:
            raise AcpiError(f"DSDT: {dev.path}._HID is neither a string nor an EISA id")
    elif seg == "_CID":
        if isinstance(value, int) and value < 1 << 32:
            dev.cids.append(eisa_id(value))
        elif isinstance(value, str):
            dev.cids.append(value)
        # a Package of ids is stepped over (none of the bridges read here use one)
    elif seg == "_UID" and isinstance(value, int | str):
        dev.uid = value
    elif seg in ("_SEG", "_BBN") and isinstance(value, int):
        setattr(dev, seg[1:].lower(), value)
    elif seg == "_CCA" and isinstance(value, int):
        dev.cca = value
    elif seg == "_CRS":
        if not isinstance(value, bytes):
            raise AcpiError(f"DSDT: {dev.path}._CRS is not a resource template buffer")
        parse_resources(value, dev)


def parse_resources(data: bytes, dev: AcpiDevice) -> None:
    """Memory32Fixed, Extended Interrupt, IRQ, IO and address space (Word/DWord/QWord)
    descriptors of a _CRS buffer (others skipped)."""
    at = 0
    while at < len(data):
        tag = data[at]
        if tag & RES["large_item"]:
            if at + 3 > len(data):
                raise AcpiError(f"{dev.path}._CRS: large descriptor cut short at {at}")
            length = int.from_bytes(data[at + 1 : at + 3], "little")
            body = data[at + 3 : at + 3 + length]
            if len(body) < length:
                raise AcpiError(
                    f"{dev.path}._CRS: descriptor {tag:#04x} claims {length} bytes, {len(body)} left"
                )
            if tag == RES["memory32_fixed"]:
                if length < RES["memory32_fixed_length"]:
                    raise AcpiError(f"{dev.path}._CRS: Memory32Fixed of {length} bytes")
                dev.memory.append((int.from_bytes(body[1:5], "little"), int.from_bytes(body[5:9], "little")))
            elif tag in _ADDRESS_WIDTH:
                _address_space(dev, tag, body)
            elif tag == RES["extended_interrupt"]:
                count = body[1] if length >= 2 else 0
                if length < 2 + 4 * count or count == 0:
                    raise AcpiError(
                        f"{dev.path}._CRS: Extended Interrupt with {count} entries in {length} bytes"
                    )
                dev.interrupts += [
                    int.from_bytes(body[2 + 4 * i : 6 + 4 * i], "little") for i in range(count)
                ]
            at += 3 + length
            continue
        kind, length = tag >> 3 & 0xF, tag & 0x7
        if at + 1 + length > len(data):
            raise AcpiError(f"{dev.path}._CRS: small descriptor {tag:#04x} cut short at {at}")
        if kind == RES["end_tag"] >> 3:
            return
        if tag == RES["io_port"]:
            # IO(Decode16, min, max, align, length): a fixed range of ports the device decodes
            dev.io_ports.append((int.from_bytes(data[at + 2 : at + 4], "little"), data[at + 7]))
        if kind == RES["irq_small"] and length >= 2:
            mask = int.from_bytes(data[at + 1 : at + 3], "little")
            dev.interrupts += [i for i in range(16) if mask >> i & 1]
        at += 1 + length
    raise AcpiError(f"{dev.path}._CRS: no end tag")


_ADDRESS_WIDTH = {RES["word_address"]: 2, RES["dword_address"]: 4, RES["qword_address"]: 8}
_ADDRESS_FIELDS = 5  # granularity, minimum, maximum, translation offset, length
_ADDRESS_HEAD = 3  # resource type, general flags, type-specific flags


def _address_space(dev: AcpiDevice, tag: int, body: bytes) -> None:
    """WordBusNumber / WordIO / DWordMemory / QWordMemory (ACPI 6.x 6.4.3.5): the range
    [minimum, maximum] (plus the translation offset) goes to the list its type names."""
    width = _ADDRESS_WIDTH[tag]
    need = _ADDRESS_HEAD + _ADDRESS_FIELDS * width
    if len(body) < need:
        raise AcpiError(f"{dev.path}._CRS: address descriptor {tag:#04x} of {len(body)} bytes, need {need}")
    values = [
        int.from_bytes(body[_ADDRESS_HEAD + i * width : _ADDRESS_HEAD + (i + 1) * width], "little")
        for i in range(_ADDRESS_FIELDS)
    ]
    _, low, high, offset, length = values
    if high < low or (length and length != high - low + 1):
        raise AcpiError(
            f"{dev.path}._CRS: address range {low:#x}-{high:#x} with length {length:#x} is inconsistent"
        )
    kind = body[0]
    # bus-side ranges (what BARs hold); the CPU sees them at range + translation offset
    if kind == RES["space_memory"]:
        dev.mem_windows.append((low + offset, high + offset))
    elif kind == RES["space_io"]:
        dev.io_windows.append((low, high))
        dev.io_translation = offset or dev.io_translation
    elif kind == RES["space_bus"]:
        dev.bus_ranges.append((low, high))


def parse_dsdt(data: bytes) -> DsdtInfo:
    """Every Device of a DSDT (or SSDT) with its _HID, _UID, _CCA and _CRS resources."""
    sig, _, body = parse_sdt(data)
    if sig not in ("DSDT", "SSDT"):
        raise AcpiError(f"expected a DSDT, found {sig!r}")
    aml = _Aml(body, SDT_HEADER_SIZE)
    devices: list[AcpiDevice] = []
    aml.terms(0, len(body), "", 0, devices, None)
    return DsdtInfo(devices, aml.notes)
