"""Deliberately broken guest drivers: each breaks one driver-side rule a device can see.

Every fixture is a VirtioGuestDevice subclass (GuestPolicy.device_class) that behaves
like our normal driver except for its one seeded defect; BROKEN maps a name to the class,
the device it runs against and the requirement ids a checking device must report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from virtio_sim import layouts
from virtio_sim.guest.transport.base import TransportError
from virtio_sim.guest.transport.mmio import MmioTransportDriver
from virtio_sim.guest.transport.pci_common import NoDevice
from virtio_sim.guest.transport.pci_legacy import PciLegacyTransport
from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.guest.virtio import GuestVirtqueue, ProbeRefused, VirtioGuestDevice, _RingMemory
from virtio_sim.layouts import VIRTIO_CFG_CAP
from virtio_sim.ring.hooks import DriverHooks
from virtio_sim.spec import BLK_T, DESC_F, FEATURES, MMIO, PCI, PCI_CAP, STATUS, USED_F, F, bit


class DriverOkBeforeFeaturesOk(VirtioGuestDevice):
    """A modern driver that never sets FEATURES_OK and goes straight to DRIVER_OK."""

    async def negotiate(self, driver_features: int) -> None:
        self.policy.features_ok = False
        await super().negotiate(driver_features)


class ClearsStatusBit(VirtioGuestDevice):
    """Sets DRIVER_OK but drops DRIVER in the same write."""

    async def driver_ok(self) -> None:
        status = await self.transport.get_status()
        await self._set_status((status | STATUS.DRIVER_OK) & ~STATUS.DRIVER)


class FeaturesAfterFeaturesOk(VirtioGuestDevice):
    """Writes its feature bits again once FEATURES_OK is set."""

    async def negotiate(self, driver_features: int) -> None:
        await super().negotiate(driver_features)
        await self.transport.set_features(self.features)


class AcksUnofferedFeature(VirtioGuestDevice):
    """Acks VIRTIO_F_RING_PACKED although the device (packed=off) does not offer it."""

    async def negotiate(self, driver_features: int) -> None:
        inner = self.transport.set_features

        async def set_features(features: int) -> None:
            await inner(features | bit(F.RING_PACKED))

        self.transport.set_features = set_features  # type: ignore[method-assign]
        await super().negotiate(driver_features)


class NotifiesBeforeDriverOk(VirtioGuestDevice):
    """Kicks queue 0 before setting DRIVER_OK."""

    async def driver_ok(self) -> None:
        await self.transport.notify(0)
        await super().driver_ok()


class SkipsReset(VirtioGuestDevice):
    """Starts initialisation without resetting the device."""

    async def negotiate(self, driver_features: int) -> None:
        async def no_reset() -> None:
            return None

        self.transport.reset = no_reset  # type: ignore[method-assign]
        await super().negotiate(driver_features)


class _IdxFirstHooks(DriverHooks):
    """Publishes avail idx before the avail entry (which it writes after the kick); takes
    descriptors from the top so the stale entry (0) names the wrong head."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, bytes]] = []
        self.entries: dict[int, bytes] = {}  # slot address -> what the device last saw there

    def take(self, ring: Any) -> int:
        value: int = ring.free.popleft()
        return value

    def added(self, ring: Any, head: int) -> None:
        slot = ring.gpa.avail + layouts.avail_entry_offset((ring.avail_idx - 1) % ring.size)
        self.pending.append((slot, ring.memory.read(slot, 2)))
        ring.memory.write(slot, self.entries.get(slot, bytes(2)))  # idx is published, the entry is not

    def publish(self, memory: Any) -> None:
        """The late entry writes, after the kick was served."""
        for slot, entry in self.pending:
            memory.write(slot, entry)
            self.entries[slot] = entry
        self.pending.clear()


