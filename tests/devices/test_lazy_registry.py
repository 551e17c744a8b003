"""The registries a run reads are lazy (issue 24, start-up): workload names, driver and
device-model tables come from the device descriptors, and a kind's halves are imported
when that kind is used. These check the lazy tables say exactly what the halves say."""

from __future__ import annotations

import dataclasses

import pytest

from virtio_sim.devices import KINDS
from virtio_sim.guest import kinds as guest_kinds
from virtio_sim.guest.kinds import guest_half
from virtio_sim.guest.platform import DRIVERS
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.kinds import host_half
from virtio_sim.host.qdev import DEVICE_TYPES


def test_each_descriptor_names_its_guest_halfs_workloads_in_order() -> None:
    for key, kind in KINDS.items():
        assert tuple(guest_half(key).workloads) == kind.workloads, key


def test_the_workload_table_is_what_the_halves_hold() -> None:
    eager = {name: (key, fn) for key in KINDS for name, fn in guest_half(key).workloads.items()}
    assert list(WORKLOADS) == list(eager)  # same names, same order (the CLI help lists them)
    assert dict(WORKLOADS.items()) == eager
    assert len(WORKLOADS) == len(eager) and "no-such-workload" not in WORKLOADS
    with pytest.raises(KeyError):
        WORKLOADS["no-such-workload"]


def test_the_driver_and_model_tables_are_what_the_halves_hold() -> None:
    assert dict(DRIVERS.items()) == {key: guest_half(key).driver for key in KINDS}
    assert DRIVERS.get("no-such-kind") is None
    for kind in KINDS.values():
        if kind.qdev_model:
            assert DEVICE_TYPES[kind.device_name] == (
                host_half(kind.key).factory,
                tuple(host_half(kind.key).props),
            )
    assert DEVICE_TYPES.get("virtio-nothing-device") is None


def test_a_half_whose_workloads_differ_from_its_descriptor_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A workload added to a half but not to its descriptor would be invisible to the
    CLI and the matrix: loading that half fails instead."""
    wrong = dataclasses.replace(KINDS["rng"], workloads=("rng",))
    monkeypatch.setitem(KINDS, "rng", wrong)
    guest_half.cache_clear()
    try:
        with pytest.raises(ValueError, match="workloads"):
            guest_half("rng")
    finally:
        guest_half.cache_clear()


def test_two_kinds_claiming_one_workload_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    clash = dataclasses.replace(KINDS["blk"], workloads=("rng",))
    monkeypatch.setitem(KINDS, "blk", clash)
    with pytest.raises(ValueError, match="'rng' of blk is also one of rng"):
        guest_kinds.workloads()
