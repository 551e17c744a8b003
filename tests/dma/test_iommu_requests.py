"""The virtio-iommu request stream a Linux 6.1 guest produces, and the IOVAs it reuses.

Linux 6.1 maps each scatterlist entry of a chain with its own ``dma_map_page``
(drivers/virtio/virtio_ring.c ``vring_map_one_sg``), and virtio-iommu sends each mapping as
one synchronous request (drivers/iommu/virtio-iommu.c ``viommu_map_pages`` ->
``viommu_send_req_sync``): one MAP per notification. Strict unmapping adds the UNMAP and
syncs at once (``viommu_unmap_pages`` -> ``viommu_add_req``, then ``iommu_iotlb_sync`` ->
``viommu_sync_req``); lazy unmapping only adds it, so it reaches the device with the next
kick. The request queue has no callback, so the driver polls it and asks for no
interrupts. Freed IOVAs go to iova.c's rcache and come back last-in first-out.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from virtio_sim.guest.dma import DirectDma
from virtio_sim.guest.drivers.blk import BlkDriver
from virtio_sim.guest.drivers.iommu import IommuDriver, request_codec
from virtio_sim.guest.iommu_dma import IOVA_MAG_SIZE, IommuDma, IovaAllocator
from virtio_sim.guest.platform import GuestKernel
from virtio_sim.guest.profile import guest_policy
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.devices.iommu import IommuDevice
from virtio_sim.layouts import IOMMU_BODIES, IommuReqHead, IommuReqTail
from virtio_sim.orchestration.direct_link import DirectLink
from virtio_sim.profiles import load_driver_profile
from virtio_sim.spec import AVAIL_F, IOMMU_T

SECTORS = 8


def _served(setup: Any) -> list[list[int]]:
    """Record, per notification of the virtio-iommu, the request types it served."""
    model = setup.iommu_device.model
    assert isinstance(model, IommuDevice)
    batches: list[list[int]] = []
    serve = model._serve

    def counting(queue: Any, chain: Any) -> int:
        raw = queue.space.read(chain.readable[0][0], 1)
        batches[-1].append(raw[0])
        return serve(queue, chain)

    process = model.process

    def per_notify(queue: Any) -> int:
        if queue.index == 0:
            batches.append([])
        return process(queue)

    model._serve = counting  # type: ignore[method-assign]
    model.process = per_notify  # type: ignore[method-assign]
    return batches


def _with_blk(body: Callable[[BlkDriver, IommuDma, IommuDriver, list[list[int]]], Any]) -> None:
    async def main(disk: str) -> None:
        setup = build_host(
            HostConfig(
                devices=[f"virtio-blk-pci,drive={disk},disable-legacy=on,iommu_platform=on"],
                transport="pci-modern",
                ram_size=256 << 20,
                iommu="virtio-iommu",
            )
        )
        try:
            batches = _served(setup)
            kernel = GuestKernel(DirectLink(setup.machine), setup.memory, 256 << 20,
                                 guest_policy(load_driver_profile("linux-6.1")))  # fmt: skip
            async with trio.open_nursery() as n:
                n.start_soon(kernel.irq_loop)
                probes = await kernel.probe_platform(setup.machine.kernel_cmdline())
                drv = next(p.driver for p in probes if p.device_key == "blk" and p.bound)
                assert isinstance(drv, BlkDriver)
                dma = drv.dev.dma
                assert isinstance(dma, IommuDma)
                iommu = kernel.iommu
                assert isinstance(iommu, IommuDriver)
                await body(drv, dma, iommu, batches)
                n.cancel_scope.cancel()
        finally:
            setup.close()

    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        disk = os.path.join(tmp, "d.img")
        with open(disk, "wb") as f:
            f.truncate(8 << 20)
        trio.run(main, disk)


def test_strict_read_sends_one_map_and_one_unmap_per_buffer_each_in_its_own_notification() -> None:
    async def body(drv: BlkDriver, dma: IommuDma, iommu: IommuDriver, batches: list[list[int]]) -> None:
        await drv.read(0, SECTORS)
        await dma.flush()  # the warm-up request's UNMAPs
        batches.clear()
        await drv.read(SECTORS, SECTORS)
        await dma.flush()  # strict: this request's UNMAPs, now
        # header, data, status: three MAPs before the chain, three UNMAPs after it,
        # every request synced on its own (one kick, one request served)
        assert batches == [[IOMMU_T.MAP]] * 3 + [[IOMMU_T.UNMAP]] * 3

    _with_blk(body)


def test_lazy_unmaps_ride_with_the_next_kick_and_free_nothing_until_the_queue_flushes() -> None:
    async def body(drv: BlkDriver, dma: IommuDma, iommu: IommuDriver, batches: list[list[int]]) -> None:
        dma.flush_queue = 4  # room for 3 entries (fq_full keeps one slot empty)
        await drv.read(0, SECTORS)
        batches.clear()
        held = dict(dma.iovas._sizes)
        await drv.read(SECTORS, SECTORS)
        # the first request's three UNMAPs were added without a kick: the device got them
        # together with the first MAP of the next request
        assert batches[0] == [IOMMU_T.UNMAP] * 3 + [IOMMU_T.MAP]
        assert batches[1:] == [[IOMMU_T.MAP]] * 2
        assert held.keys() <= dma.iovas._sizes.keys()  # unmapped, but not yet reusable
        assert len(dma._fq) == 3
        batches.clear()
        await drv.read(2 * SECTORS, SECTORS)
        # the queue was full: one sync (flush_iotlb_all) freed the three, then the next
        # UNMAPs were queued and went out with the first MAP's kick
        assert [t for b in batches for t in b].count(IOMMU_T.UNMAP) == 3
        assert len(dma._fq) == 3

    _with_blk(body)


def test_request_queue_is_polled_and_asks_for_no_interrupts() -> None:
    async def body(drv: BlkDriver, dma: IommuDma, iommu: IommuDriver, batches: list[list[int]]) -> None:
        ring: Any = iommu.reqq.ring
        assert iommu.reqq.polled
        if not ring.event_idx:
            flags = struct.unpack_from("<H", dma.memory.read(ring.gpa.avail, 2))[0]
            assert flags & AVAIL_F.NO_INTERRUPT
        before = iommu.requests
        await drv.read(0, SECTORS)
        assert iommu.requests - before == 3  # MAPs, completed without any interrupt
        assert iommu.reqq.reap() == 0  # an interrupt would reap nothing there

    _with_blk(body)


def test_strict_requests_reuse_the_same_iovas() -> None:
    """iova.c's rcache: the IOVAs a request freed are the ones the next one gets."""

    async def body(drv: BlkDriver, dma: IommuDma, iommu: IommuDriver, batches: list[list[int]]) -> None:
        seen: list[set[int]] = []
        alloc = dma.alloc

        def spy(size: int, align: int = 1) -> Any:
            buf = alloc(size, align)
            seen[-1].add(buf.dev_addr)
            return buf

        dma.alloc = spy  # type: ignore[method-assign]
        for i in range(4):
            seen.append(set())
            await drv.read(i * SECTORS, SECTORS)
            await dma.flush()
        assert len(seen[1]) == 3 and seen[1] == seen[2] == seen[3]

    _with_blk(body)


