"""Ring throughput and latency: our checked split and packed rings with a null device.

The driver and the device are the real queue classes (every validation on); the device
completes each chain at once with a fixed length, so what is measured is the ring itself.
Two-process runs put the device in a forked child that shares the guest RAM (the memfd
mapping) and exchange kicks and interrupts over a Unix socket pair, as the process mode
does.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from virtio_sim.dma import AddressSpace, IdentityAddressSpace, TranslatedAddressSpace
from virtio_sim.host.iommu import EndpointTranslator, Iommu
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import IOMMU_MAP_F

QSIZE = 256
RAM = 64 << 20
BUFFERS = 0x100000  # where the chains' buffers live (guest-physical)
IOVA = 1 << 40
RING_GPA = SplitRingAddresses(0x10000, 0x10000 + 16 * QSIZE, 0x20000)

Pair = tuple[GuestMemory, Any, Any, int]  # memory, driver queue, device queue, address base


def ring_pair(fmt: str, event_idx: bool, translated: bool = False) -> Pair:
    """A driver queue on guest RAM and a device queue on the device's address space."""
    mem = GuestMemory.create(RAM)
    space: AddressSpace
    if translated:
        iommu = Iommu({1}, bypass=False)
        iommu.attach(1, 1, bypass=False)
        iommu.map(1, IOVA, IOVA + (32 << 20) - 1, 0, IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE)
        space = TranslatedAddressSpace(mem, EndpointTranslator(iommu, 1))
        base = IOVA
    else:
        space = IdentityAddressSpace(mem)
        base = 0
    dev_addrs = SplitRingAddresses(base + RING_GPA.desc, base + RING_GPA.avail, base + RING_GPA.used)
    if fmt == "split":
        drv: Any = SplitDriverQueue(mem, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
        dev: Any = SplitDeviceQueue(space, QSIZE, dev_addrs, RingFeatures(event_idx=event_idx))
    else:
        drv = PackedDriverQueue(mem, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
        dev = PackedDeviceQueue(space, QSIZE, dev_addrs, RingFeatures(event_idx=event_idx))
    return mem, drv, dev, base


def _fill(drv: Any, base: int, n: int) -> None:
    add = drv.add
    for i in range(n):
        add((), ((base + BUFFERS + 4096 * i, 64),), i)
    drv.kick_prepare()


def _serve(dev: Any) -> int:
    pop, push = dev.pop, dev.push
    served = 0
    while (c := pop()) is not None:
        push(c.head, 64)
        served += 1
    dev.needs_interrupt()
    return served


def _reap(drv: Any) -> None:
    get = drv.get_used
    while get() is not None:
        pass


def _fill_batch(drv: Any, base: int, n: int) -> None:
    drv.add_batch([((), ((base + BUFFERS + 4096 * i, 64),), i) for i in range(n)])
    drv.kick_prepare()


def _serve_batch(dev: Any) -> int:
    chains = dev.pop_batch(QSIZE)
    dev.push_batch([(c.head, 64) for c in chains])
    dev.needs_interrupt()
    return len(chains)


def _reap_batch(drv: Any) -> None:
    drv.get_used_batch()


def throughput(
    fmt: str, chains: int, batch: int, event_idx: bool, translated: bool = False, api: str = "chain"
) -> float:
    """Chains/s through one queue, driver and device in this process (CPU time).

    ``api="chain"``: add/pop/push/get_used per chain (what the device models call);
    ``api="batch"``: add_batch/pop_batch/push_batch/get_used_batch (both formats)."""
    mem, drv, dev, base = ring_pair(fmt, event_idx, translated)
    fill, serve, reap = (_fill_batch, _serve_batch, _reap_batch) if api == "batch" else (_fill, _serve, _reap)
    try:
        done = 0
        start = time.process_time()
        while done < chains:
            n = min(batch, chains - done, QSIZE)
            fill(drv, base, n)
            serve(dev)
            reap(drv)
            done += n
        return chains / (time.process_time() - start)
    finally:
        mem.close()


def _two_process(fmt: str, rounds: int, batch: int, event_idx: bool, api: str = "chain") -> float:
    """Seconds (wall) for ``rounds`` kick/interrupt exchanges of ``batch`` chains each,
    with the device queue in a forked child that shares guest RAM."""
    mem = GuestMemory.create(RAM)
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the device process
        code = 0
        try:
            parent_sock.close()
            space = IdentityAddressSpace(mem)
            dev: Any
            if fmt == "split":
                dev = SplitDeviceQueue(space, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
            else:
                dev = PackedDeviceQueue(space, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
            serve = _serve_batch if api == "batch" else _serve
            while child_sock.recv(1) == b"k":
                serve(dev)
                child_sock.sendall(b"i")
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    child_sock.close()
    try:
        drv: Any
        if fmt == "split":
            drv = SplitDriverQueue(mem, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
        else:
            drv = PackedDriverQueue(mem, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
        fill, reap = (_fill_batch, _reap_batch) if api == "batch" else (_fill, _reap)
        start = time.perf_counter()
        for _ in range(rounds):
            fill(drv, 0, batch)
            parent_sock.sendall(b"k")  # every batch is kicked: the device waits on the socket
            if parent_sock.recv(1) != b"i":
                raise RuntimeError("device process died")
            reap(drv)
        elapsed = time.perf_counter() - start
        parent_sock.sendall(b"q")
        return elapsed
    finally:
        parent_sock.close()
        os.waitpid(pid, 0)
        mem.close()


def two_process_throughput(fmt: str, chains: int, batch: int, event_idx: bool, api: str = "chain") -> float:
    """Chains/s with the device in another process (wall time: both processes work)."""
    rounds = max(1, chains // batch)
    return rounds * batch / _two_process(fmt, rounds, batch, event_idx, api)


def two_process_latency(fmt: str, rounds: int) -> float:
    """Seconds per single-request round trip (add, kick, serve, interrupt, reap)."""
    return _two_process(fmt, rounds, 1, True) / rounds


def best(fn: Callable[[], float], repeat: int, lower_is_better: bool = False) -> float:
    """Best of ``repeat`` runs: on a shared machine the best run is the least disturbed."""
    values = [fn() for _ in range(repeat)]
    return min(values) if lower_is_better else max(values)
