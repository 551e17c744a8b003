"""The legacy virtio-pci interface (virtio 4.1.4.10): the header in I/O BAR 0.

The header registers are little-endian port registers: 32-bit feature words (only bits
0-31 exist), the queue page frame number (ring address >> 12, the used ring aligned to
4096), a read-only queue size, queue select and notify, status and the ISR, and, only
while MSI-X is enabled, the two vector registers that push device config from offset 20
to 24. Device config that follows is in the guest's byte order and may be accessed at any
width, as legacy drivers did (Linux reads it byte by byte).

QEMU quirks kept on purpose, each noted when it fires: writing PFN 0 resets the whole
device; a driver acking VIRTIO_F_BAD_FEATURE gets no features at all; setting
ACKNOWLEDGE|DRIVER turns bus mastering on for drivers older than Linux 2.6.34 that never
did. Register accesses of the wrong width or to read-only registers are ignored and noted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtio_sim.host.pci import BarKind, pow2ceil
from virtio_sim.layouts import (
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    LEGACY_HDR,
    LEGACY_HDR_WIDTH,
    legacy_used_ring_offset,
)
from virtio_sim.layouts import desc_table_size as _desc_table_size
from virtio_sim.spec import PCI, PCI_CMD, QEMU_PCI, STATUS, F, bit

if TYPE_CHECKING:
    from virtio_sim.host.transport.virtio_pci import VirtioPciProxy

_FIELD_AT = {off: name for name, off in LEGACY_HDR.items()}
_READ_ONLY = frozenset({"host_features", "queue_num", "isr"})


class LegacyInterface:
    """I/O BAR 0 of a legacy or transitional function."""

    def __init__(self, proxy: VirtioPciProxy) -> None:
        self.proxy = proxy
        self.bar_index = QEMU_PCI.legacy_io_bar

    def register(self) -> None:
        fn = self.proxy.fn
        # QEMU sizes the BAR for the header with the MSI-X fields if MSI-X is present.
        header = LEGACY_CONFIG_OFFSET_MSIX if fn.msix else LEGACY_CONFIG_OFFSET
        size = pow2ceil(header + self.proxy.device.config_size())
        fn.register_bar(self.bar_index, size, BarKind.IO, self)

    @property
    def config_offset(self) -> int:
        return LEGACY_CONFIG_OFFSET_MSIX if self.proxy.msix_enabled else LEGACY_CONFIG_OFFSET

    # -- access -----------------------------------------------------------------------------

    def _field(self, offset: int, size: int, op: str) -> str | None:
        name = _FIELD_AT.get(offset)
        if name is None:
            self.proxy.device.misuse(
                "legacy-undefined", f"pci: legacy: {op} inside a header register at {offset:#x} ignored"
            )
            return None
        if size != LEGACY_HDR_WIDTH[name]:
            self.proxy.device.misuse(
                "legacy-width", f"pci: legacy: wrong size access ({size}) to register {name}"
            )
            return None
        return name

    def read(self, offset: int, size: int) -> int:
        cfg = self.config_offset
        if offset >= cfg:
            return self.proxy.read_device_config(offset - cfg, size, self.proxy.device.guest_order)
        if offset + size > cfg:
            self.proxy.note(f"legacy: read of {size} bytes at {offset:#x} straddles the header")
            return 0
        name = self._field(offset, size, "read")
        if name is None:
            return 0
        p = self.proxy
        d = p.device
        q = d.queue(p.queue_sel)
        match name:
            case "host_features":
                value = d.device_features & 0xFFFFFFFF
                if d.observer is not None:
                    d.observer.on_features_read(0, value)
                return value
            case "guest_features":
                return d.driver_features & 0xFFFFFFFF
            case "queue_pfn":
                return q.desc >> PCI.legacy_pfn_shift if q and q.ready else 0
            case "queue_num":
                # before the driver negotiated, every queue the device created answers
                shown = q or (None if d.driver_features else d.created_queue(p.queue_sel))
                return shown.size if shown is not None else 0
            case "queue_sel":
                return p.queue_sel
            case "status":
                return d.read_status()
            case "isr":
                return p.read_isr()
            case "config_msix_vector":
                return p.read_config_vector()
            case "queue_msix_vector":
                return p.read_queue_vector()
        return 0  # queue_notify reads 0

    def write(self, offset: int, size: int, value: int) -> None:
        cfg = self.config_offset
        p = self.proxy
        if offset >= cfg:
            p.write_device_config(offset - cfg, size, value, p.device.guest_order)
            return
        if offset + size > cfg:
            p.note(f"legacy: write of {size} bytes at {offset:#x} straddles the header")
            return
        name = self._field(offset, size, "write")
        if name is None:
            return
        if name in _READ_ONLY:
            p.device.misuse("legacy-write-ro", f"pci: legacy: write to read-only register {name} ignored")
            return
        d = p.device
        if d.observer is not None:
            if name == "queue_pfn":
                q = d.queue(p.queue_sel)
                d.observer.on_queue_write(p.queue_sel, "pfn", value, bool(q and q.ready))
            elif name == "queue_notify":
                d.observer.on_notify(value, value, size)
        match name:
            case "guest_features":
                if value & bit(F.BAD_FEATURE):
                    p.note("legacy: driver acked VIRTIO_F_BAD_FEATURE; it gets no features")
                    value = 0
                d.write_driver_features(0, value)
            case "queue_pfn":
                self._write_pfn(value)
            case "queue_sel":
                p.select_queue(value)
            case "queue_notify":
                if value < QEMU_PCI.queue_max:
                    d.notify(value)
            case "status":
                p.write_status(value)
                if value == STATUS.ACKNOWLEDGE | STATUS.DRIVER and not p.fn.bus_master:
                    p.note("legacy: ACKNOWLEDGE|DRIVER without bus mastering; QEMU enables it")
                    p.fn.force_command_bits(PCI_CMD.MASTER)
            case "config_msix_vector":
                p.set_config_vector(value)
            case "queue_msix_vector":
                p.set_queue_vector(value)

    def _write_pfn(self, pfn: int) -> None:
        p = self.proxy
        d = p.device
        if pfn == 0:
            p.note("legacy: queue PFN 0 written; QEMU resets the device")
            p.reset()
            return
        q = d.queue(p.queue_sel)
        if q is None:
            p.note(f"legacy: PFN for nonexistent queue {p.queue_sel} ignored")
            return
        base = pfn << PCI.legacy_pfn_shift
        q.desc = base
        q.driver = base + _desc_table_size(q.size)
        q.device = base + legacy_used_ring_offset(q.size, PCI.legacy_queue_align)
        q.ready = True
        q.ring = None
