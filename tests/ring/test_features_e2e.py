"""Packed rings and the optional ring features through the whole stack (virtio-mmio v2).

End to end: guest drivers and workloads over ``run_embedded`` with ``packed=on`` and the
other ring properties, per-queue reset under load with real blk requests, and, register
by register through the host's mmio transport, NOTIFICATION_DATA checking, RING_RESET of
one queue while another keeps running, IN_ORDER batching, and the error policies on
malformed packed rings.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.mmio_bench import Bench, make_bench
from virtio_sim import layouts as L
from virtio_sim.guest.drivers.blk import BlkDriver
from virtio_sim.guest.link import HostLink
from virtio_sim.guest.platform import GuestKernel, GuestPolicy
from virtio_sim.guest.virtio import DriverPolicy, GuestVirtqueue, RequestState
from virtio_sim.host.build import HostConfig, HostSetup, build_host
from virtio_sim.host.devices.base import DeviceModel, DeviceQueue
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.host.server import serve
from virtio_sim.host.virtio_device import ErrorPolicy
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.ring.chain import ChainReader, ChainWriter
from virtio_sim.ring.notify import encode_notify_data
from virtio_sim.ring.packed import PackedDeviceQueue, PackedDriverQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import BLK_S, BLK_T, MMIO_INT, STATUS, F, bit
from virtio_sim.wire import memory_link

SECTOR = 512


async def run(device: str, workload: str, **kw: Any) -> RunResult:
    return await run_embedded(RunConfig(device=device, workload=workload, **kw))


# --------------------------------------------------------------------------- whole runs


PACKED_COMBOS = [
    "packed=on",
    "packed=on,event_idx=off,indirect_desc=off",
    "packed=on,in_order=on,x-in-order-batch=on",
    "packed=on,notification_data=on,x-order-platform=on",
    "packed=on,in_order=on,notification_data=on,event_idx=off",
]


@pytest.mark.parametrize("props", PACKED_COMBOS)
@pytest.mark.parametrize("device,workload", [("virtio-blk-device", "blk-rw"), ("virtio-rng-device", "rng")])
async def test_workloads_over_packed_rings(device: str, workload: str, props: str) -> None:
    r = await run(f"{device},{props}", workload)
    assert r.outcome is Outcome.OK, (r.detail, r.violations, r.device_notes)
    assert r.transport == "mmio-v2"
    assert "VIRTIO_F_RING_PACKED" in r.negotiated
    assert r.ring["format"] == "packed"
    assert r.ring["device_format"] == PackedDeviceQueue.__name__
    assert not r.violations
    assert r.ring["in_order"] == ("in_order=on" in props)
    assert ("VIRTIO_F_EVENT_IDX" in r.negotiated) == ("event_idx=off" not in props)
    if "notification_data=on" in props:
        assert r.ring["notification_data"] and r.ring["notify_data_checked"] > 0
    else:
        assert r.ring["notify_data_checked"] == 0
    want = "platform" if "x-order-platform=on" in props else "weak"
    assert r.ring["barriers"] == r.ring["device_barriers"] == want
    assert ("VIRTIO_F_ORDER_PLATFORM" in r.negotiated) == (want == "platform")


@pytest.mark.parametrize("props", ["", "in_order=on,notification_data=on,x-in-order-batch=on"])
async def test_split_rings_keep_working_with_the_ring_features(props: str) -> None:
    r = await run("virtio-blk-device" + (f",{props}" if props else ""), "blk-rw")
    assert r.outcome is Outcome.OK, (r.detail, r.violations)
    assert r.ring["format"] == "split" and r.ring["device_format"] == SplitDeviceQueue.__name__
    assert "VIRTIO_F_RING_RESET" in r.negotiated  # queue_reset defaults to on (QEMU 7.2)
    assert "VIRTIO_F_RING_PACKED" not in r.negotiated  # packed defaults to off


async def test_packed_queue_size_need_not_be_a_power_of_two() -> None:
    policy = GuestPolicy(driver=DriverPolicy(max_queue_size=100))
    r = await run("virtio-blk-device,packed=on", "blk-rw", guest=policy)
    assert r.outcome is Outcome.OK, r.detail
    assert r.ring["queue_sizes"] == [100]
    r = await run("virtio-blk-device", "blk-rw", guest=policy)
    assert r.outcome is Outcome.OK
    assert r.ring["queue_sizes"] == [64]  # split: rounded down to a power of two


async def test_a_driver_without_packed_support_negotiates_split() -> None:
    old = DriverPolicy()
    old.known_features &= ~bit(F.RING_PACKED)
    r = await run("virtio-rng-device,packed=on", "rng", guest=GuestPolicy(driver=old))
    assert r.outcome is Outcome.OK
    assert r.device_features >> F.RING_PACKED & 1
    assert r.ring["format"] == "split"


def test_ring_properties_in_qemu_terms() -> None:
    b = build_device(parse_device_option("virtio-rng-device"))
    tf = b.transport_features
    assert (tf.packed, tf.in_order, tf.notification_data, tf.queue_reset) == (
        False,
        False,
        False,
        True,
    )
    assert tf.mask() & bit(F.RING_RESET) and not tf.mask() & bit(F.RING_PACKED)
    opts = "virtio-rng-device,packed=on,in_order=on,notification_data=on,queue_reset=off"
    tf = build_device(parse_device_option(opts + ",x-order-platform=on")).transport_features
    m = tf.mask()
    for f in (F.RING_PACKED, F.IN_ORDER, F.NOTIFICATION_DATA, F.ORDER_PLATFORM):
        assert m & bit(f)
    assert not m & bit(F.RING_RESET)


async def test_bad_ring_property_value_is_host_refused() -> None:
    r = await run("virtio-rng-device,packed=maybe", "rng")
    assert r.outcome is Outcome.HOST_REFUSED
    assert "packed" in r.detail


async def test_legacy_transport_offers_no_high_ring_features() -> None:
    r = await run("virtio-rng-device,packed=on,in_order=on", "rng", transport="mmio-v1")
    assert r.outcome is Outcome.OK
    assert r.device_features >> 32 == 0
    assert r.ring["format"] == "split"


# --------------------------------------------------------------------------- booted guest


async def with_guest(device: str, body: Callable[[GuestKernel, HostSetup], Awaitable[None]]) -> None:
    """Boot a guest against a host (embedded), probe, run ``body``, shut down."""
    with tempfile.TemporaryDirectory() as tmp:
        setup = build_host(HostConfig(devices=[device], scratch_dir=tmp, seed=1))
        try:
            host_end, guest_end = memory_link()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, host_end, setup.machine)
                link = HostLink(guest_end)
                nursery.start_soon(link.run)
                kernel = GuestKernel(link, setup.memory, 64 << 20, GuestPolicy())
                nursery.start_soon(kernel.irq_loop)
                await kernel.probe_mmio(setup.machine.kernel_cmdline())
                with trio.fail_after(20):
                    await body(kernel, setup)
                await link.bye()
                nursery.cancel_scope.cancel()
        finally:
            setup.close()


class RawBlk:
    """blk requests built by hand on a GuestVirtqueue, so a test controls the kicks."""

    def __init__(self, driver: BlkDriver) -> None:
        self.driver = driver
        self.dma = driver.dev.dma
        self.vq: GuestVirtqueue = driver.vq

    async def write(self, sector: int, data: bytes, *, kick: bool = True) -> tuple[Any, Any]:
        hdr = self.dma.alloc(L.BLK_REQ_HEADER_SIZE)
        buf = self.dma.alloc(len(data))
        status = self.dma.alloc(1)
        self.dma.write(hdr, L.blk_req_header_codec().pack(BLK_T.OUT, 0, sector))
        self.dma.write(buf, data)
        self.dma.write(status, b"\xff")
        req = await self.vq.start(
            [(hdr.dev_addr, L.BLK_REQ_HEADER_SIZE), (buf.dev_addr, len(data))],
            [(status.dev_addr, 1)],
            kick=kick,
        )
        return req, status


# Split rings with EVENT_IDX cannot stop interrupts (disable_cb only drops the hint), so
# the split case turns it off to keep completions on the ring until the reset.
@pytest.mark.parametrize(
    "props", ["packed=on", "event_idx=off", "packed=on,in_order=on,notification_data=on"]
)
async def test_ring_reset_under_load_loses_no_completed_request(props: str) -> None:
    """Completed-but-unreaped requests are reaped, never-seen ones are made available again."""
    device = "virtio-blk-device" + (f",{props}" if props else "")

    async def body(kernel: GuestKernel, setup: HostSetup) -> None:
        drv = kernel.bound("blk")[0].driver
        assert isinstance(drv, BlkDriver)
        raw = RawBlk(drv)
        vq = raw.vq
        rnd = random.Random(7)
        vq.ring.disable_cb()  # the device completes these without interrupting
        reqs: list[tuple[int, bytes, RequestState, Any]] = []
        for i in range(8):
            if i == 5:
                await drv.dev.transport.get_status()  # a read: the host has seen the kicks
            data = rnd.randbytes(SECTOR)
            req, status = await raw.write(10 + i, data, kick=i < 5)  # 3 never kicked
            reqs.append((10 + i, data, req, status))
        await vq.reset(size=64)
        assert vq.stats.reaped_at_reset == 5
        assert vq.stats.resubmitted == 3
        assert vq.size == 64
        for sector, data, req, status in reqs:
            await vq.wait(req)
            assert raw.dma.read(status, 1)[0] == BLK_S.OK
            assert await drv.read(sector, 1) == data
        assert setup.devices[0].queue_resets == [0]
        assert not setup.devices[0].violations
        # The re-enabled queue started afresh: slot 0 (wrap 1) / index 0.
        ring = setup.devices[0].queues[0].ring
        assert ring is not None and ring.size == 64

    await with_guest(device, body)


@pytest.mark.parametrize("props", ["packed=on", ""])
async def test_concurrent_io_with_repeated_queue_resets(props: str) -> None:
    device = "virtio-blk-device" + (f",{props}" if props else "")

    async def body(kernel: GuestKernel, setup: HostSetup) -> None:
        drv = kernel.bound("blk")[0].driver
        assert isinstance(drv, BlkDriver)
        done: list[int] = []

        async def worker(n: int) -> None:
            data = random.Random(n).randbytes(2 * SECTOR)
            await drv.write(100 + 2 * n, data)
            assert await drv.read(100 + 2 * n, 2) == data
            done.append(n)

        async def resetter() -> None:
            for size in (32, 100 if "packed" in props else 16, 128):
                await trio.sleep(0)
                await drv.vq.reset(size=size)

        async with trio.open_nursery() as n:
            for i in range(24):
                n.start_soon(worker, i)
            n.start_soon(resetter)
        assert sorted(done) == list(range(24))
        assert drv.vq.stats.resets == 3
        assert len(setup.devices[0].queue_resets) == 3
        assert not setup.devices[0].violations

    await with_guest(device, body)


# --------------------------------------------------------------------------- register level


class Echo2(DeviceModel):
    """A two-queue test device: copies each request's readable bytes into its writable part."""

    type_key = "console"
    num_queues = 2
    queue_max_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.served = [0, 0]
        self.queue_resets: list[int] = []

    def device_features(self) -> int:
        return 0

    def config_space(self) -> bytes:
        return b""

    def reset_queue(self, index: int) -> None:
        self.queue_resets.append(index)

    def process(self, queue: DeviceQueue) -> int:
        n = 0
        while (c := queue.pop()) is not None:
            data = ChainReader(queue.space, c.readable).read(c.readable_len)
            w = ChainWriter(queue.space, c.writable)
            w.write(data)
            queue.push(c.head, w.written)
            self.served[queue.index] += 1
            n += 1
        return n


