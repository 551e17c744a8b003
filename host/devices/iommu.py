"""virtio-iommu (virtio 1.4 section 5.13): the device the guest programs its IOMMU through.

Queue 0 carries ATTACH / DETACH / MAP / UNMAP / PROBE requests; queue 1 holds buffers the
driver lends for fault reports. The translation state lives in :class:`host.iommu.Iommu`;
this model parses requests with the construct layouts, applies them and reports status.
A request the device cannot parse (too short to hold the head and tail), or of a type it
does not know, is returned unwritten with used.len 0, as the spec asks.
"""

from __future__ import annotations

import struct
from collections import deque, namedtuple
from typing import Any

from virtio_sim.host.devices.base import DeviceModel, DeviceQueue
from virtio_sim.host.iommu import Fault, Iommu
from virtio_sim.layouts import (
    IOMMU_BODIES,
    IOMMU_HEAD_SIZE,
    IOMMU_TAIL_SIZE,
    IommuFault,
    IommuPropertyHeader,
    IommuResvMem,
    VirtioIommuConfig,
    build_flat,
    fast_codec,
    field_offsets,
)
from virtio_sim.ring.chain import Chain, ChainWriter, read_all
from virtio_sim.spec import (
    IOMMU_ATTACH_F_BYPASS,
    IOMMU_F,
    IOMMU_MAP_F,
    IOMMU_PROBE,
    IOMMU_S,
    IOMMU_T,
    bit,
)

REQUESTQ = 0
EVENTQ = 1
PROBE_SIZE = 512
MAX_REQUEST = 256  # bytes of the device-readable part we ever need to look at
MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)  # x86 MSI doorbells, reported as RESV_MEM MSI (as QEMU)
_CFG = field_offsets(VirtioIommuConfig)
#: every request body decoded through its struct codec (one MAP and one UNMAP per
#: streaming buffer: construct's parser cost more than the mapping itself), into a named
#: tuple with the layout's field names
_BODY_CODECS: dict[str, tuple[struct.Struct, Any]] = {
    name: (fast_codec(decl), namedtuple(f"Iommu{name.title()}Body", [sc.name for sc in decl.subcons]))
    for name, decl in IOMMU_BODIES.items()
}
_TYPE_NAMES = {getattr(IOMMU_T, n): n for n in IOMMU_T.__class__.__annotations__}


