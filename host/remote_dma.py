"""Device DMA into guest RAM that lives in another process: DMA_READ / DMA_WRITE frames.

Over TCP there is no shared mapping: the guest keeps its RAM and the host reaches it with
messages. Device models and rings are synchronous (``VirtioDevice.notify`` ->
``model.process`` -> ``AddressSpace.read``), and they stay so. Instead, the server runs
every register access of such a connection in a worker thread
(``trio.to_thread.run_sync``), and :class:`WireAddressSpace` turns each access into a
blocking call back into trio (``trio.from_thread.run``): a read sends DMA_READ and waits
for the matching DMA_REPLY, which the connection's reader task routes here by sequence
number; a write sends a posted DMA_WRITE. So the device code, the ring code and their
error policies are exactly the ones that run over shared memory.

Ordering: frames on one connection are delivered in order, so a DMA_WRITE of the used
ring always reaches guest RAM before the IRQ frame sent after the access returns, and
before any later DMA_READ. Addresses are checked against the guest's RAM layout (the
regions sent in MEM_REGION) before anything is sent, so a bad descriptor address is a
local DmaError; a guest that refuses a read anyway answers with an error status.
If the connection ends while a device waits, the wait ends with a DmaError at once.
"""

from __future__ import annotations

import trio

from virtio_sim import wire
from virtio_sim.dma import DmaError
from virtio_sim.memory import GuestMemory, MemoryAccessError
from virtio_sim.wire import DMA_OK, MAX_DMA_CHUNK, FrameChannel, WireError


class _Reply:
    def __init__(self) -> None:
        self.event = trio.Event()
        self.status = DMA_OK
        self.data = b""
        self.error: str | None = None


class DmaPort:
    """The trio-side end of device DMA over one connection."""

    def __init__(self, channel: FrameChannel) -> None:
        self.channel = channel
        self._seq = 0
        self._pending: dict[int, _Reply] = {}
        self.failure: str | None = None
        self.reads = 0
        self.writes = 0
        self.bytes_read = 0
        self.bytes_written = 0

    async def read(self, addr: int, length: int) -> bytes:
        out = bytearray()
        for off in range(0, length, MAX_DMA_CHUNK):
            n = min(MAX_DMA_CHUNK, length - off)
            out += await self._read_chunk(addr + off, n)
        return bytes(out)

    async def _read_chunk(self, addr: int, length: int) -> bytes:
        if self.failure:
            raise DmaError(addr, length, self.failure)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        reply = _Reply()
        self._pending[seq] = reply
        try:
            await self.channel.send(wire.dma_read(seq, addr, length))
            await reply.event.wait()
        except trio.EndOfChannel:
            self.fail("guest link closed")
        finally:
            self._pending.pop(seq, None)
        if reply.error or not reply.event.is_set():
            raise DmaError(addr, length, reply.error or self.failure or "guest link closed")
        if reply.status != DMA_OK:
            reason = reply.data.decode(errors="replace")
            raise DmaError(addr, length, f"guest refused the read: {reason}")
        if len(reply.data) != length:
            raise DmaError(addr, length, f"guest returned {len(reply.data)} bytes")
        self.reads += 1
        self.bytes_read += length
        return reply.data

    async def write(self, addr: int, data: bytes) -> None:
        if self.failure:
            raise DmaError(addr, len(data), self.failure)
        for off in range(0, len(data), MAX_DMA_CHUNK):
            chunk = data[off : off + MAX_DMA_CHUNK]
            try:
                await self.channel.send(wire.dma_write(addr + off, chunk))
            except trio.EndOfChannel:
                self.fail("guest link closed")
                raise DmaError(addr, len(data), "guest link closed") from None
        self.writes += 1
        self.bytes_written += len(data)

    def deliver(self, frame: wire.Frame) -> None:
        """A DMA_REPLY from the guest (called by the connection's reader task)."""
        status, data = wire.parse_dma_reply(frame)
        reply = self._pending.get(frame.seq)
        if reply is None:
            raise WireError(f"DMA_REPLY to unknown request {frame.seq}")
        reply.status, reply.data = status, data
        reply.event.set()

    def fail(self, reason: str) -> None:
        """The connection is gone: every waiting and future transfer fails."""
        if self.failure is None:
            self.failure = reason
        for reply in self._pending.values():
            reply.error = reason
            reply.event.set()


class WireAddressSpace:
    """An AddressSpace over DMA messages; use it only from a trio worker thread."""

    name = "wire-dma"

    def __init__(self, port: DmaPort, layout: GuestMemory) -> None:
        self.port = port
        self.layout = layout  # the guest's RAM regions; its bytes are never used

    def check(self, addr: int, length: int, write: bool) -> None:
        try:
            self.layout.check(addr, length)
        except MemoryAccessError as e:
            raise DmaError(addr, length, e.reason) from None

    def read(self, addr: int, length: int) -> bytes:
        self.check(addr, length, False)
        if length == 0:
            return b""
        return self._call_read(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.check(addr, len(data), True)
        if len(data):
            self._call_write(addr, bytes(data))

    def _call_read(self, addr: int, length: int) -> bytes:
        try:
            return trio.from_thread.run(self.port.read, addr, length)
        except (trio.Cancelled, trio.RunFinishedError):
            raise DmaError(addr, length, "the connection is shutting down") from None

    def _call_write(self, addr: int, data: bytes) -> None:
        try:
            trio.from_thread.run(self.port.write, addr, data)
        except (trio.Cancelled, trio.RunFinishedError):
            raise DmaError(addr, len(data), "the connection is shutting down") from None
