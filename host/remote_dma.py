"""Device DMA into guest RAM that lives in another process: DMA_READ / DMA_WRITE frames.

Over TCP there is no shared mapping: the guest keeps its RAM and the host reaches it with
messages. Device models and rings are synchronous (``VirtioDevice.notify`` ->
``model.process`` -> ``AddressSpace.read``), and they stay so. Instead, the server runs
every register access of such a connection in a worker thread
(``trio.to_thread.run_sync``), and :class:`WireAddressSpace` turns the device's memory
accesses into messages:

* a read sends DMA_READ and blocks the worker until the matching DMA_REPLY arrives (the
  connection's reader task routes it here by sequence number);
* a write is posted, like a PCIe memory write: the DMA_WRITE frame is queued for sending
  and the device goes on at once.

Ordering: every frame the host sends on such a connection (DMA_READ, DMA_WRITE,
READ_REPLY, IRQ, ERROR) goes through one FIFO (:meth:`DmaPort.post`) drained by one
sender task, and the guest applies frames in arrival order. So a DMA_WRITE of the used
ring reaches guest RAM before the IRQ that follows it, and a DMA_READ sees every earlier
DMA_WRITE. Addresses are checked against the guest's RAM layout (the regions sent in
MEM_REGION) before anything is sent, so a bad descriptor address is a local DmaError;
a guest that refuses a read anyway answers with an error status. A guest that does not
answer within ``reply_timeout``, or a connection that ends while a device waits, fails
the wait with a DmaError at once, so a device never hangs on a dead or hostile guest.

The FIFO is bounded (specs/limits.toml [wire] max_unsent_frames / max_unsent_bytes): a
device's posted writes wait in its worker thread for room (a guest that reads slowly
slows the device down, as a full PCIe posted-write queue would), and a frame that would
pass either bound otherwise means the guest does not read what it is sent: the
connection is closed with that reason (:meth:`DmaPort.wait_overflow`).
"""

from __future__ import annotations

import functools
import math
import threading

import trio

from virtio_sim import wire
from virtio_sim.dma import DmaError, PeerGoneError
from virtio_sim.memory import GuestMemory, MemoryAccessError
from virtio_sim.spec import LIMITS
from virtio_sim.wire import DMA_OK, DMA_WRITE_HEADER_SIZE, HEADER_SIZE, MAX_DMA_CHUNK, FrameChannel, WireError

DMA_REPLY_TIMEOUT = 5.0  # seconds a guest has to answer a DMA_READ
MAX_UNSENT_FRAMES = LIMITS.wire.max_unsent_frames
MAX_UNSENT_BYTES = LIMITS.wire.max_unsent_bytes


class _Reply:
    def __init__(self) -> None:
        self.event = trio.Event()
        self.status = DMA_OK
        self.data = b""
        self.error: str | None = None


