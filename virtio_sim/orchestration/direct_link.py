"""The embedded mode's link: the guest calls the host machine directly, no frames.

Host and guest run in one process and one trio run, so a register access needs no
encoding, no channel and no second task: :class:`DirectLink` has the interface of
:class:`~virtio_sim.guest.link.HostLink` and applies each access to the
:class:`~virtio_sim.host.machine.Machine` at once, with the same guard the frame server
puts around it (:func:`virtio_sim.host.server.guarded`). Interrupts the machine raises
during an access are handed to the guest's interrupt handler right after the access, in
the order they were raised (what the server does: reply first, then the IRQ frames);
interrupts raised outside an access go to the handler at once. Between processes the
frames stay (:mod:`virtio_sim.wire`); ``tests/processes/test_results.py`` keeps the two
modes' results equal.

The checks the frame codec makes on an access (size 1, 2, 4 or 8; a written value that
fits the size) are made here too, and fail the link the way the host's ERROR(PROTOCOL)
frame does. A direct access does not yield to the scheduler, so every
:data:`YIELD_EVERY` accesses the link checkpoints: a driver polling a register still
lets the interrupt task run and its timeout fire.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from virtio_sim.guest.link import HostLink, HostLinkError
from virtio_sim.host.machine import Machine
from virtio_sim.host.server import guarded
from virtio_sim.wire import ACCESS_SIZES, ErrorCode, IrqKind

#: accesses between two scheduler checkpoints (the framed link yields on every one)
YIELD_EVERY = 16


class DirectLink(HostLink):
    """A HostLink whose host is a :class:`Machine` in this process."""

    def __init__(self, machine: Machine) -> None:
        # No frame channel: every access is a call into the machine.
        self.machine = machine
        self.failure: HostLinkError | None = None
        self.peer_failure: HostLinkError | None = None
        self.dma_memory = None
        self._closing = False
        self.irq_handler = lambda kind, line, value: None
        self._in_access = False
        self._irqs: list[tuple[IrqKind, int, int]] = []
        self._budget = YIELD_EVERY
        self._ended = trio.Event()
        machine.irq_out = self._line
        machine.msi_out = self._msi

    def _line(self, irq: int, level: bool) -> None:
        self._raise(IrqKind.LINE_LEVEL, irq, int(level))

    def _msi(self, address: int, data: int) -> None:
        # what an IRQ frame carries: the address's low half and the data
        self._raise(IrqKind.MSI, address & 0xFFFFFFFF, data & 0xFFFFFFFF)

    def _raise(self, kind: IrqKind, line: int, value: int) -> None:
        if self._in_access:
            self._irqs.append((kind, line, value))
        elif not self._closing:
            self.irq_handler(kind, line, value)

    async def run(self) -> None:
        """Nothing to route: wait until the link fails (the guest's watcher then ends the run)."""
        await self._ended.wait()

    def _refuse(self, message: str) -> HostLinkError:
        """What the host's ERROR(PROTOCOL) frame does to the guest: the link is gone."""
        problem = HostLinkError(f"host error {int(ErrorCode.PROTOCOL)}: {message}")
        if self.peer_failure is None and not self._closing:
            self.peer_failure = problem
        if self.failure is None:
            self.failure = problem
        self._ended.set()
        return problem

    async def _access(self, op: Callable[..., int | None], addr: int, size: int, *value: int) -> int:
        """One register access: the wire's checks, the server's guard, then the
        interrupts it raised; every YIELD_EVERY accesses a scheduler checkpoint."""
        if self.failure:
            raise self.failure
        if size not in ACCESS_SIZES:
            raise self._refuse(f"access size {size} is not 1, 2, 4 or 8")
        if value and value[0] >> (8 * size):
            raise self._refuse(f"value {value[0]:#x} does not fit a {size}-byte access")
        self._in_access = True
        try:
            result = guarded(self.machine, op, addr, size, *value)
        finally:
            self._in_access = False
        if self._irqs:
            irqs, self._irqs = self._irqs, []
            for irq in irqs:
                self.irq_handler(*irq)
        self._budget -= 1
        if self._budget <= 0:
            self._budget = YIELD_EVERY
            await trio.lowlevel.checkpoint()
        return result

    async def read(self, addr: int, size: int) -> int:
        return await self._access(self.machine.mmio_read, addr, size)

    async def write(self, addr: int, size: int, value: int) -> None:
        await self._access(self.machine.mmio_write, addr, size, value)

    async def pio_read(self, port: int, size: int) -> int:
        return await self._access(self.machine.pio_read, port, size)

    async def pio_write(self, port: int, size: int, value: int) -> None:
        await self._access(self.machine.pio_write, port, size, value)

    async def bye(self) -> None:
        self._closing = True
