"""PCI on the host side: a host bridge, functions with config space, BARs, INTx and MSI-X.

This is QEMU's hw/pci in miniature, enough for virtio-pci the way a guest kernel drives it:

* :class:`PciHost` decodes configuration accesses through ECAM (one 4 KiB window per
  function) and through the x86 port pair 0xCF8/0xCFC, routes memory and I/O accesses to
  the BAR that the guest placed there, aggregates INTx lines and forwards MSI messages.
* :class:`PciFunction` owns a config space with a write mask per byte (what the guest may
  change), BARs that the guest sizes by writing all ones and places by writing an address,
  the COMMAND register (I/O, memory, bus master, INTx disable) and a capability list.
* :class:`Msix` is the MSI-X capability with its table and pending-bit array in a BAR:
  a masked vector only sets its pending bit, unmasking delivers it.
* :class:`BusMasterGate` is the address space a device's DMA goes through: with bus
  mastering disabled it refuses every access, so a device cannot touch guest memory
  before the driver allowed it.

Nothing a guest writes can crash the host: accesses of the wrong width, across a dword,
past the config space or to no function read as all ones (PCI's master abort) and are
ignored on write; BARs programmed to 0, to overlapping places or past the end of the
address space are not mapped, and each oddity is noted.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from virtio_sim.dma import AddressSpace, DmaError
from virtio_sim.layouts import (
    MSIX_CAP,
    MSIX_CAP_SIZE,
    MSIX_ENTRY,
    MSIX_ENTRY_SIZE,
    MSIX_PBA_WORD,
    PCI_BAR_SIZE,
    PCI_HEADER,
    MsixCapability,
)
from virtio_sim.spec import (
    CONF1,
    MSIX,
    PCI_BAR,
    PCI_CAP_ID,
    PCI_CFG,
    PCI_CLASS,
    PCI_CMD,
    PCI_IDS,
    PCI_STATUS,
)

log = logging.getLogger("virtio_sim.host.pci")

ACCESS_SIZES = (1, 2, 4)
ADDRESS_LIMIT = 1 << 64
DWORD = 4
BYTE_MASK = 0xFF
DWORD_MASK = 0xFFFFFFFF
MSIX_MIN_BAR = 4096  # QEMU's exclusive MSI-X BAR is at least a page

# COMMAND bits a function lets the guest change (the rest read 0).
COMMAND_WRITABLE = (
    PCI_CMD.IO | PCI_CMD.MEMORY | PCI_CMD.MASTER | PCI_CMD.PARITY | PCI_CMD.SERR | PCI_CMD.INTX_DISABLE
)


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


def pow2ceil(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


Bdf = tuple[int, int, int]


def bdf_name(bdf: Bdf) -> str:
    bus, dev, fn = bdf
    return f"{bus:02x}:{dev:02x}.{fn}"


class BarKind(enum.Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


class BarHandler(Protocol):
    """What sits behind a BAR: register reads and writes at offsets inside it."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass
class Bar:
    index: int
    size: int
    kind: BarKind
    handler: BarHandler
    prefetchable: bool = False

    @property
    def type_bits(self) -> int:
        if self.kind is BarKind.IO:
            return PCI_BAR.SPACE_IO
        bits = PCI_BAR.MEM_TYPE_64 if self.kind is BarKind.MEM64 else PCI_BAR.MEM_TYPE_32
        return bits | (PCI_BAR.MEM_PREFETCH if self.prefetchable else 0)

    @property
    def flag_mask(self) -> int:
        return PCI_BAR.io_flag_bits if self.kind is BarKind.IO else PCI_BAR.mem_flag_bits


@dataclass(frozen=True)
class MappedBar:
    function: PciFunction
    bar: Bar
    base: int

    @property
    def end(self) -> int:
        return self.base + self.bar.size


ConfigHook = Callable[[int, int], None]


@dataclass
class _Hook:
    start: int
    length: int
    on_read: ConfigHook | None = None
    on_write: ConfigHook | None = None

    def overlaps(self, offset: int, size: int) -> bool:
        return offset < self.start + self.length and self.start < offset + size


