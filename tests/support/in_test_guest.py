"""An in-test guest: the library's own guest stack over a real socket to a host process.

Tests that need to act at an exact moment (kill the host right after a FLUSH completed) or
to send requests no workload sends (malformed ones) drive the guest from the test itself,
with the same code the guest process runs: handshake, RAM, HostLink, GuestKernel, drivers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from virtio_sim.guest.drivers.base import GuestDriver
from virtio_sim.guest.link import HostLink
from virtio_sim.guest.platform import GuestKernel, GuestPolicy
from virtio_sim.handshake import HostSession, MemoryMode, guest_handshake, session_memory
from virtio_sim.memory import GuestMemory
from virtio_sim.sockets import SocketFrameChannel, UnixAddress, connect, parse_address


class InTestGuest:
    def __init__(self, session: HostSession, memory: GuestMemory, driver: GuestDriver) -> None:
        self.session = session
        self.memory = memory
        self.driver = driver


@asynccontextmanager
async def in_test_guest(address: str, secret: bytes | None = None) -> AsyncIterator[InTestGuest]:
    addr = parse_address(address, listen=False)
    unix = isinstance(addr, UnixAddress)
    channel = SocketFrameChannel(await connect(addr), accept_fds=unix)
    try:
        session = await guest_handshake(channel, secret=secret, can_take_fds=unix)
        memory = session_memory(session)
        try:
            link = HostLink(channel)
            if session.mode is MemoryMode.DMA:
                link.dma_memory = memory
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                kernel = GuestKernel(link, memory, session.ram_size, GuestPolicy())
                nursery.start_soon(kernel.irq_loop)
                probes = await kernel.probe_mmio(session.cmdline)
                bound = [p for p in probes if p.bound and p.driver is not None]
                assert bound, probes
                assert bound[0].driver is not None
                yield InTestGuest(session, memory, bound[0].driver)
                nursery.cancel_scope.cancel()
        finally:
            memory.close()
    finally:
        await channel.aclose()
