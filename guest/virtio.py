"""The guest virtio core: probe, feature negotiation, status machine, virtqueues.

This follows Linux's drivers/virtio/virtio.c: reset, ACKNOWLEDGE, DRIVER, read the device
features, keep the ones both the driver and this driver generation know, write them,
set FEATURES_OK and read it back (modern only), let the device driver set up its queues,
then DRIVER_OK. Any failure sets FAILED and is reported with the step that failed.

Every status value written and read back is recorded in :attr:`VirtioGuestDevice.trace`,
which is what a run result shows as ``status_trace``.

The ring format follows the negotiated features like Linux's vring_create_virtqueue():
a packed ring (descriptor ring + driver and device event suppression areas, any size)
with VIRTIO_F_RING_PACKED, a split ring otherwise; IN_ORDER, NOTIFICATION_DATA (the
kick carries next_off/next_wrap), RING_RESET (:meth:`GuestVirtqueue.reset`) and
ORDER_PLATFORM (barriers "platform" instead of "weak", as Linux's weak_barriers) apply to
either format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from virtio_sim import layouts
from virtio_sim.guest.dma import DmaApi
from virtio_sim.guest.transport.base import ConfigOps
from virtio_sim.ring.api import DriverRing
from virtio_sim.ring.chain import DeviceBrokenError, DmaBuffer
from virtio_sim.ring.notify import encode_notify_data
from virtio_sim.ring.packed import PackedDriverQueue
from virtio_sim.ring.split import SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import QueueFullError, RingFeatures
from virtio_sim.spec import FEATURES, MMIO_INT, STATUS, F, bit, status_names

# The config-change cause has the same bit in the mmio InterruptStatus and the PCI ISR.
ISR_CONFIG = MMIO_INT.CONFIG_CHANGE


class ProbeRefused(Exception):
    """The device or the driver refused to work together (a clean failure)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class DeviceNeedsReset(Exception):
    """The device reported DEVICE_NEEDS_RESET or broke a ring rule."""


class DriverHang(Exception):
    """The driver waits for completions that can never come: the device set
    DEVICE_NEEDS_RESET (it serves nothing until it is reset) and this driver generation
    ignores that bit, so nothing will ever reset it. What the user sees is a hang; the
    simulator only says so at once instead of waiting for the cell's deadline."""


@dataclass
class DriverPolicy:
    """The parts of a driver generation the core needs (profiles fill these in)."""

    known_features: int = (
        bit(F.VERSION_1)
        | bit(F.EVENT_IDX)
        | bit(F.INDIRECT_DESC)
        | bit(F.RING_PACKED)
        | bit(F.IN_ORDER)
        | bit(F.ORDER_PLATFORM)
        | bit(F.NOTIFICATION_DATA)
        | bit(F.RING_RESET)
    )
    requires_version_1: bool = False
    features_ok: bool = True  # legacy-only drivers predate FEATURES_OK
    #: device-type bits per device key; a key not listed keeps the driver's own mask
    device_features: dict[str, int] = field(default_factory=dict)
    #: a restricted-memory guest (SEV/TDX/s390 PV) ...
    restricted_memory: bool = False
    #: ... and whether it refuses devices without VERSION_1 + ACCESS_PLATFORM (Linux 5.10+)
    refuse_unrestricted: bool = False
    #: device types this kernel has drivers for (None: every driver the guest stack has)
    drivers: frozenset[str] | None = None
    max_queue_size: int | None = None  # cap on the sizes drivers ask for (None: theirs)
    #: transport features kept on some transports only (mask -> transport names)
    transport_only: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: how virtio_blk builds a DISCARD request's ranges: "per-bio" (Linux 5.0-5.8, one range
    #: per bio of the request, 1f23816b8eb8) or "single-range" (5.9+, af822aa68fbd: with a
    #: max_discard_seg of 1 the merged request is one range)
    blk_discard: str = "single-range"
    #: what the driver does when the device sets DEVICE_NEEDS_RESET: "detect" (the
    #: simulator's own hardened guest: stop and reset) or "ignore" (Linux's virtio-blk,
    #: virtio-rng, virtio-net, virtio-console, virtio-iommu: no driver reads the bit, so
    #: waiters wait forever -> HANG)
    needs_reset: str = "detect"


