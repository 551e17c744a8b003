"""The linux-6.1 profile checked against Linux 6.1 itself (specs/matrices/crosscheck-linux-6.1.toml).

Every cell (device x QEMU machine x iommu_platform x ring) runs twice against the same
device model of ours:

* our guest stack with the linux-6.1 profile, embedded
  (:func:`virtio_sim.orchestration.embedded.run_embedded`);
* Debian's Linux 6.1 booted in QEMU 7.2 with the model behind vhost-user
  (:func:`virtio_sim.orchestration.qemu.linux_vhost.boot_with_vhost_user`), one boot per cell so that
  every status write QEMU traces (``-trace virtio_set_status``) belongs to that device.

Compared per cell: the outcome (OK when the workload's data checks out: the entropy the
device served, the bytes on the disk, frames both ways), the acked feature word (our
result's driver features vs the guest's /sys/bus/virtio/devices/*/features) and the status
sequence of the driver's last probe (from its reset to DRIVER_OK). A difference is SAME
only if it is none; DOCUMENTED when a [[deviation]] of the matrix names it with its
source; otherwise DIFFERENT, and the command exits 1.

    python -m virtio_sim.orchestration.qemu.crosscheck [--json PATH] [--only GLOB] [--jobs N]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import tempfile
import tomllib
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import trio

from virtio_sim.guest.profile import guest_policy
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.qemu.initramfs import build_initramfs
from virtio_sim.orchestration.qemu.kernel import KernelImage, ensure_kernel
from virtio_sim.orchestration.qemu.linux_vhost import (
    CHECK_VIRTIO_DEVICES,
    BlkCheck,
    LinuxBootResult,
    boot_with_vhost_user,
    check_net,
    check_rng,
    served_contains,
)
from virtio_sim.orchestration.qemu.tools import MissingTool, static_busybox
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import load_driver_profile
from virtio_sim.spec import SPECS_DIR, STATUS, status_names

MATRIX = SPECS_DIR / "matrices" / "crosscheck-linux-6.1.toml"
PROFILE = "linux-6.1"
TRANSPORT_OF = {"q35": "pci-modern", "microvm": "mmio-v2", "microvm-legacy": "mmio-v1"}
_TRACE = re.compile(r"virtio_set_status vdev (0x[0-9a-f]+) val (\d+)")
VERDICTS = ("SAME", "DOCUMENTED", "DIFFERENT", "NOT_RUN")
#: seconds one real-Linux boot may take: ~30 s alone under TCG here, several times that on
#: a machine whose cores are shared (the IOMMU cells translate every page through QEMU)
BOOT_TIMEOUT = 400.0


@dataclass(frozen=True)
class Cell:
    device: str
    machine: str
    iommu_platform: str
    ring: str

    @property
    def transport(self) -> str:
        return TRANSPORT_OF[self.machine]

    @property
    def name(self) -> str:
        return f"{self.device}/{self.machine}/iommu_platform={self.iommu_platform}/{self.ring}"

    def matches(self, rule: dict[str, Any]) -> bool:
        return all(
            fnmatch.fnmatchcase(str(getattr(self, k)), str(v))
            for k, v in rule.items()
            if k in ("device", "machine", "iommu_platform", "ring")
        )


@dataclass
class Side:
    """What one driver did in one cell."""

    outcome: str
    features: int = 0
    status: list[int] = field(default_factory=list)
    detail: str = ""


@dataclass
class CellResult:
    cell: Cell
    verdict: str
    ours: Side | None = None
    linux: Side | None = None
    differences: list[str] = field(default_factory=list)
    documented: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cell": self.cell.name, **asdict(self.cell), "verdict": self.verdict}
        for key in ("ours", "linux"):
            side = getattr(self, key)
            if side is not None:
                out[key] = {
                    "outcome": side.outcome,
                    "features": f"{side.features:#x}",
                    "status": [status_names(s) for s in side.status],
                    "detail": side.detail,
                }
        out["differences"] = self.differences
        out["documented"] = self.documented
        out["seconds"] = self.seconds
        return out


@dataclass
class Matrix:
    cells: list[Cell]
    devices: dict[str, dict[str, str]]
    skips: list[dict[str, Any]]
    deviations: list[dict[str, Any]]

    @classmethod
    def load(cls, path: Path = MATRIX) -> Matrix:
        data = tomllib.loads(path.read_text())
        axes = data["axes"]
        cells = [
            Cell(d, m, i, r)
            for d, m, i, r in product(axes["device"], axes["machine"], axes["iommu_platform"], axes["ring"])
        ]
        return cls(cells, data["devices"], data.get("skip", []), data.get("deviation", []))

    def skip_reason(self, cell: Cell) -> str | None:
        for rule in self.skips:
            if cell.matches(rule):
                return str(rule["reason"])
        return None

    def deviation(self, cell: Cell, what: str) -> str | None:
        for rule in self.deviations:
            if rule.get("field") == what and cell.matches(rule):
                return " ".join(str(rule["reason"]).split())
        return None


# --------------------------------------------------------------------------- our guest


def status_values(trace: list[str]) -> list[int]:
    """The writes of our guest's status trace (``ACKNOWLEDGE|DRIVER`` names; reads are
    ``read ...`` entries, which QEMU's trace does not show) as status bytes."""
    out = []
    for entry in trace:
        if entry.startswith("read "):
            continue
        value = 0
        for name in entry.split("|"):
            if name != "RESET":
                value |= int(getattr(STATUS, name))
        out.append(value)
    return out


