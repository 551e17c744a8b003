"""Driver conformance: run a guest driver profile against our devices with a DriverWatch.

``driver:PROFILE[,device=rng|blk|all][,seed=N][,in_order=on,...]``: PROFILE is a driver generation from
specs/profiles/drivers. Each selected device (both by default) is put on the requested
transport and ring format with QEMU 7.2's properties and the ``drop`` error policy (so a
lenient run goes on past a broken chain); the guest runs its usual workload while a
:class:`~virtio_sim.orchestration.conformance.driver_watch.DriverWatch` on every device records what
the driver did into one :class:`FindingLog`. Under the strict policy the run stops at the
first MUST-level failure.

Documented deviations of a profile (specs/conformance/deviations/driver-known-deviations.toml) are
handed to the log first, so their failures are reported as KNOWN, with the reason.

Seeded broken drivers (tests/conformance/broken_drivers.py) run through
:func:`run_driver_check` with their own guest device class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from virtio_sim import layouts
from virtio_sim.dma import DmaError
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.guest.profile import guest_policy
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.build import HostSetup
from virtio_sim.host.device_profile import DeviceRequest, device_option
from virtio_sim.host.transport.mmio import GENERATION_MOVES, ODD_KINDS, MmioTransport
from virtio_sim.host.transport.pci_modern import ModernInterface
from virtio_sim.host.vhost_user import VhostUserBackend
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.orchestration.campaign.target import parse_target_text
from virtio_sim.orchestration.conformance.catalog import Catalog, load_known_deviations
from virtio_sim.orchestration.conformance.driver_watch import (
    MATCH_RULE,
    NO_VERSION_1,
    PRESENTED,
    UNKNOWN_FEATURE,
    DriverWatch,
)
from virtio_sim.orchestration.conformance.findings import Finding, FindingLog, Policy, StrictStop
from virtio_sim.orchestration.conformance.write_order import AvailWriteOrder, observe_guest_writes
from virtio_sim.orchestration.embedded import TRANSPORTS, RunConfig, run_embedded
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import load_device_profile, load_driver_profile
from virtio_sim.spec import FEATURES, STATUS, USED_F, F, bit

DEVICE_PROFILE = "qemu-7.2"
#: blk without the workload's deliberate read past the end (a device probe, not driver behaviour)
WORKLOAD_FOR = {
    "rng": "rng",
    "blk": "blk-rw-no-probe",
    "iommu": "blk-rw-no-probe",
    "net": "net-loopback",
    "console": "console-echo",
}
#: "iommu" is a blk device behind a virtio-iommu (iommu_platform=on): both are watched
#: device properties a target may set (QEMU names): the ring features the driver then meets
DEVICE_PROPS = (
    "in_order",
    "notification_data",
    "event_idx",
    "indirect_desc",
    "queue_reset",
    "ctrl_rx",  # virtio-net: the rules for a driver without CTRL_RX, CSUM or MRG_RXBUF
    "csum",
    "mrg_rxbuf",
)
RINGS = ("split", "packed")
KNOWN_DEVIATIONS = "driver-known-deviations.toml"
RUN_TIMEOUT = 30.0  # wall clock on 2 shared cores: a driver that waits this long has hung
#: an odd run (run_driver_check): the device sets DEVICE_NEEDS_RESET at the driver's second
#: kick, leaving that request outstanding; the driver must not wait for it (a HANG)
NEEDS_RESET_RUN = "needs-reset"
NEEDS_RESET_RULE = "status.drv.needs-reset-no-rely"
NEEDS_RESET_AT_KICK = 2
#: the same run without the odd presentations (no unknown feature bit): a control
CONTROL_RUN = "control"
#: odd runs where the device presents values a driver must cope with, judged from the run's
#: outcome against a control run without them (judge_trap): the rules each decides
NET_RX_TRAPS = "net-rx-traps"  # rx headers with an undefined flag bit and stray csum fields
SHORT_RNG = "short-rng"  # virtio-rng fills only the first bytes of every buffer
TRAP_RUNS = {
    NET_RX_TRAPS: ("net", ("net.rx.drv-ignore-unknown-flags", "net.rx.drv-csum-fields")),
    SHORT_RNG: ("rng", ("rng.drv.use-len",)),
}
SHORT_RNG_BYTES = 7
UNKNOWN_RX_FLAG = 0x80
UNKNOWN_RULE = "features.drv.no-fail-on-unknown"
MEMORY_PATH_PROP = "x-memory-path"
MEMORY_PATHS = ("checked", "lease")


class DriverTargetError(ValueError):
    """A driver target that cannot be run (bad spec, unknown profile, transport or ring)."""


@dataclass
class DriverTarget:
    profile: str
    devices: tuple[str, ...]
    seed: int = 1
    device_props: tuple[str, ...] = ()  # "prop=on|off" for every device
    #: the workload instead of the device's usual one (WORKLOAD_FOR); one device only
    workload: str | None = None
    #: "checked": guest RAM offers no leases and the guest's avail writes are watched one
    #: by one (write_order.py); "lease": the rings' direct-window fast path, not watched
    memory_path: str = "checked"


def parse_driver_spec(spec: str) -> DriverTarget:
    """``driver:PROFILE[,device=rng|blk|all][,seed=N][,in_order=on,...]`` -> DriverTarget
    (the campaign's target text, virtio_sim/orchestration/campaign/target.py)."""
    text = parse_target_text(spec, {"driver": "PROFILE"}, error=DriverTargetError)
    name = text.name
    devices: tuple[str, ...] = tuple(WORKLOAD_FOR)
    seed = 1
    device_props: list[str] = []
    memory_path = "checked"
    workload: str | None = None
    for key, value in text.props.items():
        prop = f"{key}={value}"
        if key == "device":
            devices = tuple(WORKLOAD_FOR) if value == "all" else (value,)
            if value != "all" and value not in WORKLOAD_FOR:
                raise DriverTargetError(f"device={value}: choose from {', '.join(WORKLOAD_FOR)} or all")
        elif key == "seed":
            try:
                seed = int(value)
            except ValueError:
                raise DriverTargetError(f"seed={value} is not an integer") from None
        elif key == "workload":
            if value not in WORKLOADS:
                raise DriverTargetError(f"workload={value}: one of {', '.join(sorted(WORKLOADS))}")
            workload = value
        elif key == MEMORY_PATH_PROP:
            if value not in MEMORY_PATHS:
                raise DriverTargetError(f"{key}={value}: {' or '.join(MEMORY_PATHS)}")
            memory_path = value
        elif key in DEVICE_PROPS:
            if value not in ("on", "off"):
                raise DriverTargetError(f"{key}={value}: on or off")
            device_props.append(prop)
        else:
            raise DriverTargetError(
                f"unknown driver target property {key!r} "
                f"(device, seed, workload, {MEMORY_PATH_PROP}, {', '.join(DEVICE_PROPS)})"
            )
    try:
        load_driver_profile(name)
    except (OSError, ValueError) as e:
        raise DriverTargetError(f"unknown driver profile {name!r}: {e}") from None
    if workload is not None:
        kind = WORKLOADS[workload][0]
        if devices != (kind,):
            raise DriverTargetError(f"workload={workload} runs on device={kind} only")
    return DriverTarget(name, devices, seed, tuple(device_props), workload=workload, memory_path=memory_path)


def known_deviations(profile: str, transport: str, root: Path | None = None) -> dict[str, str]:
    """Requirement id -> why, for the documented deviations of ``profile`` on ``transport``."""
    return load_known_deviations(KNOWN_DEVIATIONS, "profile", profile, transport, root)


def _transport_of(vdev: VirtioDevice, transport: str) -> str:
    """The transport a device really sits on: the virtio-iommu is an mmio device on every
    machine, whatever transport its endpoints use."""
    sink = vdev.sink
    if isinstance(sink, MmioTransport):
        return "mmio-v1" if sink.legacy else "mmio-v2"
    return transport


#: rules a device tests by lying a little on every notification (set_traps); a run that
#: completes shows the driver coped, one that hangs shows it did not
TRAP_RULES = {
    "split.usedsupp.drv-spurious": "a used-buffer interrupt before every notification is served",
    "split.availsupp.drv-ignore-flags-bit0": "used.flags bit 0 set although EVENT_IDX was negotiated",
    "split.availsupp.drv-ignore-avail-event": "a misleading avail_event without EVENT_IDX",
}


def set_traps(vdev: VirtioDevice) -> None:
    """Make ``vdev`` test the driver: a spurious used-buffer interrupt before each
    notification is served, then (split rings) used.flags bit 0 set with EVENT_IDX, or
    avail_event set half the index space away without it. A driver keeping the rules
    (interrupts may be spurious; with EVENT_IDX only avail_event counts, without it only
    used.flags) carries on; one that does not stops kicking and the run hangs."""
    serve = vdev.notify

    def notify(index: int) -> None:
        q = vdev.queue(index)
        if vdev.sink is not None and q is not None and q.ready and vdev.status & STATUS.DRIVER_OK:
            vdev.sink.queue_interrupt(index)  # nothing new was used: a spurious interrupt
        serve(index)
        view = vdev.ring_view(index)
        if view is None or not view.ready or view.packed or vdev.broken:
            return
        try:
            if vdev.has_feature(F.EVENT_IDX):
                flags = int.from_bytes(view.space.read(view.device, 2), view.order)
                view.space.write(view.device, (flags | USED_F.NO_NOTIFY).to_bytes(2, view.order))
            else:
                at = view.driver + layouts.RING_IDX_OFFSET
                idx = int.from_bytes(view.space.read(at, 2), view.order)
                event = (idx + TRAP_EVENT_DISTANCE) & 0xFFFF
                view.space.write(
                    view.device + layouts.avail_event_offset(view.size), event.to_bytes(2, view.order)
                )
        except DmaError:
            return

    vdev.notify = notify  # type: ignore[method-assign]


def break_at_kick(vdev: VirtioDevice, kick: int) -> None:
    """At the ``kick``-th notification after DRIVER_OK the device enters the error state
    (DEVICE_NEEDS_RESET and a configuration change notification, host/virtio_device.py
    set_needs_reset) instead of serving it: the request stays outstanding."""
    inner = vdev.notify
    seen = [0]

    def notify(index: int) -> None:
        if vdev.status & STATUS.DRIVER_OK and not vdev.broken:
            seen[0] += 1
            if seen[0] == kick:
                vdev.set_needs_reset()
                return
        inner(index)

    vdev.notify = notify  # type: ignore[method-assign]


def set_value_traps(vdev: VirtioDevice, odd: str) -> None:
    """The device model of ``vdev`` presents the odd values of trap run ``odd``."""
    model: Any = vdev.model
    if odd == SHORT_RNG and model.type_key == "rng":
        model.max_bytes = SHORT_RNG_BYTES
    if odd == NET_RX_TRAPS and model.type_key == "net":
        inner = model._rx_header

        def rx_header(frame: Any, buffers: int) -> bytes:
            raw = bytearray(inner(frame, buffers))
            raw[0] |= UNKNOWN_RX_FLAG  # no spec defines it: the driver must ignore it
            if not raw[0] & 1:  # NEEDS_CSUM clear: csum_start/csum_offset mean nothing
                raw[6:10] = b"\xff\x7f\xff\x7f"
            return bytes(raw)

        model._rx_header = rx_header


async def judge_trap(log: FindingLog, odd: str, result: RunResult, control: Callable[[], Any]) -> None:
    """A trap run that completed passes its rules; one that did not fails them only when
    the same run without the traps (the control) completes."""
    rules = TRAP_RUNS[odd][1]
    if result.outcome is Outcome.OK:
        for rule in rules:
            log.passed(rule, f"{odd}: the workload completed")
        return
    if result.outcome is Outcome.NOT_PROBED:
        return
    ctl = await control()
    for rule in rules:
        if ctl is not None and ctl.outcome is Outcome.OK:
            log.failed(
                rule, f"{odd}: {result.outcome.value} ({result.detail}); without the odd values it completes"
            )
        else:
            log.untested(rule, f"{odd}: the run fails without the odd values too (control run)")


def judge_needs_reset(log: FindingLog, result: RunResult) -> None:
    """The NEEDS_RESET run: a driver that still waits for the outstanding request hangs."""
    if result.outcome is Outcome.HANG:
        log.failed(
            NEEDS_RESET_RULE,
            f"DEVICE_NEEDS_RESET with a request outstanding: the driver hung ({result.detail})",
        )
    elif result.outcome is Outcome.NOT_PROBED:
        return
    else:
        log.passed(NEEDS_RESET_RULE, f"DEVICE_NEEDS_RESET with a request outstanding: {result.outcome.value}")


TRAP_EVENT_DISTANCE = 0x8000  # an avail_event no driver that honoured it would ever reach


def judge_traps(log: FindingLog, result: RunResult, features: int) -> None:
    """A run with traps set: OK shows the driver coped; HANG that it stopped kicking."""
    event_idx = bool(features >> F.EVENT_IDX & 1)
    applicable = {
        "split.usedsupp.drv-spurious": True,
        "split.availsupp.drv-ignore-flags-bit0": event_idx,
        "split.availsupp.drv-ignore-avail-event": not event_idx,
    }
    for rule, why in TRAP_RULES.items():
        if not applicable[rule] or result.ring.get("format") == "packed":
            continue
        if result.outcome is Outcome.OK:
            log.passed(rule, f"coped with {why}")
        elif result.outcome is Outcome.HANG:
            log.failed(rule, f"hung after {why}: {result.detail}")


def with_props(option: str, props: tuple[str, ...]) -> str:
    """``option`` (a -device string) with ``props`` ("key=value") set, replacing any the
    device generation's defaults already put there."""
    name, *parts = option.split(",")
    settings = dict(p.partition("=")[::2] for p in parts)
    settings.update(p.partition("=")[::2] for p in props)
    return ",".join([name, *(f"{k}={v}" for k, v in settings.items())])


def judge_presented(log: FindingLog, result: RunResult, watches: list[DriverWatch]) -> None:
    """A modern PCI driver that never touched a device presenting odd capabilities (and
    found no device) did not skip them."""
    if result.outcome is not Outcome.NOT_PROBED:
        return
    for watch in watches:
        if watch.presented and not watch.reset_seen:
            for what in watch.presented:
                if what in PRESENTED:  # (an unknown feature bit is judged by the watch)
                    why = f"no driver took a device presenting {what}: {result.detail}"
                    log.failed(PRESENTED[what], why)


def unknown_feature(vdev: VirtioDevice) -> int | None:
    """A feature bit no spec defines for ``vdev``'s type, in the high window (so only a
    device with VERSION_1 can offer it); None for a legacy-only device."""
    if not vdev.transport_features.version_1:
        return None
    return next(b for b in range(UNKNOWN_FEATURE_FROM, 64) if FEATURES.lookup(b, vdev.model.type_key) is None)


UNKNOWN_FEATURE_FROM = 48  # search undefined bits from here (transport bits end well before)


def should_bind(policy: GuestPolicy, transport: str) -> bool:
    """Whether a driver generation with ``policy``'s PCI interfaces must take a function on
    ``transport``: a modern id needs the modern interface, a transitional function with
    capabilities either, a legacy-only one the legacy interface (a non-transitional driver
    leaves it alone, as pci.nontrans.drv-probe-caps asks)."""
    return {
        "pci-modern": policy.pci_modern,
        "pci-transitional": policy.pci_modern or policy.pci_legacy,
        "pci-legacy": policy.pci_legacy,
    }.get(transport, False)


def judge_bound(log: FindingLog, result: RunResult, watches: list[DriverWatch], policy: GuestPolicy) -> None:
    """A PCI function the driver should have taken (its id is in the range the spec gives
    for its interfaces) but never touched: the driver did not match the id."""
    for watch in watches:
        rule = MATCH_RULE.get(watch.transport)
        if rule is None or watch.reset_seen or not should_bind(policy, watch.transport):
            continue
        log.failed(rule, f"the {watch.transport} function was never initialised: {result.detail}")


def watch_host(
    log: FindingLog,
    transport: str,
    on_stop: Callable[[Finding], None] | None = None,
    watches: list[DriverWatch] | None = None,
    traps: bool = False,
    odd: str | None = None,
    write_order: bool = False,
) -> Callable[[HostSetup], Callable[[], None] | None]:
    """An ``on_host`` hook (RunConfig) that puts a DriverWatch on every device (``odd``:
    every mmio device presents that odd identification value, see run_driver_check;
    ``write_order``: the guest's avail ring writes are watched one by one, on the checked
    memory path, see write_order.py)."""

    def attach(setup: HostSetup) -> Callable[[], None]:
        attached: list[DriverWatch] = []
        for vdev in [*setup.devices, *([setup.iommu_device] if setup.iommu_device else [])]:
            presented: list[str] = []
            modern = getattr(vdev.sink, "modern", None)
            if isinstance(modern, ModernInterface):
                presented = modern.present_odd_capabilities()
                if vdev.modern_only:
                    presented.append(modern.present_odd_revision())
            unknown = unknown_feature(vdev)
            if unknown is not None and odd is None:
                vdev.transport_features.unknown = bit(unknown)
                presented.append(UNKNOWN_FEATURE)
            if odd == NO_VERSION_1 and vdev is not setup.iommu_device:
                vdev.transport_features.version_1 = False  # on a modern-only interface
                presented = [odd]
            if odd in ODD_KINDS and isinstance(vdev.sink, MmioTransport):
                vdev.sink.present_odd(odd)
                presented = [odd]
            if traps is not None and vdev is not setup.iommu_device:
                set_traps(vdev)
            if odd in TRAP_RUNS and vdev is not setup.iommu_device:
                set_value_traps(vdev, odd)
            if odd == NEEDS_RESET_RUN and vdev is not setup.iommu_device:
                break_at_kick(vdev, NEEDS_RESET_AT_KICK)
            watch = DriverWatch(
                log,
                vdev,
                transport=_transport_of(vdev, transport),
                device_type=vdev.model.type_key,
                on_stop=on_stop,
                presented=tuple(presented),
            )
            vdev.observer = watch
            attached.append(watch)
        if watches is not None:
            watches.extend(attached)
        undo: Callable[[], None] | None = None
        if write_order:
            order = AvailWriteOrder(log, [w.source for w in attached])
            undo = observe_guest_writes(setup.memory, order)

        def finish() -> None:
            if undo is not None:
                undo()
            for watch in attached:
                watch.finish()

        return finish

    return attach


async def run_driver_check(
    policy_for_guest: GuestPolicy,
    *,
    device: str,
    transport: str,
    ring: str,
    log: FindingLog,
    seed: int = 1,
    timeout: float = RUN_TIMEOUT,
    watches: list[DriverWatch] | None = None,
    device_props: tuple[str, ...] = (),
    workload: str | None = None,
    traps: bool = True,
    odd: str | None = None,
    memory_path: str = "checked",
) -> RunResult | None:
    """One run of a guest (its policy may carry a seeded broken device class) against one
    device with a watch; None when a strict stop ended it. ``odd`` (mmio transports, a key
    of host.transport.mmio.ODD_KINDS): the device presents that odd identification value
    (the watch judges whether the driver left it alone) or moves the config generation;
    NO_VERSION_1 (modern interfaces): the device does not offer VERSION_1."""
    if transport not in TRANSPORTS:
        raise DriverTargetError(f"unknown transport {transport!r} ({', '.join(TRANSPORTS)})")
    if ring not in RINGS:
        raise DriverTargetError(f"unknown ring {ring!r} ({', '.join(RINGS)})")
    behind_iommu = device == "iommu"
    request = DeviceRequest(
        device_key="blk" if behind_iommu else device,
        transport=transport,
        packed=ring == "packed",
        iommu_platform=behind_iommu,
    )
    option = device_option(request, load_device_profile(DEVICE_PROFILE)) + ",x-error-policy=drop"
    option = with_props(option, device_props)
    attached: list[DriverWatch] = [] if watches is None else watches
    with trio.CancelScope() as scope:
        cfg = RunConfig(
            device=option,
            workload=workload or WORKLOAD_FOR[device],
            transport=transport,
            seed=seed,
            timeout=timeout,
            guest=policy_for_guest,
            iommu="virtio-iommu" if behind_iommu else "none",
            iommu_topology="spec",  # the driver's IOMMU use is judged on every transport
            # frames, as the watches were written against: with the direct link the seeded
            # guest-console-no-device-ready mutation survived (tests/conformance/test_mutations.py);
            # why is open (docs/benchmarks.md, issue 24)
            framed=True,
            on_host=watch_host(
                log,
                transport,
                lambda _finding: scope.cancel(),
                attached,
                traps=traps,
                odd=odd,
                # behind an IOMMU ring addresses are IOVAs, not the guest addresses written
                write_order=memory_path == "checked" and not behind_iommu,
            ),
        )
        result = await run_embedded(cfg)
        if odd == NEEDS_RESET_RUN:
            try:
                judge_needs_reset(log, result)
            except StrictStop:
                return None
            return result
        if odd in TRAP_RUNS:

            async def control() -> RunResult | None:
                return await run_driver_check(
                    replace(policy_for_guest), device=device, transport=transport, ring=ring,
                    log=FindingLog(log.level_of, Policy.LENIENT), seed=seed, timeout=timeout,
                    device_props=device_props, workload=workload, traps=traps, odd=CONTROL_RUN,
                    memory_path=memory_path,
                )  # fmt: skip

            try:
                await judge_trap(log, odd, result, control)
            except StrictStop:
                return None
            return result
        refused = [w.unknown_refused for w in attached if w.unknown_refused]
        if refused and odd is None:
            try:
                await judge_unknown(
                    log, refused[0], policy_for_guest, device, transport, ring,
                    seed=seed, timeout=timeout, device_props=device_props, workload=workload,
                    traps=traps, memory_path=memory_path,
                )  # fmt: skip
            except StrictStop:
                return None
        try:
            if policy_for_guest.pci_modern and transport == "pci-modern" and odd is None:
                judge_presented(log, result, attached)
            judge_bound(log, result, attached, policy_for_guest)
            if traps and result.ring:
                judge_traps(log, result, result.driver_features)
        except StrictStop:
            return None
        return result
    return None


async def run_driver_target(
    spec: str, *, transport: str, ring: str, policy: Policy, catalog: Catalog
) -> FindingLog:
    """Run ``spec`` (driver:PROFILE[,props]) on ``transport`` with ``ring`` rings; every
    driver-side finding lands in the returned log (strict: up to the first MUST failure).
    Where the driver stops short of DRIVER_OK on a device offering an unknown feature bit,
    a control run without the bit decides whether the bit was the cause (judge_unknown)."""
    target = parse_driver_spec(spec)
    known = known_deviations(target.profile, transport)
    if "iommu" in target.devices:  # the virtio-iommu itself is an mmio device
        known = {**known_deviations(target.profile, "mmio-v1"), **known}
    log = FindingLog(catalog.level_of, policy, known=known)
    guest = guest_policy(load_driver_profile(target.profile))
    for device in target.devices:
        result = await run_driver_check(
            replace(guest),
            device=device,
            transport=transport,
            ring=ring,
            log=log,
            seed=target.seed,
            device_props=target.device_props,
            memory_path=target.memory_path,
            workload=target.workload,
        )
        if result is None:
            break  # strict stop
    else:
        for odd, (kind, _rules) in TRAP_RUNS.items():  # values the driver must cope with
            if kind in target.devices and target.workload is None:
                await run_driver_check(
                    replace(guest), device=kind, transport=transport, ring=ring, log=log,
                    seed=target.seed, device_props=target.device_props, odd=odd,
                )  # fmt: skip
        # the device breaks with a request outstanding (DEVICE_NEEDS_RESET, modern interfaces:
        # the legacy interface has no such status bit)
        if transport not in ("mmio-v1", "mmio", "pci-legacy"):
            result = await run_driver_check(
                replace(guest), device="rng", transport=transport, ring=ring, log=log, odd=NEEDS_RESET_RUN
            )
        if transport in ("mmio-v2", "pci-modern"):  # a modern interface without VERSION_1
            result = await run_driver_check(
                replace(guest), device="rng", transport=transport, ring=ring, log=log, odd=NO_VERSION_1
            )
        if transport.startswith("mmio"):
            for odd in ODD_KINDS:  # the driver meets odd identification values, a moving generation
                result = await run_driver_check(
                    replace(guest),
                    device="blk" if odd == GENERATION_MOVES else "rng",
                    transport=transport,
                    ring=ring,
                    log=log,
                    odd=odd,
                )
                if result is None:
                    break
    return log


async def judge_unknown(
    log: FindingLog,
    why: str,
    guest: GuestPolicy,
    device: str,
    transport: str,
    ring: str,
    **run: Any,
) -> None:
    """The driver stopped short of DRIVER_OK on a device offering an unknown feature bit.
    A control run of the same device without that bit says whether the bit was the
    cause (FAIL) or the driver stops anyway, e.g. refusing the device by design (then the
    rule is not decided, and the report says why)."""
    control_log = FindingLog(log.level_of, Policy.LENIENT)
    watches: list[DriverWatch] = []
    await run_driver_check(
        replace(guest),
        device=device,
        transport=transport,
        ring=ring,
        log=control_log,
        watches=watches,
        odd=CONTROL_RUN,
        **run,
    )
    reached = any(w.driver_ok_seen for w in watches if w.device_type == WATCHED_TYPE.get(device, device))
    if reached:
        log.failed(UNKNOWN_RULE, f"{why}; without the unknown bit (control run) it does")
    else:
        log.untested(UNKNOWN_RULE, f"{why}; it does not reach DRIVER_OK without the bit either (control run)")


#: the device type a driver target's device name is watched as
WATCHED_TYPE = {"iommu": "blk"}


def watch_vhost_backends(log: FindingLog, watches: list[DriverWatch]) -> Callable[[VhostUserBackend], None]:
    """An ``on_backend`` hook (host/vhost_user.py serve_socket, linux_vhost) that puts a
    vhost-user vantage DriverWatch on every back-end: the real driver behind QEMU is
    checked on its features, ring setup and rings. Call ``finish()`` on the watches after."""

    def attach(backend: VhostUserBackend) -> None:
        watch = DriverWatch(
            log,
            backend.vdev,
            transport="vhost-user",
            device_type=backend.model.type_key,
            vantage="vhost-user",
        )
        backend.attach_observer(watch)
        watches.append(watch)

    return attach
