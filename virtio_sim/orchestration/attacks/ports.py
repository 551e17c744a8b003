"""Register-level access to one virtio function, whatever its transport.

A hostile driver needs the transport's verbs (status, features, queue setup, notify,
config) without the guest's safety nets, so these ports write registers through the
machine's address decoding exactly as guest MMIO/PIO accesses would arrive.
"""

from __future__ import annotations

from typing import Protocol

from virtio_sim import layouts as L
from virtio_sim.host.machine import Q35_ECAM_BASE, Machine, MmioSlot
from virtio_sim.host.transport.virtio_pci import VirtioPciProxy
from virtio_sim.layouts import COMMON_CFG, LEGACY_HDR, MMIO_OFFSETS
from virtio_sim.spec import PCI, PCI_CFG, PCI_CMD, QEMU_PCI

DWORD = 4
DWORD_MASK = 0xFFFFFFFF
LEGACY_PAGE = 1 << PCI.legacy_pfn_shift
MODERN_BAR_BASE = 0xC0100000  # inside q35's 32-bit PCI window
IO_BAR_BASE = 0xC000
BAR_STRIDE = 0x10000


class Port(Protocol):
    legacy: bool  # the legacy interface: fixed ring layout from a PFN, no VERSION_1
    name: str

    def status(self) -> int: ...
    def set_status(self, value: int) -> None: ...
    def device_features(self) -> int: ...
    def set_driver_features(self, value: int) -> None: ...
    def select(self, index: int) -> None: ...
    def max_size(self) -> int: ...
    def set_size(self, size: int) -> int: ...
    def set_rings(self, desc: int, avail: int, used: int) -> None: ...
    def enable(self) -> None: ...
    def disable(self) -> None: ...
    def notify(self, value: int) -> None: ...
    def cfg_read(self, offset: int, size: int) -> int: ...
    def cfg_write(self, offset: int, size: int, value: int) -> None: ...
    def raw_write(self, offset: int, size: int, value: int) -> None: ...
    def raw_read(self, offset: int, size: int) -> int: ...


