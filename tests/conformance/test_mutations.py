"""The conformance suite catches seeded spec violations in our real device models and
guest driver (tests/conformance/mutations.py): at least 90% on the right requirement id,
every mutation killed, every survivor explained, and the run never crashes."""

from __future__ import annotations

import pytest

from tests.conformance.mutations import MUTATIONS, SURVIVORS, Outcome, run_all

#: the four mutations the previous suite let through (issue 22)
ONCE_SURVIVED = {
    "features-after-features-ok",
    "driver-ok-without-features-ok",
    "rng-used-len-too-large",
    "guest-avail-idx-before-entry",
}


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    return run_all()


def test_mutation_list_is_realistic_and_broad() -> None:
    names = {m.name for m in MUTATIONS}
    assert names >= ONCE_SURVIVED
    assert len(MUTATIONS) >= 24
    assert sum(m.target.startswith("driver:") for m in MUTATIONS) >= 5  # the guest driver too
    assert any("x-memory-path=lease" in m.target for m in MUTATIONS)  # the lease fast path too


def test_kill_rate_on_the_right_id(outcomes: list[Outcome]) -> None:
    crashed = [(o.mutation.name, o.crashed) for o in outcomes if o.crashed]
    assert not crashed, crashed
    right = [o for o in outcomes if o.right_id]
    rate = len(right) / len(outcomes)
    table = [(o.mutation.name, o.mutation.expect, o.failed[:5]) for o in outcomes if not o.right_id]
    assert rate >= 0.90, (rate, table)
    assert all(o.killed for o in outcomes), [o.mutation.name for o in outcomes if not o.killed]


def test_every_survivor_is_explained(outcomes: list[Outcome]) -> None:
    missed = {o.mutation.name for o in outcomes if not o.right_id}
    assert missed <= set(SURVIVORS), missed - set(SURVIVORS)
    assert set(SURVIVORS) <= missed, "an explained survivor is caught now: drop its explanation"


def test_the_four_old_survivors_are_caught_on_their_id(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        if o.mutation.name in ONCE_SURVIVED:
            assert o.right_id, (o.mutation.name, o.failed)
