"""Run scenarios against targets, each case bounded, and judge what happened.

A case is: build a fresh target, play the scenario, then check (1) the required
behaviour (policy fired for the right class, abuse ignored, legal input served, error
status), (2) no device write outside allowed memory (live watch and canaries), (3) the
bystander device on the same machine still serves a good request, and (4) the victim
serves again after a driver reset. An exception escaping the host is a CRASH; a case
that does not finish within its bound is a HANG, and its thread is stopped (see run_cases).

The bound is CPU time of the case's own thread, not wall time (the campaign's CpuBudget,
virtio_sim/orchestration/campaign/deadline.py): a case is pure device and ring work, so a runaway loop
reaches the bound at the same point on an idle machine and on one where the case gets a
tenth of a core, while a legal case never does. A case that blocks without using CPU is
caught by a wall-clock backstop instead.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from virtio_sim.orchestration.attacks.scenario import CaseResult, Expect, Scenario, Verdict
from virtio_sim.orchestration.attacks.targets import Bench, Target
from virtio_sim.orchestration.campaign.deadline import CpuBudget
from virtio_sim.orchestration.campaign.threadcase import run_in_thread
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


async def run_cases(
    cases: Iterable[tuple[Scenario, Target]],
    scratch: str,
    *,
    bound: float = CASE_SECONDS,
    wall: float = CASE_WALL_SECONDS,
    stop_grace: float = STOP_GRACE,
    case: Callable[[Scenario, Target, str], CaseResult] = run_case,
) -> Summary:
    """Every case in its own thread under a budget; a case past it is a HANG and is stopped.

    The campaign's deadline mechanism (virtio_sim/orchestration/campaign/threadcase.py): the case runs in
    a thread with a :class:`~virtio_sim.orchestration.campaign.deadline.CpuBudget` of ``bound`` CPU
    seconds of that thread, ``wall`` the backstop for a case that waits without using CPU;
    past it the thread gets CaseTimeout raised inside it, which unwinds the case (closing
    its bench), and ``stop_grace`` wall seconds to do so. A thread stuck inside a single
    blocking system call cannot be stopped that way; it is reported in ``Summary.leaked``."""
    out = Summary()

    def budget(tid: int) -> CpuBudget:
        return CpuBudget(bound, tid, wall)

    for s, t in cases:
        ran = await run_in_thread(
            functools.partial(case, s, t, scratch), f"attack {s.id} @ {t.name}", budget, stop_grace
        )
        if ran.result is not None:
            out.results.append(ran.result)
            continue
        detail = f"no result within {ran.bound}"
        if ran.stopped:
            detail += "; the case was stopped"
        else:
            detail += f"; its thread is blocked in a system call and could not be stopped ({ran.thread})"
            out.leaked.append(ran.thread)
        out.results.append(CaseResult(s.id, t.name, Verdict.HANG, detail))
    return out


def run_sync(
    cases: Iterable[tuple[Scenario, Target]], scratch: str, *, bound: float = CASE_SECONDS
) -> Summary:
    return trio.run(lambda: run_cases(cases, scratch, bound=bound))
