"""Guest boot: find the virtio-mmio transports, bind drivers, run their probe.

Without firmware tables the guest learns its transports the way Linux does from the
kernel command line (``virtio_mmio.device=<size>@<base>:<irq>``). Probing follows Linux:
check magic and version, skip placeholder slots (device id 0), find a driver for the
device id, negotiate, let the driver set up queues, DRIVER_OK. Interrupt lines are routed
to the devices behind them; a raised line is handled by reading and acknowledging the
interrupt status until no cause is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import trio

from guest.allocator import PageAllocator
from guest.dma import DirectDma
from guest.drivers.base import GuestDriver
from guest.drivers.blk import BlkDriver
from guest.drivers.rng import RngDriver
from guest.link import HostLink, HostLinkError
from guest.transport.base import TransportError
from guest.transport.mmio import MmioTransportDriver
from guest.virtio import DriverPolicy, ProbeRefused, VirtioGuestDevice
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess
from virtio_sim.spec import DEVICE_TYPES, DEVICE_TYPES_BY_ID, MMIO
from virtio_sim.wire import IrqKind

DRIVERS: dict[str, type[GuestDriver]] = {"rng": RngDriver, "blk": BlkDriver}

IRQ_STORM_LIMIT = 64  # handler passes per raised line before the device counts as broken
_MMIO_PARAM = re.compile(r"virtio_mmio\.device=(\w+)@(0x[0-9a-fA-F]+|\d+):(\d+)")
_SIZE_SUFFIX = {"K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BootError(Exception):
    pass


@dataclass
class MmioResource:
    base: int
    size: int
    irq: int


def parse_cmdline(cmdline: str) -> list[MmioResource]:
    out = []
    for m in _MMIO_PARAM.finditer(cmdline):
        size_s = m.group(1)
        mult = _SIZE_SUFFIX.get(size_s[-1], 1)
        size = int(size_s[:-1] if mult != 1 else size_s, 0) * mult
        out.append(MmioResource(int(m.group(2), 0), size, int(m.group(3))))
    return out


@dataclass
class ProbeRecord:
    """Why a transport did or did not end up with a working driver."""

    where: str
    device_key: str | None
    bound: bool
    reason: str = ""
    device: VirtioGuestDevice | None = None
    driver: GuestDriver | None = None


@dataclass
class GuestPolicy:
    driver: DriverPolicy = field(default_factory=DriverPolicy)
    mmio_versions: tuple[int, ...] = (MMIO.version_legacy, MMIO.version_modern)
    guest_order: ByteOrder = "little"


class GuestKernel:
    def __init__(
        self, link: HostLink, memory: ByteAccess, ram_size: int, policy: GuestPolicy
    ) -> None:
        self.link = link
        self.memory = memory
        self.policy = policy
        self.allocator = PageAllocator(1 << 20, ram_size)
        self.dma = DirectDma(memory, self.allocator)
        self.probes: list[ProbeRecord] = []
        self._irq_routes: dict[int, list[VirtioGuestDevice]] = {}
        self._irq_send, self._irq_recv = trio.open_memory_channel[int](256)
        link.irq_handler = self._on_irq

    def _on_irq(self, kind: IrqKind, line: int, value: int) -> None:
        if kind is IrqKind.LINE_LEVEL and value:
            try:
                self._irq_send.send_nowait(line)
            except trio.WouldBlock:
                pass  # a flood: the pending entries for this line will handle it

    async def irq_loop(self) -> None:
        """Handle raised lines; a level line is served until no device has a cause left."""
        async for line in self._irq_recv:
            for dev in self._irq_routes.get(line, []):
                for _ in range(IRQ_STORM_LIMIT):
                    try:
                        if not await dev.handle_interrupt():
                            break
                    except HostLinkError as e:
                        # The host is gone: nothing will be handled any more; whoever
                        # waits for this device learns it from the broken device.
                        dev.mark_broken(f"host link lost: {e}")
                        return
                else:
                    dev.mark_broken(f"interrupt storm on line {line}: status never clears")

    async def probe_mmio(self, cmdline: str) -> list[ProbeRecord]:
        resources = parse_cmdline(cmdline)
        if not resources:
            raise BootError("no virtio_mmio.device= parameters on the command line")
        for res in resources:
            self.probes.append(await self._probe_one(res))
        return self.probes

    async def _probe_one(self, res: MmioResource) -> ProbeRecord:
        where = f"virtio-mmio@{res.base:#x}"
        t = MmioTransportDriver(self.link, res.base, self.policy.guest_order)
        try:
            device_id = await t.identify(self.policy.mmio_versions)
        except TransportError as e:
            return ProbeRecord(where, None, False, str(e))
        if device_id == 0:
            return ProbeRecord(where, None, False, "empty slot (device id 0)")
        dtype = DEVICE_TYPES_BY_ID.get(device_id)
        key = dtype.key if dtype else None
        driver_cls = DRIVERS.get(key or "")
        if driver_cls is None:
            return ProbeRecord(where, key, False, f"no driver for device id {device_id}")
        dev = VirtioGuestDevice(t, self.memory, self.dma, self.policy.driver)
        self._irq_routes.setdefault(res.irq, []).append(dev)
        driver = driver_cls(dev)
        try:
            await dev.negotiate(driver.device_feature_mask | self.policy.driver.known_features)
            await driver.probe()
            await dev.driver_ok()
        except ProbeRefused as e:
            return ProbeRecord(where, key, False, str(e), dev, driver)
        return ProbeRecord(where, key, True, "", dev, driver)

    def bound(self, device_key: str) -> list[ProbeRecord]:
        return [p for p in self.probes if p.bound and p.device_key == device_key]


def device_key_of(name: str) -> str:
    """``virtio-blk-device`` -> ``blk``."""
    for key in DEVICE_TYPES:
        if name.startswith(f"virtio-{key}-"):
            return key
    raise KeyError(name)
