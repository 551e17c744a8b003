"""virtio-iommu checkers: request parsing and status codes for ATTACH/DETACH/MAP/UNMAP/
PROBE, the config fields, and translation as an endpoint behind the IOMMU sees it.

The endpoint is a virtio-rng device that honours ACCESS_PLATFORM (what the DUT puts
behind the IOMMU); its buffers are given by IOVA, so whether the entropy lands at the
mapped guest-physical page, or faults, shows what the IOMMU really did.
"""

from __future__ import annotations

import struct

from virtio_sim.guest.link import HostLinkError
from virtio_sim.layouts import VirtioIommuConfig, field_offsets
from virtio_sim.orchestration.conformance.device_checks import (
    Ctx,
    Request,
    ack,
    bring_up,
    buffer,
    checker,
    kick,
    negotiate,
    submit,
    wait_used,
)
from virtio_sim.orchestration.conformance.dut import OpenedTransport, open_transport
from virtio_sim.orchestration.conformance.rawring import Arena, Segment
from virtio_sim.spec import (
    IOMMU_ATTACH_F_BYPASS,
    IOMMU_F,
    IOMMU_MAP_F,
    IOMMU_PROBE,
    IOMMU_S,
    IOMMU_T,
    STATUS,
    F,
    bit,
)

_CFG = field_offsets(VirtioIommuConfig)
REQUESTQ, EVENTQ = 0, 1
RW = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE
PAGE = 4096
IOVA = 0x4000_0000  # an IOVA that is not guest RAM, so only a translation reaches RAM
PROBE_HDR = 4
RESV_MEM_BODY = 20

IOMMU_IDS = (
    "iommu.vq.layout",
    "iommu.cfg.dev-page-size-mask",
    "iommu.cfg.dev-bypass-0-1",
    "iommu.init.unattached-after-reset",
    "iommu.req.dev-unparsable",
    "iommu.req.input-range-default",
    "iommu.req.domain-range-default",
    "iommu.req.dev-ok",
    "iommu.req.dev-unknown-type",
    "iommu.req.dev-ignore-head-reserved",
    "iommu.req.dev-tail-reserved-zero",
    "iommu.attach.dev-reserved-inval",
    "iommu.attach.dev-unknown-flags-inval",
    "iommu.attach.dev-no-endpoint",
    "iommu.attach.dev-shared-domain",
    "iommu.attach.dev-bypass-mismatch",
    "iommu.attach.dev-must-attach",
    "iommu.attach.dev-move-endpoint",
    "iommu.attach.dev-move-endpoint-unsupp",
    "iommu.detach.dev-ignore-reserved",
    "iommu.detach.dev-no-endpoint",
    "iommu.detach.domain-freed",
    "iommu.map.dev-alignment",
    "iommu.map.dev-overlap",
    "iommu.map.dev-unknown-flags",
    "iommu.map.dev-no-domain",
    "iommu.map.dev-bypass-domain",
    "iommu.unmap.dev-no-domain",
    "iommu.unmap.dev-bypass-domain",
    "iommu.unmap.dev-no-split",
    "iommu.unmap.dev-partial-ok",
    "iommu.probe.dev-ignore-reserved",
    "iommu.probe.dev-no-endpoint",
    "iommu.probe.dev-not-offered",
    "iommu.probe.dev-property-reserved",
    "iommu.probe.dev-length-field",
    "iommu.probe.dev-packing",
    "iommu.probe.dev-small-buffer",
    "iommu.probe.dev-zero-fill",
    "iommu.resv.dev-reserved",
    "iommu.resv.dev-one-msi",
    "iommu.resv.dev-no-overlap",
    "iommu.resv.dev-reject-overlapping-map",
    "iommu.dev.offer-map-unmap",
    "iommu.dev.no-legacy-bypass",
    "iommu.dev.not-both-bypass",
    "iommu.cfg.dev-bypass-reset",
)


