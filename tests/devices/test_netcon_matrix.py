"""net-loopback and console-echo across driver and device generations: whatever a
generation pair does to blk (refuse, fail cleanly, break on encrypted rings, lose
isolation), it does the same to net and console, because those outcomes come from
negotiation and DMA, not from the device type."""

from __future__ import annotations

from virtio_sim.orchestration.embedded import TRANSPORTS
from virtio_sim.orchestration.matrix.executors import LocalPool
from virtio_sim.orchestration.matrix.run import execute, plan
from virtio_sim.orchestration.matrix.spec import parse_matrix

WORKLOADS = ["blk-rw", "net-loopback", "console-echo"]


def test_net_and_console_outcomes_match_blk_across_generations() -> None:
    spec = parse_matrix(
        {
            "timeout": 20.0,
            "axes": {
                "driver": ["linux-3.18-ppc64be", "linux-4.8", "linux-5.4-sev", "linux-6.1"],
                "device": ["qemu-2.3", "qemu-7.2", "bit-without-translate"],
                "transport": list(TRANSPORTS),
                "workload": WORKLOADS,
                "iommu_platform": ["off", "on"],
                "iommu": ["none", "virtio-iommu"],
            },
        },
        "netcon-generations",
    )
    results = execute(spec, plan(spec), LocalPool(2))
    by_rest: dict[str, dict[str, str]] = {}
    for r in results:
        rest = r["id"]
        for w in WORKLOADS:
            rest = rest.replace(f"/{w}", "/*")
        by_rest.setdefault(rest, {})[r["workload"]] = r["outcome"]
    differ = {k: v for k, v in by_rest.items() if len(set(v.values())) > 1}
    # blk alone has a DISCARD step: the Linux 5.4 driver's range-array overflow on a
    # DISCARD device (tests/devices/test_blk_discard.py) is the one blk-only outcome
    discard = {k for k, v in differ.items() if k.startswith("linux-5.4-sev/") and v["blk-rw"] == "CORRUPTION"}
    assert {k: v for k, v in differ.items() if k not in discard} == {}
    assert all(set(differ[k].values()) == {"CORRUPTION", "OK"} for k in discard)
    seen = {r["outcome"] for r in results}
    # a device that gives up sets NEEDS_RESET, which Linux's drivers ignore: HANG (docs/dma.md)
    assert {"OK", "OK_NO_ISOLATION", "HANG", "HOST_REFUSED"} <= seen
    assert all(len(v) == len(WORKLOADS) for v in by_rest.values())
