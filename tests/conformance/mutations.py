"""Mutation harness: seeded spec violations in our REAL device models and guest driver.

Each :class:`Mutation` patches one function of host/ or guest/ or virtio_sim/ring/ (the
code our devices and driver really run, not conformance's own broken drivers) so that it
breaks one rule the way a real implementation might, runs the conformance target that
should see it, and says which requirement id must FAIL. A mutation is *killed* when the
run fails it (a FAIL or ERROR that is not KNOWN), *killed on the right id* when its
expected id FAILs. Survivors are listed with the reason in :data:`SURVIVORS`.

``python -m tests.conformance.mutations`` prints the table and the kill rate;
tests/conformance/test_mutations.py asserts the rate (>= 90% on the right id) and that
every survivor is explained.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import trio

from virtio_sim import layouts
from virtio_sim.guest.drivers.blk import BlkDriver
from virtio_sim.guest.drivers.console import ConsoleDriver
from virtio_sim.guest.drivers.net import NetDriver
from virtio_sim.guest.drivers.rng import RngDriver
from virtio_sim.guest.transport.mmio import MmioTransportDriver
from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.guest.virtio import VirtioGuestDevice
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.devices.console import ConsoleDevice
from virtio_sim.host.devices.net import NetDevice
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.host.transport.mmio import MmioTransport
from virtio_sim.host.virtio_device import QueueState, VirtioDevice
from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.device_runner import run_device_target
from virtio_sim.orchestration.conformance.driver_runner import run_driver_target
from virtio_sim.orchestration.conformance.findings import MANDATORY_LEVELS, FindingLog, Policy, Verdict
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.spec import BLK_T, NET_F, PACKED_DESC_F, STATUS, F, bit

Patch = Callable[[ExitStack], None]


@dataclass(frozen=True)
class Mutation:
    name: str
    why: str  # the bug, as a real implementation might have it
    target: str
    transport: str
    ring: str
    expect: str  # the requirement id that must FAIL
    patch: Patch


def _attr(owner: Any, name: str, new: Any) -> Patch:
    return lambda stack: stack.enter_context(mock.patch.object(owner, name, new))


def _all(*patches: Patch) -> Patch:
    def apply(stack: ExitStack) -> None:
        for p in patches:
            p(stack)

    return apply


# -- device-side mutations -------------------------------------------------------------


def _late_features(self: VirtioDevice, window: int, value: int) -> None:
    # the FEATURES_OK guard forgotten: the write lands whatever the status
    mask = 0xFFFFFFFF << (32 * window)
    self.driver_features = (self.driver_features & ~mask) | (value << (32 * window) & mask)
    if self.status & STATUS.FEATURES_OK:
        self.model.activate(self.driver_features, self.byte_order(self.guest_order))
        for q in self.queues:
            q.ring = None  # rebuilt with the new features at the next kick


_orig_write_status = VirtioDevice._write_status


def _driver_ok_anyway(self: VirtioDevice, value: int) -> None:
    # DRIVER_OK accepted without FEATURES_OK: the modern-interface check forgotten
    with mock.patch.object(VirtioDevice, "legacy", new=mock.PropertyMock(return_value=True)):
        _orig_write_status(self, value)


_orig_rng_process = RngDevice.process


def _rng_len_plus(self: RngDevice, queue: Any) -> int:
    # used len counts the whole buffer, not what was written (max_bytes caps the write)
    push = queue.push

    def inflated(head: int, written: int) -> None:
        push(head, written + 16)

    queue.push = inflated
    try:
        return _orig_rng_process(self, queue)
    finally:
        del queue.push


def _rng_nothing(self: RngDevice, queue: Any) -> int:
    done = 0
    while (chain := queue.pop()) is not None:
        queue.push(chain.head, 0)  # the entropy source forgotten
        done += 1
    return done


_orig_blk_serve = BlkDevice._serve


def _blk_len_minus(self: BlkDevice, queue: Any, chain: Any) -> int:
    return max(0, int(_orig_blk_serve(self, queue, chain)) - 1)  # the status byte not counted


def _idx_first(self: SplitDeviceQueue, head: int, written: int, count: int) -> None:
    # the used idx published before the element it covers
    self.published += 1
    slot = self.used_idx % self.size
    self.used_idx = (self.used_idx + count) & 0xFFFF
    self.space.write(self._used_idx_addr, self._idx.pack(self.used_idx))
    self.space.write(self.addrs.used + layouts.used_elem_offset(slot), self._elem.pack(head, written))


_orig_reset = VirtioDevice.reset


def _reset_keeps_status(self: VirtioDevice) -> None:
    status = getattr(self, "status", 0)
    _orig_reset(self)
    if status & STATUS.DRIVER_OK:
        self.status = STATUS.ACKNOWLEDGE  # a stale bit left behind


_orig_notify = VirtioDevice.notify


def _serve_early(self: VirtioDevice, index: int) -> None:
    # the DRIVER_OK check forgotten: kicks are served at once
    with mock.patch.object(VirtioDevice, "legacy", new=mock.PropertyMock(return_value=True)):
        _orig_notify(self, index)


def _needs_reset_silent(self: VirtioDevice) -> None:
    self.broken = True
    self.status |= STATUS.DEVICE_NEEDS_RESET  # no configuration change notification


def _never_interrupt(self: VirtioDevice, q: QueueState) -> None:
    if q.ring is not None:
        q.ring.needs_interrupt()  # asked, then ignored


def _always_interrupt(self: SplitDeviceQueue) -> bool:
    return True  # EVENT_IDX's used_event ignored


_orig_reset_queue = VirtioDevice.reset_queue


def _reset_queue_keeps_ring(self: VirtioDevice, index: int) -> None:
    q = self.queue(index)
    saved = None if q is None else (q.ready, q.ring, q.desc, q.driver, q.device, q.size)
    _orig_reset_queue(self, index)
    if q is not None and saved is not None:
        q.ready, q.ring, q.desc, q.driver, q.device, q.size = saved  # nothing really reset


def _reset_queue_later(self: VirtioDevice, index: int) -> None:
    # the queue reset runs in the background (draining in-flight work) while the register
    # already reads 0: it completes at the next notification, whichever queue it is for
    self.__dict__.setdefault("_mutation_resets", []).append(index)


_orig_notify = VirtioDevice.notify


def _notify_finishes_resets(self: VirtioDevice, index: int) -> None:
    for q in self.__dict__.pop("_mutation_resets", []):
        _orig_reset_queue(self, q)
    _orig_notify(self, index)


def _interrupt_ignoring_notify_on_empty(self: VirtioDevice, q: QueueState) -> None:
    # NOTIFY_ON_EMPTY offered (as QEMU offers it) but the interrupt decision never looks at it
    if q.ring is not None and q.ring.needs_interrupt() and self.sink is not None:
        self.sink.queue_interrupt(q.index)


def _generation_frozen(self: VirtioDevice) -> None:
    # the config changed, but the generation counter is not bumped
    now = self._config_space()
    if now != self._config_snapshot:
        self._config_snapshot = now
        if self.status & STATUS.DRIVER_OK and self.sink:
            self.sink.config_interrupt()


_orig_queue_reset = QueueState.reset


def _queue_reset_keeps_ready(self: QueueState) -> None:
    ready = getattr(self, "ready", False)
    _orig_queue_reset(self)
    self.ready = ready


_orig_net_init = NetDevice.__init__


def _net_offers_broken_deps(self: NetDevice, *a: Any, **kw: Any) -> None:
    _orig_net_init(self, *a, **kw)
    self.offered = (self.offered | bit(NET_F.GUEST_TSO4)) & ~bit(NET_F.GUEST_CSUM)


_orig_packed_write_used = PackedDeviceQueue.write_used


def _packed_wrong_wrap(self: PackedDeviceQueue, buf_id: int, written: int, skip: int) -> None:
    # the used descriptor's flags computed from the avail wrap counter, not the used one
    pos = self._used_pos
    _orig_packed_write_used(self, buf_id, written, skip)
    if (pos // self.size) % 2 == 1:
        addr = self.addrs.desc + (pos % self.size) * 16 + 14
        flags = struct.unpack("<H", self.space.read(addr, 2))[0]
        self.space.write(addr, struct.pack("<H", flags ^ (PACKED_DESC_F.AVAIL | PACKED_DESC_F.USED)))


def _packed_no_write_flag(self: PackedDeviceQueue, buf_id: int, written: int, skip: int) -> None:
    _orig_packed_write_used(self, buf_id, written, skip)
    pos = self._used_pos - skip
    addr = self.addrs.desc + (pos % self.size) * 16 + 14
    flags = struct.unpack("<H", self.space.read(addr, 2))[0]
    self.space.write(addr, struct.pack("<H", flags & ~PACKED_DESC_F.WRITE))


_orig_packed_push = PackedDeviceQueue.push


def _packed_lease_wrap_bug(self: PackedDeviceQueue, head: int, written: int) -> None:
    # the lease fast path computes the lap from the wrong position (off by one lap)
    dl = self._dl
    if dl is None or not dl.valid or self.in_order:
        _orig_packed_push(self, head, written)
        return
    buf = self._buffers.pop(head)
    self.published += 1
    pos, size = self._used_pos, self.size
    lap = (pos // size) & 1  # bug: 1 ^ lap is what the checked path writes
    flags = (PACKED_DESC_F.AVAIL | PACKED_DESC_F.USED if lap else 0) | (PACKED_DESC_F.WRITE if written else 0)
    off = pos % size * 16
    struct.pack_into("<IH", dl.view, off + 8, written, head)
    struct.pack_into("<H", dl.view, off + 14, flags)
    self._used_pos = pos + buf.descs
    self._in_flight_descs -= buf.descs


_orig_mmio_read = MmioTransport.read


_orig_ctrl_mac = NetDevice._ctrl_mac


def _mac_table_late(self: NetDevice, cmd: int, data: bytes) -> int:
    # the table is parsed and acked, but only put in force at the next command
    pending = getattr(self, "_pending_table", None)
    saved = (self.filter.uni, self.filter.multi)
    ack = int(_orig_ctrl_mac(self, cmd, data))
    if cmd == 0:  # TABLE_SET
        self._pending_table = (self.filter.uni, self.filter.multi)  # type: ignore[attr-defined]
        self.filter.uni, self.filter.multi = pending if pending else saved
    return ack


_orig_net_reset = NetDevice.reset


def _net_reset_keeps_table(self: NetDevice) -> None:
    uni = list(self.filter.uni)
    _orig_net_reset(self)
    self.filter.uni = uni  # the MAC filter survives a device reset


_orig_rx_header = NetDevice._rx_header


def _data_valid_always(self: NetDevice, frame: Any, buffers: int) -> bytes:
    raw = bytearray(_orig_rx_header(self, frame, buffers))
    raw[0] |= 2  # DATA_VALID without validating anything
    return bytes(raw)


_orig_parse_tx = NetDevice._parse_tx


def _tx_csum_without_needs_csum(self: NetDevice, queue: Any, chain: Any, pair: int) -> Any:
    frame = _orig_parse_tx(self, queue, chain, pair)
    if frame is not None and frame.partial_csum is None:
        # csum_start/csum_offset honoured without NEEDS_CSUM: the "checksum" is written
        data = bytearray(frame.data)
        data[40:42] = b"\xab\xcd"
        frame = type(frame)(bytes(data), None, frame.queue_hint)
    return frame


def _no_version_1(self: VirtioDevice) -> int:
    return int(self.model.device_features() | (self.transport_features.mask() & ~bit(F.VERSION_1)))


def _features_ok_never_refused(self: VirtioDevice) -> str | None:
    return None


# -- driver-side mutations (guest/ and the driver half of virtio_sim/ring) ----------------


def _guest_idx_before_entry(
    self: SplitDriverQueue, out: Any, in_: Any, token: Any, *, use_indirect: bool | None = None
) -> int:
    """add() with the avail idx written before the ring entry (a missing barrier / wrong
    order), on the checked path every driver conformance run uses."""
    real_write = self.memory.write
    held: list[tuple[int, bytes]] = []
    entry_lo = self.gpa.avail + layouts.avail_entry_offset(0)
    entry_hi = self.gpa.avail + layouts.avail_entry_offset(self.size)

    def write(addr: int, data: Any) -> None:
        if entry_lo <= addr < entry_hi:
            held.append((addr, bytes(data)))  # the entry waits ...
            return
        real_write(addr, data)
        if addr == self.gpa.avail + layouts.RING_IDX_OFFSET:
            for a, d in held:  # ... until after the idx
                real_write(a, d)
            held.clear()

    self.memory = mock.Mock(wraps=self.memory, write=write)
    try:
        return int(_orig_add(self, out, in_, token, use_indirect=use_indirect))
    finally:
        self.memory = self.memory._mock_wraps


_orig_add = SplitDriverQueue.add
_orig_packed_add = PackedDriverQueue.add


def _guest_packed_head_first(
    self: PackedDriverQueue, out: Any, in_: Any, token: Any, *, use_indirect: bool | None = None
) -> int:
    """add() exposing a list's head before the descriptors that follow it."""
    real_write = self.memory.write
    head = self._desc_addr(self._avail_pos)
    lo = self._desc_addr(0)
    hi = lo + 16 * self.size
    held: list[tuple[int, bytes]] = []

    def write(addr: int, data: Any) -> None:
        if lo <= addr < hi and not head <= addr < head + 16:
            held.append((addr, bytes(data)))  # the rest of the list waits ...
            return
        real_write(addr, data)
        if addr == head + 14:
            for a, d in held:  # ... until the head is exposed
                real_write(a, d)
            held.clear()

    self.memory = mock.Mock(wraps=self.memory, write=write)
    try:
        return int(_orig_packed_add(self, out, in_, token, use_indirect=use_indirect))
    finally:
        for a, d in held:
            real_write(a, d)
        self.memory = self.memory._mock_wraps


