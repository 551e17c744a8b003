"""Serve one guest connection: frames in, register accesses to the machine, IRQs out.

Register reads are answered in order; writes are posted and applied in arrival order, so
a read always sees every write sent before it. Interrupt line changes produced while a
write is applied are sent right after it. A malformed frame ends the connection with an
ERROR frame; it never reaches the machine.

When guest RAM is not shared (TCP), pass a :class:`~host.remote_dma.DmaPort`: a reader
task then routes the guest's DMA_REPLY frames to the port and queues everything else, in
order, for the dispatcher, which applies each register access in a worker thread so that
devices can wait for DMA replies (see :mod:`host.remote_dma`). Either way the frames are
handled by the same code.

A guest that sends no frame for ``idle_timeout`` seconds is told ERROR(TIMEOUT) and
dropped. (The host process runs each guest's serve() on an event loop and thread of its
own, so one guest's device work never delays another's frames: see host/process.py.)
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from virtio_sim import wire
from virtio_sim.dma import DmaError
from virtio_sim.host.machine import Machine
from virtio_sim.host.remote_dma import DmaPort, PostingChannel
from virtio_sim.ring.chain import RingError
from virtio_sim.spec import LIMITS
from virtio_sim.wire import ErrorCode, FrameChannel, IrqKind, MsgType, SendStalledError, WireError

log = logging.getLogger("virtio_sim.host.server")

ERR_PROTOCOL = ErrorCode.PROTOCOL
ERR_UNSUPPORTED = ErrorCode.UNSUPPORTED
BYE_REASON = "guest said bye"
CLOSED_REASON = "guest closed the connection"
# Guest frames a DMA-mode connection reads ahead of the dispatcher (while a device waits
# for DMA, or the host waits for room to send); a guest that floods beyond this is dropped
# instead of growing the host without bound.
MAX_QUEUED_FRAMES = LIMITS.wire.max_queued_frames

Call = Callable[..., Awaitable[int]]


async def serve(
    channel: FrameChannel,
    machine: Machine,
    *,
    dma: DmaPort | None = None,
    idle_timeout: float = math.inf,
) -> str:
    """Run until the guest says BYE or goes away; returns how the connection ended."""
    pending_irqs: list[wire.Frame] = []
    machine.irq_out = lambda irq, level: pending_irqs.append(_line_frame(irq, level))
    machine.msi_out = lambda address, data: pending_irqs.append(_msi_frame(address, data))
    receive = _idle_bounded(channel.receive, idle_timeout)
    if dma is not None:
        return await _serve_dma(channel, machine, dma, pending_irqs, receive)

    in_access = False
    wake = [trio.Event()]

    def queue_irq(frame: wire.Frame) -> None:
        pending_irqs.append(frame)
        if not in_access:  # raised by device work outside a guest access (backend input)
            wake[0].set()

    machine.irq_out = lambda irq, level: queue_irq(_line_frame(irq, level))
    machine.msi_out = lambda address, data: queue_irq(_msi_frame(address, data))

    async def call(op: Callable[..., int | None], *args: int) -> int:
        nonlocal in_access
        in_access = True
        try:
            return guarded(machine, op, *args)
        finally:
            in_access = False

    async def irq_pump() -> None:
        """Interrupts that no guest access will be followed by: send them now."""
        while True:
            await wake[0].wait()
            wake[0] = trio.Event()
            while pending_irqs and not in_access:
                try:
                    await channel.send(pending_irqs.pop(0))
                except trio.EndOfChannel:  # the frames loop sees the end too
                    return

    async def frames() -> str:
        while True:
            try:
                frame = await receive()
            except trio.EndOfChannel as e:
                return _closed(e)
            except WireError as e:
                return await _protocol_error(channel, e)
            ended = await _handle(channel, machine, frame, call, pending_irqs)
            if ended is _SEND_FAILED:
                return await _bye_after_send_failure(channel.receive)
            if ended is not None:
                return ended

    async with trio.open_nursery() as nursery:
        nursery.start_soon(irq_pump)
        reason = await frames()
        nursery.cancel_scope.cancel()
    return reason


def _idle_bounded(
    receive: Callable[[], Awaitable[wire.Frame]], idle_timeout: float
) -> Callable[[], Awaitable[wire.Frame]]:
    """``receive`` that raises WireError(TIMEOUT) when no frame starts within the bound."""
    if math.isinf(idle_timeout):
        return receive

    async def bounded() -> wire.Frame:
        with trio.move_on_after(idle_timeout):
            return await receive()
        raise WireError(f"the guest sent nothing for {idle_timeout:g}s (idle timeout)", ErrorCode.TIMEOUT)

    return bounded


# A reply or IRQ could not be sent because the guest closed its end. That is normal right
# after the guest's BYE, which may still be unread: look for it before calling the guest
# lost. (A plain string, compared by identity.)
_SEND_FAILED = "send failed"
BYE_LOOKAHEAD = 1.0  # seconds to look for a BYE after a failed send


async def _bye_after_send_failure(receive: Callable[[], Awaitable[wire.Frame]]) -> str:
    with trio.move_on_after(BYE_LOOKAHEAD):
        while True:
            try:
                frame = await receive()
            except (trio.EndOfChannel, WireError):
                break
            if frame.type is MsgType.BYE:
                return BYE_REASON
    return f"{CLOSED_REASON} (it did not take a reply)"


async def _handle(
    channel: FrameChannel,
    machine: Machine,
    frame: wire.Frame,
    call: Call,
    pending_irqs: list[wire.Frame],
) -> str | None:
    """Apply one guest frame; returns why the connection ends, or None to go on."""
    try:
        if frame.type is MsgType.MMIO_READ:
            addr, size, _ = wire.parse_access(frame)
            value = await call(machine.mmio_read, addr, size)
            await channel.send(wire.read_reply(frame.seq, value))
        elif frame.type is MsgType.MMIO_WRITE:
            addr, size, value = wire.parse_access(frame)
            await call(machine.mmio_write, addr, size, value)
        elif frame.type is MsgType.PIO_READ:
            port, size, _ = wire.parse_access(frame)
            value = await call(machine.pio_read, port, size)
            await channel.send(wire.read_reply(frame.seq, value))
        elif frame.type is MsgType.PIO_WRITE:
            port, size, value = wire.parse_access(frame)
            await call(machine.pio_write, port, size, value)
        elif frame.type is MsgType.BYE:
            return BYE_REASON
        else:
            msg = f"unexpected {frame.type.name} frame from the guest"
            await _send_quietly(channel, wire.error(ERR_UNSUPPORTED, msg))
            return f"protocol error: {msg}"
        while pending_irqs:
            await channel.send(pending_irqs.pop(0))
    except WireError as e:
        return await _protocol_error(channel, e)
    except SendStalledError as e:
        return f"protocol error: {e}"
    except trio.EndOfChannel:
        return _SEND_FAILED
    return None


async def _serve_dma(
    channel: FrameChannel,
    machine: Machine,
    port: DmaPort,
    pending_irqs: list[wire.Frame],
    receive: Callable[[], Awaitable[wire.Frame]],
) -> str:
    out = PostingChannel(channel, port)  # every send stays behind earlier DMA traffic
    inbox_tx, inbox_rx = trio.open_memory_channel[wire.Frame](MAX_QUEUED_FRAMES)
    reader_end: list[str] = []
    limiter = trio.CapacityLimiter(1)  # one worker thread per connection, never more

    async def reader() -> None:
        reason = CLOSED_REASON
        try:
            while True:
                frame = await receive()
                if frame.type is MsgType.DMA_REPLY:
                    port.deliver(frame)
                    continue
                try:
                    inbox_tx.send_nowait(frame)
                except trio.WouldBlock:
                    raise WireError(_flood_reason(port)) from None
                if frame.type is MsgType.BYE:
                    reason = BYE_REASON
                    return
        except trio.EndOfChannel as e:
            reason = _closed(e)
        except WireError as e:
            reason = await _protocol_error(out, e)
        finally:
            reader_end.append(reason)
            port.fail(reason)
            inbox_tx.close()

    async def call(op: Callable[..., int | None], *args: int) -> int:
        job = functools.partial(guarded, machine, op, *args)
        return await trio.to_thread.run_sync(job, limiter=limiter)

    sent_all = trio.Event()

    async def sender() -> None:
        try:
            await port.run_sender()
        finally:
            sent_all.set()

    overflow: list[str] = []

    async def watch_overflow(scope: trio.CancelScope) -> None:
        """A guest that does not read its frames: the queue stops growing here."""
        overflow.append(await port.wait_overflow())
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(reader)
        nursery.start_soon(watch_overflow, nursery.cancel_scope)
        ended: str | None = None
        async for frame in inbox_rx:
            ended = await _handle(out, machine, frame, call, pending_irqs)
            if ended is _SEND_FAILED:
                ended = await _bye_after_send_failure(inbox_rx.receive)
            elif ended is None and port.timed_out:
                timeout = WireError(port.failure or "DMA timeout", ErrorCode.TIMEOUT)
                ended = await _protocol_error(out, timeout)
            if ended is not None:
                break
        port.close_sender()
        with trio.move_on_after(BYE_LOOKAHEAD):
            await sent_all.wait()  # a final ERROR frame must get out before we hang up
        nursery.cancel_scope.cancel()
    if overflow:
        return f"protocol error: {overflow[0]}"
    if ended is not None:
        return ended
    return reader_end[0] if reader_end else CLOSED_REASON


def _flood_reason(port: DmaPort) -> str:
    """Why the guest's read-ahead overflowed, as it really was: the dispatcher waits
    either for a device that waits for DMA, or for anything else (a slow device, room to
    send replies the guest does not read)."""
    if port.waiting_for_dma:
        return f"guest queued more than {MAX_QUEUED_FRAMES} frames while a device waited for DMA"
    return f"guest sent more than {MAX_QUEUED_FRAMES} frames ahead of the host's replies"


def _line_frame(irq: int, level: bool) -> wire.Frame:
    return wire.irq(IrqKind.LINE_LEVEL, irq, int(level))


def _msi_frame(address: int, data: int) -> wire.Frame:
    """An MSI travels as (address low, data): the guest's interrupt controller decodes it."""
    return wire.irq(IrqKind.MSI, address & 0xFFFFFFFF, data & 0xFFFFFFFF)


def _closed(e: trio.EndOfChannel) -> str:
    detail = str(e)  # a socket channel says "connection lost: <errno text>" on a reset
    return f"{CLOSED_REASON} ({detail})" if detail.startswith("connection lost") else CLOSED_REASON


async def _protocol_error(channel: FrameChannel, e: WireError) -> str:
    log.warning("dropping guest: %s", e)
    await _send_quietly(channel, wire.error(e.code, str(e)))
    return f"protocol error: {e}"


def guarded(machine: Machine, op: Callable[..., int | None], *args: int) -> int:
    """Run a register access; a ring or DMA error escaping a device never ends the host."""
    try:
        return op(*args) or 0
    except (RingError, DmaError) as e:
        # Devices apply their error policy themselves; this is the last line of defence
        # so that nothing a guest does can end the host.
        machine.notes.append(f"device error outside queue service: {e}")
        return 0


async def _send_quietly(channel: FrameChannel, frame: wire.Frame) -> None:
    try:
        await channel.send(frame)
    except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
