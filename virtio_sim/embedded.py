"""Run a host and a guest in one trio.run, linked by memory channels (the default mode).

This is where a run's evidence becomes its outcome: the host refusing its configuration
is HOST_REFUSED, no driver binding is NOT_PROBED, a refused negotiation is FAILED_CLEAN,
a device that needs a reset is DEVICE_ERROR, wrong data is CORRUPTION, and a run that
does not finish within its timeout is HANG.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import trio

from guest.drivers.blk import BlkIoError
from guest.link import HostLink, HostLinkError
from guest.platform import GuestKernel, GuestPolicy
from guest.virtio import DeviceNeedsReset
from guest.workloads import WORKLOADS, CorruptionDetected
from host.devices.base import PropertyError
from host.machine import Machine
from host.qdev import DeviceSpec, build_device, parse_device_option
from host.server import serve
from host.virtio_device import VirtioDevice
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.spec import FEATURES
from virtio_sim.wire import memory_link

TRANSPORTS = ("mmio-v2", "mmio-v1")
DEFAULT_RAM = 64 << 20
DEFAULT_DISK = 1 << 20


@dataclass
class RunConfig:
    device: str
    workload: str
    transport: str = "mmio-v2"
    ram_size: int = DEFAULT_RAM
    seed: int | None = 1
    timeout: float = 10.0
    guest: GuestPolicy = field(default_factory=GuestPolicy)


class ConfigError(ValueError):
    """A run configuration that cannot even be attempted (bad CLI input)."""


def check_config(cfg: RunConfig) -> DeviceSpec:
    if cfg.transport not in TRANSPORTS:
        raise ConfigError(
            f"unknown transport {cfg.transport!r} (choose from {', '.join(TRANSPORTS)})"
        )
    if cfg.workload not in WORKLOADS:
        raise ConfigError(f"unknown workload {cfg.workload!r} (choose from {', '.join(WORKLOADS)})")
    if cfg.ram_size < (2 << 20):
        raise ConfigError("guest RAM must be at least 2 MiB")
    try:
        spec = parse_device_option(cfg.device)
    except PropertyError as e:
        raise ConfigError(str(e)) from None
    return spec


async def run_embedded(cfg: RunConfig) -> RunResult:
    spec = check_config(cfg)
    with tempfile.TemporaryDirectory(prefix="virtio-sim-") as tmp:
        if spec.driver == "virtio-blk-device" and "drive" not in spec.props:
            disk = os.path.join(tmp, "disk.img")
            with open(disk, "wb") as f:
                f.truncate(DEFAULT_DISK)
            spec.props["drive"] = disk
        if spec.driver == "virtio-rng-device" and cfg.seed is not None:
            spec.props.setdefault("x-seed", str(cfg.seed))
        return await _run(cfg, spec)


async def _run(cfg: RunConfig, spec: DeviceSpec) -> RunResult:
    try:
        built = build_device(spec)
    except PropertyError as e:
        return RunResult(
            Outcome.HOST_REFUSED, transport=cfg.transport, device=spec.driver, detail=str(e)
        )
    memory = GuestMemory.create(cfg.ram_size)
    try:
        vdev = VirtioDevice(
            built.model,
            lambda features: IdentityAddressSpace(memory),
            transport_features=built.transport_features,
            policy=built.policy,
            strict_rings=built.strict_rings,
        )
        vdev.guest_order = cfg.guest.guest_order
        machine = Machine(memory)
        machine.add_mmio_device(vdev, legacy=cfg.transport == "mmio-v1")
        host_end, guest_end = memory_link()
        result = RunResult(Outcome.HANG, transport=cfg.transport, device=spec.driver)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, host_end, machine)
            link = HostLink(guest_end)
            nursery.start_soon(link.run)
            kernel = GuestKernel(link, memory, cfg.ram_size, cfg.guest)
            nursery.start_soon(kernel.irq_loop)
            with trio.move_on_after(cfg.timeout) as scope:
                await _guest_main(cfg, kernel, machine.kernel_cmdline(), result)
            if scope.cancelled_caught:
                result.outcome = Outcome.HANG
                result.detail = f"no completion within {cfg.timeout:g}s" + (
                    f" ({result.detail})" if result.detail else ""
                )
            await link.bye()
            nursery.cancel_scope.cancel()
        result.device_features = vdev.device_features
        result.device_notes = list(vdev.notes)
        result.violations = [v.__dict__ for v in vdev.violations]
        if result.outcome is Outcome.OK and vdev.violations:
            result.outcome = Outcome.DEVICE_ERROR
            result.detail = f"device recorded ring violations: {vdev.violations[0].message}"
        return result
    finally:
        close = getattr(built.model, "close", None)
        if close:
            close()
        memory.close()


async def _guest_main(cfg: RunConfig, kernel: GuestKernel, cmdline: str, result: RunResult) -> None:
    key, workload = WORKLOADS[cfg.workload]
    try:
        probes = await kernel.probe_mmio(cmdline)
    except HostLinkError as e:
        result.outcome, result.detail = Outcome.DEVICE_ERROR, str(e)
        return
    record = next((p for p in probes if p.device_key == key), None)
    if record is None or record.device is None:
        why = "; ".join(f"{p.where}: {p.reason}" for p in probes) or "no transports"
        result.outcome = Outcome.NOT_PROBED
        result.detail = f"no {key} device bound ({why})"
        return
    dev = record.device
    result.transport = dev.transport.name
    result.driver_features = dev.features
    result.negotiated = FEATURES.names(dev.features, key)
    result.status_trace = dev.trace
    if not record.bound:
        result.outcome, result.detail = Outcome.FAILED_CLEAN, record.reason
        return
    assert record.driver is not None
    try:
        result.workload = await workload(record.driver, cfg.seed)
    except CorruptionDetected as e:
        result.outcome, result.detail = Outcome.CORRUPTION, str(e)
    except (DeviceNeedsReset, BlkIoError, HostLinkError) as e:
        result.outcome, result.detail = Outcome.DEVICE_ERROR, str(e)
    else:
        result.outcome = Outcome.OK
        result.detail = f"{cfg.workload} verified"
    result.status_trace = dev.trace
