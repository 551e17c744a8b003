"""Device conformance runs: one device under test, every checker that applies to it.

:func:`run_device_target` is what ``virtio-sim conformance --target host:...|qemu:...``
calls; :func:`run_device` takes an already opened :class:`~virtio_sim.conformance.dut.Dut`
so that tests can hand it deliberately broken devices. Under the strict policy the first
MUST-level failure ends the run (the failing finding is in the log and in
:attr:`DeviceLog.stopped`); lenient runs every checker. A checker that cannot proceed
(the device refused a feature set it needed, a queue is missing) leaves a note and the
ids it did not decide stay NOT_COVERED, never PASS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio

from virtio_sim.conformance.catalog import Catalog, load_known_deviations
from virtio_sim.conformance.device_checks import Ctx, Refused, load_all
from virtio_sim.conformance.dut import (
    ARENA_OFFSET,
    ARENA_SIZE,
    Dut,
    DutError,
    open_host,
    open_qemu,
    open_transport,
)
from virtio_sim.conformance.findings import Finding, FindingLog, Policy, StrictStop
from virtio_sim.conformance.rawring import Arena
from virtio_sim.conformance.targets import (
    TargetError,
    check_transport_ring,
    device_for_transport,
    parse_target,
)
from virtio_sim.dma import DmaError
from virtio_sim.guest.link import HostLinkError
from virtio_sim.guest.transport.base import TransportError

CHECKER_TIMEOUT = 120.0  # a checker that hangs is a device bug, not a reason to hang the run
GUEST_ORDER_PROP = "x-guest-order"  # host:DEVICE,x-guest-order=big: a big-endian guest


@dataclass
class DeviceLog(FindingLog):
    """A FindingLog plus what the run noticed that is not a verdict."""

    notes: list[str] = field(default_factory=list)
    stopped: Finding | None = None
    checkers_run: list[str] = field(default_factory=list)


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
    props = dict(target.props)
    order = props.pop(GUEST_ORDER_PROP, "little")  # a machine property, not the device's
    if order not in ("little", "big"):
        raise TargetError(f"{GUEST_ORDER_PROP}={order!r}: little or big")
    option = _with_ring(",".join([name, *(f"{k}={v}" for k, v in props.items())]), ring)
    try:
        if target.kind == "host":
            dut = open_host(option, transport, guest_order="big" if order == "big" else "little")
        else:
            dut = await trio.to_thread.run_sync(lambda: open_qemu(option, transport))
    except DutError as e:
        raise TargetError(f"{spec}: {e}") from None
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
    try:
        opened = await open_transport(dut)
    except (DutError, TransportError, HostLinkError) as e:
        log.notes.append(f"device not found: {e}")
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
            with trio.fail_after(CHECKER_TIMEOUT):
                await c.fn(ctx)
        except StrictStop as stop:
            log.stopped = stop.finding
            break
        except Refused as e:
            log.notes.append(f"{c.name}: {e}")
        except (TransportError, HostLinkError, DmaError, MemoryError, trio.TooSlowError) as e:
            log.notes.append(f"{c.name}: stopped: {type(e).__name__}: {e}")
    log.notes += ctx.notes
    try:
        await opened.ops.reset()
    except (TransportError, HostLinkError):
        pass
    return log
