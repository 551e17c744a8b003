"""The vhost-user back-end against a front-end written here (no QEMU needed).

The front-end speaks the protocol byte for byte (headers and payloads built from the
construct declarations, fds passed with SCM_RIGHTS), hands over a memfd as guest RAM and
drives a ring with our own driver-side split ring, kicking and waiting on eventfds like
QEMU's guest would. Then it misbehaves: every malformed message must end in a clear note,
a failed REPLY_ACK or a closed connection, never a crash or a hang.
"""

from __future__ import annotations

import array
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from virtio_sim import layouts
from virtio_sim.guest.allocator import PageAllocator
from virtio_sim.guest.dma import DirectDma
from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.host.vhost_user import VhostUserBackend, serve_socket
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.packed import PackedDriverQueue
from virtio_sim.ring.split import SplitDriverQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures
from virtio_sim.spec import (
    BLK_F,
    DESC_F,
    VU_BACKEND_REQ,
    VU_F,
    VU_FLAGS,
    VU_PROTOCOL_F,
    VU_REQ,
    VU_VRING,
    F,
    bit,
)

RAM = 4 << 20
UVA_BASE = 0x7F00_0000_0000  # where the "front-end" pretends to have mapped guest RAM
QSIZE = 8


class Frontend:
    """A minimal vhost-user front-end over a connected trio socket."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    async def send(
        self, request: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0
    ) -> None:
        hdr = layouts.vhost_user_header_codec.pack(request, VU_FLAGS.version | flags, len(payload))
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        await self.sock.sendmsg([hdr + payload], anc)

    async def reply(self, request: int) -> bytes:
        hdr = await self._exactly(layouts.VHOST_USER_HEADER_SIZE)
        req, flags, size = layouts.vhost_user_header_codec.unpack(hdr)
        assert req == request and flags & VU_FLAGS.reply
        return await self._exactly(size)

    async def _exactly(self, n: int) -> bytes:
        out = b""
        with trio.fail_after(5):
            while len(out) < n:
                chunk = await self.sock.recv(n - len(out))
                if not chunk:
                    raise EOFError("back-end closed the connection")
                out += chunk
        return out

    async def get_u64(self, request: int) -> int:
        await self.send(request)
        return int(layouts.vhost_user_u64_codec.unpack(await self.reply(request))[0])

    async def set_u64(
        self, request: int, value: int, fds: list[int] | None = None, ack: bool = False
    ) -> int | None:
        await self.send(
            request, layouts.vhost_user_u64_codec.pack(value), fds, VU_FLAGS.need_reply if ack else 0
        )
        return await self.ack(request) if ack else None

    async def ack(self, request: int) -> int:
        return int(layouts.vhost_user_u64_codec.unpack(await self.reply(request))[0])

    async def state(self, request: int, index: int, num: int, ack: bool = False) -> int | None:
        payload = layouts.vhost_user_vring_state_codec.pack(index, num)
        await self.send(request, payload, flags=VU_FLAGS.need_reply if ack else 0)
        return await self.ack(request) if ack else None

    async def mem_table(self, regions: list[tuple[int, int, int, int]], fds: list[int]) -> int:
        payload = layouts.build_vhost_user_memory(regions)
        await self.send(VU_REQ.SET_MEM_TABLE, payload, fds, VU_FLAGS.need_reply)
        return await self.ack(VU_REQ.SET_MEM_TABLE)

    async def vring_addr(self, index: int, addrs: SplitRingAddresses, ack: bool = True) -> int | None:
        payload = layouts.vhost_user_vring_addr_codec.pack(
            index, 0, UVA_BASE + addrs.desc, UVA_BASE + addrs.used, UVA_BASE + addrs.avail, 0
        )
        await self.send(VU_REQ.SET_VRING_ADDR, payload, flags=VU_FLAGS.need_reply if ack else 0)
        return await self.ack(VU_REQ.SET_VRING_ADDR) if ack else None


class Guest:
    """Guest RAM (a memfd we share) and one driver-side ring in it."""

    def __init__(self) -> None:
        self.memory = GuestMemory.create(RAM)
        self.dma = DirectDma(self.memory, PageAllocator(1 << 20, RAM))
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.err = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ring: SplitDriverQueue | None = None

    def make_ring(self, event_idx: bool = True) -> SplitRingAddresses:
        d = layouts.desc_table_size(QSIZE)
        a = layouts.avail_ring_size(QSIZE)
        area = self.dma.alloc(4096, 4096)
        addrs = SplitRingAddresses(area.gpa, area.gpa + d, area.gpa + layouts.align_up(d + a, 4))
        self.ring = SplitDriverQueue(
            self.memory, QSIZE, addrs, RingFeatures(event_idx=event_idx), indirect_pool=self.dma
        )
        return addrs

    def ram_fd(self) -> int:
        return os.dup(self.memory.backing.fd)

    async def wait_call(self) -> None:
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(self.call)
        os.read(self.call, 8)

    def close(self) -> None:
        for fd in (self.kick, self.call, self.err):
            os.close(fd)
        self.memory.close()


@asynccontextmanager
async def backend(
    tmp_path: Path, option: str
) -> AsyncIterator[tuple[Frontend, list[VhostUserBackend | None]]]:
    path = str(tmp_path / "vu.sock")
    built = build_device(parse_device_option(option))
    out: list[VhostUserBackend | None] = []

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        out.append(await serve_socket(path, built, task_status=task_status))

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.connect(path)
        try:
            yield Frontend(sock), out
        finally:
            sock.close()
        with trio.fail_after(5):
            while not out:
                await trio.sleep(0.01)
    close = getattr(built.model, "close", None)
    if close:
        close()


async def start_ring(fe: Frontend, g: Guest, features: int, base: int = 0) -> None:
    """What QEMU's vhost_dev_start does, for ring 0."""
    await fe.set_u64(VU_REQ.SET_FEATURES, features | bit(VU_F.PROTOCOL_FEATURES))
    assert await fe.mem_table([(0, RAM, UVA_BASE, 0)], [g.ram_fd()]) == 0
    addrs = g.make_ring(event_idx=bool(features >> F.EVENT_IDX & 1)) if g.ring is None else g.ring.gpa
    assert await fe.state(VU_REQ.SET_VRING_NUM, 0, QSIZE, ack=True) == 0
    assert await fe.state(VU_REQ.SET_VRING_BASE, 0, base, ack=True) == 0
    assert await fe.vring_addr(0, addrs) == 0
    await fe.set_u64(VU_REQ.SET_VRING_CALL, 0, [g.call])
    await fe.set_u64(VU_REQ.SET_VRING_ERR, 0, [g.err])
    await fe.set_u64(VU_REQ.SET_VRING_KICK, 0, [g.kick])
    assert await fe.state(VU_REQ.SET_VRING_ENABLE, 0, 1, ack=True) == 0


