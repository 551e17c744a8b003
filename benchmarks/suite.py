"""The benchmarks themselves. Each returns rows: (name, value, unit, floor value, ratio)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import trio

from benchmarks import floors
from host.iommu import EndpointTranslator, Iommu
from virtio_sim.dma import IdentityAddressSpace, TranslatedAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses

QSIZE = 256


@dataclass
class Row:
    group: str
    name: str
    value: float
    unit: str
    floor: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.floor:
            return None
        return self.value / self.floor if self.higher_is_better else self.floor / self.value

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ratio": self.ratio}


def _ring_pair(
    event_idx: bool, translated: bool
) -> tuple[GuestMemory, SplitDriverQueue, SplitDeviceQueue, int]:
    mem = GuestMemory.create(64 << 20)
    gpa = SplitRingAddresses(0x10000, 0x10000 + 16 * QSIZE, 0x20000)
    drv = SplitDriverQueue(mem, QSIZE, gpa, event_idx=event_idx)
    if translated:
        iommu = Iommu({1}, bypass=False)
        iommu.attach(1, 1, bypass=False)
        iova = 1 << 40
        iommu.map(1, iova, iova + (32 << 20) - 1, 0, 3)
        space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
        addrs = SplitRingAddresses(iova + gpa.desc, iova + gpa.avail, iova + gpa.used)
        base = iova
    else:
        space = IdentityAddressSpace(mem)  # type: ignore[assignment]
        addrs = gpa
        base = 0
    dev = SplitDeviceQueue(space, QSIZE, addrs, event_idx=event_idx)
    return mem, drv, dev, base


def ring_throughput(chains: int, batch: int, event_idx: bool, translated: bool = False) -> float:
    """Chains/s through our checked split ring, null device, one process."""
    mem, drv, dev, base = _ring_pair(event_idx, translated)
    try:
        done = 0
        start = time.perf_counter()
        while done < chains:
            n = min(batch, chains - done, QSIZE)
            for i in range(n):
                drv.add([], [(base + 0x100000 + 4096 * i, 64)], i)
            drv.kick_prepare()
            while (c := dev.pop()) is not None:
                dev.push(c.head, 64)
            dev.needs_interrupt()
            while drv.get_used() is not None:
                pass
            done += n
        return chains / (time.perf_counter() - start)
    finally:
        mem.close()


def embedded_blk(size: int, total: int, write: bool) -> float:
    """Bytes/s of blk requests through the whole embedded stack (transport, wire, rings)."""
    import tempfile

    from guest.boot import BootInfo
    from guest.drivers.blk import BlkDriver
    from guest.link import HostLink
    from guest.platform import GuestKernel, GuestPolicy
    from host.build import HostConfig, build_host
    from host.server import serve
    from virtio_sim.wire import memory_link

    async def main() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            disk = os.path.join(tmp, "d.img")
            with open(disk, "wb") as f:
                f.truncate(64 << 20)
            setup = build_host(HostConfig(devices=[f"virtio-blk-device,drive={disk}"], ram_size=256 << 20))
            h, g = memory_link()
            async with trio.open_nursery() as n:
                n.start_soon(serve, h, setup.machine)
                link = HostLink(g)
                n.start_soon(link.run)
                kernel = GuestKernel(link, setup.memory, 256 << 20, GuestPolicy())
                n.start_soon(kernel.irq_loop)
                boot = BootInfo(setup.machine.kernel_cmdline(), 256 << 20)
                (rec,) = await kernel.probe_mmio(boot.cmdline)
                drv = rec.driver
                assert isinstance(drv, BlkDriver)
                data = os.urandom(size)
                sectors = size // 512
                rounds = max(1, total // size)
                start = time.perf_counter()
                for i in range(rounds):
                    sector = (i * sectors) % (drv.geometry.capacity - sectors)
                    if write:
                        await drv.write(sector, data)
                    else:
                        await drv.read(sector, sectors)
                elapsed = time.perf_counter() - start
                n.cancel_scope.cancel()
            setup.close()
            return rounds * size / elapsed

    return trio.run(main)


def embedded_latency(rounds: int) -> float:
    """Seconds per single rng request round trip through the embedded stack."""
    from guest.drivers.rng import RngDriver
    from guest.link import HostLink
    from guest.platform import GuestKernel, GuestPolicy
    from host.build import HostConfig, build_host
    from host.server import serve
    from virtio_sim.embedded import RunConfig  # noqa: F401  (keeps imports warm)
    from virtio_sim.wire import memory_link

    async def main() -> float:
        setup = build_host(HostConfig(devices=["virtio-rng-device"], seed=1))
        h, g = memory_link()
        async with trio.open_nursery() as n:
            n.start_soon(serve, h, setup.machine)
            link = HostLink(g)
            n.start_soon(link.run)
            kernel = GuestKernel(link, setup.memory, 64 << 20, GuestPolicy())
            n.start_soon(kernel.irq_loop)
            (rec,) = await kernel.probe_mmio(setup.machine.kernel_cmdline())
            drv = rec.driver
            assert isinstance(drv, RngDriver)
            start = time.perf_counter()
            for _ in range(rounds):
                await drv.read(16)
            elapsed = time.perf_counter() - start
            n.cancel_scope.cancel()
        setup.close()
        return elapsed / rounds

    return trio.run(main)


def matrix_cells_per_second() -> tuple[float, int]:
    from virtio_sim.matrix.executors import LocalPool
    from virtio_sim.matrix.run import execute, plan
    from virtio_sim.matrix.spec import load_matrix

    spec = load_matrix()
    cells = plan(spec)
    start = time.perf_counter()
    execute(spec, cells, LocalPool())
    return len(cells) / (time.perf_counter() - start), len(cells)


def peak_rss_embedded(ram: str = "1G") -> float:
    """Peak RSS (MB) of a process running host and guest embedded with ``ram`` guest RAM."""
    code = (
        "import resource, trio\n"
        "from virtio_sim.embedded import RunConfig, run_embedded\n"
        "cfg = RunConfig(device='virtio-blk-device', workload='blk-rw', "
        f"ram_size={_size(ram)})\n"
        "r = trio.run(run_embedded, cfg)\n"
        "assert str(r.outcome) == 'OK', r.detail\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 1024


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]]


def run_all(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    n = 20_000 if quick else 100_000
    for batch in (1, 16, 256):
        floor = floors.split_ring_floor(n, batch)
        for eidx in (False, True):
            v = ring_throughput(n, batch, eidx)
            rows.append(
                Row(
                    "split ring (null device, 1 process)",
                    f"batch {batch}, event_idx {'on' if eidx else 'off'}",
                    v,
                    "chains/s",
                    floor,
                )
            )
    floor = floors.split_ring_floor(n, 256)
    off = ring_throughput(n, 256, True, translated=False)
    on = ring_throughput(n, 256, True, translated=True)
    rows.append(Row("ACCESS_PLATFORM", "bypass (GPA), batch 256", off, "chains/s", floor))
    rows.append(Row("ACCESS_PLATFORM", "IOVA via IOTLB, batch 256", on, "chains/s", off))
    total = (8 << 20) if quick else (32 << 20)
    for size in (4096, 65536):
        mfloor = floors.memcpy_floor(size, total)
        for write in (False, True):
            v = embedded_blk(size, total // (8 if size == 4096 else 1), write)
            rows.append(
                Row(
                    "blk bandwidth (embedded)",
                    f"{size // 1024} KiB {'write' if write else 'read'}",
                    v / 1e6,
                    "MB/s",
                    mfloor / 1e6,
                )
            )
    rounds = 500 if quick else 2000
    pp = floors.channel_pingpong_floor(rounds)
    lat = embedded_latency(rounds)
    rows.append(
        Row("latency", "rng request round trip (embedded)", lat * 1e6, "us", pp * 1e6, higher_is_better=False)
    )
    cps, cells = matrix_cells_per_second()
    rows.append(Row("matrix", f"default matrix, {cells} cells, process pool", cps, "cells/s"))
    rows.append(
        Row(
            "memory",
            "peak RSS, embedded host+guest, 1 GiB guest RAM",
            peak_rss_embedded(),
            "MB",
            higher_is_better=False,
        )
    )
    return rows


def self_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