@dataclass
class RequestState:
    done: trio.Event = field(default_factory=trio.Event)
    length: int = 0
    on_done: Callable[[int], None] | None = None
    out: Sequence[tuple[int, int]] = ()
    in_: Sequence[tuple[int, int]] = ()


@dataclass
class QueueStats:
    """What queue resets did, for tests and results."""

    resets: int = 0
    reaped_at_reset: int = 0  # completions found on the ring after the device let go of it
    resubmitted: int = 0  # buffers the device never used, made available again


@dataclass
class _RingMemory:
    ring: DriverRing
    area: DmaBuffer
    addrs: SplitRingAddresses  # device addresses: desc, driver area, device area


class GuestVirtqueue:
    """A driver-side virtqueue with blocking submit, completed by interrupts."""

    def __init__(self, dev: VirtioGuestDevice, index: int, ring: DriverRing, area: DmaBuffer) -> None:
        self.dev = dev
        self.index = index
        self.ring = ring
        self.area = area
        self.stats = QueueStats()
        self._resetting: trio.Event | None = None
        #: a queue without callback, whose driver polls the used ring itself (Linux's
        #: virtio-iommu request queue): an interrupt reaps nothing there and does not
        #: ask for more (vring_interrupt calls no callback, virtio_ring.c)
        self.polled = False

    @property
    def size(self) -> int:
        return self.ring.size

    async def submit(self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]]) -> int:
        """Add one chain, kick if the device wants it, wait for completion; returns used.len."""
        (length,) = await self.submit_many([(out, in_)])
        return length

    async def submit_many(
        self, chains: Sequence[tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]]]
    ) -> list[int]:
        """Add several chains, kick once, wait for all; returns their used.len values."""
        reqs = [await self.start(out, in_, kick=False) for out, in_ in chains]
        await self.kick()
        return [await self.wait(r) for r in reqs]

    async def post(
        self, in_: Sequence[tuple[int, int]], on_done: Callable[[int], None], *, kick: bool = True
    ) -> None:
        """Lend writable buffers the device fills whenever it likes (event and receive
        queues); ``kick=False`` lets a driver fill many and :meth:`kick` once."""
        await self.start([], in_, kick=kick, on_done=on_done)

    async def start(
        self,
        out: Sequence[tuple[int, int]],
        in_: Sequence[tuple[int, int]],
        *,
        kick: bool = True,
        on_done: Callable[[int], None] | None = None,
    ) -> RequestState:
        """Make one chain available (and kick, unless told not to); do not wait for it."""
        await self.dev.dma.flush()  # pending IOMMU maps must land before the device looks
        req = RequestState(on_done=on_done, out=list(out), in_=list(in_))
        while True:
            self.dev.raise_if_broken()
            if self._resetting is not None:
                await self._resetting.wait()  # the ring is being replaced
                continue
            try:
                self.ring.add(out, in_, req)
                break
            except DeviceBrokenError as e:
                raise DeviceNeedsReset(str(e)) from None
            except QueueFullError:
                await self.kick()
                await self.dev.wait_progress()  # completions free descriptors
        if kick:
            await self.kick()
        return req

    async def kick(self) -> None:
        """Notify the device if its event suppression asks for it."""
        if self.ring.kick_prepare():
            data = None
            if self.dev.has(F.NOTIFICATION_DATA):
                data = encode_notify_data(self.index, *self.ring.notify_data())
            await self.dev.transport.notify(self.index, data)

    async def wait(self, req: RequestState) -> int:
        while not req.done.is_set():
            self.dev.raise_if_broken()
            await self.dev.wait_progress()
        return req.length

    async def reset(self, size: int | None = None) -> None:
        """Reset this queue alone (VIRTIO_F_RING_RESET) and enable it again.

        Like Linux's virtqueue_reset(): the transport resets the queue and waits until the
        device is done with it; then completions the device wrote before the reset are
        reaped (none is lost), buffers it never used are taken back, the queue is set up
        afresh (``size`` may change it) and those buffers are made available again in
        their original order. Submitters wait while the ring is being replaced.
        """
        dev = self.dev
        if not dev.has(F.RING_RESET):
            raise ValueError("VIRTIO_F_RING_RESET was not negotiated")
        self._resetting = trio.Event()
        try:
            self.ring.disable_cb()
            await dev.transport.reset_queue(self.index)
            self.stats.reaped_at_reset += self.reap()
            pending: list[RequestState] = self.ring.detach_all()
            dev.dma.free(self.area)
            mem = dev.new_ring(size or self.ring.size)
            self.ring, self.area = mem.ring, mem.area
            if self.polled:
                self.ring.disable_cb()  # the new ring asks for no interrupts either
            await dev.dma.flush()
            await dev.transport.setup_queue(self.index, mem.ring.size, mem.addrs)
            for req in pending:
                self.ring.add(req.out, req.in_, req)
            self.stats.resubmitted += len(pending)
            self.stats.resets += 1
        finally:
            done, self._resetting = self._resetting, None
            done.set()
        if pending:
            await self.kick()
        dev.mark_progress()

    def reap(self) -> int:
        """Interrupt handler: complete every used buffer; returns how many."""
        if self.polled:
            return 0
        n = 0
        while True:
            try:
                got = self.ring.get_used()
            except DeviceBrokenError as e:
                self.dev.mark_broken(f"queue {self.index}: {e}")
                return n
            if got is None:
                if self.ring.enable_cb():
                    continue  # something arrived while re-enabling
                return n
            token, length = got
            token.length = length
            token.done.set()
            if token.on_done is not None:
                token.on_done(length)
            n += 1