def packed_queue(b: Bench, index: int, size: int, **kw: Any) -> PackedDriverQueue:
    """Set up queue ``index`` as a packed ring by hand (desc, driver area, device area)."""
    drv_off = L.packed_ring_size(size)
    area = b.dma.alloc(drv_off + 2 * L.EVENT_SUPPRESS_SIZE, 16)
    addrs = SplitRingAddresses(area.gpa, area.gpa + drv_off, area.gpa + drv_off + 4)
    q = PackedDriverQueue(b.memory, size, addrs, **kw)
    b.w("QueueSel", index)
    b.w("QueueSize", size)
    for reg, addr in (
        ("QueueDesc", addrs.desc),
        ("QueueDriver", addrs.avail),
        ("QueueDevice", addrs.used),
    ):
        b.w(reg + "Low", addr & 0xFFFFFFFF)
        b.w(reg + "High", addr >> 32)
    b.w("QueueReady", 1)
    return q


def bench(model: DeviceModel, *, packed: bool, **props: bool) -> Bench:
    policy = ErrorPolicy.DROP if props.pop("drop", False) else ErrorPolicy.NEEDS_RESET
    b = make_bench(model, policy=policy)
    tf = b.device.transport_features
    tf.packed = packed
    for k, v in props.items():
        setattr(tf, k, v)
    b.negotiate()
    return b


