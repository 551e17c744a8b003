"""The embedded mode without framing: the guest calls the host machine directly.

``RunConfig.framed`` keeps the frame path (codec, memory channels, the frame server) in
one process; the direct link must give the same results, cell for cell, and fail the
same way on an access the wire would refuse. The whole default matrix is compared with
the command in docs/benchmarks.md ("Matrix outcomes before and after").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import trio

from virtio_sim import wire
from virtio_sim.guest.link import HostLink, HostLinkError
from virtio_sim.host.build import HostConfig, HostSetup, build_host
from virtio_sim.host.server import serve
from virtio_sim.layouts import MMIO_OFFSETS
from virtio_sim.orchestration.direct_link import YIELD_EVERY, DirectLink
from virtio_sim.orchestration.embedded import RunConfig, run_embedded, run_embedded_sync
from virtio_sim.orchestration.matrix.cell import _run_cell
from virtio_sim.orchestration.matrix.run import plan
from virtio_sim.orchestration.matrix.spec import load_matrix
from virtio_sim.outcome import RunResult
from virtio_sim.spec import MMIO


def _framed(cfg: RunConfig) -> RunResult:
    return trio.run(run_embedded, dataclasses.replace(cfg, framed=True))


def _record(cell: Any, runner: Callable[[RunConfig], RunResult]) -> dict[str, Any]:
    out = _run_cell(cell, 10.0, 1, runner)
    out.pop("seconds")
    return out


def _cells() -> list[Any]:
    """A spread of the default matrix: every transport, ring, IOMMU and outcome kind."""
    cells = plan(load_matrix())
    return cells[::97]


@pytest.mark.parametrize("cell", _cells(), ids=lambda c: c.id)
def test_direct_and_framed_runs_give_the_same_record(cell: Any) -> None:
    assert _record(cell, run_embedded_sync) == _record(cell, _framed)


def test_the_spread_covers_the_matrix() -> None:
    records = [_record(c, run_embedded_sync) for c in _cells()]
    outcomes = {r["outcome"] for r in records}
    assert {"OK", "HOST_REFUSED", "FAILED_CLEAN", "HANG"} <= outcomes, outcomes
    assert {r["transport"] for r in records} >= {"mmio-v1", "mmio-v2", "pci-modern", "pci-legacy"}
    assert {r["ring"] for r in records} == {"split", "packed"}


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    s = build_host(HostConfig(devices=["virtio-rng-device"], seed=1))
    yield s
    s.close()


async def _framed_link(nursery: trio.Nursery, setup: HostSetup) -> HostLink:
    host_end, guest_end = wire.memory_link()
    nursery.start_soon(serve, host_end, setup.machine)
    link = HostLink(guest_end)
    nursery.start_soon(link.run)
    return link


async def test_a_bad_access_fails_both_links_alike(setup: HostSetup) -> None:
    base = setup.machine.slots[0].base
    errors = []
    async with trio.open_nursery() as n:
        for link in (await _framed_link(n, setup), DirectLink(setup.machine)):
            assert await link.read(base + MMIO_OFFSETS["MagicValue"], 4) == MMIO.magic
            with pytest.raises(HostLinkError) as e:
                with trio.fail_after(5):
                    await link.read(base, 3)
            errors.append(str(e.value))
            assert link.peer_failure is not None
            with pytest.raises(HostLinkError):
                await link.read(base, 4)  # the link stays down
        n.cancel_scope.cancel()
    assert errors[0] == errors[1] == "host error 1: access size 3 is not 1, 2, 4 or 8"


async def test_a_guest_polling_a_register_still_yields(setup: HostSetup) -> None:
    """A direct access does not yield; the link checkpoints every YIELD_EVERY accesses so
    a driver spinning on a register can still be cancelled (its run's timeout)."""
    link = DirectLink(setup.machine)
    base = setup.machine.slots[0].base
    reads = 0
    with trio.move_on_after(0):
        while reads < 100 * YIELD_EVERY:
            await link.read(base + MMIO_OFFSETS["Status"], 4)
            reads += 1
    assert reads <= YIELD_EVERY


async def test_interrupts_raised_in_an_access_arrive_after_it(setup: HostSetup) -> None:
    """The frame server sends the reply first, then the IRQ frames of that access: the
    direct link hands them over when the access returns, in order."""
    link = DirectLink(setup.machine)
    seen: list[tuple[str, int]] = []
    link.irq_handler = lambda kind, line, value: seen.append(("irq", line))

    def access(addr: int, size: int) -> int:
        setup.machine.irq_out(7, True)
        setup.machine.irq_out(7, False)
        seen.append(("access", addr))
        return 5

    setup.machine.mmio_read = access  # type: ignore[method-assign]
    assert await link.read(0x1000, 4) == 5
    assert seen == [("access", 0x1000), ("irq", 7), ("irq", 7)]
