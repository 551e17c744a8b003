"""virtio-mmio, version 2 (modern) and version 1 (legacy), as QEMU implements it.

The register block is declared in :mod:`virtio_sim.layouts`; this module only gives each
register its behaviour. Bad accesses never fail the host: a register access of the wrong
width or alignment, a read of a write-only register, a write of a read-only one or an
access to an undefined offset reads as 0 or is ignored, and is noted on the device (as
QEMU's "wrong size access to register" guest errors are logged).

QEMU quirks kept on purpose: in version 1 only feature window 0 exists (HostFeaturesSel
other than 0 reads 0), and the ``force-legacy`` property decides the version, with QEMU's
default of true.
"""

from __future__ import annotations

from collections.abc import Callable

from virtio_sim.host.virtio_device import InterruptSink, QueueState, VirtioDevice
from virtio_sim.layouts import (
    MMIO_CONFIG_OFFSET,
    MMIO_NAMES,
    MMIO_REGISTER_WIDTH,
    MMIO_V1_REGISTERS,
    MMIO_V2_REGISTERS,
    legacy_used_ring_offset,
)
from virtio_sim.layouts import (
    desc_table_size as _desc_table_size,
)
from virtio_sim.spec import MMIO, MMIO_INT, NOTIFY_DATA

MMIO_GENERATION_MASK = 0xFF  # the device core keeps an 8-bit generation, as QEMU does
MMIO_WINDOW = 0x200  # bytes of one transport in QEMU's machines
ALL_ONES_32 = 0xFFFFFFFF
MMIO_NOTIFY_INDEX_MASK = NOTIFY_DATA.vq_mask  # QueueNotify: the index (low bits with notification data)
# Queue registers an observer hears about (host/observer.py), by observer field name.
_QUEUE_WRITES = {
    "QueueSize": "size", "QueueReady": "enable", "QueuePFN": "pfn", "QueueAlign": "align",
    "QueueReset": "reset", "GuestPageSize": "guest_page_size",
    "QueueDescLow": "desc", "QueueDescHigh": "desc", "QueueDriverLow": "driver",
    "QueueDriverHigh": "driver", "QueueDeviceLow": "device", "QueueDeviceHigh": "device",
}  # fmt: skip
_QUEUE_READS = {"QueueReady": "ready", "QueueReset": "reset", "QueueSizeMax": "size_max", "QueuePFN": "pfn"}

_READABLE = frozenset(
    {
        "MagicValue", "Version", "DeviceID", "VendorID", "DeviceFeatures", "QueueSizeMax",
        "QueueReady", "InterruptStatus", "Status", "SHMLenLow", "SHMLenHigh", "SHMBaseLow",
        "SHMBaseHigh", "QueueReset", "ConfigGeneration", "QueuePFN",
    }
)  # fmt: skip


#: odd identification values a checking device can present (present_odd), by kind: a
#: magic value read in the wrong byte order, a version no spec defines, an empty slot
ODD_VALUES: dict[str, tuple[str, int]] = {
    "bad-magic": ("MagicValue", int.from_bytes(MMIO.magic.to_bytes(4, "little"), "big")),
    "bad-version": ("Version", MMIO.version_modern + 1),
    "device-id-zero": ("DeviceID", 0),
}
#: a config change in the middle of the driver's first config read (the generation moves)
GENERATION_MOVES = "generation-moves"
ODD_KINDS = (*ODD_VALUES, GENERATION_MOVES)


