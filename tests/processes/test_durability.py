"""virtio-blk in a host process: what a FLUSH acknowledged survives ``kill -9`` of the host,
and a malformed request never leaves the backing file half-written.

The guest here is the library's guest stack driven from the test (tests/support/in_test_guest.py),
so the host can be killed the instant the FLUSH completes.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from pathlib import Path

import pytest
import trio

from tests.support.in_test_guest import in_test_guest
from tests.support.processes import host
from virtio_sim.guest.drivers.base import BlkIoError
from virtio_sim.guest.drivers.blk import BlkDriver
from virtio_sim.guest.virtio import DeviceNeedsReset
from virtio_sim.layouts import BLK_REQ_HEADER_SIZE, blk_req_header_codec
from virtio_sim.spec import BLK_S, BLK_T

SECTOR = 512
SECRET = b"blk"


def _listen(link: str, tmp_path: Path) -> tuple[str, ...]:
    if link == "unix":
        return ("--listen", "unix:")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    return ("--listen", "tcp:127.0.0.1:0", "--secret-file", str(secret))


@pytest.mark.parametrize("link", ["unix", "tcp"])
async def test_flushed_writes_survive_kill_9_of_the_host(tmp_path: Path, disk: Path, link: str) -> None:
    rnd = random.Random(11)
    writes = {sector: rnd.randbytes(SECTOR * count) for sector, count in ((3, 1), (40, 16), (2047, 1))}
    with trio.fail_after(30):
        async with (
            host(*_listen(link, tmp_path), "-device", f"virtio-blk-device,drive={disk}") as h,
            in_test_guest(h.address, SECRET if link == "tcp" else None) as g,
        ):
            drv = g.driver
            assert isinstance(drv, BlkDriver)
            for sector, data in writes.items():
                await drv.write(sector, data)
            await drv.flush()
            h.signal(signal.SIGKILL)  # the very moment the FLUSH completed
            assert await h.exit(timeout=5) == -signal.SIGKILL
    content = disk.read_bytes()
    for sector, data in writes.items():
        assert content[sector * SECTOR : sector * SECTOR + len(data)] == data
    # Everything else still holds the fixture's pattern (sector n starts with n).
    touched = {s + i for s, d in writes.items() for i in range(len(d) // SECTOR)}
    for n in (0, 1, 2, 4, 39, 56, 1000, 2046):
        assert n not in touched
        assert content[n * SECTOR : n * SECTOR + 4] == n.to_bytes(4, "little")


async def _out_request(drv: BlkDriver, sector: int, segments: list[tuple[int, int]]) -> int:
    """Submit an OUT request with the given data segments; returns the status byte."""
    dma = drv.dev.dma
    hdr, status = dma.alloc(BLK_REQ_HEADER_SIZE), dma.alloc(1)
    dma.write(hdr, blk_req_header_codec("little").pack(BLK_T.OUT, 0, sector))
    dma.write(status, b"\xff")
    await drv.vq.submit([(hdr.dev_addr, BLK_REQ_HEADER_SIZE), *segments], [(status.dev_addr, 1)])
    return dma.read(status, 1)[0]


@pytest.mark.parametrize("link", ["unix", "tcp"])
async def test_malformed_requests_never_touch_the_file(tmp_path: Path, disk: Path, link: str) -> None:
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    with trio.fail_after(30):
        async with host(*_listen(link, tmp_path), "-device", f"virtio-blk-device,drive={disk}") as h:
            async with in_test_guest(h.address, SECRET if link == "tcp" else None) as g:
                drv = g.driver
                assert isinstance(drv, BlkDriver)
                cap = drv.geometry.capacity
                buf = drv.dev.dma.alloc(4 * SECTOR)
                drv.dev.dma.write(buf, b"\xee" * 4 * SECTOR)
                # Not a whole number of sectors: the first 512 bytes must not land either.
                assert await _out_request(drv, 5, [(buf.dev_addr, 700)]) == BLK_S.IOERR
                # Runs past the end of the disk: the sectors inside it stay as they were.
                assert await _out_request(drv, cap - 1, [(buf.dev_addr, 2 * SECTOR)]) == BLK_S.IOERR
                # The second data segment is not guest RAM: the device refuses the whole
                # chain (needs reset) before gathering any data.
                bad = g.session.ram_size + 0x1000
                with pytest.raises(DeviceNeedsReset):
                    await _out_request(drv, 9, [(buf.dev_addr, SECTOR), (bad, SECTOR)])
                with pytest.raises((DeviceNeedsReset, BlkIoError)):
                    await drv.write(9, b"\x01" * SECTOR)  # a broken device serves nothing
            h.signal(signal.SIGKILL)
            await h.exit(timeout=5)
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
