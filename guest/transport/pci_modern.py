"""The guest's modern virtio-pci transport driver (Linux's virtio_pci_modern.c and
virtio_pci_modern_dev.c).

Probing finds the virtio vendor capabilities (the first of each type whose BAR exists),
checks each structure lies inside its BAR with the alignment the spec asks for, and maps
common config, ISR, notification area and device config. A function without a common
config capability is left for the legacy driver (:class:`NoDevice`); one with common
config but without ISR or notification is broken (:class:`TransportError`).

Every register is accessed at its natural width; 64-bit fields as two 32-bit halves;
device config is little-endian, 64-bit config fields are read low half first, and the
caller's generation loop makes such reads consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.guest.pci import DWORD
from virtio_sim.guest.transport.base import TransportError
from virtio_sim.guest.transport.pci_common import (
    CONFIG_ENTRY,
    NO_VECTOR,
    NoDevice,
    PciTransportBase,
    modern_device_type,
)
from virtio_sim.layouts import COMMON_CFG, COMMON_CFG_V1_0_SIZE, COMMON_CFG_WIDTH, VIRTIO_CAP
from virtio_sim.ring.split import SplitRingAddresses
from virtio_sim.spec import PCI, PCI_BAR, PCI_CAP, PCI_CAP_ID

C = COMMON_CFG
RESET_POLL_LIMIT = 1000  # status reads before a device that never finishes its reset is given up
PAGE_SIZE = 4096  # the most of device config Linux maps


@dataclass
class VirtioCap:
    cfg_type: int
    bar: int
    offset: int
    length: int
    position: int  # where the capability sits in config space


@dataclass
class MappedRegion:
    address: int
    length: int


QUEUE_RESET_POLLS = 1000  # reads of queue_reset before the reset counts as stuck


class PciModernTransport(PciTransportBase):
    legacy = False

    async def probe(self) -> int:
        """Find and map the structures; returns the virtio device type."""
        dtype = modern_device_type(self.pci)
        caps = await self._virtio_caps()
        common = self._find(caps, PCI_CAP.COMMON)
        if common is None:
            raise NoDevice("no virtio common config capability: leaving for legacy driver")
        isr = self._find(caps, PCI_CAP.ISR)
        notify = self._find(caps, PCI_CAP.NOTIFY)
        if isr is None or notify is None:
            raise TransportError(
                f"virtio_pci: missing capabilities common/isr/notify: "
                f"{common is not None}/{isr is not None}/{notify is not None}"
            )
        self.common = self._map(common, COMMON_CFG_V1_0_SIZE, DWORD, COMMON_CFG_V1_0_SIZE * 2)
        self.isr = self._map(isr, 1, 1, 1)
        self.notify_area = self._map(notify, 2, 2, notify.length)
        self.notify_multiplier = await self.bus.read(
            self.pci.bdf, notify.position + VIRTIO_CAP["notify_off_multiplier"], DWORD
        )
        device = self._find(caps, PCI_CAP.DEVICE)
        self.device_cfg = self._map(device, 0, DWORD, PAGE_SIZE) if device else None
        self.device_id = dtype
        self.name = "pci-modern" if self.pci.device_id >= PCI.modern_device_id_base else ("pci-transitional")
        self._notify_addr: dict[int, int] = {}
        return dtype

    async def _virtio_caps(self) -> list[VirtioCap]:
        out = []
        for pos in self.pci.find_caps(PCI_CAP_ID.VNDR):
            bdf = self.pci.bdf
            cap_len = await self.bus.read(bdf, pos + VIRTIO_CAP["cap_len"], 1)
            if cap_len < VIRTIO_CAP["notify_off_multiplier"]:
                continue  # too short to be a virtio_pci_cap
            out.append(
                VirtioCap(
                    await self.bus.read(bdf, pos + VIRTIO_CAP["cfg_type"], 1),
                    await self.bus.read(bdf, pos + VIRTIO_CAP["bar"], 1),
                    await self.bus.read(bdf, pos + VIRTIO_CAP["offset"], DWORD),
                    await self.bus.read(bdf, pos + VIRTIO_CAP["length"], DWORD),
                    pos,
                )
            )
        return out

    def _find(self, caps: list[VirtioCap], cfg_type: int) -> VirtioCap | None:
        """virtio_pci_find_capability: the first of its type whose BAR is a real one."""
        for cap in caps:
            if cap.cfg_type != cfg_type or cap.bar >= PCI_BAR.count:
                continue
            bar = self.pci.bar(cap.bar)
            if bar is not None and bar.size and bar.address:
                return cap
        return None

    def _map(self, cap: VirtioCap, minlen: int, align: int, size: int) -> MappedRegion:
        """vp_modern_map_capability's checks, then the structure's guest address."""
        bar = self.pci.bar(cap.bar)
        assert bar is not None
        if cap.length < minlen:
            raise TransportError(f"virtio_pci: bad capability len {cap.length} (>={minlen})")
        if cap.offset % align:
            raise TransportError(f"virtio_pci: bad capability offset {cap.offset:#x}")
        if cap.offset + minlen > bar.size:
            raise TransportError(
                f"virtio_pci: map virtio {minlen}@{cap.offset:#x} out of range on bar "
                f"{cap.bar} length {bar.size:#x}"
            )
        length = min(cap.length, size, bar.size - cap.offset)
        return MappedRegion(bar.address + cap.offset, length)

    # -- registers -----------------------------------------------------------------------

    async def _r(self, name: str) -> int:
        return await self.link.read(self.common.address + C[name], COMMON_CFG_WIDTH[name])

    async def _w(self, name: str, value: int) -> None:
        width = COMMON_CFG_WIDTH[name]
        await self.link.write(self.common.address + C[name], width, value & ((1 << 8 * width) - 1))

    async def _w64(self, name: str, value: int) -> None:
        """vp_iowrite64_twopart: low half first."""
        await self.link.write(self.common.address + C[name], DWORD, value & 0xFFFFFFFF)
        await self.link.write(self.common.address + C[name] + DWORD, DWORD, value >> 32)

    async def get_status(self) -> int:
        return await self._r("device_status")

    async def set_status(self, status: int) -> None:
        await self._w("device_status", status)

    async def reset(self) -> None:
        """Write 0 and wait for the device to read 0 (vp_modern_set_status + poll), then
        route configuration changes to their vector again."""
        await self._w("device_status", 0)
        for _ in range(RESET_POLL_LIMIT):
            if await self._r("device_status") == 0:
                break
        else:
            raise TransportError("device never finished its reset")
        if self.msix_active:
            await self._w("config_msix_vector", CONFIG_ENTRY)
            if await self._r("config_msix_vector") == NO_VECTOR:
                await self.fall_back_to_intx("config vector refused")

    async def get_features(self) -> int:
        await self._w("device_feature_select", 0)
        low = await self._r("device_feature")
        await self._w("device_feature_select", 1)
        high = await self._r("device_feature")
        return high << 32 | low

    async def set_features(self, features: int) -> None:
        await self._w("driver_feature_select", 0)
        await self._w("driver_feature", features & 0xFFFFFFFF)
        await self._w("driver_feature_select", 1)
        await self._w("driver_feature", features >> 32)

    async def config_generation(self) -> int:
        return await self._r("config_generation")

    def _config_addr(self, offset: int, size: int) -> int:
        region = self.device_cfg
        if region is None or offset + size > region.length:
            raise TransportError(f"device config access {offset:#x}+{size} is not mapped")
        return region.address + offset

    async def read_config(self, offset: int, size: int) -> int:
        addr = self._config_addr(offset, size)
        if size == 2 * DWORD:
            low = await self.link.read(addr, DWORD)
            high = await self.link.read(addr + DWORD, DWORD)
            return high << 32 | low
        return await self.link.read(addr, size)

    async def write_config(self, offset: int, size: int, value: int) -> None:
        addr = self._config_addr(offset, size)
        if size == 2 * DWORD:
            await self.link.write(addr, DWORD, value & 0xFFFFFFFF)
            await self.link.write(addr + DWORD, DWORD, value >> 32)
            return
        await self.link.write(addr, size, value)

    async def queue_max_size(self, index: int) -> int:
        if index >= await self._r("num_queues"):
            return 0
        await self._w("queue_select", index)
        size = await self._r("queue_size")
        if size and await self._r("queue_enable"):
            raise TransportError(f"queue {index} is already set up")
        return size

    async def setup_queue(self, index: int, size: int, addrs: SplitRingAddresses) -> None:
        await self._w("queue_select", index)
        await self._w("queue_size", size)
        await self._w64("queue_desc", addrs.desc)
        await self._w64("queue_driver", addrs.avail)
        await self._w64("queue_device", addrs.used)
        if self.msix_active:
            assert self.msix is not None
            entry = self.msix.assign(index)
            await self._w("queue_msix_vector", entry)
            if await self._r("queue_msix_vector") == NO_VECTOR:
                await self.fall_back_to_intx(f"queue {index} vector refused")
        off = await self._r("queue_notify_off")
        if off * self.notify_multiplier + 2 > self.notify_area.length:
            raise TransportError(
                f"bad notification offset {off} (x {self.notify_multiplier}) for queue "
                f"{index} > {self.notify_area.length}"
            )
        self._notify_addr[index] = self.notify_area.address + off * self.notify_multiplier
        await self._w("queue_enable", 1)

    async def disable_queue(self, index: int) -> None:
        await self._w("queue_select", index)
        if self.msix_active:
            await self._w("queue_msix_vector", NO_VECTOR)
            await self._r("queue_msix_vector")  # flush

    async def notify(self, index: int, data: int | None = None) -> None:
        """A 16-bit write of the queue index, or the 32-bit NOTIFICATION_DATA value."""
        addr = self._notify_addr.get(index)
        if addr is None:
            raise TransportError(f"queue {index} has no notification address")
        if data is None:
            await self.link.write(addr, 2, index)
        else:
            await self.link.write(addr, 4, data)

    async def reset_queue(self, index: int) -> None:
        """VIRTIO_F_RING_RESET: write 1 to queue_reset, wait until it reads 0 again."""
        await self._w("queue_select", index)
        await self._w("queue_reset", 1)
        for _ in range(QUEUE_RESET_POLLS):
            if not await self._r("queue_reset"):
                self._notify_addr.pop(index, None)
                return
        raise TransportError(f"queue {index} reset did not complete")

    async def ack_interrupt(self) -> int:
        return await self.link.read(self.isr.address, 1)