class MmioTransport(InterruptSink):
    def __init__(
        self,
        device: VirtioDevice,
        *,
        legacy: bool = False,
        set_irq_level: Callable[[bool], None] | None = None,
    ) -> None:
        self.device = device
        self.version = MMIO.version_legacy if legacy else MMIO.version_modern
        self.registers = MMIO_V1_REGISTERS if legacy else MMIO_V2_REGISTERS
        self.set_irq_level = set_irq_level or (lambda level: None)
        self._queue_align: dict[int, int] = {}
        self.odd: dict[str, int] = {}  # register -> the value presented instead (present_odd)
        self.generation_moves = False  # present_odd(GENERATION_MOVES), until it happened
        device.sink = self
        if legacy:
            # The legacy interface offers no VERSION_1 (its features are 32 bits wide).
            device.transport_features.version_1 = False
        else:
            # A modern-only transport masks the legacy-only bits, as QEMU's v2 mode does.
            device.transport_features.any_layout = False
            device.transport_features.notify_on_empty = False
            device.modern_only = True
        device.model.plugged(not legacy)  # may refuse (virtio-blk scsi=on with virtio 1.0)
        # QueueNumMax is the transport's maximum (QEMU's VIRTQUEUE_MAX_SIZE) for every
        # queue that exists; the size a queue starts with stays the model's.
        for q in device.queues:
            q.max_size = MMIO.qemu_queue_num_max
        self._reset_registers()

    @property
    def legacy(self) -> bool:
        return self.version == MMIO.version_legacy

    def present_odd(self, kind: str) -> None:
        """A checking device's test of the driver: present the odd identification value
        ``kind`` (a key of ODD_VALUES) instead of the real one, for the whole run; or
        (GENERATION_MOVES) change the config generation during the first config read."""
        if kind == GENERATION_MOVES:
            self.generation_moves = True
            return
        register, value = ODD_VALUES[kind]
        self.odd[register] = value

    def _reset_registers(self) -> None:
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.guest_page_size = 0
        self.shm_sel = 0
        self._line = False
        self._update_line()

    # -- interrupts ------------------------------------------------------------

    def _update_line(self) -> None:
        level = self.interrupt_status != 0
        if level != self._line:
            self._line = level
            self.set_irq_level(level)

    def queue_interrupt(self, index: int) -> None:
        self.interrupt_status |= MMIO_INT.USED_BUFFER
        self._update_line()

    def config_interrupt(self) -> None:
        # QEMU's virtio_notify_config() sets both causes (virtio_set_isr(vdev, 0x3)), and
        # virtio-mmio's InterruptStatus reads vdev->isr: 0x3, as on virtio-pci (measured on
        # QEMU 7.2.22 mmio-v2 after virtio_error(): tests/host/test_needs_reset_legacy.py)
        self.interrupt_status |= MMIO_INT.CONFIG_CHANGE | MMIO_INT.USED_BUFFER
        self._update_line()

    # -- access ----------------------------------------------------------------

    def _reg(self, offset: int, size: int, op: str) -> str | None:
        name = MMIO_NAMES.get(offset)
        if name is None or name not in self.registers:
            self.device.misuse("mmio-undefined", f"mmio: {op} of undefined register offset {offset:#x}")
            return None
        if size != MMIO_REGISTER_WIDTH:
            self.device.misuse("mmio-width", f"mmio: wrong size access ({size}) to register {name}")
            return None
        return name

    def read(self, offset: int, size: int) -> int:
        if offset >= MMIO_CONFIG_OFFSET:
            return self._read_config(offset - MMIO_CONFIG_OFFSET, size)
        name = self._reg(offset, size, "read")
        if name is None:
            return 0
        if name not in _READABLE or (name == "QueuePFN" and not self.legacy):
            self.device.misuse("mmio-read-wo", f"mmio: read of write-only register {name}")
            return 0
        value = self._read_register(name) if not self.odd else self.odd.get(name, self._read_register(name))
        obs = self.device.observer
        if obs is not None:
            obs.on_register("read", name, value)
            if name == "DeviceFeatures":
                obs.on_features_read(self.device_features_sel, value)
            elif name in _QUEUE_READS:
                obs.on_queue_read(self.queue_sel, _QUEUE_READS[name], value)
        return value

    def _read_register(self, name: str) -> int:
        d = self.device
        q = d.queue(self.queue_sel)
        match name:
            case "MagicValue":
                return MMIO.magic
            case "Version":
                return self.version
            case "DeviceID":
                return d.device_id
            case "VendorID":
                return MMIO.qemu_vendor_id
            case "DeviceFeatures":
                if self.legacy and self.device_features_sel:
                    return 0
                return d.read_device_features(self.device_features_sel)
            case "QueueSizeMax":
                # before the driver negotiated, every queue the device created answers
                created = q if d.driver_features else (q or d.created_queue(self.queue_sel))
                if created is None or (self.legacy and created.ready):
                    return 0
                return created.max_size
            case "QueueReady":
                return int(q.ready) if q else 0
            case "QueuePFN":
                return (q.desc // self.guest_page_size) if q and q.ready and self.guest_page_size else 0
            case "InterruptStatus":
                return self.interrupt_status
            case "Status":
                return d.read_status()
            case "SHMLenLow" | "SHMLenHigh" | "SHMBaseLow" | "SHMBaseHigh":
                return ALL_ONES_32  # no shared memory regions: "absent" reads as all ones
            case "QueueReset":
                return 0  # resets complete immediately
            case "ConfigGeneration":
                return d.config_generation
        return 0

    def _read_config(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8) or (not self.legacy and offset % size):
            msg = f"mmio: config read of {size} bytes at unaligned offset {offset:#x}"
            self.device.misuse("mmio-config-width", msg)
            return 0
        value = self.device.read_config(offset, size)
        if self.generation_moves:
            self.generation_moves = False
            d = self.device
            d.config_generation = (d.config_generation + 1) & MMIO_GENERATION_MASK
        if value is None:
            self.device.misuse("mmio-config-range", f"mmio: config read beyond config space at {offset:#x}")
            return (1 << (8 * size)) - 1  # QEMU's virtio_config_read*: all ones
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= MMIO_CONFIG_OFFSET:
            if size not in (1, 2, 4, 8) or (not self.legacy and offset % size):
                self.device.misuse(
                    "mmio-config-width", f"mmio: config write of {size} bytes at unaligned offset {offset:#x}"
                )
                return
            self.device.write_config(offset - MMIO_CONFIG_OFFSET, size, value)
            return
        name = self._reg(offset, size, "write")
        if name is None:
            return
        d = self.device
        q = d.queue(self.queue_sel)
        obs = d.observer
        if obs is not None:
            obs.on_register("write", name, value)
            if name in _QUEUE_WRITES:
                obs.on_queue_write(self.queue_sel, _QUEUE_WRITES[name], value, bool(q and q.ready))
            elif name == "QueueNotify":
                obs.on_notify(value & MMIO_NOTIFY_INDEX_MASK, value, size)
        match name:
            case "DeviceFeaturesSel":
                self.device_features_sel = value
            case "DriverFeatures":
                if self.legacy and self.driver_features_sel:
                    # QEMU logs this guest error: version 1 has only feature word 0.
                    d.note("mmio: legacy DriverFeatures write with DriverFeaturesSel > 0 ignored")
                    return
                d.write_driver_features(self.driver_features_sel, value)
            case "DriverFeaturesSel":
                self.driver_features_sel = value
            case "GuestPageSize":
                if value & (value - 1):
                    d.note(f"mmio: GuestPageSize {value} is not a power of two (ignored)")
                    return
                self.guest_page_size = value
            case "QueueSel":
                self.queue_sel = value
            case "QueueSize":
                if q is None:
                    d.note(f"mmio: QueueSize for nonexistent queue {self.queue_sel}")
                    return
                d.set_queue_size(q, value)
            case "QueueAlign":
                if q is not None:
                    if value == 0 or value & (value - 1):
                        d.note(f"mmio: QueueAlign {value} is not a power of two (ignored)")
                        return
                    self._queue_align[q.index] = value
            case "QueuePFN":
                self._write_pfn(value)
            case "QueueReady":
                if q is None:
                    return
                if value & 1:
                    q.ready = True
                else:
                    q.ready = False
                    q.ring = None
            case "QueueNotify":
                d.notify_value(value)  # the index, or NOTIFICATION_DATA's 32-bit value
            case "InterruptACK":
                self.interrupt_status &= ~value
                self._update_line()
            case "Status":
                self._write_status(value)
            case "QueueDescLow" | "QueueDescHigh":
                self._set_addr(q, "desc", name.endswith("High"), value)
            case "QueueDriverLow" | "QueueDriverHigh":
                self._set_addr(q, "driver", name.endswith("High"), value)
            case "QueueDeviceLow" | "QueueDeviceHigh":
                self._set_addr(q, "device", name.endswith("High"), value)
            case "SHMSel":
                self.shm_sel = value
            case "QueueReset":
                if value == 1 and q is not None:
                    d.reset_queue(q.index)  # completes at once: QueueReset reads 0 again
            case _:
                d.misuse("mmio-write-ro", f"mmio: write of read-only register {name} ignored")

    def _write_status(self, value: int) -> None:
        d = self.device
        d.write_status(value)
        if value == 0:
            self._reset_registers()
            self._queue_align = {}

    def _set_addr(self, q: QueueState | None, field: str, high: bool, value: int) -> None:
        if q is None:
            return
        if q.ready:
            self.device.note(f"mmio: queue {q.index} address changed while ready (ignored)")
            return
        old = getattr(q, field)
        new = (old & 0xFFFFFFFF) | (value << 32) if high else (old & ~ALL_ONES_32) | value
        setattr(q, field, new)

    def _write_pfn(self, pfn: int) -> None:
        """Legacy: the whole ring lives at pfn * GuestPageSize, used ring aligned."""
        d = self.device
        q = d.queue(self.queue_sel)
        if q is None:
            return
        if pfn == 0:
            q.ready = False
            q.ring = None
            return
        if not self.guest_page_size:
            d.note("mmio: QueuePFN written before GuestPageSize")
            return
        align = self._queue_align.get(q.index, self.guest_page_size)
        base = pfn * self.guest_page_size
        q.desc = base
        q.driver = base + _desc_table_size(q.size)
        q.device = base + legacy_used_ring_offset(q.size, align)
        q.ready = True
        q.ring = None