_orig_negotiate = VirtioGuestDevice.negotiate


async def _guest_features_after_ok(self: VirtioGuestDevice, driver_features: int) -> None:
    await _orig_negotiate(self, driver_features)
    if not self.legacy:
        await self.transport.set_features(self.features)  # "just to be sure", after FEATURES_OK


async def _guest_no_features_ok(self: VirtioGuestDevice, driver_features: int) -> None:
    with mock.patch.object(self.policy, "features_ok", False):
        await _orig_negotiate(self, driver_features)


async def _guest_acks_everything(self: VirtioGuestDevice, driver_features: int) -> None:
    # the driver's feature mask and-ed with nothing: every bit it knows, offered or not
    real_get = self.transport.get_features

    async def get_all() -> int:
        return int(await real_get()) | bit(F.IN_ORDER) | bit(F.NOTIFICATION_DATA)

    with mock.patch.object(self.transport, "get_features", get_all):
        await _orig_negotiate(self, driver_features | bit(F.IN_ORDER) | bit(F.NOTIFICATION_DATA))


async def _guest_no_reset(self: VirtioGuestDevice, driver_features: int) -> None:
    async def no_reset() -> None:
        return None

    with mock.patch.object(self.transport, "reset", no_reset):
        await _orig_negotiate(self, driver_features)


