"""What a virtio-iommu costs per request when every request maps and unmaps its buffers.

The ACCESS_PLATFORM rows map one window once; a Linux guest behind an IOMMU maps each
request's buffers before the request and unmaps them after it. Here a linux-6.1 guest
drives 4 KiB virtio-blk reads on pci-modern through the whole embedded stack, once
without an IOMMU and once behind virtio-iommu with ``iommu_platform=on``, the way Linux
6.1 does it (citations in guest/iommu_dma.py and guest/drivers/iommu.py):

* every buffer of the chain (header, data, status) gets its own IOVA and its own MAP
  request, sent and waited for on its own: ``vring_map_one_sg`` -> ``dma_map_page`` ->
  ``viommu_map_pages`` -> ``viommu_send_req_sync`` (one kick, the used ring polled);
* strict (``iommu.strict=1``, and what 6.1's virtio-iommu always is: it refuses the
  DMA_FQ domain, virtio-iommu.c:644-646, iommu.c:1596-1598): every UNMAP is added and
  synced on its own (``__iommu_dma_unmap`` -> ``iommu_iotlb_sync``), after the request
  completed, before the next one maps anything;
* lazy (``iommu.strict=0``, dma-iommu.c's flush queue of IOVA_FQ_SIZE = 256): the UNMAPs
  are added without a kick and reach the device with the next MAP's kick; their IOVAs and
  pages are reused only after the queue filled and one sync flushed it. (Later kernels
  give virtio-iommu a ``flush_iotlb_all`` and so this mode; 6.1 does not.)

Linux also maps each request's indirect descriptor table (``vring_map_single``); the
model keeps indirect tables in a premapped pool, so Linux sends one MAP and one UNMAP
per request more than these rows. Timed in process CPU time (one process, direct link).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import trio

#: Linux's flush queue depth (IOVA_FQ_SIZE, drivers/iommu/dma-iommu.c)
IOVA_FQ_SIZE = 256
SECTORS = 8  # 4 KiB


def blk_request_seconds(requests: int, mode: str, profiler: Any = None) -> float:
    """CPU seconds per 4 KiB blk read; ``mode``: "off" (no IOMMU), "strict", "lazy".

    ``profiler`` (a cProfile.Profile, say) is enabled for the timed requests only.
    """
    from virtio_sim.guest.drivers.blk import BlkDriver
    from virtio_sim.guest.iommu_dma import IommuDma
    from virtio_sim.guest.platform import GuestKernel
    from virtio_sim.guest.profile import guest_policy
    from virtio_sim.host.build import HostConfig, build_host
    from virtio_sim.orchestration.direct_link import DirectLink
    from virtio_sim.profiles import load_driver_profile

    ram = 256 << 20
    iommu = mode != "off"

    async def main(disk: str) -> float:
        device = f"virtio-blk-pci,drive={disk},disable-legacy=on" + (",iommu_platform=on" if iommu else "")
        setup = build_host(
            HostConfig(
                devices=[device],
                transport="pci-modern",
                ram_size=ram,
                iommu="virtio-iommu" if iommu else "none",
            )
        )
        try:
            link = DirectLink(setup.machine)
            policy = guest_policy(load_driver_profile("linux-6.1"))
            async with trio.open_nursery() as n:
                kernel = GuestKernel(link, setup.memory, ram, policy)
                n.start_soon(kernel.irq_loop)
                probes = await kernel.probe_platform(setup.machine.kernel_cmdline())
                drv = next(p.driver for p in probes if p.device_key == "blk" and p.bound)
                assert isinstance(drv, BlkDriver)
                dma = drv.dev.dma
                assert isinstance(dma, IommuDma) == iommu, type(dma)
                if isinstance(dma, IommuDma) and mode == "lazy":
                    dma.flush_queue = IOVA_FQ_SIZE
                span = drv.geometry.capacity - SECTORS
                await drv.read(0, SECTORS)  # warm: queues set up, first mappings made
                if profiler is not None:
                    profiler.enable()
                start = time.process_time()
                for i in range(requests):
                    await drv.read((i * SECTORS) % span, SECTORS)
                    if isinstance(dma, IommuDma) and mode == "strict":
                        await dma.flush()  # the UNMAPs of this request, now
                elapsed = time.process_time() - start
                if profiler is not None:
                    profiler.disable()
                if isinstance(dma, IommuDma):
                    assert dma.maps_sent >= 3 * requests  # every request mapped its buffers
                n.cancel_scope.cancel()
        finally:
            setup.close()
        return elapsed / requests

    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        disk = os.path.join(tmp, "d.img")
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
        return trio.run(main, disk)
