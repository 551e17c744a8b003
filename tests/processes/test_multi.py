"""One host process, several guests at once: one machine (devices, RAM, disks) each."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.support.processes import host, raw_channel, run_guest
from virtio_sim import wire
from virtio_sim.handshake import MemoryMode, guest_handshake, session_memory
from virtio_sim.host.machine import MICROVM_MMIO_BASE, MICROVM_MMIO_SLOTS
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.spec import MMIO, STATUS
from virtio_sim.wire import MsgType

# microvm: the first device sits in the highest slot
MMIO_BASE = MICROVM_MMIO_BASE + (MICROVM_MMIO_SLOTS - 1) * MMIO_WINDOW


async def test_two_guest_processes_at_once() -> None:
    with trio.fail_after(60):
        async with host("--listen", "unix:", "-device", "virtio-rng-device", "--seed", "21") as h:
            guests = []

            async def one() -> None:
                guests.append(await run_guest(h.address, "--workload", "rng-soak", "--seed", "21", "--json"))

            async with trio.open_nursery() as n:
                n.start_soon(one)
                n.start_soon(one)
            log = h.stderr
    assert [g.proc.returncode for g in guests] == [0, 0], [g.stderr for g in guests]
    results = [g.json_result() for g in guests]
    assert all(r["outcome"] == "OK" for r in results)
    # Each guest has its own rng device, so each read the seeded stream from its start.
    assert results[0]["workload"]["sha256"] == results[1]["workload"]["sha256"]
    # They really overlapped: the second connected before the first was done.
    assert log.index("guest 2: connected") < log.index("guest 1: ended")
    assert log.count("ended: guest said bye") == 2


async def _read(ch: wire.FrameChannel, seq: int, reg: str) -> int:
    await ch.send(wire.access(MsgType.MMIO_READ, seq, MMIO_BASE + MMIO_OFFSETS[reg], 4))
    while True:
        frame = await ch.receive()
        if frame.type is MsgType.READ_REPLY:
            assert frame.seq == seq
            return wire.parse_read_reply(frame)


async def test_each_connection_has_its_own_machine_and_memory() -> None:
    """A connection held open across a whole other guest run keeps its own device state
    and its own RAM, and is still served afterwards."""
    with trio.fail_after(60):
        async with host("--listen", "unix:", "-device", "virtio-rng-device", "--seed", "4") as h:
            ch = await raw_channel(h.address)
            session = await guest_handshake(ch, secret=None, can_take_fds=True)
            assert session.mode is MemoryMode.SHARED
            ram = session_memory(session)  # the host's memfd for this connection
            assert await _read(ch, 1, "MagicValue") == MMIO.magic
            await ch.send(
                wire.access(MsgType.MMIO_WRITE, 0, MMIO_BASE + MMIO_OFFSETS["Status"], 4, STATUS.ACKNOWLEDGE)
            )
            ram.write(0x200000, b"mine")
            g = await run_guest(h.address, "--workload", "rng", "--seed", "4", "--json")
            assert g.proc.returncode == 0, g.stderr
            # The other guest negotiated to DRIVER_OK on its device; ours is untouched.
            assert await _read(ch, 2, "Status") == STATUS.ACKNOWLEDGE
            # The other guest put rings and buffers in its RAM (from 1 MiB up); ours has
            # none of that, and our own bytes are where we left them.
            assert ram.read(0x100000, 0x10000) == bytes(0x10000)
            assert ram.read(0x200000, 4) == b"mine"
            await ch.send(wire.bye())
            await ch.aclose()
            ram.close()
            await h.wait_for(lambda: h.stderr.count("ended: guest said bye") == 2)


async def test_one_disk_image_is_never_shared_by_two_guests(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    with trio.fail_after(60):
        async with host("--listen", "unix:", "-device", f"virtio-blk-device,drive={disk}") as h:
            first = await raw_channel(h.address)
            await guest_handshake(first, secret=None, can_take_fds=True)
            g = await run_guest(h.address, "--workload", "blk-rw", "--json")
            assert g.proc.returncode == 1
            refused = g.json_result()
            assert refused["outcome"] == "HOST_REFUSED"
            assert 'Failed to get "write" lock' in refused["detail"]
            await first.send(wire.bye())
            await first.aclose()
            await h.wait_for(lambda: "guest 1: ended" in h.stderr)
            g = await run_guest(h.address, "--workload", "blk-rw", "--json")
            assert g.proc.returncode == 0, g.stderr


async def test_network_switches_are_private_to_each_guest() -> None:
    """Two guests whose machines both put two NICs on ``switch:lan``: each pair talks
    within its own machine. The first guest holds its machine (and its ports on ``lan``)
    open while the second runs, so the two machines certainly coexist."""
    nic = "virtio-net-device,x-backend=switch:lan"
    with trio.fail_after(60):
        async with host("--listen", "unix:", "-device", nic, "-device", nic) as h:
            first = await raw_channel(h.address)
            await guest_handshake(first, secret=None, can_take_fds=True)
            guests = [await run_guest(h.address, "--workload", "net-pair", "--json")]
            guests.append(await run_guest(h.address, "--workload", "net-pair", "--json"))
            await first.send(wire.bye())
            await first.aclose()
            await h.wait_for(lambda: "guest 1: ended" in h.stderr)
            log = h.stderr
    assert [g.proc.returncode for g in guests] == [0, 0], [g.stderr for g in guests]
    for g in guests:
        w = g.json_result()["workload"]
        assert w["a_to_b"] == w["b_to_a"] == 24 and w["broadcast"] == "delivered"
    assert log.index("guest 2: connected") < log.index("guest 1: ended")
    assert log.index("guest 3: connected") < log.index("guest 1: ended")