async def _guest_reads_wce_early(self: VirtioGuestDevice, driver_features: int) -> None:
    # the cache mode read while the features are still being negotiated
    await self.transport.reset()
    await self.add_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    await self.transport.read_config(layouts.field_offsets(layouts.VirtioBlkConfig)["writeback"], 1)
    await _orig_negotiate(self, driver_features)


_orig_driver_ok = VirtioGuestDevice.driver_ok


async def _guest_clears_bits(self: VirtioGuestDevice) -> None:
    await self._set_status(STATUS.DRIVER_OK | STATUS.FEATURES_OK)  # ACKNOWLEDGE|DRIVER dropped


_orig_send_control = ConsoleDevice._send_control


def _port_added_twice(self: ConsoleDevice, port_id: int, event: int, value: int, extra: bytes = b"") -> None:
    _orig_send_control(self, port_id, event, value, extra)
    if event == 1:  # PORT_ADD: announced again, as if the port were new
        _orig_send_control(self, port_id, event, value, extra)


def _control_little_endian(
    self: ConsoleDevice, port_id: int, event: int, value: int, extra: bytes = b""
) -> None:
    msg = (
        layouts.console_control_codec("little").pack(port_id, event, value) + extra
    )  # the guest's order forgotten
    self.control_out.append(msg)
    if self.hooks is not None:
        self.hooks.kick_from_device(2)


