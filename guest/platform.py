"""Guest boot: find the virtio-mmio transports, bind drivers, run their probe.

Without firmware tables the guest learns its transports the way Linux does from the
kernel command line (``virtio_mmio.device=<size>@<base>:<irq>``). Probing follows Linux:
check magic and version, skip placeholder slots (device id 0), find a driver for the
device id, negotiate, let the driver set up queues, DRIVER_OK. Interrupt lines are routed
to the devices behind them; a raised line is handled by reading and acknowledging the
interrupt status until no cause is left.

PCI -- described by ACPI (the host bridge's _CRS windows, ECAM from the MCFG) or, on a
machine without firmware, by ``virtio_sim.pci=`` on the command line -- is enumerated
by :mod:`guest.pci`; every function with the virtio vendor id goes through Linux's
virtio_pci_probe: enable, modern transport first and legacy as fallback (the other way
round with ``force_legacy``), bus mastering, MSI-X vectors (config change on entry 0, one
per queue or one shared) with INTx as the fallback. An MSI carries the guest vector as
its data and goes straight to the config or queue handler it was given to.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import trio

from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.guest.dma import DirectDma, DmaApi
from virtio_sim.guest.drivers.base import DriverProbeError, GuestDriver, IommuRequestError
from virtio_sim.guest.firmware import VIRTIO_MMIO_HIDS, FirmwareView, discover
from virtio_sim.guest.iommu_dma import IommuDma, IovaAllocator
from virtio_sim.guest.kinds import drivers
from virtio_sim.guest.link import HostLink, HostLinkError
from virtio_sim.guest.pci import (
    Conf1Access,
    ConfigAccess,
    EcamAccess,
    GuestMsix,
    GuestPciBus,
    GuestPciDevice,
    PciError,
    PciFirmware,
    msix_cap,
    parse_pci_param,
)
from virtio_sim.guest.platform_dma import (
    TCE_WINDOW,
    PlatformInfo,
    PlatformIommu,
    XenDma,
    parse_platform,
    vring_use_dma_api,
)
from virtio_sim.guest.transport.base import ConfigOps, TransportError
from virtio_sim.guest.transport.mmio import MmioTransportDriver
from virtio_sim.guest.transport.pci_common import NoDevice, PciTransportBase
from virtio_sim.guest.transport.pci_legacy import PciLegacyTransport
from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.guest.virtio import (
    DeviceNeedsReset,
    DriverHang,
    DriverPolicy,
    ProbeRefused,
    VirtioGuestDevice,
)
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess
from virtio_sim.spec import DEVICE_TYPES, DEVICE_TYPES_BY_ID, MMIO, PCI
from virtio_sim.wire import IrqKind

if TYPE_CHECKING:
    from virtio_sim.guest.acpi import ViotInfo
    from virtio_sim.guest.drivers.iommu import IommuDriver

#: device kind -> the driver that binds it, from the kinds' guest halves (guest/kinds.py);
#: a kind's driver module is imported when a probe finds such a device
DRIVERS: Mapping[str, type[GuestDriver]] = drivers()


def iommu_driver(driver: GuestDriver | None) -> IommuDriver | None:
    """``driver`` if it is the virtio-iommu driver, else None. The class is looked up in
    sys.modules: while nothing has imported the iommu driver's module no driver can be
    one, and a run without an IOMMU never imports it."""
    module = sys.modules.get("virtio_sim.guest.drivers.iommu")
    if module is not None and isinstance(driver, module.IommuDriver):
        return cast("IommuDriver", driver)
    return None


DEFAULT_ACPI_HIDS = VIRTIO_MMIO_HIDS
DEFAULT_DT_COMPATIBLES = ("virtio,mmio",)
RAM_ALLOC_START = 1 << 20  # the first MiB is the "firmware's"; drivers allocate above it
IRQ_STORM_LIMIT = 64  # handler passes per raised line before the device counts as broken
FIRST_DEVICE_VECTOR = 0x30  # guest interrupt vectors handed to MSI-X entries start here
MIN_MSIX_ENTRIES = 2  # one for config changes, one (shared) for the queues
_MMIO_PARAM = re.compile(r"virtio_mmio\.device=(\w+)@(0x[0-9a-fA-F]+|\d+):(\d+)")
_SIZE_SUFFIX = {"K": 1 << 10, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BootError(Exception):
    pass


_VIOT_PARAM = re.compile(r"virtio_sim\.viot=(pci:)?(0x[0-9a-fA-F]+):([0-9a-fA-Fx@,pci:]*)")


@dataclass
class Viot:
    """Which transports sit behind which virtio-iommu (what ACPI's VIOT table says)."""

    iommu_base: int  # the IOMMU's mmio transport base, or its PCI requester id (iommu_is_pci)
    endpoints: dict[int, int]  # mmio transport base -> endpoint id
    pci_endpoints: dict[int, int] = field(default_factory=dict)  # requester id -> endpoint id
    iommu_is_pci: bool = False  # ``virtio_sim.viot=pci:RID:...``: a virtio-iommu-pci function


def parse_viot(cmdline: str) -> Viot | None:
    m = _VIOT_PARAM.search(cmdline)
    if m is None:
        return None
    endpoints: dict[int, int] = {}
    pci: dict[int, int] = {}
    for item in filter(None, m.group(3).split(",")):
        where, _, ep = item.partition("@")
        if where.startswith("pci:"):
            pci[int(where[4:], 0)] = int(ep, 0)
        else:
            endpoints[int(where, 0)] = int(ep, 0)
    return Viot(int(m.group(2), 0), endpoints, pci, iommu_is_pci=bool(m.group(1)))


def viot_from_tables(info: ViotInfo | None) -> Viot | None:
    """The VIOT table's topology in the form the probe code uses."""
    if info is None:
        return None
    return Viot(
        info.iommu_address, dict(info.mmio_endpoints), dict(info.pci_endpoints), info.iommu_kind == "pci"
    )


def requester_id(bdf: tuple[int, int, int]) -> int:
    bus, slot, fn = bdf
    return bus << 8 | slot << 3 | fn


def endpoint_domain(endpoint: int) -> int:
    """One DMA domain per endpoint, as Linux's default domains are."""
    return endpoint + 1


@dataclass
class MmioResource:
    base: int
    size: int
    irq: int
    source: str = "cmdline"


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
    #: how the guest learned of the transport: "cmdline", "acpi:\\_SB.VR07 LNRO0005", "pci"
    source: str = ""
    #: no driver was even tried (the firmware's id matched none of this kernel's tables)
    not_probed: bool = False
    #: the probe never ends: a device it waits on (this one or its IOMMU) asked for a
    #: reset this driver generation ignores
    hung: str | None = None

    def report(self) -> dict[str, object]:
        outcome = (
            "BOUND" if self.bound else "NOT_PROBED" if self.not_probed or self.device is None else "FAILED"
        )
        return {
            "where": self.where,
            "device": self.device_key,
            "outcome": outcome,
            "reason": self.reason,
            "source": self.source,
        }


@dataclass
class GuestPolicy:
    driver: DriverPolicy = field(default_factory=DriverPolicy)
    mmio_versions: tuple[int, ...] = (MMIO.version_legacy, MMIO.version_modern)
    guest_order: ByteOrder = "little"
    # virtio_pci: which interfaces this driver generation has (a pre-1.0 kernel: legacy
    # only; CONFIG_VIRTIO_PCI_LEGACY=n: modern only), Linux's force_legacy parameter,
    # whether MSI-X is used (pci=nomsi turns it off), and how config space is reached
    # ("auto": ECAM when the platform describes it, else 0xCF8/0xCFC; or "ecam"/"conf1").
    pci_modern: bool = True
    pci_legacy: bool = True
    pci_force_legacy: bool = False
    pci_msix: bool = True
    pci_config_access: str = "auto"
    #: Linux's vring_use_dma_api() (guest/platform_dma.py): "never", "xen", "feature"
    #: (ACCESS_PLATFORM negotiated, or a Xen domain), "always", "quirk-list"
    dma_api: str = "feature"
    #: the firmware tables this kernel reads the IOMMU topology from ("viot": Linux 5.14+);
    #: without one the virtio-iommu driver binds but attaches no endpoint
    iommu_firmware: tuple[str, ...] = ("viot",)
    #: the guest's architecture ("x86_64" | "aarch64"): where MSIs go, which IOVAs are reserved
    arch: str = "x86_64"
    #: the virtio core class (a conformance test seeds a broken driver by subclassing it)
    device_class: type[VirtioGuestDevice] = VirtioGuestDevice
    #: virtio_pci's transports in probe order, replacing the modern/legacy choice above
    #: (a conformance test seeds a driver with a broken id match or BAR lookup this way)
    pci_transports: tuple[type[PciModernTransport] | type[PciLegacyTransport], ...] = ()
    #: virtio_mmio's transport driver (a conformance test seeds a broken identification)
    mmio_transport: type[MmioTransportDriver] = MmioTransportDriver
    #: virtio_mmio's ACPI match table (Linux: LNRO0005 only); the simulator's own current
    #: driver also knows the id in QEMU's vendor space (the new side of the HID matrix)
    acpi_hids: tuple[str, ...] = DEFAULT_ACPI_HIDS
    #: virtio_mmio's OF match table
    dt_compatibles: tuple[str, ...] = DEFAULT_DT_COMPATIBLES


def dma_mask(t: ConfigOps) -> int:
    """The DMA mask Linux's transport driver sets: 64 bits, except where the legacy
    interface takes a 32-bit page frame number (virtio_pci_legacy, virtio_mmio version 1:
    DMA_BIT_MASK(32 + PAGE_SHIFT))."""
    legacy = isinstance(t, PciLegacyTransport) or (isinstance(t, MmioTransportDriver) and t.version == 1)
    return (1 << 44) - 1 if legacy else (1 << 64) - 1


X86_MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)  # the LAPIC MSI doorbells (reserved IOVAs)
SWIOTLB_SIZE = 4 << 20  # the shared bounce window of a restricted-memory guest


