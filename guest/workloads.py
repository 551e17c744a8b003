"""What a guest does with a device in a run, and the evidence it collects.

WORKLOADS is derived from the guest halves of the device kinds (guest/kinds.py): each
kind's workloads sit beside its driver's (workloads_rng.py, workloads_blk.py,
workloads_net.py, workloads_console.py, a device package's guest.py).

Each workload drives a bound driver and checks the data end to end. A check that fails
because data is wrong is CORRUPTION; a device that reports an error status or breaks the
ring is DEVICE_ERROR; the caller maps exceptions to outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping

from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.kinds import WorkloadFn, workloads

#: workload name -> (the device kind it needs, the workload); the names come from the
#: device descriptors, a workload's driver module is imported when it is looked up
WORKLOADS: Mapping[str, tuple[str, WorkloadFn]] = workloads()


def blk_pattern_seed(seed: int | None) -> int:
    """The seed of the blk workloads' data pattern (here, not in workloads_blk.py, so that
    the processes and the tests can name it without loading the blk driver)."""
    return seed if seed is not None else 0x5EED


__all__ = ["WORKLOADS", "CorruptionDetected", "WorkloadFn", "blk_pattern_seed"]
