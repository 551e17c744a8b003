"""Serve one guest connection: frames in, register accesses to the machine, IRQs out.

Register reads are answered in order; writes are posted and applied in arrival order, so
a read always sees every write sent before it. Memory (MMIO_*) and port (PIO_*) accesses
take the same path. Interrupt line changes and MSI messages produced while an access is
applied are sent right after it. A malformed frame ends the connection with an
ERROR frame; it never reaches the machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from host.machine import Machine
from virtio_sim import wire
from virtio_sim.dma import DmaError
from virtio_sim.ring.chain import RingError
from virtio_sim.wire import FrameChannel, IrqKind, MsgType, WireError

log = logging.getLogger("virtio_sim.host.server")

ERR_PROTOCOL = 1
ERR_UNSUPPORTED = 2


async def serve(channel: FrameChannel, machine: Machine) -> str:
    """Run until the guest says BYE or goes away; returns how the connection ended."""
    pending_irqs: list[wire.Frame] = []
    machine.irq_out = lambda irq, level: pending_irqs.append(wire.irq(IrqKind.LINE_LEVEL, irq, int(level)))
    machine.msi_out = lambda address, data: pending_irqs.append(
        wire.irq(IrqKind.MSI, address & 0xFFFFFFFF, data & 0xFFFFFFFF)
    )
    while True:
        try:
            frame = await channel.receive()
        except trio.EndOfChannel:
            return "guest closed the connection"
        except WireError as e:
            log.warning("dropping guest: %s", e)
            await _send_quietly(channel, wire.error(ERR_PROTOCOL, str(e)))
            return f"protocol error: {e}"
        try:
            if frame.type is MsgType.MMIO_READ:
                addr, size, _ = wire.parse_access(frame)
                value = _guarded(machine, machine.mmio_read, addr, size)
                await channel.send(wire.read_reply(frame.seq, value))
            elif frame.type is MsgType.MMIO_WRITE:
                addr, size, value = wire.parse_access(frame)
                _guarded(machine, machine.mmio_write, addr, size, value)
            elif frame.type is MsgType.PIO_READ:
                port, size, _ = wire.parse_access(frame)
                value = _guarded(machine, machine.pio_read, port, size)
                await channel.send(wire.read_reply(frame.seq, value))
            elif frame.type is MsgType.PIO_WRITE:
                port, size, value = wire.parse_access(frame)
                _guarded(machine, machine.pio_write, port, size, value)
            elif frame.type is MsgType.BYE:
                return "guest said bye"
            else:
                msg = f"unexpected {frame.type.name} frame from the guest"
                await _send_quietly(channel, wire.error(ERR_UNSUPPORTED, msg))
                return f"protocol error: {msg}"
        except WireError as e:
            await _send_quietly(channel, wire.error(ERR_PROTOCOL, str(e)))
            return f"protocol error: {e}"
        except trio.EndOfChannel:
            return "guest closed the connection"
        while pending_irqs:
            try:
                await channel.send(pending_irqs.pop(0))
            except trio.EndOfChannel:
                return "guest closed the connection"


def _guarded(machine: Machine, op: Callable[..., int | None], *args: int) -> int:
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
