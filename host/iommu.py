"""The emulated guest IOMMU: endpoints, domains, mappings, translation, faults.

The virtio-iommu device model (host/devices/iommu.py) programs this state from the
driver's requests; device DMA asks it to translate. The semantics are the spec's
(section 5.13), including the ones that are easy to get wrong:

* UNMAP never splits a mapping: a range that cuts one reports RANGE and removes nothing;
  a range that covers holes removes every mapping fully inside it and reports OK.
* MAP that overlaps an existing mapping fails with INVAL; unaligned ranges fail with RANGE.
* Writes are never allowed through a mapping without WRITE; reads need READ.
* An endpoint is in bypass (identity, everything allowed) when it is unattached and the
  global bypass is on, or when it is attached to a bypass domain. Otherwise an unattached
  endpoint reaches nothing.

Translations are cached per endpoint and page in an IOTLB that every UNMAP, DETACH and
ATTACH invalidates, so a stale translation can never outlive its mapping.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from virtio_sim.dma import AddressSpace, DmaError, IdentityAddressSpace, WriteLog
from virtio_sim.memory import GuestMemory
from virtio_sim.spec import IOMMU_FAULT_F, IOMMU_FAULT_R, IOMMU_MAP_F, IOMMU_S

ADDRESS_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Mapping:
    virt_start: int
    virt_end: int  # inclusive
    phys_start: int
    flags: int


@dataclass
class Domain:
    id: int
    bypass: bool
    endpoints: set[int] = field(default_factory=set)
    starts: list[int] = field(default_factory=list)  # sorted virt_start of mappings
    mappings: dict[int, Mapping] = field(default_factory=dict)

    def find(self, iova: int) -> Mapping | None:
        i = bisect.bisect_right(self.starts, iova) - 1
        if i < 0:
            return None
        m = self.mappings[self.starts[i]]
        return m if iova <= m.virt_end else None

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, end) - 1
        return i >= 0 and self.mappings[self.starts[i]].virt_end >= start

    def add(self, m: Mapping) -> None:
        bisect.insort(self.starts, m.virt_start)
        self.mappings[m.virt_start] = m

    def remove(self, m: Mapping) -> None:
        self.starts.remove(m.virt_start)
        del self.mappings[m.virt_start]


class Revocable(Protocol):
    """A cached translation handed out to a device (a lease or a mapping window)."""

    def revoke(self) -> None: ...


@dataclass(frozen=True)
class Fault:
    reason: int  # IOMMU_FAULT_R.*
    endpoint: int
    address: int
    write: bool

    def flags(self) -> int:
        return (IOMMU_FAULT_F.WRITE if self.write else IOMMU_FAULT_F.READ) | IOMMU_FAULT_F.ADDRESS


class TranslationFault(Exception):
    def __init__(self, fault: Fault, why: str) -> None:
        super().__init__(why)
        self.fault = fault


class Iommu:
    def __init__(
        self,
        endpoints: set[int],
        *,
        page_size: int = 4096,
        input_range: tuple[int, int] = (0, ADDRESS_MAX),
        domain_range: tuple[int, int] = (0, 0xFFFFFFFF),
        bypass: bool = True,
    ) -> None:
        self.endpoints = set(endpoints)
        self.page_size = page_size
        self.input_range = input_range
        self.domain_range = domain_range
        self.initial_bypass = bypass
        self._bypass = bypass
        self.attached: dict[int, int] = {}  # endpoint -> domain id
        self.domains: dict[int, Domain] = {}
        self.faults: list[Fault] = []
        self.on_fault: Callable[[Fault], None] | None = None
        self._iotlb: dict[tuple[int, int], tuple[int, int]] = {}  # (ep, page) -> (phys page, flags)
        self.iotlb_hits = 0
        self.iotlb_misses = 0
        # Direct windows given to devices, per endpoint, with the IOVA range [lo, hi) each
        # covers; revoked with the IOTLB entries of that range.
        self._leases: dict[int, weakref.WeakKeyDictionary[Revocable, tuple[int, int]]] = {}

    @property
    def bypass(self) -> bool:
        """Global bypass for unattached endpoints (the BYPASS_CONFIG bit)."""
        return self._bypass

    @bypass.setter
    def bypass(self, value: bool) -> None:
        if value != self._bypass:
            self._iotlb.clear()
            self.invalidate_all()
        self._bypass = value

    def register_lease(self, endpoint: int, lease: Revocable, lo: int = 0, hi: int = ADDRESS_MAX + 1) -> None:
        """Remember a direct window on IOVAs ``[lo, hi)`` (default: all of them) so the
        next change of this endpoint's view of that range revokes it."""
        self._leases.setdefault(endpoint, weakref.WeakKeyDictionary())[lease] = (lo, hi)

    def invalidate_all(self) -> None:
        """Revoke every lease of every endpoint (reset, global bypass change)."""
        for ep in list(self._leases):
            self._revoke(ep)

    def _revoke(self, endpoint: int, lo: int = 0, hi: int = ADDRESS_MAX + 1) -> None:
        """Revoke the endpoint's leases that overlap IOVAs ``[lo, hi)``."""
        leases = self._leases.get(endpoint)
        if not leases:
            return
        for lease, (a, b) in list(leases.items()):
            if a < hi and lo < b:
                lease.revoke()
                del leases[lease]

    # -- programming (device requests) --------------------------------------

    def reset(self) -> None:
        """Device reset: nothing attached, every domain gone (bypass config persists)."""
        self.attached.clear()
        self.domains.clear()
        self._iotlb.clear()
        self.invalidate_all()

    def attach(self, domain: int, endpoint: int, bypass: bool) -> int:
        if endpoint not in self.endpoints:
            return IOMMU_S.NOENT
        if not self.domain_range[0] <= domain <= self.domain_range[1]:
            return IOMMU_S.RANGE
        d = self.domains.get(domain)
        if d is not None and d.bypass != bypass:
            return IOMMU_S.INVAL
        old = self.attached.get(endpoint)
        if old is not None and old != domain:
            self._detach(old, endpoint)
        if d is None:
            d = self.domains[domain] = Domain(domain, bypass)
        d.endpoints.add(endpoint)
        self.attached[endpoint] = domain
        self._invalidate(endpoint)
        return IOMMU_S.OK

    def detach(self, domain: int, endpoint: int) -> int:
        if endpoint not in self.endpoints:
            return IOMMU_S.NOENT
        if self.attached.get(endpoint) != domain:
            return IOMMU_S.INVAL
        self._detach(domain, endpoint)
        return IOMMU_S.OK

    def _detach(self, domain: int, endpoint: int) -> None:
        d = self.domains[domain]
        d.endpoints.discard(endpoint)
        del self.attached[endpoint]
        if not d.endpoints:
            del self.domains[domain]  # the last endpoint frees the domain
        self._invalidate(endpoint)

    def map(self, domain: int, virt_start: int, virt_end: int, phys_start: int, flags: int) -> int:
        known = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE | IOMMU_MAP_F.MMIO
        if flags & ~known:
            return IOMMU_S.INVAL
        d = self.domains.get(domain)
        if d is None:
            return IOMMU_S.NOENT
        if d.bypass:
            return IOMMU_S.INVAL
        g = self.page_size
        if virt_end < virt_start or virt_start % g or phys_start % g or (virt_end + 1) % g:
            return IOMMU_S.RANGE
        if virt_start < self.input_range[0] or virt_end > self.input_range[1]:
            return IOMMU_S.RANGE
        if phys_start + (virt_end - virt_start) > ADDRESS_MAX:
            return IOMMU_S.RANGE
        if d.overlaps(virt_start, virt_end):
            return IOMMU_S.INVAL
        d.add(Mapping(virt_start, virt_end, phys_start, flags))
        return IOMMU_S.OK

    def unmap(self, domain: int, virt_start: int, virt_end: int) -> int:
        d = self.domains.get(domain)
        if d is None:
            return IOMMU_S.NOENT
        if d.bypass:
            return IOMMU_S.INVAL
        if virt_end < virt_start:
            return IOMMU_S.INVAL
        inside: list[Mapping] = []
        i = bisect.bisect_right(d.starts, virt_end) - 1
        while i >= 0:
            m = d.mappings[d.starts[i]]
            if m.virt_end < virt_start:
                break
            if m.virt_start < virt_start or m.virt_end > virt_end:
                return IOMMU_S.RANGE  # would split a mapping: remove nothing
            inside.append(m)
            i -= 1
        for m in inside:
            d.remove(m)
        for ep in d.endpoints:
            # only what the range covered: the IOTLB entries and leases of other mappings
            # stay good (QEMU's virtio-iommu notifies the unmapped range, not the domain)
            self._invalidate(ep, virt_start, virt_end + 1)
        return IOMMU_S.OK

    def _invalidate(self, endpoint: int, lo: int = 0, hi: int = ADDRESS_MAX + 1) -> None:
        """Forget the endpoint's translations of IOVAs ``[lo, hi)`` (default: all)."""
        g = self.page_size
        first, last = lo // g, (hi - 1) // g
        if last - first < len(self._iotlb):
            for page in range(first, last + 1):
                self._iotlb.pop((endpoint, page), None)
        else:
            for key in [k for k in self._iotlb if k[0] == endpoint and first <= k[1] <= last]:
                del self._iotlb[key]
        self._revoke(endpoint, lo, hi)

    # -- translation (device DMA) --------------------------------------------

    def in_bypass(self, endpoint: int) -> bool:
        dom = self.attached.get(endpoint)
        if dom is None:
            return self.bypass
        return self.domains[dom].bypass

    def translate(self, endpoint: int, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """Physical pieces of ``[iova, iova+length)``; TranslationFault if any byte is blocked."""
        if self.in_bypass(endpoint):
            return [(iova, length)]
        need = IOMMU_MAP_F.WRITE if write else IOMMU_MAP_F.READ
        pieces: list[tuple[int, int]] = []
        pos, left = iova, length
        g = self.page_size
        while left > 0:
            page = pos // g
            hit = self._iotlb.get((endpoint, page))
            if hit is None:
                self.iotlb_misses += 1
                hit = self._walk(endpoint, pos, write)
                self._iotlb[(endpoint, page)] = hit
            else:
                self.iotlb_hits += 1
            phys_page, flags = hit
            if not flags & need:
                self._fault(IOMMU_FAULT_R.MAPPING, endpoint, pos, write, "no permission")
            off = pos % g
            n = min(left, g - off)
            phys = phys_page * g + off
            if pieces and pieces[-1][0] + pieces[-1][1] == phys:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + n)
            else:
                pieces.append((phys, n))
            pos += n
            left -= n
        return pieces

    def probe(self, endpoint: int, iova: int) -> tuple[int, int, int, bool, bool] | None:
        """The whole window around ``iova``: (lo, hi exclusive, phys of lo, readable,
        writable), or None when nothing is mapped there. Records no fault: the caller has
        just translated ``iova`` and only wants to cache the mapping."""
        if self.in_bypass(endpoint):
            return None  # identity over all of 2^64: nothing worth caching as a window
        dom = self.attached.get(endpoint)
        m = self.domains[dom].find(iova) if dom is not None else None
        if m is None:
            return None
        readable = bool(m.flags & IOMMU_MAP_F.READ)
        return m.virt_start, m.virt_end + 1, m.phys_start, readable, bool(m.flags & IOMMU_MAP_F.WRITE)

    def _walk(self, endpoint: int, iova: int, write: bool) -> tuple[int, int]:
        dom = self.attached.get(endpoint)
        if dom is None:
            self._fault(IOMMU_FAULT_R.DOMAIN, endpoint, iova, write, "endpoint is not attached")
        m = self.domains[dom].find(iova)  # type: ignore[index]
        if m is None:
            self._fault(IOMMU_FAULT_R.MAPPING, endpoint, iova, write, "no mapping")
        assert m is not None
        g = self.page_size
        return (m.phys_start + (iova - m.virt_start)) // g, m.flags

    def _fault(self, reason: int, endpoint: int, iova: int, write: bool, why: str) -> None:
        f = Fault(reason, endpoint, iova, write)
        self.faults.append(f)
        if self.on_fault:
            self.on_fault(f)
        raise TranslationFault(f, f"IOMMU fault at IOVA {iova:#x} for endpoint {endpoint}: {why}")


