"""The exception every workload raises when data is not what it must be (CORRUPTION)."""

from __future__ import annotations


class CorruptionDetected(Exception):
    """The workload saw data that is not what it must be."""