class IdxBeforeEntry(VirtioGuestDevice):
    """Avail idx published before the ring entry: the entry lands after the kick."""

    def new_ring(self, size: int) -> _RingMemory:
        mem = super().new_ring(size)
        hooks = mem.ring.hooks = _IdxFirstHooks()
        inner = self.transport.notify

        async def notify(index: int, data: int | None = None) -> None:
            await inner(index, data)
            await self.transport.get_status()  # the device has served the kick by now
            hooks.publish(self.memory)

        self.transport.notify = notify  # type: ignore[method-assign]
        return mem


class _LoopHooks(DriverHooks):
    def use_indirect(self, ring: Any, asked: bool | None) -> bool | None:
        return False

    def added(self, ring: Any, head: int) -> None:
        last = ring.inflight[head].descs[-1]
        addr, length, flags, _ = ring.desc(last)
        ring.set_desc(last, addr, length, flags | DESC_F.NEXT, head)


class DescriptorLoop(VirtioGuestDevice):
    """The last descriptor of every chain points back at the head."""

    def new_ring(self, size: int) -> _RingMemory:
        mem = super().new_ring(size)
        mem.ring.hooks = _LoopHooks()
        return mem


class _WriteFirstHooks(DriverHooks):
    def use_indirect(self, ring: Any, asked: bool | None) -> bool | None:
        return False

    def added(self, ring: Any, head: int) -> None:
        addr, length, flags, nxt = ring.desc(head)
        ring.set_desc(head, addr, length, flags | DESC_F.WRITE, nxt)


class WriteBeforeRead(VirtioGuestDevice):
    """Marks the request header device-writable: writable descriptors precede readable ones."""

    def new_ring(self, size: int) -> _RingMemory:
        mem = super().new_ring(size)
        mem.ring.hooks = _WriteFirstHooks()
        return mem