class EndpointTranslator:
    """One endpoint's view of the IOMMU, for a TranslatedAddressSpace."""

    def __init__(self, iommu: Iommu, endpoint: int) -> None:
        self.iommu = iommu
        self.endpoint = endpoint

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        try:
            return self.iommu.translate(self.endpoint, iova, length, write)
        except TranslationFault as e:
            raise DmaError(iova, length, str(e)) from None

    def probe(self, iova: int) -> tuple[int, int, int, bool, bool] | None:
        return self.iommu.probe(self.endpoint, iova)

    def register_lease(self, lease: Revocable, lo: int = 0, hi: int = ADDRESS_MAX + 1) -> None:
        self.iommu.register_lease(self.endpoint, lease, lo, hi)


class UnisolatedAddressSpace:
    """Raw guest-physical DMA by a device that sits behind an IOMMU but ignores it.

    It works like the identity space, and counts every access made while the IOMMU says
    the endpoint should have been translated: the evidence for OK_NO_ISOLATION.
    """

    name = "bypass"

    def __init__(
        self, memory: GuestMemory, iommu: Iommu, endpoint: int, ram: AddressSpace | None = None
    ) -> None:
        self.ram: AddressSpace = ram if ram is not None else IdentityAddressSpace(memory)
        self.iommu = iommu
        self.endpoint = endpoint
        self.unisolated_accesses = 0
        #: where its raw writes landed: the guest may have meant them as IOVAs
        self.writes = WriteLog()

    def _note(self) -> None:
        if not self.iommu.in_bypass(self.endpoint):
            self.unisolated_accesses += 1

    def read(self, addr: int, length: int) -> bytes:
        self._note()
        return self.ram.read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self._note()
        self.ram.write(addr, data)  # raises before logging when nothing is there
        self.writes.add(addr, len(data))

    def check(self, addr: int, length: int, write: bool) -> None:
        self.ram.check(addr, length, write)
