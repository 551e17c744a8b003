"""Old driver vs new driver over the same device configurations: what changed, and why.

A changed configuration is explained by diffing the two cells' evidence, not by their
detail strings: which device a driver probed (or did not), which transport features it
acked or stopped acking, which way the device's DMA went (translated, bypassing the
IOMMU, faulting), and how far the status register got (a device that refused
FEATURES_OK). The first difference in that order is the change's cause (a driver that
never bound a device has no features to compare; a refused FEATURES_OK follows from the
features acked, not the other way round); the rest are kept as further differences.
Changes with the same cause and the same pair of outcomes form one group, which is what a
user reads first ("8 configurations: linux-4.8 accepts VIRTIO_F_ACCESS_PLATFORM,
FAILED_CLEAN -> OK").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.orchestration.matrix.spec import AXES

#: feature names that belong to the transport / ring rather than to one device type
TRANSPORT_FEATURE_PREFIXES = ("VIRTIO_F_", "VIRTIO_RING_F_")


@dataclass
class Change:
    """One configuration whose outcome differs between the two driver generations."""

    config: str
    old: dict[str, Any]
    new: dict[str, Any]
    #: every difference found, the cause first
    causes: list[str] = field(default_factory=list)

    @property
    def cause(self) -> str:
        return self.causes[0]

    @property
    def transition(self) -> str:
        return f"{self.old['outcome']} -> {self.new['outcome']}"

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "old": self.old["outcome"],
            "new": self.new["outcome"],
            "cause": self.cause,
            "differences": self.causes,
            "old_detail": self.old.get("detail", ""),
            "new_detail": self.new.get("detail", ""),
        }


@dataclass
class Group:
    """Changes sharing a cause and an outcome transition."""

    cause: str
    transition: str
    changes: list[Change]

    @property
    def headline(self) -> str:
        n = len(self.changes)
        return f"{n} configuration{'s' if n != 1 else ''}: {self.cause}, {self.transition}"

    def to_json(self) -> dict[str, Any]:
        return {
            "headline": self.headline,
            "cause": self.cause,
            "transition": self.transition,
            "configs": [c.config for c in self.changes],
        }


@dataclass
class CompatReport:
    old: str
    new: str
    configs: int
    changes: list[Change]
    #: configurations for which one side has no cell (a filter or a tool error)
    unpaired: list[str] = field(default_factory=list)
    #: configurations whose outcome did not change, with both runs' seconds
    unchanged: dict[str, float] = field(default_factory=dict)

    @property
    def groups(self) -> list[Group]:
        by: dict[tuple[str, str], list[Change]] = {}
        for c in self.changes:
            by.setdefault((c.cause, c.transition), []).append(c)
        groups = [Group(cause, tr, cs) for (cause, tr), cs in by.items()]
        return sorted(groups, key=lambda g: (-len(g.changes), g.cause, g.transition))

    def to_json(self) -> dict[str, Any]:
        return {
            "compat": {"old": self.old, "new": self.new, "configs": self.configs},
            "groups": [g.to_json() for g in self.groups],
            "changed": [c.to_json() for c in self.changes],
            "unpaired": self.unpaired,
        }


def config_key(cell: dict[str, Any], axis: str = "driver") -> str:
    return "/".join(str(cell.get(a, "")) for a in AXES if a != axis)


def compare(
    results: list[dict[str, Any]],
    old: str,
    new: str,
    *,
    axis: str = "driver",
    names: tuple[str, str] | None = None,
) -> CompatReport:
    """Pair the cells of ``old`` and ``new`` (values of ``axis``: driver generations, or
    device generations) by configuration and explain every change. ``names`` are the
    subjects of the explanations (default: the two values)."""
    pairs: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r[axis] in (old, new):
            pairs.setdefault(config_key(r, axis), {})[r[axis]] = r
    old_name, new_name = names or (old, new)
    report = CompatReport(old, new, len(pairs), [])
    for key, by in sorted(pairs.items()):
        a, b = by.get(old), by.get(new)
        if a is None or b is None:
            report.unpaired.append(key)
        elif a["outcome"] != b["outcome"]:
            report.changes.append(Change(key, a, b, explain(a, b, old_name, new_name)))
        else:
            report.unchanged[key] = _seconds(a) + _seconds(b)
    return report


def _seconds(cell: dict[str, Any]) -> float:
    return float(cell.get("seconds", 0))


# --- the differences, in the order that makes the first one the cause -----------------


def _probes(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Transport location -> what the guest found there (both runs of a configuration
    have the same machine, so the locations pair up)."""
    return {str(p.get("where")): p for p in cell.get("probes") or []}


