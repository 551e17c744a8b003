"""Run a host and a guest in one trio.run (the default mode).

The host side is built by :func:`host.build.build_host`, the guest side runs
:func:`guest.boot.run_guest`; the guest calls the host machine directly
(:mod:`virtio_sim.orchestration.direct_link`), or, with ``RunConfig.framed``, sends it frames over
memory channels, encoded and decoded exactly as over a socket. The guest judges what it
saw (NOT_PROBED, FAILED_CLEAN, CORRUPTION, HANG, ...); this module adds the host's
evidence: a configuration the host refused is HOST_REFUSED, and ring violations the
device recorded turn an apparent OK into DEVICE_ERROR.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import trio

from virtio_sim.guest.boot import BootInfo, run_guest
from virtio_sim.guest.link import HostLink
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.build import HOST_TRANSPORTS, HostConfig, HostSetup, build_host
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import parse_device_option
from virtio_sim.host.qemu_backends import Backends
from virtio_sim.host.server import serve
from virtio_sim.layouts import ByteOrder
from virtio_sim.orchestration.direct_link import DirectLink
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.wire import memory_link

TRANSPORTS = HOST_TRANSPORTS
MIN_RAM = 2 << 20


@dataclass
class RunConfig:
    device: str
    workload: str
    transport: str = "mmio-v2"
    ram_size: int = 64 << 20
    seed: int | None = 1
    timeout: float = 10.0
    guest: GuestPolicy = field(default_factory=GuestPolicy)
    iommu: str = "none"
    #: "qemu" (PCI endpoints only, an IOMMU needs a PCI bus) or "spec" (mmio endpoints too)
    iommu_topology: str = "qemu"
    #: more devices on the same machine, after ``device`` (net-pair needs two NICs)
    extra_devices: list[str] = field(default_factory=list)
    # What the host is told about the guest's byte order (None: the truth, guest.guest_order);
    # a different value makes a deliberately mismatched legacy setup.
    host_guest_order: ByteOrder | None = None
    globals: dict[str, str] = field(default_factory=dict)  # QEMU -global driver.prop=value
    #: called with the built host before the guest boots (a checking device attaches its
    #: observers here); what it returns is called once the run ended, before the host's
    #: memory goes away
    on_host: Callable[[HostSetup], Callable[[], None] | None] | None = None
    #: QEMU's -M value (host/machine_types.py); None: microvm announced on the command line
    machine: str | None = None
    #: -drive / -netdev / -chardev definitions (host/qemu_backends.py)
    backends: Backends = field(default_factory=Backends)
    #: a virtio-blk device without drive= gets a scratch disk (the matrix, the API); the
    #: command line refuses it as QEMU does ("drive property not set")
    scratch_disks: bool = True
    #: False (default): the guest calls the host machine directly (virtio_sim/orchestration/direct_link.py);
    #: True: every access and interrupt is a frame over trio memory channels, the codec and
    #: the frame server of the process mode run in one process
    framed: bool = False


#: what a run imports only when its configuration needs it (besides the device kinds'
#: halves): the PCI host and proxy, the IOMMU, firmware tables (built by the host, parsed
#: by the guest), the hostile device
ON_DEMAND_MODULES = (
    "virtio_sim.host.pci",
    "virtio_sim.host.transport.virtio_pci",
    "virtio_sim.host.iommu",
    "virtio_sim.host.devices.iommu",  # the machine's iommu= property, not a -device model
    "virtio_sim.host.firmware",
    "virtio_sim.host.devices.hostile",
    "virtio_sim.guest.acpi",
    "virtio_sim.guest.fdt",
    "virtio_sim.guest.pci_firmware",
)


def load_everything() -> None:
    """Import every module a run loads on demand: each device kind's guest and host
    halves and :data:`ON_DEMAND_MODULES`. A single run never needs this (it imports what
    its configuration uses); a process that runs cells of every kind, machine and IOMMU
    setting (a matrix worker, a dask cell process) calls it before freezing its start-up
    objects (virtio_sim/gcfreeze.py), so the collector skips those modules too, and the
    matrix's forkserver imports them once for all its workers."""
    from importlib import import_module

    from virtio_sim.devices import KINDS
    from virtio_sim.guest.kinds import guest_half
    from virtio_sim.host.kinds import host_half

    for key, kind in KINDS.items():
        guest_half(key)
        if kind.qdev_model:
            host_half(key)
    for name in ON_DEMAND_MODULES:
        import_module(name)


def guest_policy_for(cfg: RunConfig) -> GuestPolicy:
    """The transport choice can also say how the guest drives it: pci-legacy is the
    transitional device driven through its legacy interface (virtio_pci.force_legacy=1)."""
    if cfg.transport == "pci-legacy":
        return replace(cfg.guest, pci_force_legacy=True)
    return cfg.guest


