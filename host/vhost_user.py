"""A vhost-user back-end: our device models served to a real QEMU (the front-end).

QEMU keeps the transport (virtio-pci or virtio-mmio, the status byte, the guest's feature
negotiation) and hands the rings to us: SET_FEATURES tells what the driver acked,
SET_MEM_TABLE passes guest RAM as memfds, SET_VRING_NUM/BASE/ADDR/KICK/CALL describe each
ring, a kick is an eventfd write, an interrupt is our write to the call eventfd. The device
behind it is exactly the one the simulator's own host serves: a :class:`VirtioDevice` with
the model built from a ``-device`` option (``virtio-rng-device``, ``virtio-blk-device,
drive=...``), its :class:`SplitDeviceQueue` reading the rings through a
:class:`VhostMemoryTable`, so every ring rule the device side checks (and every note and
violation it records) applies to whatever driver the front-end's guest runs: a real Linux.

How the vhost-user states map onto the device core:

* SET_FEATURES resets the device and writes the acked features (vhost's own bits removed),
  then FEATURES_OK; the first ring start sets DRIVER_OK (QEMU starts the back-end at the
  guest's DRIVER_OK). A FEATURES_OK our device would refuse cannot be refused here: the
  guest already has it; it is kept as a note.
* A ring starts when it has an address, a kick fd and (with PROTOCOL_FEATURES) was enabled;
  GET_VRING_BASE stops it and returns where it got to; SET_VRING_BASE resumes from there.
* A ring violation (the device's error policy applies as usual) is also signalled on the
  ring's error eventfd (SET_VRING_ERR), which QEMU reports as "vhost vring error".
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from virtio_sim import layouts
from virtio_sim.dma import DmaError
from virtio_sim.host.devices.base import DeviceModel
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.devices.net import NetDevice
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.host.observer import DriverObserver
from virtio_sim.host.qdev import BuiltDevice
from virtio_sim.host.vhost_memory import VhostMemoryError, VhostMemoryTable
from virtio_sim.host.vhost_user_iotlb import BackendChannel, Iotlb, IotlbMiss, parse_iotlb_msg
from virtio_sim.host.vhost_user_wire import (
    Message,
    VhostUserProtocolError,
    encode_reply,
    expect_size,
    payload_u64,
    payload_vring_state,
    receive_message,
    send_all,
    u64_payload,
    vring_state_payload,
)
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.ring.chain import Chain, RingError
from virtio_sim.ring.packed import PackedDeviceQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitRingAddresses, check_queue_size
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import (
    DESC_F,
    FEATURES,
    PACKED,
    STATUS,
    VU_BACKEND_REQ,
    VU_F,
    VU_IOTLB,
    VU_LIMITS,
    VU_PROTOCOL_F,
    VU_REQ,
    VU_VRING,
    F,
    bit,
    expects_reply,
    status_names,
)

EVENTFD_WORD = 8  # an eventfd is read and written 8 bytes at a time
SEQUENCE_LIMIT = 200  # messages kept in order for the report
RECORD_LIMIT = 1 << 20  # entropy bytes kept for the report (end-to-end checks)
# BACKEND_REQ: the back-end channel (IOTLB misses, config changes); with REPLY_ACK it is
# what QEMU requires before it lets a vhost-user device use an IOMMU
BASE_PROTOCOL_FEATURES = bit(VU_PROTOCOL_F.MQ) | bit(VU_PROTOCOL_F.REPLY_ACK) | bit(VU_PROTOCOL_F.BACKEND_REQ)
VHOST_ONLY_FEATURES = bit(VU_F.PROTOCOL_FEATURES) | bit(VU_F.LOG_ALL)
DRIVER_OK_STATUS = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK


class _Refused(Exception):
    """A request this back-end cannot carry out; answered with a failed REPLY_ACK."""


class _CurrentMemory:
    """The AddressSpace the rings hold: whatever the latest SET_MEM_TABLE mapped.

    QEMU may replace the table while rings run (memory hotplug); guest-physical
    addresses stay valid across that, so the rings never need rebuilding. With
    ACCESS_PLATFORM negotiated, addresses are IOVAs and go through the IOTLB first
    (host/vhost_user_iotlb.py); a missing entry raises IotlbMiss.
    """

    name = "vhost-user"

    def __init__(self) -> None:
        self.table: VhostMemoryTable | None = None
        self.iotlb: Iotlb | None = None  # set while ACCESS_PLATFORM is negotiated

    def _t(self, addr: int, length: int) -> VhostMemoryTable:
        if self.table is None:
            raise DmaError(addr, length, "no SET_MEM_TABLE yet")
        return self.table

    def read(self, addr: int, length: int) -> bytes:
        t = self._t(addr, length)
        if self.iotlb is None:
            return t.read(addr, length)
        return b"".join(t.read_uva(u, n) for u, n in self.iotlb.translate(addr, length, False))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        t = self._t(addr, len(data))
        if self.iotlb is None:
            t.write(addr, data)
            return
        src = memoryview(data).cast("B")
        pos = 0
        for u, n in self.iotlb.translate(addr, len(src), True):
            t.write_uva(u, src[pos : pos + n])
            pos += n

    def check(self, addr: int, length: int, write: bool) -> None:
        t = self._t(addr, length)
        if self.iotlb is None:
            t.check(addr, length, write)
            return
        for u, n in self.iotlb.translate(addr, length, write):
            t.check_uva(u, n)


@dataclass
class RingStats:
    chains: int = 0
    indirect_chains: int = 0
    interrupts_sent: int = 0
    interrupts_suppressed: int = 0
    longest_chain: int = 0  # descriptors in the longest chain (an indirect table's entries)

    def chain(self, length: int, indirect: bool) -> None:
        """Count one chain the device took: ``length`` buffers, through a table or not."""
        self.chains += 1
        self.longest_chain = max(self.longest_chain, length)
        if indirect:
            self.indirect_chains += 1

    def interrupt(self, wanted: bool) -> bool:
        """Count the ring's interrupt decision and pass it on."""
        if wanted:
            self.interrupts_sent += 1
        else:
            self.interrupts_suppressed += 1
        return wanted


