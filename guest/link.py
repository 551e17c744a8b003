"""The guest's end of the host link: register accesses out, interrupts in.

A read is a request/response pair matched by sequence number, so several guest tasks can
have reads in flight (like several vCPUs); a write is posted and returns as soon as it is
queued. One reader task routes replies to their waiters and interrupt frames to the
interrupt handler. When the host goes away or sends an ERROR frame, every pending and
future access fails with :class:`HostLinkError` instead of hanging, and
:attr:`HostLink.peer_failure` says why (it stays None when the guest ended the link).

When guest RAM is not shared with the host (TCP), set :attr:`HostLink.dma_memory`: the
reader then serves the host's DMA_READ (answered with DMA_REPLY) and posted DMA_WRITE
frames from it, in frame order, so a used-ring update always lands before the interrupt
that follows it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from virtio_sim import wire
from virtio_sim.dma import DmaError
from virtio_sim.memory import ByteAccess, MemoryAccessError
from virtio_sim.wire import DMA_OK, ErrorCode, FrameChannel, IrqKind, MsgType, WireError


class HostLinkError(Exception):
    """The host link is gone or the host reported an error."""


class _Pending:
    def __init__(self) -> None:
        self.event = trio.Event()
        self.value = 0
        self.error: HostLinkError | None = None


class HostLink:
    def __init__(self, channel: FrameChannel) -> None:
        self.channel = channel
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self.failure: HostLinkError | None = None
        self.peer_failure: HostLinkError | None = None  # set when the host ended the link
        self.dma_memory: ByteAccess | None = None
        self._closing = False
        self.irq_handler: Callable[[IrqKind, int, int], None] = lambda kind, line, value: None

    async def run(self) -> None:
        """Route incoming frames until the link ends (run this in a nursery)."""
        try:
            while True:
                try:
                    frame = await self.channel.receive()
                    problem = await self._dispatch(frame)
                except trio.EndOfChannel as e:
                    detail = f" ({e})" if str(e).startswith("connection lost") else ""
                    problem = HostLinkError(f"host closed the link{detail}")
                except WireError as e:
                    await self._send_quietly(wire.error(e.code, str(e)))
                    problem = HostLinkError(f"malformed frame from host: {e}")
                if problem is not None:
                    if not self._closing:
                        # What the host said (BYE, ERROR) beats a failed send noticed first.
                        self.peer_failure = problem
                    self._fail(problem)
                    return
        finally:
            if self.failure is None:
                self._fail(HostLinkError("host link reader stopped"))

    async def _dispatch(self, frame: wire.Frame) -> HostLinkError | None:
        """Handle one frame from the host; a returned error ends the link."""
        if frame.type is MsgType.READ_REPLY:
            p = self._pending.pop(frame.seq, None)
            if p is None:
                return HostLinkError(f"reply to unknown request {frame.seq}")
            p.value = wire.parse_read_reply(frame)
            p.event.set()
        elif frame.type is MsgType.IRQ:
            kind, line, value = wire.parse_irq(frame)
            self.irq_handler(kind, line, value)
        elif frame.type is MsgType.DMA_READ and self.dma_memory is not None:
            addr, length = wire.parse_dma_read(frame)
            try:
                reply = wire.dma_reply(frame.seq, DMA_OK, self.dma_memory.read(addr, length))
            except (MemoryAccessError, DmaError) as e:
                reply = wire.dma_reply(frame.seq, ErrorCode.DMA, str(e).encode())
            await self.channel.send(reply)
        elif frame.type is MsgType.DMA_WRITE and self.dma_memory is not None:
            addr, data = wire.parse_dma_write(frame)
            try:
                self.dma_memory.write(addr, data)
            except (MemoryAccessError, DmaError) as e:
                await self._send_quietly(wire.error(ErrorCode.DMA, str(e)))
                return HostLinkError(f"host DMA write outside guest RAM: {e}")
        elif frame.type is MsgType.ERROR:
            code, message = wire.parse_error(frame)
            return HostLinkError(f"host error {code}: {message}")
        elif frame.type is MsgType.BYE:
            return HostLinkError("host said bye")
        else:
            msg = f"unexpected {frame.type.name} frame from host"
            await self._send_quietly(wire.error(ErrorCode.UNSUPPORTED, msg))
            return HostLinkError(msg)
        return None

    async def _send_quietly(self, frame: wire.Frame) -> None:
        try:
            await self.channel.send(frame)
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _lost(self, error: HostLinkError) -> None:
        """A send found the host gone."""
        if not self._closing and self.peer_failure is None:
            self.peer_failure = error
        self._fail(error)

    def _fail(self, error: HostLinkError) -> None:
        if self.failure is None:
            self.failure = error
        for p in self._pending.values():
            p.error = error
            p.event.set()
        self._pending.clear()

    async def read(self, addr: int, size: int) -> int:
        """A memory-mapped register read (a load from ``addr``)."""
        return await self._read(MsgType.MMIO_READ, addr, size)

    async def write(self, addr: int, size: int, value: int) -> None:
        """A posted memory-mapped register write."""
        await self._write(MsgType.MMIO_WRITE, addr, size, value)

    async def pio_read(self, port: int, size: int) -> int:
        """An x86 port read (``in``): legacy virtio-pci and 0xCF8/0xCFC config access."""
        return await self._read(MsgType.PIO_READ, port, size)

    async def pio_write(self, port: int, size: int, value: int) -> None:
        """An x86 port write (``out``), posted like a memory write."""
        await self._write(MsgType.PIO_WRITE, port, size, value)

    async def _read(self, kind: MsgType, addr: int, size: int) -> int:
        if self.failure:
            raise self.failure
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        p = _Pending()
        self._pending[seq] = p
        try:
            await self.channel.send(wire.access(kind, seq, addr, size))
        except trio.EndOfChannel:
            self._lost(HostLinkError("host closed the link"))
        await p.event.wait()
        if p.error:
            raise p.error
        return p.value

    async def _write(self, kind: MsgType, addr: int, size: int, value: int) -> None:
        if self.failure:
            raise self.failure
        try:
            await self.channel.send(wire.access(kind, 0, addr, size, value))
        except trio.EndOfChannel:
            self._lost(HostLinkError("host closed the link"))
            raise self.failure from None  # type: ignore[misc]

    async def bye(self) -> None:
        self._closing = True
        try:
            await self.channel.send(wire.bye())
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
