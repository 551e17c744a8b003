"""Our device models next to QEMU's, driven by the same guest: what differs?

:func:`compare` runs one configuration twice, embedded (our devices) and under qtest
(QEMU's), and lists every difference the guest can observe: the outcome, the feature
bits offered (as the guest can read them: 32 bits through a legacy interface), the bits
the guest ended up acking, and the workload's evidence (a blk serial, a capacity, how a
read past the end failed). Each difference has a stable key, e.g.
``blk mmio-v2 offered-only-by-qemu VIRTIO_BLK_F_GEOMETRY``; docs/qemu-deviations.md
explains every key the tests find, so a new difference fails until it is either fixed in
our models or documented.

    python -m virtio_sim.qemu.compare            # the standard set, as a table
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import trio

from guest.workloads import WORKLOADS
from virtio_sim.embedded import RunConfig, run_embedded
from virtio_sim.outcome import RunResult
from virtio_sim.qemu.run import run_qemu
from virtio_sim.spec import FEATURES, legacy_only_transport_features

LEGACY_TRANSPORTS = ("mmio-v1", "pci-legacy")
LEGACY_FEATURE_MASK = 0xFFFFFFFF  # a legacy interface has one 32-bit feature word
#: workload evidence compared as is (other fields are run-specific: byte counts, hashes)
EVIDENCE_KEYS = ("serial", "capacity", "beyond_capacity")
STANDARD = [
    (device, workload, transport)
    for device, workload in (("virtio-rng-device", "rng"), ("virtio-blk-device", "blk-rw"))
    for transport in ("mmio-v1", "mmio-v2", "pci-modern", "pci-transitional", "pci-legacy")
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
    """The offered bits the guest can read: one 32-bit word through a legacy interface;
    without the legacy-only bits through a modern one (our host reports its whole offer,
    QEMU's result is already the guest's view)."""
    if transport in LEGACY_TRANSPORTS:
        return result.device_features & LEGACY_FEATURE_MASK
    return result.device_features & ~(legacy_only_transport_features() if ours else 0)


def _bits(mask: int, key: str) -> list[str]:
    return FEATURES.names(mask, key)


def diff(device_key: str, transport: str, ours: RunResult, qemu: RunResult) -> list[str]:
    """Stable keys for every observable difference between the two runs."""
    where = f"{device_key} {transport}"
    out: list[str] = []
    if ours.outcome != qemu.outcome:
        out.append(f"{where} outcome ours={ours.outcome} qemu={qemu.outcome}")
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


async def compare(cfg: RunConfig, **qemu_kw: Any) -> Comparison:
    ours = await run_embedded(cfg)
    qemu = await run_qemu(cfg, **qemu_kw)
    key = WORKLOADS[cfg.workload][0]
    return Comparison(cfg.device, cfg.workload, cfg.transport, ours, qemu, diff(key, cfg.transport, ours, qemu))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    timeout = float(args[0]) if args else 10.0
    for device, workload, transport in STANDARD:
        cfg = RunConfig(device=device, workload=workload, transport=transport, timeout=timeout)
        c = trio.run(compare, cfg)
        print(f"{device:<18} {transport:<17} ours={c.ours.outcome} qemu={c.qemu.outcome}")
        for d in c.differences:
            print(f"    {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
