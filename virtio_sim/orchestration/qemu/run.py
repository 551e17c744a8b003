"""``virtio-sim run --device-backend qemu``: our guest stack against QEMU's devices.

The same :class:`~virtio_sim.orchestration.embedded.RunConfig` an embedded run takes, but the devices
are QEMU's (qemu-system-x86_64 under qtest, :mod:`virtio_sim.orchestration.qemu.qtest`): the guest
kernel, transports, rings, drivers and workloads of :mod:`guest` run unchanged over a
:class:`~virtio_sim.orchestration.qemu.qtest_link.QtestLink`, with guest RAM inside QEMU. The
result is the same RunResult, so a cell's outcome on our devices and on QEMU's can be compared directly.

What the guest must do differently, because nothing but qtest runs in QEMU:

* interrupts are INTx lines seen through ``irq_intercept_in`` (MSI-X messages would go to
  a CPU that is halted), so the guest does not enable MSI-X (Linux's ``pci=nomsi``);
* QEMU's entropy is not our seeded stream, so the rng workload checks lengths and canaries
  but not the bytes themselves.

Anything QEMU printed on stderr (virtio_error() messages, refused properties) ends up in
the result's device notes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from virtio_sim.guest.boot import BootInfo, run_guest
from virtio_sim.guest.firmware import VIRTIO_MMIO_HIDS
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.build import PCI_TRANSPORTS
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import parse_device_option
from virtio_sim.orchestration.embedded import RunConfig, check_config, guest_policy_for
from virtio_sim.orchestration.qemu.fw_cfg import FwCfgError
from virtio_sim.orchestration.qemu.machines import (
    IOMMU_DEVICE,
    QEMU_TRANSPORTS,
    MachineFacts,
    describe,
    install_acpi,
    machine_args,
    machine_of,
    qemu_devices,
)
from virtio_sim.orchestration.qemu.qtest import QtestError, spawn_qtest
from virtio_sim.orchestration.qemu.qtest_link import QtestLink, QtestMemory
from virtio_sim.orchestration.qemu.tools import QEMU_ARM, QEMU_X86, MissingTool, require_qemu
from virtio_sim.outcome import Outcome, RunResult

DEVICE_BACKENDS = ("ours", "qemu")
QEMU_BINARY = {"x86_64": QEMU_X86, "aarch64": QEMU_ARM}
LITTLE_ENDIAN_TARGETS = ("x86_64", "aarch64")  # as qtest runs them (the arm CPU never boots BE)
IOMMU_FAULT = "virtio_iommu_translate no mapping"  # what QEMU 7.2 prints for a fault


async def run_qemu(
    cfg: RunConfig, *, qemu: str | None = None, workdir: Path | None = None, machine: str | None = None
) -> RunResult:
    """Run ``cfg`` with QEMU's device models; ``workdir`` keeps scratch disks (default: temp).

    ``machine`` picks QEMU's arm ``virt`` (qemu-system-aarch64) instead of microvm for the
    virtio-mmio transports; PCI always runs on q35.
    """
    check_config(cfg)
    device_name = parse_device_option(cfg.device).driver
    refused = RunResult(Outcome.HOST_REFUSED, transport=cfg.transport, device=device_name)
    if cfg.transport not in QEMU_TRANSPORTS:
        refused.detail = f"transport {cfg.transport!r} is not available with QEMU's devices"
        return refused
    if cfg.iommu not in ("none", "virtio-iommu"):
        refused.detail = f"Property 'iommu' doesn't take value '{cfg.iommu}'"
        return refused
    if cfg.iommu == "virtio-iommu" and cfg.transport not in PCI_TRANSPORTS:
        # QEMU 7.2's words for -device virtio-iommu-device on microvm (measured); on arm
        # virt QEMU combines them, but its virtio-mmio devices are not behind the IOMMU
        refused.detail = "VIRTIO-IOMMU is not attached to any PCI bus!"
        return refused
    try:
        facts = MachineFacts.of(machine_of(cfg.transport, machine))
    except PropertyError as e:
        refused.detail = str(e)
        return refused
    if cfg.guest.guest_order == "big" and facts.arch in LITTLE_ENDIAN_TARGETS:
        # Legacy virtio is in the guest's native byte order, which QEMU takes from its
        # target (virtio_default_big_endian / virtio_is_big_endian in hw/virtio): x86 and
        # the halted arm CPU qtest leaves are little-endian, so a big-endian driver would
        # only measure the mismatch (it hangs reading swapped ring indices).
        refused.detail = (
            f"a big-endian driver against qemu-system-{facts.arch}: QEMU serves legacy virtio"
            " little-endian there, so the comparison would be meaningless (a big-endian"
            " target such as qemu-system-ppc64 pseries is needed)"
        )
        return refused
    try:
        qemu = qemu or require_qemu(QEMU_BINARY[facts.arch])
    except MissingTool as e:
        refused.detail = str(e)
        return refused
    with tempfile.TemporaryDirectory(prefix="virtio-sim-qemu-") as tmp:
        scratch = workdir or Path(tmp)
        try:
            devs = qemu_devices([cfg.device, *cfg.extra_devices], cfg.transport, scratch)
        except PropertyError as e:
            refused.detail = str(e)
            return refused
        # A driver without an ACPI match for virtio-mmio (Linux < 4.2) boots microvm with
        # acpi=off, where QEMU lists the transports on the command line itself.
        acpi = facts.name != "microvm" or any(h in VIRTIO_MMIO_HIDS for h in cfg.guest.acpi_hids)
        args = machine_args(cfg.transport, cfg.ram_size, facts.name, acpi=acpi)
        if cfg.iommu == "virtio-iommu":
            args += ["-device", IOMMU_DEVICE]  # first: the lowest free slot
        args += devs.args
        try:
            q = await trio.to_thread.run_sync(lambda: spawn_qtest(qemu, facts.arch, args, workdir=Path(tmp)))
        except QtestError as e:
            refused.detail = qemu_refusal(str(e)) or str(e)
            refused.device_notes = devs.notes
            return refused
        try:
            try:
                q.client.intercept_irqs(facts.irq_controller)
                rsdp = ""
                if acpi:
                    tables = install_acpi(q.client, facts.name)
                    rsdp = f"acpi_rsdp={tables.rsdp_address:#x}"  # Linux's parameter for it
                # The transports (DSDT), the IOMMU topology (VIOT), q35's ECAM (MCFG) and
                # PCI windows (PCI0 _CRS) come from QEMU's tables.
                described = describe(q.client, cfg.transport, facts.name, acpi=acpi)
                cmdline = f"{described} {rsdp}".strip()
            except FwCfgError as e:
                q.close()
                refused.detail = f"QEMU's ACPI tables are unusable: {e}"
                return refused
            except QtestError as e:
                # QEMU connects before it realizes the devices: a device it refuses ends
                # the process right after the connection.
                stderr = q.close()
                refused.detail = qemu_refusal(stderr) or f"QEMU stopped before the guest ran: {e}"
                refused.device_notes = devs.notes
                return refused
            result = await _run(cfg, q.client, cmdline, device_name, facts)
        finally:
            stderr = q.close()
        result.device_notes = devs.notes + [line for line in stderr.splitlines() if line.strip()]
        return judge_qemu_evidence(result)


def judge_qemu_evidence(result: RunResult) -> RunResult:
    """QEMU's stderr is its evidence: a translation fault of its virtio-iommu is a
    DMA_FAULT whatever the guest then saw (as with our host's IOMMU faults)."""
    faults = [n for n in result.device_notes if IOMMU_FAULT in n]
    if faults and result.outcome is not Outcome.CORRUPTION:
        result.outcome = Outcome.DMA_FAULT
        result.detail = f"{len(faults)} IOMMU fault(s): {faults[0].split(': ', 1)[-1]}; {result.detail}"
    return result


def qemu_refusal(stderr: str) -> str:
    """QEMU's reason for refusing a configuration, without its ``prog: -device ...:`` prefix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("qemu-system-")]
    if not lines:
        return ""
    _, _, text = lines[-1].partition(": ")
    if text.startswith("-"):
        _, _, text = text.partition(": ")
    return text.strip()


async def _run(cfg: RunConfig, client: Any, cmdline: str, device_name: str, facts: MachineFacts) -> RunResult:
    link = QtestLink(client, irq_base=facts.irq_line_offset)
    memory = QtestMemory(client, link)
    policy = replace(guest_policy_for(cfg), pci_msix=False)
    key = WORKLOADS[cfg.workload][0]
    seed = None if key == "rng" else cfg.seed  # QEMU's entropy is not our seeded stream
    result = await run_guest(
        link,
        memory,
        BootInfo(cmdline, cfg.ram_size, facts.ram_base),
        cfg.workload,
        seed=seed,
        policy=policy,
        timeout=cfg.timeout,
    )
    result.device = device_name
    if not result.transport:
        result.transport = cfg.transport
    result.workload = {
        **result.workload,
        "device_backend": "qemu",
        "qemu_machine": facts.name,
        "qtest_commands": client.commands,
    }
    return result


def run_qemu_sync(cfg: RunConfig, **kw: Any) -> RunResult:
    start = time.perf_counter()
    result = trio.run(lambda: run_qemu(cfg, **kw))
    result.workload.setdefault("seconds", round(time.perf_counter() - start, 3))
    return result
