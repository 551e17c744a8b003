"""Chains/s through the device core: VirtioDevice.notify serving virtio-rng end to end.

Why: benchmarks/rings.py times the rings alone; this row adds what every kick costs in
the core (the bound queue, the model's pop/push loop, flush, the interrupt decision), so
a change to how the core drives the ring shows up here. The driver is the real split
driver queue on guest RAM; the device is configured as a transport would configure it.
"""

from __future__ import annotations

import time

from benchmarks.rings import BUFFERS, QSIZE, RAM, RING_GPA
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.split import SplitDriverQueue
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import STATUS, F, bit

GROUP = "split ring, rng through VirtioDevice, 1 process"
REQUEST = 16  # bytes of entropy per request: small, so the per-chain cost dominates


class _Sink:
    """Counts interrupts (the core asks; nobody is there to take them)."""

    def __init__(self) -> None:
        self.interrupts = 0

    def queue_interrupt(self, index: int) -> None:
        self.interrupts += 1

    def config_interrupt(self) -> None:
        pass


def rng_core_throughput(chains: int, batch: int, event_idx: bool) -> float:
    """Chains/s (CPU time): the driver adds ``batch`` requests, kicks, and reaps them."""
    mem = GuestMemory.create(RAM)
    try:
        dev = VirtioDevice(RngDevice(seed=1), lambda f: IdentityAddressSpace(mem))
        dev.sink = _Sink()
        features = bit(F.VERSION_1) | (bit(F.EVENT_IDX) if event_idx else 0)
        dev.write_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
        dev.write_driver_features(0, features & 0xFFFFFFFF)
        dev.write_driver_features(1, features >> 32)
        dev.write_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK)
        q = dev.queues[0]
        q.size, q.desc, q.driver, q.device = QSIZE, RING_GPA.desc, RING_GPA.avail, RING_GPA.used
        q.ready = True
        dev.write_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK)
        drv = SplitDriverQueue(mem, QSIZE, RING_GPA, RingFeatures(event_idx=event_idx))
        done = 0
        start = time.process_time()
        while done < chains:
            n = min(batch, chains - done, QSIZE)
            for i in range(n):
                drv.add((), ((BUFFERS + 4096 * i, REQUEST),), i)
            if drv.kick_prepare():
                dev.notify(0)
            got = 0
            while drv.get_used() is not None:
                got += 1
            if got != n or dev.broken:
                raise RuntimeError(f"rng served {got} of {n} requests (broken={dev.broken})")
            done += n
        return chains / (time.process_time() - start)
    finally:
        mem.close()
