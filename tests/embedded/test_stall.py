"""guest/stall.py: a run ends at its deadline as soon as nothing can happen before it,
and never while a timer or a task waiting for I/O could still change something."""

from __future__ import annotations

import socket
import subprocess
import sys

import trio
import trio.testing

from virtio_sim.guest.stall import TRIO_OWN_READERS, cancel_when_stalled, closed_world_idle


def test_trio_keeps_the_number_of_readers_the_rule_allows_for() -> None:
    async def main() -> int:
        await trio.testing.wait_all_tasks_blocked()
        readers: int = trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read
        return readers

    assert trio.run(main) == TRIO_OWN_READERS


def test_a_run_with_nothing_left_to_run_ends_before_its_deadline() -> None:
    async def main() -> tuple[bool, list[str]]:
        stalled: list[str] = []
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(3600) as scope:
                nursery.start_soon(cancel_when_stalled, scope, stalled)
                await trio.Event().wait()  # a completion that never comes
            nursery.cancel_scope.cancel()
        return scope.cancelled_caught, stalled

    # a virtual clock: without the rule the deadline would come at once, unexplained
    cancelled, stalled = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert cancelled and stalled and "stalled" in stalled[0]


def test_a_due_timer_is_waited_for_and_its_work_completes() -> None:
    """A driver that polls (a timer before the deadline) is not stalled: with a virtual
    clock, the timer fires and the request completes; the deadline never comes into it."""

    async def main() -> tuple[bool, list[str]]:
        stalled: list[str] = []
        done = trio.Event()

        async def device_answers_later() -> None:
            await trio.sleep(5)
            done.set()

        async with trio.open_nursery() as nursery:
            with trio.move_on_after(10) as scope:
                nursery.start_soon(cancel_when_stalled, scope, stalled)
                nursery.start_soon(device_answers_later)
                await done.wait()
            nursery.cancel_scope.cancel()
        return scope.cancelled_caught, stalled

    cancelled, stalled = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not cancelled and not stalled


def test_a_task_waiting_for_io_means_the_world_is_not_closed() -> None:
    """A host in another process (a socket to read) can still answer: no stall verdict,
    only the deadline ends such a run."""
    a, b = socket.socketpair()

    async def main() -> tuple[bool, list[str], bool]:
        stalled: list[str] = []
        sock = trio.socket.from_stdlib_socket(a)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sock.recv, 1)
            await trio.testing.wait_all_tasks_blocked()
            closed, _ = closed_world_idle()
            scope = trio.CancelScope(deadline=trio.current_time() + 3600)
            with scope:
                await cancel_when_stalled(scope, stalled)  # returns: not its call
            nursery.cancel_scope.cancel()
        return closed, stalled, scope.cancel_called

    try:
        closed, stalled, cancelled = trio.run(main)
    finally:
        a.close()
        b.close()
    assert not closed and not stalled and not cancelled


def test_the_rule_costs_no_test_framework_at_start_up() -> None:
    """trio.testing imports pytest: the guest must not (every run and matrix worker would pay)."""
    probe = "import virtio_sim.guest.boot, sys; print('pytest' in sys.modules, 'trio.testing' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["False", "False"]