async def iommu_req(
    ctx: Ctx, rtype: int, body: bytes, *, head_reserved: bytes = bytes(3), writable: int = 4
) -> tuple[int | None, int, bytes]:
    """One request: (tail status or None if not completed / len 0, used len, writable bytes)."""
    ro = buffer(ctx, bytes([rtype]) + head_reserved + body, write=False)
    wo = buffer(ctx, writable, write=True, fill=0xEE)
    req = submit(ctx, Request(REQUESTQ, [ro, wo], None))
    try:
        await kick(ctx, REQUESTQ)
        used = await wait_used(ctx, REQUESTQ, 1)
    except HostLinkError:
        ctx.notes.append(f"iommu: the device died on a type {rtype} request with {writable} writable bytes")
        raise
    if not used or used[0].id != req.head:
        return None, 0, b""
    out = ctx.dut.memory.read(wo.addr, writable)
    if used[0].length == 0:
        return None, 0, out
    return out[-4], used[0].length, out


def attach(domain: int, endpoint: int, flags: int = 0, reserved: bytes = bytes(4)) -> bytes:
    return struct.pack("<III", domain, endpoint, flags) + reserved


def detach(domain: int, endpoint: int, reserved: bytes = bytes(8)) -> bytes:
    return struct.pack("<II", domain, endpoint) + reserved


def map_(domain: int, start: int, end: int, phys: int, flags: int = RW) -> bytes:
    return struct.pack("<IQQQI", domain, start, end, phys, flags)


def unmap(domain: int, start: int, end: int) -> bytes:
    return struct.pack("<IQQ", domain, start, end) + bytes(4)


def probe(endpoint: int, reserved: bytes = bytes(64)) -> bytes:
    return struct.pack("<I", endpoint) + reserved


def endpoint_id(ctx: Ctx, t: OpenedTransport) -> int:
    """The IOMMU's id for the endpoint behind transport ``t`` (mmio: by window; PCI: the
    requester id), as the platform description (VIOT) gives it."""
    setup = ctx.dut.setup
    assert setup is not None
    if t.mmio_base is not None:
        return setup.machine.iommu_endpoints[t.mmio_base]
    assert t.pci is not None
    bus, slot, fn = t.pci.bdf
    return bus << 8 | slot << 3 | fn


class Endpoint:
    """The rng endpoint behind the IOMMU, driven with IOVAs."""

    def __init__(self, ctx: Ctx, ep_ctx: Ctx) -> None:
        self.ctx = ctx
        self.ep = ep_ctx

    async def up(self) -> bool:
        try:
            await bring_up(self.ep, (0,))
        except Exception as e:  # FEATURES_OK refused etc.
            self.ctx.notes.append(f"iommu endpoint: {e}")
            return False
        return self.ep.has(F.ACCESS_PLATFORM)

    async def dma(self, iova: int, length: int = 16) -> tuple[bool, int]:
        """Ask the endpoint to write ``length`` bytes at ``iova``; (completed with data, len)."""
        req = submit(self.ep, Request(0, [Segment(iova, length, True)], None))
        await kick(self.ep, 0)
        used = await wait_used(self.ep, 0, 1, timeout=0.3)
        ok = bool(used) and used[0].id == req.head and used[0].length > 0
        return ok, used[0].length if used else -1


