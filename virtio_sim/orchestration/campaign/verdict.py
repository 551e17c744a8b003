"""Verdicts: what a case came to, for the runners and for the report writers.

:class:`Status` and :class:`CaseVerdict` are the report model every writer reads
(campaign/junit.py): a case passed, failed, errored, was skipped or is an expected failure,
with a message, the evidence, its time and its properties, the model of JUnit XML and of
pytest's TestReport. Each campaign maps its own records onto it (matrix: outcome vs the
file's expectation; attacks: handled or not; conformance: the requirement verdicts).

:class:`NoAnswer` is what a runner says about a case it has no answer from. The runners
(campaign/pool.py, campaign/child.py, campaign/threadcase.py) do not know what
a campaign's records look like: a matrix cell is a result-record dict, an attack case a
CaseResult. Each campaign hands its runner a :class:`NoAnswer`, whose two methods build
the record of a case that overran its budget (HANG) and of a case the runner lost to a
bug of ours (TOOL_ERROR: an exception, a dead worker). They are called in the worker
process too, so an implementation is a module-level class (pickled by reference).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol


class Status(enum.Enum):
    """A case's status in a report (JUnit's element for it in the comment)."""

    PASSED = "passed"  # no child element
    FAILED = "failed"  # <failure>
    ERROR = "error"  # <error>: the case could not be judged (our bug, a checker that stopped)
    SKIPPED = "skipped"  # <skipped>: not run, not applicable, not covered
    XFAIL = "xfail"  # <skipped type="xfail">: a failure that is a documented deviation


@dataclass
class CaseVerdict:
    """One case of a report. ``message`` is the one-line reason (the element's message
    attribute), ``text`` the evidence (its body); ``seconds`` None when the case has no
    time of its own (a conformance requirement is decided inside a checker)."""

    classname: str
    name: str
    status: Status
    message: str = ""
    text: str = ""
    seconds: float | None = None
    properties: dict[str, str] = field(default_factory=dict)
    #: what the case printed or explains without failing (JUnit system-out)
    output: str = ""


class NoAnswer(Protocol):
    @staticmethod
    def hang(item: Any, bound: str, how: str) -> Any:
        """The record of ``item`` after it overran ``bound`` (Budget.describe()) and was
        stopped ``how`` (e.g. "its worker was killed")."""
        ...

    @staticmethod
    def error(item: Any, detail: str) -> Any:
        """The record of ``item`` when running it failed in the tool itself."""
        ...
