"""Run scenarios against targets, each case bounded, and judge what happened.

A case is: build a fresh target, play the scenario, then check (1) the required
behaviour (policy fired for the right class, abuse ignored, legal input served, error
status), (2) no device write outside allowed memory (live watch and canaries), (3) the
bystander device on the same machine still serves a good request, and (4) the victim
serves again after a driver reset. An exception escaping the host is a CRASH; a case
that does not finish within its bound is a HANG, and its thread is stopped (see run_cases).

The bound is CPU time of the case's own thread, not wall time: a case is pure device and
ring work, so a runaway loop reaches the bound at the same point on an idle machine and
on one where the case gets a tenth of a core, while a legal case never does. A case that
blocks without using CPU is caught by a wall-clock backstop instead.
"""

from __future__ import annotations

import ctypes
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from virtio_sim.attacks.scenario import CaseResult, Expect, Scenario, Verdict
from virtio_sim.attacks.targets import Bench, Target
from virtio_sim.spec import STATUS

CASE_SECONDS = 5.0  # CPU seconds of the case's thread (the slowest legal case uses < 1)
# Backstops for a case that uses no CPU while it waits (blocked in a system call): only a
# real hang reaches them, so they are generous for loaded machines.
CASE_WALL_SECONDS = 120.0
STOP_GRACE = 10.0  # wall seconds a stopped case gets to unwind (it does at its next bytecode)
ACTIVE = ("needs-reset", "drop")


class Unmet(Exception):
    """A scenario's own check of the required behaviour failed (a FAILURE, not a crash)."""


def require(cond: object, message: str) -> None:
    if not cond:
        raise Unmet(message)


def applies(s: Scenario, t: Target) -> bool:
    return (
        t.ring in s.rings
        and (not s.transports or t.transport in s.transports or ("iommu" in s.transports and t.iommu))
        and (not s.devices or t.device in s.devices)
        and (s.transports != ("iommu",) or t.iommu)
    )


def tolerated(s: Scenario, t: Target) -> bool:
    """Whether ``t`` runs lenient rings that accept what ``s`` does (see Scenario.lenient)."""
    return not t.strict and t.ring in s.lenient


def judge(s: Scenario, b: Bench) -> tuple[Verdict, str, str | None]:
    vdev = b.vdevs[0]
    fired = [v for v in vdev.violations if v.policy in ACTIVE]
    policy = fired[0].policy if fired else None
    if tolerated(s, b.target):
        flagged = [v.violation for v in vdev.violations if v.violation in s.classes]
        if flagged:
            return Verdict.FAILURE, f"lenient rings still flagged {flagged[0]}", policy
        return Verdict.HANDLED, "tolerated", policy or "tolerated"
    if s.expect is Expect.VIOLATION:
        hits = [v for v in fired if not s.classes or v.violation in s.classes]
        if not hits:
            got = [v.violation for v in vdev.violations]
            return Verdict.FAILURE, f"expected a violation in {sorted(s.classes)}, got {got}", policy
        shown = bool(b.ports[0].status() & STATUS.DEVICE_NEEDS_RESET)
        if hits[0].policy == "needs-reset" and shown != vdev.reports_needs_reset:
            # QEMU's virtio_error(): the bit only once VERSION_1 was negotiated
            why = f"needs-reset fired; DEVICE_NEEDS_RESET {'set' if shown else 'not set'}"
            return Verdict.FAILURE, why, policy
        return Verdict.HANDLED, hits[0].violation, hits[0].policy
    if fired and s.expect in (Expect.IGNORED, Expect.LEGAL):
        return Verdict.FAILURE, f"unexpected violation {fired[0].violation}: {fired[0].message}", policy
    if s.expect is Expect.SURVIVE:
        return Verdict.HANDLED, "survived", policy or "none"
    if s.expect is Expect.ERROR_STATUS:
        return Verdict.HANDLED, "error status", policy or "error-status"
    return Verdict.HANDLED, s.expect.value, policy or ("ignored" if s.expect is Expect.IGNORED else None)


def afterwards(b: Bench, recovers: bool = True) -> str | None:
    """The other device serves; the victim serves again after a reset; memory intact."""
    if b.watch.escapes:
        return b.watch.escapes[0]
    b.bring_up(1)
    if not b.serves(1):
        return "the bystander device stopped serving"
    b.bring_up(0)
    if recovers and not b.serves(0):
        return "the victim does not serve again after a reset"
    bad = b.watch.escapes or b.watch.verify()
    return bad[0] if bad else None


def run_case(s: Scenario, t: Target, scratch: str) -> CaseResult:
    start = time.perf_counter()
    b = Bench(t, scratch)
    res = CaseResult(s.id, t.name, Verdict.HANDLED)
    try:
        try:
            s.body(b)
        except Unmet as e:
            res.verdict, res.detail = Verdict.FAILURE, str(e)
        if res.verdict is Verdict.HANDLED:
            res.verdict, res.detail, res.policy = judge(s, b)
        res.violations = [f"{v.violation}/{v.policy}" for v in b.vdevs[0].violations]
        after = afterwards(b, s.recovers)
        if after is not None:
            escaped = "outside" in after or "canary" in after
            res.verdict = Verdict.ESCAPE if escaped else Verdict.FAILURE
            res.detail = after
    except Unmet as e:
        res.verdict, res.detail = Verdict.FAILURE, str(e)
    except Exception:
        res.verdict = Verdict.CRASH
        res.detail = traceback.format_exc(limit=-8)
    finally:
        b.close()
    res.seconds = time.perf_counter() - start
    return res


