"""The platform's DMA model: what a bus address means on this machine (``-M q35,x-platform=``).

The 2015 "virtio should use the DMA API" debate (docs/dma-api-2015.md) was about
platforms on which a device's bus address is not the guest-physical address that Linux's
virtio rings carried:

- ``viommu`` / ``viommu-pt``: x86 with an emulated IOMMU. The guest turns it on and puts
  every PCI function in a DMA domain, or leaves it in passthrough (identity domains).
  A device that translates (QEMU with iommu_platform, or a device behind a real IOMMU)
  goes through it; QEMU's virtio devices before 2.9 ignored it.
- ``tce``: a pseries-like machine. Its platform IOMMU (the TCE table of each PCI host
  bridge) always translates PCI DMA. Linux's platform DMA ops map every buffer into a DMA
  window at bus address 0, and old QEMU's virtio devices bypassed it.
- ``xen-pv``: a Xen-PV-like machine. Guest pseudo-physical frames are not machine frames;
  a device sees machine addresses and only the guest's DMA API knows the p2m.

The IOMMU state is host/iommu.py's; the guest programs it through a small register
window at QEMU's intel-iommu address. The guest's side of it is guest/platform_dma.py.
How the guest programs the IOMMU (VT-d root and context tables with an invalidation queue,
or PAPR's H_PUT_TCE hypercall) is not modelled: only which bus address maps to which
guest page decides an outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtio_sim.dma import AddressSpace, DmaError, IdentityAddressSpace, WriteLog
from virtio_sim.memory import PAGE_SIZE, GuestMemory, Lease, MemoryAccessError
from virtio_sim.spec import IOMMU_MAP_F, IOMMU_S

if TYPE_CHECKING:  # build.py makes the Iommu; a machine without one never imports it
    from virtio_sim.host.iommu import Iommu

#: where QEMU's intel-iommu puts its registers (Q35_HOST_BRIDGE_IOMMU_ADDR, the DMAR unit)
PLATFORM_IOMMU_BASE = 0xFED90000
PLATFORM_IOMMU_SIZE = 0x100
REG = {"rid": 0x00, "iova_lo": 0x08, "iova_hi": 0x0C, "gpa_lo": 0x10, "gpa_hi": 0x14, "size": 0x18,
       "cmd": 0x1C, "status": 0x20}  # fmt: skip
CMD_MAP, CMD_UNMAP, CMD_ATTACH, CMD_ATTACH_IDENTITY = 1, 2, 3, 4
#: pseries: the default 32-bit DMA window of a PCI host bridge starts at bus address 0 and
#: spans 1 GiB (QEMU hw/ppc/spapr_pci.c SPAPR_PCI_DMA32_SIZE)
TCE_WINDOW = (0, 0x3FFFFFFF)
#: Xen PV: frames are rotated by half of RAM between the guest's pseudo-physical view and the
#: machine's (an illustrative p2m: a real one is whatever frames the hypervisor handed out)
XEN_P2M_FRACTION = 2
CMDLINE_PARAM = "virtio_sim.platform"
TRANSLATING = ("viommu", "viommu-pt", "tce")


class PlatformIommuWindow:
    """The register window through which the guest programs the platform IOMMU."""

    def __init__(self, iommu: Iommu, base: int = PLATFORM_IOMMU_BASE) -> None:
        self.iommu = iommu
        self.base = base
        self.regs = dict.fromkeys(REG.values(), 0)
        self.commands = 0

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.base + PLATFORM_IOMMU_SIZE

    def read(self, addr: int, size: int) -> int:
        return self.regs.get(addr - self.base, 0) if size == 4 else 0

    def write(self, addr: int, size: int, value: int) -> None:
        off = addr - self.base
        if size != 4 or off not in self.regs:
            return
        if off != REG["cmd"]:
            self.regs[off] = value
            return
        self.commands += 1
        self.regs[REG["status"]] = self._run(value)

    def _run(self, cmd: int) -> int:
        r = self.regs
        rid = r[REG["rid"]]
        iova = r[REG["iova_hi"]] << 32 | r[REG["iova_lo"]]
        gpa = r[REG["gpa_hi"]] << 32 | r[REG["gpa_lo"]]
        size = r[REG["size"]]
        if cmd in (CMD_ATTACH, CMD_ATTACH_IDENTITY):
            return self.iommu.attach(rid, rid, bypass=cmd == CMD_ATTACH_IDENTITY)
        if cmd == CMD_MAP:
            flags = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE
            return self.iommu.map(rid, iova, iova + size - 1, gpa, flags)
        if cmd == CMD_UNMAP:
            return self.iommu.unmap(rid, iova, iova + size - 1)
        return IOMMU_S.UNSUPP


class P2mAddressSpace:
    """A device's view of a Xen-PV-like guest: addresses are machine addresses.

    Guest RAM block ``[base, base + size)`` is rotated by ``shift`` bytes (page
    granular): guest page ``p`` sits in machine frame ``base + (p - base + shift) % size``.
    A device reading machine address ``m`` therefore reads guest page
    ``base + (m - base - shift) % size``. A guest that hands a device its pseudo-physical
    addresses (no DMA API under Xen, Linux before 4.6) makes it read and write the wrong
    frames. Writes are logged in guest-physical terms for the stray-write check.
    """

    name = "xen-p2m"

    def __init__(
        self, memory: GuestMemory, base: int, size: int, shift: int, ram: AddressSpace | None = None
    ) -> None:
        self.ram: AddressSpace = ram if ram is not None else IdentityAddressSpace(memory)
        self.base, self.size, self.shift = base, size, shift
        self.writes = WriteLog()
        self.fast_window = None

    def m2p(self, machine: int) -> int:
        if not self.base <= machine < self.base + self.size:
            return machine  # outside the rotated block: not RAM, fails as such
        return self.base + (machine - self.base - self.shift) % self.size

    def _pieces(self, addr: int, length: int) -> list[tuple[int, int, int]]:
        """(guest address, offset in the access, length) per machine page touched."""
        out = []
        off = 0
        while off < length:
            m = addr + off
            n = min(length - off, PAGE_SIZE - m % PAGE_SIZE)
            out.append((self.m2p(m), off, n))
            off += n
        return out

    def read(self, addr: int, length: int) -> bytes:
        return b"".join(self.ram.read(g, n) for g, _, n in self._pieces(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(bytes(data))
        pieces = self._pieces(addr, len(view))
        for g, _, n in pieces:
            self.ram.check(g, n, True)  # all or nothing
        for g, off, n in pieces:
            self.ram.write(g, view[off : off + n])
            self.writes.add(g, n)

    def check(self, addr: int, length: int, write: bool) -> None:
        for g, _, n in self._pieces(addr, length):
            try:
                self.ram.check(g, n, write)
            except MemoryAccessError as e:  # pragma: no cover - check raises DmaError
                raise DmaError(addr, length, e.reason) from None

    def lease(self, addr: int, length: int, write: bool) -> Lease | None:
        return None  # every access goes through the p2m (and the write log)


def p2m_shift(size: int) -> int:
    """The rotation of a block of ``size`` bytes, page aligned."""
    return size // XEN_P2M_FRACTION // PAGE_SIZE * PAGE_SIZE


def cmdline_param(platform: str, *, p2m: tuple[int, int, int] | None = None) -> str:
    """What the boot loader tells the guest about its platform (Xen's start_info and p2m
    table, the DMAR/TCE description of the firmware), as one kernel parameter."""
    if platform == "xen-pv":
        assert p2m is not None
        base, size, shift = p2m
        return f"{CMDLINE_PARAM}=xen-pv,p2m={base:#x}+{size:#x}>>{shift:#x}"
    return f"{CMDLINE_PARAM}={platform}@{PLATFORM_IOMMU_BASE:#x}"
