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
    #: the device's feature bits as the guest read them on this transport (0: the guest
    #: never read them: refused, not probed): the same meaning with our devices and QEMU's
    device_features: int = 0
    driver_features: int = 0
    negotiated: list[str] = field(default_factory=list)
    status_trace: list[str] = field(default_factory=list)
    detail: str = ""
    device: str = ""
    workload: dict[str, Any] = field(default_factory=dict)
    device_notes: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    iommu: dict[str, Any] = field(default_factory=dict)
    # Ring format and ring features in use: format (split|packed), barriers (weak|platform,
    # from ORDER_PLATFORM), in_order, notification_data, ring_reset, queue sizes.
    ring: dict[str, Any] = field(default_factory=dict)
    #: every transport the guest looked at: where, device, outcome (BOUND | NOT_PROBED |
    #: FAILED), reason, and how it was found (cmdline, acpi:PATH HID, pci)
    probes: list[dict[str, Any]] = field(default_factory=list)
    #: our host's internal offer, before a transport's view (0: QEMU's devices / unknown)
    host_features: int = 0
    #: guest-physical [start, end) ranges the guest's DMA API ever lent a device
    dma_ranges: list[list[int]] = field(default_factory=list)
    #: device writes to guest RAM that the guest never lent (address, length), if any
    stray_writes: list[list[int]] = field(default_factory=list)

    def add_host_evidence(self, evidence: dict[str, Any]) -> RunResult:
        """Fold in what the host saw (``HostSetup.evidence()``, in this process or sent by
        a host process), so that both modes judge a run by the same rules.

        Precedence: data corruption stays CORRUPTION; IOMMU faults make DMA_FAULT (the device
        was stopped by translation, whatever error the guest then saw); ring violations turn
        an apparent OK into DEVICE_ERROR; raw DMA by a device the guest had put behind its
        IOMMU turns OK into OK_NO_ISOLATION.
        """
        devices = evidence.get("devices") or []
        if devices:
            dev = devices[0]
            # the host model's whole internal offer (transport bits a legacy or modern
            # interface hides included) is kept apart; device_features stays the guest's view
            self.host_features = int(dev["device_features"])
            self.device_notes = list(dev["notes"])
            self.violations = [dict(v) for v in dev["violations"]]
            if self.ring and dev.get("ring"):
                self.ring.update(dev["ring"])
            if self.outcome is Outcome.HANG and self.violations and "device:" not in self.detail:
                # what made the device stop serving: the evidence of the hang
                self.detail += f" (device: {self.violations[0]['message']})"
            if self.outcome is Outcome.OK and self.violations:
                self.outcome = Outcome.DEVICE_ERROR
                first = self.violations[0]["message"]
                self.detail = f"device recorded ring violations: {first}"
            others = [v for d in devices[1:] for v in d["violations"]]
            if self.outcome is Outcome.OK and others:
                self.outcome = Outcome.DEVICE_ERROR
                self.detail = f"another device recorded ring violations: {others[0]['message']}"
        self._judge_raw_writes(evidence.get("raw_writes") or [])
        iommu = evidence.get("iommu")
        if iommu is not None:
            self.iommu = {k: v for k, v in iommu.items() if k != "first_fault_address"}
            if iommu["fault_count"] and self.outcome is not Outcome.CORRUPTION:
                self.outcome = Outcome.DMA_FAULT
                self.detail = (
                    f"{iommu['fault_count']} IOMMU fault(s), first at IOVA "
                    f"{iommu['first_fault_address']:#x}; " + self.detail
                )
            elif self.outcome is Outcome.OK and iommu["unisolated_accesses"]:
                self.outcome = Outcome.OK_NO_ISOLATION
                self.detail = (
                    f"worked, but {iommu['unisolated_accesses']} DMA accesses bypassed the IOMMU "
                    "for an endpoint the guest had attached"
                )
        return self

    def _judge_raw_writes(self, written: list[list[int]]) -> None:
        """Untranslated device writes that landed in guest RAM the guest never lent the
        device (an IOVA used as a guest-physical address that aliases RAM, a p2m view the
        driver did not know about): the guest's memory changed under it, silently.
        Only a guest that reported its DMA ranges can be judged."""
        if not written or not self.dma_ranges:
            return
        from virtio_sim.dma import outside

        stray = outside(written, self.dma_ranges)
        if not stray:
            return
        self.stray_writes = [[a, b - a] for a, b in stray[:8]]
        start, end = stray[0]
        total = sum(b - a for a, b in stray)
        before = f" ({self.outcome}: {self.detail})" if self.detail else f" ({self.outcome})"
        self.outcome = Outcome.CORRUPTION
        self.detail = (
            f"device wrote {total} byte(s) of guest RAM the driver never lent it, first "
            f"[{start:#x}, {end:#x}) (the device did not read the bus address the way the "
            f"driver meant it: an IOVA used untranslated, a pseudo-physical address used as "
            f"a machine one){before}"
        )

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        """The inverse of :meth:`to_json` (a result printed by a guest process)."""
        fields = dict(d)
        fields["outcome"] = Outcome(fields["outcome"])
        for key in ("device_features", "driver_features", "host_features"):
            if key in fields:
                fields[key] = int(fields[key], 16) if isinstance(fields[key], str) else fields[key]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in fields.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        d["device_features"] = f"{self.device_features:#x}"
        d["driver_features"] = f"{self.driver_features:#x}"
        d["host_features"] = f"{self.host_features:#x}"
        return d
