"""Command-line filters (``--driver``, ``--transport``, ...) against a matrix file's axes.

A filter narrows the matrix it is applied to: ``--transport pci-modern`` on the default
matrix keeps every driver, device, workload, IOMMU and iommu_platform value of the file and
only drops the other transports. A value may be a shell glob (``--driver 'linux-6.1*'``),
which selects the axis values it matches and must match at least one. A plain value that
the file's axis lacks (``--ring packed`` on a split-only file) is added to that axis: it
names something the build can run (validate_cell checks it) that the file does not list,
and :func:`added_values` reports it so the selection line says so.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from virtio_sim.orchestration.matrix.spec import MatrixError, MatrixSpec

GLOB_CHARS = frozenset("*?[")


def _flag(axis: str) -> str:
    return "--" + axis.replace("_", "-")


def select_axes(spec: MatrixSpec, raw: dict[str, list[str]]) -> dict[str, list[str]]:
    """The values each filtered axis keeps, in the file's order (added values last)."""
    out: dict[str, list[str]] = {}
    for axis, wanted in raw.items():
        have = spec.axes[axis]
        keep: list[str] = []
        for w in wanted:
            if GLOB_CHARS & set(w):
                hits = [v for v in have if fnmatchcase(v, w)]
                if not hits:
                    raise MatrixError(
                        f"{_flag(axis)} {w!r} matches no {axis} of {spec.source} (values: {', '.join(have)})"
                    )
                keep += hits
            else:
                keep.append(w)
        ordered = [v for v in have if v in keep]
        ordered += [v for v in dict.fromkeys(keep) if v not in have]
        out[axis] = ordered
    return out


def added_values(spec: MatrixSpec, filters: dict[str, list[str]]) -> list[str]:
    """``axis=value`` for every filter value the file's axis does not list."""
    return [f"{a}={v}" for a, values in filters.items() for v in values if v not in spec.axes[a]]
