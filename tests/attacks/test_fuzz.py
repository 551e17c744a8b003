"""Fuzzing with a fixed seed and a small budget in CI: hypothesis state machines over
rings (split and packed, every transport, IOMMU) and registers, and random frames into
the host's serve(). Longer runs: ``virtio-sim fuzz --minutes N``."""

from __future__ import annotations

from hypothesis import HealthCheck, given, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from virtio_sim.orchestration.attacks.fuzz import (
    RegisterMachine,
    RingMachine,
    frames_strategy,
    fuzz_for,
    fuzz_frames,
)

CI = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def test_ring_state_machine() -> None:
    run_state_machine_as_test(RingMachine, settings=CI)  # type: ignore[no-untyped-call]


def test_register_state_machine() -> None:
    run_state_machine_as_test(RegisterMachine, settings=CI)  # type: ignore[no-untyped-call]


@seed(20261202)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames_strategy)
def test_random_frames_into_serve(frames: list[tuple[int, int, bytes]]) -> None:
    fuzz_frames(frames)


def test_fuzz_for_runs_and_reports_nothing_in_a_short_run() -> None:
    assert fuzz_for(0.01, seed=7, examples=4) == []


def test_fuzz_minutes_must_be_a_positive_number(capsys) -> None:  # type: ignore[no-untyped-def]
    from virtio_sim.orchestration import cli

    for bad in ("-1", "0", "nan", "abc"):
        try:
            rc = cli.main(["fuzz", "--minutes", bad])
        except SystemExit as e:  # argparse's usage error
            rc = e.code
        assert rc == 2, bad
        assert "--minutes" in capsys.readouterr().err