class ObservedSplitQueue(SplitDeviceQueue):
    """The device ring plus the evidence a report wants: how many chains came indirect,
    how many interrupts the driver's event index (or NO_INTERRUPT) suppressed."""

    stats: RingStats

    def pop(self) -> Chain | None:
        before, taken = self.last_avail, len(self.in_flight)
        try:
            chain = super().pop()
        except IotlbMiss:
            # Not consumed after all (Linux's vhost_discard_vq_desc): the same head is
            # taken again once the front-end sent the translation.
            if len(self.in_flight) > taken:
                head = self._read_u16(self.addrs.avail + layouts.avail_entry_offset(before % self.size))
                self.in_flight.discard(head)
            self.last_avail = before
            raise
        if chain is not None:
            _, _, flags, _ = self._read_desc(self.addrs.desc, chain.head, chain.head)
            self.stats.chain(len(chain.readable) + len(chain.writable), bool(flags & DESC_F.INDIRECT))
        return chain

    def needs_interrupt(self) -> bool:
        return self.stats.interrupt(super().needs_interrupt())


class ObservedPackedQueue(PackedDeviceQueue):
    """The packed ring with the same evidence and the same miss rollback as the split one."""

    stats: RingStats

    def pop(self) -> Chain | None:
        pos, descs, ids = self._avail_pos, self._in_flight_descs, set(self._buffers)
        try:
            chain = super().pop()
        except IotlbMiss:
            self._avail_pos, self._in_flight_descs = pos, descs  # not consumed after all
            for buf_id in set(self._buffers) - ids:
                del self._buffers[buf_id]
                if buf_id in self._order:
                    self._order.remove(buf_id)
            raise
        if chain is not None:
            length = len(chain.readable) + len(chain.writable)
            # one ring slot, several buffers: a table
            self.stats.chain(length, chain.descriptors == 1 and length > 1)
        return chain

    def needs_interrupt(self) -> bool:
        return self.stats.interrupt(super().needs_interrupt())

    def resume_at(self, base: int) -> None:
        """SET_VRING_BASE of a packed ring: bits 0-14 the next avail slot, bit 15 its wrap
        counter; QEMU 7.2 puts the used slot and wrap the same way in bits 16-31
        (virtio_queue_get_last_avail_idx). Without them, used follows avail."""
        avail, used = base & 0xFFFF, base >> 16 & 0xFFFF
        used = used or avail

        def position(word: int) -> int:
            idx, wrap = word & 0x7FFF, word >> 15 & 1
            return idx % self.size + (0 if wrap == PACKED.wrap_counter_start else self.size)

        self._avail_pos, self._used_pos = position(avail), position(used)

    @property
    def base(self) -> int:
        """GET_VRING_BASE of a packed ring, in the encoding resume_at() reads."""
        avail = self.last_avail | self.avail_wrap << 15
        used = self.used_idx | self.used_wrap << 15
        return avail | used << 16


@dataclass
class Vring:
    """What the front-end told us about one ring."""

    index: int
    num: int = 0
    base: int = 0
    addr: tuple[int, int, int] | None = None  # front-end virtual: desc, avail, used
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    started: bool = False
    ring: ObservedSplitQueue | ObservedPackedQueue | None = None
    watcher: trio.CancelScope | None = None
    kicks: int = 0
    errors_signalled: int = 0
    waiting_iotlb: bool = False  # stopped at an IOTLB miss: served again after an UPDATE
    areas: tuple[tuple[int, int, bool], ...] = ()  # the ring's (address, size, written) areas
    stats: RingStats = field(default_factory=RingStats)