def queue(b: Bench, index: int, size: int, *, packed: bool, **kw: Any) -> Any:
    if packed:
        return packed_queue(b, index, size, **kw)
    return b.setup_queue(index, size)


@pytest.mark.parametrize("packed", [True, False])
def test_queue_reset_leaves_other_queues_running(packed: bool) -> None:
    model = Echo2()
    b = bench(model, packed=packed)
    q0, q1 = (queue(b, i, 8, packed=packed) for i in (0, 1))
    b.driver_ok()
    buf = b.dma.alloc(64)
    b.memory.write(buf.gpa, b"ping")
    q0.add([(buf.gpa, 4)], [(buf.gpa + 16, 4)], "q0-a")
    q1.add([(buf.gpa, 4)], [(buf.gpa + 32, 4)], "q1-a")
    b.w("QueueSel", 0)
    b.w("QueueReset", 1)
    assert b.r("QueueReset") == 0  # done at once
    assert b.r("QueueReady") == 0
    b.w("QueueNotify", 0)  # the reset queue serves nothing ...
    b.w("QueueNotify", 1)  # ... the other one keeps going
    assert model.served == [0, 1]
    assert q1.get_used() == ("q1-a", 4)
    assert q0.get_used() is None
    assert model.queue_resets == [0] and b.device.queue_resets == [0]
    # Re-enable queue 0 with a fresh ring of another size: it starts at slot 0 again.
    q0 = queue(b, 0, 4, packed=packed)
    q0.add([(buf.gpa, 4)], [(buf.gpa + 48, 4)], "q0-b")
    b.w("QueueNotify", 0)
    assert q0.get_used() == ("q0-b", 4)
    assert b.memory.read(buf.gpa + 48, 4) == b"ping"
    assert model.served == [1, 1]
    assert not any("without VIRTIO_F_RING_RESET" in n for n in b.device.notes)


