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
from guest.dma import DirectDma, DmaApi
from guest.drivers.base import DriverProbeError, GuestDriver
from guest.drivers.blk import BlkDriver
from guest.drivers.console import ConsoleDriver
from guest.drivers.iommu import IommuDriver, IommuRequestError
from guest.drivers.net import NetDriver
from guest.drivers.rng import RngDriver
from guest.iommu_dma import IommuDma
from guest.link import HostLink, HostLinkError
from guest.transport.base import TransportError
from guest.transport.mmio import MmioTransportDriver
from guest.virtio import DeviceNeedsReset, DriverPolicy, ProbeRefused, VirtioGuestDevice
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess
from virtio_sim.spec import DEVICE_TYPES, DEVICE_TYPES_BY_ID, MMIO, F
from virtio_sim.wire import IrqKind

DRIVERS: dict[str, type[GuestDriver]] = {
    "rng": RngDriver,
    "blk": BlkDriver,
    "iommu": IommuDriver,
    "net": NetDriver,
    "console": ConsoleDriver,
}

RAM_ALLOC_START = 1 << 20  # the first MiB is the "firmware's"; drivers allocate above it
IRQ_STORM_LIMIT = 64  # handler passes per raised line before the device counts as broken
_MMIO_PARAM = re.compile(r"virtio_mmio\.device=(\w+)@(0x[0-9a-fA-F]+|\d+):(\d+)")
_SIZE_SUFFIX = {"K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BootError(Exception):
    pass


_VIOT_PARAM = re.compile(r"virtio_sim\.viot=(0x[0-9a-fA-F]+):([0-9a-fA-Fx@,]*)")


@dataclass
class Viot:
    """Which transports sit behind which virtio-iommu (what ACPI's VIOT table says)."""

    iommu_base: int
    endpoints: dict[int, int]  # transport base -> endpoint id


def parse_viot(cmdline: str) -> Viot | None:
    m = _VIOT_PARAM.search(cmdline)
    if m is None:
        return None
    endpoints = {}
    for item in filter(None, m.group(2).split(",")):
        base, _, ep = item.partition("@")
        endpoints[int(base, 0)] = int(ep, 0)
    return Viot(int(m.group(1), 0), endpoints)


def endpoint_domain(endpoint: int) -> int:
    """One DMA domain per endpoint, as Linux's default domains are."""
    return endpoint + 1


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
    #: the probe failed because a device (this one, or the IOMMU in front of it) broke,
    #: not because either side refused the other
    device_broke: bool = False


@dataclass
class GuestPolicy:
    driver: DriverPolicy = field(default_factory=DriverPolicy)
    mmio_versions: tuple[int, ...] = (MMIO.version_legacy, MMIO.version_modern)
    guest_order: ByteOrder = "little"
    #: Linux's vring_use_dma_api(): "never", "feature" (ACCESS_PLATFORM negotiated), "always"
    dma_api: str = "feature"

    def uses_dma_api(self, features: int) -> bool:
        return self.dma_api == "always" or (
            self.dma_api == "feature" and bool(features >> F.ACCESS_PLATFORM & 1)
        )


SWIOTLB_SIZE = 4 << 20  # the shared bounce window of a restricted-memory guest


class GuestKernel:
    def __init__(self, link: HostLink, memory: ByteAccess, ram_size: int, policy: GuestPolicy) -> None:
        self.link = link
        self.memory = memory
        self.policy = policy
        restricted = policy.driver.restricted_memory
        low, high = RAM_ALLOC_START, ram_size - (SWIOTLB_SIZE if restricted else 0)
        self.dma = DirectDma(memory, PageAllocator(low, high))
        self.shared_dma = self.dma
        if restricted:
            mark_private = getattr(memory, "mark_private", None)
            if mark_private is None:
                raise BootError("this guest memory cannot emulate private (encrypted) pages")
            mark_private(low, high - low)
            # swiotlb: DMA through the DMA API is bounced via this shared window.
            self.shared_dma = DirectDma(memory, PageAllocator(high, ram_size))
        self.probes: list[ProbeRecord] = []
        self.viot: Viot | None = None
        self.iommu: IommuDriver | None = None
        self.iommu_dmas: list[IommuDma] = []
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
        try:
            async for line in self._irq_recv:
                for dev in self._irq_routes.get(line, []):
                    for _ in range(IRQ_STORM_LIMIT):
                        if not await dev.handle_interrupt():
                            break
                    else:
                        dev.mark_broken(f"interrupt storm on line {line}: status never clears")
        except HostLinkError as e:
            # The host is gone: every waiter must wake up and see it, nothing may hang.
            for devs in self._irq_routes.values():
                for dev in devs:
                    dev.mark_broken(f"host link lost: {e}")

    async def probe_mmio(self, cmdline: str) -> list[ProbeRecord]:
        resources = parse_cmdline(cmdline)
        if not resources:
            raise BootError("no virtio_mmio.device= parameters on the command line")
        self.viot = parse_viot(cmdline)
        if self.viot is not None:
            # The IOMMU is probed first: the devices behind it are attached at their probe.
            resources.sort(key=lambda r: r.base != self.viot.iommu_base)  # type: ignore[union-attr]
        for res in resources:
            record = await self._probe_one(res)
            self.probes.append(record)
            if record.bound and isinstance(record.driver, IommuDriver):
                self.iommu = record.driver
                await record.driver.start_events()
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
        if self.policy.driver.drivers is not None and key not in self.policy.driver.drivers:
            return ProbeRecord(where, key, False, f"this kernel has no driver for {key} devices")
        endpoint = self.viot.endpoints.get(res.base) if self.viot else None

        def dma_for(features: int) -> DmaApi:
            return self._dma_for(features, endpoint)

        dev = VirtioGuestDevice(t, self.memory, self.dma, self.policy.driver, dma_for)
        self._irq_routes.setdefault(res.irq, []).append(dev)
        driver = driver_cls(dev)
        try:
            if endpoint is not None and self.iommu is not None:
                # Linux's IOMMU core attaches every endpoint to a default domain at add time.
                await self.iommu.attach(endpoint_domain(endpoint), endpoint)
            device_mask = self.policy.driver.device_features.get(key or "", driver.device_feature_mask)
            wanted = (driver.device_feature_mask & device_mask) | self.policy.driver.known_features
            await dev.negotiate(wanted)
            await driver.probe()
            await dev.driver_ok()
        except ProbeRefused as e:
            return ProbeRecord(where, key, False, str(e), dev, driver)
        except IommuRequestError as e:
            return ProbeRecord(where, key, False, f"IOMMU: {e}", dev, driver)
        except DeviceNeedsReset as e:
            record = ProbeRecord(where, key, False, f"a device broke during probe: {e}", dev, driver)
            record.device_broke = True
            return record
        except DriverProbeError as e:
            await dev.fail(str(e))
            return ProbeRecord(where, key, False, f"driver refused the device: {e}", dev, driver)
        return ProbeRecord(where, key, True, "", dev, driver)

    def _dma_for(self, features: int, endpoint: int | None) -> DmaApi:
        """Linux's rule: the DMA API when ACCESS_PLATFORM was negotiated (or always, Xen).

        Through the DMA API a device behind the IOMMU gets IOVAs; a restricted guest's
        buffers come from the shared swiotlb window; otherwise raw guest-physical memory.
        """
        if not self.policy.uses_dma_api(features):
            return self.dma
        if endpoint is not None and self.iommu is not None:
            dma = IommuDma(
                self.memory, self.shared_dma.allocator, self.iommu, endpoint_domain(endpoint), endpoint
            )
            self.iommu_dmas.append(dma)
            return dma
        return self.shared_dma

    def check_canaries(self) -> list[str]:
        """Every device write outside a DMA buffer seen so far (canary hits)."""
        found = self.dma.check()
        if self.shared_dma is not self.dma:
            found = found + self.shared_dma.check()
        return found

    def bound(self, device_key: str) -> list[ProbeRecord]:
        return [p for p in self.probes if p.bound and p.device_key == device_key]


def device_key_of(name: str) -> str:
    """``virtio-blk-device`` -> ``blk``."""
    for key in DEVICE_TYPES:
        if name.startswith(f"virtio-{key}-"):
            return key
    raise KeyError(name)
