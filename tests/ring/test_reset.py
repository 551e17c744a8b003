"""Per-queue reset (VIRTIO_F_RING_RESET) while requests are in flight: nothing completed is lost."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from virtio_sim.guest.drivers.blk import BlkDriver
from virtio_sim.guest.link import HostLink
from virtio_sim.guest.platform import GuestKernel, GuestPolicy
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.server import serve
from virtio_sim.wire import memory_link

SECTOR = 512


@pytest.mark.parametrize("transport", ["mmio-v2", "pci-modern"])
@pytest.mark.parametrize("ring", ["split", "packed"])
async def test_queue_reset_under_load_loses_no_request(tmp_path: Path, transport: str, ring: str) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    props = ",packed=on" if ring == "packed" else ""
    setup = build_host(
        HostConfig(devices=[f"virtio-blk-device,drive={disk},queue_reset=on{props}"], transport=transport)
    )
    rnd = random.Random(11)
    try:
        host_end, guest_end = memory_link()
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(serve, host_end, setup.machine)
                link = HostLink(guest_end)
                n.start_soon(link.run)
                kernel = GuestKernel(link, setup.memory, 64 << 20, GuestPolicy())
                n.start_soon(kernel.irq_loop)
                await kernel.probe_platform(setup.machine.kernel_cmdline())
                (rec,) = kernel.bound("blk")
                drv = rec.driver
                assert isinstance(drv, BlkDriver) and rec.device is not None
                assert rec.device.has(40)  # VIRTIO_F_RING_RESET negotiated
                written: dict[int, bytes] = {}

                async def writer(sector: int) -> None:
                    data = rnd.randbytes(4 * SECTOR)
                    await drv.write(sector, data)
                    written[sector] = data

                async with trio.open_nursery() as load:
                    for i in range(24):
                        load.start_soon(writer, 8 * i)
                    await trio.sleep(0)  # let some requests become available
                    pending_at_reset = 24 - len(written)
                    await drv.vq.reset()  # ... and reset the queue under them
                    await drv.vq.reset(size=64)  # twice, with a new size
                assert sorted(written) == [8 * i for i in range(24)]
                for sector, data in written.items():
                    assert await drv.read(sector, 4) == data
                stats = drv.vq.stats
                assert stats.resets == 2
                assert pending_at_reset > 0  # the reset met requests in flight
                n.cancel_scope.cancel()
        content = disk.read_bytes()
        for sector, data in written.items():
            assert content[sector * SECTOR : sector * SECTOR + len(data)] == data
        assert not setup.devices[0].violations
        assert setup.devices[0].queue_resets == [0, 0]
    finally:
        setup.close()
