"""argparse types every virtio-sim command shares, so bad numbers stop at parsing.

A timeout of ``nan`` compares false with everything: ``nan <= 0`` is false, so a plain
``float`` check lets it through and it later poisons trio's deadlines (an ExceptionGroup
traceback) or makes every frame late (the host dropped every guest). ``inf`` never fires.
Both are refused here, with argparse's usual one-line usage error (exit 2).
"""

from __future__ import annotations

import argparse
import math


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero (``nan``, ``inf``, 0 and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, not {text!r}")
    return value
