"""What a virtio-pci function shows a guest before any driver touches it (its ABI).

The guest-visible ABI of a device generation is what migration between QEMU versions must
keep, and what QEMU's compat machine types (``pc-i440fx-X.Y``, ``pc-q35-X.Y``) preserve:
PCI ids, revision and subsystem ids, the feature word(s) of each interface, each queue's
maximum size and the config-space bytes. :func:`probe_pci` reads all of them through
nothing but port I/O and memory accesses, as firmware and a driver's probe would, so the
same function reads QEMU (under qtest) and our host (embedded) and the two results can be
compared field by field.

Reading never changes the device: the probe resets it (status 0) and reads; it writes
only BARs, the command register and the feature/queue select registers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from virtio_sim.layouts import MMIO_CONFIG_OFFSET, MMIO_OFFSETS, PCI_HEADER
from virtio_sim.spec import CONF1, MMIO

DWORD = 4
#: where the probe places BARs (below the IOAPIC, above any RAM a probe machine has)
IO_BASE = 0xC000
IO_STRIDE = 0x100
MEM_BASE = 0xE0000000
MEM_STRIDE = 0x1000000
PCI_COMMAND_IO_MEM = 0x3
PCI_STATUS_CAP_LIST = 0x10
PCI_CAP_ID_VNDR = 0x09
BAR0 = 0x10
BAR_COUNT = 6
# virtio-pci capability types (virtio 1.4 section 4.1.4) and the legacy header (4.1.4.10)
CAP_COMMON, CAP_NOTIFY, CAP_DEVICE = 1, 2, 4
NOTIFY_MULTIPLIER_OFFSET = 16  # virtio_pci_notify_cap.notify_off_multiplier
COMMON_DFSELECT, COMMON_DF, COMMON_NUMQ, COMMON_QSELECT, COMMON_QSIZE = 0x0, 0x4, 0x12, 0x16, 0x18
LEGACY_HOST_FEATURES, LEGACY_QNUM, LEGACY_QSEL, LEGACY_STATUS = 0, 12, 14, 18
LEGACY_CONFIG_NO_MSIX = 20
MAX_QUEUES = 64
#: config bytes compared: every device type's config struct fits (blk is 60 bytes in 7.2)
CONFIG_BYTES = 64


class Bus(Protocol):
    """Port and memory access, as QEMU's qtest client and our machine both provide."""

    def pio_read(self, port: int, size: int) -> int: ...

    def pio_write(self, port: int, size: int, value: int) -> None: ...

    def read(self, addr: int, size: int) -> int: ...

    def write(self, addr: int, size: int, value: int) -> None: ...


@dataclass
class PciAbi:
    """One function's guest-visible ABI (None: the interface does not exist)."""

    slot: int
    vendor_id: int
    device_id: int
    revision: int
    subsystem_vendor_id: int
    subsystem_id: int
    class_code: int
    legacy_features: int | None = None
    legacy_queue_sizes: list[int] = field(default_factory=list)
    legacy_config: bytes = b""
    modern_features: int | None = None
    modern_queue_sizes: list[int] = field(default_factory=list)
    modern_config: bytes = b""
    notify_off_multiplier: int | None = None

    def fields(self) -> dict[str, object]:
        """Every compared field by name (config as hex, feature words as hex)."""
        out: dict[str, object] = {
            "vendor_id": hex(self.vendor_id),
            "device_id": hex(self.device_id),
            "revision": self.revision,
            "subsystem_vendor_id": hex(self.subsystem_vendor_id),
            "subsystem_id": hex(self.subsystem_id),
            "class_code": hex(self.class_code),
        }
        if self.legacy_features is not None:
            out["legacy.features"] = hex(self.legacy_features)
            out["legacy.queue_sizes"] = self.legacy_queue_sizes
            out["legacy.config"] = self.legacy_config.hex()
        if self.modern_features is not None:
            out["modern.features"] = hex(self.modern_features)
            out["modern.queue_sizes"] = self.modern_queue_sizes
            out["modern.config"] = self.modern_config.hex()
            out["modern.notify_off_multiplier"] = self.notify_off_multiplier
        return out