_orig_tx_header = NetDriver.tx_header


def _guest_tx_data_valid(self: NetDriver, csum: tuple[int, int] | None = None) -> bytes:
    raw = bytearray(_orig_tx_header(self, csum))
    raw[0] |= 2  # DATA_VALID on transmit: an rx-only flag
    return bytes(raw)


_orig_send_control_guest = ConsoleDriver.send_control


async def _guest_no_device_ready(self: ConsoleDriver, port: int, event: int, value: int, *a: Any) -> Any:
    if event == 0:  # DEVICE_READY forgotten
        return None
    return await _orig_send_control_guest(self, port, event, value, *a)


async def _guest_rng_ignores_len(self: RngDriver, n: int, canary: int = 0xA5) -> bytes:
    """The whole buffer is taken as random bytes, whatever used.len says."""
    dma = self.dev.dma
    buf = dma.alloc(n)
    try:
        dma.write(buf, bytes([canary]) * n)
        await self.vq.submit([], [(buf.dev_addr, n)])
        self.last_buffer = dma.read(buf, n)
        return self.last_buffer
    finally:
        dma.free(buf)


_orig_split_kick_prepare = SplitDriverQueue.kick_prepare


def _guest_ignores_no_notify(self: SplitDriverQueue) -> bool:
    _orig_split_kick_prepare(self)
    return False  # never kicks: the device's "notify me" ignored


_orig_blk_probe = BlkDriver.probe


