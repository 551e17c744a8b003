"""A synchronous case in its own thread, under a budget, stopped when it overruns (attacks).

Attack cases are synchronous (register writes run the device models to completion) and
need the bench's in-process objects, so they run in a thread of the campaign's process,
where trio cannot cancel them at a checkpoint. The runner waits within the case's budget
(campaign/deadline.py, usually a :class:`~virtio_sim.orchestration.campaign.deadline.CpuBudget`) and,
once it is spent, raises :class:`CaseTimeout` inside the thread, which unwinds the case
(its ``finally`` blocks close the bench) so no runaway loop outlives the run. Only a
thread stuck inside a single blocking system call cannot be stopped that way; it is
reported as leaked (a daemon thread, so it never holds up the interpreter's exit).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from virtio_sim.orchestration.campaign.deadline import Budget, await_within

T = TypeVar("T")


class CaseTimeout(BaseException):
    """Raised inside a case's thread once the case overran its budget. A BaseException, so
    the case's own ``except Exception`` (which turns errors into CRASH) cannot swallow it,
    while its ``finally`` blocks still run."""


def _interrupt(ident: int) -> None:
    """Raise :class:`CaseTimeout` in thread ``ident`` at its next bytecode (CPython's
    PyThreadState_SetAsyncExc). A thread blocked inside one C call gets it on return."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(CaseTimeout))


@dataclass
class Bounded(Generic[T]):
    """What became of a bounded case: its result, or none (it overran); ``stopped`` when
    the overrunning thread unwound, ``thread`` its name (leaked when not stopped)."""

    result: T | None
    stopped: bool
    thread: str
    #: the budget in words (Budget.describe()), for the HANG detail
    bound: str


async def run_in_thread(
    case: Callable[[], T], name: str, budget_for: Callable[[int], Budget], stop_grace: float
) -> Bounded[T]:
    """Run ``case()`` in a daemon thread named ``name``; ``budget_for(native thread id)``
    gives its budget. Past the budget the thread is interrupted and given ``stop_grace``
    wall seconds to unwind."""
    got: list[T] = []
    done = threading.Event()
    lock = threading.Lock()

    def one() -> None:
        try:
            res = case()
            with lock:  # the runner interrupts only while holding it and seeing no result
                got.append(res)
        except CaseTimeout:
            pass
        finally:
            done.set()

    worker = threading.Thread(target=one, name=name, daemon=True)
    worker.start()
    assert worker.ident is not None and worker.native_id is not None
    budget = budget_for(worker.native_id)

    async def wait(seconds: float) -> bool:
        return await trio.to_thread.run_sync(done.wait, seconds)

    if not await await_within(budget, wait) and not done.is_set():
        with lock:
            if not got:
                _interrupt(worker.ident)
        await trio.to_thread.run_sync(done.wait, stop_grace)
    return Bounded(got[0] if got else None, done.is_set(), worker.name, budget.describe())