def test_rcache_is_lifo_per_size_and_respects_the_limit() -> None:
    a = IovaAllocator(4096, (0, (1 << 48) - 1), pci=True)
    first = [a.alloc(4096) for _ in range(3)]
    assert first == sorted(first, reverse=True)  # top-down below 4 GiB (SAC)
    for iova in first:
        a.free(iova)
    assert [a.alloc(4096) for _ in range(3)] == first[::-1]  # newest freed comes back first
    big = a.alloc(3 * 4096)  # rounded to 4 pages: another size order, not from the cache
    assert big not in first and big % (4 * 4096) == 0
    a.free(big)
    assert a.alloc(4 * 4096) == big
    # more than two magazines and a depot's worth: the overflow goes back to the tree
    many = [a.alloc(4096) for _ in range(2 * IOVA_MAG_SIZE + 5)]
    for iova in many:
        a.free(iova)
    assert len({a.alloc(4096) for _ in range(len(many))}) == len(many)


@pytest.mark.parametrize("name", ["ATTACH", "DETACH", "MAP", "UNMAP"])
@given(data=st.data())
def test_request_codec_builds_what_the_layouts_build(name: str, data: st.DataObject) -> None:
    """The driver's whole-request struct codec is derived from the construct layouts;
    both must build the same bytes (head, body, tail)."""
    body = IOMMU_BODIES[name]
    values: dict[str, Any] = {}
    for sc in body.subcons:
        size = sc.sizeof()
        if sc.name.startswith("reserved"):
            values[sc.name] = data.draw(st.binary(min_size=size, max_size=size))
        else:
            values[sc.name] = data.draw(st.integers(0, (1 << (8 * size)) - 1))
    status = data.draw(st.integers(0, 255))
    expected = (
        IommuReqHead.build({"type": getattr(IOMMU_T, name), "reserved": bytes(3)})
        + body.build(values)
        + IommuReqTail.build({"status": status, "reserved": bytes(3)})
    )
    got = request_codec(name).pack(getattr(IOMMU_T, name), bytes(3), *values.values(), status, bytes(3))
    assert got == expected


def test_a_run_of_maps_reuses_one_buffer_and_gives_everything_back() -> None:
    """Three MAPs back to back take the iommu's DMA buffer and indirect table once, not
    three times, and return both when the run ends (no guest memory kept behind)."""

    async def body(drv: BlkDriver, dma: IommuDma, iommu: IommuDriver, batches: list[list[int]]) -> None:
        own = iommu.dev.dma
        assert isinstance(own, DirectDma)
        live = dict(own._live)
        allocs: list[int] = []
        alloc = own.alloc

        def counting(size: int, align: int = 1) -> Any:
            buf = alloc(size, align)
            allocs.append(buf.gpa)
            return buf

        own.alloc = counting  # type: ignore[method-assign]
        g = dma.granule
        await iommu.map_many(dma.domain, [(0x7000_0000 + i * g, 0x7000_0000 + (i + 1) * g - 1, 0x100000, 3)
                                          for i in range(3)])  # fmt: skip
        assert len(allocs) == 2  # one request buffer, one indirect table, for three MAPs
        assert own._live == live  # both given back: memory looks as before the run
        await iommu.unmap_many(dma.domain, [(0x7000_0000 + i * g, 0x7000_0000 + (i + 1) * g - 1)
                                            for i in range(3)])  # fmt: skip
        assert own._live == live and len(allocs) == 4
        assert own.check() == []  # guard bytes intact

    _with_blk(body)
