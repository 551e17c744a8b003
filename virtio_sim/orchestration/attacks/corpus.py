"""The whole corpus by name, and the rows of specs/attacks.toml it cites."""

from __future__ import annotations

import tomllib
from typing import Any

from virtio_sim.orchestration.attacks import corpus_regs, corpus_ring
from virtio_sim.orchestration.attacks.runner import applies
from virtio_sim.orchestration.attacks.scenario import Scenario
from virtio_sim.orchestration.attacks.targets import Target, all_targets
from virtio_sim.spec import SPECS_DIR

SPEC = SPECS_DIR / "attacks.toml"


def host_scenarios() -> list[Scenario]:
    """Hostile-driver scenarios aimed at host devices (rings and registers)."""
    return [*corpus_ring.SCENARIOS, *corpus_regs.SCENARIOS]


def rows() -> dict[str, dict[str, Any]]:
    with SPEC.open("rb") as f:
        return {r["id"]: r for r in tomllib.load(f)["row"]}


def select(name: str, scenarios: list[Scenario]) -> list[Scenario]:
    if name == "all":
        return scenarios
    got = [s for s in scenarios if s.id == name or s.row == name]
    if not got:
        raise ValueError(f"unknown scenario {name!r} (see virtio-sim attack --list)")
    return got


def host_cases(
    scenarios: list[Scenario], targets: list[Target] | None = None
) -> list[tuple[Scenario, Target]]:
    ts = all_targets() if targets is None else targets
    return [(s, t) for s in scenarios for t in ts if applies(s, t)]
