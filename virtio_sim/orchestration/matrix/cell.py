"""Run one matrix cell: profiles -> device option + guest policy -> an embedded run.

``run_cell`` is a plain module-level function of picklable arguments so every executor
(the local pool, dask workers) runs exactly the same code and gets the same answer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import trio

from virtio_sim.guest.profile import guest_policy
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.device_profile import DeviceRequest, check_iommu_model, device_option
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.machine_types import parse_ram_size
from virtio_sim.orchestration.embedded import TRANSPORTS, RunConfig, load_everything, run_embedded_sync
from virtio_sim.orchestration.matrix.spec import Cell, MatrixError, machine_for
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import (
    DeviceProfile,
    DriverProfile,
    ProfileError,
    load_device_profile,
    load_driver_profile,
)
from virtio_sim.result_record import result_record

# A worker runs cells of every device kind, machine and IOMMU setting: everything a run
# imports on demand is imported here, with this module (in the matrix's forkserver, once
# for all workers), before the worker freezes its start-up objects.
load_everything()

SUPPORTED = {
    "iommu": ("none", "virtio-iommu"),
    "iommu_platform": ("off", "on"),
    "ring": ("split", "packed"),
}


@cache
def _driver(name: str) -> DriverProfile:
    return load_driver_profile(name)


@cache
def _device(name: str) -> DeviceProfile:
    return load_device_profile(name)


def validate_cell(cell: Cell) -> None:
    """Reject axis values this build cannot run, before any cell starts."""
    try:
        _driver(cell.driver)
        _device(cell.device)
    except ProfileError as e:
        raise MatrixError(str(e)) from None
    if cell.transport not in TRANSPORTS:
        raise MatrixError(
            f"transport {cell.transport!r} is not available (available: {', '.join(TRANSPORTS)})"
        )
    if cell.workload not in WORKLOADS:
        raise MatrixError(f"unknown workload {cell.workload!r} ({', '.join(WORKLOADS)})")
    if cell.machine not in ("auto", machine_for(cell.transport)):
        _validate_machine(cell)
    try:
        parse_ram_size(cell.ram)
    except PropertyError as e:
        raise MatrixError(f"ram={cell.ram!r}: {e}") from None
    for axis, allowed in SUPPORTED.items():
        if getattr(cell, axis) not in allowed:
            raise MatrixError(
                f"{axis}={getattr(cell, axis)!r} is not supported by this build"
                f" (supported: {', '.join(allowed)})"
            )


def _validate_machine(cell: Cell) -> None:
    """Any -M value (microvm,acpi=on / virt / virt,x-mmio-hid=... / q35,iommu=virtio)
    whose machine can carry the cell's transport: its devices are then found through
    firmware tables (host/machine_types.py)."""
    from virtio_sim.host.build import PCI_TRANSPORTS
    from virtio_sim.host.devices.base import PropertyError
    from virtio_sim.host.machine_types import check_placement, parse_machine

    try:
        check_placement(parse_machine(cell.machine), cell.transport, cell.device, PCI_TRANSPORTS)
    except PropertyError as e:
        raise MatrixError(f"machine {cell.machine!r} cannot carry {cell.transport}: {e}") from None


def _machine_has_pci(cell: Cell) -> bool:
    """Whether the cell's machine has a PCI bus (q35, virt: yes; microvm: no)."""
    from virtio_sim.host.machine_types import MACHINE_FACTS

    name = machine_for(cell.transport) if cell.machine == "auto" else cell.machine.split(",")[0]
    return bool(MACHINE_FACTS.get(name, {}).get("pci", False))


def _machine_option(cell: Cell) -> str | None:
    """None: the transport's default machine (devices announced on the command line)."""
    return None if cell.machine in ("auto", machine_for(cell.transport)) else cell.machine


def run_cell(cell: Cell, timeout: float = 10.0, seed: int = 1) -> dict[str, Any]:
    """Run ``cell`` and return its JSON-able result (axes + RunResult + timing)."""
    return _run_cell(cell, timeout, seed, run_embedded_sync)