@checker("iommu_requests", IOMMU_IDS, keys=("iommu",))
async def iommu_requests(ctx: Ctx) -> None:
    """Every request type with good and bad arguments, and the status each gets."""
    log = ctx.log
    await bring_up(ctx, (REQUESTQ, EVENTQ))
    ops = ctx.t.ops
    log.check("iommu.vq.layout", len(ctx.rings) == 2, "request queue 0 / event queue 1 missing")
    offered = ctx.offered
    log.check("iommu.dev.offer-map-unmap", bool(offered >> IOMMU_F.MAP_UNMAP & 1), "MAP_UNMAP not offered")
    log.check(
        "iommu.dev.no-legacy-bypass",
        not offered >> IOMMU_F.BYPASS & 1,
        "offers the old VIRTIO_IOMMU_F_BYPASS",
    )
    log.check(
        "iommu.dev.not-both-bypass",
        not (offered >> IOMMU_F.BYPASS & 1 and offered >> IOMMU_F.BYPASS_CONFIG & 1),
        "offers BYPASS and BYPASS_CONFIG",
    )
    mask = await ops.read_config(_CFG["page_size_mask"], 8)
    log.check("iommu.cfg.dev-page-size-mask", mask != 0, "page_size_mask is 0")
    granule = mask & -mask if mask else PAGE
    bypass_cfg = bool(ctx.has(IOMMU_F.BYPASS_CONFIG))
    if bypass_cfg:
        b = await ops.read_config(_CFG["bypass"], 1)
        log.check("iommu.cfg.dev-bypass-0-1", b in (0, 1), f"bypass reads {b}")
    else:
        log.not_applicable("iommu.cfg.dev-bypass-0-1", "BYPASS_CONFIG not negotiated")
    eps = ctx.dut.endpoints
    ep = eps[0] if eps else 1
    missing_ep = 0xFFFF0
    s, _, out = await iommu_req(ctx, IOMMU_T.ATTACH, attach(1, ep))
    log.check("iommu.attach.dev-must-attach", s == IOMMU_S.OK, f"ATTACH domain 1 endpoint {ep}: {s}")
    log.check("iommu.req.dev-ok", s == IOMMU_S.OK, f"ATTACH: {s}")
    log.check("iommu.req.dev-tail-reserved-zero", out[-3:] == bytes(3), f"tail reserved {out[-3:].hex()}")
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(2, ep, reserved=b"\1\0\0\0"))
    log.check("iommu.attach.dev-reserved-inval", s == IOMMU_S.INVAL, f"ATTACH with reserved set: {s}")
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(2, ep, flags=0x80))
    log.check("iommu.attach.dev-unknown-flags-inval", s == IOMMU_S.INVAL, f"ATTACH with flag 0x80: {s}")
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(2, missing_ep))
    log.check("iommu.attach.dev-no-endpoint", s == IOMMU_S.NOENT, f"ATTACH of endpoint {missing_ep:#x}: {s}")
    if len(eps) > 1:
        s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(1, eps[1]))
        log.check(
            "iommu.attach.dev-shared-domain", s in (IOMMU_S.OK, IOMMU_S.UNSUPP), f"second endpoint: {s}"
        )
        await iommu_req(ctx, IOMMU_T.DETACH, detach(1, eps[1]))
    else:
        log.not_applicable("iommu.attach.dev-shared-domain", "one endpoint behind this IOMMU")
    if bypass_cfg:
        s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(1, ep, flags=IOMMU_ATTACH_F_BYPASS))
        log.check(
            "iommu.attach.dev-bypass-mismatch", s == IOMMU_S.INVAL, f"BYPASS attach to a mapping domain: {s}"
        )
    else:
        log.not_applicable("iommu.attach.dev-bypass-mismatch", "BYPASS_CONFIG not negotiated")
    # Move: attach to domain 3 while in domain 1 -> detached from 1 (domain 1 freed).
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(3, ep))
    moved = s == IOMMU_S.OK
    log.check("iommu.attach.dev-move-endpoint", s in (IOMMU_S.OK, IOMMU_S.UNSUPP), f"move to domain 3: {s}")
    log.check(
        "iommu.attach.dev-move-endpoint-unsupp", s in (IOMMU_S.OK, IOMMU_S.UNSUPP), f"move to domain 3: {s}"
    )
    if moved:
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(1, IOVA, IOVA + granule - 1, 0x10_0000))
        log.check(
            "iommu.detach.domain-freed",
            s == IOMMU_S.NOENT,
            f"MAP into domain 1 after its last endpoint left: {s}",
        )
    s, _, _ = await iommu_req(ctx, IOMMU_T.DETACH, detach(3, missing_ep))
    log.check("iommu.detach.dev-no-endpoint", s == IOMMU_S.NOENT, f"DETACH of a missing endpoint: {s}")
    s, _, _ = await iommu_req(ctx, IOMMU_T.DETACH, detach(3, ep, reserved=b"\xff" * 8))
    log.check("iommu.detach.dev-ignore-reserved", s == IOMMU_S.OK, f"DETACH with reserved bytes set: {s}")
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(4, ep), head_reserved=b"\xaa\xbb\xcc")
    log.check("iommu.req.dev-ignore-head-reserved", s == IOMMU_S.OK, f"ATTACH with head.reserved set: {s}")
    # MAP rules (domain 4 holds the endpoint).
    if ctx.has(IOMMU_F.MAP_UNMAP):
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(4, IOVA, IOVA + granule - 1, 0x10_0000, RW | 0x100))
        log.check("iommu.map.dev-unknown-flags", s == IOMMU_S.INVAL, f"MAP with flag 0x100: {s}")
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(4, IOVA + 1, IOVA + granule, 0x10_0000))
        log.check("iommu.map.dev-alignment", s == IOMMU_S.RANGE, f"unaligned MAP: {s}")
        if s == IOMMU_S.OK:
            # A device that accepted the unaligned MAP (QEMU 7.2) now holds
            # [IOVA + 1, IOVA + granule]: take it out again, or the overlap check below would
            # see its first MAP refused for overlapping this one and blame the wrong rule.
            await iommu_req(ctx, IOMMU_T.UNMAP, unmap(4, IOVA + 1, IOVA + granule))
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(77, IOVA, IOVA + granule - 1, 0x10_0000))
        log.check("iommu.map.dev-no-domain", s == IOMMU_S.NOENT, f"MAP into a missing domain: {s}")
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(4, IOVA, IOVA + 4 * granule - 1, 0x10_0000))
        s2, _, _ = await iommu_req(
            ctx, IOMMU_T.MAP, map_(4, IOVA + granule, IOVA + 2 * granule - 1, 0x20_0000)
        )
        log.check(
            "iommu.map.dev-overlap", s == IOMMU_S.OK and s2 == IOMMU_S.INVAL, f"MAP {s}, overlapping MAP {s2}"
        )
        s, _, _ = await iommu_req(ctx, IOMMU_T.UNMAP, unmap(4, IOVA, IOVA + granule - 1))
        log.check("iommu.unmap.dev-no-split", s == IOMMU_S.RANGE, f"UNMAP splitting a mapping: {s}")
        s, _, _ = await iommu_req(ctx, IOMMU_T.UNMAP, unmap(4, IOVA - granule, IOVA + 8 * granule - 1))
        log.check(
            "iommu.unmap.dev-partial-ok", s == IOMMU_S.OK, f"UNMAP over the mapping and unmapped space: {s}"
        )
        s, _, _ = await iommu_req(ctx, IOMMU_T.UNMAP, unmap(77, IOVA, IOVA + granule - 1))
        log.check("iommu.unmap.dev-no-domain", s == IOMMU_S.NOENT, f"UNMAP of a missing domain: {s}")
        if not ctx.has(IOMMU_F.INPUT_RANGE):
            s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(4, 1 << 60, (1 << 60) + granule - 1, 0x10_0000))
            log.check(
                "iommu.req.input-range-default", s == IOMMU_S.OK, f"MAP at 2^60 without INPUT_RANGE: {s}"
            )
            await iommu_req(ctx, IOMMU_T.UNMAP, unmap(4, 1 << 60, (1 << 60) + granule - 1))
        else:
            start = await ops.read_config(_CFG["input_start"], 8)
            end = await ops.read_config(_CFG["input_end"], 8)
            outside = end + 1 if end < (1 << 64) - granule else None
            if outside is None:
                log.passed("iommu.req.input-range-default", None)
            else:
                s, _, _ = await iommu_req(
                    ctx, IOMMU_T.MAP, map_(4, outside, outside + granule - 1, 0x10_0000)
                )
                log.check(
                    "iommu.req.input-range-default",
                    s == IOMMU_S.RANGE,
                    f"MAP outside input range [{start:#x}, {end:#x}]: {s}",
                )
        if bypass_cfg:
            s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(9, ep, flags=IOMMU_ATTACH_F_BYPASS))
            sm, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(9, IOVA, IOVA + granule - 1, 0x10_0000))
            su, _, _ = await iommu_req(ctx, IOMMU_T.UNMAP, unmap(9, IOVA, IOVA + granule - 1))
            log.check(
                "iommu.map.dev-bypass-domain",
                s == IOMMU_S.OK and sm == IOMMU_S.INVAL,
                f"bypass ATTACH {s}, MAP into it {sm}",
            )
            log.check(
                "iommu.unmap.dev-bypass-domain",
                s == IOMMU_S.OK and su == IOMMU_S.INVAL,
                f"bypass ATTACH {s}, UNMAP of it {su}",
            )
            await iommu_req(ctx, IOMMU_T.ATTACH, attach(4, ep))
        else:
            for rid in ("iommu.map.dev-bypass-domain", "iommu.unmap.dev-bypass-domain"):
                log.not_applicable(rid, "BYPASS_CONFIG not negotiated")
    else:
        for rid in (
            "iommu.map.dev-unknown-flags",
            "iommu.map.dev-alignment",
            "iommu.map.dev-no-domain",
            "iommu.map.dev-overlap",
            "iommu.unmap.dev-no-split",
            "iommu.unmap.dev-partial-ok",
            "iommu.unmap.dev-no-domain",
            "iommu.req.input-range-default",
            "iommu.map.dev-bypass-domain",
            "iommu.unmap.dev-bypass-domain",
        ):
            log.not_applicable(rid, "MAP_UNMAP not negotiated")
    # Unparsable and unknown requests come back unwritten with len 0.
    short = buffer(ctx, b"\x01", write=False)
    wo = buffer(ctx, 4, write=True, fill=0xEE)
    req = submit(ctx, Request(REQUESTQ, [short, wo], None))
    await kick(ctx, REQUESTQ)
    used = await wait_used(ctx, REQUESTQ, 1)
    untouched = ctx.dut.memory.read(wo.addr, 4) == b"\xee" * 4
    log.check(
        "iommu.req.dev-unparsable",
        bool(used) and used[0].id == req.head and used[0].length == 0 and untouched,
        f"1-byte request: used {used}, buffer untouched {untouched}",
    )
    if await ops.get_status() & STATUS.DEVICE_NEEDS_RESET:
        # a device may stop at a request it cannot parse (QEMU does): start again so the
        # checks below judge the requests they send, not a broken device
        ctx.notes.append("iommu: DEVICE_NEEDS_RESET after the 1-byte request; device reset")
        await bring_up(ctx, (REQUESTQ, EVENTQ))
    s, length, out = await iommu_req(ctx, 0x42, bytes(16))
    log.check("iommu.req.dev-unknown-type", length == 0 and out == b"\xee" * 4, f"type 0x42: len {length}")
    await _probe_checks(ctx, ep, missing_ep, granule)
    # Reset: nothing attached afterwards; bypass keeps its value across the reset.
    if bypass_cfg:
        await ops.write_config(_CFG["bypass"], 1, 0)
    await bring_up(ctx, (REQUESTQ, EVENTQ))
    if bypass_cfg:
        b = await ops.read_config(_CFG["bypass"], 1)
        log.check(
            "iommu.cfg.dev-bypass-reset", b == 0, f"bypass reads {b} after a device reset (was set to 0)"
        )
    else:
        log.not_applicable("iommu.cfg.dev-bypass-reset", "BYPASS_CONFIG not negotiated")
    s, _, _ = await iommu_req(ctx, IOMMU_T.DETACH, detach(4, ep))
    log.check("iommu.init.unattached-after-reset", s != IOMMU_S.OK, f"DETACH from domain 4 after reset: {s}")
    if bypass_cfg:
        await ops.write_config(_CFG["bypass"], 1, 1)
    await _without_optional_features(ctx, ep)


