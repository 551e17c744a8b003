"""The guest's legacy virtio-pci transport driver (Linux's virtio_pci_legacy.c and
virtio_pci_legacy_dev.c): the header in I/O BAR 0.

Only transitional ids with revision 0 are taken. Features are 32 bits wide, a queue's
size is whatever the device says, its ring is one contiguous area aligned to 4096 whose
page frame number (which must fit 32 bits) is written to the PFN register. Device config
follows the header at 20, or at 24 while MSI-X is enabled, and is read byte by byte in
the guest's own byte order, exactly as Linux's vp_get does.
"""

from __future__ import annotations

from virtio_sim.guest.transport.base import TransportError
from virtio_sim.guest.transport.pci_common import (
    CONFIG_ENTRY,
    NO_VECTOR,
    NoDevice,
    PciTransportBase,
    legacy_device_type,
)
from virtio_sim.layouts import (
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    LEGACY_HDR,
    LEGACY_HDR_WIDTH,
)
from virtio_sim.ring.split import SplitRingAddresses
from virtio_sim.spec import PCI, QEMU_PCI

PFN_LIMIT = 1 << 32


class PciLegacyTransport(PciTransportBase):
    name = "pci-legacy"
    legacy = True

    async def probe(self) -> int:
        dtype = legacy_device_type(self.pci)
        bar = self.pci.bar(QEMU_PCI.legacy_io_bar)
        if bar is None or not bar.is_io:
            raise NoDevice("no legacy I/O BAR 0")
        if not bar.address:
            raise TransportError("legacy I/O BAR 0 has no address")
        self.base = bar.address
        self.bar_size = bar.size
        self.device_id = dtype
        return dtype

    async def _r(self, name: str) -> int:
        return await self.link.pio_read(self.base + LEGACY_HDR[name], LEGACY_HDR_WIDTH[name])

    async def _w(self, name: str, value: int) -> None:
        width = LEGACY_HDR_WIDTH[name]
        await self.link.pio_write(self.base + LEGACY_HDR[name], width, value & ((1 << 8 * width) - 1))

    async def get_status(self) -> int:
        return await self._r("status")

    async def set_status(self, status: int) -> None:
        await self._w("status", status)

    async def reset(self) -> None:
        await self._w("status", 0)
        await self._r("status")  # flush the reset
        if self.msix_active:
            await self._w("config_msix_vector", CONFIG_ENTRY)
            if await self._r("config_msix_vector") == NO_VECTOR:
                await self.fall_back_to_intx("config vector refused")

    async def get_features(self) -> int:
        return await self._r("host_features")

    async def set_features(self, features: int) -> None:
        await self._w("guest_features", features & 0xFFFFFFFF)

    async def config_generation(self) -> int:
        return 0  # the legacy interface has no generation counter

    def _config_base(self) -> int:
        offset = LEGACY_CONFIG_OFFSET_MSIX if self.msix_active else LEGACY_CONFIG_OFFSET
        return self.base + offset

    async def read_config(self, offset: int, size: int) -> int:
        base = self._config_base()
        if base + offset + size > self.base + self.bar_size:
            raise TransportError(f"device config access {offset:#x}+{size} is beyond BAR 0")
        raw = bytes([await self.link.pio_read(base + offset + i, 1) for i in range(size)])
        return int.from_bytes(raw, self.guest_order)

    async def write_config(self, offset: int, size: int, value: int) -> None:
        base = self._config_base()
        if base + offset + size > self.base + self.bar_size:
            raise TransportError(f"device config access {offset:#x}+{size} is beyond BAR 0")
        for i, b in enumerate(value.to_bytes(size, self.guest_order)):
            await self.link.pio_write(base + offset + i, 1, b)

    async def queue_max_size(self, index: int) -> int:
        await self._w("queue_sel", index)
        num = await self._r("queue_num")
        if num and await self._r("queue_pfn"):
            raise TransportError(f"queue {index} is already set up")
        return num

    async def setup_queue(self, index: int, size: int, addrs: SplitRingAddresses) -> None:
        pfn = addrs.desc >> PCI.legacy_pfn_shift
        if addrs.desc % PCI.legacy_queue_align or pfn >= PFN_LIMIT:
            raise TransportError(
                f"platform bug: legacy virtio-pci ring at {addrs.desc:#x} is not a 32-bit PFN"
            )
        await self._w("queue_sel", index)
        if size != await self._r("queue_num"):
            raise TransportError(f"legacy queue {index} size cannot be changed to {size}")
        if self.msix_active:
            assert self.msix is not None
            entry = self.msix.assign(index)
            await self._w("queue_msix_vector", entry)
            if await self._r("queue_msix_vector") == NO_VECTOR:
                await self.fall_back_to_intx(f"queue {index} vector refused")
        await self._w("queue_pfn", pfn)

    async def disable_queue(self, index: int) -> None:
        await self._w("queue_sel", index)
        if self.msix_active:
            await self._w("queue_msix_vector", NO_VECTOR)
            await self._r("isr")  # flush, as Linux does
        await self._w("queue_pfn", 0)

    async def notify(self, index: int, data: int | None = None) -> None:
        # The legacy header has a 16-bit notify register only: no notification data.
        await self._w("queue_notify", index)

    async def reset_queue(self, index: int) -> None:
        raise TransportError("the legacy virtio-pci interface has no per-queue reset")

    async def ack_interrupt(self) -> int:
        return await self._r("isr")

    def legacy_ring_align(self) -> int | None:
        return PCI.legacy_queue_align
