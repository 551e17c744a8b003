"""The default conformance runs, and the coverage they reach together.

``virtio-sim conformance --suite default`` runs every entry of :data:`DEFAULT_RUNS` and
reports, over the whole catalogue (out-of-scope areas excepted, see catalog.OUT_OF_SCOPE),
how many testable MUST/MUST NOT entries have a checker and how many these runs actually
decided (PASS, FAIL or KNOWN). The runs are chosen so that rules become decidable:

* every host device on every transport, split and packed wherever the device offers it
  (virtio-iommu runs split only: ``--ring packed`` is refused for it, device_runner);
* variants: EVENT_IDX off, IN_ORDER, a read-only disk, a big-endian legacy guest;
* the lease fast path (``x-memory-path=lease``) next to the checked, traced path;
* a device-side config change is provoked in every run that can (net link, blk resize),
  DEVICE_NEEDS_RESET and queue reset are part of every device run;
* guest driver profiles (driver:...) on every transport family;
* QEMU 7.2 devices (the same rules against QEMU's models; MTU/SPEED_DUPLEX only there), when
  qemu-system-x86_64 is installed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from virtio_sim.orchestration.conformance.catalog import Catalog
from virtio_sim.orchestration.conformance.findings import FindingLog, Policy


@dataclass(frozen=True)
class Run:
    target: str
    transport: str
    ring: str = "split"

    def __str__(self) -> str:
        return f"{self.target} [{self.transport}, {self.ring}]"


DEVICES = ("virtio-rng", "virtio-blk", "virtio-net", "virtio-serial", "virtio-iommu")
TRANSPORTS = ("mmio-v2", "mmio-v1", "pci-modern", "pci-transitional", "pci-legacy")
LEGACY = ("mmio-v1", "pci-legacy")
IOMMU_TRANSPORTS = ("mmio-v2", "mmio-v1", "pci-modern")


def host_runs() -> list[Run]:
    out = []
    for d in DEVICES:
        for t in IOMMU_TRANSPORTS if d == "virtio-iommu" else TRANSPORTS:
            for r in ("split", "packed"):
                if r == "packed" and (t in LEGACY or d == "virtio-iommu"):
                    continue
                out.append(Run(f"host:{d}", t, r))
    out += [
        Run("host:virtio-rng,event_idx=off", "mmio-v2"),
        Run("host:virtio-blk,event_idx=off", "pci-modern", "packed"),
        Run("host:virtio-rng,in_order=on", "mmio-v2"),
        Run("host:virtio-rng,in_order=on", "pci-modern", "packed"),
        Run("host:virtio-blk,readonly=on", "mmio-v2"),
        Run("host:virtio-blk,x-guest-order=big", "mmio-v1"),
        Run("host:virtio-blk,x-guest-order=big", "pci-legacy"),
        Run("host:virtio-net,mrg_rxbuf=off,guest_csum=off", "mmio-v2"),
        Run("host:virtio-net,mq=on", "pci-modern"),
        Run("host:virtio-net,x-guest-order=big", "mmio-v1"),
        Run("host:virtio-net,x-guest-order=big", "pci-legacy"),
        Run("host:virtio-serial,x-guest-order=big", "mmio-v1"),
        Run("host:virtio-serial,x-guest-order=big", "pci-legacy"),
    ]
    # the legacy interface of a transitional function ("transitional device" rules)
    out += [Run(f"host:{d},x-interface=legacy", "pci-transitional") for d in DEVICES if d != "virtio-iommu"]
    for d in ("virtio-rng", "virtio-blk", "virtio-net"):
        for r in ("split", "packed"):
            out.append(Run(f"host:{d},x-memory-path=lease", "pci-modern", r))
    return out


DRIVER_RUNS = (
    Run("driver:linux-6.1", "mmio-v2"),
    Run("driver:linux-6.1", "pci-modern", "packed"),
    Run("driver:linux-6.1", "pci-legacy"),
    Run("driver:linux-4.0", "pci-transitional"),
    Run("driver:linux-3.18", "mmio"),
    Run("driver:linux-6.1,device=blk,event_idx=off", "mmio-v2"),
    Run("driver:linux-6.1,device=rng,in_order=on,notification_data=on", "pci-modern", "packed"),
    Run("driver:linux-6.1,device=rng,x-memory-path=lease", "pci-modern"),
    Run("driver:linux-6.1,device=net,csum=off,mrg_rxbuf=off,ctrl_rx=off", "pci-legacy"),
    Run("driver:linux-6.1,device=net,csum=off", "mmio-v2"),
    # packed lists in the ring (no indirect tables): the list-exposure order is judged
    Run("driver:linux-6.1,device=blk,indirect_desc=off", "pci-modern", "packed"),
    # a real queue reset (VIRTIO_F_RING_RESET) by the driver, on both register layouts
    Run("driver:linux-6.1,device=rng,workload=rng-queue-reset", "mmio-v2"),
    Run("driver:linux-6.1,device=rng,workload=rng-queue-reset", "pci-modern"),
    # the driver removed (device reset, then its queues deleted): how it stops a queue
    Run("driver:linux-6.1,device=rng,workload=rng-remove", "mmio-v2"),
    Run("driver:linux-6.1,device=rng,workload=rng-remove", "mmio-v1"),
)

QEMU_RUNS = (
    Run("qemu:virtio-rng", "mmio-v2"),
    Run("qemu:virtio-blk", "pci-modern"),
    Run("qemu:virtio-rng", "pci-modern", "packed"),
    Run("qemu:virtio-rng", "pci-legacy"),
    Run("qemu:virtio-rng,x-interface=legacy", "pci-transitional"),
    Run("qemu:virtio-iommu", "pci-modern"),
    # MTU and SPEED_DUPLEX: offered by QEMU's virtio-net with these properties, not by ours
    Run("qemu:virtio-net,host_mtu=1500,speed=1000,duplex=full", "pci-modern"),
    Run("qemu:virtio-serial", "pci-modern"),
)


def default_runs(with_qemu: bool | None = None) -> list[Run]:
    qemu = shutil.which("qemu-system-x86_64") is not None if with_qemu is None else with_qemu
    return host_runs() + list(DRIVER_RUNS) + (list(QEMU_RUNS) if qemu else [])


QEMU_DOC = Path(__file__).resolve().parents[3] / "docs" / "qemu-deviations.md"
#: how an ERROR reads when QEMU itself died under a request (documented per device there)
QEMU_DIED = "QEMU closed the qtest connection"


def qemu_documented(doc: Path = QEMU_DOC) -> set[tuple[str, str, str, str]]:
    """(target, transport, ring, id) of every QEMU FAIL docs/qemu-deviations.md explains."""
    if not doc.exists():
        return set()
    m = re.search(r"```conformance-failures\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    if m is None:
        return set()
    out = set()
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.add((parts[0], parts[1], parts[2], parts[3]))
    return out


def unexplained(
    run: Run, log: FindingLog, catalog: Catalog, documented: set[tuple[str, str, str, str]]
) -> list[str]:
    """MUST/MUST NOT failures that are neither KNOWN nor (QEMU) documented, and ERRORs
    (on QEMU: other than the device dying, which the documentation explains per device)."""
    from virtio_sim.orchestration.conformance.findings import MANDATORY_LEVELS

    out = []
    for f in log.unexplained_failures():
        if catalog.level_of(f.requirement) not in MANDATORY_LEVELS:
            continue
        if (run.target, run.transport, run.ring, f.requirement) in documented:
            continue
        out.append(f"FAIL {f.requirement}")
    for f in log.errors():
        if run.target.startswith("qemu:") and any(QEMU_DIED in e for e in f.evidence):
            continue
        out.append(f"ERROR {f.requirement}: {'; '.join(f.evidence)[:120]}")
    out += [f"ERROR {e}" for e in log.run_errors]
    return out


async def run_one(run: Run, catalog: Catalog, policy: Policy = Policy.LENIENT) -> FindingLog:
    if run.target.startswith("driver:"):
        from virtio_sim.orchestration.conformance.driver_runner import run_driver_target

        return await run_driver_target(
            run.target, transport=run.transport, ring=run.ring, policy=policy, catalog=catalog
        )
    from virtio_sim.orchestration.conformance.device_runner import run_device_target

    return await run_device_target(
        run.target, transport=run.transport, ring=run.ring, policy=policy, catalog=catalog, thorough=False
    )


def run_suite(
    runs: list[Run], catalog: Catalog, progress: Callable[[Run, FindingLog], None] | None = None
) -> list[tuple[Run, FindingLog]]:
    """Every run in its own trio.run (a run that crashes is a run-level ERROR, not the end)."""
    out = []
    for run in runs:
        try:
            log = trio.run(run_one, run, catalog)
        except Exception as e:  # a broken target gives a finding, never a traceback
            log = FindingLog(catalog.level_of, Policy.LENIENT)
            log.run_errors.append(f"{run}: the run stopped: {type(e).__name__}: {e}")
        out.append((run, log))
        if progress is not None:
            progress(run, log)
    return out