@dataclass
class Summary:
    results: list[CaseResult] = field(default_factory=list)
    #: threads of hung cases that could not be stopped (blocked in a system call)
    leaked: list[str] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        return sum(r.verdict is verdict for r in self.results)

    @property
    def offenders(self) -> list[CaseResult]:
        return [r for r in self.results if r.verdict is not Verdict.HANDLED]

    def counts(self) -> dict[str, int]:
        out = {v.value: self.count(v) for v in Verdict}
        out["cases"] = len(self.results)
        out["scenarios"] = len({r.scenario for r in self.results})
        out["targets"] = len({r.target for r in self.results})
        out["leaked"] = len(self.leaked)
        return out

    def listing(self, limit: int = 30) -> str:
        return "\n".join(
            f"{r.verdict.value}: {r.scenario} @ {r.target}: {r.detail.strip()[:300]}"
            for r in self.offenders[:limit]
        )


class CaseTimeout(BaseException):
    """Raised inside a case's thread once the case overran its bound. A BaseException, so
    the case's own ``except Exception`` (which turns errors into CRASH) cannot swallow it,
    while its ``finally`` blocks still run and close the bench."""


def _interrupt(ident: int) -> None:
    """Raise :class:`CaseTimeout` in thread ``ident`` at its next bytecode (CPython's
    PyThreadState_SetAsyncExc). A thread blocked inside one C call gets it on return."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(CaseTimeout))


async def run_cases(
    cases: Iterable[tuple[Scenario, Target]],
    scratch: str,
    *,
    bound: float = CASE_SECONDS,
    wall: float = CASE_WALL_SECONDS,
    stop_grace: float = STOP_GRACE,
    case: Callable[[Scenario, Target, str], CaseResult] = run_case,
) -> Summary:
    """Every case in its own thread, bounded; a case past its bound is a HANG and is stopped.

    Cases are synchronous (register writes run the device models to completion), so trio
    cannot cancel them at a checkpoint: instead the overrunning thread gets
    :class:`CaseTimeout` raised inside it, which unwinds the case (closing its bench) so
    no runaway loop outlives the run. Only a thread stuck inside a single blocking system
    call cannot be stopped that way; it is reported in ``Summary.leaked`` (a daemon thread,
    so it never holds up the interpreter's exit).

    ``bound`` is CPU seconds of the case's thread; ``wall`` the backstop for a case that
    waits without using CPU; ``stop_grace`` how long a stopped case may take to unwind."""
    out = Summary()
    limits = _Limits(bound, wall, stop_grace)
    for s, t in cases:
        out.results.append(await _bounded(s, t, scratch, limits, case, out.leaked))
    return out


@dataclass(frozen=True)
class _Limits:
    cpu: float
    wall: float
    stop_grace: float


def _thread_cpu(tid: int) -> float:
    """CPU seconds the thread with kernel id ``tid`` has used. The clock is named by the
    thread id (Linux's MAKE_THREAD_CPUCLOCK: ~tid << 3 | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED),
    not by pthread_getcpuclockid, which must not be given a thread that may have exited;
    a thread that is gone gives OSError."""
    return time.clock_gettime((~tid << 3) | 4 | 2)


async def _wait_within_cpu(done: threading.Event, tid: int, limits: _Limits) -> None:
    """Return when ``done`` is set, the thread has used ``limits.cpu`` CPU seconds, or
    ``limits.wall`` seconds have passed. Each wait lasts the CPU budget still left: a
    thread cannot use more CPU than wall time, so it never overruns unseen, and a starved
    thread costs a few more waits, not a wrong verdict."""
    wall_end = time.monotonic() + limits.wall
    while not done.is_set():
        try:
            left = limits.cpu - _thread_cpu(tid)
        except OSError:  # the thread is gone: done is about to be set
            left = 0.0
        now = time.monotonic()
        if left <= 0 or now >= wall_end:
            return
        await trio.to_thread.run_sync(done.wait, min(max(left, 0.01), wall_end - now))


async def _bounded(
    s: Scenario,
    t: Target,
    scratch: str,
    limits: _Limits,
    case: Callable[[Scenario, Target, str], CaseResult],
    leaked: list[str],
) -> CaseResult:
    got: list[CaseResult] = []
    done = threading.Event()
    lock = threading.Lock()

    def one() -> None:
        try:
            res = case(s, t, scratch)
            with lock:  # the runner interrupts only while holding it and seeing no result
                got.append(res)
        except CaseTimeout:
            pass
        finally:
            done.set()

    worker = threading.Thread(target=one, name=f"attack {s.id} @ {t.name}", daemon=True)
    worker.start()
    assert worker.ident is not None and worker.native_id is not None
    await _wait_within_cpu(done, worker.native_id, limits)
    if not done.is_set():
        with lock:
            if not got:
                _interrupt(worker.ident)
        await trio.to_thread.run_sync(done.wait, limits.stop_grace)
    if got:
        return got[0]
    detail = f"no result within {limits.cpu:g} CPU seconds (or {limits.wall:g}s of waiting)"
    if done.is_set():
        detail += "; the case was stopped"
    else:
        detail += f"; its thread is blocked in a system call and could not be stopped ({worker.name})"
        leaked.append(worker.name)
    return CaseResult(s.id, t.name, Verdict.HANG, detail)


def run_sync(
    cases: Iterable[tuple[Scenario, Target]], scratch: str, *, bound: float = CASE_SECONDS
) -> Summary:
    return trio.run(lambda: run_cases(cases, scratch, bound=bound))
