"""A stuck cell on dask is stopped at its hard deadline and reported HANG, as on the local
pool (issue 23 item 7): before, the dask task ran on and the cell came back OK."""

from __future__ import annotations

import time
from typing import Any

from virtio_sim.orchestration.matrix.executors import DaskExecutor, failed_cell, hard_deadline
from virtio_sim.orchestration.matrix.spec import Cell

STUCK_FOR = 3600.0


def _stuck_on_rng(cell: Cell, timeout: float, seed: int) -> dict[str, Any]:
    """Ignores its own timeout on rng cells (a wedged run); others answer at once."""
    if cell.workload == "rng":
        time.sleep(STUCK_FOR)  # never wakes: the deadline must kill it
    return failed_cell(cell, "OK", f"ran with timeout {timeout} seed {seed}")


def test_stuck_cell_on_a_dask_local_cluster_is_reported_hang() -> None:
    cells = [
        Cell("linux-6.1", "qemu-7.2", "mmio-v2", "auto", "none", "off", "split", "rng"),
        Cell("linux-6.1", "qemu-7.2", "mmio-v2", "auto", "none", "off", "split", "blk-rw"),
    ]
    timeout = 0.2
    results = DaskExecutor(local_workers=1).run(cells, _stuck_on_rng, timeout=timeout, seed=7)
    got = {r["workload"]: r for r in results}
    assert [r["id"] for r in results] == [c.id for c in cells]
    assert got["rng"]["outcome"] == "HANG"
    assert (
        got["rng"]["detail"]
        == f"cell did not finish within {hard_deadline(timeout):g}s; its worker was killed"
    )
    # the same worker goes on with the next cell in a fresh child
    assert got["blk-rw"]["outcome"] == "OK" and got["blk-rw"]["detail"] == "ran with timeout 0.2 seed 7"
