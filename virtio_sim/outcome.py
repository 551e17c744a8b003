"""Outcome classes of a run and the result record every run produces.

The outcome is decided from evidence gathered during the run (data checks, canaries,
status bits, faults, timeouts), never from the names of the profiles involved.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Outcome(enum.StrEnum):
    OK = "OK"
    OK_NO_ISOLATION = "OK_NO_ISOLATION"
    FAILED_CLEAN = "FAILED_CLEAN"
    NOT_PROBED = "NOT_PROBED"
    HOST_REFUSED = "HOST_REFUSED"
    DMA_FAULT = "DMA_FAULT"
    DEVICE_ERROR = "DEVICE_ERROR"
    CORRUPTION = "CORRUPTION"
    HANG = "HANG"


@dataclass
class RunResult:
    outcome: Outcome
    transport: str = ""
    device_features: int = 0
    driver_features: int = 0
    negotiated: list[str] = field(default_factory=list)
    status_trace: list[str] = field(default_factory=list)
    detail: str = ""
    device: str = ""
    workload: dict[str, Any] = field(default_factory=dict)
    device_notes: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    # Ring format and ring features in use: format (split|packed), barriers (weak|platform,
    # from ORDER_PLATFORM), in_order, notification_data, ring_reset, queue sizes.
    ring: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        d["device_features"] = f"{self.device_features:#x}"
        d["driver_features"] = f"{self.driver_features:#x}"
        return d
