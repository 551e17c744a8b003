"""virtio-blk device model: data on disk, request validation, error policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mmio_bench import Bench, make_bench
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.virtio_device import ErrorPolicy
from virtio_sim.layouts import blk_req_header_codec, desc_codec
from virtio_sim.spec import BLK_S, BLK_T, DESC_F, STATUS

SECTOR = 512


def _request(b: Bench, q, rtype: int, sector: int, out: bytes = b"", in_len: int = 0, status_len: int = 1):  # type: ignore[no-untyped-def]
    hdr = b.dma.alloc(16)
    b.memory.write(hdr.gpa, blk_req_header_codec().pack(rtype, 0, sector))
    data = b.dma.alloc(max(len(out), in_len, 1))
    st = b.dma.alloc(max(status_len, 1))
    b.memory.write(st.gpa, b"\xee" * max(status_len, 1))
    outs = [(hdr.gpa, 16)]
    ins = []
    if out:
        b.memory.write(data.gpa, out)
        outs.append((data.gpa, len(out)))
    if in_len:
        ins.append((data.gpa, in_len))
    if status_len:
        ins.append((st.gpa, status_len))
    q.add(outs, ins, "req")
    b.w("QueueNotify", 0)
    used = q.get_used()
    return used, b.memory.read(st.gpa, 1)[0], data


@pytest.fixture
def bench(disk: Path):  # type: ignore[no-untyped-def]
    b = make_bench(BlkDevice(str(disk)))
    b.negotiate()
    q = b.setup_queue(0, 16)
    b.driver_ok()
    yield b, q
    b.device.model.close()  # type: ignore[attr-defined]


def test_write_then_read_lands_on_disk(bench, disk: Path) -> None:  # type: ignore[no-untyped-def]
    b, q = bench
    payload = bytes(range(256)) * 4  # two sectors
    (_tok, used), status, _ = _request(b, q, BLK_T.OUT, 10, out=payload)
    assert status == BLK_S.OK and used == 1
    with disk.open("rb") as f:
        f.seek(10 * SECTOR)
        assert f.read(2 * SECTOR) == payload
    (_tok, used), status, data = _request(b, q, BLK_T.IN, 10, in_len=2 * SECTOR)
    assert status == BLK_S.OK and used == 2 * SECTOR + 1
    assert b.memory.read(data.gpa, 2 * SECTOR) == payload


def test_read_beyond_capacity_is_ioerr_and_disk_untouched(bench, disk: Path) -> None:  # type: ignore[no-untyped-def]
    b, q = bench
    before = disk.read_bytes()
    (_, used), status, _ = _request(b, q, BLK_T.OUT, 2047, out=b"x" * (2 * SECTOR))
    assert status == BLK_S.IOERR and used == 1
    assert disk.read_bytes() == before


def test_partial_sector_write_is_refused(bench, disk: Path) -> None:  # type: ignore[no-untyped-def]
    b, q = bench
    before = disk.read_bytes()
    (_, _), status, _ = _request(b, q, BLK_T.OUT, 0, out=b"y" * 100)
    assert status == BLK_S.IOERR
    assert disk.read_bytes() == before


def test_unknown_type_is_unsupp(bench) -> None:  # type: ignore[no-untyped-def]
    b, q = bench
    (_, used), status, _ = _request(b, q, 99, 0)
    assert status == BLK_S.UNSUPP and used == 1


def test_get_id_and_flush(bench) -> None:  # type: ignore[no-untyped-def]
    b, q = bench
    (_, used), status, data = _request(b, q, BLK_T.GET_ID, 0, in_len=20)
    assert status == BLK_S.OK and used == 21
    assert b.memory.read(data.gpa, 20).rstrip(b"\0") == b"virtio-sim-blk"
    (_, used), status, _ = _request(b, q, BLK_T.FLUSH, 0)
    assert status == BLK_S.OK


def test_request_without_status_byte_is_dropped_with_len_0(bench) -> None:  # type: ignore[no-untyped-def]
    b, q = bench
    (_, used), _status, _ = _request(b, q, BLK_T.IN, 0, status_len=0, in_len=0)
    assert used == 0
    assert any("no writable status" in n for n in b.device.model.events.messages)


def test_read_only_device_refuses_writes(disk: Path) -> None:
    b = make_bench(BlkDevice(str(disk), read_only=True))
    b.negotiate()
    q = b.setup_queue(0, 8)
    b.driver_ok()
    before = disk.read_bytes()
    (_, _), status, _ = _request(b, q, BLK_T.OUT, 0, out=b"z" * SECTOR)
    assert status == BLK_S.IOERR
    assert disk.read_bytes() == before


def _post_loop(b: Bench, q) -> int:  # type: ignore[no-untyped-def]
    """Make a two-descriptor loop available by hand; returns the head."""
    buf = b.dma.alloc(64)
    head = q.add([(buf.gpa, 16)], [(buf.gpa + 16, 1), (buf.gpa + 32, 1)], "loop", use_indirect=False)
    # Rewrite the last descriptor so it points back at the one before it.
    _, second, third = q.inflight[head].descs
    flags = DESC_F.WRITE | DESC_F.NEXT
    b.memory.write(q.gpa.desc + 16 * third, desc_codec().pack(buf.gpa + 32, 1, flags, second))
    return head


def test_needs_reset_policy_on_descriptor_loop(disk: Path) -> None:
    b = make_bench(BlkDevice(str(disk)), policy=ErrorPolicy.NEEDS_RESET)
    b.negotiate()
    q = b.setup_queue(0, 8)
    b.driver_ok()
    _post_loop(b, q)
    b.w("QueueNotify", 0)
    assert b.r("Status") & STATUS.DEVICE_NEEDS_RESET
    assert b.r("InterruptStatus") & 2  # configuration change interrupt
    assert b.device.violations[0].violation == "chain-loop"
    # A broken device serves nothing until reset, and a reset clears NEEDS_RESET.
    b.w("QueueNotify", 0)
    assert len(b.device.violations) == 1
    b.w("Status", 0)
    assert b.r("Status") == 0


def test_drop_policy_completes_bad_head_with_len_0(disk: Path) -> None:
    b = make_bench(BlkDevice(str(disk)), policy=ErrorPolicy.DROP)
    b.negotiate()
    q = b.setup_queue(0, 8)
    b.driver_ok()
    _post_loop(b, q)
    b.w("QueueNotify", 0)
    assert not b.r("Status") & STATUS.DEVICE_NEEDS_RESET
    assert q.get_used() == ("loop", 0)
    assert b.device.violations[0].policy == "drop"
    # the queue keeps working
    (_, _used), status, _ = _request(b, q, BLK_T.FLUSH, 0)
    assert status == BLK_S.OK