class GuestKernel:
    def __init__(
        self,
        link: HostLink,
        memory: ByteAccess,
        ram_size: int,
        policy: GuestPolicy,
        *,
        ram_base: int = 0,
        ram_regions: tuple[tuple[int, int], ...] = (),
    ) -> None:
        """``ram_base`` is where RAM starts in the guest-physical map (0 on x86; 1 GiB on
        QEMU's arm ``virt``); ``ram_regions`` the memory map when RAM is split (q35 puts
        what does not fit below its PCI hole above 4 GiB). Drivers allocate from the first
        block; a restricted guest's swiotlb sits at the top of the highest block below
        4 GiB, as Linux's ``swiotlb_init`` gets it from ``memblock_alloc_low`` (top-down
        under the 32-bit limit)."""
        self.link = link
        self.memory = memory
        self.policy = policy
        self.ram_base = ram_base
        self.firmware: FirmwareView | None = None
        restricted = policy.driver.restricted_memory
        regions = sorted(ram_regions or ((ram_base, ram_size),))
        self.ram_regions = tuple(regions)
        first_base, first_size = regions[0]
        low, high = first_base + RAM_ALLOC_START, first_base + first_size
        low_blocks = [(b, n) for b, n in regions if b < 1 << 32]
        tlb_base, tlb_size = low_blocks[-1]
        tlb_end = min(tlb_base + tlb_size, 1 << 32)
        tlb_start = tlb_end - SWIOTLB_SIZE
        if restricted and tlb_start < high:
            high = tlb_start  # the bounce window is carved off the top of the allocator's block
        self.dma = DirectDma(memory, PageAllocator(low, high))
        self.shared_dma = self.dma
        self.swiotlb: tuple[int, int] | None = None
        if restricted:
            mark_private = getattr(memory, "mark_private", None)
            if mark_private is None:
                raise BootError("this guest memory cannot emulate private (encrypted) pages")
            mark_private(low, high - low)
            # swiotlb: DMA through the DMA API is bounced via this shared window.
            self.swiotlb = (tlb_start, tlb_end)
            self.shared_dma = DirectDma(memory, PageAllocator(tlb_start, tlb_end))
        self.probes: list[ProbeRecord] = []
        #: what the boot loader said about the platform's DMA (virtio_sim.platform=)
        self.platform = PlatformInfo()
        self.platform_iommu: PlatformIommu | None = None
        self.xen_dma: XenDma | None = None
        self.viot: Viot | None = None
        self.iommu: IommuDriver | None = None
        self.iommu_dmas: list[IommuDma] = []
        self._irq_routes: dict[int, list[VirtioGuestDevice]] = {}
        self._msi_routes: dict[int, tuple[VirtioGuestDevice, int]] = {}
        self._next_vector = FIRST_DEVICE_VECTOR
        self.pci_bus: GuestPciBus | None = None
        self.stray_msis: list[int] = []
        self._irq_send, self._irq_recv = trio.open_memory_channel[tuple[IrqKind, int]](256)
        link.irq_handler = self._on_irq

    def _on_irq(self, kind: IrqKind, line: int, value: int) -> None:
        event: tuple[IrqKind, int]
        if kind is IrqKind.LINE_LEVEL and value:
            event = (kind, line)
        elif kind is IrqKind.MSI:
            event = (kind, value)  # the message data is the guest's vector
        else:
            return
        try:
            self._irq_send.send_nowait(event)
        except trio.WouldBlock:
            pass  # a flood: the pending entries for this line will handle it

    async def irq_loop(self) -> None:
        """Handle raised lines (a level line is served until no device has a cause left)
        and MSI vectors (each goes straight to the queues or config handler it serves)."""
        try:
            async for kind, number in self._irq_recv:
                if kind is IrqKind.MSI:
                    await self._handle_msi(number)
                    continue
                for dev in self._irq_routes.get(number, []):
                    for _ in range(IRQ_STORM_LIMIT):
                        if not await dev.handle_interrupt():
                            break
                    else:
                        dev.mark_broken(f"interrupt storm on line {number}: status never clears")
        except HostLinkError as e:
            # The host is gone: every waiter must wake up and see it, nothing may hang.
            for dev in self._all_devices():
                dev.mark_broken(f"host link lost: {e}")

    def _all_devices(self) -> list[VirtioGuestDevice]:
        return [p.device for p in self.probes if p.device is not None]

    async def _handle_msi(self, vector: int) -> None:
        route = self._msi_routes.get(vector)
        if route is None:
            self.stray_msis.append(vector)
            return
        dev, entry = route
        t = dev.transport
        queues = t.queues_for_entry(entry) if isinstance(t, PciTransportBase) else None
        if queues is None:
            await dev.handle_config_vector()
        else:
            await dev.handle_queue_vector(queues)

    async def probe_mmio(self, cmdline: str) -> list[ProbeRecord]:
        resources = parse_cmdline(cmdline)
        if not resources:
            raise BootError("no virtio_mmio.device= parameters on the command line")
        self.viot = self._topology(parse_viot(cmdline))
        return await self.probe_mmio_resources(resources)

    async def probe_mmio_resources(self, resources: list[MmioResource]) -> list[ProbeRecord]:
        if self.viot is not None:
            # The IOMMU is probed first: the devices behind it are attached at their probe.
            resources.sort(key=lambda r: r.base != self.viot.iommu_base)  # type: ignore[union-attr]
        for res in resources:
            record = await self._probe_one(res)
            self.probes.append(record)
            iommu = iommu_driver(record.driver) if record.bound else None
            if iommu is not None:
                self.iommu = iommu
                await iommu.start_events()
        return self.probes

    async def _probe_one(self, res: MmioResource) -> ProbeRecord:
        record = await self._probe_one_inner(res)
        record.source = res.source
        return record

    async def _probe_one_inner(self, res: MmioResource) -> ProbeRecord:
        where = f"virtio-mmio@{res.base:#x}"
        t = self.policy.mmio_transport(self.link, res.base, self.policy.guest_order)
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
        endpoint = self.viot.endpoints.get(res.base) if self.viot else None
        dev = self._new_device(t, endpoint)
        self._irq_routes.setdefault(res.irq, []).append(dev)
        return await self._bind(where, key, t, dev, driver_cls, endpoint)

    def _new_device(
        self, t: ConfigOps, endpoint: int | None, *, pci: bool = False, rid: int | None = None
    ) -> VirtioGuestDevice:
        def dma_for(features: int) -> DmaApi:
            return self._dma_for(features, endpoint, pci=pci, dma_mask=dma_mask(t), rid=rid)

        return self.policy.device_class(t, self.memory, self.dma, self.policy.driver, dma_for)

    def iova_reserved(self, pci: bool) -> list[tuple[int, int]]:
        """The IOVA ranges Linux's iommu-dma never hands out for this endpoint: the MSI
        doorbell window (x86's 0xFEE00000-0xFEEFFFFF, which QEMU's virtio-iommu reports
        with PROBE as RESV_MEM MSI; our arm virt has no MSI controller) and, for a PCI
        device, the host bridge's memory windows (``iova_reserve_pci_windows``)."""
        ranges: list[tuple[int, int]] = []
        if self.policy.arch == "x86_64":
            ranges.append(X86_MSI_WINDOW)
        if pci and self.pci_bus is not None:
            lo, hi = self.pci_bus.firmware.mem
            ranges.append((lo, hi))
        return ranges

    def _dma_for(
        self,
        features: int,
        endpoint: int | None,
        *,
        pci: bool = False,
        dma_mask: int = (1 << 64) - 1,
        rid: int | None = None,
    ) -> DmaApi:
        """Linux's rule: the DMA API when ACCESS_PLATFORM was negotiated (or always, Xen).

        Through the DMA API a device behind the IOMMU gets IOVAs; a restricted guest's
        buffers come from the shared swiotlb window; otherwise raw guest-physical memory.
        """
        if not vring_use_dma_api(self.policy.dma_api, features, self.platform):
            return self.dma
        if endpoint is not None and self.iommu is not None:
            dma = IommuDma(
                self.memory,
                self.shared_dma.allocator,
                self.iommu,
                endpoint_domain(endpoint),
                endpoint,
                reserved=self.iova_reserved(pci),
                pci=pci,
                dma_mask=dma_mask,
            )
            self.iommu_dmas.append(dma)
            return dma
        kind = self.platform.kind
        if pci and rid is not None and self.platform_iommu is not None and kind in ("viommu", "tce"):
            # The platform's DMA ops: IOVAs in the function's domain (intel-iommu's
            # top-down placement; pseries' TCE window from bus address 0, bottom-up).
            iovas = None
            if kind == "tce":
                iovas = IovaAllocator(4096, TCE_WINDOW, top_down=False)
            dma = IommuDma(
                self.memory,
                self.shared_dma.allocator,
                self.platform_iommu,
                rid,
                rid,
                reserved=self.iova_reserved(pci),
                pci=True,
                dma_mask=dma_mask,
                iovas=iovas,
            )
            self.iommu_dmas.append(dma)
            return dma
        if self.xen_dma is not None:
            return self.xen_dma  # swiotlb-xen: machine addresses through the p2m
        return self.shared_dma

    def dma_ranges(self) -> list[list[int]]:
        """Every guest-physical range the DMA API ever lent a device (rings, buffers,
        IOMMU-mapped pages, the swiotlb window), merged."""
        ranges = [list(r) for r in self.dma.allocator.ever]
        if self.shared_dma is not self.dma:
            ranges += [list(r) for r in self.shared_dma.allocator.ever]
        if self.swiotlb is not None:
            ranges.append(list(self.swiotlb))
        return ranges

    def check_canaries(self) -> list[str]:
        """Every device write outside a DMA buffer seen so far (canary hits)."""
        found = self.dma.check()
        if self.shared_dma is not self.dma:
            found = found + self.shared_dma.check()
        if self.xen_dma is not None:
            found = found + self.xen_dma.check()
        return found

    async def probe_platform(self, cmdline: str) -> list[ProbeRecord]:
        """Probe what the platform describes: ACPI tables when firmware left them (the
        DSDT's virtio-mmio Devices, the VIOT), else virtio-mmio parameters; then PCI."""
        self._init_platform(cmdline)
        fw = parse_pci_param(cmdline)
        view = discover(self.memory, cmdline, self.ram_base)
        self.firmware = view
        if view.pci is not None:
            fw = view.pci  # the tables, not a command-line stand-in
        what = "ACPI" if view.source == "acpi" else "device tree"
        for err in view.errors:
            self.probes.append(ProbeRecord("firmware", None, False, f"{what}: {err}", source=view.source))
        acpi_ok = view.source in ("acpi", "fdt") and not view.errors
        if acpi_ok:
            self.viot = self._topology(viot_from_tables(view.viot))
            matched = self._match_acpi(view)
            if matched:
                await self.probe_mmio_resources(matched)
        elif parse_cmdline(cmdline):
            await self.probe_mmio(cmdline)
        elif fw is None:
            if view.errors:
                raise BootError(f"firmware tables unusable: {what}: {view.errors[0]}")
            raise BootError("no virtio_mmio.device= parameters and no PCI host on the command line")
        if fw is not None:
            self.viot = self.viot or self._topology(parse_viot(cmdline))
            await self.probe_pci(fw)
        elif acpi_ok and not view.mmio:
            raise BootError(f"the firmware ({view.source}) lists no virtio-mmio transport")
        return self.probes

    def _topology(self, viot: Viot | None) -> Viot | None:
        """The VIOT (or its command-line stand-in) as this kernel sees it: only a kernel
        with the VIOT parser (Linux 5.14+) learns which endpoints sit behind the IOMMU."""
        return viot if "viot" in self.policy.iommu_firmware else None

    def _init_platform(self, cmdline: str) -> None:
        """The platform's DMA setup at boot: its IOMMU driver, or swiotlb-xen's p2m."""
        self.platform = parse_platform(cmdline)
        if self.platform.kind in ("viommu", "viommu-pt", "tce"):
            self.platform_iommu = PlatformIommu(self.link, self.platform)
        if self.platform.p2m is not None:
            self.xen_dma = XenDma(self.memory, self.shared_dma.allocator, self.platform.p2m)

    def _match_acpi(self, view: FirmwareView) -> list[MmioResource]:
        """Linux's ACPI bus match: a Device whose _HID is in the driver's table gets a
        platform device; the others stay unprobed, each with its reason on record."""
        matched = []
        table = self.policy.acpi_hids if view.source == "acpi" else self.policy.dt_compatibles
        key = "_HID" if view.source == "acpi" else "compatible"
        for dev in view.mmio:
            source = f"{view.source}:{dev.path} {dev.hid}"
            if dev.hid in table:
                matched.append(MmioResource(dev.base, dev.size, dev.irq, source))
                continue
            known = ", ".join(table) or f"no {key} ids"
            reason = f"no driver matches {key} {dev.hid} (this kernel's virtio_mmio knows: {known})"
            record = ProbeRecord(f"virtio-mmio@{dev.base:#x}", None, False, reason, source=source)
            record.not_probed = True
            self.probes.append(record)
        return matched

    def probe_report(self) -> list[dict[str, object]]:
        return [p.report() for p in self.probes]

    # -- PCI ------------------------------------------------------------------------------

    def _config_access(self, fw: PciFirmware) -> ConfigAccess:
        how = self.policy.pci_config_access
        if how == "conf1" or (how == "auto" and fw.ecam_base is None):
            return Conf1Access(self.link)
        if fw.ecam_base is None:
            raise BootError("ECAM config access asked for, but the platform has no MCFG")
        return EcamAccess(self.link, fw.ecam_base, fw.ecam_buses)

    async def probe_pci(self, fw: PciFirmware) -> list[ProbeRecord]:
        """Enumerate, then hand every function with the virtio vendor id to virtio_pci."""
        bus = GuestPciBus(self._config_access(fw), fw)
        self.pci_bus = bus
        found = [p for p in await bus.scan() if p.vendor_id == PCI.vendor_id]
        viot = self.viot
        if viot is not None and viot.iommu_is_pci:
            # A virtio-iommu-pci is probed first: the functions behind it attach at probe.
            found.sort(key=lambda p: requester_id(p.bdf) != viot.iommu_base)
        if self.platform_iommu is not None and self.platform.kind != "tce":
            # intel-iommu at boot: every PCI function gets a default domain, translating
            # (intel_iommu=on) or identity (iommu=pt). pseries' windows exist from reset.
            for pdev in found:
                rid = requester_id(pdev.bdf)
                await self.platform_iommu.attach(rid, rid, bypass=self.platform.kind == "viommu-pt")
        for pdev in found:
            record = await self._probe_pci_one(bus, pdev)
            record.source = "pci"
            self.probes.append(record)
            iommu = iommu_driver(record.driver) if record.bound and self.iommu is None else None
            if iommu is not None:
                self.iommu = iommu
                await iommu.start_events()
        return self.probes

    def _pci_transports(self) -> list[type[PciModernTransport] | type[PciLegacyTransport]]:
        pol = self.policy
        if pol.pci_transports:
            return list(pol.pci_transports)
        order: list[type[PciModernTransport] | type[PciLegacyTransport]] = []
        if pol.pci_modern:
            order.append(PciModernTransport)
        if pol.pci_legacy:
            order.insert(0 if pol.pci_force_legacy else len(order), PciLegacyTransport)
        return order

    async def _probe_pci_one(self, bus: GuestPciBus, pdev: GuestPciDevice) -> ProbeRecord:
        """Linux's virtio_pci_probe: enable, modern probe then legacy (or the other way
        round with force_legacy), bus mastering, interrupts, then the virtio core."""
        where = f"pci {pdev.name} [{pdev.vendor_id:04x}:{pdev.device_id:04x} rev {pdev.revision}]"
        try:
            await bus.enable(pdev)
        except PciError as e:
            return ProbeRecord(where, None, False, str(e))
        reasons: list[str] = []
        t: PciModernTransport | PciLegacyTransport | None = None
        for cls in self._pci_transports():
            cand = cls(self.link, bus, pdev, self.policy.guest_order)
            try:
                await cand.probe()
            except NoDevice as e:
                reasons.append(f"{cls.__name__}: {e}")
                continue
            except TransportError as e:
                return ProbeRecord(where, None, False, f"{cls.__name__}: {e}")
            t = cand
            break
        if t is None:
            why = "; ".join(reasons) or "this driver has no PCI transport"
            return ProbeRecord(where, None, False, f"no driver matched ({why})")
        await bus.set_master(pdev)
        dtype = DEVICE_TYPES_BY_ID.get(t.device_id)
        key = dtype.key if dtype else None
        driver_cls = DRIVERS.get(key or "")
        if driver_cls is None:
            return ProbeRecord(where, key, False, f"no driver for device id {t.device_id}")
        endpoint = self.viot.pci_endpoints.get(requester_id(pdev.bdf)) if self.viot else None
        dev = self._new_device(t, endpoint, pci=True, rid=requester_id(pdev.bdf))
        if pdev.irq_pin:
            self._irq_routes.setdefault(pdev.irq_line, []).append(dev)
        await self._setup_msix(bus, pdev, t, dev)
        return await self._bind(where, key, t, dev, driver_cls, endpoint)

    async def _setup_msix(
        self,
        bus: GuestPciBus,
        pdev: GuestPciDevice,
        t: PciTransportBase,
        dev: VirtioGuestDevice,
    ) -> None:
        cap = msix_cap(pdev)
        if not self.policy.pci_msix or cap is None or not bus.firmware.msi:
            return
        msix = GuestMsix(bus, self.link, pdev, cap)
        try:
            entries = await msix.probe()
        except PciError as e:
            t.irq_notes.append(f"MSI-X unusable: {e}")
            return
        if entries < MIN_MSIX_ENTRIES:
            return
        data = list(range(self._next_vector, self._next_vector + entries))
        self._next_vector += entries
        for entry, vector in enumerate(data):
            self._msi_routes[vector] = (dev, entry)
        await t.use_msix(msix, data)

    async def _bind(
        self,
        where: str,
        key: str | None,
        t: ConfigOps,
        dev: VirtioGuestDevice,
        driver_cls: type[GuestDriver],
        endpoint: int | None = None,
    ) -> ProbeRecord:
        """Linux's virtio_dev_probe for one device, with every way it can end."""
        if self.policy.driver.drivers is not None and key not in self.policy.driver.drivers:
            return ProbeRecord(where, key, False, f"this kernel has no driver for {key} devices")
        driver = driver_cls(dev)
        try:
            if endpoint is not None and self.iommu is not None:
                # Linux's IOMMU core attaches every endpoint to a default domain at add time.
                await self.iommu.attach(endpoint_domain(endpoint), endpoint)
            device_mask = self.policy.driver.device_features.get(key or "", driver.device_feature_mask)
            wanted = (driver.device_feature_mask & device_mask) | self.policy.driver.known_features
            transport = getattr(t, "name", "")
            for mask, kept_on in self.policy.driver.transport_only.items():
                if transport not in kept_on:
                    wanted &= ~mask  # e.g. Linux keeps RING_RESET only in vp_transport_features
            await dev.negotiate(wanted)
            await driver.probe()
            await dev.driver_ok()
        except ProbeRefused as e:
            return ProbeRecord(where, key, False, str(e), dev, driver)
        except TransportError as e:
            await dev.fail(str(e))
            return ProbeRecord(where, key, False, f"transport: {e}", dev, driver)
        except IommuRequestError as e:
            return ProbeRecord(where, key, False, f"IOMMU: {e}", dev, driver)
        except DriverHang as e:
            record = ProbeRecord(where, key, False, f"probe waits forever: {e}", dev, driver)
            record.hung = str(e)
            return record
        except DeviceNeedsReset as e:
            record = ProbeRecord(where, key, False, f"a device broke during probe: {e}", dev, driver)
            record.device_broke = True
            return record
        except DriverProbeError as e:
            await dev.fail(str(e))
            return ProbeRecord(where, key, False, f"driver refused the device: {e}", dev, driver)
        return ProbeRecord(where, key, True, "", dev, driver)

    def bound(self, device_key: str) -> list[ProbeRecord]:
        return [p for p in self.probes if p.bound and p.device_key == device_key]


def device_key_of(name: str) -> str:
    """``virtio-blk-device`` -> ``blk``."""
    for key in DEVICE_TYPES:
        if name.startswith(f"virtio-{key}-"):
            return key
    raise KeyError(name)