def test_queue_reset_without_the_feature_is_noted() -> None:
    b = bench(Echo2(), packed=False, queue_reset=False)
    queue(b, 0, 4, packed=False)
    b.w("QueueSel", 0)
    b.w("QueueReset", 1)
    assert any("without VIRTIO_F_RING_RESET" in n for n in b.device.notes)


@pytest.mark.parametrize("packed", [True, False])
def test_notification_data_is_checked_against_the_ring(packed: bool) -> None:
    b = bench(Echo2(), packed=packed, notification_data=True)
    q = queue(b, 1, 8, packed=packed)
    b.driver_ok()
    buf = b.dma.alloc(64)
    q.add([(buf.gpa, 4)], [(buf.gpa + 16, 4)], "a")
    q.add([(buf.gpa, 4)], [(buf.gpa + 16, 4)], "b")
    b.w("QueueNotify", encode_notify_data(1, *q.notify_data()))
    assert b.device.notify_data_checked == 1 and not b.device.violations
    assert q.get_used() == ("a", 4) and q.get_used() == ("b", 4)
    b.w("QueueNotify", encode_notify_data(1, *q.notify_data()))  # a repeat: same value
    assert not b.device.violations
    off, wrap = q.notify_data()
    b.w("QueueNotify", encode_notify_data(1, off + 3, wrap))  # claims three more buffers
    assert [v.violation for v in b.device.violations] == ["notify-data-mismatch"]
    assert b.device.violations[0].queue == 1
    assert b.device.notify_data_checked == 3


