"""The guest's platform DMA ops: what Linux's DMA API does on each platform (issue 21).

The boot loader says which platform this is (``virtio_sim.platform=`` on the command line,
standing in for Xen's start_info and p2m table, or the firmware's DMAR / TCE description):

- ``viommu``: Linux turns the emulated IOMMU on (``intel_iommu=on``) and puts every PCI
  function in its own DMA domain. The DMA API hands out IOVAs placed as iommu-dma /
  intel-iommu place them: a PCI device's first ones top-down below 4 GiB.
- ``viommu-pt``: the same IOMMU left in passthrough (``iommu=pt``). Every function gets an
  identity domain and the DMA API hands out guest-physical addresses.
- ``tce``: pseries. The TCE IOMMU always translates PCI DMA; the DMA API (dma_iommu_ops)
  maps every buffer into the host bridge's DMA window, bottom-up from bus address 0 with
  entry 0 reserved (arch/powerpc/kernel/iommu.c ``iommu_init_table``, ``iommu_range_alloc``).
- ``xen-pv``: pseudo-physical is not machine. The DMA API (swiotlb-xen) gives the machine
  address of a buffer (``xen_phys_to_bus``: the p2m); plain guest-physical addresses
  point into the wrong frames.

Whether a virtio device uses the DMA API at all is Linux's ``vring_use_dma_api()`` of that
generation (:func:`vring_use_dma_api`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.guest.dma import DirectDma
from virtio_sim.guest.link import HostLink
from virtio_sim.memory import ByteAccess
from virtio_sim.ring.chain import DmaBuffer
from virtio_sim.spec import F

# The register window (host/platform.py; a small stand-in for VT-d's or PAPR's interface).
REG = {"rid": 0x00, "iova_lo": 0x08, "iova_hi": 0x0C, "gpa_lo": 0x10, "gpa_hi": 0x14, "size": 0x18,
       "cmd": 0x1C, "status": 0x20}  # fmt: skip
CMD_MAP, CMD_UNMAP, CMD_ATTACH, CMD_ATTACH_IDENTITY = 1, 2, 3, 4
TCE_WINDOW = (0, 0x3FFFFFFF)  # pseries' default 32-bit DMA window (1 GiB at bus address 0)
#: platforms whose virtio devices were known to bypass the platform IOMMU: the quirk list
#: of the 2015 proposals (PPC64 pseries, SPARC; Andy Lutomirski's v3-v5 of "virtio DMA API")
QUIRK_PLATFORMS = ("tce",)

_PARAM = re.compile(
    r"virtio_sim\.platform=([a-z-]+)(?:@(0x[0-9a-fA-F]+))?"
    r"(?:,p2m=(0x[0-9a-f]+)\+(0x[0-9a-f]+)>>(0x[0-9a-f]+))?"
)


class PlatformError(Exception):
    """The platform IOMMU refused a request (its status register says why)."""


@dataclass(frozen=True)
class PlatformInfo:
    kind: str = "none"
    base: int = 0  # the platform IOMMU's register window
    p2m: tuple[int, int, int] | None = None  # Xen: (RAM base, size, rotation)

    @property
    def xen_domain(self) -> bool:
        return self.kind == "xen-pv"


def parse_platform(cmdline: str) -> PlatformInfo:
    m = _PARAM.search(cmdline)
    if m is None:
        return PlatformInfo()
    kind, base = m.group(1), int(m.group(2) or "0", 0)
    p2m = None
    if m.group(3) is not None:
        p2m = (int(m.group(3), 0), int(m.group(4), 0), int(m.group(5), 0))
    return PlatformInfo(kind, base, p2m)


def vring_use_dma_api(rule: str, features: int, platform: PlatformInfo) -> bool:
    """Linux's ``vring_use_dma_api()`` as each generation (or proposal) had it.

    - ``never``: up to 4.5 virtio_ring always used guest-physical addresses.
    - ``xen``: 4.6-4.7, 780bc7903a32 "virtio_ring: Support DMA APIs" with 78fe39872378 (adds
      the ``<xen/xen.h>`` include; both Andy Lutomirski, 2016-02-02): only ``xen_domain()``
      (specs/profiles/drivers/linux-4.6-xen.toml says how the release was checked).
    - ``feature``: 4.8+, 1a937693993f "virtio: new feature to detect IOMMU device quirk":
      the DMA API when VIRTIO_F_IOMMU_PLATFORM was negotiated, else still under Xen.
    - ``always``: the 2015 proposal (Andy Lutomirski, "virtio: use the DMA API", v1/v2,
      2014-08 and 2015-07): every device, every platform.
    - ``quirk-list``: the 2015 proposal's later form: the DMA API except on the platforms
      whose virtio devices were known to bypass the IOMMU.
    """
    if rule == "never":
        return False
    if rule == "xen":
        return platform.xen_domain
    if rule == "feature":
        return bool(features >> F.ACCESS_PLATFORM & 1) or platform.xen_domain
    if rule == "quirk-list":
        return platform.kind not in QUIRK_PLATFORMS
    return True  # "always"


class PlatformIommu:
    """Programs the platform IOMMU: what Linux's intel-iommu or pseries iommu code does."""

    granule = 4096

    def __init__(self, link: HostLink, info: PlatformInfo) -> None:
        self.link = link
        self.info = info
        self.input_range = TCE_WINDOW if info.kind == "tce" else (0, (1 << 48) - 1)
        self.requests = 0

    async def _cmd(self, cmd: int, rid: int, iova: int = 0, gpa: int = 0, size: int = 0) -> None:
        base = self.info.base
        for reg, value in (
            ("rid", rid), ("iova_lo", iova & 0xFFFFFFFF), ("iova_hi", iova >> 32),
            ("gpa_lo", gpa & 0xFFFFFFFF), ("gpa_hi", gpa >> 32), ("size", size),
        ):  # fmt: skip
            await self.link.write(base + REG[reg], 4, value)
        await self.link.write(base + REG["cmd"], 4, cmd)
        self.requests += 1
        status = await self.link.read(base + REG["status"], 4)
        if status:
            raise PlatformError(f"platform IOMMU command {cmd} for {rid:#x} failed with status {status}")

    async def attach(self, domain: int, endpoint: int, bypass: bool = False) -> None:
        await self._cmd(CMD_ATTACH_IDENTITY if bypass else CMD_ATTACH, endpoint)

    async def map_many(self, domain: int, maps: list[tuple[int, int, int, int]]) -> None:
        for iova, end, gpa, _flags in maps:
            await self._cmd(CMD_MAP, domain, iova, gpa, end - iova + 1)

    async def unmap_many(self, domain: int, ranges: list[tuple[int, int]]) -> None:
        for iova, end in ranges:
            await self._cmd(CMD_UNMAP, domain, iova, 0, end - iova + 1)