async def _guest_blk_ignores_discard_seg(self: BlkDriver) -> None:
    # the driver takes the block layer's default segment limit, not max_discard_seg
    await _orig_blk_probe(self)
    if self.geometry.max_discard_seg:
        self.geometry = dataclasses.replace(self.geometry, max_discard_seg=256)


async def _guest_stop_without_readback(self: MmioTransportDriver, index: int) -> None:
    # QueueReady 0 written and the queue's memory freed at once, without reading it back
    await self._w("QueueSel", index)
    await self._w("QueueReady", 0)


async def _guest_kicks_stopped_queue(self: MmioTransportDriver, index: int) -> None:
    # a removal that still flushes a kick to the queue it has just stopped
    await self._w("QueueSel", index)
    await self._w("QueuePFN", 0)
    await self._w("QueueNotify", index)


async def _guest_zeroout_split_in_two(self: BlkDriver, sector: int, count: int) -> None:
    # a driver that sends every zeroed range as two segments, past max_write_zeroes_seg (1)
    half = count // 2
    codec = layouts.blk_discard_codec("little")
    payload = codec.pack(sector, half, 0) + codec.pack(sector + half, count - half, 0)
    await self._request(BLK_T.WRITE_ZEROES, 0, payload, 0, whole=True)


_orig_modern_setup_queue = PciModernTransport.setup_queue


async def _guest_reenable_keeps_old_rings(
    self: PciModernTransport, index: int, size: int, addrs: SplitRingAddresses
) -> None:
    # after a queue reset the guest writes only the size and enable: it assumes the device
    # kept the ring addresses of the first setup (the reset cleared them)
    done = self.__dict__.setdefault("_mutation_set_up", set())
    if index not in done:
        done.add(index)
        await _orig_modern_setup_queue(self, index, size, addrs)
        return
    await self._w("queue_select", index)
    await self._w("queue_size", size)
    off = await self._r("queue_notify_off")
    self._notify_addr[index] = self.notify_area.address + off * self.notify_multiplier
    await self._w("queue_enable", 1)