async def _without_optional_features(ctx: Ctx, ep: int) -> None:
    """The same device negotiated without DOMAIN_RANGE, INPUT_RANGE and PROBE: any domain
    id and any address are valid then, and PROBE is returned unwritten."""
    log = ctx.log
    drop = bit(IOMMU_F.DOMAIN_RANGE) | bit(IOMMU_F.INPUT_RANGE) | bit(IOMMU_F.PROBE)
    await negotiate(ctx)
    if not ctx.offered & drop:
        return
    await bring_up(ctx, (REQUESTQ, EVENTQ), accept=ctx.features & ~drop)
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(0xFFFFFFF0, ep))
    log.check(
        "iommu.req.domain-range-default",
        s == IOMMU_S.OK,
        f"no DOMAIN_RANGE: ATTACH to domain 0xfffffff0: {s}",
    )
    if ctx.has(IOMMU_F.MAP_UNMAP):
        g = PAGE
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(0xFFFFFFF0, 1 << 60, (1 << 60) + g - 1, 0x10_0000))
        log.check("iommu.req.input-range-default", s == IOMMU_S.OK, f"no INPUT_RANGE: MAP at 2^60: {s}")
    _, length, out = await iommu_req(ctx, IOMMU_T.PROBE, probe(ep), writable=64)
    log.check(
        "iommu.probe.dev-not-offered",
        length == 0 and out == b"\xee" * 64,
        f"PROBE without F_PROBE negotiated: len {length}",
    )
    await iommu_req(ctx, IOMMU_T.DETACH, detach(0xFFFFFFF0, ep))