def run_cell_qemu(cell: Cell, timeout: float = 10.0, seed: int = 1) -> dict[str, Any]:
    """``run_cell`` with QEMU's device models (``--device-backend qemu``), on the QEMU
    machine type that keeps the cell's device generation (pc-i440fx-X.Y for PCI, microvm
    for virtio-mmio where the generation has it); the generation's property values are
    left to that machine type's compat tables."""
    from virtio_sim.orchestration.qemu.run import run_qemu

    machine = compat_machine(_device(cell.device), cell.transport)

    def runner(cfg: RunConfig) -> RunResult:
        return trio.run(functools.partial(run_qemu, cfg, machine=machine))

    out = _run_cell(cell, timeout, seed, runner, abi=False)
    out["device_backend"] = "qemu"
    out["machine"] = machine  # the compat machine type the cell ran on
    return out


def compat_machine(device: DeviceProfile, transport: str) -> str:
    """The QEMU machine type a device generation runs on for ``transport`` ("" : none)."""
    return device.mmio_machine if transport.startswith("mmio") else device.pci_machine


def validate_cell_for_qemu(cell: Cell) -> None:
    """Cells QEMU's devices cannot run are refused before any starts, one line each:
    no compat machine for the generation (or not in the installed QEMU), an IOMMU,
    another -M, packed rings, restricted-memory guests."""
    from virtio_sim.orchestration.qemu.tools import installed_machines

    problems = []
    device = _device(cell.device)
    machine = compat_machine(device, cell.transport)
    kind = "virtio-mmio" if cell.transport.startswith("mmio") else "virtio-pci"
    if not machine:
        problems.append(
            f"device={cell.device} has no QEMU machine type for {kind} (its profile's [qemu] notes say why)"
        )
    else:
        known = installed_machines()
        if known is not None and machine not in known:
            problems.append(
                f"device={cell.device} needs machine type {machine}, which the installed QEMU lacks"
            )
    # --iommu virtio-iommu runs against QEMU's own virtio-iommu-pci (run_qemu adds it); on
    # a machine without PCI QEMU refuses it, and the cell says so (HOST_REFUSED)
    if _machine_option(cell) is not None:
        problems.append(f"machine={cell.machine} (QEMU cells run on microvm and q35 here)")
    if cell.ring != "split":
        problems.append(f"ring={cell.ring}")
    if _driver(cell.driver).restricted_memory:
        problems.append(f"driver={cell.driver} (private guest pages need our host)")
    if problems:
        raise MatrixError(f"cell {cell.id} cannot run on QEMU's devices: {'; '.join(problems)}")


def _run_cell(
    cell: Cell, timeout: float, seed: int, runner: Callable[[RunConfig], RunResult], *, abi: bool = True
) -> dict[str, Any]:
    start = time.perf_counter()
    driver = _driver(cell.driver)
    device = _device(cell.device)
    device_key = WORKLOADS[cell.workload][0]
    request = DeviceRequest(
        device_key=device_key,
        transport=cell.transport,
        iommu_platform=cell.iommu_platform == "on",
        packed=cell.ring == "packed",
    )
    option: str | None = None
    try:
        check_iommu_model(cell.iommu, _machine_has_pci(cell), device)
        option = device_option(request, device, abi=abi)
    except PropertyError as e:
        result = RunResult(Outcome.HOST_REFUSED, transport=cell.transport, detail=str(e))
    else:
        cfg = RunConfig(
            device=option,
            workload=cell.workload,
            transport=cell.transport,
            seed=seed,
            timeout=timeout,
            guest=guest_policy(driver),
            iommu=cell.iommu,
            machine=_machine_option(cell),
            ram_size=parse_ram_size(cell.ram),
        )
        result = runner(cfg)
    axes = cell.axes()
    axes["machine"] = machine_for(cell.transport) if cell.machine == "auto" else cell.machine
    return result_record(
        result, **axes, id=cell.id, device_option=option, seconds=time.perf_counter() - start
    )