# fmt: off
MUTATIONS: tuple[Mutation, ...] = (
    # the four that survived the previous conformance suite
    Mutation(
        "features-after-features-ok",
        "the device takes driver_feature writes after FEATURES_OK",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "features.dev.fixed-at-features-ok",
        _attr(VirtioDevice, "write_driver_features", _late_features),
    ),
    Mutation(
        "driver-ok-without-features-ok",
        "the device goes live on DRIVER_OK although FEATURES_OK was never set",
        "host:virtio-rng",
        "pci-modern",
        "split",
        "status.dev.no-live-without-features-ok",
        _attr(VirtioDevice, "_write_status", _driver_ok_anyway),
    ),
    Mutation(
        "rng-used-len-too-large",
        "virtio-rng reports 16 more bytes than it wrote",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "split.used.len-bytes-written",
        _attr(RngDevice, "process", _rng_len_plus),
    ),
    Mutation(
        "guest-avail-idx-before-entry",
        "the guest driver publishes avail idx before writing the ring entry",
        "driver:linux-6.1,device=rng",
        "mmio-v2",
        "split",
        "split.avail.drv-barrier-before-idx",
        _attr(SplitDriverQueue, "add", _guest_idx_before_entry),
    ),
    # device side
    Mutation(
        "features-ok-accepts-unoffered",
        "FEATURES_OK sticks whatever the driver acked",
        "host:virtio-blk",
        "pci-modern",
        "split",
        "features.dev.reject-via-features-ok",
        _attr(VirtioDevice, "_features_ok_refusal", _features_ok_never_refused),
    ),
    Mutation(
        "no-version-1",
        "the modern device forgets to offer VERSION_1",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "features.dev.offer-version-1",
        _attr(VirtioDevice, "device_features", property(_no_version_1)),
    ),
    Mutation(
        "reset-leaves-status",
        "reset leaves a status bit set",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "reset.dev.status-zero",
        _attr(VirtioDevice, "reset", _reset_keeps_status),
    ),
    Mutation(
        "serve-before-driver-ok",
        "the device serves a queue kicked before DRIVER_OK",
        "host:virtio-blk",
        "pci-modern",
        "split",
        "status.dev.no-use-before-driver-ok",
        _attr(VirtioDevice, "notify", _serve_early),
    ),
    Mutation(
        "needs-reset-without-config-irq",
        "DEVICE_NEEDS_RESET set without a configuration change notification",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "status.dev.needs-reset-config-notify",
        _attr(VirtioDevice, "set_needs_reset", _needs_reset_silent),
    ),
    Mutation(
        "used-idx-before-element",
        "the used idx is published before the used element",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "split.used.dev-len-before-idx",
        _attr(SplitDeviceQueue, "write_used", _idx_first),
    ),
    Mutation(
        "blk-used-len-short",
        "virtio-blk leaves the status byte out of used len",
        "host:virtio-blk",
        "mmio-v2",
        "split",
        "split.used.len-bytes-written",
        _attr(BlkDevice, "_serve", _blk_len_minus),
    ),
    Mutation(
        "rng-writes-nothing",
        "virtio-rng completes requests without writing a byte",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "rng.dev.at-least-one-byte",
        _attr(RngDevice, "process", _rng_nothing),
    ),
    Mutation(
        "never-interrupt",
        "used buffer notifications never sent",
        "host:virtio-rng,event_idx=off",
        "mmio-v2",
        "split",
        "split.usedsupp.dev-flags0-notify",
        _attr(VirtioDevice, "_maybe_interrupt", _never_interrupt),
    ),
    Mutation(
        "event-idx-ignored",
        "with EVENT_IDX the device interrupts whatever used_event says",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "split.usedsupp.dev-event-idx-else-quiet",
        _attr(SplitDeviceQueue, "needs_interrupt", _always_interrupt),
    ),
    Mutation(
        "queue-reset-ignored",
        "a queue reset leaves the queue live",
        "host:virtio-rng",
        "pci-modern",
        "split",
        "vqreset.dev.stop",
        _attr(VirtioDevice, "reset_queue", _reset_queue_keeps_ring),
    ),
    Mutation(
        "queue-reset-reads-done-early",
        "queue_reset reads 0 while the queue reset is still in progress",
        "host:virtio-rng", "pci-modern", "split", "pci.common.dev-queue-reset-busy",
        _all(
            _attr(VirtioDevice, "reset_queue", _reset_queue_later),
            _attr(VirtioDevice, "notify", _notify_finishes_resets),
        ),
    ),
    Mutation(
        "notify-on-empty-ignored",
        "the device offers NOTIFY_ON_EMPTY and interrupts as if it were not negotiated",
        "host:virtio-rng", "pci-legacy", "split", "features.legacy.dev-notify-on-empty",
        _attr(VirtioDevice, "_maybe_interrupt", _interrupt_ignoring_notify_on_empty),
    ),
    Mutation(
        "generation-frozen",
        "the config generation does not move when the config changes",
        "host:virtio-net",
        "mmio-v2",
        "split",
        "mmio.dev.config-generation",
        _attr(VirtioDevice, "config_changed", _generation_frozen),
    ),
    Mutation(
        "queue-ready-survives-reset",
        "a device reset leaves QueueReady set",
        "host:virtio-rng",
        "mmio-v2",
        "split",
        "mmio.dev.reset-clears",
        _attr(QueueState, "reset", _queue_reset_keeps_ready),
    ),
    Mutation(
        "net-offers-broken-deps",
        "virtio-net offers GUEST_TSO4 without GUEST_CSUM",
        "host:virtio-net",
        "mmio-v2",
        "split",
        "features.dev.offer-deps",
        _attr(NetDevice, "__init__", _net_offers_broken_deps),
    ),
    Mutation(
        "packed-used-wrap-wrong",
        "used descriptors of odd laps carry the wrong AVAIL/USED bits",
        "host:virtio-rng",
        "mmio-v2",
        "packed",
        "packed.wrap.dev-used-encoding",
        _attr(PackedDeviceQueue, "write_used", _packed_wrong_wrap),
    ),
    Mutation(
        "packed-no-write-flag",
        "used descriptors never carry WRITE (QEMU 7.2's own bug)",
        "host:virtio-rng",
        "mmio-v2",
        "packed",
        "packed.used.write-flag-and-len",
        _attr(PackedDeviceQueue, "write_used", _packed_no_write_flag),
    ),
    Mutation(
        "packed-lease-path-wrap",
        "a wrap-counter bug on the lease fast path alone",
        "host:virtio-rng,x-memory-path=lease",
        "mmio-v2",
        "packed",
        "packed.wrap.dev-used-encoding",
        _attr(PackedDeviceQueue, "push", _packed_lease_wrap_bug),
    ),
    Mutation(
        "net-num-buffers-extra",
        "virtio-net claims one receive buffer more than it used",
        "host:virtio-net,x-fault=num-buffers-extra", "mmio-v2", "split", "net.rx.dev-num-buffers",
        lambda stack: None,
    ),
    Mutation(
        "net-mac-table-late",
        "virtio-net acks MAC_TABLE_SET before the table is in force",
        "host:virtio-net", "pci-modern", "split", "net.mac.dev-table-before-complete",
        _attr(NetDevice, "_ctrl_mac", _mac_table_late),
    ),
    Mutation(
        "net-mac-table-survives-reset",
        "virtio-net keeps its MAC filter table across a device reset",
        "host:virtio-net", "mmio-v2", "split", "net.mac.dev-empty-on-reset",
        _attr(NetDevice, "reset", _net_reset_keeps_table),
    ),
    Mutation(
        "net-data-valid-unchecked",
        "virtio-net marks every received frame DATA_VALID",
        "host:virtio-net", "pci-modern", "split", "net.rx.dev-data-valid",
        _attr(NetDevice, "_rx_header", _data_valid_always),
    ),
    Mutation(
        "net-tx-csum-fields-honoured",
        "virtio-net writes a checksum although NEEDS_CSUM is clear",
        "host:virtio-net", "mmio-v2", "split", "net.tx.dev-csum-fields-only-with-needs-csum",
        _attr(NetDevice, "_parse_tx", _tx_csum_without_needs_csum),
    ),
    Mutation(
        "console-port-added-twice",
        "virtio-console announces a port twice",
        "host:virtio-serial", "pci-modern", "split", "console.dev.port-add-valid",
        _attr(ConsoleDevice, "_send_control", _port_added_twice),
    ),
    Mutation(
        "console-control-wrong-endian",
        "virtio-console writes control messages little-endian to a big-endian legacy guest",
        "host:virtio-serial,x-guest-order=big", "mmio-v1", "split",
        "console.legacy.control-native-endian-dev",
        _attr(ConsoleDevice, "_send_control", _control_little_endian),
    ),
    # driver side
    Mutation(
        "guest-packed-head-first",
        "the guest exposes a packed list's head before the rest of the list",
        "driver:linux-6.1,device=blk,indirect_desc=off", "pci-modern", "packed", "packed.sg.drv-first-last",
        _attr(PackedDriverQueue, "add", _guest_packed_head_first),
    ),
    Mutation(
        "guest-features-after-features-ok",
        "the guest writes its features again after FEATURES_OK",
        "driver:linux-6.1,device=rng",
        "mmio-v2",
        "split",
        "init.drv.no-features-after-features-ok",
        _attr(VirtioGuestDevice, "negotiate", _guest_features_after_ok),
    ),
    Mutation(
        "guest-no-features-ok",
        "the guest goes to DRIVER_OK without FEATURES_OK on a modern device",
        "driver:linux-6.1,device=rng",
        "pci-modern",
        "split",
        "init.drv.set-features-ok",
        _attr(VirtioGuestDevice, "negotiate", _guest_no_features_ok),
    ),
    Mutation(
        "guest-acks-unoffered",
        "the guest acks ring features the device did not offer",
        "driver:linux-6.1,device=rng",
        "mmio-v2",
        "split",
        "features.drv.only-offered",
        _attr(VirtioGuestDevice, "negotiate", _guest_acks_everything),
    ),
    Mutation(
        "guest-no-reset",
        "the guest starts without resetting the device",
        "driver:linux-6.1,device=rng",
        "mmio-v2",
        "split",
        "init.drv.reset-first",
        _attr(VirtioGuestDevice, "negotiate", _guest_no_reset),
    ),
    Mutation(
        "guest-net-tx-data-valid",
        "the guest net driver sets DATA_VALID on transmit",
        "driver:linux-6.1,device=net", "mmio-v2", "split", "net.tx.drv-no-rx-only-flags",
        _attr(NetDriver, "tx_header", _guest_tx_data_valid),
    ),
    Mutation(
        "guest-console-no-device-ready",
        "the guest console driver never sends DEVICE_READY",
        "driver:linux-6.1,device=console", "pci-modern", "split", "console.drv.device-ready",
        _attr(ConsoleDriver, "send_control", _guest_no_device_ready),
    ),
    Mutation(
        "guest-rng-ignores-len",
        "the guest rng driver takes the whole buffer, not used.len bytes",
        "driver:linux-6.1,device=rng", "mmio-v2", "split", "rng.drv.use-len",
        _attr(RngDriver, "read", _guest_rng_ignores_len),
    ),
    Mutation(
        "guest-clears-status-bits",
        "the guest writes DRIVER_OK without the bits it set before",
        "driver:linux-6.1,device=rng",
        "mmio-v2",
        "split",
        "status.drv.never-clear-bit",
        _attr(VirtioGuestDevice, "driver_ok", _guest_clears_bits),
    ),
    Mutation(
        "guest-blk-ignores-max-discard-seg",
        "the guest blk driver merges discards past the device's max_discard_seg",
        "driver:linux-6.1,device=blk", "mmio-v2", "split", "blk.drv.discard-max-seg",
        _attr(BlkDriver, "probe", _guest_blk_ignores_discard_seg),
    ),
    Mutation(
        "guest-blk-reads-writeback-early",
        "the guest reads the blk writeback byte before FEATURES_OK",
        "driver:linux-6.1,device=blk", "pci-modern", "split", "blk.drv.writeback-after-features-ok",
        _attr(VirtioGuestDevice, "negotiate", _guest_reads_wce_early),
    ),
    Mutation(
        "guest-stop-queue-no-readback",
        "the guest stops a virtio-mmio queue without reading QueueReady back",
        "driver:linux-6.1,device=rng,workload=rng-remove", "mmio-v2", "split", "mmio.drv.stop-queue",
        _attr(MmioTransportDriver, "disable_queue", _guest_stop_without_readback),
    ),
    Mutation(
        "guest-kicks-stopped-queue",
        "the guest kicks a legacy virtio-mmio queue after QueuePFN 0 stopped it",
        "driver:linux-6.1,device=rng,workload=rng-remove", "mmio-v1", "split", "mmio.legacy.pfn-zero-stops",
        _attr(MmioTransportDriver, "disable_queue", _guest_kicks_stopped_queue),
    ),
    Mutation(
        "guest-blk-write-zeroes-two-segments",
        "the guest blk driver sends WRITE_ZEROES with more segments than max_write_zeroes_seg",
        "driver:linux-6.1,device=blk", "mmio-v2", "split", "blk.drv.write-zeroes-max-seg",
        _attr(BlkDriver, "write_zeroes", _guest_zeroout_split_in_two),
    ),
    Mutation(
        "guest-reenable-without-rings",
        "after a queue reset the guest enables the queue without programming its rings again",
        "driver:linux-6.1,device=rng,workload=rng-queue-reset", "pci-modern", "split",
        "vqreset.drv.reenable-full-setup",
        _attr(PciModernTransport, "setup_queue", _guest_reenable_keeps_old_rings),
    ),
)