async def _probe_checks(ctx: Ctx, ep: int, missing_ep: int, granule: int) -> None:
    log = ctx.log
    if not ctx.has(IOMMU_F.PROBE):
        for rid in IOMMU_IDS:
            if rid.startswith(("iommu.probe.", "iommu.resv.")) and rid != "iommu.probe.dev-not-offered":
                log.not_applicable(rid, "VIRTIO_IOMMU_F_PROBE not negotiated")
        return
    size = await ctx.t.ops.read_config(_CFG["probe_size"], 4)
    s, _, out = await iommu_req(ctx, IOMMU_T.PROBE, probe(ep, reserved=b"\x5a" * 64), writable=size + 4)
    log.check("iommu.probe.dev-ignore-reserved", s == IOMMU_S.OK, f"PROBE with reserved bytes set: {s}")
    props = out[:size]
    pos, problems, msi, regions, reserved_bad, resv_bad = 0, [], 0, [], [], []
    while pos + PROBE_HDR <= len(props):
        ptype, plen = struct.unpack_from("<HH", props, pos)
        if ptype == 0 and plen == 0:
            break
        if ptype >> 12:
            reserved_bad.append(ptype)
        if (ptype & 0xFFF) == IOMMU_PROBE.RESV_MEM:
            if plen != RESV_MEM_BODY:
                problems.append(f"RESV_MEM length {plen}")
            sub, rsv, start, end = struct.unpack_from("<B3sQQ", props, pos + PROBE_HDR)
            if rsv != bytes(3):
                resv_bad.append(rsv.hex())
            msi += sub == IOMMU_PROBE.RESV_MEM_MSI
            regions.append((start, end))
        pos += PROBE_HDR + plen
    tail_zero = all(b == 0 for b in props[pos:])
    log.check("iommu.probe.dev-length-field", not problems, "; ".join(problems))
    log.check("iommu.probe.dev-packing", tail_zero, f"bytes after the last property at {pos} are not zero")
    log.check("iommu.probe.dev-zero-fill", tail_zero, f"unused bytes after {pos} not zeroed")
    log.check("iommu.probe.dev-property-reserved", not reserved_bad, f"property types {reserved_bad}")
    log.check("iommu.resv.dev-reserved", not resv_bad, f"RESV_MEM reserved {resv_bad}")
    log.check("iommu.resv.dev-one-msi", msi <= 1, f"{msi} MSI regions")
    overlap = [
        (a, b) for i, a in enumerate(regions) for b in regions[i + 1 :] if a[0] <= b[1] and b[0] <= a[1]
    ]
    log.check("iommu.resv.dev-no-overlap", not overlap, f"overlapping regions {overlap}")
    if regions and ctx.has(IOMMU_F.MAP_UNMAP):
        start = regions[0][0] & ~(granule - 1)
        s, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(4, start, start + granule - 1, 0x10_0000))
        log.check(
            "iommu.resv.dev-reject-overlapping-map", s != IOMMU_S.OK, f"MAP over a reserved region: {s}"
        )
    else:
        log.not_applicable("iommu.resv.dev-reject-overlapping-map", "no reserved region reported")
    s, _, _ = await iommu_req(ctx, IOMMU_T.PROBE, probe(missing_ep), writable=size + 4)
    log.check("iommu.probe.dev-no-endpoint", s == IOMMU_S.NOENT, f"PROBE of a missing endpoint: {s}")
    try:
        s, _, out = await iommu_req(ctx, IOMMU_T.PROBE, probe(ep), writable=16)
    except HostLinkError:
        log.failed("iommu.probe.dev-small-buffer", "PROBE with a 12-byte buffer: the device under test died")
        raise
    log.check(
        "iommu.probe.dev-small-buffer",
        s == IOMMU_S.INVAL and out[:12] == b"\xee" * 12,
        f"PROBE with a 12-byte buffer: status {s}, buffer {out[:12].hex()}",
    )