class XenDma(DirectDma):
    """swiotlb-xen: a buffer's bus address is its machine address (``xen_phys_to_bus``).

    A buffer whose pages are not machine-contiguous would be bounced through swiotlb-xen's
    contiguous pool; here such an allocation is simply made again further on (the p2m is
    a rotation, so only a buffer that straddles the wrap point is not contiguous)."""

    name = "xen"

    def __init__(self, memory: ByteAccess, allocator: PageAllocator, p2m: tuple[int, int, int]) -> None:
        super().__init__(memory, allocator)
        self.base, self.size, self.shift = p2m
        self.coherent = self

    def phys_to_machine(self, gpa: int) -> int:
        if not self.base <= gpa < self.base + self.size:
            return gpa
        return self.base + (gpa - self.base + self.shift) % self.size

    def alloc(self, size: int, align: int = 1) -> DmaBuffer:
        skipped: list[DmaBuffer] = []
        while True:
            buf = super().alloc(size, align)
            first = self.phys_to_machine(buf.gpa)
            if self.phys_to_machine(buf.gpa + max(size, 1) - 1) - first == max(size, 1) - 1:
                for s in skipped:
                    super().free(s)
                return DmaBuffer(buf.gpa, first, size)
            skipped.append(buf)

    def free(self, buf: DmaBuffer) -> None:
        super().free(DmaBuffer(buf.gpa, buf.gpa, buf.size))