async def handshake(fe: Frontend) -> tuple[int, int]:
    features = await fe.get_u64(VU_REQ.GET_FEATURES)
    protocol = await fe.get_u64(VU_REQ.GET_PROTOCOL_FEATURES)
    await fe.set_u64(VU_REQ.SET_PROTOCOL_FEATURES, protocol)
    await fe.send(VU_REQ.SET_OWNER)
    return features, protocol


async def rng_request(g: Guest, n: int) -> bytes:
    assert g.ring is not None
    buf = g.dma.alloc(n)
    g.memory.write(buf.gpa, b"\xa5" * n)
    g.ring.add([], [(buf.gpa, n)], "req")
    if g.ring.kick_prepare():
        os.write(g.kick, (1).to_bytes(8, "little"))
    await g.wait_call()
    token, length = g.ring.get_used() or (None, 0)
    assert token == "req"
    g.ring.enable_cb()  # with EVENT_IDX: used_event = last_used, or the next one is suppressed
    return g.memory.read(buf.gpa, length)


async def test_rng_served_end_to_end_and_resumed_from_its_base(tmp_path: Path) -> None:
    g = Guest()
    expected = random.Random(7)
    async with backend(tmp_path, "virtio-rng-device,x-seed=7") as (fe, out):
        features, protocol = await handshake(fe)
        assert features >> VU_F.PROTOCOL_FEATURES & 1
        assert features >> F.EVENT_IDX & 1 and features >> F.INDIRECT_DESC & 1
        assert protocol >> VU_PROTOCOL_F.REPLY_ACK & 1
        assert not protocol >> VU_PROTOCOL_F.CONFIG & 1  # no config space, no CONFIG
        assert await fe.get_u64(VU_REQ.GET_QUEUE_NUM) == 1
        await start_ring(fe, g, bit(F.VERSION_1) | bit(F.EVENT_IDX))
        for n in (16, 64, 256):
            assert await rng_request(g, n) == expected.randbytes(n)
        # stop (GET_VRING_BASE) and start again from the returned base, as QEMU does
        await fe.state(VU_REQ.GET_VRING_BASE, 0, 0)
        index, base = layouts.vhost_user_vring_state_codec.unpack(await fe.reply(VU_REQ.GET_VRING_BASE))
        assert (index, base) == (0, 3)
        await start_ring(fe, g, bit(F.VERSION_1) | bit(F.EVENT_IDX), base=base)
        assert await rng_request(g, 32) == expected.randbytes(32)
    report = out[0].report()  # type: ignore[union-attr]
    assert report["violations"] == [] and report["ended"] == "front-end closed the connection"
    assert report["rng"]["bytes_served"] == 16 + 64 + 256 + 32
    assert report["negotiated"] == ["VIRTIO_F_EVENT_IDX", "VIRTIO_F_VERSION_1"]
    g.close()