def _probed(p: dict[str, Any] | None) -> bool:
    return p is not None and p.get("outcome") != "NOT_PROBED"


def probe_difference(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> list[str]:
    """A device one generation binds (or tries to) and the other never probes; the
    configuration's own device (the workload's) first."""
    a, b = _probes(old), _probes(new)
    own = WORKLOADS[new["workload"]][0] if new.get("workload") in WORKLOADS else None
    found = []
    for where in sorted(set(a) | set(b)):
        pa, pb = a.get(where), b.get(where)
        if _probed(pa) == _probed(pb):
            continue
        dev = str((pb or {}).get("device") or (pa or {}).get("device") or where)
        if _probed(pb):
            why = (pa or {}).get("reason") or "nothing there"
            text = f"{new_name} probes the {dev} device ({old_name}: {why})"
        else:
            why = (pb or {}).get("reason") or "nothing there"
            text = f"{new_name} does not probe the {dev} device: {why}"
        found.append((dev != own, text))
    return [text for _, text in sorted(found)]


def _negotiated(cell: dict[str, Any]) -> set[str]:
    return {str(n) for n in cell.get("negotiated") or []}


def feature_differences(
    old: dict[str, Any], new: dict[str, Any], new_name: str, transport: bool
) -> list[str]:
    """Features the new generation acks that the old did not, and the other way round
    (transport features or device features)."""

    def keep(name: str) -> bool:
        return name.startswith(TRANSPORT_FEATURE_PREFIXES) == transport

    gained = sorted(n for n in _negotiated(new) - _negotiated(old) if keep(n))
    lost = sorted(n for n in _negotiated(old) - _negotiated(new) if keep(n))
    causes = []
    if gained:
        causes.append(f"{new_name} accepts {', '.join(gained)}")
    if lost:
        causes.append(f"{new_name} does not accept {', '.join(lost)}")
    return causes


def dma_path(cell: dict[str, Any]) -> str:
    """Which way the device's DMA went, from the IOMMU evidence of the run."""
    ev = cell.get("iommu_evidence")
    if not isinstance(ev, dict) or not ev:
        ev = cell.get("iommu") if isinstance(cell.get("iommu"), dict) else None
    if not ev:
        return "no IOMMU"
    if ev.get("fault_count"):
        return "IOMMU faults"
    if ev.get("unisolated_accesses"):
        return "bypassing the IOMMU"
    if ev.get("iotlb_hits") or ev.get("iotlb_misses"):
        return "translated by the IOMMU"
    # neither translated nor counted as bypassing: the guest attached no endpoint for it
    return "untranslated (no endpoint attached)"


def dma_difference(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = dma_path(old), dma_path(new)
    return [] if a == b else [f"DMA path {a} -> {b}"]


def _reached(cell: dict[str, Any]) -> str:
    """The last status the driver wrote, plus whether the device refused FEATURES_OK (the
    driver read the status back without the bit, virtio 1.x 3.1.1 step 6)."""
    trace = [str(s) for s in cell.get("status_trace") or []]
    writes = [s for s in trace if not s.startswith("read ")]
    refused = any(
        "FEATURES_OK" in before and cur.startswith("read ") and "FEATURES_OK" not in cur
        for before, cur in itertools.pairwise(trace)
    )
    last = writes[-1] if writes else "no status written"
    return f"{last} (device refused FEATURES_OK)" if refused else last


def driver_refusal(cell: dict[str, Any]) -> bool:
    """The driver itself wrote FAILED before it ever wrote FEATURES_OK: it refused the
    device at feature negotiation (virtio 1.x 3.1.1 step 4: "if the driver cannot
    support the device's features, it sets FAILED")."""
    for s in cell.get("status_trace") or []:
        if s.startswith("read "):
            continue
        if "FEATURES_OK" in s:
            return False
        if "FAILED" in s:
            return True
    return False


def refusal_difference(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> list[str]:
    a, b = driver_refusal(old), driver_refusal(new)
    if a == b:
        return []
    if b:
        return [f"{new_name} refuses the device at feature negotiation: {new.get('detail', '')}"]
    return [f"{new_name} accepts the device {old_name} refused ({old.get('detail', '')})"]


def status_difference(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> list[str]:
    a, b = _reached(old), _reached(new)
    return [] if a == b else [f"status {old_name}: {a}; {new_name}: {b}"]


def violation_difference(old: dict[str, Any], new: dict[str, Any], new_name: str) -> list[str]:
    va, vb = old.get("violations") or [], new.get("violations") or []
    if bool(va) == bool(vb):
        return []
    if vb:
        return [f"with {new_name} the device records ring violations: {vb[0].get('message', '')}"]
    return [f"with {new_name} the device records no ring violation"]


def explain(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> list[str]:
    """Every evidence difference between two cells of one configuration, cause first.

    The order is the order of a bring-up (found, features, DMA, data), except where an
    outcome class is itself defined by later evidence: OK_NO_ISOLATION and DMA_FAULT are
    decided by the DMA path, DEVICE_ERROR by the device's ring violations
    (RunResult.add_host_evidence), so for those that difference leads, unless one side
    bound nothing at all (NOT_PROBED) or the driver refused the device's features, where
    that earlier step decides.
    """
    probe = probe_difference(old, new, old_name, new_name)
    refusal = refusal_difference(old, new, old_name, new_name)
    transport = feature_differences(old, new, new_name, transport=True)
    dma = dma_difference(old, new)
    violations = violation_difference(old, new, new_name)
    outcomes = {old["outcome"], new["outcome"]}
    lead: list[str] = []
    if "NOT_PROBED" in outcomes or refusal:
        pass  # one side never got past probing or negotiation: that decides
    elif outcomes & {"OK_NO_ISOLATION", "DMA_FAULT"}:
        lead, dma = dma, []
    elif "DEVICE_ERROR" in outcomes:
        lead, violations = violations, []
    causes = [
        *lead,
        *probe,
        *refusal,
        *transport,
        *dma,
        *violations,
        *feature_differences(old, new, new_name, transport=False),
        *status_difference(old, new, old_name, new_name),
    ]
    if not causes:  # the evidence we compare is the same: say what each run reported
        causes.append(f"detail {old.get('detail', '')!r} -> {new.get('detail', '')!r}")
    return causes


# --- outputs -----------------------------------------------------------------------------


def to_junit(report: CompatReport, fail_on_change: bool) -> str:
    """One test case per configuration (campaign/junit.py); a changed one carries its cause
    (a failure when the build is to fail on change, otherwise in system-out)."""
    from virtio_sim.orchestration.campaign.junit import to_junit as write_junit
    from virtio_sim.orchestration.campaign.verdict import CaseVerdict, Status

    changed = {c.config: c for c in report.changes}
    cases = []
    for key in sorted({*changed, *report.unpaired, *report.unchanged}):
        c = changed.get(key)
        seconds = _seconds(c.old) + _seconds(c.new) if c is not None else report.unchanged.get(key, 0.0)
        case = CaseVerdict("compat." + key.split("/")[0], key, Status.PASSED, seconds=seconds)
        if key in report.unpaired:
            case.status, case.message = Status.SKIPPED, "one of the two generations has no cell here"
        if c is not None:
            message = f"{c.transition}: {c.cause}"
            if fail_on_change:
                case.status, case.message, case.text = Status.FAILED, message, "\n".join(c.causes)
            else:
                case.output = message + "\n" + "\n".join(c.causes[1:])
        cases.append(case)
    return write_junit(f"virtio-sim.compat.{report.old}..{report.new}", cases)
