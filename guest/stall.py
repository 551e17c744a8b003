"""End a run at its deadline as soon as nothing can happen before the deadline.

A driver that waits for a completion the device will never make (a legacy driver in
front of a device QEMU's virtio_error() broke: no DEVICE_NEEDS_RESET, no interrupt, the
device just stops, hw/virtio/virtio.c virtio_error()) hangs; the run ends in HANG when
its timeout passes. When host and guest run in one trio run (the embedded mode) that
outcome is already decided the moment the run stalls: every task waits, no timer is due
before the run's deadline, and no task waits for I/O, so no event can ever arrive that
would wake anything. Waiting out the wall-clock rest of the timeout would only burn it
(the matrix has a few hundred such cells). This is virtual time's rule (trio's MockClock
autojump: an idle run jumps to its next deadline) applied to the one deadline that ends
the run, so the outcome and its evidence are the ones the timeout would have produced.

It never fires where the world is not closed: a guest whose host is another process
(socket reads outstanding), a QEMU peer (the qtest socket), a net backend on a real
socket; an earlier timer (a driver polling, a rate limit) is waited for first. One blind
spot: a task waiting for a worker thread looks blocked to trio. No link of the guest's
run uses threads (host/server.py runs them only in the host process, for DMA frames).
"""

from __future__ import annotations

import trio

# trio.testing.wait_all_tasks_blocked is this function; importing trio.testing itself would
# import pytest (trio.testing._raises_group), 1.4 s of start-up for every run and worker
from trio._core._generated_run import wait_all_tasks_blocked

#: tasks trio itself keeps waiting for reads in every run: the entry queue's wakeup
#: socket (trio/_core/_wakeup_socketpair.py); tests/embedded/test_stall.py pins the number
TRIO_OWN_READERS = 1
#: how close the next due time must be to the run's deadline to be that deadline (s)
SAME_DEADLINE = 1e-3


def closed_world_idle() -> tuple[bool, float]:
    """(no task waits for I/O beyond trio's own, seconds to the next timer or deadline),
    read at a moment when no task is runnable."""
    stats = trio.lowlevel.current_statistics()
    io = stats.io_statistics
    readers = getattr(io, "tasks_waiting_read", None)
    writers = getattr(io, "tasks_waiting_write", None)
    if readers is None or writers is None:
        return False, stats.seconds_to_next_deadline  # another I/O backend: not judged
    closed = readers <= TRIO_OWN_READERS and writers == 0 and stats.run_sync_soon_queue_size == 0
    return closed, stats.seconds_to_next_deadline


async def cancel_when_stalled(scope: trio.CancelScope, stalled: list[str]) -> None:
    """Cancel ``scope`` (whose deadline ends the run) once the run stalls before it;
    appends the reason to ``stalled``. Returns without cancelling when the run is not a
    closed world (a task waits for I/O): then only the deadline ends it."""
    while True:
        await wait_all_tasks_blocked()
        closed, due_in = closed_world_idle()
        if not closed:
            return
        now = trio.current_time()
        if now + due_in < scope.deadline - SAME_DEADLINE:
            await trio.sleep_until(now + due_in)  # a timer is due first: let it fire
            continue
        stalled.append(
            "the run stalled: every task waits, no timer is due and no I/O is outstanding "
            "before the deadline, so nothing could complete"
        )
        scope.cancel()
        return