class RecordingEntropy:
    """Wraps an rng model's entropy source and keeps what it served (bounded)."""

    def __init__(self, inner: Any, limit: int = RECORD_LIMIT) -> None:
        self.inner = inner
        self.limit = limit
        self.served = bytearray()
        self.total = 0

    def read(self, n: int) -> bytes:
        data: bytes = self.inner.read(n)
        self.total += len(data)
        room = self.limit - len(self.served)
        if room > 0:
            self.served += data[:room]
        return data


class _ParkingHooks:
    """The model's DeviceHooks: the device core's, with IOTLB misses parked per queue."""

    def __init__(self, backend: VhostUserBackend) -> None:
        self.backend = backend

    def kick_from_device(self, index: int) -> None:
        b = self.backend
        vr = b.vrings[index] if 0 <= index < len(b.vrings) else None
        if vr is not None and vr.started and b.memory.iotlb is not None:
            try:
                if not b._rings_mapped(vr):
                    return
            except DmaError:
                return  # the next kick reports it
        try:
            b.vdev.kick_from_device(index)
        except IotlbMiss as miss:
            if 0 <= index < len(b.vrings):
                b._ask(b.vrings[index], miss)

    def config_changed(self) -> None:
        self.backend.vdev.config_changed()


def _bounded(notes: list[str], limit: int = SEQUENCE_LIMIT) -> list[str]:
    """The first ``limit`` notes and how many more there were (a driver repeating one
    quirk per frame, e.g. DPDK's num_buffers 1 on transmit, makes thousands)."""
    if len(notes) <= limit:
        return notes
    return [*notes[:limit], f"... and {len(notes) - limit} more notes"]


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class VhostUserBackend:
    """One device served to one front-end connection."""

    def __init__(self, built: BuiltDevice) -> None:
        self.built = built
        self.model: DeviceModel = built.model
        self.memory = _CurrentMemory()
        self.vdev = VirtioDevice(
            built.model,
            lambda features: self.memory,
            transport_features=built.transport_features,
            policy=built.policy,
            strict_rings=built.strict_rings,
            validate_access_platform=built.validate_access_platform,
        )
        self.vdev.sink = self
        # A device that serves a queue on its own (net: a frame arrives from the backend
        # while the transmit queue is served) may hit an IOTLB miss there: that queue is
        # parked like a kicked one, instead of the miss unwinding through the other queue.
        built.model.hooks = _ParkingHooks(self)
        self.vrings = [Vring(i) for i in range(self.model.num_queues)]
        self.protocol_features = 0
        self.acked_features: int | None = None
        self._raw_acked = 0  # SET_FEATURES as sent, vhost's own bits included
        self.messages: Counter[str] = Counter()
        self.sequence: list[str] = []
        self.notes: list[str] = []
        self.entropy: RecordingEntropy | None = None
        if isinstance(self.model, RngDevice):
            self.entropy = RecordingEntropy(self.model.source)
            self.model.source = self.entropy  # type: ignore[assignment]
        self.ended = ""
        self.config_served = False  # a GET_CONFIG was answered (the guest may hold its values)
        self.channel: BackendChannel | None = None  # SET_BACKEND_REQ_FD
        self._misses_sent: set[int] = set()  # IOVAs asked for and not yet updated
        self._misses_asked = 0
        self._retry = False  # an IOTLB update arrived: serve waiting rings after the reply
        self._nursery: trio.Nursery | None = None
        #: a driver watch (host/observer.py): what a vhost-user back-end can see of the
        #: front-end's driver (features, ring setup, kicks, the rings in shared memory)
        self.observer: DriverObserver | None = None

    def attach_observer(self, observer: DriverObserver) -> None:
        self.observer = observer
        self.vdev.observer = observer  # feature writes and ring violations come from the core

    # -- helpers ------------------------------------------------------------------------

    def note(self, message: str) -> None:
        self.notes.append(message)

    @property
    def offered_protocol_features(self) -> int:
        """CONFIG only for a device that has a config space the front-end takes from the
        back-end: QEMU's virtio-net keeps its own ("vhost-user backend supports
        VHOST_USER_PROTOCOL_F_CONFIG but QEMU does not", QEMU 7.2 net/vhost-user)."""
        has_config = bool(self.vdev.config_bytes("little")) and not isinstance(self.model, NetDevice)
        return BASE_PROTOCOL_FEATURES | (bit(VU_PROTOCOL_F.CONFIG) if has_config else 0)

    @property
    def queue_num(self) -> int:
        """GET_QUEUE_NUM: queues, or for net the queue pairs (the control queue stays with
        the front-end: QEMU's virtio-net and DPDK's virtio-user both serve it themselves)."""
        if isinstance(self.model, NetDevice):
            return self.model.max_pairs
        return self.model.num_queues

    @property
    def offered_features(self) -> int:
        return self.vdev.device_features | bit(VU_F.PROTOCOL_FEATURES)

    def _has_protocol(self) -> bool:
        return bool(self._raw_acked >> VU_F.PROTOCOL_FEATURES & 1)

    def _vring(self, index: int, what: str) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise _Refused(f"{what}: vring {index} does not exist ({len(self.vrings)} queues)")
        return self.vrings[index]

    # -- InterruptSink -----------------------------------------------------------------

    def queue_interrupt(self, index: int) -> None:
        vr = self.vrings[index] if 0 <= index < len(self.vrings) else None
        if vr is None or vr.call_fd is None:
            return
        try:
            os.write(vr.call_fd, (1).to_bytes(EVENTFD_WORD, "little"))
        except OSError as e:
            if e.errno != errno.EAGAIN:
                self.note(f"vring {index}: call eventfd write failed: {e.strerror}")

    def config_interrupt(self) -> None:
        # A config change (or DEVICE_NEEDS_RESET) goes to the front-end as
        # CONFIG_CHANGE_MSG on the back-end channel; QEMU re-reads the config and
        # interrupts the guest (vhost_user_blk_handle_config_change).
        if self.channel is None:
            self.note("config interrupt wanted, but the front-end gave no back-end channel")
            return
        self._backend_request(VU_BACKEND_REQ.CONFIG_CHANGE_MSG, b"")

    # -- serving ------------------------------------------------------------------------

    async def serve(self, sock: trio.socket.SocketType) -> str:
        """Serve the connection until the front-end closes it; returns how it ended."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self.ended = await self._message_loop(sock)
            finally:
                self._stop_all()
                nursery.cancel_scope.cancel()
        if self.memory.table is not None:
            self.memory.table.close()
            self.memory.table = None
        if self.channel is not None:
            self.channel.close()
        for vr in self.vrings:
            for fd in (vr.call_fd, vr.err_fd):
                _close_fd(fd)
            vr.call_fd = vr.err_fd = None
        return self.ended

    async def _message_loop(self, sock: trio.socket.SocketType) -> str:
        while True:
            try:
                msg = await receive_message(sock)
            except VhostUserProtocolError as e:
                self.note(f"protocol error: {e}")
                return f"protocol error: {e}"
            except OSError as e:
                return f"connection lost: {e.strerror}"
            if msg is None:
                return "front-end closed the connection"
            self.messages[msg.name] += 1
            if len(self.sequence) < SEQUENCE_LIMIT:
                self.sequence.append(msg.name)
            try:
                reply, ok = self._dispatch(msg), True
            except (_Refused, VhostMemoryError, RingError) as e:
                self.note(f"{msg.name}: {e}")
                if expects_reply(msg.request):
                    # The protocol has no failure reply for a request that returns data
                    # (QEMU waits for exactly that payload): hang up, with the reason.
                    msg.close_fds()
                    return f"refused {msg.name}: {e}"
                reply, ok = None, False
            except VhostUserProtocolError as e:
                self.note(f"protocol error: {e}")
                msg.close_fds()
                return f"protocol error: {e}"
            finally:
                msg.close_fds()  # handlers take the fds they keep out of the list
            try:
                if reply is not None:
                    await send_all(sock, encode_reply(msg.request, reply))
                elif msg.need_reply and self.protocol_features >> VU_PROTOCOL_F.REPLY_ACK & 1:
                    await send_all(sock, encode_reply(msg.request, u64_payload(0 if ok else 1)))
            except OSError as e:
                return f"connection lost: {e.strerror}"
            if self._retry:
                self._retry = False
                self._serve_waiting()  # after the ack: QEMU waits for it before anything else

    def _dispatch(self, msg: Message) -> bytes | None:
        """Handle one message; returns the reply payload for requests that have one."""
        r = msg.request
        if r == VU_REQ.GET_FEATURES:
            if self.observer is not None:
                offered = self.vdev.device_features
                self.observer.on_features_read(0, offered & 0xFFFFFFFF)
                self.observer.on_features_read(1, offered >> 32)
            return u64_payload(self.offered_features)
        if r == VU_REQ.SET_FEATURES:
            self._set_features(payload_u64(msg))
        elif r == VU_REQ.GET_PROTOCOL_FEATURES:
            return u64_payload(self.offered_protocol_features)
        elif r == VU_REQ.SET_PROTOCOL_FEATURES:
            value = payload_u64(msg)
            if value & ~self.offered_protocol_features:
                self.note(f"front-end acked protocol features we did not offer: {value:#x}")
            self.protocol_features = value & self.offered_protocol_features
        elif r == VU_REQ.GET_QUEUE_NUM:
            return u64_payload(self.queue_num)
        elif r in (VU_REQ.SET_OWNER, VU_REQ.RESET_OWNER, VU_REQ.RESET_DEVICE):
            if r != VU_REQ.SET_OWNER:
                self._stop_all()
                self.vdev.reset()
                self.acked_features = None
        elif r == VU_REQ.SET_MEM_TABLE:
            self._set_mem_table(msg)
        elif r == VU_REQ.SET_VRING_NUM:
            index, num = payload_vring_state(msg)
            vr = self._vring(index, msg.name)
            try:
                check_queue_size(num)
            except ValueError as e:
                raise _Refused(f"vring {index}: {e}") from None
            vr.num = num
            self._follow_ring_size(num)
        elif r == VU_REQ.SET_VRING_ADDR:
            self._set_vring_addr(msg)
        elif r == VU_REQ.SET_VRING_BASE:
            index, num = payload_vring_state(msg)
            self._vring(index, msg.name).base = num
        elif r == VU_REQ.GET_VRING_BASE:
            index, _ = payload_vring_state(msg)
            vr = self._vring(index, msg.name)
            base = self._stop(vr)
            return vring_state_payload(index, base)
        elif r in (VU_REQ.SET_VRING_KICK, VU_REQ.SET_VRING_CALL, VU_REQ.SET_VRING_ERR):
            self._set_vring_fd(msg)
        elif r == VU_REQ.SET_VRING_ENABLE:
            index, num = payload_vring_state(msg)
            vr = self._vring(index, msg.name)
            vr.enabled = bool(num)
            if vr.enabled:
                self._maybe_start(vr)
        elif r == VU_REQ.GET_CONFIG:
            return self._get_config(msg)
        elif r == VU_REQ.SET_CONFIG:
            self._set_config(msg)
        elif r == VU_REQ.GET_MAX_MEM_SLOTS:
            return u64_payload(VU_LIMITS.max_mem_regions)
        elif r == VU_REQ.SET_BACKEND_REQ_FD:
            if len(msg.fds) != 1:
                raise VhostUserProtocolError(f"{msg.name}: expected one fd, got {len(msg.fds)}")
            if self.channel is not None:
                self.channel.close()
            self.channel = BackendChannel(msg.fds.pop())
        elif r == VU_REQ.IOTLB_MSG:
            self._iotlb_msg(msg)
        else:
            if expects_reply(r):
                # We never offered the feature that makes QEMU ask this; no reply we
                # could give would be right.
                raise VhostUserProtocolError(f"{msg.name} is not supported by this back-end")
            raise _Refused(f"unsupported request {msg.name}")
        return None

    # -- features and memory -------------------------------------------------------------

    def _set_features(self, value: int) -> None:
        if value & bit(VU_F.LOG_ALL):
            self.note("front-end asked for dirty logging (LOG_ALL), which is not supported")
        virtio = value & ~VHOST_ONLY_FEATURES
        if virtio == self.acked_features and any(vr.started for vr in self.vrings):
            self._raw_acked = value
            return  # the same features again (e.g. logging toggled): rings keep running
        self._stop_all()
        self._raw_acked = value
        self.acked_features = virtio
        self.vdev.reset()
        self.vdev.write_driver_features(0, virtio & 0xFFFFFFFF)
        self.vdev.write_driver_features(1, virtio >> 32)
        self.vdev.write_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK)
        # ACCESS_PLATFORM: QEMU hands over IOVAs from now on (vhost_dev_has_iommu)
        self.memory.iotlb = Iotlb() if virtio >> F.ACCESS_PLATFORM & 1 else None
        self._misses_sent.clear()

    def _set_mem_table(self, msg: Message) -> None:
        hdr = layouts.VHOST_USER_MEMORY_HEADER_SIZE
        if len(msg.payload) < hdr:
            raise VhostUserProtocolError(f"SET_MEM_TABLE payload of {len(msg.payload)} bytes")
        nregions, _ = layouts.vhost_user_memory_header_codec.unpack(msg.payload[:hdr])
        if not 1 <= nregions <= VU_LIMITS.max_mem_regions:
            raise _Refused(f"SET_MEM_TABLE with {nregions} regions (1..{VU_LIMITS.max_mem_regions})")
        expect_size(msg, hdr + nregions * layouts.VHOST_USER_REGION_SIZE)
        records = [
            layouts.vhost_user_region_codec.unpack_from(msg.payload, hdr + i * layouts.VHOST_USER_REGION_SIZE)
            for i in range(nregions)
        ]
        fds, msg.fds = msg.fds, []
        table = VhostMemoryTable.from_message(records, fds)
        old, self.memory.table = self.memory.table, table
        if old is not None:
            old.close()

    # -- rings -------------------------------------------------------------------------

    def _set_vring_addr(self, msg: Message) -> None:
        expect_size(msg, layouts.VhostUserVringAddr.sizeof())
        index, _flags, desc, used, avail, _log = layouts.vhost_user_vring_addr_codec.unpack(msg.payload)
        vr = self._vring(index, msg.name)
        vr.addr = (desc, avail, used)
        self._maybe_start(vr)

    def _set_vring_fd(self, msg: Message) -> None:
        value = payload_u64(msg)
        index = value & VU_VRING.index_mask
        vr = self._vring(index, msg.name)
        nofd = bool(value & VU_VRING.nofd)
        if nofd and msg.fds:
            raise VhostUserProtocolError(f"{msg.name}: NOFD flag set but an fd was attached")
        if not nofd and len(msg.fds) != 1:
            raise VhostUserProtocolError(f"{msg.name}: expected one fd, got {len(msg.fds)}")
        fd = None if nofd else msg.fds.pop()
        if msg.request == VU_REQ.SET_VRING_KICK:
            self._stop_watching(vr)
            vr.kick_fd = fd
            if fd is None:
                self.note(f"vring {index}: no kick fd (polling mode is not supported)")
            if not self._has_protocol():
                vr.enabled = True  # without PROTOCOL_FEATURES a ring starts enabled
            self._maybe_start(vr)
        elif msg.request == VU_REQ.SET_VRING_CALL:
            _close_fd(vr.call_fd)
            vr.call_fd = fd  # always the latest: QEMU swaps it when it masks vectors
        else:
            _close_fd(vr.err_fd)
            vr.err_fd = fd

    def _maybe_start(self, vr: Vring) -> None:
        if vr.started or not vr.enabled or vr.kick_fd is None or vr.addr is None or not vr.num:
            return
        table = self.memory.table
        if table is None or self.acked_features is None:
            return
        n = vr.num
        packed = bool(self.acked_features >> F.RING_PACKED & 1)
        # packed: the descriptor ring, the driver and the device event suppression areas
        sizes = (
            (layouts.packed_ring_size(n), layouts.EVENT_SUPPRESS_SIZE, layouts.EVENT_SUPPRESS_SIZE)
            if packed
            else (layouts.desc_table_size(n), layouts.avail_ring_size(n), layouts.used_ring_size(n))
        )
        if self.memory.iotlb is None:
            desc = table.uva_to_gpa(vr.addr[0], sizes[0])
            avail = table.uva_to_gpa(vr.addr[1], sizes[1])
            used = table.uva_to_gpa(vr.addr[2], sizes[2])
        else:
            desc, avail, used = vr.addr  # IOVAs: the rings must be translatable first
            vr.areas = ((desc, sizes[0], packed), (avail, sizes[1], False), (used, sizes[2], True))
            try:
                if not self._rings_mapped(vr):
                    return
            except DmaError as e:
                self._signal_error(vr)
                raise _Refused(f"vring {vr.index}: {e}") from None
        q = self.vdev.queue(vr.index)
        if q is None:
            raise _Refused(f"vring {vr.index} does not exist for the acked features")
        feats = self.acked_features
        ring: ObservedSplitQueue | ObservedPackedQueue
        try:
            if packed:
                ring = ObservedPackedQueue(
                    self.memory,
                    n,
                    SplitRingAddresses(desc, avail, used),
                    RingFeatures(
                        event_idx=bool(feats >> F.EVENT_IDX & 1),
                        indirect=bool(feats >> F.INDIRECT_DESC & 1),
                        strict=self.vdev.strict_rings,
                    ),
                )
                ring.resume_at(vr.base)
            else:
                ring = ObservedSplitQueue(
                    self.memory,
                    n,
                    SplitRingAddresses(desc, avail, used),
                    RingFeatures(
                        event_idx=bool(feats >> F.EVENT_IDX & 1),
                        indirect=bool(feats >> F.INDIRECT_DESC & 1),
                        strict=self.vdev.strict_rings,
                    ),
                    order=self.vdev.byte_order(self.vdev.guest_order),
                )
                ring.resume(vr.base)
        except (RingError, ValueError) as e:
            self._signal_error(vr)
            raise _Refused(f"vring {vr.index}: {e}") from None
        ring.stats = vr.stats
        q.size, q.desc, q.driver, q.device = n, desc, avail, used
        q.ring, q.ready = ring, True
        vr.ring, vr.started = ring, True
        if self.observer is not None:
            self.observer.on_queue_write(vr.index, "start", vr.base, False)  # resumes at base
        if not self.vdev.status & STATUS.DRIVER_OK:
            self.vdev.write_status(DRIVER_OK_STATUS)
            if not self.vdev.status & STATUS.FEATURES_OK:
                acked = ", ".join(FEATURES.names(self.acked_features, self.model.type_key)) or "-"
                self.note(
                    f"the guest runs with features our device refuses ({acked}):"
                    f" {status_names(self.vdev.status)}"
                )
        if self._nursery is not None and vr.kick_fd is not None:
            self._nursery.start_soon(self._watch_kick, vr, vr.kick_fd)
        self._serve(vr)  # buffers made available before the ring started

    async def _watch_kick(self, vr: Vring, fd: int) -> None:
        with trio.CancelScope() as scope:
            vr.watcher = scope
            while True:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except (trio.ClosedResourceError, OSError):
                    return
                try:
                    os.read(fd, EVENTFD_WORD)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self.note(f"vring {vr.index}: kick eventfd read failed: {e.strerror}")
                    return
                vr.kicks += 1
                if self.observer is not None and vr.started:
                    try:
                        self.observer.on_notify(vr.index, vr.index, 0)  # an eventfd kick: no register
                    except IotlbMiss:
                        pass  # the watch reads rings by IOVA too; the device asks for the entry
                self._serve(vr)

    def _rings_mapped(self, vr: Vring) -> bool:
        """With an IOTLB: are the ring's own areas translatable (Linux's vhost does the same
        prefetch, vq_meta_prefetch)? A guest's IOTLB flush drops them with everything else,
        and a used-ring write must never miss half-way through a request. Asks for the
        first missing one and parks the ring otherwise."""
        try:
            for addr, size, written in vr.areas:
                self.memory.check(addr, size, written)
        except IotlbMiss as miss:
            self._ask(vr, miss)
            return False
        return True

    def _serve(self, vr: Vring) -> None:
        if not vr.started or not vr.enabled:
            return
        if self.memory.iotlb is not None:
            try:
                if not self._rings_mapped(vr):
                    return
            except DmaError as e:
                self.note(f"vring {vr.index}: {e}")
                self._signal_error(vr)
                return
        before = len(self.vdev.violations)
        try:
            self.vdev.notify(vr.index)
        except IotlbMiss as miss:
            self._ask(vr, miss)
        if len(self.vdev.violations) > before:
            self._signal_error(vr)

    # -- IOTLB -----------------------------------------------------------------------------

    def _ask(self, vr: Vring, miss: IotlbMiss) -> None:
        """Park ``vr`` until the front-end sends the translation ``miss`` wants."""
        vr.waiting_iotlb = True
        if miss.iova in self._misses_sent:
            return
        if self.channel is None:
            self.note(f"vring {vr.index}: {miss}, but the front-end gave no back-end channel")
            return
        self._misses_sent.add(miss.iova)
        self._misses_asked += 1
        if not self.channel.iotlb_miss(miss.iova, miss.write):
            self.note(f"vring {vr.index}: IOTLB miss not sent: {self.channel.failed}")

    def _iotlb_msg(self, msg: Message) -> None:
        expect_size(msg, layouts.VhostIotlbMsg.sizeof())
        iova, size, uaddr, perm, kind = parse_iotlb_msg(msg.payload)
        iotlb = self.memory.iotlb
        if iotlb is None:
            raise _Refused("IOTLB message without ACCESS_PLATFORM negotiated")
        if kind == VU_IOTLB.UPDATE:
            try:
                iotlb.update(iova, size, uaddr, perm)
            except ValueError as e:
                raise _Refused(str(e)) from None
            self._misses_sent = {a for a in self._misses_sent if not iova <= a < iova + size}
            self._retry = True
        elif kind == VU_IOTLB.INVALIDATE:
            iotlb.invalidate(iova, size)
        else:
            raise _Refused(f"IOTLB message type {kind} from the front-end")

    def _serve_waiting(self) -> None:
        for vr in self.vrings:
            if vr.waiting_iotlb:
                vr.waiting_iotlb = False
                try:
                    if vr.started:
                        self._serve(vr)
                    else:
                        self._maybe_start(vr)
                except (_Refused, VhostMemoryError, RingError) as e:
                    self.note(f"vring {vr.index}: {e}")

    def _signal_error(self, vr: Vring) -> None:
        vr.errors_signalled += 1
        if vr.err_fd is not None:
            with contextlib.suppress(OSError):
                os.write(vr.err_fd, (1).to_bytes(EVENTFD_WORD, "little"))

    def _stop_watching(self, vr: Vring) -> None:
        if vr.watcher is not None:
            vr.watcher.cancel()
            vr.watcher = None
        if vr.kick_fd is not None:
            trio.lowlevel.notify_closing(vr.kick_fd)
            _close_fd(vr.kick_fd)
            vr.kick_fd = None

    def _stop(self, vr: Vring) -> int:
        """GET_VRING_BASE: stop the ring; returns the next avail index it would serve."""
        ring = vr.ring
        if ring is None:
            base = vr.base
        elif isinstance(ring, ObservedPackedQueue):
            base = ring.base
        else:
            base = ring.last_avail
        self._stop_watching(vr)
        vr.started = False
        vr.ring = None
        vr.base = base
        q = self.vdev.queue(vr.index)
        if q is not None:
            q.ready = False
            q.ring = None
        return base

    def _stop_all(self) -> None:
        for vr in self.vrings:
            if vr.started or vr.kick_fd is not None:
                self._stop(vr)

    def _backend_request(self, request: int, payload: bytes) -> None:
        if self.channel is None:
            return
        if not self.channel.send(request, payload):
            self.note(f"back-end channel: {self.channel.failed}")

    def _follow_ring_size(self, num: int) -> None:
        """Config values that depend on the queue size (blk seg_max = size - 2, as QEMU's
        virtio-blk computes it) follow the ring the front-end really set up. QEMU reads
        the config at connect time, before any SET_VRING_NUM, so a value the guest may
        already hold is reported (and announced on the back-end channel, if there is one)."""
        if num == self.model.queue_max_size or (num > self.model.queue_max_size and self.config_served):
            return  # a larger ring never makes an announced bound unsafe
        before = self.vdev.config_bytes("little")
        self.model.queue_max_size = num
        if self.vdev.config_bytes("little") != before and self.config_served:
            self.note(
                f"SET_VRING_NUM {num}: the config the front-end read assumed another queue size;"
                " queue-size-dependent values (seg_max) changed after the guest may have read them"
            )
            self._backend_request(VU_BACKEND_REQ.CONFIG_CHANGE_MSG, b"")

    # -- config --------------------------------------------------------------------------

    def _config_request(self, msg: Message) -> tuple[int, int, bytes]:
        hdr = layouts.VHOST_USER_CONFIG_HEADER_SIZE
        if len(msg.payload) < hdr:
            raise VhostUserProtocolError(f"{msg.name} payload of {len(msg.payload)} bytes")
        offset, size, _flags = layouts.vhost_user_config_header_codec.unpack(msg.payload[:hdr])
        if size > VU_LIMITS.max_config_size or offset > VU_LIMITS.max_config_size:
            raise VhostUserProtocolError(f"{msg.name}: config range {offset}+{size} is too large")
        expect_size(msg, hdr + size)
        return offset, size, msg.payload[hdr:]

    def _get_config(self, msg: Message) -> bytes:
        offset, size, _ = self._config_request(msg)
        self.config_served = True
        space = self.vdev.config_bytes("little")
        data = space[offset : offset + size]
        if len(data) < size:
            self.note(f"GET_CONFIG {offset}+{size} reaches past our {len(space)}-byte config (zeros)")
            data = data.ljust(size, b"\0")
        return bytes(
            layouts.vhost_user_config(size).build(
                {"offset": offset, "size": size, "flags": 0, "payload": data}
            )
        )

    def _set_config(self, msg: Message) -> None:
        offset, size, data = self._config_request(msg)
        if size not in (1, 2, 4, 8):
            raise _Refused(f"SET_CONFIG of {size} bytes at {offset} (fields are 1, 2, 4 or 8 bytes)")
        self.vdev.write_config(offset, size, int.from_bytes(data, "little"), "little")

    # -- report ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        key = self.model.type_key
        acked = self.acked_features or 0
        out: dict[str, Any] = {
            "device": self.built.spec.driver,
            "ended": self.ended,
            "messages": dict(self.messages),
            "sequence": self.sequence,
            "protocol_features": f"{self.protocol_features:#x}",
            "features_offered": f"{self.offered_features:#x}",
            "features_acked": f"{acked:#x}",
            "negotiated": FEATURES.names(acked, key),
            "status": status_names(self.vdev.status),
            "queues": [
                {
                    "index": vr.index,
                    "size": vr.num,
                    "kicks": vr.kicks,
                    "chains": vr.stats.chains,
                    "indirect_chains": vr.stats.indirect_chains,
                    "interrupts_sent": vr.stats.interrupts_sent,
                    "interrupts_suppressed": vr.stats.interrupts_suppressed,
                    "longest_chain": vr.stats.longest_chain,
                    "errors_signalled": vr.errors_signalled,
                }
                for vr in self.vrings
            ],
            "violations": [v.__dict__ for v in self.vdev.violations],
            "notes": _bounded(self.notes + self.vdev.notes + self.model.events.messages),
        }
        if self.memory.iotlb is not None:
            t = self.memory.iotlb
            out["iotlb"] = {
                "misses_sent": self._misses_asked,
                "updates": t.updates,
                "invalidates": t.invalidates,
                "entries": len(t),
            }
        if self.entropy is not None:
            out["rng"] = {"bytes_served": self.entropy.total, "served_hex": self.entropy.served.hex()}
        if isinstance(self.model, NetDevice):
            out["net"] = dict(self.model.stats.__dict__)
        if isinstance(self.model, BlkDevice):
            out["blk"] = {"requests": self.model.requests, "capacity_sectors": self.model.capacity}
        return out


async def serve_socket(
    path: str,
    built: BuiltDevice,
    *,
    connect_timeout: float | None = None,
    on_backend: Callable[[VhostUserBackend], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> VhostUserBackend | None:
    """Listen on ``path``, serve the first front-end that connects, return the back-end
    (None when nobody connected within ``connect_timeout`` seconds)."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await listener.bind(path)
        listener.listen(1)
        task_status.started()
        conn: trio.socket.SocketType | None = None
        with trio.move_on_after(connect_timeout if connect_timeout is not None else math.inf):
            conn, _ = await listener.accept()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    if conn is None:
        return None
    backend = VhostUserBackend(built)
    if on_backend is not None:
        on_backend(backend)  # e.g. attach a driver watch before the first message
    with conn:
        await backend.serve(conn)
    return backend