# fmt: on

#: mutations not killed on their id, and why (the test fails on any unexplained survivor)
SURVIVORS: dict[str, str] = {}


@dataclass
class Outcome:
    mutation: Mutation
    killed: bool  # the run failed (a FAIL/ERROR that is not KNOWN)
    right_id: bool  # the expected id FAILed
    failed: list[str]  # ids that FAILed or ERRORed (not KNOWN)
    crashed: str | None = None  # an exception out of the runner (a harness or runner bug)


@contextmanager
def applied(m: Mutation) -> Iterator[None]:
    with ExitStack() as stack:
        m.patch(stack)
        yield


def run_one(m: Mutation) -> Outcome:
    catalog = load_catalog()

    async def go() -> FindingLog:
        kw: dict[str, Any] = {"transport": m.transport, "ring": m.ring, "policy": Policy.LENIENT}
        if m.target.startswith("driver:"):
            return await run_driver_target(m.target, catalog=catalog, **kw)
        return await run_device_target(m.target, catalog=catalog, thorough=False, **kw)

    try:
        with applied(m):
            log = trio.run(go)
    except Exception as e:  # reported as a crash of this mutation
        return Outcome(m, False, False, [], f"{type(e).__name__}: {e}")
    bad = [
        f.requirement
        for f in log.findings.values()
        if f.known is None
        and (
            f.verdict is Verdict.ERROR
            or (f.verdict is Verdict.FAIL and catalog.level_of(f.requirement) in MANDATORY_LEVELS)
        )
    ]
    right = log.verdict(m.expect) is Verdict.FAIL
    return Outcome(m, bool(bad) or right or bool(log.run_errors), right, sorted(bad))


def run_all(mutations: tuple[Mutation, ...] = MUTATIONS) -> list[Outcome]:
    return [run_one(m) for m in mutations]


def main() -> None:
    outcomes = run_all()
    for o in outcomes:
        tag = "RIGHT-ID" if o.right_id else ("killed" if o.killed else "SURVIVED")
        m = o.mutation
        print(f"{tag:9} {m.name:34} expect {m.expect:45} failed {o.failed[:4]} {o.crashed or ''}")
    right = sum(o.right_id for o in outcomes)
    killed = sum(o.killed for o in outcomes)
    n = len(outcomes)
    print(f"kill rate {killed}/{n} = {killed / n:.0%}; on the right id {right}/{n} = {right / n:.0%}")


if __name__ == "__main__":
    main()
