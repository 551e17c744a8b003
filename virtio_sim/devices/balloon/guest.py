"""The virtio-balloon driver and its workload (the driver side, Linux's role).

Like Linux's drivers/virtio/virtio_balloon.c without statistics: probe sets up the
inflate and deflate queues; :meth:`BalloonDriver.fill` gives pages to the balloon in
requests of at most 256 frame numbers (fill_balloon, tell_host), :meth:`leak` takes them
back (leak_balloon), and ``actual`` is written after each change (update_balloon_size,
virtio_cwrite_le: little-endian on every interface). A request is complete when the
device used it; its used.len is ignored (5.5.6.2.1).
"""

from __future__ import annotations

from typing import Any

from virtio_sim.devices.balloon import (
    CONFIG_ACTUAL,
    CONFIG_NUM_PAGES,
    DEFLATEQ,
    F_DEFLATE_ON_OOM,
    F_MUST_TELL_HOST,
    INFLATEQ,
    PAGE_SIZE,
    PFN_SHIFT,
    PFN_SIZE,
    PFNS_PER_REQUEST,
    QUEUE_SIZE,
)
from virtio_sim.guest.allocator import OutOfGuestMemory
from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.guest.virtio import GuestVirtqueue
from virtio_sim.layouts import ByteOrder
from virtio_sim.ring.chain import DmaBuffer
from virtio_sim.spec import bit


class BalloonDriver(GuestDriver):
    type_key = "balloon"
    # what this driver implements of Linux's features[] (statistics, hinting, poison and
    # reporting are left out); a generation's profile narrows it to what that Linux knew
    device_feature_mask = bit(F_MUST_TELL_HOST) | bit(F_DEFLATE_ON_OOM)

    async def probe(self) -> None:
        self.inflateq: GuestVirtqueue = await self.dev.setup_queue(INFLATEQ, QUEUE_SIZE)
        self.deflateq: GuestVirtqueue = await self.dev.setup_queue(DEFLATEQ, QUEUE_SIZE)
        #: the frame-number array of every request (Linux's vb->pfns)
        self.pfn_array = self.dev.dma.alloc(PFNS_PER_REQUEST * PFN_SIZE)
        #: the pages in the balloon, in the order they went in
        self.pages: list[DmaBuffer] = []
        self.requests = 0
        #: the guest ran out of pages before the target was reached
        self.out_of_memory = False

    def _order(self) -> ByteOrder:
        """The byte order of frame numbers: the guest's on the legacy interface."""
        return self.dev.transport.guest_order if self.dev.legacy else "little"

    async def _read_le32(self, offset: int) -> int:
        raw = await self.dev.transport.read_config(offset, 4)
        return int.from_bytes(raw.to_bytes(4, self._order()), "little")

    async def target(self) -> int:
        """``num_pages``: how many pages the device wants in the balloon."""
        return await self._read_le32(CONFIG_NUM_PAGES)

    async def actual(self) -> int:
        return await self._read_le32(CONFIG_ACTUAL)

    async def update_size(self) -> None:
        """Write ``actual`` (update_balloon_size); little-endian whatever the interface."""
        value = int.from_bytes(len(self.pages).to_bytes(4, "little"), self._order())
        await self.dev.transport.write_config(CONFIG_ACTUAL, 4, value)

    async def _tell(self, vq: GuestVirtqueue, pages: list[DmaBuffer]) -> None:
        """One request with the pages' frame numbers, complete when the device used it.
        The frame-number array is the driver's own, taken at probe (Linux's vb->pfns), so
        telling the device never needs memory the balloon may have taken."""
        order = self._order()
        pfns = b"".join((p.gpa >> PFN_SHIFT).to_bytes(PFN_SIZE, order) for p in pages)
        self.dev.dma.write(self.pfn_array, pfns)
        await vq.submit([(self.pfn_array.dev_addr, len(pfns))], [])
        self.requests += 1

    async def fill(self, count: int) -> int:
        """Give up to ``count`` pages to the balloon (fill_balloon); returns how many went
        in. When the guest has no page left the balloon stops short, as Linux's does
        ("Out of puff!"), and gives what it got."""
        given = 0
        while given < count:
            chunk: list[DmaBuffer] = []
            try:
                for _ in range(min(PFNS_PER_REQUEST, count - given)):
                    chunk.append(self.dev.dma.alloc(PAGE_SIZE, PAGE_SIZE))
            except OutOfGuestMemory:
                self.out_of_memory = True
            if chunk:
                await self._tell(self.inflateq, chunk)
                self.pages += chunk  # the driver must not touch them from now on (5.5.6.1)
                given += len(chunk)
            if self.out_of_memory:
                break
        return given

    async def leak(self, count: int) -> int:
        """Take ``count`` pages back (leak_balloon): the device acknowledges before the
        pages are used again, which MUST_TELL_HOST requires and Linux always does."""
        taken = 0
        while taken < count and self.pages:
            n = min(PFNS_PER_REQUEST, count - taken, len(self.pages))
            chunk = self.pages[-n:]
            await self._tell(self.deflateq, chunk)
            del self.pages[-n:]
            for page in chunk:
                self.dev.dma.free(page)
            taken += n
        return taken


async def balloon_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """Inflate to the device's target (or as far as guest memory goes), report it in
    ``actual``, then deflate everything and report 0 (what Linux does on a target change
    and on driver removal). ``actual`` must read back as written each time: the device
    keeps the driver's value."""
    assert isinstance(driver, BalloonDriver)
    target = await driver.target()
    inflated = await driver.fill(target)
    await driver.update_size()
    held = await driver.actual()
    if held != inflated:
        raise DeviceProtocolError(f"actual reads {held} after the driver wrote {inflated}")
    deflated = await driver.leak(inflated)
    await driver.update_size()
    left = await driver.actual()
    if left != 0:
        raise DeviceProtocolError(f"actual reads {left} after the driver wrote 0")
    return {
        "target_pages": target,
        "inflated": inflated,
        "deflated": deflated,
        "requests": driver.requests,
        "out_of_guest_memory": driver.out_of_memory,
        "features": driver.dev.negotiated_names("balloon"),
    }


GUEST = GuestHalf(BalloonDriver, {"balloon": balloon_workload})
