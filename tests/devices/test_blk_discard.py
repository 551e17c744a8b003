"""virtio-blk DISCARD / WRITE_ZEROES as QEMU serves them, and the Linux generations that
send them: 5.0-5.8 overflow their range array on QEMU's max_discard_seg of 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devices.test_blk import _request
from tests.support.mmio_bench import Bench, make_bench
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.layouts import blk_discard_codec
from virtio_sim.orchestration.matrix.cell import run_cell
from virtio_sim.orchestration.matrix.spec import Cell
from virtio_sim.spec import BLK_F, BLK_S, BLK_T, bit

SECTOR = 512


def _bench(disk: Path, **props: bool) -> tuple[Bench, object]:
    b = make_bench(BlkDevice(str(disk), **props))  # type: ignore[arg-type]
    b.negotiate()
    q = b.setup_queue(0, 16)
    b.driver_ok()
    return b, q


def _segment(sector: int, count: int, flags: int = 0) -> bytes:
    return blk_discard_codec("little").pack(sector, count, flags)


def test_write_zeroes_and_discard_leave_zeroes_and_check_flags_and_range(disk: Path) -> None:
    b, q = _bench(disk)
    _, status, _ = _request(b, q, BLK_T.WRITE_ZEROES, 0, out=_segment(4, 2, flags=1))  # UNMAP allowed
    assert status == BLK_S.OK
    _, status, _ = _request(b, q, BLK_T.DISCARD, 0, out=_segment(8, 1))
    assert status == BLK_S.OK
    data = disk.read_bytes()
    assert data[4 * SECTOR : 6 * SECTOR] == bytes(2 * SECTOR) and data[8 * SECTOR : 9 * SECTOR] == bytes(
        SECTOR
    )
    assert data[6 * SECTOR : 7 * SECTOR] != bytes(SECTOR)  # untouched neighbour (sector 6 starts with 6)
    _, status, _ = _request(b, q, BLK_T.DISCARD, 0, out=_segment(8, 1, flags=1))  # discard takes no flag
    assert status == BLK_S.UNSUPP
    _, status, _ = _request(b, q, BLK_T.DISCARD, 0, out=_segment(2047, 2))  # past the capacity
    assert status == BLK_S.IOERR
    b.device.model.close()  # type: ignore[attr-defined]


def test_a_device_without_discard_neither_offers_nor_serves_it(disk: Path) -> None:
    b, q = _bench(disk, discard=False, write_zeroes=False)
    assert not b.device.device_features & (bit(BLK_F.DISCARD) | bit(BLK_F.WRITE_ZEROES))
    _, status, _ = _request(b, q, BLK_T.DISCARD, 0, out=_segment(8, 1))
    assert status == BLK_S.UNSUPP
    assert disk.read_bytes()[8 * SECTOR : 8 * SECTOR + 4] == (8).to_bytes(4, "little")
    b.device.model.close()  # type: ignore[attr-defined]


def _cell(driver: str, device: str) -> dict:  # type: ignore[type-arg]
    return run_cell(Cell(driver, device, "pci-modern", "auto", "none", "off", "split", "blk-rw"))


@pytest.mark.parametrize("device", ["qemu-4.2", "qemu-7.2"])
def test_linux_5_0_overflows_its_discard_ranges_on_qemus_discard(device: str) -> None:
    got = _cell("linux-5.0", device)
    assert got["outcome"] == "CORRUPTION"
    assert "2 bios has room for 1 range(s) (max_discard_seg=1)" in got["detail"]
    assert "VIRTIO_BLK_F_DISCARD" in got["negotiated"]


def test_linux_6_1_sends_one_range_and_old_qemu_has_no_discard() -> None:
    fixed = _cell("linux-6.1", "qemu-7.2")
    assert fixed["outcome"] == "OK" and fixed["evidence"]["discard"] == "2 bios as 1 range(s), 8 sectors"
    old = _cell("linux-5.0", "qemu-2.9")  # QEMU before 4.0: nothing to discard with
    assert old["outcome"] == "OK" and old["evidence"]["discard"] == "not negotiated"
    assert "VIRTIO_BLK_F_DISCARD" not in old["negotiated"]
