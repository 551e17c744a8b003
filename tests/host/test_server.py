"""The host server against a misbehaving guest link."""

from __future__ import annotations

import pytest
import trio

from virtio_sim import wire
from virtio_sim.guest.link import HostLink, HostLinkError
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.server import serve
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.spec import MMIO
from virtio_sim.wire import MsgType


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    s = build_host(HostConfig(devices=["virtio-rng-device"], seed=1))
    yield s
    s.close()


async def test_garbage_frame_gets_error_and_disconnect(setup) -> None:  # type: ignore[no-untyped-def]
    host_end, guest_end = wire.memory_link()
    async with trio.open_nursery() as n:
        ended: list[str] = []

        async def run_server() -> None:
            ended.append(await serve(host_end, setup.machine))

        n.start_soon(run_server)
        await guest_end.send_raw(b"\xde\xad\xbe\xef" * 3)
        reply = await guest_end.receive()
        assert reply.type is MsgType.ERROR
        assert "bad frame magic" in wire.parse_error(reply)[1]
    assert ended and ended[0].startswith("protocol error")


async def test_link_reads_and_error_propagates(setup) -> None:  # type: ignore[no-untyped-def]
    host_end, guest_end = wire.memory_link()
    base = setup.machine.slots[0].base
    async with trio.open_nursery() as n:
        n.start_soon(serve, host_end, setup.machine)
        link = HostLink(guest_end)
        n.start_soon(link.run)
        assert await link.read(base + MMIO_OFFSETS["MagicValue"], 4) == MMIO.magic
        # unassigned address reads 0 and is noted, the host keeps serving
        assert await link.read(0xDEAD0000, 4) == 0
        assert await link.read(base + MMIO_OFFSETS["Version"], 4) == MMIO.version_modern
        # a frame type the guest must not send ends the connection with an ERROR
        await guest_end.send(wire.read_reply(1, 0))
        with pytest.raises(HostLinkError, match="unexpected READ_REPLY"):
            with trio.fail_after(5):
                while True:
                    await link.read(base, 4)
    assert any("unassigned" in note for note in setup.machine.notes)
