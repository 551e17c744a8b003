"""Driver conformance: our guest profiles against a checking device, and seeded broken drivers."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from tests.conformance.broken_drivers import BROKEN
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.guest.profile import guest_policy
from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.driver_runner import (
    DriverTargetError,
    known_deviations,
    parse_driver_spec,
    run_driver_check,
    run_driver_target,
)
from virtio_sim.orchestration.conformance.driver_watch import DriverWatch
from virtio_sim.orchestration.conformance.findings import FindingLog, Policy, Verdict
from virtio_sim.profiles import load_driver_profile

CATALOG = load_catalog()
DRIVER_CHECKERS = Path(__file__).resolve().parents[2] / "specs" / "conformance" / "driver-checkers.toml"


def _run(spec: str, transport: str, ring: str = "split", policy: Policy = Policy.LENIENT) -> FindingLog:
    async def go() -> FindingLog:
        return await run_driver_target(spec, transport=transport, ring=ring, policy=policy, catalog=CATALOG)

    return trio.run(go)


#: the driver profile runs every test below shares (spec, transport, ring)
PROFILE_RUNS = [
    ("linux-6.1", "mmio-v2", "split"),
    ("linux-6.1", "pci-modern", "packed"),
    ("linux-6.1", "pci-legacy", "split"),
    ("linux-4.0", "pci-transitional", "split"),
    ("linux-3.18", "mmio", "split"),
    ("linux-6.1,device=blk,event_idx=off", "mmio-v2", "split"),  # the rules without EVENT_IDX
    # virtio-net without CSUM, MRG_RXBUF and CTRL_RX, through the legacy interface
    ("linux-6.1,device=net,csum=off,mrg_rxbuf=off,ctrl_rx=off", "pci-legacy", "split"),
]


@pytest.fixture(scope="module")
def profile_logs() -> dict[tuple[str, str, str], FindingLog]:
    return {run: _run(f"driver:{run[0]}", run[1], run[2]) for run in PROFILE_RUNS}


@pytest.mark.parametrize("run", PROFILE_RUNS, ids=lambda r: "-".join(r))
def test_our_profiles_pass_every_applicable_must(
    run: tuple[str, str, str], profile_logs: dict[tuple[str, str, str], FindingLog]
) -> None:
    log = profile_logs[run]
    assert [(f.requirement, f.evidence) for f in log.unexplained_failures()] == []
    passed = {r for r, f in log.findings.items() if f.verdict is Verdict.PASS}
    # the watch really saw the driver: status order, features and chains were checked
    assert {"status.drv.never-clear-bit", "init.drv.reset-first", "features.drv.only-offered"} <= passed
    assert "split.chain.drv-max-queue-size" in passed or "packed.sg.drv-readable-first" in passed
    for f in log.findings.values():
        assert CATALOG.entries[f.requirement].actor == "driver"


def test_packed_run_marks_split_rules_not_applicable() -> None:
    log = _run("driver:linux-6.1,device=rng", "mmio-v2", "packed")
    assert log.verdict("split.drv.alignment") is Verdict.NOT_APPLICABLE
    assert log.verdict("packed.drv.alignment") is Verdict.PASS
    assert log.verdict("notify.data.content") is Verdict.NOT_APPLICABLE


def test_documented_deviation_is_reported_as_known() -> None:
    assert "features.legacy.drv-accept-any-layout" in known_deviations("linux-6.1", "pci-legacy")
    assert set(known_deviations("linux-6.1", "pci-modern")) == {"status.drv.needs-reset-no-rely"}
    log = _run("driver:linux-6.1,device=rng", "pci-legacy", policy=Policy.STRICT)
    finding = log.findings["features.legacy.drv-accept-any-layout"]
    assert finding.verdict is Verdict.FAIL and finding.known and "ANY_LAYOUT" in finding.known
    assert log.unexplained_failures() == []


def _broken(name: str, policy: Policy) -> tuple[FindingLog, list[DriverWatch]]:
    b = BROKEN[name]
    guest: GuestPolicy = replace(
        guest_policy(load_driver_profile("linux-6.1")), device_class=b.cls, **b.policy
    )
    log = FindingLog(CATALOG.level_of, policy)
    watches: list[DriverWatch] = []

    async def go() -> None:
        await run_driver_check(
            guest,
            device=b.device,
            transport=b.transport,
            ring="split",
            log=log,
            watches=watches,
            timeout=b.timeout,
            odd=b.odd,
        )

    trio.run(go)
    return log, watches


@pytest.fixture(scope="module")
def broken_logs() -> dict[str, tuple[FindingLog, list[DriverWatch]]]:
    """Every seeded broken driver, run once under the lenient policy."""
    return {name: _broken(name, Policy.LENIENT) for name in BROKEN}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_seeded_broken_driver_is_caught_by_id(
    name: str, broken_logs: dict[str, tuple[FindingLog, list[DriverWatch]]]
) -> None:
    log, _ = broken_logs[name]
    failed = {f.requirement for f in log.failures()}
    assert set(BROKEN[name].ids) <= failed, (failed, [f.evidence for f in log.failures()])


@pytest.mark.parametrize("name", ["driver-ok-before-features-ok", "descriptor-loop", "idx-before-entry"])
def test_strict_stops_at_the_first_must_failure(name: str) -> None:
    log, watches = _broken(name, Policy.STRICT)
    stopped = [w.stopped for w in watches if w.stopped is not None]
    assert len(stopped) == 1
    assert stopped[0].requirement in BROKEN[name].ids
    assert [f.requirement for f in log.failures()] == [stopped[0].requirement]


def test_lenient_goes_on_after_a_failure(
    broken_logs: dict[str, tuple[FindingLog, list[DriverWatch]]],
) -> None:
    log, watches = broken_logs["driver-ok-before-features-ok"]
    assert all(w.stopped is None for w in watches)
    assert log.verdict("init.drv.set-features-ok") is Verdict.FAIL
    # the run went on: the driver's rng buffers were checked after the failure
    assert log.verdict("rng.drv.writable-only") is Verdict.PASS


def test_driver_spec_errors_are_clear() -> None:
    assert parse_driver_spec("driver:linux-6.1,device=blk").devices == ("blk",)
    for bad in (
        "host:virtio-rng",
        "driver:",
        "driver:no-such-kernel",
        "driver:linux-6.1,device=gpu",
        "driver:linux-6.1,x",
    ):
        with pytest.raises(DriverTargetError):
            parse_driver_spec(bad)


def test_driver_checkers_name_only_driver_side_ids() -> None:
    checked = [e for e in CATALOG.entries.values() if e.checker is not None and e.actor == "driver"]
    assert len(checked) >= 80
    assert all(e.not_checkable is None for e in checked)


def _check(guest: GuestPolicy, device: str, transport: str, ring: str, **kw: object) -> FindingLog:
    log = FindingLog(CATALOG.level_of, Policy.LENIENT)

    async def go() -> None:
        await run_driver_check(guest, device=device, transport=transport, ring=ring, log=log, **kw)  # type: ignore[arg-type]

    trio.run(go)
    return log


@pytest.mark.parametrize(("transport", "ring"), [("mmio-v2", "split"), ("pci-modern", "packed")])
def test_ring_features_of_our_current_driver_are_checked(transport: str, ring: str) -> None:
    """The simulator's own driver (every ring feature known) with IN_ORDER and notification
    data on: the checkers for those features run and find nothing."""
    props = ("in_order=on", "notification_data=on")
    log = _check(GuestPolicy(), "blk", transport, ring, device_props=props)
    assert [(f.requirement, f.evidence) for f in log.unexplained_failures()] == []
    assert log.verdict("notify.data.content") is Verdict.PASS
    if ring == "split":
        assert log.verdict("split.desc.drv-in-order-ring-order") is Verdict.PASS
        assert log.verdict("mmio.notify.value") is Verdict.PASS
    else:
        assert log.verdict("packed.notify.drv-next-off-wrap") is Verdict.PASS
        assert log.verdict("packed.desc.zero-init") is Verdict.PASS
        assert log.verdict("pci.notify.drv-32bit") is Verdict.PASS


def test_read_past_capacity_is_a_driver_violation() -> None:
    """blk-rw's deliberate read past the end (a device probe) is what a driver must not do;
    driver runs use blk-rw-no-probe, and the probe itself is caught by id."""
    log = _check(GuestPolicy(), "blk", "mmio-v2", "split", workload="blk-rw")
    finding = log.findings["blk.drv.within-capacity"]
    assert finding.verdict is Verdict.FAIL and "2048-sector disk" in finding.evidence[0]


def test_big_endian_legacy_driver_writes_rings_in_its_own_order() -> None:
    log = _run("driver:linux-3.18-ppc64be,device=blk", "pci-legacy")
    assert log.unexplained_failures() == []
    assert log.verdict("split.legacy.drv-native-endian") is Verdict.PASS
    assert log.verdict("blk.legacy.req-native-endian-drv") is Verdict.PASS


def test_iommu_requests_of_our_driver_are_checked() -> None:
    """blk behind a virtio-iommu: the IOMMU driver's ATTACH/MAP/UNMAP requests are framed
    and ranged as the spec asks, and its config writes touch only bypass."""
    log = _run("driver:linux-6.1,device=iommu", "pci-modern")
    assert log.unexplained_failures() == []
    for rid in (
        "iommu.req.split",
        "iommu.map.drv-end-gt-start",
        "iommu.unmap.drv-boundaries",
        "iommu.cfg.drv-bypass-0-1",
    ):
        assert log.verdict(rid) is Verdict.PASS, rid


def test_capability_walk_skips_what_a_driver_must_skip() -> None:
    """On PCI the checking device puts a reserved-type capability, a common-config one on a
    reserved BAR and an over-long notify capability ahead of the real ones; our modern
    driver skips the first two, takes the third and brings the device up."""
    log = _run("driver:linux-6.1,device=rng", "pci-modern")
    for rid in (
        "pci.cap.drv-ignore-reserved-type",
        "pci.cap.drv-ignore-reserved-bar",
        "pci.cap.drv-accept-large-cap-len",
    ):
        assert log.verdict(rid) is Verdict.PASS, rid
    assert log.unexplained_failures() == []


def test_device_traps_show_the_driver_copes(profile_logs: dict[tuple[str, str, str], FindingLog]) -> None:
    """The checking device interrupts spuriously and sets used.flags bit 0 under EVENT_IDX
    (or a misleading avail_event without it); our driver keeps kicking as the rules say."""
    log = profile_logs[PROFILE_RUNS[0]]
    assert log.verdict("split.usedsupp.drv-spurious") is Verdict.PASS
    assert log.verdict("split.availsupp.drv-ignore-flags-bit0") is Verdict.PASS
    log = profile_logs[("linux-6.1,device=blk,event_idx=off", "mmio-v2", "split")]
    assert log.verdict("split.availsupp.drv-ignore-avail-event") is Verdict.PASS
    assert log.unexplained_failures() == []


def test_every_driver_checker_id_is_decided(
    profile_logs: dict[tuple[str, str, str], FindingLog],
    broken_logs: dict[str, tuple[FindingLog, list[DriverWatch]]],
) -> None:
    """Each id driver-checkers.toml hands to a checker gets PASS, FAIL or NOT_APPLICABLE in
    some run of our profiles or of the seeded broken drivers (an id no run decides is a
    checker that cannot speak)."""
    listed = {c["id"] for c in tomllib.loads(DRIVER_CHECKERS.read_text(encoding="utf-8"))["check"]}
    logs = [*profile_logs.values(), *(log for log, _ in broken_logs.values())]
    decided = {rid for log in logs for rid, f in log.findings.items() if f.verdict is not Verdict.NOT_COVERED}
    assert sorted(listed - decided) == []
    # and each failing verdict among them came from a seeded defect, not from our profiles
    assert {f.requirement for log in profile_logs.values() for f in log.unexplained_failures()} == set()


@pytest.mark.parametrize(
    "spec,transport",
    [("driver:linux-4.0,device=iommu", "mmio-v2"), ("driver:linux-6.1-sev,device=rng", "pci-modern")],
)
def test_unknown_feature_is_not_blamed_without_a_control_run(spec: str, transport: str) -> None:
    """linux-4.0 does not know ACCESS_PLATFORM (the device behind the IOMMU needs it) and
    6.1 in an SEV guest refuses a device without it, by design: both stop short of
    DRIVER_OK whether or not an unknown bit is offered. The control run without the bit
    shows that, so the rule is NOT_COVERED with that reason, not a FAIL."""
    log = _run(spec, transport)
    finding = log.findings["features.drv.no-fail-on-unknown"]
    assert finding.verdict is Verdict.NOT_COVERED, finding
    assert "control run" in finding.evidence[-1]
