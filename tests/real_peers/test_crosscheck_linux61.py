"""The linux-6.1 profile against Linux 6.1 itself: the cross-check's rules, and one cell.

The full matrix (specs/matrices/crosscheck-linux-6.1.toml, one real-Linux boot per cell)
is a documented command, ``python -m virtio_sim.orchestration.qemu.crosscheck``; here the comparison
rules are pinned without QEMU, and one representative cell (virtio-blk, packed ring, on
q35) runs both drivers for real.
"""

from __future__ import annotations

import pytest

from virtio_sim.orchestration.qemu.crosscheck import (
    Cell,
    Matrix,
    Side,
    compare,
    last_probe,
    run_cell,
    status_values,
    traced_status,
)
from virtio_sim.orchestration.qemu.kernel import ensure_kernel

PROBE = [0, 1, 3, 11, 15]  # RESET, ACKNOWLEDGE, +DRIVER, +FEATURES_OK, +DRIVER_OK


def test_status_sequences_are_read_the_same_way_on_both_sides() -> None:
    ours = ["RESET", "ACKNOWLEDGE", "ACKNOWLEDGE|DRIVER", "ACKNOWLEDGE|DRIVER|FEATURES_OK",
            "read ACKNOWLEDGE|DRIVER|FEATURES_OK", "ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK"]  # fmt: skip
    assert last_probe(status_values(ours)) == PROBE
    # QEMU's trace: its own resets at start, SeaBIOS's probe, Linux's, QEMU's reset at the end
    trace = "".join(f"virtio_set_status vdev 0x5a val {v}\n" for v in [0, 0, *PROBE, *PROBE, 0, 0])
    assert last_probe(traced_status(trace)) == PROBE
    with pytest.raises(ValueError, match="2 devices"):
        traced_status(trace + "virtio_set_status vdev 0x5b val 1\n")


def test_a_difference_is_documented_only_by_a_matching_deviation() -> None:
    matrix = Matrix.load()
    cell = Cell("blk", "q35", "off", "split")
    same = compare(matrix, cell, Side("OK", 0x1234, PROBE), Side("OK", 0x1234, PROBE))
    assert same.verdict == "SAME" and not same.differences
    diff = compare(matrix, cell, Side("OK", 0x1234, PROBE), Side("OK", 0x1235, PROBE))
    assert diff.verdict == "DIFFERENT" and diff.differences == ["features: ours 0x1234 / Linux 0x1235"]
    matrix.deviations.append({"device": "blk", "field": "features", "reason": "because"})
    documented = compare(matrix, cell, Side("OK", 0x1234, PROBE), Side("OK", 0x1235, PROBE))
    assert documented.verdict == "DOCUMENTED" and documented.documented[0].endswith("because")
    other = compare(matrix, Cell("rng", "q35", "off", "split"), Side("OK", 1, PROBE), Side("OK", 2, PROBE))
    assert other.verdict == "DIFFERENT"  # the deviation names blk only


def test_the_matrix_skips_only_what_cannot_run() -> None:
    matrix = Matrix.load()
    assert matrix.skip_reason(Cell("blk", "microvm", "on", "split"))  # no intel-iommu on microvm
    assert matrix.skip_reason(Cell("blk", "q35", "on", "packed")) is None
    assert {c.device for c in matrix.cells} == {"rng", "blk", "net"}


@pytest.mark.qemu
def test_blk_packed_on_q35_is_the_same_with_our_guest_and_real_linux() -> None:
    result = run_cell(Matrix.load(), Cell("blk", "q35", "off", "packed"), ensure_kernel())
    assert result.verdict == "SAME", result.to_json()
    assert result.ours is not None and result.linux is not None
    assert result.linux.outcome == "OK" and result.linux.status == PROBE
    assert result.linux.features >> 34 & 1  # RING_PACKED acked by Linux 6.1 itself
