"""Matrix files (specs/matrices/*.toml): axes, include/exclude filters, expectations.

```toml
timeout = 10.0
[axes]
driver = ["linux-4.0", "linux-6.1"]
device = ["qemu-2.9", "qemu-7.2"]
transport = ["mmio-v1", "mmio-v2"]
device_type = ["blk"]            # optional; derived from workload otherwise
workload = ["blk-rw"]
ram = ["64M", "4G"]              # guest RAM, QEMU -m syntax (default 64M)
iommu_platform = ["off", "on"]
ring = ["split"]
iommu = ["none"]
machine = ["auto"]
[[exclude]]
driver = "linux-3.18*"
transport = "mmio-v2"
[[expect]]
driver = "linux-4.0"
iommu_platform = "on"
outcome = "FAILED_CLEAN"
```
Patterns are shell globs matched against a cell's axis values; the last matching
``expect`` entry wins.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from virtio_sim.outcome import Outcome
from virtio_sim.spec import SPECS_DIR

DEFAULT_MATRIX = SPECS_DIR / "matrices" / "default.toml"
AXES = ("driver", "device", "transport", "machine", "iommu", "iommu_platform", "ring", "workload", "ram")
#: guest RAM of a cell unless the matrix varies it (QEMU -m syntax)
DEFAULT_RAM = "64M"
AXIS_DEFAULTS: dict[str, list[str]] = {
    "machine": ["auto"],
    "iommu": ["none"],
    "iommu_platform": ["off"],
    "ring": ["split"],
    "workload": ["blk-rw"],
    "transport": ["mmio-v2"],
    "ram": [DEFAULT_RAM],
}


#: the machine a transport gets when the machine axis says "auto" (QEMU: virtio-mmio
#: devices on microvm, virtio-pci on q35)
MACHINE_FOR_TRANSPORT = {"mmio": "microvm", "pci": "q35"}


def machine_for(transport: str) -> str:
    return MACHINE_FOR_TRANSPORT[transport.split("-")[0]]


class MatrixError(ValueError):
    """A matrix file or filter is wrong; the message names the file and key."""


@dataclass(frozen=True)
class Cell:
    driver: str
    device: str
    transport: str
    machine: str
    iommu: str
    iommu_platform: str
    ring: str
    workload: str
    ram: str = DEFAULT_RAM

    @property
    def id(self) -> str:
        """The axes joined by "/"; the RAM size only when a matrix sets one (so the ids of
        matrices without a ram axis stay what they were)."""
        parts = [getattr(self, a) for a in AXES if a != "ram"]
        if self.ram != DEFAULT_RAM:
            parts.append(f"ram={self.ram}")
        return "/".join(parts)

    def axes(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in AXES}


@dataclass
class MatrixSpec:
    source: str
    axes: dict[str, list[str]]
    include: list[dict[str, str]] = field(default_factory=list)
    exclude: list[dict[str, str]] = field(default_factory=list)
    expect: list[tuple[dict[str, str], Outcome]] = field(default_factory=list)
    timeout: float = 10.0


@cache
def _matcher(pattern: str) -> Callable[[str], object]:
    """fnmatchcase(value, pattern) as one call: a plain comparison for a pattern without
    wildcards, the compiled pattern otherwise (every cell meets every expect rule)."""
    if not any(ch in pattern for ch in "*?["):
        return pattern.__eq__
    return re.compile(fnmatch.translate(pattern)).match


def _matches(cell: Cell, pattern: dict[str, str]) -> bool:
    return all(_matcher(v)(getattr(cell, k)) for k, v in pattern.items())


def _pattern(source: str, where: str, raw: Any, extra: tuple[str, ...] = ()) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise MatrixError(f"{source}: {where} must be a table")
    for k, v in raw.items():
        if k not in AXES and k not in extra:
            raise MatrixError(f"{source}: {where}: unknown axis {k!r}")
        if not isinstance(v, str):
            raise MatrixError(f"{source}: {where}: {k} must be a string pattern")
    return {k: v for k, v in raw.items() if k in AXES}


def parse_matrix(data: dict[str, Any], source: str) -> MatrixSpec:
    for k in data:
        if k not in ("axes", "include", "exclude", "expect", "timeout", "description"):
            raise MatrixError(f"{source}: unknown key {k!r}")
    raw_axes = data.get("axes")
    if not isinstance(raw_axes, dict):
        raise MatrixError(f"{source}: missing [axes] table")
    axes: dict[str, list[str]] = {}
    for k, v in raw_axes.items():
        if k not in AXES:
            raise MatrixError(f"{source}: [axes]: unknown axis {k!r} (axes: {', '.join(AXES)})")
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise MatrixError(f"{source}: [axes].{k} must be a non-empty list of strings")
        axes[k] = list(v)
    for k in ("driver", "device"):
        if k not in axes:
            raise MatrixError(f"{source}: [axes].{k} is required")
    for k, v in AXIS_DEFAULTS.items():
        axes.setdefault(k, list(v))
    spec = MatrixSpec(source, axes)
    timeout = data.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise MatrixError(f"{source}: timeout must be a finite positive number, not {timeout!r}")
    spec.timeout = float(timeout)
    for i, raw in enumerate(data.get("include", [])):
        spec.include.append(_pattern(source, f"include[{i}]", raw))
    for i, raw in enumerate(data.get("exclude", [])):
        spec.exclude.append(_pattern(source, f"exclude[{i}]", raw))
    for i, raw in enumerate(data.get("expect", [])):
        pat = _pattern(source, f"expect[{i}]", raw, extra=("outcome",))
        out = raw.get("outcome") if isinstance(raw, dict) else None
        try:
            outcome = Outcome(str(out))
        except ValueError:
            raise MatrixError(
                f"{source}: expect[{i}]: outcome {out!r} is not one of {', '.join(Outcome)}"
            ) from None
        spec.expect.append((pat, outcome))
    return spec


def load_matrix(path: Path | None = None) -> MatrixSpec:
    p = path or DEFAULT_MATRIX
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise MatrixError(f"{p}: no such matrix file") from None
    except IsADirectoryError:
        raise MatrixError(f"{p}: is a directory, not a matrix file (give a .toml file)") from None
    except OSError as e:
        raise MatrixError(f"{p}: cannot read the matrix file: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MatrixError(f"{p}: invalid TOML: {e}") from None
    return parse_matrix(data, str(p))


def expand(spec: MatrixSpec, filters: dict[str, list[str]] | None = None) -> list[Cell]:
    """Every cell of the cross product that the filters and include/exclude keep."""
    axes = dict(spec.axes)
    for k, values in (filters or {}).items():
        if values:
            axes[k] = list(values)
    cells: list[Cell] = []
    combos: list[dict[str, str]] = [{}]
    for a in AXES:
        combos = [{**c, a: v} for c in combos for v in axes[a]]
    for c in combos:
        cell = Cell(**c)
        if spec.include and not any(_matches(cell, p) for p in spec.include):
            continue
        if any(_matches(cell, p) for p in spec.exclude):
            continue
        cells.append(cell)
    return cells


def expected_outcome(spec: MatrixSpec, cell: Cell) -> Outcome | None:
    """The outcome of the last expect rule that matches ``cell`` (None: no rule does)."""
    for pattern, outcome in reversed(spec.expect):
        if _matches(cell, pattern):
            return outcome
    return None