def test_in_order_batch_completion_through_the_device() -> None:
    model = RngDevice(seed=5)
    b = bench(model, packed=True, in_order=True, in_order_batch=True)
    q = queue(b, 0, 8, packed=True, features=RingFeatures(in_order=True))
    b.driver_ok()
    bufs = [b.dma.alloc(32) for _ in range(4)]
    for i, buf in enumerate(bufs):
        q.add([], [(buf.gpa, 32)], i)
    b.w("QueueNotify", 0)
    dev_ring = b.device.queues[0].ring
    assert isinstance(dev_ring, PackedDeviceQueue)
    # One used descriptor for the whole run, at slot 0, naming the last buffer.
    import struct

    _, length, buf_id, flags = struct.unpack("<QIHH", b.memory.read(q.gpa.desc, 16))
    assert (length, buf_id) == (32, 3)
    for slot in (1, 2, 3):  # never written by the device: still the driver's AVAIL bits
        flags = struct.unpack("<QIHH", b.memory.read(q.gpa.desc + 16 * slot, 16))[3]
        assert flags & 0x8080 == 0x80
    assert b.r("InterruptStatus") & MMIO_INT.USED_BUFFER
    got = [q.get_used() for _ in range(4)]
    assert got == [(i, 32) for i in range(4)]
    stream = random.Random(5).randbytes(128)
    assert b"".join(b.memory.read(buf.gpa, 32) for buf in bufs) == stream
    assert q.get_used() is None and q.num_free == 8


@pytest.mark.parametrize("policy", ["drop", "needs-reset"])
def test_malformed_packed_ring_meets_the_error_policy(policy: str) -> None:
    model = Echo2()
    b = bench(model, packed=True, drop=policy == "drop")
    q = queue(b, 0, 8, packed=True)
    b.driver_ok()
    buf = b.dma.alloc(64)
    q.add([(1 << 40, 4)], [(buf.gpa, 4)], "bad")  # readable buffer outside guest RAM
    q.add([(buf.gpa, 4)], [(buf.gpa + 16, 4)], "good")
    b.w("QueueNotify", 0)
    v = b.device.violations
    assert [x.violation for x in v] == ["bad-address"]
    if policy == "drop":
        assert v[0].policy == "drop"
        assert q.get_used() == ("bad", 0)
        assert q.get_used() == ("good", 4)
        assert not b.r("Status") & STATUS.DEVICE_NEEDS_RESET
    else:
        assert v[0].policy == "needs-reset"
        assert b.r("Status") & STATUS.DEVICE_NEEDS_RESET
        assert b.r("InterruptStatus") & MMIO_INT.CONFIG_CHANGE
        assert q.get_used() is None
        assert model.served == [0, 0]


def test_split_driver_queue_type_is_unchanged_for_split() -> None:
    b = bench(Echo2(), packed=False)
    assert isinstance(queue(b, 0, 4, packed=False), SplitDriverQueue)


def test_cli_json_reports_the_ring(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    from virtio_sim.orchestration.cli import main

    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))  # the command line needs drive=, as QEMU does
    argv = ["run", "--device", f"virtio-blk-device,drive={disk},packed=on,x-order-platform=on"]
    assert main([*argv, "--workload", "blk-rw", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["outcome"] == "OK"
    assert r["ring_info"]["format"] == "packed" and r["ring_info"]["barriers"] == "platform"
    assert main([*argv, "--workload", "blk-rw"]) == 0
    assert "ring       packed, barriers platform" in capsys.readouterr().out
