"""Report output paths, checked before the work that fills them starts.

A matrix can run for an hour; finding out at the end that ``--html`` names a missing
directory loses every result. :func:`check_writable` opens each path for appending (which
creates nothing that was not asked for: a file it had to create is removed again), so the
check is the kernel's own answer, also for root, read-only mounts and directories.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class OutputPathError(Exception):
    """An output path that cannot be written; the message is one line for the user."""


def check_writable(paths: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """Raise OutputPathError for the first (option, path) whose path cannot be written.

    ``None`` and ``-`` (stdout) are skipped.
    """
    for option, raw in paths:
        if raw is None or str(raw) == "-":
            continue
        path = Path(raw)
        if path.is_dir():
            raise OutputPathError(f"{option} {path}: is a directory, not a file")
        existed = path.exists()
        try:
            with path.open("a"):
                pass
        except OSError as e:
            raise OutputPathError(f"{option} {path}: cannot write: {e.strerror or e}") from None
        if not existed:
            try:
                path.unlink()
            except OSError:
                pass


def write_text(option: str, path: str | os.PathLike[str], text: str) -> None:
    """Write a report; an OSError becomes one OutputPathError line (the disk filled up...)."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise OutputPathError(f"{option} {path}: cannot write: {e.strerror or e}") from None