class QueueSizeAfterEnable(VirtioGuestDevice):
    """Writes the queue size again after the queue went live (mmio-v2)."""

    async def setup_queue(self, index: int, wanted_size: int) -> GuestVirtqueue:
        vq = await super().setup_queue(index, wanted_size)
        t: Any = self.transport
        await t._w("QueueSel", index)
        await t._w("QueueSize", vq.size // 2)
        return vq


class NarrowRegisterRead(VirtioGuestDevice):
    """Reads the mmio Status register with a 16-bit access."""

    async def driver_ok(self) -> None:
        t: Any = self.transport
        await t.link.read(t.base + layouts.MMIO_OFFSETS["Status"], 2)
        await super().driver_ok()


class SkipsQueuePfnCheck(VirtioGuestDevice):
    """Legacy mmio queue setup without checking that QueuePFN reads 0 first."""

    async def setup_queue(self, index: int, wanted_size: int) -> GuestVirtqueue:
        t: Any = self.transport

        async def queue_max_size(i: int) -> int:
            await t._w("QueueSel", i)
            return int(await t._r("QueueSizeMax"))

        t.queue_max_size = queue_max_size
        return await super().setup_queue(index, wanted_size)


class AcksUndefinedInterruptBits(VirtioGuestDevice):
    """Acknowledges interrupts with an undefined InterruptACK bit set."""

    async def negotiate(self, driver_features: int) -> None:
        t: Any = self.transport

        async def ack_interrupt() -> int:
            status = int(await t._r("InterruptStatus"))
            if status:
                await t._w("InterruptACK", status | UNDEFINED_INTERRUPT_BIT)
            return status

        t.ack_interrupt = ack_interrupt
        await super().negotiate(driver_features)


class BadDiscard(VirtioGuestDevice):
    """Sends one DISCARD whose segment data is not whole segments and asks for unmap."""

    async def driver_ok(self) -> None:
        await super().driver_ok()
        vq = self.queues[0]
        hdr, seg, status = self.dma.alloc(16, 16), self.dma.alloc(64, 16), self.dma.alloc(1)
        self.memory.write(hdr.gpa, layouts.blk_req_header_codec("little").pack(BLK_T.DISCARD, 0, 0))
        segment = (0).to_bytes(8, "little") + (8).to_bytes(4, "little") + (1).to_bytes(4, "little")  # unmap
        self.memory.write(seg.gpa, segment + bytes(10))
        await vq.submit([(hdr.dev_addr, 16), (seg.dev_addr, 26)], [(status.dev_addr, 1)])
        for buf in (hdr, seg, status):
            self.dma.free(buf)


class _FlagsWithEventIdxHooks(DriverHooks):
    def kick(self, ring: Any, wanted: bool) -> bool:
        return wanted and not ring.used_flags() & USED_F.NO_NOTIFY


class ObeysUsedFlagsWithEventIdx(VirtioGuestDevice):
    """With EVENT_IDX negotiated, still skips kicks while used.flags bit 0 is set."""

    def new_ring(self, size: int) -> _RingMemory:
        mem = super().new_ring(size)
        mem.ring.hooks = _FlagsWithEventIdxHooks()
        return mem


class _TransitionalIdsOnlyModern(PciModernTransport):
    """virtio_pci's modern probe matching only the transitional range 0x1000-0x103F."""

    async def probe(self) -> int:
        if self.pci.device_id >= PCI.modern_device_id_base:
            raise NoDevice(f"device id {self.pci.device_id:#06x} not in this driver's table")
        return await super().probe()


class _RevisionOneOnlyModern(PciModernTransport):
    """virtio_pci's modern probe insisting on the revision id QEMU gives (1)."""

    async def probe(self) -> int:
        if self.pci.revision != PCI.modern_revision_min:
            raise NoDevice(f"revision {self.pci.revision} not supported")
        return await super().probe()


class RejectsUnknownRevision(VirtioGuestDevice):
    """The PCI driver refuses a modern function whose revision id it does not know."""


class _ModernIdsOnlyLegacy(PciLegacyTransport):
    """virtio_pci's legacy probe that never matches a transitional id."""

    async def probe(self) -> int:
        raise NoDevice(f"device id {self.pci.device_id:#06x} not in this driver's table")


class IgnoresModernIds(VirtioGuestDevice):
    """The PCI driver's id table lacks the modern range 0x1040-0x107F (policy override)."""


class IgnoresTransitionalIds(VirtioGuestDevice):
    """The PCI driver's id table lacks the transitional range 0x1000-0x103F (policy override)."""


class FeaturesOkOnLegacyDevice(VirtioGuestDevice):
    """Does not tell a legacy device (no VERSION_1 offered) from a modern one: sets
    FEATURES_OK on it as it would on a 1.0 device."""

    async def negotiate(self, driver_features: int) -> None:
        await super().negotiate(driver_features)
        if self.legacy:
            await self.add_status(STATUS.FEATURES_OK)


class LegacyRingForHalfSize(VirtioGuestDevice):
    """Legacy interface: lays its ring out for half the queue size the device reports (the
    device, which cannot be told a size, finds the avail ring where the driver has none)."""

    def new_ring(self, size: int) -> _RingMemory:
        return super().new_ring(size // 2 if self.legacy else size)


class _BelievesAnyMagic(MmioTransportDriver):
    """virtio_mmio taking whatever MagicValue reads for the right one."""

    async def _r(self, reg: str) -> int:
        value = await super()._r(reg)
        return MMIO.magic if reg == "MagicValue" else value


class _VendorBeforeDeviceIdCheck(MmioTransportDriver):
    """virtio_mmio reading VendorID before it looks at the DeviceID it read (0: an empty slot)."""

    async def identify(self, supported_versions: tuple[int, ...]) -> int:
        magic = await self._r("MagicValue")
        if magic != MMIO.magic:
            raise TransportError(f"wrong magic value {magic:#010x}")
        self.version = await self._r("Version")
        if self.version not in supported_versions:
            raise TransportError(f"Version {self.version} not supported!")
        self.legacy = self.version == MMIO.version_legacy
        self.device_id = await self._r("DeviceID")
        self.vendor_id = await self._r("VendorID")
        return self.device_id


class AcceptsBadMagic(VirtioGuestDevice):
    """Drives an mmio device whatever its MagicValue (policy override)."""


class AcceptsUnknownVersion(VirtioGuestDevice):
    """Drives an mmio device of a Version it does not know as if it were version 2."""


class ReadsPastEmptySlot(VirtioGuestDevice):
    """Reads another register of an mmio slot whose DeviceID is 0 (policy override)."""


class ReadsWritebackEarly(VirtioGuestDevice):
    """Reads the blk writeback field during feature negotiation (before FEATURES_OK)."""

    async def negotiate(self, driver_features: int) -> None:
        inner = self.transport.set_features

        async def set_features(features: int) -> None:
            await inner(features)
            await self.transport.read_config(BLK_WRITEBACK_OFFSET, 1)

        self.transport.set_features = set_features  # type: ignore[method-assign]
        await super().negotiate(driver_features)


class GoesOnAfterFailed(VirtioGuestDevice):
    """Sets FAILED, then DRIVER_OK without resetting the device first."""

    async def driver_ok(self) -> None:
        await self.add_status(STATUS.FAILED)
        await super().driver_ok()


class ReusesStoppedQueue(VirtioGuestDevice):
    """mmio: writes QueueReady 0 and then the queue size again without reading QueueReady back."""

    async def driver_ok(self) -> None:
        await super().driver_ok()
        t: Any = self.transport
        await t._w("QueueSel", 0)
        await t._w("QueueReady", 0)
        await t._w("QueueSize", self.queues[0].size)


class KicksStoppedLegacyQueue(VirtioGuestDevice):
    """Legacy mmio: stops queue 0 with QueuePFN 0, then notifies it."""

    async def driver_ok(self) -> None:
        await super().driver_ok()
        t: Any = self.transport
        await t._w("QueueSel", 0)
        await t._w("QueuePFN", 0)
        await t.notify(0)


class UnusableConfigWindow(VirtioGuestDevice):
    """Uses the PCI configuration access capability with an unaligned offset, then with a
    BAR the function does not have."""

    async def driver_ok(self) -> None:
        await super().driver_ok()
        t: Any = self.transport
        caps = await t._virtio_caps()
        cap = next(c for c in caps if c.cfg_type == PCI_CAP.PCI_CFG)
        real = next(c.bar for c in caps if c.cfg_type == PCI_CAP.COMMON and t.pci.bar(c.bar) is not None)
        bdf = t.pci.bdf
        for bar, offset in ((real, 1), (UNUSED_BAR, 0)):
            await t.bus.write(bdf, cap.position + VIRTIO_CFG_CAP["bar"], 1, bar)
            await t.bus.write(bdf, cap.position + VIRTIO_CFG_CAP["offset"], 4, offset)
            await t.bus.write(bdf, cap.position + VIRTIO_CFG_CAP["length"], 4, 4)
            await t.bus.read(bdf, cap.position + VIRTIO_CFG_CAP["pci_cfg_data"], 4)


class TrustsFirstGeneration(VirtioGuestDevice):
    """Believes the config generation never moves: every ConfigGeneration read after the
    first answers the first value, so config read across a change is used as it is."""

    async def negotiate(self, driver_features: int) -> None:
        t: Any = self.transport
        inner = t.config_generation
        first: list[int] = []

        async def config_generation() -> int:
            value = int(await inner())
            if not first:
                first.append(value)
            return first[0]

        t.config_generation = config_generation
        await super().negotiate(driver_features)


class FailsOnUnknownFeature(VirtioGuestDevice):
    """Gives up (FAILED) when the device offers a feature bit it has never heard of."""

    async def negotiate(self, driver_features: int) -> None:
        inner = self.transport.get_features

        async def get_features() -> int:
            offered = await inner()
            unknown = [b for b in range(64) if offered >> b & 1 and FEATURES.lookup(b, "rng") is None]
            if unknown:
                await self.fail(f"unknown feature bits {unknown}")
                raise ProbeRefused("features", f"unknown feature bits {unknown}")
            return offered

        self.transport.get_features = get_features  # type: ignore[method-assign]
        await super().negotiate(driver_features)


class AssumesVersion1(VirtioGuestDevice):
    """Takes VERSION_1 as offered on a modern interface whatever the device says, and goes on."""

    async def negotiate(self, driver_features: int) -> None:
        inner = self.transport.get_features

        async def get_features() -> int:
            return int(await inner()) | bit(F.VERSION_1)

        self.transport.get_features = get_features  # type: ignore[method-assign]
        await super().negotiate(driver_features)


class IgnoresIommu(VirtioGuestDevice):
    """Negotiates ACCESS_PLATFORM but hands the device guest-physical addresses (a driver
    that never uses the DMA API: policy dma_api=never)."""


UNDEFINED_INTERRUPT_BIT = 0x4  # InterruptStatus defines bits 0 (used buffer) and 1 (config)
#: timeout of a run whose defect stops the workload (the violation is seen at the first kick)
HANGS_AFTER = 1.5
UNUSED_BAR = 5  # QEMU's virtio-pci functions use BARs 1 (MSI-X) and 4 (the structures)
BLK_WRITEBACK_OFFSET = layouts.field_offsets(layouts.virtio_blk_config("little"))["writeback"]


@dataclass(frozen=True)
class Broken:
    cls: type[VirtioGuestDevice]
    device: str
    transport: str
    #: the ids the defect breaks (the first one a device sees may be a consequence)
    ids: tuple[str, ...]
    #: GuestPolicy fields the defect needs (a broken id table is a PCI transport override)
    policy: dict[str, Any] = field(default_factory=dict)
    #: the odd identification value the checking device presents (mmio ODD_VALUES)
    odd: str | None = None
    #: seconds before a run counts as hung (a defect that stops the workload ends in a hang)
    timeout: float = 3.0


BROKEN: dict[str, Broken] = {
    "driver-ok-before-features-ok": Broken(
        DriverOkBeforeFeaturesOk,
        "rng",
        "mmio-v2",
        ("init.drv.set-features-ok", "init.drv.setup-before-driver-ok"),
    ),
    "clears-status-bit": Broken(ClearsStatusBit, "rng", "pci-modern", ("status.drv.never-clear-bit",)),
    "features-after-features-ok": Broken(
        FeaturesAfterFeaturesOk, "rng", "mmio-v2", ("init.drv.no-features-after-features-ok",)
    ),
    "acks-unoffered-feature": Broken(
        AcksUnofferedFeature, "rng", "pci-modern", ("features.drv.only-offered",)
    ),
    "notifies-before-driver-ok": Broken(
        NotifiesBeforeDriverOk, "rng", "mmio-v2", ("init.drv.no-kick-before-driver-ok",)
    ),
    "skips-reset": Broken(SkipsReset, "rng", "mmio-v2", ("init.drv.reset-first",)),
    "idx-before-entry": Broken(IdxBeforeEntry, "rng", "mmio-v2", ("split.avail.drv-barrier-before-idx",)),
    "descriptor-loop": Broken(DescriptorLoop, "blk", "mmio-v2", ("split.desc.drv-chain-len-limit",)),
    "write-before-read": Broken(
        WriteBeforeRead, "blk", "pci-modern", ("framing.drv.readable-before-writable",)
    ),
    "queue-size-after-enable": Broken(
        QueueSizeAfterEnable, "rng", "mmio-v2", ("mmio.drv.no-touch-while-ready",)
    ),
    "skips-queue-pfn-check": Broken(SkipsQueuePfnCheck, "rng", "mmio", ("mmio.legacy.drv-queue-setup",)),
    "acks-undefined-interrupt-bits": Broken(
        AcksUndefinedInterruptBits, "rng", "mmio-v2", ("mmio.drv.ack-mask",)
    ),
    "bad-discard": Broken(
        BadDiscard, "blk", "pci-modern", ("blk.drv.segments-whole", "blk.drv.discard-unmap-zero")
    ),
    "obeys-used-flags-with-event-idx": Broken(
        ObeysUsedFlagsWithEventIdx, "blk", "mmio-v2", ("split.availsupp.drv-ignore-flags-bit0",)
    ),
    "narrow-register-read": Broken(NarrowRegisterRead, "rng", "mmio-v2", ("mmio.drv.control-32bit",)),
    "ignores-modern-ids": Broken(
        IgnoresModernIds,
        "rng",
        "pci-modern",
        ("pci.id.drv-match-modern",),
        {"pci_transports": (_TransitionalIdsOnlyModern, PciLegacyTransport)},
    ),
    "rejects-unknown-revision": Broken(
        RejectsUnknownRevision,
        "rng",
        "pci-modern",
        ("pci.id.drv-any-revision",),
        {"pci_transports": (_RevisionOneOnlyModern, PciLegacyTransport)},
    ),
    "ignores-transitional-ids": Broken(
        IgnoresTransitionalIds,
        "rng",
        "pci-legacy",
        ("pci.id.drv-match-transitional",),
        {"pci_transports": (PciModernTransport, _ModernIdsOnlyLegacy)},
    ),
    "features-ok-on-legacy-device": Broken(
        FeaturesOkOnLegacyDevice,
        "rng",
        "pci-legacy",
        ("features.legacy.drv-detect-legacy-device", "init.legacy.drv-skip-features-ok"),
    ),
    "legacy-ring-for-half-size": Broken(
        LegacyRingForHalfSize,
        "rng",
        "pci-legacy",
        ("split.legacy.drv-size-and-alloc", "split.legacy.drv-fixed-layout", "pci.legacy.queue-pfn"),
        timeout=HANGS_AFTER,
    ),
    "reads-writeback-early": Broken(
        ReadsWritebackEarly, "blk", "mmio-v2", ("blk.drv.writeback-after-features-ok",)
    ),
    "goes-on-after-failed": Broken(
        GoesOnAfterFailed, "rng", "mmio-v2", ("status.drv.reset-after-failed", "init.drv.stop-on-error")
    ),
    "reuses-stopped-queue": Broken(
        ReusesStoppedQueue, "rng", "mmio-v2", ("mmio.drv.stop-queue",), timeout=HANGS_AFTER
    ),
    "kicks-stopped-legacy-queue": Broken(
        KicksStoppedLegacyQueue, "rng", "mmio", ("mmio.legacy.pfn-zero-stops",), timeout=HANGS_AFTER
    ),
    "unusable-config-window": Broken(
        UnusableConfigWindow, "rng", "pci-modern", ("pci.cfgcap.drv-aligned", "pci.cfgcap.drv-valid-range")
    ),
    "fails-on-unknown-feature": Broken(
        FailsOnUnknownFeature, "rng", "mmio-v2", ("features.drv.no-fail-on-unknown",)
    ),
    "assumes-version-1": Broken(
        AssumesVersion1, "rng", "mmio-v2", ("features.drv.fail-if-no-fallback",), odd="no-version-1"
    ),
    "ignores-iommu": Broken(
        IgnoresIommu, "iommu", "pci-modern", ("features.drv.access-platform-iommu",), {"dma_api": "never"}
    ),
    "trusts-first-generation": Broken(
        TrustsFirstGeneration, "blk", "mmio-v2", ("config.drv.generation-loop",), odd="generation-moves"
    ),
    "accepts-bad-magic": Broken(
        AcceptsBadMagic,
        "rng",
        "mmio-v2",
        ("mmio.drv.ignore-bad-magic",),
        {"mmio_transport": _BelievesAnyMagic},
        odd="bad-magic",
    ),
    "accepts-unknown-version": Broken(
        AcceptsUnknownVersion,
        "rng",
        "mmio-v2",
        ("mmio.drv.ignore-bad-version",),
        {"mmio_versions": (MMIO.version_legacy, MMIO.version_modern, MMIO.version_modern + 1)},
        odd="bad-version",
    ),
    "reads-past-empty-slot": Broken(
        ReadsPastEmptySlot,
        "rng",
        "mmio-v2",
        ("mmio.drv.init-devid-zero-abort", "mmio.drv.ignore-devid-zero"),
        {"mmio_transport": _VendorBeforeDeviceIdCheck},
        odd="device-id-zero",
    ),
}
