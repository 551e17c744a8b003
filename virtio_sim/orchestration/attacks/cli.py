"""``virtio-sim attack``: replay the hostile corpus by name.

    virtio-sim attack --list
    virtio-sim attack --target host:blk --scenario all [--json [PATH]] [--junit-xml PATH] [--html PATH]
    virtio-sim attack --target host:blk/pci-modern/packed --scenario loop-self
    virtio-sim attack --target driver:linux-6.1 --scenario used-id-out-of-range
    virtio-sim attack --target wire --scenario all
    virtio-sim fuzz --minutes 5

Exit status: 0 when every case was handled, 1 when any crashed, hung, escaped or failed,
2 for usage errors (unknown target or scenario).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import trio

from virtio_sim.exit_codes import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from virtio_sim.orchestration.attacks.corpus import host_cases, host_scenarios, rows, select
from virtio_sim.orchestration.attacks.scenario import CaseResult, Verdict
from virtio_sim.orchestration.campaign.outputs import Outputs, add_report_arguments
from virtio_sim.orchestration.campaign.target import parse_target_text
from virtio_sim.outpaths import OutputPathError

#: the kinds of ``--target`` (the campaign's KIND:NAME text, campaign/target.py) and what
#: names each; ``wire`` stands alone
TARGET_KINDS = {"host": "DEVICE[/TRANSPORT/RING[+drop][+iommu][+lenient]]", "driver": "PROFILE"}


def add_attack_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list scenarios, lies, wire cases and targets")
    p.add_argument(
        "--target",
        default="host:rng",
        help="host:DEVICE[/TRANSPORT/RING[+drop][+iommu]] | driver:PROFILE | wire (default host:rng)",
    )
    p.add_argument("--scenario", default="all", help="a scenario id, a row id (A1..G61) or all")
    add_report_arguments(
        p,
        json_help="one JSON document with every case and the counts (to stdout alone if no PATH)",
        junit_help="write a JUnit XML report (a case per scenario and target; not handled = failure)",
        html_help="write an HTML page of the cases, those not handled first",
    )


def _positive_minutes(text: str) -> float:
    """argparse type for --minutes: a finite number above zero (a usage error otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of minutes") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"--minutes must be above 0, not {text}")
    return value


def add_fuzz_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=_positive_minutes, default=1.0, help="how long to fuzz (default 1)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")


def _list() -> int:
    from virtio_sim.host.devices.hostile import LIES
    from virtio_sim.orchestration.attacks.corpus_text import TEXT_CASES
    from virtio_sim.orchestration.attacks.corpus_wire import CASES
    from virtio_sim.orchestration.attacks.device_side import driver_targets
    from virtio_sim.orchestration.attacks.targets import all_targets

    table = rows()
    print("host scenarios (hostile driver):")
    for s in host_scenarios():
        print(f"  {s.id:34} {s.row:4} {s.expect.value:12} {s.title}")
    print("lies (hostile device, --target driver:PROFILE):")
    for name, title in LIES.items():
        print(f"  {name:34} {title}")
    print("wire cases (--target wire):")
    for c in CASES:
        print(f"  {c.id:34} {c.target:11} {c.title}")
    for t in TEXT_CASES:
        print(f"  {t.id:34} {'guest':11} {t.title}")
    print(f"host targets: {', '.join(t.name for t in all_targets())}")
    print(f"driver targets: {', '.join(t.name for t in driver_targets())}")
    print(f"rows (specs/attacks.toml): {len(table)}")
    return EXIT_OK


def _report(results: list[CaseResult], outputs: Outputs, target: str) -> int:
    """``--json`` alone: the JSON document on stdout; otherwise the cases are listed and
    the files asked for written (virtio_sim/orchestration/attacks/report.py)."""
    from virtio_sim.orchestration.attacks.report import counts, to_html, to_json, to_junit

    n = counts(results)
    try:
        outputs.write(
            json=lambda: to_json(results) + "\n",
            junit=lambda: to_junit(results, target),
            html=lambda: to_html(results, target),
        )
    except OutputPathError as e:
        print(f"virtio-sim attack: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if outputs.json_only:
        print(to_json(results))
    else:
        for r in results:
            print(f"{r.verdict.value:8} {r.scenario:34} {r.target:42} policy={r.policy}")
            if r.verdict is not Verdict.HANDLED:
                print("         " + r.detail.strip().replace("\n", "\n         ")[:2000])
        print(" ".join(f"{k}={v}" for k, v in n.items()))
    return EXIT_OK if n["cases"] and n["cases"] == n["handled"] else EXIT_FAIL


def cmd_attack(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    target: str = args.target
    outputs = Outputs.of(args)
    try:
        outputs.check()  # before the cases: a bad path must not cost the results
        kind = parse_target_text(target, TARGET_KINDS, bare=("wire",)).kind
        if kind == "driver":
            from virtio_sim.orchestration.attacks.device_side import (
                driver_cases,
                parse_driver_target,
                run_driver_case,
            )

            lies = None if args.scenario == "all" else [args.scenario]
            cases = driver_cases(parse_driver_target(target), lies)
            if not cases:
                raise ValueError(f"no lie {args.scenario!r} applies to {target}")
            with tempfile.TemporaryDirectory(prefix="virtio-sim-reverse-") as tmp:
                return _report([run_driver_case(t, lie, tmp) for t, lie in cases], outputs, target)
        if kind == "wire":
            from virtio_sim.orchestration.attacks.corpus_text import TEXT_CASES, run_text_corpus
            from virtio_sim.orchestration.attacks.corpus_wire import CASES, run_wire_corpus

            chosen = [c for c in CASES if args.scenario in ("all", c.id)]
            texts = [t for t in TEXT_CASES if args.scenario in ("all", t.id)]
            if not chosen and not texts:
                raise ValueError(f"unknown wire case {args.scenario!r}")
            with tempfile.TemporaryDirectory(prefix="virtio-sim-wire-") as tmp:
                results = trio.run(run_wire_corpus, tmp, chosen) if chosen else []
                results += trio.run(run_text_corpus, tmp, texts) if texts else []
                return _report(results, outputs, target)
        from virtio_sim.orchestration.attacks.runner import run_sync
        from virtio_sim.orchestration.attacks.targets import parse_target

        chosen_cases = host_cases(select(args.scenario, host_scenarios()), parse_target(target))
        if not chosen_cases:
            raise ValueError(f"scenario {args.scenario!r} does not apply to {target}")
    except (ValueError, OutputPathError) as e:
        print(f"virtio-sim attack: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="virtio-sim-attack-") as tmp:
        return _report(run_sync(chosen_cases, tmp).results, outputs, target)


def cmd_fuzz(args: argparse.Namespace) -> int:
    from virtio_sim.orchestration.attacks.fuzz import fuzz_for

    found = fuzz_for(args.minutes * 60, seed=args.seed)
    for line in found:
        print(line)
    print(f"fuzz: {len(found)} failure(s) in {args.minutes:g} minute(s)")
    return EXIT_OK if not found else EXIT_FAIL
