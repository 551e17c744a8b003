"""The guest's main: boot, probe, run one workload, report what happened.

The guest fills in its half of a :class:`~virtio_sim.outcome.RunResult` (transport,
acked features, status trace, workload evidence and the outcome it can judge); the host
side adds what only it can see. The same function runs embedded and in a guest process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import trio

from virtio_sim.guest.drivers.base import BlkIoError, DeviceProtocolError
from virtio_sim.guest.link import HostLink, HostLinkError
from virtio_sim.guest.platform import BootError, GuestKernel, GuestPolicy
from virtio_sim.guest.stall import cancel_when_stalled
from virtio_sim.guest.virtio import DeviceNeedsReset, DriverHang, VirtioGuestDevice
from virtio_sim.guest.workloads import WORKLOADS, CorruptionDetected
from virtio_sim.memory import ByteAccess
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.spec import FEATURES

MAX_REASONS = 3  # probe reasons quoted in a NOT_PROBED detail (all are in result.probes)


@dataclass
class BootInfo:
    """What the bootloader hands the guest kernel."""

    cmdline: str
    ram_size: int
    ram_base: int = 0  # guest-physical start of RAM (QEMU's arm virt: 1 GiB)
    #: the memory map (e820 / DT memory node): (gpa, size) per RAM block; empty: one block
    #: of ``ram_size`` at ``ram_base``
    ram_regions: tuple[tuple[int, int], ...] = ()
    arch: str = "x86_64"


async def run_guest(
    link: HostLink,
    memory: ByteAccess,
    boot: BootInfo,
    workload: str,
    *,
    seed: int | None,
    policy: GuestPolicy,
    timeout: float,
) -> RunResult:
    """Run the guest until the workload ends or ``timeout`` passes (then HANG)."""
    result = RunResult(Outcome.HANG)
    holder: list[GuestKernel | None] = [None]
    stalled: list[str] = []
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(timeout) as scope:
            # A run that can no longer change before its deadline ends now (guest/stall.py).
            nursery.start_soon(cancel_when_stalled, scope, stalled)

            async def watch_link() -> None:
                # A host that goes away (or refuses to go on) ends the run at once: a
                # driver waiting for an interrupt would otherwise wait for the timeout.
                await link.run()
                if link.peer_failure is not None:
                    scope.cancel()

            nursery.start_soon(watch_link)
            kernel = holder[0] = GuestKernel(
                link,
                memory,
                boot.ram_size,
                replace(policy, arch=boot.arch),
                ram_base=boot.ram_base,
                ram_regions=boot.ram_regions,
            )
            nursery.start_soon(kernel.irq_loop)
            await _main(kernel, boot, workload, seed, result)
        if link.peer_failure is not None and result.outcome is not Outcome.OK:
            result.outcome = Outcome.DEVICE_ERROR
            result.detail = f"host link lost: {link.peer_failure}"
        elif scope.cancelled_caught:
            result.outcome = Outcome.HANG
            extra = f" ({result.detail})" if result.detail else ""
            why = f"; {stalled[0]}" if stalled else ""
            result.detail = f"no completion within {timeout:g}s{why}{extra}"
        if holder[0] is not None and not result.dma_ranges:
            result.dma_ranges = holder[0].dma_ranges()  # also after a hang: judged with the host's writes
        await link.bye()
        nursery.cancel_scope.cancel()
    return result


async def _main(
    kernel: GuestKernel, boot: BootInfo, workload_name: str, seed: int | None, result: RunResult
) -> None:
    key, workload = WORKLOADS[workload_name]
    try:
        probes = await kernel.probe_platform(boot.cmdline)
    except HostLinkError as e:
        result.outcome, result.detail = Outcome.DEVICE_ERROR, str(e)
        return
    except BootError as e:
        result.outcome, result.detail = Outcome.NOT_PROBED, str(e)
        result.probes = kernel.probe_report()
        return
    result.probes = kernel.probe_report()
    record = next((p for p in probes if p.device_key == key), None)
    if record is None or record.device is None:
        reasons = [f"{p.where}: {p.reason}" for p in probes]
        why = "; ".join(reasons[:MAX_REASONS]) or "no transports"
        if len(reasons) > MAX_REASONS:
            why += f"; {len(reasons) - MAX_REASONS} more in the probe report"
        result.outcome = Outcome.NOT_PROBED
        result.detail = f"no {key} device bound ({why})"
        return
    dev = record.device
    result.transport = dev.transport.name
    result.driver_features = dev.features
    result.device_features = dev.device_features  # as the guest read them (a host may add its own)
    result.negotiated = FEATURES.names(dev.features, key)
    result.status_trace = dev.trace
    result.ring = dev.ring_info()
    if not record.bound and record.hung:
        result.outcome, result.detail = Outcome.HANG, f"probe never ends: {record.hung}"
        return
    if not record.bound:
        broke = record.device_broke
        result.outcome = Outcome.DEVICE_ERROR if broke else Outcome.FAILED_CLEAN
        result.detail = record.reason
        return
    assert record.driver is not None
    record.driver.peers = [p.driver for p in kernel.bound(key) if p is not record and p.driver is not None]
    try:
        result.workload = await workload(record.driver, seed)
    except CorruptionDetected as e:
        result.outcome, result.detail = Outcome.CORRUPTION, str(e)
    except DriverHang as e:
        result.outcome, result.detail = Outcome.HANG, str(e)
    except (DeviceNeedsReset, DeviceProtocolError) as e:
        result.outcome, result.detail = Outcome.DEVICE_ERROR, str(e)
        await reset_broken_device(dev)
    except (BlkIoError, HostLinkError) as e:
        result.outcome, result.detail = Outcome.DEVICE_ERROR, str(e)
    else:
        result.outcome = Outcome.OK
        result.detail = f"{workload_name} verified"
    result.status_trace = dev.trace
    result.ring = dev.ring_info()
    damage = kernel.check_canaries()
    if damage:
        result.outcome = Outcome.CORRUPTION
        result.detail = f"{damage[0]} ({len(damage)} canary hit(s))"


async def reset_broken_device(dev: VirtioGuestDevice) -> None:
    """Guest hardening: a device that broke a ring rule or asked for a reset is reset
    (status 0) so that it stops touching guest memory; the status trace says so."""
    try:
        await dev.transport.set_status(0)
    except HostLinkError:
        return
    dev.trace.append("RESET (device broken)")
