"""Attack reports: the JSON document, JUnit cases and the HTML page of a corpus run.

The JSON document is the one ``virtio-sim attack --json`` has always printed (``counts``
and ``cases``, each case's CaseResult.as_json()). JUnit and HTML are the campaign's
writers (virtio_sim/orchestration/campaign/junit.py, html.py): a case handled as required passes, any
other verdict (crash, hang, escape, failure) is a failure with the detail as evidence.
"""

from __future__ import annotations

import json
from typing import Any

from virtio_sim.orchestration.attacks.scenario import CaseResult, Verdict
from virtio_sim.orchestration.campaign import html, junit
from virtio_sim.orchestration.campaign.verdict import CaseVerdict, Status


def counts(results: list[CaseResult]) -> dict[str, Any]:
    """Cases per verdict, and ``cases`` in all."""
    out: dict[str, Any] = {v.value: sum(r.verdict is v for r in results) for v in Verdict}
    out["cases"] = len(results)
    return out


def to_json(results: list[CaseResult]) -> str:
    return json.dumps({"counts": counts(results), "cases": [r.as_json() for r in results]}, indent=1)


def junit_cases(results: list[CaseResult]) -> list[CaseVerdict]:
    out = []
    for r in results:
        case = CaseVerdict(f"attack.{r.target}", r.scenario, Status.PASSED, seconds=r.seconds)
        case.properties = {"verdict": r.verdict.value, "policy": str(r.policy)}
        if r.verdict is not Verdict.HANDLED:
            case.status, case.message, case.text = Status.FAILED, f"{r.verdict.value}", r.detail
        out.append(case)
    return out


def suite_name(target: str) -> str:
    """``virtio-sim.attack.<target as given>`` (host:blk, driver:linux-6.1, wire)."""
    return f"virtio-sim.attack.{target}"


def to_junit(results: list[CaseResult], target: str) -> str:
    return junit.to_junit(suite_name(target), junit_cases(results))


def to_html(results: list[CaseResult], target: str) -> str:
    """The verdict, the counts, then every case (those not handled first)."""
    n = counts(results)
    bad = n["cases"] - n["handled"]
    verdict = f"{n['cases']} cases, {bad} not handled" + ("" if bad else ": every case handled")
    ordered = sorted(results, key=lambda r: r.verdict is Verdict.HANDLED)
    body = [
        html.banner(n["cases"] > 0 and not bad, html.esc(verdict)),
        *html.meta(n, heading="Counts"),
        "<h2>Cases</h2>",
        *html.table(
            ("verdict", "scenario", "target", "policy", "seconds", "detail"),
            [
                (r.verdict.value, r.scenario, r.target, r.policy or "", f"{r.seconds:.3f}", r.detail)
                for r in ordered
            ],
            id="cases",
            row_attrs=[f"data-verdict='{html.attr(r.verdict.value)}'" for r in ordered],
        ),
    ]
    return html.page(f"virtio-sim attack: {target}", body)
