"""Device conformance against our host devices: every transport, both ring formats.

Every applicable MUST/MUST NOT passes (apart from the documented legacy behaviour of the
net and console models, see docs/conformance.md), every id the catalogue gives a device
checker is decided somewhere in the matrix, and the checkers' verdicts are real: the
seeded-defect tests in test_broken.py show each one failing.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from virtio_sim.orchestration.conformance.catalog import Catalog, load_catalog
from virtio_sim.orchestration.conformance.device_checks import load_all
from virtio_sim.orchestration.conformance.device_runner import (
    DeviceLog,
    known_deviations,
    run_device,
    run_device_target,
)
from virtio_sim.orchestration.conformance.dut import open_host
from virtio_sim.orchestration.conformance.findings import MANDATORY_LEVELS, Policy, Verdict
from virtio_sim.orchestration.conformance.targets import TargetError, device_for_transport

DEVICES = ("virtio-rng", "virtio-blk", "virtio-net", "virtio-serial", "virtio-iommu")
TRANSPORTS = ("mmio-v2", "mmio-v1", "pci-modern", "pci-transitional", "pci-legacy")
LEGACY = ("mmio-v1", "pci-legacy")
# The IOMMU's endpoint needs ACCESS_PLATFORM, which no legacy/transitional PCI device has.
IOMMU_TRANSPORTS = ("mmio-v2", "mmio-v1", "pci-modern")
#: documented deviations (docs/conformance.md): through the legacy interface the net and
#: console models serve a queue kicked before DRIVER_OK only once DRIVER_OK is set
KNOWN = {
    ("virtio-net", "init.legacy.dev-use-before-driver-ok"),
    ("virtio-serial", "init.legacy.dev-use-before-driver-ok"),
}


#: extra device properties, run on mmio-v2 split: features our defaults do not negotiate
VARIANTS = (
    ("virtio-blk", "readonly=on"),
    ("virtio-rng", "in_order=on"),
    ("virtio-rng", "event_idx=off"),
    ("virtio-net", "mrg_rxbuf=off,guest_csum=off"),  # one buffer per frame, rx flags 0
    ("virtio-net", "mq=on"),
)
#: ids only QEMU's devices decide (MTU/SPEED_DUPLEX: QEMU's virtio-net with host_mtu=, speed=);
#: see tests/conformance/test_qemu.py
QEMU_ONLY = {
    "net.cfg.dev-mtu-range",
    "net.cfg.dev-mtu-stable",
    "net.cfg.dev-speed",
    "net.cfg.dev-duplex",
}


#: a big-endian guest on the legacy interfaces (rings, headers and config in its order)
BIG_ENDIAN = (
    ("virtio-blk,x-guest-order=big", "mmio-v1", "split"),
    ("virtio-blk,x-guest-order=big", "pci-legacy", "split"),
    ("virtio-net,x-guest-order=big", "mmio-v1", "split"),
    ("virtio-net,x-guest-order=big", "pci-legacy", "split"),
    ("virtio-serial,x-guest-order=big", "mmio-v1", "split"),
    ("virtio-serial,x-guest-order=big", "pci-legacy", "split"),
)


#: the legacy interface of a transitional PCI function: where the "transitional device"
#: rules apply (on legacy-only and modern-only devices they are NOT_APPLICABLE)
TRANSITIONAL_LEGACY = tuple(
    (f"{d},x-interface=legacy", "pci-transitional", "split") for d in DEVICES if d != "virtio-iommu"
)


def combos() -> list[tuple[str, str, str]]:
    out = [(f"{d},{props}", "mmio-v2", "split") for d, props in VARIANTS] + list(BIG_ENDIAN)
    out += list(TRANSITIONAL_LEGACY)
    for d in DEVICES:
        for t in IOMMU_TRANSPORTS if d == "virtio-iommu" else TRANSPORTS:
            for r in ("split", "packed"):
                if r == "packed" and (t in LEGACY or d == "virtio-iommu"):
                    continue
                out.append((d, t, r))
    return out


def _run(device: str, transport: str, ring: str, catalog: Catalog) -> DeviceLog:
    name, _, props = device.partition(",")
    big = "x-guest-order=big" in props
    legacy = "x-interface=legacy" in props
    props = ",".join(
        p for p in props.split(",") if p and p not in ("x-guest-order=big", "x-interface=legacy")
    )
    option = device_for_transport(name, transport) + (f",{props}" if props else "")
    option += ",packed=on" if ring == "packed" else ""
    dut = open_host(option, transport, guest_order="big" if big else "little")
    dut.interface = "legacy" if legacy else "modern"
    known = known_deviations(dut.key, transport)
    try:
        return trio.run(
            lambda: run_device(
                dut, ring=ring, policy=Policy.LENIENT, catalog=catalog, thorough=False, known=known
            )
        )
    finally:
        dut.close()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def matrix(catalog: Catalog) -> dict[tuple[str, str, str], DeviceLog]:
    return {c: _run(*c, catalog) for c in combos()}


@pytest.mark.parametrize("combo", combos(), ids=lambda c: "-".join(c))
def test_host_device_passes_every_applicable_must(
    combo: tuple[str, str, str], matrix: dict[tuple[str, str, str], DeviceLog], catalog: Catalog
) -> None:
    log = matrix[combo]
    failures = [
        (f.requirement, f.evidence)
        for f in log.failures()
        if catalog.level_of(f.requirement) in MANDATORY_LEVELS and f.known is None
    ]
    assert not failures, failures
    passed = [f for f in log.findings.values() if f.verdict is Verdict.PASS]
    assert len(passed) >= 25, f"only {len(passed)} requirements decided: {log.notes}"
    assert not [n for n in log.notes if "stopped" in n], log.notes


def test_known_legacy_deviations_are_real(matrix: dict[tuple[str, str, str], DeviceLog]) -> None:
    """The documented deviation shows up exactly where documented (so the list stays true):
    through the legacy interface of a transitional function; the rule is about transitional
    devices, so a legacy-only (mmio v1, legacy PCI) or modern one is NOT_APPLICABLE."""
    for device, rid in KNOWN:
        on = matrix[(f"{device},x-interface=legacy", "pci-transitional", "split")]
        assert on.verdict(rid) is Verdict.FAIL
        assert on.findings[rid].known, "reported as KNOWN"
        for transport in ("mmio-v1", "pci-legacy", "mmio-v2"):
            assert matrix[(device, transport, "split")].verdict(rid) is Verdict.NOT_APPLICABLE, transport
    # a transitional rule on a legacy-only device: not applicable, with that reason
    legacy_only = matrix[("virtio-rng", "pci-legacy", "split")].findings["pci.legacy.dev-revision-zero"]
    assert legacy_only.verdict is Verdict.NOT_APPLICABLE and "legacy-only" in legacy_only.evidence[0]
    on = matrix[("virtio-rng,x-interface=legacy", "pci-transitional", "split")]
    assert on.verdict("init.legacy.dev-use-before-driver-ok") is Verdict.PASS


def test_every_device_checker_id_is_decided(
    matrix: dict[tuple[str, str, str], DeviceLog], catalog: Catalog
) -> None:
    """Each id the catalogue hands to a device checker gets PASS or FAIL in some run, and
    the checker it names exists and claims it."""
    checkers = load_all()
    decided = {
        rid
        for log in matrix.values()
        for rid, f in log.findings.items()
        if f.verdict in (Verdict.PASS, Verdict.FAIL)
    }
    missing = []
    for e in catalog.entries.values():
        if e.actor != "device" or e.checker is None:
            continue
        assert e.checker in checkers, (e.id, e.checker)
        assert e.id in checkers[e.checker].ids, (e.id, e.checker)
        if e.id not in decided and e.id not in QEMU_ONLY:
            missing.append(e.id)
    # event-idx wrap is decided by the thorough run below; everything else here
    assert not missing, missing


def test_event_idx_wrap_rng(catalog: Catalog) -> None:
    """The slow check: 65536 completions drive used idx through its 16-bit wrap."""
    log = _run_thorough(catalog)
    assert log.verdict("split.usedsupp.dev-event-idx-notify") is Verdict.PASS
    assert any("0xffff -> 0" in n for n in log.notes), log.notes


def _run_thorough(catalog: Catalog) -> DeviceLog:
    dut = open_host("virtio-rng-device", "mmio-v2")
    try:
        return trio.run(
            lambda: run_device(
                dut, ring="split", policy=Policy.LENIENT, catalog=catalog, only=("split_event_idx_wrap",)
            )
        )
    finally:
        dut.close()


@pytest.mark.parametrize(
    "spec,transport,ring",
    [
        ("host:virtio-nope", "mmio-v2", "split"),
        ("host:virtio-rng-pci", "mmio-v2", "split"),
        ("host:virtio-rng", "mmio-v1", "packed"),
        ("host:virtio-rng", "pci-fancy", "split"),
        ("nothing", "mmio-v2", "split"),
        ("host:virtio-blk,drive=/nonexistent/disk.img", "mmio-v2", "split"),
        ("host:virtio-iommu", "mmio-v2", "packed"),  # refused, not silently run split
        ("host:virtio-rng,x-memory-path=fast", "mmio-v2", "split"),
    ],
)
def test_bad_targets_are_usage_errors(spec: str, transport: str, ring: str, catalog: Catalog) -> None:
    async def go() -> Any:
        return await run_device_target(
            spec, transport=transport, ring=ring, policy=Policy.LENIENT, catalog=catalog
        )

    with pytest.raises(TargetError):
        trio.run(go)
