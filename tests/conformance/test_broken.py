"""Seeded defects: every deliberately broken device is caught with the right requirement
id; strict stops at the first MUST failure, lenient records it and goes on."""

from __future__ import annotations

import pytest
import trio

from tests.conformance.broken_devices import DEFECTS, Defect, wrong_used_len
from virtio_sim.orchestration.conformance.catalog import Catalog, load_catalog
from virtio_sim.orchestration.conformance.device_runner import DeviceLog, run_device
from virtio_sim.orchestration.conformance.dut import open_host
from virtio_sim.orchestration.conformance.findings import Policy, Verdict


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _run(defect: Defect, catalog: Catalog, policy: Policy = Policy.LENIENT) -> DeviceLog:
    dut = open_host(defect.device, defect.transport, patch=defect.patch)
    try:
        return trio.run(
            lambda: run_device(dut, ring=defect.ring, policy=policy, catalog=catalog, thorough=False)
        )
    finally:
        dut.close()


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.name)
def test_seeded_defect_is_caught_by_id(defect: Defect, catalog: Catalog) -> None:
    log = _run(defect, catalog)
    assert log.verdict(defect.requirement) is Verdict.FAIL, (defect.requirement, log.notes)
    assert log.findings[defect.requirement].evidence, "a FAIL carries evidence"


def test_unbroken_devices_pass_the_same_requirements(catalog: Catalog) -> None:
    """The ids the defects trip are PASS on the same devices unpatched (no false alarm)."""
    for d in DEFECTS:
        clean = Defect(d.name, d.device, d.transport, d.requirement, lambda setup: None, d.ring)
        log = _run(clean, catalog)
        assert log.verdict(d.requirement) is Verdict.PASS, (d.name, log.findings.get(d.requirement))


def test_strict_stops_at_first_must_failure_lenient_goes_on(catalog: Catalog) -> None:
    defect = next(d for d in DEFECTS if d.patch is wrong_used_len)
    strict = _run(defect, catalog, Policy.STRICT)
    lenient = _run(defect, catalog, Policy.LENIENT)
    assert strict.stopped is not None and strict.stopped.requirement == defect.requirement
    assert strict.failures() == [strict.stopped]
    # lenient went on to the checkers after the one that failed
    assert lenient.stopped is None
    assert len(lenient.checkers_run) > len(strict.checkers_run)
    later = "split.desc.dev-no-write-table"  # decided by a checker that runs after the stop
    assert lenient.verdict(later) is Verdict.PASS
    assert strict.verdict(later) is Verdict.NOT_COVERED
