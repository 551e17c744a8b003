"""Guest PCI: configuration access, enumeration, BAR sizing and placement, capabilities,
MSI-X.

The guest boots without firmware, so it does what SeaBIOS and Linux's PCI core do
between them: walk bus 0 (and the buses behind any bridge), read each function's ids,
size every BAR by writing all ones and reading back the mask, place the BARs in the
windows the platform described (largest first, naturally aligned), turn on memory / I/O
decoding, and walk the capability list. Bus mastering is turned on by the driver that
binds the function (Linux's pci_set_master), not here.

Configuration space is reached through ECAM (a memory window per function) or, on x86,
through the 0xCF8/0xCFC port pair (Linux's ``pci=conf1``); the address/data pair of the
latter is made atomic with a lock, like Linux's pci_config_lock.

Every value read from the device is checked before it is used: a BAR that reads back as
all ones or zero is absent, a capability walk is bounded, a BAR that does not fit its
window stays unassigned and the function cannot be enabled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import trio

from virtio_sim.guest.link import HostLink
from virtio_sim.layouts import (
    MSIX_CAP,
    MSIX_ENTRY,
    MSIX_ENTRY_SIZE,
    MSIX_PBA_WORD,
    PCI_BAR_SIZE,
    PCI_BRIDGE,
)
from virtio_sim.layouts import PCI_HEADER as H
from virtio_sim.spec import (
    CONF1,
    MSI,
    MSIX,
    PCI_BAR,
    PCI_CAP_ID,
    PCI_CFG,
    PCI_CMD,
    PCI_STATUS,
)

Bdf = tuple[int, int, int]
DWORD = 4
DWORD_MASK = 0xFFFFFFFF
PCI_CMDLINE_PARAM = "virtio_sim.pci"
_PCI_PARAM = re.compile(PCI_CMDLINE_PARAM.replace(".", r"\.") + r"=(\S+)")
_ECAM = re.compile(r"ecam@(0x[0-9a-fA-F]+|\d+)/(\d+)")
_WINDOW = re.compile(r"(mem|io)@(0x[0-9a-fA-F]+|\d+)-(0x[0-9a-fA-F]+|\d+)")


class PciError(Exception):
    """The function cannot be used (a BAR could not be placed, a capability is broken)."""


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


def bdf_name(bdf: Bdf) -> str:
    return f"{bdf[0]:02x}:{bdf[1]:02x}.{bdf[2]}"


# --------------------------------------------------------------------------- firmware info


@dataclass
class PciFirmware:
    """What ACPI (MCFG, the host bridge's _CRS) would tell the guest about PCI."""

    ecam_base: int | None
    ecam_buses: int
    mem: tuple[int, int]
    io: tuple[int, int]
    #: where the guest learned it: "cmdline" (``virtio_sim.pci=``) or "acpi" (MCFG + _CRS)
    source: str = "cmdline"
    #: the platform has somewhere to send MSIs (x86's LAPIC window; an arm machine only
    #: with a GICv2m/ITS, which our virt does not have): else INTx only, as Linux does
    msi: bool = True


def parse_pci_param(cmdline: str) -> PciFirmware | None:
    """``virtio_sim.pci=ecam@BASE/BUSES,mem@START-END,io@START-END``, or None."""
    m = _PCI_PARAM.search(cmdline)
    if m is None:
        return None
    text = m.group(1)
    ecam = _ECAM.search(text)
    windows = {w.group(1): (int(w.group(2), 0), int(w.group(3), 0)) for w in _WINDOW.finditer(text)}
    if "mem" not in windows or "io" not in windows:
        return None
    return PciFirmware(
        int(ecam.group(1), 0) if ecam else None,
        min(int(ecam.group(2)), PCI_CFG.buses) if ecam else 0,
        windows["mem"],
        windows["io"],
    )


# --------------------------------------------------------------------------- config access


class ConfigAccess(Protocol):
    name: str

    async def read(self, bdf: Bdf, offset: int, size: int) -> int: ...

    async def write(self, bdf: Bdf, offset: int, size: int, value: int) -> None: ...


class EcamAccess:
    """PCI Express enhanced configuration access: one 4 KiB window per function."""

    name = "ecam"

    def __init__(self, link: HostLink, base: int, buses: int) -> None:
        self.link = link
        self.base = base
        self.buses = buses

    def _addr(self, bdf: Bdf, offset: int) -> int:
        bus, dev, fn = bdf
        return (
            self.base
            + (bus << PCI_CFG.ecam_bus_shift)
            + (dev << PCI_CFG.ecam_device_shift)
            + (fn << PCI_CFG.ecam_function_shift)
            + offset
        )

    async def read(self, bdf: Bdf, offset: int, size: int) -> int:
        if bdf[0] >= self.buses:
            return all_ones(size)
        return await self.link.read(self._addr(bdf, offset), size)

    async def write(self, bdf: Bdf, offset: int, size: int, value: int) -> None:
        if bdf[0] < self.buses:
            await self.link.write(self._addr(bdf, offset), size, value)


class Conf1Access:
    """x86 configuration mechanism #1: an address to 0xCF8, then data at 0xCFC."""

    name = "conf1"

    def __init__(self, link: HostLink) -> None:
        self.link = link
        self._lock = trio.Lock()

    @staticmethod
    def _address(bdf: Bdf, offset: int) -> int:
        bus, dev, fn = bdf
        return (
            CONF1.ENABLE
            | bus << CONF1.bus_shift
            | dev << CONF1.device_shift
            | fn << CONF1.function_shift
            | offset & CONF1.register_mask
        )

    async def read(self, bdf: Bdf, offset: int, size: int) -> int:
        if offset >= PCI_CFG.legacy_size:
            return all_ones(size)  # conf1 reaches only the first 256 bytes
        async with self._lock:
            await self.link.pio_write(CONF1.address_port, DWORD, self._address(bdf, offset))
            return await self.link.pio_read(CONF1.data_port + offset % DWORD, size)

    async def write(self, bdf: Bdf, offset: int, size: int, value: int) -> None:
        if offset >= PCI_CFG.legacy_size:
            return
        async with self._lock:
            await self.link.pio_write(CONF1.address_port, DWORD, self._address(bdf, offset))
            await self.link.pio_write(CONF1.data_port + offset % DWORD, size, value)


# --------------------------------------------------------------------------- functions


@dataclass
class GuestBar:
    index: int
    kind: str  # "io", "mem32" or "mem64"
    size: int
    prefetchable: bool = False
    address: int = 0  # 0 = not placed

    @property
    def is_io(self) -> bool:
        return self.kind == "io"


@dataclass
class GuestPciDevice:
    bdf: Bdf
    vendor_id: int
    device_id: int
    revision: int
    class_code: int
    header_type: int
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0
    irq_line: int = 0
    irq_pin: int = 0
    bars: dict[int, GuestBar] = field(default_factory=dict)
    caps: list[tuple[int, int]] = field(default_factory=list)  # (capability id, offset)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return bdf_name(self.bdf)

    def bar(self, index: int) -> GuestBar | None:
        b = self.bars.get(index)
        return b if b is not None and b.index == index else None

    def find_caps(self, cap_id: int) -> list[int]:
        return [off for cid, off in self.caps if cid == cap_id]


class GuestPciBus:
    """Enumerates and configures the functions behind one host bridge."""

    def __init__(self, access: ConfigAccess, firmware: PciFirmware) -> None:
        self.access = access
        self.firmware = firmware
        self.devices: list[GuestPciDevice] = []
        self._mem_next = firmware.mem[0]
        # as Linux: I/O BARs stay above the legacy ports whatever the window says
        self._io_next = max(firmware.io[0], PCI_CFG.min_io)

    async def read(self, bdf: Bdf, offset: int, size: int) -> int:
        return await self.access.read(bdf, offset, size)

    async def write(self, bdf: Bdf, offset: int, size: int, value: int) -> None:
        await self.access.write(bdf, offset, size, value)

    # -- enumeration ------------------------------------------------------------------

    async def scan(self) -> list[GuestPciDevice]:
        """Walk bus 0 and every bus behind a bridge; size, place and enable the BARs."""
        buses = [0]
        seen: set[int] = set()
        while buses:
            bus = buses.pop(0)
            if bus in seen or bus >= PCI_CFG.buses:
                continue
            seen.add(bus)
            for dev in range(PCI_CFG.devices_per_bus):
                functions = 1
                for fn in range(PCI_CFG.functions_per_device):
                    if fn >= functions:
                        break
                    found = await self._probe_function((bus, dev, fn))
                    if found is None:
                        if fn == 0:
                            break
                        continue
                    if fn == 0 and found.header_type & PCI_CFG.header_type_multifunction:
                        functions = PCI_CFG.functions_per_device
                    kind = found.header_type & PCI_CFG.header_type_mask
                    if kind == PCI_CFG.header_type_bridge:
                        secondary = await self.read(found.bdf, PCI_BRIDGE["secondary_bus"], 1)
                        if secondary:
                            buses.append(secondary)
                    elif kind == PCI_CFG.header_type_normal:
                        self.devices.append(found)
        self._assign_all()
        for d in self.devices:
            await self._program_bars(d)
        return self.devices

    async def _probe_function(self, bdf: Bdf) -> GuestPciDevice | None:
        vendor = await self.read(bdf, H["vendor_id"], 2)
        if vendor in (PCI_CFG.absent_vendor, 0):
            return None
        class_rev = await self.read(bdf, H["revision_id"], DWORD)  # revision + class code
        d = GuestPciDevice(
            bdf,
            vendor,
            await self.read(bdf, H["device_id"], 2),
            class_rev & 0xFF,
            class_rev >> 8,
            await self.read(bdf, H["header_type"], 1),
        )
        if d.header_type & PCI_CFG.header_type_mask == PCI_CFG.header_type_normal:
            d.subsystem_vendor_id = await self.read(bdf, H["subsystem_vendor_id"], 2)
            d.subsystem_id = await self.read(bdf, H["subsystem_id"], 2)
            d.irq_line = await self.read(bdf, H["interrupt_line"], 1)
            d.irq_pin = await self.read(bdf, H["interrupt_pin"], 1)
            await self._size_bars(d)
            await self._walk_caps(d)
        return d

    async def _size_bars(self, d: GuestPciDevice) -> None:
        """Write all ones, read the size mask back, restore (decoding off meanwhile)."""
        cmd = await self.read(d.bdf, H["command"], 2)
        decode = PCI_CMD.IO | PCI_CMD.MEMORY
        if cmd & decode:
            await self.write(d.bdf, H["command"], 2, cmd & ~decode)
        index = 0
        while index < PCI_BAR.count:
            off = H["bar0"] + PCI_BAR_SIZE * index
            orig = await self.read(d.bdf, off, DWORD)
            await self.write(d.bdf, off, DWORD, DWORD_MASK)
            mask = await self.read(d.bdf, off, DWORD)
            await self.write(d.bdf, off, DWORD, orig)
            if mask in (0, DWORD_MASK):
                index += 1
                continue
            if mask & PCI_BAR.SPACE_IO:
                bits = mask & ~PCI_BAR.io_flag_bits & DWORD_MASK
                if bits:
                    d.bars[index] = GuestBar(index, "io", bits & -bits)
                index += 1
                continue
            kind = mask & PCI_BAR.MEM_TYPE_MASK
            bits = mask & ~PCI_BAR.mem_flag_bits & DWORD_MASK
            prefetch = bool(mask & PCI_BAR.MEM_PREFETCH)
            if kind == PCI_BAR.MEM_TYPE_64 and index + 1 < PCI_BAR.count:
                hi_off = off + PCI_BAR_SIZE
                hi_orig = await self.read(d.bdf, hi_off, DWORD)
                await self.write(d.bdf, hi_off, DWORD, DWORD_MASK)
                hi = await self.read(d.bdf, hi_off, DWORD)
                await self.write(d.bdf, hi_off, DWORD, hi_orig)
                bits |= hi << 32
                if bits:
                    bar = GuestBar(index, "mem64", bits & -bits, prefetch)
                    d.bars[index] = d.bars[index + 1] = bar
                index += 2
                continue
            if bits:
                d.bars[index] = GuestBar(index, "mem32", bits & -bits, prefetch)
            index += 1
        if cmd & decode:
            await self.write(d.bdf, H["command"], 2, cmd)

    async def _walk_caps(self, d: GuestPciDevice) -> None:
        status = await self.read(d.bdf, H["status"], 2)
        if not status & PCI_STATUS.CAP_LIST:
            return
        ptr = await self.read(d.bdf, H["capabilities_ptr"], 1) & ~(DWORD - 1)
        seen: set[int] = set()
        for _ in range(PCI_CFG.capability_ttl):
            if ptr < PCI_CFG.first_capability or ptr in seen:
                break
            seen.add(ptr)
            cap_id = await self.read(d.bdf, ptr, 1)
            if cap_id == all_ones(1):  # an absent function's config space
                break
            d.caps.append((cap_id, ptr))
            ptr = await self.read(d.bdf, ptr + 1, 1) & ~(DWORD - 1)
        else:
            d.problems.append("capability list longer than the walk allows")

    # -- resources ----------------------------------------------------------------------

    def _assign_all(self) -> None:
        """Place every BAR, largest first, naturally aligned, inside its window."""
        bars = [(d, b) for d in self.devices for i, b in sorted(d.bars.items()) if b.index == i]
        bars.sort(key=lambda db: db[1].size, reverse=True)
        for d, b in bars:
            if b.is_io:
                start, end = self._io_next, self.firmware.io[1]
            else:
                start, end = self._mem_next, self.firmware.mem[1]
            base = (start + b.size - 1) & ~(b.size - 1)
            if base + b.size > end or base == 0:
                d.problems.append(f"BAR {b.index} ({b.size:#x} bytes) does not fit its window")
                continue
            b.address = base
            if b.is_io:
                self._io_next = base + b.size
            else:
                self._mem_next = base + b.size

    async def _program_bars(self, d: GuestPciDevice) -> None:
        for i, b in sorted(d.bars.items()):
            if b.index != i or not b.address:
                continue
            off = H["bar0"] + PCI_BAR_SIZE * i
            await self.write(d.bdf, off, DWORD, b.address & DWORD_MASK)
            if b.kind == "mem64":
                await self.write(d.bdf, off + PCI_BAR_SIZE, DWORD, b.address >> 32)

    async def enable(self, d: GuestPciDevice) -> None:
        """Linux's pci_enable_device: decode the BAR types the function has; every BAR
        must have been placed."""
        missing = [b.index for i, b in d.bars.items() if b.index == i and not b.address]
        if missing:
            raise PciError(f"{d.name}: BAR {missing[0]} has no address; cannot enable")
        bits = 0
        for b in d.bars.values():
            bits |= PCI_CMD.IO if b.is_io else PCI_CMD.MEMORY
        cmd = await self.read(d.bdf, H["command"], 2)
        await self.write(d.bdf, H["command"], 2, cmd | bits)

    async def set_master(self, d: GuestPciDevice, on: bool = True) -> None:
        cmd = await self.read(d.bdf, H["command"], 2)
        new = cmd | PCI_CMD.MASTER if on else cmd & ~PCI_CMD.MASTER
        if new != cmd:
            await self.write(d.bdf, H["command"], 2, new)


# --------------------------------------------------------------------------- MSI-X


class GuestMsix:
    """A function's MSI-X table as the guest programs it (Linux's msix_capability_init)."""

    def __init__(self, bus: GuestPciBus, link: HostLink, dev: GuestPciDevice, cap: int) -> None:
        self.bus = bus
        self.link = link
        self.dev = dev
        self.cap = cap
        self.entries = 0
        self.table = 0
        self.pba = 0
        self.enabled = False

    async def probe(self) -> int:
        """Read the table size and locate table and PBA; returns the number of entries."""
        ctl = await self.bus.read(self.dev.bdf, self.cap + MSIX_CAP["message_control"], 2)
        table = await self.bus.read(self.dev.bdf, self.cap + MSIX_CAP["table"], DWORD)
        pba = await self.bus.read(self.dev.bdf, self.cap + MSIX_CAP["pba"], DWORD)
        self.entries = (ctl & MSIX.table_size_mask) + 1
        self.table = self._locate(table, self.entries * MSIX_ENTRY_SIZE)
        bits = 8 * MSIX_PBA_WORD
        self.pba = self._locate(pba, MSIX_PBA_WORD * ((self.entries + bits - 1) // bits))
        return self.entries

    def _locate(self, reg: int, length: int) -> int:
        bar = self.dev.bar(reg & MSIX.bir_mask)
        offset = reg & ~MSIX.bir_mask
        if bar is None or bar.is_io or not bar.address or offset + length > bar.size:
            raise PciError(f"{self.dev.name}: MSI-X structure is not inside a placed memory BAR")
        return bar.address + offset

    async def _control(self, set_bits: int, clear_bits: int) -> None:
        off = self.cap + MSIX_CAP["message_control"]
        ctl = await self.bus.read(self.dev.bdf, off, 2)
        await self.bus.write(self.dev.bdf, off, 2, (ctl | set_bits) & ~clear_bits)

    async def enable(self, data: list[int]) -> None:
        """Enable with everything masked, program entry i to send ``data[i]`` to the
        interrupt controller, unmask the entries, then lift the function mask."""
        await self._control(MSIX.ENABLE | MSIX.FUNCTION_MASK, 0)
        for i, value in enumerate(data[: self.entries]):
            e = self.table + i * MSIX_ENTRY_SIZE
            await self.link.write(e + MSIX_ENTRY["msg_addr_lo"], DWORD, MSI.x86_doorbell)
            await self.link.write(e + MSIX_ENTRY["msg_addr_hi"], DWORD, 0)
            await self.link.write(e + MSIX_ENTRY["msg_data"], DWORD, value)
            await self.link.write(e + MSIX_ENTRY["vector_control"], DWORD, 0)
        await self._control(0, MSIX.FUNCTION_MASK)
        self.enabled = True

    async def disable(self) -> None:
        await self._control(0, MSIX.ENABLE)
        self.enabled = False

    async def mask(self, entry: int, masked: bool) -> None:
        e = self.table + entry * MSIX_ENTRY_SIZE + MSIX_ENTRY["vector_control"]
        await self.link.write(e, DWORD, MSIX.ENTRY_MASKED if masked else 0)

    async def pending(self, entry: int) -> bool:
        bits = 8 * MSIX_PBA_WORD
        word = await self.link.read(self.pba + MSIX_PBA_WORD * (entry // bits), MSIX_PBA_WORD)
        return bool(word >> (entry % bits) & 1)


def msix_cap(dev: GuestPciDevice) -> int | None:
    found = dev.find_caps(PCI_CAP_ID.MSIX)
    return found[0] if found else None
