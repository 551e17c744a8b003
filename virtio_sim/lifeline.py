"""A child process's lifeline: its stdin, a pipe whose other end only the parent holds.

A process that is killed outright (SIGKILL) cannot stop its children; but the kernel
closes its pipes, so a child watching its stdin sees end-of-file at once and can shut down
as if told to. ``virtio-sim run --processes`` starts its host and guest with
``--lifeline`` so that they never outlive it.
"""

from __future__ import annotations

import os
import sys

import trio


async def wait_for_stdin_eof() -> None:
    """Return when stdin reaches end of file (or cannot be read at all)."""
    try:
        fd = os.dup(sys.stdin.fileno())
    except (OSError, ValueError):
        return
    stream = trio.lowlevel.FdStream(fd)
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        await stream.aclose()
