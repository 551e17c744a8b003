"""What a guest does with a device in a run, and the evidence it collects.

Each workload drives a bound driver and checks the data end to end. A check that fails
because data is wrong is CORRUPTION; a device that reports an error status or breaks the
ring is DEVICE_ERROR; the caller maps exceptions to outcomes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.drivers.blk import BlkDriver, BlkIoError
from virtio_sim.guest.drivers.rng import RngDriver
from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.workloads_console import console_echo_workload, console_write_workload
from virtio_sim.guest.workloads_net import net_loopback_workload, net_pair_workload
from virtio_sim.spec import BLK, F

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


def blk_pattern_seed(seed: int | None) -> int:
    return seed if seed is not None else 0x5EED


#: the discard step of blk-rw: two 4-sector bios at sector 16 (clear of the verified plan)
DISCARD_AT = 16
DISCARD_BIO = 4
#: the WRITE_ZEROES step: after the discarded sectors, clear of the verified plan
ZEROES_AT = DISCARD_AT + 2 * DISCARD_BIO


async def blk_rw_workload(
    driver: GuestDriver, seed: int | None = None, *, probe: bool = True
) -> dict[str, Any]:
    """Write patterns (single-sector, multi-segment, last sector), read back, flush, GET_ID;
    then (``probe``) a read past the end that the device must refuse with IOERR."""
    assert isinstance(driver, BlkDriver)
    rnd = random.Random(blk_pattern_seed(seed))
    cap = driver.geometry.capacity
    if cap < 2:
        raise CorruptionDetected(f"disk capacity {cap} sectors is too small for the workload")
    sector = BLK.sector_size
    plan = [(0, 1), (1, min(8, cap - 1)), (max(cap - 1, 0), 1)]
    if cap > 256:
        plan.append((128, 128))  # 64 KiB over several segments
    written: dict[int, bytes] = {}
    for start, count in plan:
        data = rnd.randbytes(count * sector)
        await driver.write(start, data)
        for i in range(count):
            written[start + i] = data[i * sector : (i + 1) * sector]
    for start, count in plan:
        got = await driver.read(start, count)
        want = b"".join(written[start + i] for i in range(count))
        if got != want:
            bad = next(
                i
                for i in range(count)
                if got[i * sector : (i + 1) * sector] != want[i * sector : (i + 1) * sector]
            )
            raise CorruptionDetected(f"sector {start + bad} read back differs from what was written")
        if driver.last_used_len != count * sector + 1:
            raise CorruptionDetected(f"read of {count} sectors reported used.len {driver.last_used_len}")
    await driver.flush()
    discard = "not negotiated"
    if driver.geometry.max_discard_seg and cap > DISCARD_AT + 2 * DISCARD_BIO:
        # what mkfs or fstrim does: back-to-back discards the block layer merges into one
        # request (sectors away from the verified plan; discarded data is not checked:
        # a device may keep or drop it)
        sent = await driver.discard([(DISCARD_AT, DISCARD_BIO), (DISCARD_AT + DISCARD_BIO, DISCARD_BIO)])
        discard = f"{sent['bios']} bios as {sent['ranges_sent']} range(s), {sent['sectors_sent']} sectors"
    zeroes = "not negotiated"
    if driver.geometry.write_zeroes and cap > ZEROES_AT + DISCARD_BIO:
        # blkdev_issue_zeroout(): the zeroed sectors must read back as zeros
        await driver.write_zeroes(ZEROES_AT, DISCARD_BIO)
        if await driver.read(ZEROES_AT, DISCARD_BIO) != bytes(DISCARD_BIO * sector):
            raise CorruptionDetected(f"sectors {ZEROES_AT}.. do not read zero after WRITE_ZEROES")
        zeroes = f"{DISCARD_BIO} sectors"
    ident = await driver.get_id()
    beyond = "not probed"
    if probe:
        try:
            await driver.read(cap, 1)
        except BlkIoError:
            beyond = "IOERR"
        else:
            raise CorruptionDetected("read beyond capacity succeeded")
    return {
        "sectors_written": len(written),
        "capacity": cap,
        "serial": ident.decode(errors="replace"),
        "beyond_capacity": beyond,
        "plan": plan,
        "discard": discard,
        "write_zeroes": zeroes,
    }


WorkloadFn = Callable[[GuestDriver, int | None], Awaitable[dict[str, Any]]]


async def blk_rw_driver_only_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """blk-rw as a driver would run it on its own: without the deliberate read past the end
    (a device probe the blk layer never sends), for driver conformance runs."""
    return await blk_rw_workload(driver, seed, probe=False)


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


WORKLOADS: dict[str, tuple[str, WorkloadFn]] = {
    "rng": ("rng", rng_workload),
    "rng-soak": ("rng", rng_soak_workload),
    "rng-queue-reset": ("rng", rng_queue_reset_workload),
    "rng-remove": ("rng", rng_remove_workload),
    "blk-rw": ("blk", blk_rw_workload),
    "blk-rw-no-probe": ("blk", blk_rw_driver_only_workload),
    "net-loopback": ("net", net_loopback_workload),
    "net-pair": ("net", net_pair_workload),
    "console-echo": ("console", console_echo_workload),
    "console-write": ("console", console_write_workload),
}

__all__ = ["WORKLOADS", "CorruptionDetected", "WorkloadFn"]
