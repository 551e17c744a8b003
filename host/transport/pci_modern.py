"""The modern virtio-pci interface (virtio 4.1.4): capabilities and the regions of BAR 4.

QEMU's layout is kept: common config at 0x0, ISR at 0x1000, device config at 0x2000 and
the notification area at 0x3000 with a multiplier of 4 (queue N is notified at N * 4), all
in one 64-bit prefetchable memory BAR, plus the PCI-configuration access capability that
reaches any BAR through config space.

Access rules are enforced the way the spec puts them for drivers: every common config
field is accessed at its own width (64-bit fields also as two 32-bit halves); an access of
another width, to a gap, or a write to a read-only field reads 0 / is ignored and noted.
Device config is little-endian here whatever the guest's byte order; an access past its
end reads all ones. Feature windows beyond 1 read 0, legacy-only feature bits are hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtio_sim.host.pci import BarKind, pow2ceil
from virtio_sim.host.virtio_device import QueueState
from virtio_sim.layouts import (
    COMMON_CFG,
    COMMON_CFG_SIZE,
    COMMON_CFG_WIDTH,
    PCI_HEADER,
    VIRTIO_CFG_CAP,
    VirtioPciCap,
    VirtioPciCfgCap,
    VirtioPciNotifyCap,
)
from virtio_sim.spec import (
    PCI,
    PCI_CAP,
    PCI_CAP_ID,
    QEMU_PCI,
    F,
    legacy_only_transport_features,
)

if TYPE_CHECKING:
    from virtio_sim.host.transport.virtio_pci import VirtioPciProxy

DWORD = 4
DWORD_MASK = 0xFFFFFFFF
NOTIFY_SIZE = QEMU_PCI.notify_off_multiplier * QEMU_PCI.queue_max
BAR_SIZE = pow2ceil(QEMU_PCI.notify_offset + NOTIFY_SIZE)
LEGACY_ONLY = legacy_only_transport_features()
RESERVED_CFG_TYPE = 0x20  # not a virtio_pci_cap cfg_type (1-5, 8 and 9 are defined)
RESERVED_BAR = 7  # virtio_pci_cap.bar: 0-5 are BARs, 6-7 reserved (a driver must skip it)
ODD_REVISION = 0x5A  # a revision id no virtio release used (drivers must accept any, 4.1.2.2)

_FIELD_AT = {off: name for name, off in COMMON_CFG.items()}
_READ_ONLY = frozenset(
    {
        "device_feature", "num_queues", "config_generation", "queue_notify_off",
        "queue_notify_data", "admin_queue_index", "admin_queue_num",
    }
)  # fmt: skip
_QUEUE_ADDRESS = {"queue_desc": "desc", "queue_driver": "driver", "queue_device": "device"}
# Queue fields an observer hears about (host/observer.py), by observer field name.
_QUEUE_FIELDS = {"queue_size": "size", "queue_enable": "enable", "queue_reset": "reset", **_QUEUE_ADDRESS}


def _cap_bytes(declaration: object, **values: int | bytes) -> bytes:
    fields: dict[str, int | bytes] = {
        "cap_vndr": PCI_CAP_ID.VNDR,
        "cap_next": 0,
        "id": 0,
        "padding": bytes(2),
    }
    fields.update(values)
    return bytes(declaration.build(fields))  # type: ignore[attr-defined]


class ModernInterface:
    """BAR 4 of a modern or transitional function, and the capabilities describing it."""

    def __init__(self, proxy: VirtioPciProxy) -> None:
        self.proxy = proxy
        self.bar_index = QEMU_PCI.modern_mem_bar
        self.cfg_cap_offset: int | None = None
        self.reset_registers()

    def reset_registers(self) -> None:
        self.dfselect = 0
        self.gfselect = 0

    # -- construction -------------------------------------------------------------------

    def register(self) -> None:
        fn = self.proxy.fn
        fn.register_bar(self.bar_index, BAR_SIZE, BarKind.MEM64, self, prefetchable=True)
        for cfg_type, offset, length in (
            (PCI_CAP.COMMON, QEMU_PCI.common_offset, QEMU_PCI.common_size),
            (PCI_CAP.ISR, QEMU_PCI.isr_offset, QEMU_PCI.isr_size),
            (PCI_CAP.DEVICE, QEMU_PCI.device_offset, QEMU_PCI.device_size),
        ):
            cap = _cap_bytes(
                VirtioPciCap,
                cap_len=VirtioPciCap.sizeof(),
                cfg_type=cfg_type,
                bar=self.bar_index,
                offset=offset,
                length=length,
            )
            self._guard_capability(fn.add_capability(cap), len(cap))
        notify_cap = _cap_bytes(
            VirtioPciNotifyCap,
            cap_len=VirtioPciNotifyCap.sizeof(),
            cfg_type=PCI_CAP.NOTIFY,
            bar=self.bar_index,
            offset=QEMU_PCI.notify_offset,
            length=NOTIFY_SIZE,
            notify_off_multiplier=QEMU_PCI.notify_off_multiplier,
        )
        self._guard_capability(fn.add_capability(notify_cap), len(notify_cap))
        cfg = _cap_bytes(
            VirtioPciCfgCap,
            cap_len=VirtioPciCfgCap.sizeof(),
            cfg_type=PCI_CAP.PCI_CFG,
            bar=0,
            offset=0,
            length=0,
            pci_cfg_data=bytes(DWORD),
        )
        # The driver programs bar, offset, length and the data window of this capability.
        writable = bytearray(len(cfg))
        c = VIRTIO_CFG_CAP
        writable[c["bar"]] = 0xFF
        for name in ("offset", "length", "pci_cfg_data"):
            writable[c[name] : c[name] + DWORD] = b"\xff" * DWORD
        at = fn.add_capability(cfg, bytes(writable))
        self._guard_capability(at, c["bar"])  # its header is not the driver's to write
        self.cfg_cap_offset = at
        data = at + c["pci_cfg_data"]
        fn.add_config_hook(data, DWORD, on_read=self._cfg_window_read, on_write=self._cfg_window_write)

    def present_odd_revision(self) -> str:
        """A checking device's test of the driver's id match: a modern-only function with a
        revision id nobody used; a driver must bind it all the same (4.1.2.2)."""
        self.proxy.fn.config[PCI_HEADER["revision_id"]] = ODD_REVISION
        return "odd-revision"

    def present_odd_capabilities(self) -> list[str]:
        """A checking device's test of the driver's capability walk (4.1.4): put, ahead of
        the real ones (new capabilities are linked at the head, as in QEMU), a capability of
        a reserved cfg_type, a common-config capability naming a reserved BAR, and a copy of
        the notify capability with a cap_len longer than the structure. A driver must skip
        the first two and accept the third. Returns what was added (config space is small)."""
        added = []
        notify = _cap_bytes(
            VirtioPciNotifyCap,
            cap_len=VirtioPciNotifyCap.sizeof() + DWORD,
            cfg_type=PCI_CAP.NOTIFY,
            bar=self.bar_index,
            offset=QEMU_PCI.notify_offset,
            length=NOTIFY_SIZE,
            notify_off_multiplier=QEMU_PCI.notify_off_multiplier,
        )
        plain = {"cap_len": VirtioPciCap.sizeof(), "offset": 0, "length": QEMU_PCI.common_size}
        odd = (
            ("large-cap-len", notify + bytes(DWORD)),
            ("reserved-bar", _cap_bytes(VirtioPciCap, cfg_type=PCI_CAP.COMMON, bar=RESERVED_BAR, **plain)),
            (
                "reserved-type",
                _cap_bytes(VirtioPciCap, cfg_type=RESERVED_CFG_TYPE, bar=self.bar_index, **plain),
            ),
        )
        for name, cap in odd:
            try:
                self._guard_capability(self.proxy.fn.add_capability(cap), len(cap))
            except ValueError:
                break  # no room left in the 256-byte config space
            added.append(name)
        return added

    def _guard_capability(self, at: int, length: int) -> None:
        """Writes into a virtio capability structure are driver misuse (the spec reserves
        them; only the PCI-config access capability's window fields are written)."""

        def written(offset: int, size: int) -> None:
            self.proxy.device.misuse(
                "pci-cap-write", f"pci: config write of {size} bytes at {offset:#x} into a virtio capability"
            )

        self.proxy.fn.add_config_hook(at, length, on_write=written)

    # -- BAR dispatch ---------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        region = self._region(offset)
        if region is None:
            self.proxy.note(f"modern: read of unused BAR offset {offset:#x}")
            return 0
        name, rel = region
        if name == "common":
            return self.common_read(rel, size)
        if name == "isr":
            if rel != 0 or size != 1:
                self.proxy.device.misuse(
                    "pci-isr-width", f"pci: modern: ISR read of {size} bytes at +{rel:#x} ignored"
                )
                return 0
            return self.proxy.read_isr()
        if name == "device":
            return self._device_read(rel, size)
        return 0  # the notification area reads 0

    def write(self, offset: int, size: int, value: int) -> None:
        region = self._region(offset)
        if region is None:
            self.proxy.note(f"modern: write to unused BAR offset {offset:#x} ignored")
            return
        name, rel = region
        if name == "common":
            self.common_write(rel, size, value)
        elif name == "isr":
            self.proxy.device.misuse("pci-isr-write", "pci: modern: write to the read-only ISR ignored")
        elif name == "device":
            self._device_write(rel, size, value)
        else:
            self._notify_write(rel, size, value)

    @staticmethod
    def _region(offset: int) -> tuple[str, int] | None:
        for name, start, length in (
            ("common", QEMU_PCI.common_offset, QEMU_PCI.common_size),
            ("isr", QEMU_PCI.isr_offset, QEMU_PCI.isr_size),
            ("device", QEMU_PCI.device_offset, QEMU_PCI.device_size),
            ("notify", QEMU_PCI.notify_offset, NOTIFY_SIZE),
        ):
            if start <= offset < start + length:
                return name, offset - start
        return None

    # -- common configuration ------------------------------------------------------------

    def _field(self, offset: int, size: int, op: str) -> tuple[str, int] | None:
        """(field, shift) for a correctly sized access, else None (noted)."""
        if offset >= COMMON_CFG_SIZE:
            self.proxy.device.misuse(
                "pci-common-undefined", f"pci: modern: common cfg {op} beyond the structure at {offset:#x}"
            )
            return None
        name = _FIELD_AT.get(offset)
        shift = 0
        if name is None and offset - DWORD in _FIELD_AT:
            name, shift = _FIELD_AT[offset - DWORD], 32  # upper half of a 64-bit field
            if COMMON_CFG_WIDTH[name] != 2 * DWORD:
                name = None
        if name is None:
            self.proxy.device.misuse(
                "pci-common-undefined", f"pci: modern: common cfg {op} at {offset:#x} is inside a field"
            )
            return None
        width = COMMON_CFG_WIDTH[name]
        if size == width or (width == 2 * DWORD and size == DWORD):
            return name, shift
        self.proxy.device.misuse(
            "pci-common-width", f"pci: modern: wrong size access ({size}) to common cfg field {name}"
        )
        return None

    def common_read(self, offset: int, size: int) -> int:
        hit = self._field(offset, size, "read")
        if hit is None:
            return 0
        name, shift = hit
        value = self._get(name) >> shift & ((1 << (8 * size)) - 1)
        obs = self.proxy.device.observer
        if obs is not None:
            if name == "device_feature":
                obs.on_features_read(self.dfselect, value)
            elif name in ("queue_enable", "queue_reset", "queue_size"):
                obs.on_queue_read(self.proxy.queue_sel, name.removeprefix("queue_"), value)
        return value

    def _get(self, name: str) -> int:
        p = self.proxy
        d = p.device
        q = d.queue(p.queue_sel)
        match name:
            case "device_feature_select":
                return self.dfselect
            case "device_feature":
                if self.dfselect > 1:
                    return 0  # feature windows beyond bit 63 read 0
                return (d.device_features & ~LEGACY_ONLY) >> (32 * self.dfselect) & DWORD_MASK
            case "driver_feature_select":
                return self.gfselect
            case "driver_feature":
                if self.gfselect > 1:
                    return 0
                return d.driver_features >> (32 * self.gfselect) & DWORD_MASK
            case "config_msix_vector":
                return p.read_config_vector()
            case "num_queues":
                return len(d.queues)
            case "device_status":
                return d.read_status()
            case "config_generation":
                return d.config_generation
            case "queue_select":
                return p.queue_sel
            case "queue_size":
                # before the driver negotiated, every queue the device created answers
                shown = q or (None if d.driver_features else d.created_queue(p.queue_sel))
                return shown.size if shown is not None else 0
            case "queue_msix_vector":
                return p.read_queue_vector()
            case "queue_enable":
                return int(q.ready) if q else 0
            case "queue_notify_off" | "queue_notify_data":
                return q.index if q else 0  # QEMU maps the queues in order
            case "queue_desc" | "queue_driver" | "queue_device":
                return int(getattr(q, _QUEUE_ADDRESS[name])) if q else 0
        return 0  # queue_reset (completes at once), admin queue fields (none)

    def common_write(self, offset: int, size: int, value: int) -> None:
        hit = self._field(offset, size, "write")
        if hit is None:
            return
        name, shift = hit
        p = self.proxy
        d = p.device
        if name in _READ_ONLY:
            d.misuse(
                "pci-common-write-ro", f"pci: modern: write to read-only common cfg field {name} ignored"
            )
            return
        q = d.queue(p.queue_sel)
        if d.observer is not None and name in _QUEUE_FIELDS:
            d.observer.on_queue_write(p.queue_sel, _QUEUE_FIELDS[name], value, bool(q and q.ready))
        match name:
            case "device_feature_select":
                self.dfselect = value
            case "driver_feature_select":
                self.gfselect = value
            case "driver_feature":
                d.write_driver_features(self.gfselect, value)
            case "config_msix_vector":
                p.set_config_vector(value)
            case "device_status":
                p.write_status(value)
            case "queue_select":
                p.select_queue(value)
            case "queue_msix_vector":
                p.set_queue_vector(value)
            case "queue_size" | "queue_enable" | "queue_reset":
                self._queue_control(q, name, value)
            case "queue_desc" | "queue_driver" | "queue_device":
                self._set_address(q, _QUEUE_ADDRESS[name], shift, size, value)

    def _queue_control(self, q: QueueState | None, name: str, value: int) -> None:
        p = self.proxy
        d = p.device
        if q is None:
            p.note(f"modern: {name} write for nonexistent queue {p.queue_sel} ignored")
            return
        if name == "queue_size":
            if q.ready:
                p.note(f"modern: queue {q.index} size changed while enabled (ignored)")
                return
            d.set_queue_size(q, value)
        elif name == "queue_enable":
            if value != 1:
                p.note(f"modern: driver wrote {value} to queue_enable of queue {q.index} (ignored)")
                return
            q.ready = True
            q.ring = None
        else:  # queue_reset
            if not d.driver_features >> F.RING_RESET & 1:
                p.note("modern: queue_reset written without VIRTIO_F_RING_RESET (ignored)")
                return
            if value == 1:
                d.reset_queue(q.index)  # completes at once: queue_reset reads 0 again
                p.queue_vectors[q.index] = PCI.msix_no_vector

    def _set_address(self, q: QueueState | None, attr: str, shift: int, size: int, value: int) -> None:
        p = self.proxy
        if q is None:
            p.note(f"modern: queue address write for nonexistent queue {p.queue_sel} ignored")
            return
        if q.ready:
            p.note(f"modern: queue {q.index} address changed while enabled (ignored)")
            return
        old = getattr(q, attr)
        mask = ((1 << (8 * size)) - 1) << shift
        setattr(q, attr, (old & ~mask) | (value << shift & mask))

    # -- device configuration and notifications -----------------------------------------

    def _device_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, DWORD) or offset % size:
            self.proxy.device.misuse(
                "pci-config-width", f"pci: modern: device cfg read of {size} bytes at {offset:#x} ignored"
            )
            return 0
        return self.proxy.read_device_config(offset, size, "little")

    def _device_write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, DWORD) or offset % size:
            self.proxy.device.misuse(
                "pci-config-width", f"pci: modern: device cfg write of {size} bytes at {offset:#x} ignored"
            )
            return
        self.proxy.write_device_config(offset, size, value, "little")

    def _notify_write(self, offset: int, size: int, value: int) -> None:
        p = self.proxy
        mult = QEMU_PCI.notify_off_multiplier
        if p.device.observer is not None:
            p.device.observer.on_notify(offset // mult, value, size)
        if size not in (2, DWORD) or offset % mult:
            p.note(f"modern: notification of {size} bytes at +{offset:#x} ignored")
            return
        index = offset // mult
        if size == DWORD and p.device.has_feature(F.NOTIFICATION_DATA):
            p.device.notify_value(value)  # vq index + next offset/wrap (spec 4.1.5.2)
        else:
            p.device.notify(index)

    # -- the PCI configuration access capability -----------------------------------------

    def _cfg_window(self) -> tuple[int, int, int] | None:
        fn = self.proxy.fn
        at = self.cfg_cap_offset
        assert at is not None
        c = VIRTIO_CFG_CAP
        bar = fn.config[at + c["bar"]]
        offset = int.from_bytes(fn.config[at + c["offset"] : at + c["offset"] + DWORD], "little")
        length = int.from_bytes(fn.config[at + c["length"] : at + c["length"] + DWORD], "little")
        target = fn.bars.get(bar)
        if length not in (1, 2, DWORD) or offset % length or target is None:
            self.proxy.device.misuse(
                "pci-cfgcap-unaligned" if target is not None else "pci-cfgcap-range",
                f"pci: pci cfg capability: bar {bar} offset {offset:#x} length {length} is unusable",
            )
            return None
        if target.index != bar or offset + length > target.size:
            self.proxy.device.misuse(
                "pci-cfgcap-range", f"pci: pci cfg capability: {offset:#x}+{length} is outside BAR {bar}"
            )
            return None
        return bar, offset, length

    def _cfg_window_read(self, offset: int, size: int) -> None:
        window = self._cfg_window()
        if window is None:
            return
        bar, off, length = window
        value = self.proxy.fn.bars[bar].handler.read(off, length)
        data = self._cfg_data_offset()
        self.proxy.fn.config[data : data + DWORD] = value.to_bytes(DWORD, "little")

    def _cfg_window_write(self, offset: int, size: int) -> None:
        window = self._cfg_window()
        if window is None:
            return
        bar, off, length = window
        data = self._cfg_data_offset()
        value = int.from_bytes(self.proxy.fn.config[data : data + length], "little")
        self.proxy.fn.bars[bar].handler.write(off, length, value)

    def _cfg_data_offset(self) -> int:
        assert self.cfg_cap_offset is not None
        return self.cfg_cap_offset + VIRTIO_CFG_CAP["pci_cfg_data"]
