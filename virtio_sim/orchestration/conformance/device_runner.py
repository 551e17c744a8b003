"""Device conformance runs: one device under test, every checker that applies to it.

:func:`run_device_target` is what ``virtio-sim conformance --target host:...|qemu:...``
calls; :func:`run_device` takes an already opened :class:`~virtio_sim.orchestration.conformance.dut.Dut`
so that tests can hand it deliberately broken devices. Under the strict policy the first
MUST-level failure ends the run (the failing finding is in the log and in
:attr:`DeviceLog.stopped`); lenient runs every checker. A checker that cannot proceed
(the device refused a feature set it needed, a queue is missing, the device stopped
answering, any exception at all) records ERROR with the reason for every id it had not
decided yet: the run fails (exit 1) and the report says why, never a traceback and never
a silent NOT_COVERED.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio

from virtio_sim.dma import DmaError
from virtio_sim.guest.link import HostLinkError
from virtio_sim.guest.transport.base import TransportError
from virtio_sim.orchestration.campaign.deadline import WallBudget, trio_deadline
from virtio_sim.orchestration.conformance.catalog import Catalog, load_known_deviations
from virtio_sim.orchestration.conformance.device_checks import Ctx, Refused, load_all
from virtio_sim.orchestration.conformance.dut import (
    ARENA_OFFSET,
    ARENA_SIZE,
    Dut,
    DutError,
    open_host,
    open_qemu,
    open_transport,
)
from virtio_sim.orchestration.conformance.findings import Finding, FindingLog, Policy, StrictStop, Verdict
from virtio_sim.orchestration.conformance.rawring import Arena
from virtio_sim.orchestration.conformance.targets import (
    TargetError,
    check_transport_ring,
    device_for_transport,
    parse_target,
)

CHECKER_TIMEOUT = 120.0  # a checker that hangs is a device bug, not a reason to hang the run
GUEST_ORDER_PROP = "x-guest-order"  # host:DEVICE,x-guest-order=big: a big-endian guest
#: host:DEVICE,x-memory-path=lease: the device's rings on their lease fast path (dut.open_host)
MEMORY_PATH_PROP = "x-memory-path"
#: DEVICE,x-interface=legacy on pci-transitional: drive the function's legacy interface
INTERFACE_PROP = "x-interface"
#: rules the catalogue words for a *transitional* device: NOT_APPLICABLE on a device that is
#: not one (legacy-only mmio v1 and PCI functions, modern-only ones)
TRANSITIONAL_ONLY = frozenset(
    {
        "features.legacy.dev-detect-legacy-driver",
        "features.legacy.dev-offer-any-layout",
        "init.legacy.dev-early-config-write",
        "init.legacy.dev-use-before-driver-ok",
        "net.legacy.mac-writable",
        "pci.legacy.dev-revision-zero",
        "pci.legacy.dev-subsys-is-virtio-id",
        "pci.legacy.dev-transitional-id",
        "pci.legacy.dev-bar0-io",
        "pci.legacy.dev-expose-io-bar0",
        "pci.legacy.dev-config-offset",
    }
)


@dataclass
class DeviceLog(FindingLog):
    """A FindingLog plus what the run noticed that is not a verdict."""

    notes: list[str] = field(default_factory=list)
    stopped: Finding | None = None
    checkers_run: list[str] = field(default_factory=list)
    #: the device under test is not a transitional one (TRANSITIONAL_ONLY rules do not apply)
    not_transitional: str | None = None

    def _record(self, requirement: str, verdict: Verdict, evidence: str | None) -> Finding:
        if self.not_transitional and requirement in TRANSITIONAL_ONLY:
            verdict, evidence = Verdict.NOT_APPLICABLE, self.not_transitional
        return super()._record(requirement, verdict, evidence)


KNOWN_DEVIATIONS = "device-known-deviations.toml"


def known_deviations(key: str, transport: str, root: Path | None = None) -> dict[str, str]:
    """Requirement id -> why, for the documented deviations of our ``key`` device on
    ``transport`` (specs/conformance/deviations/device-known-deviations.toml)."""
    return load_known_deviations(KNOWN_DEVIATIONS, "device", key, transport, root)


def _with_ring(option: str, ring: str) -> str:
    if ring != "packed" or ",packed=" in f",{option}":
        return option
    return f"{option},packed=on"


async def run_device_target(
    spec: str, *, transport: str, ring: str, policy: Policy, catalog: Catalog, thorough: bool = True
) -> FindingLog:
    """Open the target (host or QEMU device), run every applicable checker, close it.

    Raises TargetError for a target that names no usable device (exit code 2)."""
    target = parse_target(spec)
    if target.kind not in ("host", "qemu"):
        raise TargetError(f"{spec!r} is not a device target")
    check_transport_ring(transport, ring)
    name = device_for_transport(target.name, transport)
    if ring == "packed" and name.startswith("virtio-iommu"):
        # refused rather than silently run split: the IOMMU under test is the machine's
        # (host.build iommu=...), built without device properties, so nothing would make
        # its queues packed; QEMU 7.2's virtio-iommu-pci is run split for the same reason
        raise TargetError(
            f"{spec}: --ring packed is not available for virtio-iommu (its queues are split "
            "here); run it with --ring split"
        )
    props = dict(target.props)
    order = props.pop(GUEST_ORDER_PROP, "little")  # a machine property, not the device's
    if order not in ("little", "big"):
        raise TargetError(f"{GUEST_ORDER_PROP}={order!r}: little or big")
    interface = props.pop(INTERFACE_PROP, "modern")
    if interface not in ("modern", "legacy") or (interface == "legacy" and transport != "pci-transitional"):
        raise TargetError(f"{INTERFACE_PROP}={interface}: modern, or legacy on pci-transitional")
    path = props.pop(MEMORY_PATH_PROP, "checked")
    if path != "checked" and target.kind != "host":
        raise TargetError(f"{MEMORY_PATH_PROP} is a property of our host devices only")
    option = _with_ring(",".join([name, *(f"{k}={v}" for k, v in props.items())]), ring)
    try:
        if target.kind == "host":
            dut = open_host(
                option, transport, guest_order="big" if order == "big" else "little", memory_path=path
            )
        else:
            dut = await trio.to_thread.run_sync(lambda: open_qemu(option, transport))
    except DutError as e:
        raise TargetError(f"{spec}: {e}") from None
    dut.interface = interface
    try:
        known = known_deviations(dut.key, transport) if target.kind == "host" else {}
        return await run_device(
            dut, ring=ring, policy=policy, catalog=catalog, thorough=thorough, known=known
        )
    finally:
        dut.close()


async def run_device(
    dut: Dut,
    *,
    ring: str,
    policy: Policy,
    catalog: Catalog,
    only: tuple[str, ...] | None = None,
    thorough: bool = True,
    known: dict[str, str] | None = None,
) -> DeviceLog:
    """``known``: documented deviations of this target (their FAILs are KNOWN)."""
    log = DeviceLog(catalog.level_of, policy, known=dict(known or {}))
    if dut.transport != "pci-transitional":
        kind = "a modern-only" if dut.transport in ("mmio-v2", "pci-modern") else "a legacy-only"
        log.not_transitional = f"{kind} device ({dut.transport}): the rule is about transitional devices"
    try:
        opened = await open_transport(dut)
    except (DutError, TransportError, HostLinkError) as e:
        log.notes.append(f"device not found: {e}")
        log.run_errors.append(f"the device could not be found or identified: {e}")
        return log
    arena = Arena(dut.memory, dut.ram_base + ARENA_OFFSET, dut.ram_base + ARENA_OFFSET + ARENA_SIZE)
    ctx = Ctx(dut, opened, log, ring, arena, thorough=thorough)
    # generic checkers first: a device-type request that kills the device under test (QEMU
    # aborts on some) then costs only the checks after it
    for c in sorted(load_all().values(), key=lambda c: c.keys is not None):
        if only is not None and c.name not in only:
            continue
        if c.keys is not None and dut.key not in c.keys:
            continue
        log.checkers_run.append(c.name)
        try:
            with trio_deadline(WallBudget(CHECKER_TIMEOUT)):
                await c.fn(ctx)
        except StrictStop as stop:
            log.stopped = stop.finding
            break
        except Refused as e:
            _checker_error(log, c.ids, f"{c.name}: {e}")
        except (TransportError, HostLinkError, DmaError, MemoryError, trio.TooSlowError) as e:
            _checker_error(log, c.ids, f"{c.name}: stopped: {type(e).__name__}: {e}")
        except Exception as e:  # a broken device must give a finding, not a traceback
            _checker_error(log, c.ids, f"{c.name}: crashed: {type(e).__name__}: {e}")
    log.notes += ctx.notes
    try:
        await opened.ops.reset()
    except Exception:  # the findings are recorded; a dead device stays dead
        pass
    return log


def _checker_error(log: DeviceLog, ids: tuple[str, ...], why: str) -> None:
    """A checker that could not proceed: ERROR (with the reason) for each of its ids that
    it had not decided yet, and a note."""
    log.notes.append(why)
    for rid in ids:
        if rid not in log.findings or log.findings[rid].verdict is Verdict.NOT_COVERED:
            log.error(rid, why)
