"""The guest's link when the devices are QEMU's: register accesses and RAM over qtest.

:class:`QtestLink` has the interface of :class:`~guest.link.HostLink` (``read``,
``write``, ``pio_read``, ``pio_write``, ``irq_handler``, ``run``, ``bye``), so the guest
kernel, transports and drivers run unchanged; :class:`QtestMemory` is the
:class:`~virtio_sim.memory.ByteAccess` for guest RAM, which lives in QEMU and is reached
with ``b64read``/``b64write``. Interrupts are the ``IRQ raise N`` lines of the
intercepted interrupt controller, delivered as level interrupts on line ``N + irq_base``.

Any qtest failure (QEMU gone, a refused command, no reply) becomes a
:class:`~guest.link.HostLinkError`, which the guest already turns into an outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import trio

from virtio_sim.guest.link import HostLink, HostLinkError
from virtio_sim.orchestration.qemu.qtest import QtestClient, QtestError
from virtio_sim.wire import IrqKind

_P = ParamSpec("_P")
_T = TypeVar("_T")


class QtestLink(HostLink):
    """A HostLink whose host is a QEMU process under qtest."""

    def __init__(self, client: QtestClient, irq_base: int = 0) -> None:
        # No frame channel: every access is a qtest command.
        self.client = client
        self.irq_base = irq_base
        self.failure: HostLinkError | None = None
        self.peer_failure: HostLinkError | None = None
        self.dma_memory = None
        self._closing = False
        self.irq_handler = lambda kind, line, value: None
        client.on_irq = self._irq

    def _irq(self, raised: bool, line: int) -> None:
        self.irq_handler(IrqKind.LINE_LEVEL, line + self.irq_base, int(raised))

    def qtest_failed(self, error: QtestError) -> HostLinkError:
        problem = HostLinkError(f"qtest: {error}")
        if not self._closing and self.peer_failure is None:
            self.peer_failure = problem
        if self.failure is None:
            self.failure = problem
        return problem

    async def _do(self, op: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self.failure:
            raise self.failure
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return op(*args, **kwargs)
        except QtestError as e:
            raise self.qtest_failed(e) from None

    async def run(self) -> None:
        """Deliver interrupts that arrive while no command is in flight."""
        try:
            while not self._closing:
                await trio.lowlevel.wait_readable(self.client.sock)
                self.client.poll()
        except QtestError as e:
            self.qtest_failed(e)
        except (OSError, trio.ClosedResourceError) as e:
            self.qtest_failed(QtestError(str(e)))

    async def read(self, addr: int, size: int) -> int:
        return await self._do(self.client.read, addr, size)

    async def write(self, addr: int, size: int, value: int) -> None:
        await self._do(self.client.write, addr, size, value)

    async def pio_read(self, port: int, size: int) -> int:
        return await self._do(self.client.pio_read, port, size)

    async def pio_write(self, port: int, size: int, value: int) -> None:
        await self._do(self.client.pio_write, port, size, value)

    async def bye(self) -> None:
        self._closing = True


class QtestMemory:
    """Guest RAM inside QEMU, read and written through qtest (a ByteAccess)."""

    def __init__(self, client: QtestClient, link: QtestLink | None = None) -> None:
        self.client = client
        self.link = link

    def _error(self, e: QtestError) -> HostLinkError:
        return self.link.qtest_failed(e) if self.link is not None else HostLinkError(f"qtest: {e}")

    def read(self, addr: int, length: int) -> bytes:
        try:
            return self.client.memread(addr, length)
        except QtestError as e:
            raise self._error(e) from None

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        try:
            self.client.memwrite(addr, bytes(data))
        except QtestError as e:
            raise self._error(e) from None