class PciFunction:
    """One PCI function: config space, BARs, capabilities, INTx, MSI-X."""

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
        name: str = "",
    ) -> None:
        self.name = name or f"{vendor_id:04x}:{device_id:04x}"
        self.config = bytearray(PCI_CFG.express_size)
        self.wmask = bytearray(PCI_CFG.express_size)
        self.bars: dict[int, Bar] = {}
        self.msix: Msix | None = None
        self.notes: list[str] = []
        self.host: PciHost | None = None
        self.bdf: Bdf = (0, 0, 0)
        self.gsi: int | None = None
        self._intx = False
        self._next_cap = PCI_CFG.first_capability
        self._hooks: list[_Hook] = []
        #: called with (old, new) COMMAND values after the guest changed it
        self.on_command_change: Callable[[int, int], None] = lambda old, new: None
        h = PCI_HEADER
        self._put(h["vendor_id"], 2, vendor_id)
        self._put(h["device_id"], 2, device_id)
        self._put(h["revision_id"], 1, revision)
        self._put(h["prog_if"], 1, class_code & BYTE_MASK)
        self._put(h["subclass"], 1, class_code >> 8 & BYTE_MASK)
        self._put(h["class_code"], 1, class_code >> 16 & BYTE_MASK)
        self._put(h["header_type"], 1, PCI_CFG.header_type_normal)
        self._put(h["subsystem_vendor_id"], 2, subsystem_vendor_id)
        self._put(h["subsystem_id"], 2, subsystem_id)
        self._put(h["interrupt_pin"], 1, interrupt_pin)
        self._put_mask(h["command"], 2, COMMAND_WRITABLE)
        for reg in ("cache_line_size", "latency_timer", "interrupt_line"):
            self._put_mask(h[reg], 1, BYTE_MASK)

    # -- raw config bytes ---------------------------------------------------------

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset : offset + size] = (value & all_ones(size)).to_bytes(size, "little")

    def _get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    def _put_mask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset : offset + size] = (mask & all_ones(size)).to_bytes(size, "little")

    def note(self, message: str) -> None:
        text = f"{bdf_name(self.bdf)} {self.name}: {message}"
        log.info("%s", text)
        self.notes.append(text)

    @property
    def command(self) -> int:
        return self._get(PCI_HEADER["command"], 2)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & PCI_CMD.MASTER)

    def force_command_bits(self, bits: int) -> None:
        """Set COMMAND bits from the device side (QEMU's legacy bus-master quirk)."""
        old = self.command
        self._put(PCI_HEADER["command"], 2, old | bits)
        self._command_written(old)

    # -- construction -------------------------------------------------------------

    def register_bar(
        self,
        index: int,
        size: int,
        kind: BarKind,
        handler: BarHandler,
        *,
        prefetchable: bool = False,
    ) -> Bar:
        if not 0 <= index < PCI_BAR.count or index in self.bars:
            raise ValueError(f"BAR {index} is out of range or already registered")
        if kind is BarKind.MEM64 and (index + 1 >= PCI_BAR.count or index + 1 in self.bars):
            raise ValueError(f"64-bit BAR {index} needs BAR {index + 1} as its upper half")
        minimum = PCI_BAR.io_flag_bits + 1 if kind is BarKind.IO else PCI_BAR.mem_flag_bits + 1
        if size < minimum or size & (size - 1):
            raise ValueError(f"BAR size {size:#x} must be a power of two >= {minimum}")
        bar = Bar(index, size, kind, handler, prefetchable)
        self.bars[index] = bar
        off = self._bar_offset(index)
        self._put(off, PCI_BAR_SIZE, bar.type_bits)
        self._put_mask(off, PCI_BAR_SIZE, ~(size - 1) & ~bar.flag_mask)
        if kind is BarKind.MEM64:
            self.bars[index + 1] = bar  # the upper half belongs to the same BAR
            self._put_mask(off + PCI_BAR_SIZE, PCI_BAR_SIZE, DWORD_MASK)
        return bar

    @staticmethod
    def _bar_offset(index: int) -> int:
        return PCI_HEADER["bar0"] + PCI_BAR_SIZE * index

    def add_capability(self, data: bytes, writable: bytes | None = None) -> int:
        """Append a capability (``data`` includes its id and next bytes); returns its offset.

        QEMU links a new capability at the head of the list; so does this.
        """
        offset = self._next_cap
        if offset + len(data) > PCI_CFG.legacy_size:
            raise ValueError("no room left for a capability in config space")
        self.config[offset : offset + len(data)] = data
        ptr = PCI_HEADER["capabilities_ptr"]
        self.config[offset + 1] = self.config[ptr]
        self.config[ptr] = offset
        status = PCI_HEADER["status"]
        self._put(status, 2, self._get(status, 2) | PCI_STATUS.CAP_LIST)
        if writable is not None:
            self.wmask[offset : offset + len(writable)] = writable
        self._next_cap = offset + ((len(data) + DWORD - 1) & ~(DWORD - 1))
        return offset

    def add_config_hook(
        self,
        start: int,
        length: int,
        *,
        on_read: ConfigHook | None = None,
        on_write: ConfigHook | None = None,
    ) -> None:
        """Run ``on_read`` before a config read of [start, start+length) is answered and
        ``on_write`` after a write to it was stored (the virtio PCI-config window)."""
        self._hooks.append(_Hook(start, length, on_read, on_write))

    # -- config space access ------------------------------------------------------

    def _config_access_ok(self, offset: int, size: int, op: str) -> bool:
        if size not in ACCESS_SIZES or offset < 0 or offset + size > len(self.config):
            self.note(f"config {op} of {size} bytes at {offset:#x} ignored")
            return False
        if offset % DWORD + size > DWORD:
            self.note(f"config {op} of {size} bytes at {offset:#x} crosses a dword (ignored)")
            return False
        return True

    def config_read(self, offset: int, size: int) -> int:
        if not self._config_access_ok(offset, size, "read"):
            return all_ones(size)
        for hook in self._hooks:
            if hook.on_read and hook.overlaps(offset, size):
                hook.on_read(offset, size)
        status = PCI_HEADER["status"]
        bits = self._get(status, 2) & ~PCI_STATUS.INTERRUPT
        self._put(status, 2, bits | (PCI_STATUS.INTERRUPT if self._intx else 0))
        return self._get(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if not self._config_access_ok(offset, size, "write"):
            return
        old_command = self.command
        old_msix = self.msix.control if self.msix else 0
        raw = (value & all_ones(size)).to_bytes(size, "little")
        for i, b in enumerate(raw):
            o = offset + i
            m = self.wmask[o]
            self.config[o] = (self.config[o] & ~m & BYTE_MASK) | (b & m)
        end = offset + size
        cmd = PCI_HEADER["command"]
        if offset < cmd + 2 and cmd < end:
            self._command_written(old_command)
        bars = self._bar_offset(0)
        if offset < bars + PCI_BAR.count * PCI_BAR_SIZE and bars < end and self.host:
            self.host.remap()
        if self.msix and self.msix.covers_control(offset, size):
            self.msix.control_written(old_msix)
        for hook in self._hooks:
            if hook.on_write and hook.overlaps(offset, size):
                hook.on_write(offset, size)

    def _command_written(self, old: int) -> None:
        new = self.command
        if old == new:
            return
        if self.host:
            self.host.remap()
        self._update_intx()
        self.on_command_change(old, new)

    # -- BAR addresses --------------------------------------------------------------

    def bar_base(self, bar: Bar) -> int | None:
        """Where the BAR decodes now, or None (decoding off, unassigned, or impossible)."""
        off = self._bar_offset(bar.index)
        raw = self._get(off, PCI_BAR_SIZE)
        if bar.kind is BarKind.IO:
            if not self.command & PCI_CMD.IO:
                return None
            base = raw & ~PCI_BAR.io_flag_bits & DWORD_MASK
            if base == 0 or base + bar.size > PCI_BAR.io_space_size:
                return None
            return base
        if not self.command & PCI_CMD.MEMORY:
            return None
        base = raw & ~PCI_BAR.mem_flag_bits & DWORD_MASK
        if bar.kind is BarKind.MEM64:
            base |= self._get(off + PCI_BAR_SIZE, PCI_BAR_SIZE) << 32
            limit = ADDRESS_LIMIT - 1  # QEMU: a BAR ending at 2^64 - 1 is unmapped
        else:
            limit = DWORD_MASK  # QEMU: a 32-bit BAR must end below 4 GiB
        if base == 0 or base + bar.size - 1 >= limit:
            return None
        return base

    def mapped_bars(self) -> list[MappedBar]:
        out = []
        for index, bar in sorted(self.bars.items()):
            if bar.index != index:
                continue  # upper half of a 64-bit BAR
            base = self.bar_base(bar)
            if base is not None:
                out.append(MappedBar(self, bar, base))
        return out

    # -- interrupts -----------------------------------------------------------------

    def set_intx(self, level: bool) -> None:
        """The device wants its INTx pin at ``level``."""
        self._intx = level
        self._update_intx()

    def _update_intx(self) -> None:
        effective = self._intx and not self.command & PCI_CMD.INTX_DISABLE
        if self.host is not None:
            self.host.set_function_irq(self, effective)

    @property
    def intx_level(self) -> bool:
        return self._intx

    def send_msi(self, address: int, data: int) -> None:
        """An MSI is a memory write by the function: no bus mastering, no message."""
        if not self.bus_master:
            self.note(f"MSI {address:#x}/{data:#x} dropped: bus mastering is disabled")
            return
        if self.host is not None:
            self.host.deliver_msi(self, address, data)


class Msix:
    """The MSI-X capability of a function, with its table and PBA at the start of a BAR
    (QEMU's msix_init_exclusive_bar layout: table at 0, PBA in the upper half)."""

    def __init__(self, function: PciFunction, vectors: int, bar_index: int) -> None:
        if not 1 <= vectors <= MSIX.max_vectors:
            raise ValueError(f"MSI-X needs 1..{MSIX.max_vectors} vectors, not {vectors}")
        self.function = function
        self.vectors = vectors
        self.bar_index = bar_index
        table_size = vectors * MSIX_ENTRY_SIZE
        bits_per_word = 8 * MSIX_PBA_WORD
        pba_size = (vectors + bits_per_word - 1) // bits_per_word * MSIX_PBA_WORD
        self.pba_size = pba_size
        bar_size = pow2ceil(max(2 * table_size, 2 * pba_size, MSIX_MIN_BAR))
        self.table_offset = 0
        self.pba_offset = bar_size // 2
        self.table = bytearray(table_size)
        for v in range(vectors):
            self._entry_put(v, "vector_control", MSIX.ENTRY_MASKED)
        self.pending = [False] * vectors
        cap = MsixCapability.build(
            {
                "cap_id": PCI_CAP_ID.MSIX,
                "cap_next": 0,
                "message_control": vectors - 1,
                "table": self.table_offset | bar_index,
                "pba": self.pba_offset | bar_index,
            }
        )
        writable = bytearray(MSIX_CAP_SIZE)
        ctl = MSIX_CAP["message_control"]
        writable[ctl : ctl + 2] = (MSIX.ENABLE | MSIX.FUNCTION_MASK).to_bytes(2, "little")
        self.cap_offset = function.add_capability(bytes(cap), bytes(writable))
        function.msix = self
        function.register_bar(bar_index, bar_size, BarKind.MEM32, self)

    # -- capability -----------------------------------------------------------------

    @property
    def control(self) -> int:
        return self.function._get(self.cap_offset + MSIX_CAP["message_control"], 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSIX.ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.control & MSIX.FUNCTION_MASK)

    def covers_control(self, offset: int, size: int) -> bool:
        ctl = self.cap_offset + MSIX_CAP["message_control"]
        return offset < ctl + 2 and ctl < offset + size

    def control_written(self, old: int) -> None:
        if old != self.control:
            self._deliver_unmasked()

    # -- table ----------------------------------------------------------------------

    def _entry_get(self, v: int, name: str) -> int:
        o = v * MSIX_ENTRY_SIZE + MSIX_ENTRY[name]
        return int.from_bytes(self.table[o : o + DWORD], "little")

    def _entry_put(self, v: int, name: str, value: int) -> None:
        o = v * MSIX_ENTRY_SIZE + MSIX_ENTRY[name]
        self.table[o : o + DWORD] = (value & DWORD_MASK).to_bytes(DWORD, "little")

    def entry_masked(self, v: int) -> bool:
        return bool(self._entry_get(v, "vector_control") & MSIX.ENTRY_MASKED)

    def is_masked(self, v: int) -> bool:
        return not self.enabled or self.function_masked or self.entry_masked(v)

    def message(self, v: int) -> tuple[int, int]:
        addr = self._entry_get(v, "msg_addr_lo") | self._entry_get(v, "msg_addr_hi") << 32
        return addr, self._entry_get(v, "msg_data")

    def notify(self, v: int) -> None:
        """The device signals vector ``v`` (QEMU's msix_notify)."""
        if not self.enabled or not 0 <= v < self.vectors:
            return
        if self.is_masked(v):
            self.pending[v] = True
            return
        self.function.send_msi(*self.message(v))

    def _deliver_unmasked(self) -> None:
        for v in range(self.vectors):
            if self.pending[v] and not self.is_masked(v):
                self.pending[v] = False
                self.function.send_msi(*self.message(v))

    # -- the BAR holding table and PBA ------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size not in (DWORD, 2 * DWORD) or offset % size:
            self.function.note(f"MSI-X: {size}-byte read at {offset:#x} ignored")
            return 0
        if offset + size <= len(self.table):
            return int.from_bytes(self.table[offset : offset + size], "little")
        rel = offset - self.pba_offset
        if rel >= 0 and rel + size <= self.pba_size:
            bits = sum(1 << v for v, p in enumerate(self.pending) if p)
            return bits >> (8 * rel) & all_ones(size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (DWORD, 2 * DWORD) or offset % size:
            self.function.note(f"MSI-X: {size}-byte write at {offset:#x} ignored")
            return
        if offset + size > len(self.table):
            if offset >= self.pba_offset:
                self.function.note(f"MSI-X: write to the read-only PBA at {offset:#x} ignored")
            return
        v = offset // MSIX_ENTRY_SIZE
        self.table[offset : offset + size] = value.to_bytes(size, "little")
        if self.pending[v] and not self.is_masked(v):
            self.pending[v] = False
            self.function.send_msi(*self.message(v))


class BusMasterGate:
    """A device's DMA path through its PCI function: refused while bus mastering is off."""

    def __init__(self, inner: AddressSpace, function: Callable[[], PciFunction | None]) -> None:
        self.inner = inner
        self._function = function
        self.name = f"bus-master({inner.name})"
        self.refusals = 0

    def _gate(self, addr: int, length: int) -> None:
        fn = self._function()
        if fn is not None and not fn.bus_master:
            self.refusals += 1
            raise DmaError(addr, length, "bus mastering is disabled (PCI COMMAND.MASTER clear)")

    def read(self, addr: int, length: int) -> bytes:
        self._gate(addr, length)
        return self.inner.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self._gate(addr, len(data))
        self.inner.write(addr, data)

    def check(self, addr: int, length: int, write: bool) -> None:
        self._gate(addr, length)
        self.inner.check(addr, length, write)


@dataclass
class PciWindows:
    """Where the guest may place BARs (what firmware tables would say)."""

    mem: tuple[int, int]  # [start, end)
    io: tuple[int, int]


@dataclass
class PciHost:
    """A host bridge: config access (ECAM and/or 0xCF8/0xCFC), BAR decoding, INTx, MSI."""

    windows: PciWindows
    ecam_base: int | None = None
    ecam_buses: int = PCI_CFG.buses
    conf1: bool = True
    irq_base: int = 0  # first interrupt line of the PIRQ swizzle
    irq_count: int = 1
    functions: dict[Bdf, PciFunction] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    irq_out: Callable[[int, bool], None] = lambda irq, level: None
    msi_out: Callable[[int, int], None] = lambda address, data: None

    def __post_init__(self) -> None:
        self.conf1_address = 0
        self._mem: list[MappedBar] = []
        self._io: list[MappedBar] = []
        self._asserted: dict[int, set[Bdf]] = {}

    # -- plugging -------------------------------------------------------------------

    def plug(self, fn: PciFunction, slot: int | None = None, function: int = 0) -> Bdf:
        if slot is None:
            slot = next(
                (s for s in range(PCI_CFG.devices_per_bus) if (0, s, function) not in self.functions),
                None,
            )
            if slot is None:
                raise ValueError("no free PCI slot on bus 0")
        if not 0 <= slot < PCI_CFG.devices_per_bus or not 0 <= function < PCI_CFG.functions_per_device:
            raise ValueError(f"PCI address {slot:#x}.{function} is out of range")
        bdf = (0, slot, function)
        if bdf in self.functions:
            raise ValueError(f"PCI address {bdf_name(bdf)} is already in use")
        fn.bdf = bdf
        fn.host = self
        pin = fn._get(PCI_HEADER["interrupt_pin"], 1)
        if pin:
            # q35-style swizzle of the four PIRQ lines; firmware writes the line register.
            fn.gsi = self.irq_base + (slot + pin - 1) % self.irq_count
            fn._put(PCI_HEADER["interrupt_line"], 1, fn.gsi)
        self.functions[bdf] = fn
        self.remap()
        return bdf

    # -- configuration access ---------------------------------------------------------

    def config_read(self, bdf: Bdf, offset: int, size: int) -> int:
        fn = self.functions.get(bdf)
        if fn is None:
            return all_ones(size)  # master abort: no function answers
        return fn.config_read(offset, size)

    def config_write(self, bdf: Bdf, offset: int, size: int, value: int) -> None:
        fn = self.functions.get(bdf)
        if fn is not None:
            fn.config_write(offset, size, value)

    def ecam_decode(self, addr: int, size: int) -> tuple[Bdf, int] | None:
        if self.ecam_base is None:
            return None
        rel = addr - self.ecam_base
        if rel < 0 or rel + size > self.ecam_buses << PCI_CFG.ecam_bus_shift:
            return None
        bus = rel >> PCI_CFG.ecam_bus_shift
        dev = rel >> PCI_CFG.ecam_device_shift & (PCI_CFG.devices_per_bus - 1)
        fn = rel >> PCI_CFG.ecam_function_shift & (PCI_CFG.functions_per_device - 1)
        return (bus, dev, fn), rel & (PCI_CFG.express_size - 1)

    def _conf1_target(self, port: int) -> tuple[Bdf, int] | None:
        a = self.conf1_address
        if not a & CONF1.ENABLE:
            return None
        bus = a >> CONF1.bus_shift & BYTE_MASK
        dev = a >> CONF1.device_shift & (PCI_CFG.devices_per_bus - 1)
        fn = a >> CONF1.function_shift & (PCI_CFG.functions_per_device - 1)
        return (bus, dev, fn), (a & CONF1.register_mask) + (port - CONF1.data_port)

    def _is_conf1(self, port: int, size: int) -> str | None:
        if not self.conf1:
            return None
        if port == CONF1.address_port and size == DWORD:
            return "address"
        if CONF1.data_port <= port and port + size <= CONF1.data_port + DWORD:
            return "data"
        return None

    # -- memory and I/O decoding --------------------------------------------------------

    def remap(self) -> None:
        mem: list[MappedBar] = []
        io: list[MappedBar] = []
        for _, fn in sorted(self.functions.items()):
            for m in fn.mapped_bars():
                target = io if m.bar.kind is BarKind.IO else mem
                clash = next((o for o in target if o.base < m.end and m.base < o.end), None)
                if clash is not None:
                    self.notes.append(
                        f"BAR {m.bar.index} of {bdf_name(fn.bdf)} at {m.base:#x} overlaps "
                        f"BAR {clash.bar.index} of {bdf_name(clash.function.bdf)}; "
                        "the earlier one wins"
                    )
                    continue
                if (
                    target is mem
                    and self.ecam_base is not None
                    and m.base < self.ecam_base + (self.ecam_buses << PCI_CFG.ecam_bus_shift)
                    and self.ecam_base < m.end
                ):
                    self.notes.append(
                        f"BAR {m.bar.index} of {bdf_name(fn.bdf)} at {m.base:#x} overlaps "
                        "the ECAM window; ECAM wins"
                    )
                target.append(m)
        self._mem, self._io = mem, io

    @staticmethod
    def _find(table: list[MappedBar], addr: int, size: int) -> MappedBar | None:
        for m in table:
            if m.base <= addr and addr + size <= m.end:
                return m
        return None

    def mmio_read(self, addr: int, size: int) -> int | None:
        """A memory read the PCI host claims (ECAM or a BAR); None if it is not ours."""
        hit = self.ecam_decode(addr, size)
        if hit is not None:
            return self.config_read(hit[0], hit[1], size)
        m = self._find(self._mem, addr, size)
        if m is None:
            return None
        return m.bar.handler.read(addr - m.base, size)

    def mmio_write(self, addr: int, size: int, value: int) -> bool:
        hit = self.ecam_decode(addr, size)
        if hit is not None:
            self.config_write(hit[0], hit[1], size, value)
            return True
        m = self._find(self._mem, addr, size)
        if m is None:
            return False
        m.bar.handler.write(addr - m.base, size, value)
        return True

    def pio_read(self, port: int, size: int) -> int | None:
        kind = self._is_conf1(port, size)
        if kind == "address":
            return self.conf1_address
        if kind == "data":
            target = self._conf1_target(port)
            if target is None:
                return all_ones(size)
            return self.config_read(target[0], target[1], size)
        m = self._find(self._io, port, size)
        if m is None:
            return None
        return m.bar.handler.read(port - m.base, size)

    def pio_write(self, port: int, size: int, value: int) -> bool:
        kind = self._is_conf1(port, size)
        if kind == "address":
            self.conf1_address = value & DWORD_MASK
            return True
        if kind == "data":
            target = self._conf1_target(port)
            if target is not None:
                self.config_write(target[0], target[1], size, value)
            return True
        m = self._find(self._io, port, size)
        if m is None:
            return False
        m.bar.handler.write(port - m.base, size, value)
        return True

    # -- interrupts ---------------------------------------------------------------------

    def set_function_irq(self, fn: PciFunction, level: bool) -> None:
        """Level-triggered, shared lines: a function's rising edge is always signalled
        (the line may already be high because of another function), the line drops only
        when no function on it is asserting any more."""
        if fn.gsi is None:
            return
        users = self._asserted.setdefault(fn.gsi, set())
        if level and fn.bdf not in users:
            users.add(fn.bdf)
            self.irq_out(fn.gsi, True)
        elif not level and fn.bdf in users:
            users.discard(fn.bdf)
            if not users:
                self.irq_out(fn.gsi, False)

    def deliver_msi(self, fn: PciFunction, address: int, data: int) -> None:
        self.msi_out(address, data)


def gpex_host_bridge() -> PciFunction:
    """00:00.0 on arm virt (QEMU's generic PCIe host, gpex-root): no BARs, no interrupts."""
    return PciFunction(
        vendor_id=PCI_IDS.redhat_vendor,
        device_id=PCI_IDS.gpex_host_bridge,
        class_code=PCI_CLASS.bridge_host,
        name="gpex host bridge",
    )


def q35_host_bridge() -> PciFunction:
    """00:00.0 on a q35 machine (the MCH): no BARs, no interrupts."""
    return PciFunction(
        vendor_id=PCI_IDS.intel_vendor,
        device_id=PCI_IDS.q35_host_bridge,
        class_code=PCI_CLASS.bridge_host,
        name="q35 host bridge",
    )