class _Cfg:
    def __init__(self, bus: Bus, slot: int) -> None:
        self.bus, self.slot = bus, slot

    def _addr(self, offset: int) -> int:
        return CONF1.ENABLE | self.slot << CONF1.device_shift | offset & CONF1.register_mask

    def read(self, offset: int, size: int) -> int:
        self.bus.pio_write(CONF1.address_port, DWORD, self._addr(offset))
        return self.bus.pio_read(CONF1.data_port + offset % DWORD, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.bus.pio_write(CONF1.address_port, DWORD, self._addr(offset))
        self.bus.pio_write(CONF1.data_port + offset % DWORD, size, value)


def _assign_bars(cfg: _Cfg, slot: int) -> dict[int, tuple[bool, int]]:
    """Size and place every BAR as firmware would; index -> (is_io, address)."""
    bars: dict[int, tuple[bool, int]] = {}
    io_next, mem_next = IO_BASE + slot * IO_STRIDE, MEM_BASE + slot * MEM_STRIDE
    index = 0
    while index < BAR_COUNT:
        reg = BAR0 + index * DWORD
        orig = cfg.read(reg, DWORD)
        cfg.write(reg, DWORD, 0xFFFFFFFF)
        mask = cfg.read(reg, DWORD)
        if mask in (0, 0xFFFFFFFF) and orig == 0:
            index += 1
            continue
        if orig & 1:  # I/O
            size = (~(mask & ~0x3) & 0xFFFF) + 1
            io_next = (io_next + size - 1) & ~(size - 1)
            cfg.write(reg, DWORD, io_next)
            bars[index] = (True, io_next)
            io_next += size
            index += 1
            continue
        is64 = (orig >> 1 & 0x3) == 0x2
        size = (~(mask & ~0xF) & 0xFFFFFFFF) + 1
        if is64:
            cfg.write(reg + DWORD, DWORD, 0xFFFFFFFF)
            cfg.write(reg + DWORD, DWORD, 0)
        mem_next = (mem_next + size - 1) & ~(size - 1)
        cfg.write(reg, DWORD, mem_next)
        bars[index] = (False, mem_next)
        mem_next += size
        index += 2 if is64 else 1
    cfg.write(PCI_HEADER["command"], 2, PCI_COMMAND_IO_MEM)
    return bars


def _vendor_caps(cfg: _Cfg) -> list[tuple[int, int, int, int, int]]:
    """(cfg_type, bar, offset, length, position) of every virtio vendor capability."""
    out: list[tuple[int, int, int, int, int]] = []
    if not cfg.read(PCI_HEADER["status"], 2) & PCI_STATUS_CAP_LIST:
        return out
    ptr = cfg.read(PCI_HEADER["capabilities_ptr"], 1) & ~0x3
    seen = 0
    while ptr and seen < 48:
        seen += 1
        if cfg.read(ptr, 1) == PCI_CAP_ID_VNDR:
            out.append(
                (cfg.read(ptr + 3, 1), cfg.read(ptr + 4, 1), cfg.read(ptr + 8, 4), cfg.read(ptr + 12, 4), ptr)
            )
        ptr = cfg.read(ptr + 1, 1) & ~0x3
    return out


def probe_pci(bus: Bus, slot: int) -> PciAbi | None:
    """The ABI of the function at 00:slot.0, or None when the slot is empty."""
    cfg = _Cfg(bus, slot)
    vendor = cfg.read(PCI_HEADER["vendor_id"], 2)
    if vendor in (0xFFFF, 0):
        return None
    abi = PciAbi(
        slot,
        vendor,
        cfg.read(PCI_HEADER["device_id"], 2),
        cfg.read(PCI_HEADER["revision_id"], 1),
        cfg.read(PCI_HEADER["subsystem_vendor_id"], 2),
        cfg.read(PCI_HEADER["subsystem_id"], 2),
        cfg.read(PCI_HEADER["revision_id"], 4) >> 8,
    )
    bars = _assign_bars(cfg, slot)
    caps = _vendor_caps(cfg)
    if 0 in bars and bars[0][0]:
        io = bars[0][1]
        bus.pio_write(io + LEGACY_STATUS, 1, 0)
        abi.legacy_features = bus.pio_read(io + LEGACY_HOST_FEATURES, DWORD)
        for q in range(MAX_QUEUES):
            bus.pio_write(io + LEGACY_QSEL, 2, q)
            size = bus.pio_read(io + LEGACY_QNUM, 2)
            if not size:
                break
            abi.legacy_queue_sizes.append(size)
        # the legacy config window is the rest of BAR0 (its length, when the modern
        # interface states one, is the device config capability's)
        length = min(CONFIG_BYTES, max(_io_bar_size(cfg) - LEGACY_CONFIG_NO_MSIX, 0))
        abi.legacy_config = bytes(bus.pio_read(io + LEGACY_CONFIG_NO_MSIX + i, 1) for i in range(length))
    common = next(((b, o) for t, b, o, _, _ in caps if t == CAP_COMMON), None)
    device = next(((b, o, n) for t, b, o, n, _ in caps if t == CAP_DEVICE), None)
    notify = next((pos for t, _, _, _, pos in caps if t == CAP_NOTIFY), None)
    if notify is not None:
        abi.notify_off_multiplier = cfg.read(notify + NOTIFY_MULTIPLIER_OFFSET, DWORD)
    if common is not None and common[0] in bars:
        base = bars[common[0]][1] + common[1]
        bus.write(base + 0x14, 1, 0)  # device_status = 0: reset
        words = []
        for sel in (0, 1):
            bus.write(base + COMMON_DFSELECT, DWORD, sel)
            words.append(bus.read(base + COMMON_DF, DWORD))
        abi.modern_features = words[0] | words[1] << 32
        numq = bus.read(base + COMMON_NUMQ, 2)
        for q in range(min(numq, MAX_QUEUES)):
            bus.write(base + COMMON_QSELECT, 2, q)
            abi.modern_queue_sizes.append(bus.read(base + COMMON_QSIZE, 2))
        if device is not None and device[0] in bars:
            dbase = bars[device[0]][1] + device[1]
            abi.modern_config = bytes(bus.read(dbase + i, 1) for i in range(min(device[2], CONFIG_BYTES)))
    return abi


def _io_bar_size(cfg: _Cfg) -> int:
    orig = cfg.read(BAR0, DWORD)
    cfg.write(BAR0, DWORD, 0xFFFFFFFF)
    mask = cfg.read(BAR0, DWORD)
    cfg.write(BAR0, DWORD, orig)
    return (~(mask & ~0x3) & 0xFFFF) + 1


def probe_all(bus: Bus, slots: list[int]) -> dict[int, PciAbi | None]:
    return {s: probe_pci(bus, s) for s in slots}


# --------------------------------------------------------------------------- virtio-mmio


@dataclass
class MmioAbi:
    """One virtio-mmio transport's guest-visible ABI right after reset."""

    version: int
    device_id: int
    vendor_id: int
    features: int
    queue_sizes: list[int] = field(default_factory=list)
    config: bytes = b""

    def fields(self) -> dict[str, object]:
        return {
            "version": self.version,
            "device_id": self.device_id,
            "vendor_id": hex(self.vendor_id),
            "mmio.features": hex(self.features),
            "mmio.queue_sizes": self.queue_sizes,
            "mmio.config": self.config.hex(),
        }


def probe_mmio(bus: Bus, base: int) -> MmioAbi | None:
    """The ABI of the virtio-mmio transport at ``base`` (None: no device behind it)."""

    def reg(name: str) -> int:
        return bus.read(base + MMIO_OFFSETS[name], DWORD)

    def setreg(name: str, value: int) -> None:
        bus.write(base + MMIO_OFFSETS[name], DWORD, value)

    if reg("MagicValue") != MMIO.magic or reg("DeviceID") == 0:
        return None
    setreg("Status", 0)
    words = []
    for sel in (0, 1):
        setreg("DeviceFeaturesSel", sel)
        words.append(reg("DeviceFeatures"))
    abi = MmioAbi(reg("Version"), reg("DeviceID"), reg("VendorID"), words[0] | words[1] << 32)
    for q in range(MAX_QUEUES):
        setreg("QueueSel", q)
        size = reg("QueueSizeMax")
        if not size:
            break
        abi.queue_sizes.append(size)
    abi.config = bytes(bus.read(base + MMIO_CONFIG_OFFSET + i, 1) for i in range(CONFIG_BYTES))
    return abi
