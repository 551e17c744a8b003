"""Ctrl-C and SIGTERM stop a campaign run the same way: once, cleanly, with partial reports.

Python turns SIGINT into KeyboardInterrupt but leaves SIGTERM fatal, so a CI job that is
cancelled (SIGTERM) would lose every finished cell and leave workers behind. Inside
:func:`stop_on_signals` both raise :class:`Interrupted` in the main thread; the executors
stop their workers on the way out, and the caller writes what finished. Further signals
are ignored until the block ends, so a second Ctrl-C cannot cut the partial reports short.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop; ``signame`` says how (SIGINT, SIGTERM)."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class StopState:
    """What :func:`stop_on_signals` saw: ``signame`` once a signal came; after
    :meth:`hold` a signal is only recorded (the run is over, its reports are being written)."""

    def __init__(self) -> None:
        self.signame: str | None = None
        self.holding = False

    def hold(self) -> None:
        self.holding = True


@contextmanager
def stop_on_signals() -> Iterator[StopState]:
    state = StopState()

    def handler(signum: int, frame: FrameType | None) -> None:
        if state.signame is not None:
            return  # already stopping
        state.signame = signal.Signals(signum).name
        if not state.holding:
            raise Interrupted(state.signame)

    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)
