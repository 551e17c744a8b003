"""What a guest does with a virtio-blk device: write, read back, flush, discard, GET_ID."""

from __future__ import annotations

import random
from typing import Any

from virtio_sim.guest.drivers.base import BlkIoError, GuestDriver
from virtio_sim.guest.drivers.blk import BlkDriver
from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.guest.workloads import blk_pattern_seed
from virtio_sim.spec import BLK

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


async def blk_rw_driver_only_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """blk-rw as a driver would run it on its own: without the deliberate read past the end
    (a device probe the blk layer never sends), for driver conformance runs."""
    return await blk_rw_workload(driver, seed, probe=False)


GUEST = GuestHalf(BlkDriver, {"blk-rw": blk_rw_workload, "blk-rw-no-probe": blk_rw_driver_only_workload})