def last_probe(values: list[int]) -> list[int]:
    """The writes of the driver's last probe: from its last reset on.

    QEMU's trace also shows QEMU's own resets (virtio_reset() calls virtio_set_status(vdev,
    0)): at machine start and when the machine goes down after the guest's poweroff (Linux
    6.1 writes no status at shutdown: virtio_pci has no .shutdown). Those trailing zeros are
    dropped; firmware (SeaBIOS drives virtio-blk) and earlier resets come before the last
    probe's reset."""
    end = len(values)
    while end > 1 and values[end - 1] == 0:
        end -= 1
    values = values[:end]
    starts = [i for i, v in enumerate(values) if v == 0]
    return values[starts[-1] :] if starts else values


def device_option(matrix: Matrix, cell: Cell, disk: Path | None) -> str:
    option = matrix.devices[cell.device]["option"]
    if cell.device == "blk":
        assert disk is not None
        name, _, rest = option.partition(",")
        option = f"{name},drive={disk}" + (f",{rest}" if rest else "")
    if cell.ring == "packed":
        option += ",packed=on"
    if cell.iommu_platform == "on":
        option += ",iommu_platform=on"
    return option


def frontend_props(matrix: Matrix, cell: Cell) -> str:
    """QEMU properties of the front-end: the matrix's, and packed=on for packed cells
    (QEMU only offers what both it and the back-end have)."""
    props = [matrix.devices[cell.device].get("frontend_props", "")]
    if cell.ring == "packed":
        props.append("packed=on")
    return ",".join(filter(None, props))


def run_ours(matrix: Matrix, cell: Cell, work: Path) -> Side:
    disk = work / "ours.img"
    disk.write_bytes(bytes(8 << 20))
    cfg = RunConfig(
        device=device_option(matrix, cell, disk),
        workload=matrix.devices[cell.device]["workload"],
        transport=cell.transport,
        guest=guest_policy(load_driver_profile(PROFILE)),
        timeout=20.0,
    )
    result = trio.run(run_embedded, cfg)
    return Side(
        result.outcome.value,
        result.driver_features,
        last_probe(status_values(result.status_trace)),
        result.detail,
    )


# --------------------------------------------------------------------------- real Linux


def linux_checks(device: str) -> list[str]:
    checks = [CHECK_VIRTIO_DEVICES]
    if device == "rng":
        checks.append(check_rng())
    elif device == "blk":
        checks.append(BlkCheck(source="/dev/urandom").script())
    else:
        checks.append(check_net())
    return checks


def traced_status(stderr: str) -> list[int]:
    """Status writes QEMU traced; with one virtio device per boot they are all its."""
    pointers = {m[1] for m in _TRACE.finditer(stderr)}
    if len(pointers) > 1:
        raise ValueError(f"status writes of {len(pointers)} devices in one boot")
    return [int(m[2]) for m in _TRACE.finditer(stderr)]


def sysfs_features(boot: LinuxBootResult) -> int:
    for line in boot.values("virtio-device"):
        fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
        return sum(1 << i for i, c in enumerate(fields.get("features", "")) if c == "1")
    return 0


def linux_outcome(device: str, boot: LinuxBootResult, disk: Path) -> tuple[str, str]:
    """OK when what the guest printed agrees with what only the host can see."""
    if not boot.finished:
        said = [ln for ln in boot.qemu_stderr.splitlines() if ln.strip() and not _TRACE.search(ln)]
        why = "timed out" if boot.timed_out else f"QEMU exited with {boot.returncode}"
        return (
            Outcome.HANG.value,
            f"the guest did not finish its checks ({why}) {' '.join(said[-2:])}".strip(),
        )
    if not boot.values("virtio-device"):
        return Outcome.NOT_PROBED.value, "no virtio device bound"
    report = boot.reports[0]
    if report.get("violations"):
        return Outcome.DEVICE_ERROR.value, str(report["violations"][0])
    if device == "rng":
        got = bytes.fromhex(boot.value("rng") or "")
        served = bytes.fromhex(report.get("rng", {}).get("served_hex", ""))
        ok = len(got) == 64 and served_contains(served, got)
        return (Outcome.OK.value, "64 bytes, as served") if ok else (Outcome.CORRUPTION.value, "rng bytes")
    if device == "blk":
        import hashlib

        check = BlkCheck()
        at = check.write_at * check.write_block
        on_disk = hashlib.sha256(disk.read_bytes()[at : at + check.write_block]).hexdigest()
        ok = boot.value("blk-compare") == "same" and on_disk == boot.value("blk-written")
        return (Outcome.OK.value, "written and read back") if ok else (Outcome.CORRUPTION.value, "blk data")
    tx, rx = int(boot.value("net-tx") or 0), int(boot.value("net-rx") or 0)
    net = report.get("net", {})
    ok = tx > 0 and rx > 0 and net.get("rx_frames", 0) >= rx
    detail = f"guest tx {tx} rx {rx}; device tx {net.get('tx_frames')} rx {net.get('rx_frames')}"
    return (Outcome.OK.value if ok else Outcome.CORRUPTION.value), detail