class IommuDevice(DeviceModel):
    type_key = "iommu"
    num_queues = 2
    queue_max_size = 256

    def __init__(self, iommu: Iommu) -> None:
        super().__init__()
        self.iommu = iommu
        self.iommu.on_fault = self._report_fault
        self._event_buffers: deque[Chain] = deque()
        self._eventq: DeviceQueue | None = None
        self.faults_reported = 0
        self.faults_dropped = 0

    def device_features(self) -> int:
        return (
            bit(IOMMU_F.INPUT_RANGE)
            | bit(IOMMU_F.DOMAIN_RANGE)
            | bit(IOMMU_F.MAP_UNMAP)
            | bit(IOMMU_F.PROBE)
            | bit(IOMMU_F.MMIO)
            | bit(IOMMU_F.BYPASS_CONFIG)
        )

    def config_space(self) -> bytes:
        i = self.iommu
        return build_flat(
            VirtioIommuConfig,
            {
                "page_size_mask": ~(i.page_size - 1) & ((1 << 64) - 1),
                "input_start": i.input_range[0],
                "input_end": i.input_range[1],
                "domain_start": i.domain_range[0],
                "domain_end": i.domain_range[1],
                "probe_size": PROBE_SIZE,
                "bypass": int(i.bypass),
                "reserved": bytes(3),
            },
        )

    def config_write(self, offset: int, data: bytes) -> None:
        if offset == _CFG["bypass"] and len(data) == 1 and self.has_feature(IOMMU_F.BYPASS_CONFIG):
            self.iommu.bypass = bool(data[0] & 1)
            self.iommu._iotlb.clear()
            return
        super().config_write(offset, data)

    def reset(self) -> None:
        super().reset()
        self.iommu.reset()  # bypass keeps its value across a device reset (spec SHOULD)
        self._event_buffers.clear()
        self._eventq = None

    # -- queues ----------------------------------------------------------------

    def process(self, queue: DeviceQueue) -> int:
        if queue.index == EVENTQ:
            self._eventq = queue
            n = 0
            while (chain := queue.pop()) is not None:
                self._event_buffers.append(chain)
                n += 1
            return n
        done = 0
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, self._serve(queue, chain))
            done += 1
        return done

    def _serve(self, queue: DeviceQueue, chain: Chain) -> int:
        raw = read_all(queue.space, chain.readable, MAX_REQUEST)
        writer = ChainWriter(queue.space, chain.writable)
        if len(raw) < IOMMU_HEAD_SIZE or writer.remaining < IOMMU_TAIL_SIZE:
            self.events.note(f"iommu: unparsable request {chain.head} returned unwritten")
            return 0
        rtype = raw[0]  # head: u8 type, then reserved bytes (ignored)
        name = _TYPE_NAMES.get(rtype)
        if name is None:
            self.events.note(f"iommu: unknown request type {rtype} returned unwritten")
            return 0
        codec, fields = _BODY_CODECS[name]
        if len(raw) - IOMMU_HEAD_SIZE < codec.size:
            self.events.note(f"iommu: {name} request {chain.head} too short, returned unwritten")
            return 0
        body = fields._make(codec.unpack_from(raw, IOMMU_HEAD_SIZE))
        if rtype == IOMMU_T.PROBE:
            return self._probe(writer, body.endpoint)
        status = self._apply(rtype, body)
        return self._tail(writer, status)

    def _apply(self, rtype: int, body: object) -> int:
        i = self.iommu
        b = body  # construct Container
        if rtype == IOMMU_T.ATTACH:
            flags = b.flags  # type: ignore[attr-defined]
            if b.reserved != bytes(4):  # type: ignore[attr-defined]
                return IOMMU_S.INVAL
            if flags & ~IOMMU_ATTACH_F_BYPASS:
                return IOMMU_S.INVAL
            if flags & IOMMU_ATTACH_F_BYPASS and not self.has_feature(IOMMU_F.BYPASS_CONFIG):
                return IOMMU_S.INVAL
            return i.attach(b.domain, b.endpoint, bool(flags & IOMMU_ATTACH_F_BYPASS))  # type: ignore[attr-defined]
        if rtype == IOMMU_T.DETACH:
            return i.detach(b.domain, b.endpoint)  # type: ignore[attr-defined]
        if rtype == IOMMU_T.MAP:
            flags = b.flags  # type: ignore[attr-defined]
            if flags & IOMMU_MAP_F.MMIO and not self.has_feature(IOMMU_F.MMIO):
                return IOMMU_S.INVAL
            return i.map(b.domain, b.virt_start, b.virt_end, b.phys_start, flags)  # type: ignore[attr-defined]
        if rtype == IOMMU_T.UNMAP:
            return i.unmap(b.domain, b.virt_start, b.virt_end)  # type: ignore[attr-defined]
        return IOMMU_S.UNSUPP

    def _tail(self, writer: ChainWriter, status: int) -> int:
        writer.write_tail(bytes([status, 0, 0, 0]))  # tail.reserved zeroed
        return _total(writer)

    def _probe(self, writer: ChainWriter, endpoint: int) -> int:
        if not self.has_feature(IOMMU_F.PROBE):
            self.events.note("iommu: PROBE without VIRTIO_IOMMU_F_PROBE returned unwritten")
            return 0
        total = _total(writer)
        if endpoint not in self.iommu.endpoints:
            return self._tail(writer, IOMMU_S.NOENT)
        if total < PROBE_SIZE + IOMMU_TAIL_SIZE:
            return self._tail(writer, IOMMU_S.INVAL)  # too small: no property written
        resv = IommuResvMem.build(
            {"subtype": IOMMU_PROBE.RESV_MEM_MSI, "reserved": bytes(3),
             "start": MSI_WINDOW[0], "end": MSI_WINDOW[1]}
        )  # fmt: skip
        prop = IommuPropertyHeader.build({"type": IOMMU_PROBE.RESV_MEM, "length": len(resv)}) + resv
        props = prop.ljust(total - IOMMU_TAIL_SIZE, b"\0")  # unused bytes zeroed
        writer.write(props)
        return self._tail(writer, IOMMU_S.OK)

    # -- faults ----------------------------------------------------------------

    def _report_fault(self, fault: Fault) -> None:
        if self._eventq is None or not self._event_buffers:
            self.faults_dropped += 1
            self.events.note(f"iommu: fault at {fault.address:#x} dropped (no event buffer)")
            return
        chain = self._event_buffers.popleft()
        writer = ChainWriter(self._eventq.space, chain.writable)
        record = IommuFault.build(
            {"reason": fault.reason, "reserved": bytes(3), "flags": fault.flags(),
             "endpoint": fault.endpoint, "reserved1": 0, "address": fault.address}
        )  # fmt: skip
        if writer.remaining < len(record):
            self.faults_dropped += 1
            self._eventq.push(chain.head, 0)
        else:
            writer.write(record)
            self._eventq.push(chain.head, writer.written)
            self.faults_reported += 1
        self.notify_used(EVENTQ)


def _total(writer: ChainWriter) -> int:
    return sum(n for _, n in writer.segments)
