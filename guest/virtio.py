"""The guest virtio core: probe, feature negotiation, status machine, virtqueues.

This follows Linux's drivers/virtio/virtio.c: reset, ACKNOWLEDGE, DRIVER, read the device
features, keep the ones both the driver and this driver generation know, write them,
set FEATURES_OK and read it back (modern only), let the device driver set up its queues,
then DRIVER_OK. Any failure sets FAILED and is reported with the step that failed.

Every status value written and read back is recorded in :attr:`VirtioGuestDevice.trace`,
which is what a run result shows as ``status_trace``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from guest.dma import DmaApi
from guest.transport.base import ConfigOps
from virtio_sim import layouts
from virtio_sim.ring.chain import DeviceBrokenError, DmaBuffer
from virtio_sim.ring.split import QueueFullError, SplitDriverQueue, SplitRingAddresses
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


@dataclass
class DriverPolicy:
    """The parts of a driver generation the core needs (profiles fill these in)."""

    known_features: int = bit(F.VERSION_1) | bit(F.EVENT_IDX) | bit(F.INDIRECT_DESC)
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


@dataclass
class RequestState:
    done: trio.Event = field(default_factory=trio.Event)
    length: int = 0
    on_done: Callable[[int], None] | None = None


class GuestVirtqueue:
    """A driver-side virtqueue with blocking submit, completed by interrupts."""

    def __init__(self, dev: VirtioGuestDevice, index: int, ring: SplitDriverQueue, area: DmaBuffer) -> None:
        self.dev = dev
        self.index = index
        self.ring = ring
        self.area = area

    async def submit(self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]]) -> int:
        """Add one chain, kick if the device wants it, wait for completion; returns used.len."""
        (length,) = await self.submit_many([(out, in_)])
        return length

    async def submit_many(
        self, chains: Sequence[tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]]]
    ) -> list[int]:
        """Add several chains, kick once, wait for all; returns their used.len values."""
        await self.dev.dma.flush()  # pending IOMMU maps must land before the device looks
        reqs = []
        for out, in_ in chains:
            req = RequestState()
            await self._add(out, in_, req)
            reqs.append(req)
        await self.kick()
        for req in reqs:
            while not req.done.is_set():
                self.dev.raise_if_broken()
                await self.dev.wait_progress()
        return [r.length for r in reqs]

    async def post(
        self, in_: Sequence[tuple[int, int]], on_done: Callable[[int], None], *, kick: bool = True
    ) -> None:
        """Lend writable buffers the device fills whenever it likes (event and receive
        queues); ``kick=False`` lets a driver fill many and :meth:`kick` once."""
        req = RequestState(on_done=on_done)
        await self._add([], in_, req)
        if kick:
            await self.kick()

    async def _add(
        self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]], req: RequestState
    ) -> None:
        while True:
            self.dev.raise_if_broken()
            try:
                self.ring.add(out, in_, req)
                return
            except DeviceBrokenError as e:
                raise DeviceNeedsReset(str(e)) from None
            except QueueFullError:
                await self.kick()
                await self.dev.wait_progress()  # completions free descriptors

    async def kick(self) -> None:
        if self.ring.kick_prepare():
            await self.dev.transport.notify(self.index)

    def reap(self) -> int:
        """Interrupt handler: complete every used buffer; returns how many."""
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
        size = min(max_size, wanted_size)
        if size & (size - 1):  # legacy queues have a fixed size, modern may be any max
            size = 1 << (size.bit_length() - 1)
        align = t.legacy_ring_align()
        if align is not None:
            size = max_size  # the legacy interface cannot change the size
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
            event_idx=self.has(F.EVENT_IDX),
            indirect_pool=self.dma.coherent if self.has(F.INDIRECT_DESC) else None,
            order=order,
        )
        await self.dma.flush()  # the ring must be mapped before the device is told about it
        await t.setup_queue(index, size, SplitRingAddresses(desc, avail, used))
        vq = GuestVirtqueue(self, index, ring, area)
        while len(self.queues) <= index:
            self.queues.append(vq)
        self.queues[index] = vq
        return vq

    # -- interrupts ------------------------------------------------------------

    async def handle_interrupt(self) -> int:
        """Read and acknowledge the causes, complete used buffers; returns the causes."""
        isr = await self.transport.ack_interrupt()
        if isr & ISR_CONFIG:
            status = await self.transport.get_status()
            if status & STATUS.DEVICE_NEEDS_RESET:
                self.mark_broken(f"device set DEVICE_NEEDS_RESET ({status_names(status)})")
        for vq in self.queues:
            vq.reap()
        self._progress()
        return isr

    def _progress(self) -> None:
        self._progress_event.set()
        self._progress_event = trio.Event()

    async def wait_progress(self) -> None:
        """Sleep until the next interrupt was handled or the device broke."""
        await self._progress_event.wait()

    def mark_broken(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        self._progress()

    def raise_if_broken(self) -> None:
        if self.broken:
            raise DeviceNeedsReset(self.broken)
