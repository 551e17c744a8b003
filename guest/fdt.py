"""A flattened-device-tree reader: the nodes, their compatible strings, reg and
interrupts -- what a platform-bus driver match needs.

Untrusted input: every offset and length is checked against the blob, nesting is
bounded, and anything wrong ends in :class:`FdtError` naming the place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import construct as cs

from virtio_sim.acpi_layouts import FDT, FdtHeader

MAX_FDT = 2 << 20  # QEMU's virt pads its blob to 1 MiB
MAX_DEPTH = 32
DEFAULT_ADDRESS_CELLS = 2  # the devicetree spec's defaults for a node without the props
DEFAULT_SIZE_CELLS = 1


class FdtError(Exception):
    """A device tree this guest cannot trust or read."""


@dataclass
class FdtNode:
    path: str
    props: dict[str, bytes] = field(default_factory=dict)
    reg: list[tuple[int, int]] = field(default_factory=list)

    @property
    def compatible(self) -> list[str]:
        raw = self.props.get("compatible", b"")
        return [s.decode("latin-1") for s in raw.split(b"\0") if s]

    def cells(self, name: str) -> list[int]:
        raw = self.props.get(name, b"")
        if len(raw) % 4:
            raise FdtError(f"{self.path}: property {name} is not a list of 32-bit cells")
        return list(struct.unpack(f">{len(raw) // 4}I", raw))


def fdt_size(header: bytes) -> int:
    if len(header) < FdtHeader.sizeof():
        raise FdtError("FDT: header cut short")
    h = FdtHeader.parse(header)
    if h.magic != FDT["magic"]:
        raise FdtError(f"FDT: bad magic {h.magic:#x}")
    if not FdtHeader.sizeof() <= h.totalsize <= MAX_FDT:
        raise FdtError(f"FDT: impossible total size {h.totalsize}")
    return int(h.totalsize)


def _cstr(data: bytes, at: int, end: int, what: str) -> tuple[str, int]:
    stop = data.find(b"\0", at, end)
    if stop < 0:
        raise FdtError(f"FDT: unterminated {what} at {at:#x}")
    return data[at:stop].decode("latin-1"), stop + 1


def parse_fdt(data: bytes) -> list[FdtNode]:
    """Every node, depth first, with its properties and decoded ``reg``."""
    size = fdt_size(bytes(data[: FdtHeader.sizeof()]))
    if size > len(data):
        raise FdtError(f"FDT: header claims {size} bytes, only {len(data)} present")
    try:
        h = FdtHeader.parse(data)
    except cs.ConstructError as e:
        raise FdtError(f"FDT: {e}") from None
    s_start, s_end = h.off_dt_struct, h.off_dt_struct + h.size_dt_struct
    t_start, t_end = h.off_dt_strings, h.off_dt_strings + h.size_dt_strings
    if s_end > size or t_end > size or s_start < FdtHeader.sizeof():
        raise FdtError("FDT: structure or strings block outside the blob")
    nodes: list[FdtNode] = []
    stack: list[FdtNode] = []
    at = s_start
    while True:
        if at + 4 > s_end:
            raise FdtError(f"FDT: structure block ends without FDT_END at {at:#x}")
        (token,) = struct.unpack_from(">I", data, at)
        at += 4
        if token == FDT["begin_node"]:
            name, at = _cstr(data, at, s_end, "node name")
            at = (at + 3) & ~3
            if len(stack) >= MAX_DEPTH:
                raise FdtError(f"FDT: nodes nested deeper than {MAX_DEPTH}")
            parent = stack[-1].path if stack else ""
            node = FdtNode("/" if not stack else f"{parent.rstrip('/')}/{name}")
            stack.append(node)
            nodes.append(node)
        elif token == FDT["end_node"]:
            if not stack:
                raise FdtError(f"FDT: FDT_END_NODE without a node at {at - 4:#x}")
            stack.pop()
        elif token == FDT["prop"]:
            if not stack or at + 8 > s_end:
                raise FdtError(f"FDT: property outside a node or cut short at {at - 4:#x}")
            length, nameoff = struct.unpack_from(">II", data, at)
            at += 8
            if at + length > s_end:
                raise FdtError(f"FDT: property of {length} bytes runs past the structure block")
            name, _ = _cstr(data, t_start + nameoff, t_end, "property name")
            stack[-1].props[name] = bytes(data[at : at + length])
            at = (at + length + 3) & ~3
        elif token == FDT["nop"]:
            continue
        elif token == FDT["end"]:
            if stack:
                raise FdtError("FDT: FDT_END inside a node")
            break
        else:
            raise FdtError(f"FDT: unknown token {token:#x} at {at - 4:#x}")
    _decode_reg(nodes)
    return nodes


def _decode_reg(nodes: list[FdtNode]) -> None:
    by_path = {n.path: n for n in nodes}
    for node in nodes:
        if "reg" not in node.props or node.path == "/":
            continue
        parent = by_path.get(node.path.rsplit("/", 1)[0] or "/")
        pa = parent.cells("#address-cells") if parent else []
        ps = parent.cells("#size-cells") if parent else []
        ac = pa[0] if pa else DEFAULT_ADDRESS_CELLS
        sc = ps[0] if ps else DEFAULT_SIZE_CELLS
        if not (1 <= ac <= 2 and 0 <= sc <= 2):
            raise FdtError(f"{node.path}: unsupported #address-cells {ac} / #size-cells {sc}")
        cells = node.cells("reg")
        step = ac + sc
        if len(cells) % step:
            raise FdtError(f"{node.path}: reg is not a list of ({ac}+{sc})-cell entries")
        for i in range(0, len(cells), step):
            addr = 0
            for c in cells[i : i + ac]:
                addr = addr << 32 | c
            sz = 0
            for c in cells[i + ac : i + step]:
                sz = sz << 32 | c
            node.reg.append((addr, sz))