class ConfigError(ValueError):
    """A run configuration that cannot even be attempted (bad CLI input)."""


def check_config(cfg: RunConfig) -> None:
    if cfg.transport not in TRANSPORTS:
        raise ConfigError(f"unknown transport {cfg.transport!r} (choose from {', '.join(TRANSPORTS)})")
    if cfg.workload not in WORKLOADS:
        raise ConfigError(f"unknown workload {cfg.workload!r} (choose from {', '.join(WORKLOADS)})")
    if cfg.ram_size < MIN_RAM:
        raise ConfigError("guest RAM must be at least 2 MiB")
    try:
        for text in [cfg.device, *cfg.extra_devices]:
            parse_device_option(text)
    except PropertyError as e:
        raise ConfigError(str(e)) from None


def add_host_evidence(result: RunResult, setup: HostSetup) -> RunResult:
    """Fold what the host saw into the guest's result (the process mode folds the same
    evidence, received from the host process; see RunResult.add_host_evidence)."""
    return result.add_host_evidence(setup.evidence())


#: Scratch disks go to tmpfs when there is one: they are thrown away after the run, and
#: the blk device's fsync (FLUSH, write-through writes) on a loaded disk filesystem costs
#: milliseconds of wall time per call, on tmpfs nothing. None: the system's temp folder.
SCRATCH_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def build_embedded(cfg: RunConfig, stack: ExitStack) -> HostSetup | RunResult:
    """Check ``cfg`` and build its host (no event loop needed): the built host, closed
    by ``stack``, or the HOST_REFUSED result when the host refuses the configuration.
    A scratch folder is made (and removed by ``stack``) only when a disk needs one."""
    check_config(cfg)
    folder: list[str] = []

    def scratch() -> str:
        if not folder:
            import tempfile  # here: a run without a disk never needs it (tempfile pulls in shutil, random)

            tmp = tempfile.TemporaryDirectory(prefix="virtio-sim-", dir=SCRATCH_ROOT)
            folder.append(stack.enter_context(tmp))
        return folder[0]

    host_cfg = HostConfig(
        devices=[cfg.device, *cfg.extra_devices],
        transport=cfg.transport,
        ram_size=cfg.ram_size,
        seed=cfg.seed,
        guest_order=cfg.host_guest_order or cfg.guest.guest_order,
        scratch_dir=scratch if cfg.scratch_disks else None,
        iommu=cfg.iommu,
        iommu_topology=cfg.iommu_topology,
        globals=dict(cfg.globals),
        machine=cfg.machine,
        backends=cfg.backends,
    )
    try:
        setup = build_host(host_cfg)
    except PropertyError as e:
        device_name = parse_device_option(cfg.device).driver
        return RunResult(Outcome.HOST_REFUSED, transport=cfg.transport, device=device_name, detail=str(e))
    stack.callback(setup.close)
    return setup


async def run_built(cfg: RunConfig, setup: HostSetup) -> RunResult:
    """Boot the guest of ``cfg`` against the host :func:`build_embedded` built."""
    finish = cfg.on_host(setup) if cfg.on_host is not None else None
    try:
        boot = BootInfo(
            setup.machine.kernel_cmdline(),
            cfg.ram_size,
            setup.ram_base,
            ram_regions=setup.ram_regions,
            arch=setup.arch,
        )
        async with trio.open_nursery() as nursery:
            link: HostLink
            if cfg.framed:
                host_end, guest_end = memory_link()
                nursery.start_soon(serve, host_end, setup.machine)
                link = HostLink(guest_end)
            else:
                link = DirectLink(setup.machine)
            result = await run_guest(
                link,
                setup.memory,
                boot,
                cfg.workload,
                seed=cfg.seed,
                policy=guest_policy_for(cfg),
                timeout=cfg.timeout,
            )
            nursery.cancel_scope.cancel()
        result.device = parse_device_option(cfg.device).driver
        if not result.transport:
            result.transport = cfg.transport
        return add_host_evidence(result, setup)
    finally:
        if finish is not None:
            finish()


async def run_embedded(cfg: RunConfig) -> RunResult:
    with ExitStack() as stack:
        built = build_embedded(cfg, stack)
        if isinstance(built, RunResult):
            return built
        return await run_built(cfg, built)


def run_embedded_sync(cfg: RunConfig) -> RunResult:
    """``trio.run(run_embedded, cfg)``, with the event loop started only when there is a
    guest to run (a host that refuses the configuration answers without one)."""
    with ExitStack() as stack:
        built = build_embedded(cfg, stack)
        if isinstance(built, RunResult):
            return built
        return trio.run(run_built, cfg, built)
