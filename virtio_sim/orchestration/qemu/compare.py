"""Our device models next to QEMU's, driven by the same guest: what differs?

:func:`compare` runs one configuration twice, embedded (our devices) and under qtest
(QEMU's), and lists every difference the guest can observe: the outcome, the feature
bits offered (as the guest can read them: 32 bits through a legacy interface), the bits
the guest ended up acking, and the workload's evidence (a blk serial, a capacity, how a
read past the end failed). Each difference has a stable key, e.g.
``blk mmio-v2 offered-only-by-qemu VIRTIO_BLK_F_GEOMETRY``; docs/qemu-deviations.md
explains every key the tests find, so a new difference fails until it is either fixed in
our models or documented.

    python -m virtio_sim.orchestration.qemu.compare            # the standard set, as a table
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from virtio_sim import layouts
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.qdev import model_name, parse_device_option
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.qemu.machines import machine_args, qemu_devices
from virtio_sim.orchestration.qemu.qtest import spawn_qtest
from virtio_sim.orchestration.qemu.run import run_qemu
from virtio_sim.orchestration.qemu.tools import QEMU_X86, require_qemu
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.spec import DEVICE_TYPES, FEATURES

LEGACY_TRANSPORTS = ("mmio-v1", "pci-legacy")
LEGACY_FEATURE_MASK = 0xFFFFFFFF  # a legacy interface has one 32-bit feature word
#: workload evidence compared as is (other fields are run-specific: byte counts, hashes)
EVIDENCE_KEYS = ("serial", "capacity", "beyond_capacity")
ALL_TRANSPORTS = ("mmio-v1", "mmio-v2", "pci-modern", "pci-transitional", "pci-legacy")
STANDARD = [
    (device, workload, transport)
    for device, workload in (
        ("virtio-rng-device", "rng"),
        ("virtio-blk-device", "blk-rw"),
        ("virtio-rng-device,iommu_platform=on", "rng"),  # a guest that does not ack bit 33
    )
    for transport in ALL_TRANSPORTS
]


@dataclass
class Comparison:
    device: str
    workload: str
    transport: str
    ours: RunResult
    qemu: RunResult
    differences: list[str] = field(default_factory=list)


def visible_offer(result: RunResult, transport: str, ours: bool) -> int:
    """The offered bits the guest can read: one 32-bit word through a legacy interface.
    Both backends report ``device_features`` as the guest read them (RunResult), so
    ``ours`` no longer changes anything; it is kept for callers."""
    if transport in LEGACY_TRANSPORTS:
        return result.device_features & LEGACY_FEATURE_MASK
    return result.device_features


def _bits(mask: int, key: str) -> list[str]:
    return FEATURES.names(mask, key)


def diff(device_key: str, transport: str, ours: RunResult, qemu: RunResult) -> list[str]:
    """Stable keys for every observable difference between the two runs."""
    where = f"{device_key} {transport}"
    out: list[str] = []
    if ours.outcome != qemu.outcome:
        out.append(f"{where} outcome ours={ours.outcome} qemu={qemu.outcome}")
    elif ours.outcome is Outcome.HOST_REFUSED and ours.detail != qemu.detail:
        out.append(f"{where} refusal ours={ours.detail!r} qemu={qemu.detail!r}")
    o, q = visible_offer(ours, transport, True), visible_offer(qemu, transport, False)
    out += [f"{where} offered-only-by-qemu {n}" for n in _bits(q & ~o, device_key)]
    out += [f"{where} offered-only-by-ours {n}" for n in _bits(o & ~q, device_key)]
    oa, qa = ours.driver_features, qemu.driver_features
    out += [f"{where} acked-only-with-qemu {n}" for n in _bits(qa & ~oa, device_key)]
    out += [f"{where} acked-only-with-ours {n}" for n in _bits(oa & ~qa, device_key)]
    for k in EVIDENCE_KEYS:
        a, b = ours.workload.get(k), qemu.workload.get(k)
        if a != b:
            out.append(f"{where} evidence {k} ours={a!r} qemu={b!r}")
    return out


# --------------------------------------------------------------------------- registers

MMIO_PROBE_REGISTERS = ("MagicValue", "Version", "DeviceID", "VendorID", "QueueSizeMax", "ConfigGeneration")
#: each device type's config layout, field by field (rng has none: one word past the end)
CONFIG_LAYOUTS: dict[str, Any] = {"blk": layouts.VirtioBlkConfig}
MMIO_BASE_OF_FIRST_DEVICE = 0xFEB00E00  # both microvms put the first -device in slot 7


def _config_fields(key: str) -> list[tuple[str, int, int]]:
    decl = CONFIG_LAYOUTS.get(key)
    if decl is None:
        return [("past-the-end", 0, 4)]
    offs = layouts.field_offsets(decl)
    return [
        (sc.name, offs[sc.name], sc.sizeof())
        for sc in decl.subcons
        if sc.name and not sc.name.startswith("unused") and sc.sizeof() in (1, 2, 4)
    ]


def probe_mmio(
    read: Callable[[int, int], int], write: Callable[[int, int, int], None], key: str
) -> dict[str, int]:
    """Register and config values of the device in the first microvm slot, after reset."""
    base = MMIO_BASE_OF_FIRST_DEVICE
    write(base + layouts.MMIO_OFFSETS["Status"], 4, 0)
    write(base + layouts.MMIO_OFFSETS["QueueSel"], 4, 0)
    out = {name: read(base + layouts.MMIO_OFFSETS[name], 4) for name in MMIO_PROBE_REGISTERS}
    for name, off, size in _config_fields(key):
        out[f"config.{name}"] = read(base + layouts.MMIO_CONFIG_OFFSET + off, size)
    return out


def registers(device: str, transport: str) -> tuple[dict[str, int], dict[str, int]]:
    """(ours, QEMU's) register probes of ``device`` on an mmio ``transport``, same disk."""
    key = DEVICE_TYPES_BY_NAME[model_name(parse_device_option(device).driver)]
    with tempfile.TemporaryDirectory(prefix="virtio-sim-probe-") as tmp:
        option = device
        if key == "blk" and "drive=" not in device:
            disk = Path(tmp) / "probe.img"
            disk.write_bytes(bytes(4 << 20))
            option = f"{device},drive={disk}"
        setup = build_host(HostConfig(devices=[option], transport=transport))
        try:
            ours = probe_mmio(setup.machine.mmio_read, setup.machine.mmio_write, key)
        finally:
            setup.close()
        devs = qemu_devices([option], transport, Path(tmp))
        q = spawn_qtest(require_qemu(QEMU_X86), "x86_64", machine_args(transport, 64 << 20) + devs.args)
        try:
            theirs = probe_mmio(q.client.read, q.client.write, key)
        finally:
            q.close()
    return ours, theirs


DEVICE_TYPES_BY_NAME = {f"virtio-{k}-device": k for k in DEVICE_TYPES}


def register_diff(device: str, transport: str) -> list[str]:
    key = DEVICE_TYPES_BY_NAME[model_name(parse_device_option(device).driver)]
    ours, theirs = registers(device, transport)
    return [
        f"{key} {transport} register {name} ours={ours[name]:#x} qemu={theirs[name]:#x}"
        for name in ours
        if ours[name] != theirs[name]
    ]


async def compare(cfg: RunConfig, **qemu_kw: Any) -> Comparison:
    ours = await run_embedded(cfg)
    qemu = await run_qemu(cfg, **qemu_kw)
    key = WORKLOADS[cfg.workload][0]
    return Comparison(
        cfg.device, cfg.workload, cfg.transport, ours, qemu, diff(key, cfg.transport, ours, qemu)
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    timeout = float(args[0]) if args else 10.0
    for device, workload, transport in STANDARD:
        cfg = RunConfig(device=device, workload=workload, transport=transport, timeout=timeout)
        c = trio.run(compare, cfg)
        print(f"{device:<18} {transport:<17} ours={c.ours.outcome} qemu={c.qemu.outcome}")
        for d in c.differences:
            print(f"    {d}")
        if transport.startswith("mmio"):
            for d in register_diff(device, transport):
                print(f"    {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
