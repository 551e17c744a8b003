"""virtio-sim: a virtio feature-negotiation and vring emulator.

The Python API (docs/api.md): ``virtio_sim.run(...)`` runs one device with one guest
driver generation and returns the RunResult ``virtio-sim run --json`` prints;
``virtio_sim.Matrix(...)`` plans and runs a matrix (cells as ``virtio-sim matrix --json``);
``virtio_sim.compare_drivers(...)`` and ``virtio_sim.check_conformance(...)`` return the
reports of ``virtio-sim compat`` and ``virtio-sim conformance`` (virtio_sim.orchestration.compat and
virtio_sim.orchestration.conformance are the modules behind them). The names are loaded on first use
(virtio_sim/orchestration/api.py), so importing a submodule does not pull in the host and guest stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtio_sim.orchestration.api import (
        ConfigError,
        Matrix,
        MatrixError,
        MatrixResult,
        Outcome,
        RunResult,
        check_conformance,
        compare_drivers,
        run,
        run_async,
    )

__all__ = [
    "ConfigError",
    "Matrix",
    "MatrixError",
    "MatrixResult",
    "Outcome",
    "RunResult",
    "__version__",
    "check_conformance",
    "compare_drivers",
    "run",
    "run_async",
]


def _version() -> str:
    """The installed distribution's version, looked up on first use (importlib.metadata
    and the email parser it needs cost more than the rest of a one-device run's start)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("virtio-sim")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = globals()["__version__"] = _version()
        return value
    if name in __all__:
        return getattr(import_module("virtio_sim.orchestration.api"), name)
    raise AttributeError(f"module 'virtio_sim' has no attribute {name!r}")