TRANSLATION_IDS = (
    "iommu.map.translation",
    "iommu.map.dev-write-permission",
    "iommu.detach.dev-revoke",
    "iommu.bypass.semantics",
    "iommu.req.dev-isolate-unattached",
    "features.access-platform.set-means-translated",
    "iommu.fault.dev-reserved",
    "iommu.fault.dev-undefined-flags",
    "iommu.fault.dev-endpoint",
    "iommu.fault.dev-single-buffer",
)
FAULT_SIZE = 24


@checker("iommu_translation", TRANSLATION_IDS, keys=("iommu",))
async def iommu_translation(ctx: Ctx) -> None:
    """An endpoint's DMA through the IOMMU: reaches PA = VA - virt_start + phys_start after
    MAP, is refused for a read-only mapping, after DETACH, and for an unattached endpoint
    with bypass off; bypass=1 lets an unattached endpoint through untranslated. Faults are
    reported on the event queue in the documented format."""
    log = ctx.log
    await bring_up(ctx, (REQUESTQ, EVENTQ))
    eps = ctx.dut.endpoints
    if not eps or ctx.dut.backend != "host":
        for rid in TRANSLATION_IDS:
            log.not_applicable(rid, "no endpoint behind this IOMMU that the checker can drive")
        return
    # event buffers for fault reports
    fault_bufs = [buffer(ctx, FAULT_SIZE + 8, write=True, fill=0xEE) for _ in range(4)]
    for fb in fault_bufs:
        submit(ctx, Request(EVENTQ, [fb], None))
    await kick(ctx, EVENTQ)
    ep_t = await open_transport(ctx.dut, want_key="rng")
    ep_id = endpoint_id(ctx, ep_t)
    arena = Arena(ctx.dut.memory, ctx.arena.end, ctx.arena.end + (4 << 20))
    ep_ctx = Ctx(ctx.dut, ep_t, log, "split", arena)
    ep_ctx.dut = ctx.dut
    endpoint = Endpoint(ctx, ep_ctx)
    if not await endpoint.up():
        for rid in TRANSLATION_IDS:
            log.not_applicable(rid, "endpoint did not negotiate ACCESS_PLATFORM")
        return
    target = arena.alloc(PAGE, PAGE, fill=0)
    s, _, _ = await iommu_req(ctx, IOMMU_T.ATTACH, attach(5, ep_id))
    # The endpoint's rings are IOVAs too: identity-map its arena (rings live there).
    await iommu_req(ctx, IOMMU_T.MAP, map_(5, arena.start, arena.end - 1, arena.start, RW))
    s2, _, _ = await iommu_req(ctx, IOMMU_T.MAP, map_(5, IOVA, IOVA + PAGE - 1, target, RW))
    ok, _ = await endpoint.dma(IOVA + 0x100, 32)
    landed = ctx.dut.memory.read(target + 0x100, 32)
    translated = ok and landed != bytes(32)
    log.check(
        "iommu.map.translation",
        s == s2 == IOMMU_S.OK and translated,
        f"ATTACH {s}, MAP {s2}; endpoint write at IOVA {IOVA + 0x100:#x}: done {ok}, "
        f"PA bytes {landed[:8].hex()}",
    )
    log.check(
        "features.access-platform.set-means-translated",
        translated,
        "with ACCESS_PLATFORM the endpoint's IOVA access did not go through the mapping",
    )
    await iommu_req(ctx, IOMMU_T.MAP, map_(5, IOVA + PAGE, IOVA + 2 * PAGE - 1, target, IOMMU_MAP_F.READ))
    ep_ctx.dut.memory.write(target, bytes(64))
    ok_ro, _ = await endpoint.dma(IOVA + PAGE, 32)
    untouched = ctx.dut.memory.read(target, 32) == bytes(32)
    log.check("iommu.map.dev-write-permission", untouched, f"write through a READ-only mapping: done {ok_ro}")
    if not ok_ro:
        await endpoint.up()  # the endpoint may need a reset after its fault
    await iommu_req(ctx, IOMMU_T.DETACH, detach(5, ep_id))
    bypass_cfg = ctx.has(IOMMU_F.BYPASS_CONFIG)
    if bypass_cfg:
        await ctx.t.ops.write_config(_CFG["bypass"], 1, 0)
    ctx.dut.memory.write(target, bytes(64))
    ok_det, _ = await endpoint.dma(IOVA + 0x200, 32)
    still = ctx.dut.memory.read(target + 0x200, 32) == bytes(32)
    log.check(
        "iommu.detach.dev-revoke", still, f"after DETACH the old mapping still reached PA (done {ok_det})"
    )
    log.check(
        "iommu.req.dev-isolate-unattached",
        still and not ok_det,
        "unattached endpoint with bypass off got access",
    )
    if not ok_det:
        await endpoint.up()
    # Faults reported so far.
    events = ctx.rings[EVENTQ].take_used()
    records = [ctx.dut.memory.read(fb.addr, FAULT_SIZE) for fb in fault_bufs[: len(events)]]
    if records:
        bad_rsv = [r.hex() for r in records if r[1:4] != bytes(3) or r[12:16] != bytes(4)]
        flags = [struct.unpack_from("<I", r, 4)[0] for r in records]
        eps_seen = [struct.unpack_from("<I", r, 8)[0] for r in records]
        log.check("iommu.fault.dev-reserved", not bad_rsv, f"fault reserved fields {bad_rsv}")
        log.check(
            "iommu.fault.dev-undefined-flags", all(not f & ~0x107 for f in flags), f"fault flags {flags}"
        )
        log.check(
            "iommu.fault.dev-endpoint", all(e == ep_id for e in eps_seen), f"fault endpoints {eps_seen}"
        )
        log.check(
            "iommu.fault.dev-single-buffer",
            all(u.length in (0, FAULT_SIZE) for u in events),
            f"fault lens {[u.length for u in events]}",
        )
    else:
        for rid in (
            "iommu.fault.dev-reserved",
            "iommu.fault.dev-undefined-flags",
            "iommu.fault.dev-endpoint",
            "iommu.fault.dev-single-buffer",
        ):
            log.not_applicable(rid, "no fault was reported")
    if bypass_cfg:
        await ctx.t.ops.write_config(_CFG["bypass"], 1, 1)
        direct = arena.alloc(PAGE, PAGE, fill=0)
        ok_by, _ = await endpoint.dma(direct, 32)
        log.check(
            "iommu.bypass.semantics",
            ok_by and ctx.dut.memory.read(direct, 32) != bytes(32),
            "bypass=1, unattached endpoint: a guest-physical write did not land",
        )
    else:
        log.not_applicable("iommu.bypass.semantics", "BYPASS_CONFIG not negotiated")
    await ack(ctx)