class MmioPort:
    def __init__(self, machine: Machine, slot: MmioSlot) -> None:
        self.m = machine
        self.base = slot.base
        self.legacy = slot.transport.legacy
        self.name = "mmio-v1" if self.legacy else "mmio-v2"
        self._size = 0
        if self.legacy:
            self.w("GuestPageSize", LEGACY_PAGE)

    def r(self, reg: str) -> int:
        return self.m.mmio_read(self.base + MMIO_OFFSETS[reg], DWORD)

    def w(self, reg: str, value: int) -> None:
        self.m.mmio_write(self.base + MMIO_OFFSETS[reg], DWORD, value & DWORD_MASK)

    def raw_write(self, offset: int, size: int, value: int) -> None:
        self.m.mmio_write(self.base + offset, size, value)

    def raw_read(self, offset: int, size: int) -> int:
        return self.m.mmio_read(self.base + offset, size)

    def status(self) -> int:
        return self.r("Status")

    def set_status(self, value: int) -> None:
        self.w("Status", value)
        if value == 0 and self.legacy:
            self.w("GuestPageSize", LEGACY_PAGE)

    def device_features(self) -> int:
        self.w("DeviceFeaturesSel", 0)
        lo = self.r("DeviceFeatures")
        self.w("DeviceFeaturesSel", 1)
        return self.r("DeviceFeatures") << 32 | lo

    def set_driver_features(self, value: int) -> None:
        self.w("DriverFeaturesSel", 0)
        self.w("DriverFeatures", value)
        if self.legacy:
            return  # one 32-bit window only
        self.w("DriverFeaturesSel", 1)
        self.w("DriverFeatures", value >> 32)

    def select(self, index: int) -> None:
        self.w("QueueSel", index)

    def max_size(self) -> int:
        return self.r("QueueSizeMax")

    def set_size(self, size: int) -> int:
        self.w("QueueSize", size)
        self._size = size
        return size

    def set_rings(self, desc: int, avail: int, used: int) -> None:
        if self.legacy:
            self._pfn = desc // LEGACY_PAGE
            return
        for reg, addr in (("QueueDesc", desc), ("QueueDriver", avail), ("QueueDevice", used)):
            self.w(reg + "Low", addr)
            self.w(reg + "High", addr >> 32)

    def enable(self) -> None:
        if self.legacy:
            self.w("QueueAlign", LEGACY_PAGE)
            self.w("QueuePFN", self._pfn)
        else:
            self.w("QueueReady", 1)

    def disable(self) -> None:
        self.w("QueuePFN" if self.legacy else "QueueReady", 0)

    def notify(self, value: int) -> None:
        self.w("QueueNotify", value)

    def cfg_read(self, offset: int, size: int) -> int:
        return self.m.mmio_read(self.base + L.MMIO_CONFIG_OFFSET + offset, size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        self.m.mmio_write(self.base + L.MMIO_CONFIG_OFFSET + offset, size, value)


class _PciPort:
    def __init__(self, machine: Machine, proxy: VirtioPciProxy, index: int) -> None:
        self.m = machine
        self.proxy = proxy
        self.bdf = proxy.fn.bdf
        self.mem_base = MODERN_BAR_BASE + BAR_STRIDE * 4 * index
        self.io_base = IO_BAR_BASE + 0x100 * index
        places = {QEMU_PCI.modern_mem_bar: self.mem_base, QEMU_PCI.legacy_io_bar: self.io_base}
        for bar, addr in places.items():
            if bar not in proxy.fn.bars:
                continue
            self.cfg_w(L.PCI_HEADER["bar0"] + L.PCI_BAR_SIZE * bar, 4, addr & DWORD_MASK)
            if proxy.fn.bars[bar].kind.value == "mem64":
                self.cfg_w(L.PCI_HEADER["bar0"] + L.PCI_BAR_SIZE * (bar + 1), 4, addr >> 32)
        self.cfg_w(L.PCI_HEADER["command"], 2, PCI_CMD.IO | PCI_CMD.MEMORY | PCI_CMD.MASTER)

    def ecam(self, offset: int) -> int:
        bus, dev, fn = self.bdf
        return (
            Q35_ECAM_BASE
            + (bus << PCI_CFG.ecam_bus_shift)
            + (dev << PCI_CFG.ecam_device_shift)
            + (fn << PCI_CFG.ecam_function_shift)
            + offset
        )

    def cfg_w(self, offset: int, size: int, value: int) -> None:
        self.m.mmio_write(self.ecam(offset), size, value)


class PciModernPort(_PciPort):
    legacy = False
    name = "pci-modern"

    def c_r(self, name: str, size: int) -> int:
        return self.m.mmio_read(self.mem_base + QEMU_PCI.common_offset + COMMON_CFG[name], size)

    def c_w(self, name: str, size: int, value: int) -> None:
        self.m.mmio_write(self.mem_base + QEMU_PCI.common_offset + COMMON_CFG[name], size, value)

    def raw_write(self, offset: int, size: int, value: int) -> None:
        self.m.mmio_write(self.mem_base + offset, size, value)

    def raw_read(self, offset: int, size: int) -> int:
        return self.m.mmio_read(self.mem_base + offset, size)

    def status(self) -> int:
        return self.c_r("device_status", 1)

    def set_status(self, value: int) -> None:
        self.c_w("device_status", 1, value & 0xFF)

    def device_features(self) -> int:
        self.c_w("device_feature_select", 4, 0)
        lo = self.c_r("device_feature", 4)
        self.c_w("device_feature_select", 4, 1)
        return self.c_r("device_feature", 4) << 32 | lo

    def set_driver_features(self, value: int) -> None:
        self.c_w("driver_feature_select", 4, 0)
        self.c_w("driver_feature", 4, value & DWORD_MASK)
        self.c_w("driver_feature_select", 4, 1)
        self.c_w("driver_feature", 4, value >> 32 & DWORD_MASK)

    def select(self, index: int) -> None:
        self.c_w("queue_select", 2, index & 0xFFFF)

    def max_size(self) -> int:
        return self.c_r("queue_size", 2)

    def set_size(self, size: int) -> int:
        self.c_w("queue_size", 2, size & 0xFFFF)
        return size

    def set_rings(self, desc: int, avail: int, used: int) -> None:
        for name, addr in (("queue_desc", desc), ("queue_driver", avail), ("queue_device", used)):
            self.m.mmio_write(self.mem_base + COMMON_CFG[name], 4, addr & DWORD_MASK)
            self.m.mmio_write(self.mem_base + COMMON_CFG[name] + 4, 4, addr >> 32 & DWORD_MASK)

    def enable(self) -> None:
        self.c_w("queue_enable", 2, 1)

    def disable(self) -> None:
        self.c_w("queue_enable", 2, 0)

    def notify(self, value: int) -> None:
        index = value & 0xFFFF
        self.m.mmio_write(
            self.mem_base + QEMU_PCI.notify_offset + QEMU_PCI.notify_off_multiplier * index, 4, value
        )

    def cfg_read(self, offset: int, size: int) -> int:
        return self.m.mmio_read(self.mem_base + QEMU_PCI.device_offset + offset, size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        self.m.mmio_write(self.mem_base + QEMU_PCI.device_offset + offset, size, value)


class PciLegacyPort(_PciPort):
    legacy = True
    name = "pci-legacy"

    def h_r(self, name: str) -> int:
        return self.m.pio_read(self.io_base + LEGACY_HDR[name], L.LEGACY_HDR_WIDTH[name])

    def h_w(self, name: str, value: int) -> None:
        width = L.LEGACY_HDR_WIDTH[name]
        self.m.pio_write(self.io_base + LEGACY_HDR[name], width, value & ((1 << 8 * width) - 1))

    def raw_write(self, offset: int, size: int, value: int) -> None:
        self.m.pio_write(self.io_base + offset, size, value)

    def raw_read(self, offset: int, size: int) -> int:
        return self.m.pio_read(self.io_base + offset, size)

    def status(self) -> int:
        return self.h_r("status")

    def set_status(self, value: int) -> None:
        self.h_w("status", value)

    def device_features(self) -> int:
        return self.h_r("host_features")

    def set_driver_features(self, value: int) -> None:
        self.h_w("guest_features", value & DWORD_MASK)

    def select(self, index: int) -> None:
        self.h_w("queue_sel", index)

    def max_size(self) -> int:
        return self.h_r("queue_num")

    def set_size(self, size: int) -> int:
        return self.h_r("queue_num")  # read-only on the legacy interface

    def set_rings(self, desc: int, avail: int, used: int) -> None:
        self._pfn = desc >> PCI.legacy_pfn_shift

    def enable(self) -> None:
        self.h_w("queue_pfn", self._pfn)

    def disable(self) -> None:
        self.h_w("queue_pfn", 0)

    def notify(self, value: int) -> None:
        self.h_w("queue_notify", value)

    def _cfg_base(self) -> int:
        msix = self.proxy.msix_enabled
        return L.LEGACY_CONFIG_OFFSET_MSIX if msix else L.LEGACY_CONFIG_OFFSET

    def cfg_read(self, offset: int, size: int) -> int:
        return self.m.pio_read(self.io_base + self._cfg_base() + offset, size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        self.m.pio_write(self.io_base + self._cfg_base() + offset, size, value)
