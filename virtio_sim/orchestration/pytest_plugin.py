"""A pytest plugin (entry point ``pytest11``): fixtures for testing a driver or device
generation against the other side in a few lines. Installed with virtio-sim, so any
project's tests can use them; docs/api.md shows them.

- ``virtio_run(device, workload, **options)``: a device and a guest, one workload; the
  RunResult of ``virtio_sim.run`` (the driver profile defaults to ``--virtio-driver``).
- ``virtio_disk``: a 1 MiB raw disk image (sector n starts with n) for ``drive=``.
- ``matrix_cell(driver, device, **axes)``: one matrix cell, with the expectation of the
  matrix file (default: specs/matrices/default.toml) under ``"expected"``.
- ``conformance_target(target, **options)``: the per-requirement conformance report.

Everything is imported when a fixture is used, so loading the plugin costs nothing.
The fixtures are synchronous: call them from plain (not async) test functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DISK_SECTORS = 2048
SECTOR = 512


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtio-sim")
    group.addoption(
        "--virtio-driver",
        default=None,
        metavar="PROFILE",
        help="driver generation virtio_run uses when a test names none (specs/profiles/drivers)",
    )


@pytest.fixture
def virtio_disk(tmp_path: Path) -> Path:
    path = tmp_path / "virtio-disk.img"
    with path.open("wb") as f:
        for n in range(DISK_SECTORS):
            f.write(n.to_bytes(4, "little") + bytes(SECTOR - 4))
    return path


@pytest.fixture
def virtio_run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    from virtio_sim.orchestration.api import run

    default_driver = request.config.getoption("--virtio-driver")

    def go(device: str | list[str], workload: str, **options: Any) -> Any:
        options.setdefault("driver", default_driver)
        return run(device, workload, **options)

    return go


@pytest.fixture
def matrix_cell() -> Callable[..., dict[str, Any]]:
    from virtio_sim.orchestration.matrix.cell import run_cell, validate_cell
    from virtio_sim.orchestration.matrix.spec import Cell, expected_outcome, load_matrix

    def go(
        driver: str,
        device: str,
        *,
        transport: str = "mmio-v2",
        workload: str = "blk-rw",
        iommu: str = "none",
        iommu_platform: str = "off",
        ring: str = "split",
        machine: str = "auto",
        matrix: str | Path | None = None,
        seed: int = 1,
    ) -> dict[str, Any]:
        cell = Cell(driver, device, transport, machine, iommu, iommu_platform, ring, workload)
        validate_cell(cell)
        spec = load_matrix(Path(matrix) if matrix is not None else None)
        result = run_cell(cell, spec.timeout, seed)
        expected = expected_outcome(spec, cell)
        result["expected"] = expected.value if expected else None
        return result

    return go


@pytest.fixture
def conformance_target() -> Callable[..., Any]:
    from virtio_sim.orchestration.api import check_conformance

    def go(target: str, **options: Any) -> Any:
        options.setdefault("thorough", False)
        return check_conformance(target, **options)

    return go
