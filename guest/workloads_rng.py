"""What a guest does with a virtio-rng device: read entropy, check it against the seed."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.drivers.rng import RngDriver
from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.spec import F

#: what an rng buffer is filled with before the device writes it
CANARY = 0xA5


RNG_REQUEST_SIZES = (1, 16, 64, 512, 4096)


async def rng_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """Read entropy in several sizes; with the device's seed known, compare every byte."""
    assert isinstance(driver, RngDriver)
    expected = random.Random(seed) if seed is not None else None
    total = 0
    digest = hashlib.sha256()
    for n in RNG_REQUEST_SIZES:
        got = await driver.read(n, CANARY)
        if not 1 <= len(got) <= n:
            raise CorruptionDetected(f"rng returned {len(got)} bytes for a {n}-byte buffer")
        tail = driver.last_buffer[len(got) :]
        if tail.strip(bytes([CANARY])):
            raise CorruptionDetected("rng device wrote past the length it reported")
        if expected is not None and got != expected.randbytes(len(got)):
            raise CorruptionDetected("rng bytes differ from the device's seeded stream")
        total += len(got)
        digest.update(got)
    return {
        "bytes": total,
        "requests": len(RNG_REQUEST_SIZES),
        "verified_stream": seed is not None,
        "sha256": digest.hexdigest(),
    }


RNG_SOAK_REQUESTS = 2000
RNG_SOAK_SIZE = 4096


async def rng_soak_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """Many full-page entropy requests, each checked against the seeded stream: a steady
    load for measuring a link and for killing a peer in the middle of a run."""
    assert isinstance(driver, RngDriver)
    expected = random.Random(seed) if seed is not None else None
    digest = hashlib.sha256()
    total = 0
    for i in range(RNG_SOAK_REQUESTS):
        got = await driver.read(RNG_SOAK_SIZE, CANARY)
        if not 1 <= len(got) <= RNG_SOAK_SIZE:
            raise CorruptionDetected(f"rng request {i} returned {len(got)} bytes")
        if expected is not None and got != expected.randbytes(len(got)):
            raise CorruptionDetected(f"rng request {i} differs from the device's seeded stream")
        total += len(got)
        digest.update(got)
    return {
        "bytes": total,
        "requests": RNG_SOAK_REQUESTS,
        "verified_stream": seed is not None,
        "sha256": digest.hexdigest(),
    }


async def rng_queue_reset_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """rng, then its queue reset and re-enabled with another size (VIRTIO_F_RING_RESET,
    Linux's virtqueue_reset()), then rng again: what driver conformance needs to watch a
    real driver's queue reset (conformance driver runs, ``workload=rng-queue-reset``)."""
    assert isinstance(driver, RngDriver)
    first = await rng_workload(driver, seed)
    if not driver.dev.has(F.RING_RESET):
        raise DeviceProtocolError("rng-queue-reset needs VIRTIO_F_RING_RESET")
    await driver.vq.reset(driver.vq.size // 2)
    second = await rng_workload(driver, None)
    return {"bytes": first["bytes"] + second["bytes"], "queue_resets": 1}


async def rng_remove_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """rng, then the driver removed as Linux 6.1 removes it (virtio-rng.c remove_common():
    virtio_reset_device(), then del_vqs(); virtio_mmio.c vm_del_vq() writes QueuePFN 0 on
    version 1, or QueueReady 0 and reads it back): what driver conformance needs to watch a
    driver stop its queues (``workload=rng-remove``)."""
    assert isinstance(driver, RngDriver)
    first = await rng_workload(driver, seed)
    dev = driver.dev
    await dev.transport.reset()
    for vq in dev.queues:
        await dev.transport.disable_queue(vq.index)
    return {**first, "removed": True}


GUEST = GuestHalf(
    RngDriver,
    {
        "rng": rng_workload,
        "rng-soak": rng_soak_workload,
        "rng-queue-reset": rng_queue_reset_workload,
        "rng-remove": rng_remove_workload,
    },
)
