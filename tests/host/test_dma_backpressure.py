"""DMA memory mode against a guest that does not read (issue 23 item 4).

In DMA mode every frame the host sends goes through one FIFO (host/remote_dma.py). A
guest that never reads what it is sent must not grow that FIFO without bound: past
specs/limits.toml [wire] max_unsent_frames / max_unsent_bytes the connection is closed,
with that reason. And the guest's own read-ahead overflowing is reported as what it
was: "while a device waited for DMA" only when a device really waited.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from virtio_sim import wire
from virtio_sim.handshake import guest_handshake
from virtio_sim.host.machine import MICROVM_MMIO_BASE, MICROVM_MMIO_SLOTS
from virtio_sim.host.process import HostOptions, HostServer, plan_host
from virtio_sim.host.remote_dma import DmaPort
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.sockets import Address, SocketFrameChannel, UnixAddress, connect
from virtio_sim.spec import LIMITS, STATUS
from virtio_sim.wire import MsgType

BOUND = 20.0
MMIO_BASE = MICROVM_MMIO_BASE + (MICROVM_MMIO_SLOTS - 1) * MMIO_WINDOW


def reg(name: str) -> int:
    return MMIO_BASE + MMIO_OFFSETS[name]


class NeverReads:
    """A FrameChannel whose peer never takes a frame: send() blocks for good."""

    async def send(self, frame: wire.Frame) -> None:
        await trio.sleep_forever()

    async def receive(self) -> wire.Frame:
        await trio.sleep_forever()
        raise AssertionError

    async def aclose(self) -> None:
        pass


async def test_the_reply_fifo_is_bounded_and_overflow_ends_the_connection() -> None:
    limit = LIMITS.wire.max_unsent_frames
    port = DmaPort(NeverReads(), reply_timeout=math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(port.run_sender)
        for seq in range(limit + 50):  # what the dispatcher does for each unread MMIO_READ
            port.post(wire.read_reply(seq, 0))
        with trio.fail_after(BOUND):
            reason = await port.wait_overflow()
        nursery.cancel_scope.cancel()
    assert "does not read" in reason and str(limit) in reason
    assert port.failure == reason  # every DMA transfer on it fails from now on
    assert port.peak_unsent_frames <= limit and port.unsent_frames <= limit


@asynccontextmanager
async def dma_host(tmp_path: Path) -> AsyncIterator[tuple[HostServer, Address, io.StringIO]]:
    out = io.StringIO()
    opts = HostOptions(
        listen=UnixAddress(str(tmp_path / "h.sock")),
        devices=["virtio-rng-device"],
        ram_size=4 << 20,
        memory="dma",
        frame_timeout=BOUND,
    )
    server = HostServer(plan_host(opts), out=out, err=io.StringIO())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        yield server, address, out
        nursery.cancel_scope.cancel()


def ended(out: io.StringIO) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return [e for e in events if e["event"] == "guest-ended"]


async def wait_ended(out: io.StringIO) -> dict[str, Any]:
    with trio.fail_after(BOUND):
        while not ended(out):
            await trio.sleep(0.01)
    return ended(out)[0]


async def test_a_guest_that_never_reads_is_dropped_at_the_bound(tmp_path: Path) -> None:
    """End to end: a DMA-mode guest sends register reads and never reads a reply. Reads
    go out in batches the host has handled, so its read-ahead never overflows: what
    grows is the host's queue of replies, until the bound closes the connection."""
    async with dma_host(tmp_path) as (server, address, out):
        ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            await guest_handshake(ch, secret=None, can_take_fds=False)
        (conn,) = server.live.values()
        batch = wire.access(MsgType.MMIO_READ, 1, reg("MagicValue"), 4).encode() * 512
        sent = 0
        with trio.fail_after(4 * BOUND):
            while not ended(out):
                try:
                    await ch.send_raw(batch)
                except trio.EndOfChannel:
                    break
                sent += 512
                # The host answered the batch (each read: one READ_REPLY sent or queued),
                # or hung up.
                while conn.channel.frames_out + conn.port.unsent_frames < sent and not ended(out):
                    await trio.sleep(0.005)
        record = await wait_ended(out)
        await ch.aclose()
    assert record["end"] == "error" and "does not read what it is sent" in record["reason"]
    assert record["dma"]["peak_unsent_frames"] <= LIMITS.wire.max_unsent_frames
    assert record["dma"]["peak_unsent_bytes"] <= LIMITS.wire.max_unsent_bytes


async def test_a_read_ahead_flood_names_a_dma_wait_only_when_there_was_one(tmp_path: Path) -> None:
    """A guest floods posted writes: without any DMA in flight, the overflow says the
    guest ran ahead of the host; with a device blocked on a DMA_READ the guest ignores,
    it says so."""
    flood = wire.access(MsgType.MMIO_WRITE, 0, reg("InterruptACK"), 4, 0).encode()
    flood *= LIMITS.wire.max_queued_frames + 100
    # No device waits: the writes alone (each one a hop to the connection's worker thread).
    async with dma_host(tmp_path) as (_, address, out):
        ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            await guest_handshake(ch, secret=None, can_take_fds=False)
            await ch.send_raw(flood)
        record = await wait_ended(out)
        await ch.aclose()
    assert record["end"] in ("error", "lost"), record
    assert "while a device waited for DMA" not in record["reason"]
    if "frames" in record["reason"]:
        assert "ahead of the host's replies" in record["reason"]
    # A device waits: a queue is set up and notified; the rng device's DMA_READ of the
    # avail ring goes unanswered while the guest floods.
    (tmp_path / "2").mkdir(mode=0o700)
    async with dma_host(tmp_path / "2") as (_, address, out):
        ch = SocketFrameChannel(await connect(address), frame_timeout=BOUND)
        with trio.fail_after(BOUND):
            await guest_handshake(ch, secret=None, can_take_fds=False)
            status = STATUS.ACKNOWLEDGE | STATUS.DRIVER
            setup = [
                ("Status", status),
                ("DriverFeaturesSel", 1),
                ("DriverFeatures", 1),  # VERSION_1 (bit 32)
                ("Status", status | STATUS.FEATURES_OK),
                ("QueueSel", 0),
                ("QueueSize", 8),
                ("QueueDescLow", 0x1000),
                ("QueueDriverLow", 0x2000),
                ("QueueDeviceLow", 0x3000),
                ("QueueReady", 1),
                ("Status", status | STATUS.FEATURES_OK | STATUS.DRIVER_OK),
                ("QueueNotify", 0),
            ]
            for name, value in setup:
                await ch.send(wire.access(MsgType.MMIO_WRITE, 0, reg(name), 4, value))
            frame = await ch.receive()
            assert frame.type is MsgType.DMA_READ  # the device waits for the avail ring
            await ch.send_raw(flood)
        record = await wait_ended(out)
        await ch.aclose()
    waited = f"more than {LIMITS.wire.max_queued_frames} frames while a device waited for DMA"
    assert waited in record["reason"]
