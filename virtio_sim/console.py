"""The rich console for a command's report on stdout (or stderr).

At a terminal rich wraps to the terminal's width. Off one (a pipe, a file, a CI log) rich
would assume 80 columns and wrap or cut driver, device and requirement names in tables;
there the console is as wide as the content and plain (no colour codes), so a log keeps
every name whole and greppable.
"""

from __future__ import annotations

import sys

from rich.console import Console

LOG_WIDTH = 100_000  # "unlimited": tables are only as wide as their content (no expand)


def output_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=LOG_WIDTH, no_color=True, highlight=False)
