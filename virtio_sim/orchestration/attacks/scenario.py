"""One attack case: a named, reproducible scenario and the result it must produce.

A scenario is deterministic (no randomness outside its body's fixed inputs), so its id
alone reproduces it: ``virtio-sim attack --scenario ID``. ``row`` points at the class of
misbehaviour it exercises in specs/attacks.toml (A1 ... G61, plus X rows of our own).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Expect(enum.Enum):
    """What the side under attack must do."""

    VIOLATION = "violation"  # the error policy fires for one of ``classes``
    IGNORED = "ignored"  # register/ring abuse without effect: noted or refused, device usable
    LEGAL = "legal"  # unusual but allowed by the spec: must just work
    ERROR_STATUS = "error-status"  # the request completes with a device error status
    CLOSED = "closed"  # wire: the connection ends with an error, the server keeps serving
    BROKEN = "broken"  # reverse: the driver marks the device broken and resets it
    SURVIVE = "survive"  # no rule says what to do: any policy, but no crash/hang/escape


class Verdict(enum.Enum):
    HANDLED = "handled"
    CRASH = "crash"  # an exception escaped the side under attack
    HANG = "hang"  # the case did not finish within its bound
    ESCAPE = "escape"  # memory outside what was allowed changed (canaries) or was reached
    FAILURE = "failure"  # no crash, but not the required behaviour


@dataclass(frozen=True)
class Scenario:
    id: str
    row: str  # specs/attacks.toml row (e.g. "A1")
    side: str  # "ring" | "regs" | "wire" | "device"
    expect: Expect
    title: str
    body: Callable[[Any], None] = field(compare=False, repr=False)
    #: violation classes accepted for Expect.VIOLATION
    classes: frozenset[str] = frozenset()
    #: ring formats the scenario applies to
    rings: tuple[str, ...] = ("split", "packed")
    #: transports it applies to (empty: all)
    transports: tuple[str, ...] = ()
    #: device models it applies to (empty: all)
    devices: tuple[str, ...] = ()
    #: False when the scenario breaks the backend for good (no recovery check)
    recovers: bool = True
    #: ring formats on which lenient rings (x-strict-rings=off) accept this input: there
    #: none of ``classes`` may fire (the input is tolerated, as QEMU does) and the case must
    #: still be clean; on strict targets, and on the other formats, ``expect`` holds
    lenient: tuple[str, ...] = ()


@dataclass
class CaseResult:
    scenario: str
    target: str
    verdict: Verdict
    detail: str = ""
    policy: str | None = None  # which policy fired: needs-reset | drop | error-status | ...
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": self.target,
            "verdict": self.verdict.value,
            "policy": self.policy,
            "violations": self.violations,
            "detail": self.detail,
            "seconds": round(self.seconds, 4),
        }
