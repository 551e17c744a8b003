"""What the corpus is aimed at: every device model x transport x ring format (x policy,
x vIOMMU), each built fresh per case with a second, well-behaved guest device beside it.

:class:`Bench` is the hostile driver's workbench: the machine, register ports for the
victim (device 0) and the bystander (device 1), canary-watched memory, and ring forges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from virtio_sim import layouts as L
from virtio_sim.devices import KINDS
from virtio_sim.dma import AddressSpace, IdentityAddressSpace
from virtio_sim.host.build import HostConfig, HostSetup, build_host
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.memory import GuestMemory
from virtio_sim.netproto import net_hdr_len
from virtio_sim.orchestration.attacks.forge import PackedForge, RingForge, Seg, SplitForge
from virtio_sim.orchestration.attacks.memwatch import MemWatch, WatchedSpace
from virtio_sim.orchestration.attacks.ports import MmioPort, PciLegacyPort, PciModernPort, Port
from virtio_sim.spec import BLK_T, IOMMU_MAP_F, PCI, STATUS, F, bit

RAM = 1 << 20
# Per-device windows (victim at AREA[0], bystander at AREA[1]): rings, tables, data.
AREA = (0x10000, 0x80000)
RING_OFF, TABLE_OFF, DATA_OFF, DATA_END = 0x0, 0x8000, 0xC000, 0x60000
# The victim blk's disk (sparse): large enough for the amplified request of row X5
# (corpus_ring.AMPLIFIED_BYTES), so the capacity check is not what stops it.
VICTIM_DISK = 64 << 20
READ_ONLY = 0x72000  # RAM mapped read-only for the device behind the IOMMU
UNMAPPED = 0x74000  # RAM that no IOMMU mapping covers
DOMAIN = (1, 2)
MODERN_QUEUE = 8

#: device kind -> (its -device model, the queue the corpus forges requests on): every
#: kind whose descriptor names an attack queue (virtio_sim/devices)
DEVICES = {
    key: (kind.device_name, kind.attack_queue) for key, kind in KINDS.items() if kind.attack_queue is not None
}
# transport -> ring formats it can carry (legacy interfaces predate packed rings)
TRANSPORTS = {
    "mmio-v2": ("split", "packed"),
    "mmio-v1": ("split",),
    "pci-modern": ("split", "packed"),
    "pci-transitional": ("split", "packed"),
    "pci-legacy": ("split",),
}

#: where the lenient setting (x-strict-rings=off) is attacked: one mmio, one pci transport
LENIENT_TRANSPORTS = ("mmio-v2", "pci-modern")


@dataclass(frozen=True)
class Target:
    device: str
    transport: str
    ring: str
    policy: str = "needs-reset"
    iommu: bool = False
    #: False: the device runs with x-strict-rings=off (lenient, as QEMU)
    strict: bool = True

    @property
    def name(self) -> str:
        extra = "" if self.policy == "needs-reset" else f"+{self.policy}"
        extra += "+iommu" if self.iommu else ""
        extra += "" if self.strict else "+lenient"
        return f"{self.device}/{self.transport}/{self.ring}{extra}"

    @property
    def legacy(self) -> bool:
        return self.transport in ("mmio-v1", "pci-legacy")


def all_targets() -> list[Target]:
    out = [Target(d, t, r) for d in DEVICES for t, rings in TRANSPORTS.items() for r in rings]
    out += [
        Target(d, t, r, policy="drop")
        for d in DEVICES
        for t in ("mmio-v2", "pci-modern")
        for r in ("split", "packed")
    ]
    out += [
        Target(d, t, r, iommu=True)
        for d in ("rng", "blk")
        for t in ("mmio-v2", "pci-modern")
        for r in ("split", "packed")
    ]
    out += [
        Target(d, t, r, strict=False)
        for d in DEVICES
        for t in LENIENT_TRANSPORTS
        for r in ("split", "packed")
    ]
    return out


def parse_target(text: str) -> list[Target]:
    """``host:DEVICE`` (all its targets) or ``host:DEVICE/TRANSPORT/RING[+drop][+iommu][+lenient]``."""
    spec = text.removeprefix("host:")
    matches = [t for t in all_targets() if t.name == spec or t.device == spec]
    if not matches:
        raise ValueError(f"unknown target {text!r}; e.g. host:blk or host:{all_targets()[0].name}")
    return matches


class Bench:
    """One freshly built machine with a victim and a bystander device."""

    def __init__(self, target: Target, scratch: str) -> None:
        self.target = target
        kind, self.qi = DEVICES[target.device]
        props = [f"packed={'on' if target.ring == 'packed' else 'off'}"] if not target.legacy else []
        if not target.legacy:
            props.append("in_order=on")  # offered; only the IN_ORDER scenarios accept it
        props.append(f"x-error-policy={target.policy}")
        if not target.strict:
            props.append("x-strict-rings=off")
        if target.iommu:
            props.append("iommu_platform=on")
        spec = ",".join([kind, *props])
        victim = spec
        if target.device == "blk":
            disk = os.path.join(scratch, "victim.img")
            with open(disk, "wb") as f:
                f.truncate(VICTIM_DISK)
            victim = f"{spec},drive={disk}"
        holder: list[MemWatch] = []

        def space(mem: GuestMemory) -> AddressSpace:
            return WatchedSpace(IdentityAddressSpace(mem), holder[0])

        self.setup: HostSetup = build_host(
            HostConfig(
                devices=[victim, spec],
                transport=target.transport,
                ram_size=RAM,
                seed=1,
                scratch_dir=scratch,
                iommu="virtio-iommu" if target.iommu else "none",
                iommu_topology="spec",  # mmio victims behind the IOMMU too (not QEMU's topology)
                address_space=space,
            )
        )
        self.memory = self.setup.memory
        self.watch = MemWatch(self.memory)
        holder.append(self.watch)
        m = self.setup.machine
        self.vdevs: list[VirtioDevice] = list(self.setup.devices)
        if target.transport.startswith("pci"):
            cls: Any = PciLegacyPort if target.transport == "pci-legacy" else PciModernPort
            self.ports: list[Port] = [cls(m, m.pci_devices[i], i) for i in range(2)]
        else:
            self.ports = [MmioPort(m, m.slots[-2 + i] if self.setup.iommu else m.slots[i]) for i in range(2)]
        self.forges: list[RingForge] = []
        self.watch.allowed = self._allowed
        self._next = [AREA[0] + DATA_OFF, AREA[1] + DATA_OFF]
        self.forge: RingForge | None = None  # the victim's attack queue
        self.main: dict[int, RingForge] = {}  # each device's attack-queue forge
        self.extra: list[tuple[int, int]] = []  # more device-writable ranges a scenario grants
        self.last_status = 0  # blk: where the last good request's status byte is

    def _allowed(self) -> list[tuple[int, int]]:
        return [r for f in self.forges for r in f.allowed()] + self.extra

    def close(self) -> None:
        self.setup.close()

    # -- memory -------------------------------------------------------------------

    def buf(self, size: int, who: int = 0, align: int = 16) -> int:
        at = L.align_up(self._next[who], align)
        if at + size > AREA[who] + DATA_END:
            at = AREA[who] + DATA_OFF
        self._next[who] = at + size
        return at

    def table_addr(self, who: int = 0, n: int = 0) -> int:
        return AREA[who] + TABLE_OFF + 0x1000 * n

    # -- the driver's verbs ---------------------------------------------------------

    def features(self, who: int = 0) -> int:
        """What a cooperative driver would accept for this target."""
        offered = self.ports[who].device_features()
        drop = bit(F.IN_ORDER) | bit(F.NOTIFICATION_DATA) | bit(F.BAD_FEATURE)
        if self.target.ring != "packed":
            drop |= bit(F.RING_PACKED)
        if not self.target.iommu:
            drop |= bit(F.ACCESS_PLATFORM)
        return offered & ~drop

    def negotiate(self, who: int = 0, features: int | None = None, *, features_ok: bool = True) -> int:
        p = self.ports[who]
        p.set_status(0)
        p.set_status(STATUS.ACKNOWLEDGE)
        p.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
        acked = self.features(who) if features is None else features
        p.set_driver_features(acked)
        if features_ok and not p.legacy:
            p.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK)
        return acked

    def queue(
        self, who: int = 0, index: int | None = None, size: int | None = None, *, enable: bool = True
    ) -> RingForge:
        """Set up one queue (the attack queue by default) over a fresh forge."""
        p = self.ports[who]
        qi = self.qi if index is None else index
        p.select(qi)
        q = p.max_size()
        if not p.legacy:
            q = p.set_size(size or min(MODERN_QUEUE, q))
        elif isinstance(p, MmioPort):
            # legacy virtio-mmio: the driver picks the ring size and writes QueueNum, up
            # to QueueNumMax (Linux's vm_setup_vq); QEMU's maximum is 1024, so a driver
            # that skipped the write would run a ring of another size than the device's
            q = p.set_size(size or q)
        base = AREA[who] + RING_OFF + 0x4000 * qi
        order = self.vdevs[who].byte_order(self.vdevs[who].guest_order)
        forge: RingForge
        if self.target.ring == "packed":
            drv = base + L.packed_ring_size(q)
            forge = PackedForge(self.watch, q, base, drv, drv + L.EVENT_SUPPRESS_SIZE, order)  # type: ignore[arg-type]
        else:
            avail = base + L.desc_table_size(q)
            used = base + L.legacy_used_ring_offset(q, PCI.legacy_queue_align)
            forge = SplitForge(self.watch, q, base, avail, used, order)  # type: ignore[arg-type]
        p.set_rings(forge.desc, forge.avail, forge.used)
        if enable:
            p.enable()
        self.forges.append(forge)
        if qi == self.qi:
            self.main[who] = forge
            if who == 0:
                self.forge = forge
        return forge

    def driver_ok(self, who: int = 0) -> None:
        p = self.ports[who]
        p.set_status(p.status() | STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK)

    def map_iommu(self, who: int) -> None:
        """Play the guest's IOMMU driver: the device's window mapped 1:1, the rest not."""
        iommu = self.setup.iommu
        if iommu is None:
            return
        ep = self._endpoint(who)
        iommu.attach(DOMAIN[who], ep, False)
        rw = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE
        iommu.map(DOMAIN[who], AREA[who], AREA[who] + DATA_END - 1, AREA[who], rw)
        if who == 0:
            iommu.map(DOMAIN[who], READ_ONLY, READ_ONLY + 0xFFF, READ_ONLY, IOMMU_MAP_F.READ)

    def _endpoint(self, who: int) -> int:
        m = self.setup.machine
        if self.target.transport.startswith("pci"):
            bus, dev, fn = m.pci_devices[who].fn.bdf
            return bus << 8 | dev << 3 | fn
        return who + 1

    def bring_up(self, who: int = 0, features: int | None = None) -> RingForge:
        """A correct handshake and the attack queue (the device's main queue for who=1)."""
        self.negotiate(who, features)
        self.map_iommu(who)
        forge = self.queue(who)
        self.driver_ok(who)
        return forge

    def kick(self, who: int = 0, index: int | None = None) -> None:
        self.ports[who].notify(self.qi if index is None else index)

    def published(self, who: int = 0) -> int:
        ring = self.vdevs[who].queues[self.qi].ring
        return ring.published if ring is not None else 0

    def post(self, segs: list[Seg], who: int = 0, forge: RingForge | None = None) -> None:
        f = forge or self.main[who]
        if isinstance(f, SplitForge):
            first = f.avail_idx % f.q
            f.post(segs, first=first * len(segs) % f.q if len(segs) == 1 else 0)
        else:
            assert isinstance(f, PackedForge)
            f.post(segs)

    # -- a request every model must serve -------------------------------------------

    def good_request(self, who: int = 0) -> list[Seg]:
        dev = self.target.device
        w = who
        if dev == "rng":
            return [Seg(self.buf(64, w), 64, True)]
        if dev == "blk":
            hdr = self.buf(16, w)
            codec = L.blk_req_header_codec(self.vdevs[who].byte_order(self.vdevs[who].guest_order))
            self.watch.write(hdr, codec.pack(BLK_T.IN, 0, 0))
            st = self.buf(1, w)
            self.watch.write(st, b"\xee")
            self.last_status = st
            return [Seg(hdr, 16), Seg(self.buf(512, w), 512, True), Seg(st, 1, True)]
        if dev == "net":
            vdev = self.vdevs[who]
            hlen = net_hdr_len(vdev.driver_features)
            frame = self.buf(hlen + 60, w)
            self.watch.write(frame, bytes(hlen) + b"\xff" * 12 + b"\x08\x00" + bytes(46))
            return [Seg(frame, hlen + 60)]
        data = self.buf(16, w)
        self.watch.write(data, b"hello, console!\n")
        return [Seg(data, 16)]

    def serves(self, who: int = 0, forge: RingForge | None = None) -> bool:
        """Post one good request and see it completed (blk: with status OK)."""
        before = self.published(who)
        self.post(self.good_request(who), who, forge)
        self.kick(who)
        if self.published(who) != before + 1:
            return False
        if self.target.device == "blk":
            return self.memory.read(self.last_status, 1) == b"\x00"
        return True
