"""The guest's virtio-mmio transport driver (Linux's virtio_mmio.c), versions 1 and 2.

A driver profile that only knows the legacy interface rejects version 2 at probe time,
exactly as Linux before 4.0 did ("Version 2 not supported!").
"""

from __future__ import annotations

from virtio_sim.guest.link import HostLink
from virtio_sim.guest.transport.base import TransportError
from virtio_sim.layouts import MMIO_CONFIG_OFFSET, MMIO_OFFSETS, ByteOrder
from virtio_sim.ring.split import SplitRingAddresses
from virtio_sim.spec import MMIO

R = MMIO_OFFSETS
LEGACY_PAGE_SIZE = 4096
QUEUE_RESET_POLLS = 1000  # reads of QueueReset before a queue reset counts as stuck


class MmioTransportDriver:
    def __init__(self, link: HostLink, base: int, guest_order: ByteOrder = "little") -> None:
        self.link = link
        self.base = base
        self.guest_order = guest_order
        self.version = 0
        self.device_id = 0
        self.vendor_id = 0
        self.legacy = False
        self.name = "mmio"

    async def _r(self, reg: str) -> int:
        return await self.link.read(self.base + R[reg], 4)

    async def _w(self, reg: str, value: int) -> None:
        await self.link.write(self.base + R[reg], 4, value & 0xFFFFFFFF)

    async def identify(self, supported_versions: tuple[int, ...]) -> int:
        """Check magic and version; returns the device id (0 = empty slot)."""
        magic = await self._r("MagicValue")
        if magic != MMIO.magic:
            raise TransportError(f"wrong magic value {magic:#010x} at {self.base:#x}")
        self.version = await self._r("Version")
        if self.version not in supported_versions:
            raise TransportError(f"Version {self.version} not supported!")
        self.legacy = self.version == MMIO.version_legacy
        self.name = f"mmio-v{self.version}"
        self.device_id = await self._r("DeviceID")
        if self.device_id == 0:
            return 0  # an empty slot: Linux touches no other register (4.2.3.1.1)
        self.vendor_id = await self._r("VendorID")
        if self.legacy:
            await self._w("GuestPageSize", LEGACY_PAGE_SIZE)
        return self.device_id

    async def get_status(self) -> int:
        return await self._r("Status") & 0xFF

    async def set_status(self, status: int) -> None:
        await self._w("Status", status)

    async def reset(self) -> None:
        await self._w("Status", 0)
        if self.legacy:
            await self._w("GuestPageSize", LEGACY_PAGE_SIZE)

    async def get_features(self) -> int:
        await self._w("DeviceFeaturesSel", 1)
        high = 0 if self.legacy else await self._r("DeviceFeatures")
        await self._w("DeviceFeaturesSel", 0)
        low = await self._r("DeviceFeatures")
        return high << 32 | low

    async def set_features(self, features: int) -> None:
        await self._w("DriverFeaturesSel", 1)
        await self._w("DriverFeatures", 0 if self.legacy else features >> 32)
        await self._w("DriverFeaturesSel", 0)
        await self._w("DriverFeatures", features & 0xFFFFFFFF)

    async def config_generation(self) -> int:
        if self.legacy:
            return 0
        return await self._r("ConfigGeneration")

    def _config_order(self) -> ByteOrder:
        return self.guest_order if self.legacy else "little"

    async def read_config(self, offset: int, size: int) -> int:
        """Config fields are read at natural width; 8-byte fields as two 4-byte reads."""
        addr = self.base + MMIO_CONFIG_OFFSET + offset
        if size == 8:
            lo = await self.link.read(addr, 4)
            hi = await self.link.read(addr + 4, 4)
            if self._config_order() == "big":
                lo, hi = hi, lo
            return hi << 32 | lo
        return await self.link.read(addr, size)

    async def write_config(self, offset: int, size: int, value: int) -> None:
        await self.link.write(self.base + MMIO_CONFIG_OFFSET + offset, size, value)

    async def queue_max_size(self, index: int) -> int:
        await self._w("QueueSel", index)
        # Linux's vm_setup_vq(): a queue in use has QueuePFN (version 1) or QueueReady set.
        if await self._r("QueuePFN" if self.legacy else "QueueReady"):
            raise TransportError(f"queue {index} is already set up")
        return await self._r("QueueSizeMax")

    async def setup_queue(self, index: int, size: int, addrs: SplitRingAddresses) -> None:
        await self._w("QueueSel", index)
        await self._w("QueueSize", size)
        if self.legacy:
            await self._w("QueueAlign", LEGACY_PAGE_SIZE)
            await self._w("QueuePFN", addrs.desc // LEGACY_PAGE_SIZE)
            return
        for reg, addr in (
            ("QueueDesc", addrs.desc),
            ("QueueDriver", addrs.avail),
            ("QueueDevice", addrs.used),
        ):
            await self._w(reg + "Low", addr)
            await self._w(reg + "High", addr >> 32)
        await self._w("QueueReady", 1)

    async def disable_queue(self, index: int) -> None:
        await self._w("QueueSel", index)
        if self.legacy:
            await self._w("QueuePFN", 0)
        else:
            await self._w("QueueReady", 0)
            if await self._r("QueueReady"):  # Linux's vm_del_vq() reads it back to synchronise
                raise TransportError(f"queue {index} still reads ready after QueueReady 0")

    async def notify(self, index: int, data: int | None = None) -> None:
        await self._w("QueueNotify", index if data is None else data)

    async def reset_queue(self, index: int) -> None:
        """Linux's vm_reset_vq(): write 1 to QueueReset, poll until it reads 0 again."""
        if self.legacy:
            raise TransportError("virtio-mmio version 1 has no QueueReset register")
        await self._w("QueueSel", index)
        await self._w("QueueReset", 1)
        for _ in range(QUEUE_RESET_POLLS):
            if not await self._r("QueueReset"):
                break
        else:
            raise TransportError(f"queue {index} reset did not complete")
        if await self._r("QueueReady"):
            raise TransportError(f"queue {index} still reads ready after its reset")

    async def ack_interrupt(self) -> int:
        status = await self._r("InterruptStatus")
        if status:
            await self._w("InterruptACK", status)
        return status

    def legacy_ring_align(self) -> int | None:
        return LEGACY_PAGE_SIZE if self.legacy else None