class VirtioGuestDevice:
    """One virtio device as the guest drives it, from probe to removal."""

    def __init__(
        self,
        transport: ConfigOps,
        memory: Any,
        dma: DmaApi,
        policy: DriverPolicy,
        dma_for: Callable[[int], DmaApi] | None = None,
    ) -> None:
        self.transport = transport
        self.memory = memory
        self.dma = dma
        self.policy = policy
        #: picks the DMA API for the negotiated features (Linux's vring_use_dma_api())
        self.dma_for = dma_for
        self.trace: list[str] = []
        self.device_features = 0
        self.features = 0
        self.queues: list[GuestVirtqueue] = []
        self.broken: str | None = None
        #: set when the device asked for a reset that this driver generation never does
        self.hung: str | None = None
        self._progress_event = trio.Event()

    # -- status ----------------------------------------------------------------

    async def _set_status(self, value: int) -> None:
        await self.transport.set_status(value)
        self.trace.append(status_names(value))

    async def add_status(self, bits: int) -> None:
        status = await self.transport.get_status()
        await self._set_status(status | bits)

    async def fail(self, reason: str) -> None:
        try:
            await self.add_status(STATUS.FAILED)
        finally:
            self.broken = self.broken or reason

    def has(self, feature_bit: int) -> bool:
        return bool(self.features >> feature_bit & 1)

    @property
    def legacy(self) -> bool:
        return not self.has(F.VERSION_1)

    @property
    def barriers(self) -> str:
        """Linux's weak_barriers: SMP barriers suffice unless ORDER_PLATFORM was negotiated."""
        return "platform" if self.has(F.ORDER_PLATFORM) else "weak"

    def ring_info(self) -> dict[str, Any]:
        """The ring format and ring features in use, for run results."""
        return {
            "format": "packed" if self.has(F.RING_PACKED) else "split",
            "barriers": self.barriers,
            "in_order": self.has(F.IN_ORDER),
            "notification_data": self.has(F.NOTIFICATION_DATA),
            "ring_reset": self.has(F.RING_RESET),
            "queue_sizes": [vq.size for vq in self.queues],
            "queue_resets": sum(vq.stats.resets for vq in self.queues),
        }

    def negotiated_names(self, device_key: str) -> list[str]:
        return FEATURES.names(self.features, device_key)

    # -- probe -----------------------------------------------------------------

    async def negotiate(self, driver_features: int) -> None:
        """Reset through FEATURES_OK (Linux's virtio_dev_probe up to the driver's probe)."""
        t = self.transport
        await t.reset()
        self.trace.append("RESET")
        if await t.get_status() != 0:
            raise ProbeRefused("reset", "device status did not read back 0 after reset")
        await self.add_status(STATUS.ACKNOWLEDGE)
        await self.add_status(STATUS.DRIVER)
        self.device_features = await t.get_features()
        self.features = self.device_features & driver_features
        if not t.legacy and not self.has(F.VERSION_1):
            await self.fail("no VERSION_1")
            raise ProbeRefused("features", "device does not offer VIRTIO_F_VERSION_1 on a modern transport")
        if self.policy.requires_version_1 and not self.has(F.VERSION_1):
            await self.fail("no VERSION_1")
            raise ProbeRefused("features", "this driver requires VIRTIO_F_VERSION_1")
        await t.set_features(self.features)
        if self.dma_for is not None:
            self.dma = self.dma_for(self.features)
            await self.dma.flush()
        if self.policy.restricted_memory and self.policy.refuse_unrestricted:
            # virtio_features_ok(): the only place Linux ties ACCESS_PLATFORM to VERSION_1.
            for needed in (F.VERSION_1, F.ACCESS_PLATFORM):
                if not self.has(needed):
                    name = FEATURES.names(bit(needed), "transport")[0]
                    await self.fail(f"device must provide {name}")
                    raise ProbeRefused("features", f"device must provide {name}")
        if self.policy.features_ok and not self.legacy:
            await self.add_status(STATUS.FEATURES_OK)
            status = await t.get_status()
            self.trace.append(f"read {status_names(status)}")
            if not status & STATUS.FEATURES_OK:
                await self.fail("FEATURES_OK refused")
                raise ProbeRefused("FEATURES_OK", "device did not accept our subset of features")

    async def driver_ok(self) -> None:
        await self.add_status(STATUS.DRIVER_OK)

    async def setup_queue(self, index: int, wanted_size: int) -> GuestVirtqueue:
        t = self.transport
        max_size = await t.queue_max_size(index)
        if max_size == 0:
            raise ProbeRefused("queue setup", f"queue {index} does not exist")
        size = min(max_size, wanted_size, self.policy.max_queue_size or max_size)
        if size & (size - 1) and not self.has(F.RING_PACKED):
            size = 1 << (size.bit_length() - 1)  # split rings need a power of two
        if t.legacy_ring_align() is not None:
            size = max_size  # the legacy interface cannot change the size
        mem = self.new_ring(size)
        await self.dma.flush()  # the ring must be mapped before the device is told about it
        await t.setup_queue(index, size, mem.addrs)
        vq = GuestVirtqueue(self, index, mem.ring, mem.area)
        while len(self.queues) <= index:
            self.queues.append(vq)
        self.queues[index] = vq
        return vq

    def _ring_features(self) -> RingFeatures:
        """The negotiated ring features, for every ring this device makes."""
        return RingFeatures.from_bits(self.features)

    def new_ring(self, size: int) -> _RingMemory:
        """Allocate and initialise the driver side of a ring in the negotiated format."""
        if self.has(F.RING_PACKED):
            return self._new_packed_ring(size)
        t = self.transport
        align = t.legacy_ring_align()
        if align is not None:
            total = layouts.legacy_vring_size(size, align)
            area = self.dma.alloc(total, align)
            desc = area.dev_addr
            avail = desc + layouts.desc_table_size(size)
            used = desc + layouts.legacy_used_ring_offset(size, align)
            gpa = SplitRingAddresses(area.gpa, area.gpa + (avail - desc), area.gpa + (used - desc))
        else:
            d_size = layouts.desc_table_size(size)
            a_size = layouts.avail_ring_size(size)
            u_off = layouts.align_up(d_size + a_size, layouts.USED_ELEM_SIZE)
            total = u_off + layouts.used_ring_size(size)
            area = self.dma.alloc(total, layouts.DESC_SIZE)
            gpa = SplitRingAddresses(area.gpa, area.gpa + d_size, area.gpa + u_off)
            desc, avail, used = area.dev_addr, area.dev_addr + d_size, area.dev_addr + u_off
        order = t.guest_order if self.legacy else "little"
        ring = SplitDriverQueue(
            self.memory,
            size,
            gpa,
            self._ring_features(),
            indirect_pool=self.dma.coherent if self.has(F.INDIRECT_DESC) else None,
            order=order,
        )
        return _RingMemory(ring, area, SplitRingAddresses(desc, avail, used))

    def _new_packed_ring(self, size: int) -> _RingMemory:
        """Descriptor ring, then the driver and the device event suppression structures."""
        drv_off = layouts.align_up(layouts.packed_ring_size(size), layouts.EVENT_SUPPRESS_ALIGN)
        dev_off = drv_off + layouts.EVENT_SUPPRESS_SIZE
        area = self.dma.alloc(dev_off + layouts.EVENT_SUPPRESS_SIZE, layouts.PACKED_DESC_ALIGN)
        ring = PackedDriverQueue(
            self.memory,
            size,
            SplitRingAddresses(area.gpa, area.gpa + drv_off, area.gpa + dev_off),
            self._ring_features(),
            indirect_pool=self.dma.coherent if self.has(F.INDIRECT_DESC) else None,
        )
        a = area.dev_addr
        return _RingMemory(ring, area, SplitRingAddresses(a, a + drv_off, a + dev_off))

    # -- interrupts ------------------------------------------------------------

    async def handle_interrupt(self) -> int:
        """Read and acknowledge the causes, complete used buffers; returns the causes."""
        isr = await self.transport.ack_interrupt()
        if isr & ISR_CONFIG:
            status = await self.transport.get_status()
            if status & STATUS.DEVICE_NEEDS_RESET:
                self._needs_reset(status)
        for vq in self.queues:
            vq.reap()
        self._progress()
        return isr

    async def handle_queue_vector(self, queues: list[int] | None) -> None:
        """MSI-X: a queue vector fired; complete the queues it serves (None: all)."""
        for vq in self.queues:
            if queues is None or vq.index in queues:
                vq.reap()
        self._progress()

    async def handle_config_vector(self) -> None:
        """MSI-X: the configuration-change vector fired (NEEDS_RESET arrives this way)."""
        status = await self.transport.get_status()
        if status & STATUS.DEVICE_NEEDS_RESET:
            self._needs_reset(status)
        self._progress()

    def _progress(self) -> None:
        self._progress_event.set()
        self._progress_event = trio.Event()

    def mark_progress(self) -> None:
        """Wake every task waiting for completions (after reaping outside an interrupt)."""
        self._progress()

    async def wait_progress(self) -> None:
        """Sleep until the next interrupt was handled or the device broke."""
        await self._progress_event.wait()

    def _needs_reset(self, status: int) -> None:
        """The config interrupt came with DEVICE_NEEDS_RESET in the status. A driver that
        ignores the bit goes on waiting: the status read here is the simulator's own
        observation (the evidence of the hang), not something the driver acts on."""
        what = f"device set DEVICE_NEEDS_RESET ({status_names(status)})"
        if self.policy.needs_reset == "ignore":
            if self.hung is None:
                waiting = sum(vq.ring.size - vq.ring.num_free for vq in self.queues)
                self.hung = (
                    f"{what}; this driver generation ignores it and waits forever: "
                    f"{waiting} descriptor(s) in flight that the device will never complete"
                )
            self._progress()
            return
        self.mark_broken(what)

    def mark_broken(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        self._progress()

    def raise_if_broken(self) -> None:
        if self.hung:
            raise DriverHang(self.hung)
        if self.broken:
            raise DeviceNeedsReset(self.broken)
