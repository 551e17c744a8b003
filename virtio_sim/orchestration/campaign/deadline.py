"""The one deadline mechanism of every campaign: a budget, and waiting within it.

A case that overruns is a HANG and its work is stopped, never waited for. Every runner
does that the same way: it waits for the case's completion for at most what the budget
has left (:meth:`Budget.left`), looks again, and once nothing is left it stops the work
(how depends on where the work runs: a worker process is killed, campaign/pool.py and
child.py; a thread gets CaseTimeout raised in it, threadcase.py; a trio task is cancelled,
:func:`trio_deadline`; that is the runner's part).

Two clocks, one rule. A :class:`WallBudget` counts wall seconds: a matrix cell runs a
whole guest and host with their own timers, so its bound is the run's own timeout plus a
grace (:func:`hard_deadline`). A :class:`CpuBudget` counts the CPU time of one thread: an
attack case is pure device and ring work, so a runaway loop reaches the bound at the same
point on an idle machine and on one where the case gets a tenth of a core, while a legal
case never does; a wall backstop catches a case that blocks without using CPU. Each wait
lasts what is left: a thread cannot use more CPU than wall time, so it never overruns
unseen, and a starved thread costs a few more waits, not a wrong verdict.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio

#: the shortest wait: a budget that is nearly spent is looked at again after this long
MIN_WAIT = 0.01


def hard_deadline(timeout: float) -> float:
    """Wall seconds a worker may take for a cell before it is killed: the run's own
    (cooperative) timeout plus a grace for start-up and reporting on a loaded machine."""
    return timeout * 1.5 + 3


class Budget(Protocol):
    def left(self) -> float:
        """Wall seconds the work may still run at the least before it could be over budget
        (<= 0: it is over). Waiting this long never lets it overrun unseen."""
        ...

    def describe(self) -> str:
        """The bound in words, for the HANG verdict's detail."""
        ...


@dataclass
class WallBudget:
    """``seconds`` of wall time from :meth:`restart` (or creation)."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    #: the ``clock`` value at which it is spent (a plain attribute: the pool's loop reads
    #: it for every message, thousands of times a second)
    ends: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.ends = self.clock() + self.seconds

    def restart(self) -> None:
        self.ends = self.clock() + self.seconds

    def left(self) -> float:
        return self.ends - self.clock()

    def describe(self) -> str:
        return f"{self.seconds:g}s"


def thread_cpu(tid: int) -> float:
    """CPU seconds the thread with kernel id ``tid`` has used. The clock is named by the
    thread id (Linux's MAKE_THREAD_CPUCLOCK, include/linux/posix-timers.h: ~tid << 3 |
    CPUCLOCK_PERTHREAD_MASK (4) | CPUCLOCK_SCHED (2)), not by pthread_getcpuclockid, which
    must not be given a thread that may have exited; a thread that is gone gives OSError."""
    return time.clock_gettime((~tid << 3) | 4 | 2)


@dataclass
class CpuBudget:
    """``cpu`` CPU seconds of thread ``tid``, or ``wall`` wall seconds, whichever comes
    first (the wall backstop is for a thread blocked in a system call)."""

    cpu: float
    tid: int
    wall: float
    clock: Callable[[], float] = time.monotonic
    cpu_of: Callable[[int], float] = thread_cpu
    wall_end: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.wall_end = self.clock() + self.wall

    def left(self) -> float:
        try:
            cpu_left = self.cpu - self.cpu_of(self.tid)
        except OSError:  # the thread is gone: its completion is about to be seen
            cpu_left = 0.0
        return min(cpu_left, self.wall_end - self.clock())

    def describe(self) -> str:
        return f"{self.cpu:g} CPU seconds (or {self.wall:g}s of waiting)"


def wait_within(budget: Budget, wait: Callable[[float], bool]) -> bool:
    """Wait for the work (``wait(seconds)``: True once it is done, False after ``seconds``
    without it) for at most the budget; True when it finished within it."""
    while True:
        left = budget.left()
        if left <= 0:
            return False
        if wait(max(left, MIN_WAIT)):
            return True


async def await_within(budget: Budget, wait: Callable[[float], Awaitable[bool]]) -> bool:
    """:func:`wait_within` for a trio task (``wait`` awaits, e.g. in a worker thread)."""
    while True:
        left = budget.left()
        if left <= 0:
            return False
        if await wait(max(left, MIN_WAIT)):
            return True


def trio_deadline(budget: WallBudget) -> AbstractContextManager[trio.CancelScope]:
    """For a case that is a task of the campaign's trio loop (a conformance checker): the
    budget as a cancel scope that raises trio.TooSlowError once it is spent. Trio stops
    the task at its next checkpoint, which a checker reaches at every device access."""
    import trio

    return trio.fail_after(max(budget.left(), 0.0))