def run_linux(
    matrix: Matrix, cell: Cell, kernel: KernelImage, work: Path, timeout: float = BOOT_TIMEOUT
) -> Side:
    disk = work / "linux.img"
    disk.write_bytes(bytes(8 << 20))
    initrd = work / "initrd.cpio"
    initrd.write_bytes(build_initramfs(static_busybox(), kernel.modules(), linux_checks(cell.device)))
    option = device_option(matrix, cell, disk)
    if cell.iommu_platform == "on":
        option = option.replace(",iommu_platform=on", "")  # the launcher adds it with the IOMMU
    props = frontend_props(matrix, cell)

    async def go() -> LinuxBootResult:
        return await boot_with_vhost_user(
            kernel,
            initrd,
            cell.machine,
            [option],
            work,
            iommu=cell.iommu_platform == "on",
            frontend_props=props,
            timeout=timeout,
        )

    boot = trio.run(go)
    outcome, detail = linux_outcome(cell.device, boot, disk)
    return Side(outcome, sysfs_features(boot), last_probe(traced_status(boot.qemu_stderr)), detail)


# --------------------------------------------------------------------------- compare


def compare(matrix: Matrix, cell: Cell, ours: Side, linux: Side) -> CellResult:
    result = CellResult(cell, "SAME", ours, linux)
    checks = (
        ("outcome", ours.outcome, linux.outcome),
        ("features", f"{ours.features:#x}", f"{linux.features:#x}"),
        ("status", [status_names(s) for s in ours.status], [status_names(s) for s in linux.status]),
    )
    for what, a, b in checks:
        if a == b:
            continue
        line = f"{what}: ours {a} / Linux {b}"
        why = matrix.deviation(cell, what)
        if why is None:
            result.differences.append(line)
        else:
            result.documented.append(f"{line}: {why}")
    if result.differences:
        result.verdict = "DIFFERENT"
    elif result.documented:
        result.verdict = "DOCUMENTED"
    return result


def run_cell(matrix: Matrix, cell: Cell, kernel: KernelImage, timeout: float = BOOT_TIMEOUT) -> CellResult:
    import time

    start = time.monotonic()
    why = matrix.skip_reason(cell)
    if why is not None:
        return CellResult(cell, "NOT_RUN", documented=[why])
    with tempfile.TemporaryDirectory(prefix="vsim-crosscheck-") as tmp:
        work = Path(tmp)
        ours = run_ours(matrix, cell, work)
        linux = run_linux(matrix, cell, kernel, work, timeout)
    result = compare(matrix, cell, ours, linux)
    result.seconds = round(time.monotonic() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m virtio_sim.orchestration.qemu.crosscheck", description=__doc__.split("\n")[0]
    )
    p.add_argument("--matrix", type=Path, default=MATRIX)
    p.add_argument("--only", action="append", default=[], help="glob over cell names (repeatable)")
    p.add_argument("--json", type=Path, help="write every cell's result here")
    p.add_argument("--boot-timeout", type=float, default=BOOT_TIMEOUT, help="seconds per real-Linux boot")
    args = p.parse_args(argv)
    try:
        matrix = Matrix.load(args.matrix)
        kernel = ensure_kernel()
    except (OSError, tomllib.TOMLDecodeError, KeyError, MissingTool) as e:
        print(f"crosscheck: error: {e}", file=sys.stderr)
        return 2
    cells = [
        c for c in matrix.cells if not args.only or any(fnmatch.fnmatchcase(c.name, g) for g in args.only)
    ]
    results = []
    for cell in cells:
        r = run_cell(matrix, cell, kernel, args.boot_timeout)
        results.append(r)
        print(f"{r.verdict:10} {cell.name:42} {r.seconds:6.1f}s", flush=True)
        for line in r.differences:
            print(f"           DIFFERENT  {line}", flush=True)
        for line in r.documented:
            print(f"           documented {line}", flush=True)
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    print(" ".join(f"{v} {n}" for v, n in counts.items()))
    if args.json:
        args.json.write_text(
            json.dumps({"cells": [r.to_json() for r in results], "counts": counts}, indent=2)
        )
    return 1 if counts["DIFFERENT"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