class DmaPort:
    """The trio-side end of device DMA over one connection, and its ordered sender."""

    def __init__(
        self,
        channel: FrameChannel,
        reply_timeout: float = DMA_REPLY_TIMEOUT,
        *,
        max_unsent_frames: int = MAX_UNSENT_FRAMES,
        max_unsent_bytes: int = MAX_UNSENT_BYTES,
    ) -> None:
        self.channel = channel
        self.reply_timeout = reply_timeout
        self.token = trio.lowlevel.current_trio_token()
        self.trio_thread = threading.get_ident()
        # Bounded by the accounting below, not by the channel (posts never block).
        self._out_tx, self._out_rx = trio.open_memory_channel[wire.Frame](math.inf)
        self.max_unsent_frames = max_unsent_frames
        self.max_unsent_bytes = max_unsent_bytes
        self._room = threading.Condition()  # guards the two counters; worker threads wait on it
        self.unsent_frames = 0  # queued or reserved, not yet handed to the socket
        self.unsent_bytes = 0
        self.peak_unsent_frames = 0
        self.peak_unsent_bytes = 0
        self.overflow: str | None = None
        self._overflowed = trio.Event()
        self._seq = 0
        self._pending: dict[int, _Reply] = {}
        self.failure: str | None = None  # DMA is impossible from now on
        self.send_failed = False  # the connection took no more frames
        self.timed_out = False
        self.reads = 0
        self.writes = 0
        self.bytes_read = 0
        self.bytes_written = 0

    # -- the ordered sender -----------------------------------------------------

    def post(self, frame: wire.Frame, *, reserved: bool = False) -> None:
        """Queue a frame for the guest, behind everything queued before (trio thread).

        ``reserved``: a worker thread already counted it (:meth:`reserve`). Otherwise a
        frame that passes the bounds means the guest does not read: overflow.
        """
        size = HEADER_SIZE + len(frame.payload)
        if not reserved:
            with self._room:
                self.unsent_frames += 1
                self.unsent_bytes += size
                over = (
                    self.unsent_frames > self.max_unsent_frames or self.unsent_bytes > self.max_unsent_bytes
                )
                if not over:
                    self._note_peak()
            if over:
                self._sent(size)  # not queued after all
                self._overflow()
                return
        if self.send_failed or self.overflow is not None:
            self._sent(size)
            return
        try:
            self._out_tx.send_nowait(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._sent(size)  # the connection is ending; nobody will read it

    def _note_peak(self) -> None:
        self.peak_unsent_frames = max(self.peak_unsent_frames, self.unsent_frames)
        self.peak_unsent_bytes = max(self.peak_unsent_bytes, self.unsent_bytes)

    def _sent(self, size: int) -> None:
        with self._room:
            self.unsent_frames -= 1
            self.unsent_bytes -= size
            self._room.notify_all()

    def _overflow(self) -> None:
        if self.overflow is None:
            self.overflow = (
                f"the guest does not read what it is sent: more than {self.max_unsent_frames} frames "
                f"or {self.max_unsent_bytes} bytes unsent; connection closed"
            )
            self.fail(self.overflow)
            self._overflowed.set()

    async def wait_overflow(self) -> str:
        """Returns (with the reason) once the FIFO overflowed."""
        await self._overflowed.wait()
        assert self.overflow is not None
        return self.overflow

    def reserve(self, frames: int, size: int) -> None:
        """Room for a worker thread's posted write: wait while the FIFO is over half its
        bounds (a slow reader slows the device); fail the transfer when the guest takes
        nothing for ``reply_timeout`` or the link is gone. Worker threads only."""
        deadline = threading.TIMEOUT_MAX if math.isinf(self.reply_timeout) else self.reply_timeout
        with self._room:
            ok = self._room.wait_for(
                lambda: (
                    self.failure is not None
                    or self.unsent_frames == 0
                    or (
                        self.unsent_frames + frames <= self.max_unsent_frames // 2
                        and self.unsent_bytes + size <= self.max_unsent_bytes // 2
                    )
                ),
                timeout=deadline,
            )
            if ok and self.failure is None:
                self.unsent_frames += frames
                self.unsent_bytes += size
                self._note_peak()
                return
        if not ok:
            self.token.run_sync_soon(self._stalled)
            raise PeerGoneError(0, size, f"the guest took no frame for {self.reply_timeout:g}s")
        raise PeerGoneError(0, size, self.failure or "the connection is closing")

    def _stalled(self) -> None:
        self.timed_out = True
        self.fail(f"the guest took no frame for {self.reply_timeout:g}s while a device wrote to it")

    @property
    def waiting_for_dma(self) -> bool:
        """A device waits for a DMA_REPLY right now."""
        return bool(self._pending)

    async def run_sender(self) -> None:
        """Send queued frames until the queue is closed or the link fails."""
        async for frame in self._out_rx:
            try:
                await self.channel.send(frame)
            except trio.EndOfChannel:
                self.send_failed = True
                self.fail("guest link closed")
                return
            finally:
                self._sent(HEADER_SIZE + len(frame.payload))

    def close_sender(self) -> None:
        """No more frames: the sender ends once the queue is empty."""
        self._out_tx.close()

    # -- transfers ----------------------------------------------------------------

    async def read(self, addr: int, length: int) -> bytes:
        out = bytearray()
        for off in range(0, length, MAX_DMA_CHUNK):
            n = min(MAX_DMA_CHUNK, length - off)
            out += await self._read_chunk(addr + off, n)
        return bytes(out)

    async def _read_chunk(self, addr: int, length: int) -> bytes:
        if self.failure:
            raise PeerGoneError(addr, length, self.failure)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        reply = _Reply()
        self._pending[seq] = reply
        try:
            self.post(wire.dma_read(seq, addr, length))
            with trio.move_on_after(self.reply_timeout):
                await reply.event.wait()
        finally:
            self._pending.pop(seq, None)
        if not reply.event.is_set():
            self.timed_out = True
            self.fail(f"guest did not answer a DMA read within {self.reply_timeout:g}s")
        if self.failure:
            raise PeerGoneError(addr, length, self.failure)
        if reply.error:
            raise DmaError(addr, length, reply.error)
        if reply.status != DMA_OK:
            reason = reply.data.decode(errors="replace")
            raise DmaError(addr, length, f"guest refused the read: {reason}")
        if len(reply.data) != length:
            raise DmaError(addr, length, f"guest returned {len(reply.data)} bytes")
        self.reads += 1
        self.bytes_read += length
        return reply.data

    def post_write(self, addr: int, data: bytes, *, reserved: bool = False) -> None:
        """A posted write (runs in the trio thread; must never raise)."""
        for off in range(0, len(data), MAX_DMA_CHUNK):
            self.post(wire.dma_write(addr + off, data[off : off + MAX_DMA_CHUNK]), reserved=reserved)
        self.writes += 1
        self.bytes_written += len(data)

    @staticmethod
    def write_cost(length: int) -> tuple[int, int]:
        """(frames, bytes) a posted write of ``length`` bytes takes in the FIFO."""
        frames = max(1, -(-length // MAX_DMA_CHUNK))
        return frames, length + frames * (HEADER_SIZE + DMA_WRITE_HEADER_SIZE)

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
        with self._room:
            self._room.notify_all()  # a worker waiting for room gives up


class PostingChannel:
    """The connection as the server sees it in DMA mode: receives as usual, but every
    send joins the port's FIFO so it stays behind the DMA traffic queued before it."""

    def __init__(self, channel: FrameChannel, port: DmaPort) -> None:
        self.channel = channel
        self.port = port

    async def send(self, frame: wire.Frame) -> None:
        if self.port.send_failed:
            raise trio.EndOfChannel("guest link closed")
        self.port.post(frame)

    async def receive(self) -> wire.Frame:
        return await self.channel.receive()

    async def aclose(self) -> None:
        await self.channel.aclose()


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
        if threading.get_ident() == self.port.trio_thread:
            # Device work started by the event loop itself (not by a register access)
            # cannot wait for the guest's reply on the loop that must deliver it.
            raise DmaError(
                addr, length, "device DMA outside a register access is not supported over DMA messages"
            )
        try:
            return trio.from_thread.run(self.port.read, addr, length)
        except (trio.Cancelled, trio.RunFinishedError):
            raise PeerGoneError(addr, length, "the connection is shutting down") from None

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.check(addr, len(data), True)
        if self.port.failure is not None:
            raise PeerGoneError(addr, len(data), self.port.failure)
        if len(data) and threading.get_ident() == self.port.trio_thread:
            self.port.post_write(addr, bytes(data))
        elif len(data):
            # Posted: queued in order behind earlier frames; waits only for room in the
            # FIFO (bounded), never for the guest's answer.
            self.port.reserve(*self.port.write_cost(len(data)))
            try:
                self.port.token.run_sync_soon(
                    functools.partial(self.port.post_write, addr, bytes(data), reserved=True)
                )
            except trio.RunFinishedError:
                raise PeerGoneError(addr, len(data), "the connection is shutting down") from None