async def test_blk_config_over_get_config(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    async with backend(tmp_path, f"virtio-blk-device,drive={disk}") as (fe, out):
        features, protocol = await handshake(fe)
        assert protocol >> VU_PROTOCOL_F.CONFIG & 1
        assert features >> BLK_F.FLUSH & 1 and features >> BLK_F.SEG_MAX & 1
        size = 60  # what QEMU 7.2's vhost-user-blk asks for
        req = bytes(
            layouts.vhost_user_config(0).build({"offset": 0, "size": size, "flags": 0, "payload": b""})
        )
        await fe.send(VU_REQ.GET_CONFIG, req + bytes(size))
        reply = layouts.vhost_user_config(size).parse(await fe.reply(VU_REQ.GET_CONFIG))
        cfg = layouts.VirtioBlkConfig.parse(reply.payload.ljust(layouts.VirtioBlkConfig.sizeof(), b"\0"))
        assert cfg.capacity == 64 and cfg.blk_size == 512
        # a range past the config space comes back zero-filled, with a note
        await fe.send(
            VU_REQ.GET_CONFIG,
            bytes(
                layouts.vhost_user_config(8).build(
                    {"offset": 250, "size": 8, "flags": 0, "payload": bytes(8)}
                )
            ),
        )
        assert layouts.vhost_user_config(8).parse(await fe.reply(VU_REQ.GET_CONFIG)).payload == bytes(8)
    assert any("GET_CONFIG" in n for n in out[0].report()["notes"])  # type: ignore[union-attr]


async def test_ring_violation_is_recorded_and_signalled(tmp_path: Path) -> None:
    g = Guest()
    async with backend(tmp_path, "virtio-rng-device") as (fe, out):
        await handshake(fe)
        await start_ring(fe, g, bit(F.VERSION_1))
        assert g.ring is not None
        g.ring.add([], [(RAM + 0x1000, 64)], "bad")  # a buffer outside guest RAM
        os.write(g.kick, (1).to_bytes(8, "little"))
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(g.err)
    report = out[0].report()  # type: ignore[union-attr]
    assert [v["violation"] for v in report["violations"]] == ["bad-address"]
    assert report["queues"][0]["errors_signalled"] == 1
    g.close()


async def test_indirect_chains_are_counted(tmp_path: Path) -> None:
    g = Guest()
    async with backend(tmp_path, "virtio-rng-device,x-seed=1") as (fe, out):
        await handshake(fe)
        await start_ring(fe, g, bit(F.VERSION_1) | bit(F.INDIRECT_DESC))
        assert g.ring is not None
        a, b = g.dma.alloc(32), g.dma.alloc(32)
        g.ring.add([], [(a.gpa, 32), (b.gpa, 32)], "two")
        assert g.memory.read(g.ring.gpa.desc + layouts.DESC_SIZE * 0 + 12, 2) == DESC_F.INDIRECT.to_bytes(
            2, "little"
        )
        os.write(g.kick, (1).to_bytes(8, "little"))
        await g.wait_call()
        assert g.ring.get_used() == ("two", 64)
    assert out[0].report()["queues"][0]["indirect_chains"] == 1  # type: ignore[union-attr]
    g.close()


async def test_bad_memory_tables_are_refused_with_reply_ack(tmp_path: Path) -> None:
    g = Guest()
    async with backend(tmp_path, "virtio-rng-device") as (fe, out):
        await handshake(fe)
        # larger than the file behind it
        assert await fe.mem_table([(0, RAM * 2, UVA_BASE, 0)], [g.ram_fd()]) == 1
        # overlapping regions
        assert (
            await fe.mem_table(
                [(0, RAM, UVA_BASE, 0), (0x1000, 0x1000, UVA_BASE + RAM, 0)], [g.ram_fd(), g.ram_fd()]
            )
            == 1
        )
        # unaligned mmap offset
        assert await fe.mem_table([(0, 0x1000, UVA_BASE, 12)], [g.ram_fd()]) == 1
        # fewer fds than regions
        assert (
            await fe.mem_table([(0, 0x1000, UVA_BASE, 0), (RAM, 0x1000, UVA_BASE + RAM, 0)], [g.ram_fd()])
            == 1
        )
        # a good table, then a ring whose addresses are in no region
        assert await fe.mem_table([(0, RAM, UVA_BASE, 0)], [g.ram_fd()]) == 0
        await fe.set_u64(VU_REQ.SET_FEATURES, bit(F.VERSION_1) | bit(VU_F.PROTOCOL_FEATURES))
        assert await fe.state(VU_REQ.SET_VRING_NUM, 0, 7, ack=True) == 1  # not a power of two
        assert await fe.state(VU_REQ.SET_VRING_NUM, 5, 8, ack=True) == 1  # no such ring
        assert await fe.state(VU_REQ.SET_VRING_NUM, 0, 8, ack=True) == 0
        await fe.set_u64(VU_REQ.SET_VRING_KICK, 0, [g.kick])
        assert await fe.state(VU_REQ.SET_VRING_ENABLE, 0, 1, ack=True) == 0
        far = SplitRingAddresses(RAM * 4, RAM * 4 + 0x100, RAM * 4 + 0x200)
        assert await fe.vring_addr(0, far) == 1
        # the connection is still usable
        assert await fe.get_u64(VU_REQ.GET_QUEUE_NUM) == 1
    notes = " ".join(out[0].report()["notes"])  # type: ignore[union-attr]
    for words in (
        "larger than its file",
        "overlap",
        "not page aligned",
        "file descriptors",
        "power of two",
        "in no memory region",
    ):
        assert words in notes
    g.close()


@pytest.mark.parametrize(
    ("raw", "fds", "why"),
    [
        (layouts.vhost_user_header_codec.pack(VU_REQ.GET_FEATURES, 2, 0), 0, "version"),
        (layouts.vhost_user_header_codec.pack(VU_REQ.SET_FEATURES, 1, 1 << 20), 0, "exceeds"),
        (
            layouts.vhost_user_header_codec.pack(VU_REQ.SET_FEATURES, 1, 8) + b"\0" * 4,
            0,
            "inside a 8-byte payload",
        ),
        (layouts.vhost_user_header_codec.pack(VU_REQ.SET_FEATURES, 1, 4) + b"\0" * 4, 0, "expected 8"),
        (
            layouts.vhost_user_header_codec.pack(VU_REQ.SET_VRING_KICK, 1, 8) + (0).to_bytes(8, "little"),
            0,
            "expected one fd",
        ),
        (
            layouts.vhost_user_header_codec.pack(VU_REQ.SET_VRING_CALL, 1, 8)
            + VU_VRING.nofd.to_bytes(8, "little"),
            1,
            "NOFD",
        ),
        (layouts.vhost_user_header_codec.pack(VU_REQ.GET_STATUS, 1, 0), 0, "not supported"),
        (b"\x01\x00", 0, "inside a message header"),
    ],
)
async def test_protocol_errors_end_the_connection_cleanly(
    tmp_path: Path, raw: bytes, fds: int, why: str
) -> None:
    extra = [os.eventfd(0) for _ in range(fds)]
    async with backend(tmp_path, "virtio-rng-device") as (fe, out):
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", extra))] if extra else []
        await fe.sock.sendmsg([raw], anc)
        if why.startswith("inside"):
            fe.sock.shutdown(socket.SHUT_WR)
        with trio.fail_after(5):
            assert await fe.sock.recv(16) == b""  # the back-end hung up
    assert why in out[0].ended  # type: ignore[union-attr]
    for fd in extra:
        os.close(fd)


def test_cli_serves_one_front_end_and_writes_its_report(tmp_path: Path) -> None:
    sock = tmp_path / "vu.sock"
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "virtio_sim.orchestration.cli",
        "vhost-user",
        "--socket",
        str(sock),
        "-device",
        "virtio-rng-device,x-seed=3",
        "--report",
        str(report),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()

        async def drive() -> None:
            g = Guest()
            s = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await s.connect(str(sock))
            fe = Frontend(s)
            await handshake(fe)
            await start_ring(fe, g, bit(F.VERSION_1))
            assert await rng_request(g, 8) == random.Random(3).randbytes(8)
            s.close()
            g.close()

        trio.run(drive)
        assert proc.wait(timeout=10) == 0
        data = json.loads(report.read_text())
        assert data["rng"]["bytes_served"] == 8 and data["violations"] == []
        assert "queue 0" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_cli_refuses_devices_it_cannot_serve(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtio_sim.orchestration.cli",
            "vhost-user",
            "--socket",
            str(tmp_path / "s"),
            "-device",
            "virtio-serial-device",  # QEMU 7.2 has no vhost-user front-end for a console
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "cannot be served over vhost-user" in done.stderr


@pytest.mark.parametrize(
    ("request_", "payload", "why"),
    [
        # a vring that does not exist: refused, and the protocol has no failed reply for it
        (VU_REQ.GET_VRING_BASE, layouts.vhost_user_vring_state_codec.pack(5, 0), "refused GET_VRING_BASE"),
        # a config range the back-end will not serve
        (
            VU_REQ.GET_CONFIG,
            bytes(
                layouts.vhost_user_config(0).build({"offset": 0, "size": 4096, "flags": 0, "payload": b""})
            ),
            "GET_CONFIG",
        ),
    ],
)
async def test_a_refused_get_request_is_answered_by_hanging_up_with_a_reason(
    tmp_path: Path, request_: int, payload: bytes, why: str
) -> None:
    """A GET_* that cannot be carried out must not leave the front-end waiting for a reply
    that never comes (issue 23 item 6: QEMU blocked in vhost_user_read): the back-end
    closes the connection and says why, even when the front-end asked for a REPLY_ACK."""
    async with backend(tmp_path, "virtio-rng-device") as (fe, out):
        await handshake(fe)
        await fe.send(request_, payload, flags=VU_FLAGS.need_reply)
        with trio.fail_after(5):
            assert await fe.sock.recv(16) == b""  # the back-end hung up instead of going silent
    ended = out[0].ended  # type: ignore[union-attr]
    assert why in ended, ended


async def test_packed_ring_served_and_resumed_from_its_base(tmp_path: Path) -> None:
    """RING_PACKED over vhost-user: SET_VRING_ADDR names the descriptor ring and the two
    event areas; GET_VRING_BASE gives avail idx | wrap << 15 and the used half in bits
    16-31 (QEMU 7.2's encoding), and a ring started from it continues where it stopped."""
    g = Guest()
    expected = random.Random(3)
    size = QSIZE
    area = g.dma.alloc(4096, 4096)
    addrs = SplitRingAddresses(area.gpa, area.gpa + layouts.packed_ring_size(size), area.gpa + 2048)
    g.ring = PackedDriverQueue(g.memory, size, addrs)  # type: ignore[assignment]
    feats = bit(F.VERSION_1) | bit(F.RING_PACKED)
    async with backend(tmp_path, "virtio-rng-device,x-seed=3,packed=on") as (fe, out):
        features, _ = await handshake(fe)
        assert features >> F.RING_PACKED & 1
        fresh = 0x8000 | 0x8000 << 16  # slot 0, both wrap counters 1: what QEMU sends first
        await start_ring(fe, g, feats, base=fresh)
        for n in (16, 32, 64) * 3:  # more requests than the ring has slots: the wrap flips
            assert await rng_request(g, n) == expected.randbytes(n)
        await fe.state(VU_REQ.GET_VRING_BASE, 0, 0)
        _, base = layouts.vhost_user_vring_state_codec.unpack(await fe.reply(VU_REQ.GET_VRING_BASE))
        assert base & 0x7FFF == 9 % size and base >> 15 & 1 == 0  # 9 slots used: second lap
        assert base >> 16 == base & 0xFFFF  # everything completed: used == avail
        await start_ring(fe, g, feats, base=base)
        assert await rng_request(g, 8) == expected.randbytes(8)
    report = out[0].report()  # type: ignore[union-attr]
    assert report["violations"] == [] and report["queues"][0]["chains"] == 10
    g.close()


async def _blk_config(fe: Frontend) -> Any:
    size = 60
    req = bytes(layouts.vhost_user_config(0).build({"offset": 0, "size": size, "flags": 0, "payload": b""}))
    await fe.send(VU_REQ.GET_CONFIG, req + bytes(size))
    reply = layouts.vhost_user_config(size).parse(await fe.reply(VU_REQ.GET_CONFIG))
    return layouts.VirtioBlkConfig.parse(reply.payload.ljust(layouts.VirtioBlkConfig.sizeof(), b"\0"))


async def test_seg_max_follows_the_ring_the_front_end_sets_up(tmp_path: Path) -> None:
    """QEMU reads the config before SET_VRING_NUM: when the ring then comes out smaller
    than the config assumed, seg_max follows it, the change is reported and announced
    to the front-end (CONFIG_CHANGE_MSG on the back-end channel)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    async with backend(tmp_path, f"virtio-blk-device,drive={disk}") as (fe, out):
        _, protocol = await handshake(fe)
        assert protocol >> VU_PROTOCOL_F.BACKEND_REQ & 1
        await fe.send(VU_REQ.SET_BACKEND_REQ_FD, b"", [theirs.fileno()], VU_FLAGS.need_reply)
        assert await fe.ack(VU_REQ.SET_BACKEND_REQ_FD) == 0
        assert (await _blk_config(fe)).seg_max == 254  # the model's 256-entry queue
        assert await fe.state(VU_REQ.SET_VRING_NUM, 0, 64, ack=True) == 0
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(ours.fileno())
        request, _flags, size = layouts.vhost_user_header_codec.unpack(ours.recv(12))
        assert (request, size) == (VU_BACKEND_REQ.CONFIG_CHANGE_MSG, 0)
        assert (await _blk_config(fe)).seg_max == 62
    assert any("SET_VRING_NUM 64" in n for n in out[0].report()["notes"])  # type: ignore[union-attr]
    ours.close()
    theirs.close()
