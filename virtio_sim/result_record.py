"""The one JSON record a run produces, for ``run --json`` and for every ``matrix`` cell.

Both commands print the same keys with the same meaning (specs/schema/result.schema.json,
docs/json-schema.md), so a script written against one reads the other. The configuration
keys are the matrix axes (strings); a run fills the ones it has and leaves the others null
(a run names a ``-device`` option, not a device generation). What the run found is under
keys that do not collide with those axes: ``evidence`` (the workload's checks; "workload"
is the workload's name), ``ring_info`` ("ring" is the format asked for), ``iommu_evidence``
("iommu" is the machine's IOMMU) and ``device_model`` ("device" is the device generation).

:meth:`RunResult.to_json` stays the internal form a guest process sends its parent.
"""

from __future__ import annotations

from typing import Any

from virtio_sim.outcome import RunResult

#: the configuration of a record: the matrix axes, plus what the host was given
CONFIG_KEYS = (
    "driver", "device", "transport", "machine", "iommu", "iommu_platform", "ring", "workload",
    "ram", "device_option", "device_backend",
)  # fmt: skip
#: every key of a record, in print order
#: RunResult fields whose names are taken by the configuration (matrix axes)
RENAMED = {"device": "device_model", "workload": "evidence", "ring": "ring_info", "iommu": "iommu_evidence"}
#: every key of a record, in print order; a RunResult field missing here still appears
#: (after these), and the schema test then asks for it to be documented
RECORD_KEYS = (
    "id", "outcome", "expected", "detail", *CONFIG_KEYS, "device_model", "device_features",
    "host_features", "driver_features", "negotiated", "status_trace", "probes", "evidence", "ring_info",
    "iommu_evidence", "dma_ranges", "stray_writes", "device_notes", "violations", "seconds",
)  # fmt: skip


def result_record(
    result: RunResult,
    *,
    transport: str,
    machine: str,
    workload: str,
    iommu: str,
    ram: str,
    device_option: str | None,
    driver: str | None = None,
    device: str | None = None,
    iommu_platform: str | None = None,
    ring: str | None = None,
    device_backend: str = "ours",
    seconds: float | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    found = {RENAMED.get(k, k): v for k, v in result.to_json().items() if k != "transport"}
    config = {
        "id": id, "expected": None, "driver": driver, "device": device, "transport": transport,
        "machine": machine, "iommu": iommu, "iommu_platform": iommu_platform, "ring": ring,
        "workload": workload, "ram": ram, "device_option": device_option,
        "device_backend": device_backend, "seconds": None if seconds is None else round(seconds, 4),
    }  # fmt: skip
    rec = {**found, **config}
    return {**{k: rec[k] for k in RECORD_KEYS}, **{k: v for k, v in rec.items() if k not in RECORD_KEYS}}


def bare_record(outcome: str, detail: str, **config: str | None) -> dict[str, Any]:
    """A record for a cell that produced no run (HANG killed, TOOL_ERROR, NOT_RUN): the same
    keys, with empty evidence."""
    rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    rec.update(
        outcome=outcome, detail=detail, device_backend="ours", device_model="",
        device_features="0x0", host_features="0x0", driver_features="0x0", negotiated=[],
        status_trace=[], probes=[],
        evidence={}, ring_info={}, iommu_evidence={}, dma_ranges=[], stray_writes=[], device_notes=[],
        violations=[],
    )  # fmt: skip
    rec.update(config)
    return rec
