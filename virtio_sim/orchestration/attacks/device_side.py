"""The reverse corpus: a hostile device (host/devices/hostile.py) against every guest
driver profile (specs/profiles/drivers/), on the transports and ring formats each
profile can drive.

A case passes when the run ends without an exception escaping the guest, without a
hang, without guest memory corruption (the guest's DMA canaries), the lie actually
fired, and, for lies that break the protocol, the driver marked the device broken
(DEVICE_ERROR) and reset it (the device saw a reset after the lie).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import trio

from virtio_sim.guest.profile import guest_policy
from virtio_sim.host.devices.hostile import LIES
from virtio_sim.orchestration.attacks.scenario import CaseResult, Verdict
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import load_driver_profile
from virtio_sim.spec import SPECS_DIR, F, bit

PROFILES_DIR = SPECS_DIR / "profiles" / "drivers"
RAM = 8 << 20  # room for a restricted guest's 4 MiB swiotlb window
#: Wall clock a reverse case gets before the guest calls it a HANG. No case is meant to
#: reach it: every run ends by completing, by the driver declaring the device broken, or by
#: the guest's own report of a driver that waits forever (NEEDS_RESET_HANG, at once), so
#: the bound only decides how long a real hang takes to be reported. 3 s was hit by a
#: sub-second case on 2 cores at load ~15 and read as a hang; 30 s is the margin the
#: conformance driver runs use for the same reason.
RUN_SECONDS = 30.0

# Lies after which a correct driver may still finish its work (the data was right, or
# only notifications lied); every other lie must end in DEVICE_ERROR + reset.
TOLERABLE = {
    "spurious-interrupts",
    "config-interrupt-storm",
    "short-completion",
    "zero-length-completion",
    "rewrite-descriptors",
    "status-garbage",
    "config-generation-churn",
}
# Lies that only make sense for some devices (the rest apply to all).
LIE_DEVICES = {"status-garbage": ("blk",), "config-generation-churn": ("blk",)}
WORKLOAD = {"rng": ("virtio-rng-device", "rng"), "blk": ("virtio-blk-device", "blk-rw")}


@dataclass(frozen=True)
class DriverTarget:
    profile: str
    device: str
    transport: str
    ring: str

    @property
    def name(self) -> str:
        return f"driver:{self.profile}/{self.device}/{self.transport}/{self.ring}"


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def driver_targets() -> list[DriverTarget]:
    out = []
    for name in profiles():
        prof = load_driver_profile(name)
        modern = bool(prof.transport_features & bit(F.VERSION_1))
        packed = bool(prof.transport_features & bit(F.RING_PACKED))
        transports = ["mmio-v2", "pci-modern"] if modern else ["mmio-v1", "pci-legacy"]
        for device in WORKLOAD:
            for t in transports:
                out.append(DriverTarget(name, device, t, "split"))
            if packed:
                out.append(DriverTarget(name, device, "mmio-v2", "packed"))
    return out


def parse_driver_target(text: str) -> list[DriverTarget]:
    spec = text.removeprefix("driver:")
    got = [t for t in driver_targets() if t.profile == spec or t.name == f"driver:{spec}"]
    if not got:
        raise ValueError(f"unknown driver target {text!r}; profiles: {', '.join(profiles())}")
    return got


def lies_for(t: DriverTarget) -> list[str]:
    return [lie for lie in LIES if t.device in LIE_DEVICES.get(lie, (t.device,))]


async def _run(t: DriverTarget, lie: str) -> RunResult:
    prof = load_driver_profile(t.profile)
    kind, workload = WORKLOAD[t.device]
    props = [kind, f"x-hostile={lie}"]
    if t.ring == "packed":
        props.append("packed=on")
    if prof.restricted_memory:
        props.append("iommu_platform=on")  # only then does such a guest share its buffers
    cfg = RunConfig(
        ",".join(props),
        workload,
        transport=t.transport,
        ram_size=RAM,
        seed=1,
        timeout=RUN_SECONDS,
        guest=guest_policy(prof),
    )
    return await run_embedded(cfg)


#: how the guest reports a driver that ignores DEVICE_NEEDS_RESET (guest/virtio.py)
NEEDS_RESET_HANG = "this driver generation ignores it"
IGNORED_NEEDS_RESET = "hang (NEEDS_RESET ignored, as that Linux)"
NEEDS_RESET_LIES = ("needs-reset", "needs-reset-storm")
SILENT_STOP = "hang (the device stopped; a legacy interface has no DEVICE_NEEDS_RESET)"


def judge(t: DriverTarget, lie: str, result: RunResult) -> tuple[Verdict, str]:
    notes = result.device_notes
    fired = any(n.startswith("hostile: lie fired") for n in notes)
    reset_after = any(n.startswith("hostile: driver reset") for n in notes)
    if result.outcome is Outcome.HANG:
        if NEEDS_RESET_HANG in result.detail and load_driver_profile(t.profile).needs_reset == "ignore":
            # What that Linux does: no blk/rng/net/console driver reads DEVICE_NEEDS_RESET,
            # so its requests wait forever; the guest reports the hang with its evidence.
            return Verdict.HANDLED, IGNORED_NEEDS_RESET
        if fired and lie in NEEDS_RESET_LIES and not result.driver_features >> F.VERSION_1 & 1:
            # No driver can see it: on a legacy interface QEMU's virtio_error() only stops
            # the device (host/virtio_device.py set_needs_reset), so every driver waits.
            return Verdict.HANDLED, SILENT_STOP
        return Verdict.HANG, result.detail
    if result.outcome is Outcome.CORRUPTION and "canary" in result.detail:
        return Verdict.ESCAPE, result.detail  # the device wrote outside the guest's buffers
    if not fired:
        return Verdict.FAILURE, f"the lie never fired ({result.outcome.value}: {result.detail})"
    if lie in TOLERABLE:
        # OK (the lie was harmless), or detected: a data check failed (CORRUPTION without
        # canary damage), the device was declared broken, or the probe gave up cleanly
        if result.outcome in (
            Outcome.OK,
            Outcome.DEVICE_ERROR,
            Outcome.CORRUPTION,
            Outcome.NOT_PROBED,
            Outcome.FAILED_CLEAN,
        ):
            return Verdict.HANDLED, result.outcome.value
        return Verdict.FAILURE, f"{result.outcome.value}: {result.detail}"
    if result.outcome is not Outcome.DEVICE_ERROR:
        return (
            Verdict.FAILURE,
            f"driver did not mark the device broken: {result.outcome.value} {result.detail}",
        )
    if not reset_after:
        return Verdict.FAILURE, "driver did not reset the broken device"
    return Verdict.HANDLED, "broken+reset"


def run_driver_case(t: DriverTarget, lie: str, tmp: str) -> CaseResult:
    start = time.perf_counter()
    res = CaseResult(lie, t.name, Verdict.HANDLED)
    try:
        result = trio.run(_run, t, lie)
        res.verdict, res.detail = judge(t, lie, result)
        named = res.detail in ("broken+reset", IGNORED_NEEDS_RESET, SILENT_STOP)
        res.policy = res.detail if named else result.outcome.value
    except Exception:
        res.verdict, res.detail = Verdict.CRASH, traceback.format_exc(limit=-8)
    res.seconds = time.perf_counter() - start
    return res


def driver_cases(
    targets: list[DriverTarget] | None = None, lies: list[str] | None = None
) -> list[tuple[DriverTarget, str]]:
    ts = driver_targets() if targets is None else targets
    return [(t, lie) for t in ts for lie in lies_for(t) if lies is None or lie in lies]


__all__ = ["LIES", "DriverTarget", "driver_cases", "driver_targets", "run_driver_case"]
