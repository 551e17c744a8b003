"""``virtio-sim conformance``: run a conformance target and report per requirement.

Exit codes: 0 when no MUST/MUST NOT failed and no checker hit an ERROR, 1 when one did,
2 for usage errors (a bad target or an unknown device, a transport/ring that cannot be
combined, a broken catalogue). Whatever a broken device or driver does, the run ends in
a report: an exception that escapes the runners is a run-level ERROR, never a traceback.
The driver side lives in :mod:`virtio_sim.orchestration.conformance.driver_runner`
(imported only for ``driver:`` targets).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from rich.console import Console

from virtio_sim.console import output_console
from virtio_sim.exit_codes import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from virtio_sim.orchestration.campaign.outputs import Outputs, add_report_arguments

if TYPE_CHECKING:
    from virtio_sim.orchestration.conformance.report import Report

TRANSPORT_CHOICES = ("mmio-v2", "mmio-v1", "pci-modern", "pci-transitional", "pci-legacy")


def add_conformance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        help="host:DEVICE[,props] | qemu:DEVICE[,props] | driver:PROFILE[,props]",
    )
    p.add_argument(
        "--suite",
        choices=("default",),
        help="run the default runs (virtio_sim/orchestration/conformance/suite.py) and report their coverage",
    )
    p.add_argument("--transport", default="mmio-v2", help=f"{'|'.join(TRANSPORT_CHOICES)} (default mmio-v2)")
    p.add_argument("--ring", default="split", help="split|packed (default split)")
    p.add_argument("--policy", default="lenient", choices=("strict", "lenient"))
    add_report_arguments(
        p,
        json_help="write JSON (to stdout alone if no PATH)",
        junit_help="write a JUnit XML report here",
        html_help="write an HTML report here",
    )
    p.add_argument("--quick", action="store_true", help="skip the slow checks (event-idx wrap)")


def check_target_with_coverage(
    target_text: str, *, transport: str, ring: str, policy: str, thorough: bool
) -> tuple[Report, Any]:
    """Run one conformance target: its Report and the coverage it decides (the CLI and
    ``virtio_sim.check_conformance()``). Bad targets and combinations raise CatalogError,
    TargetError or DutError; a target that breaks during the run gives a report with the
    run error, not a traceback."""
    from virtio_sim.orchestration.conformance.catalog import load_catalog
    from virtio_sim.orchestration.conformance.dut import device_key
    from virtio_sim.orchestration.conformance.findings import FindingLog, Policy
    from virtio_sim.orchestration.conformance.report import build_report, coverage
    from virtio_sim.orchestration.conformance.targets import TargetError, check_transport_ring, parse_target

    catalog = load_catalog()
    target = parse_target(target_text)
    check_transport_ring(transport, ring)
    if target.kind != "driver":
        device_key(target.name)
    pol = Policy(policy)
    args = argparse.Namespace(target=target_text, transport=transport, ring=ring, quick=not thorough)
    try:
        log = trio.run(lambda: _run(target.kind, args, pol, catalog))
    except TargetError:
        raise
    except Exception as e:  # a broken target gives a report, not a traceback
        log = FindingLog(catalog.level_of, pol)
        log.run_errors.append(f"the run stopped: {type(e).__name__}: {e}")
    report = build_report(
        catalog,
        log,
        target=target_text,
        actor="driver" if target.kind == "driver" else "device",
        transport=transport,
        ring=ring,
        device_key=None if target.kind == "driver" else device_key(target.name),
    )
    return report, coverage(catalog, [log])


def check_target(target_text: str, *, transport: str, ring: str, policy: str, thorough: bool) -> Report:
    return check_target_with_coverage(
        target_text, transport=transport, ring=ring, policy=policy, thorough=thorough
    )[0]


def cmd_conformance(args: argparse.Namespace) -> int:
    from virtio_sim.orchestration.conformance.catalog import CatalogError
    from virtio_sim.orchestration.conformance.dut import DutError
    from virtio_sim.orchestration.conformance.report import print_report, to_html, to_json, to_junit
    from virtio_sim.orchestration.conformance.targets import TargetError
    from virtio_sim.outpaths import OutputPathError

    console = output_console()  # whole requirement names in a pipe or a CI log
    if (args.suite is None) == (args.target is None):
        print("virtio-sim conformance: error: give --target or --suite (one of them)", file=sys.stderr)
        return EXIT_USAGE
    if args.suite is not None:
        return _suite(args, console)
    outputs = Outputs.of(args)
    try:
        outputs.check()  # before the run: an unwritable report path must not cost the results
        report, cov = check_target_with_coverage(
            args.target, transport=args.transport, ring=args.ring, policy=args.policy, thorough=not args.quick
        )
    except (CatalogError, TargetError, DutError, OutputPathError) as e:
        print(f"virtio-sim conformance: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if outputs.json_only:
        print(to_json(report, cov))
    else:
        print_report(report, console, cov)
    try:
        outputs.write(
            json=lambda: to_json(report, cov),
            junit=lambda: to_junit(report),
            html=lambda: to_html(report, cov),
        )
    except OutputPathError as e:
        print(f"virtio-sim conformance: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_FAIL if report.failed else EXIT_OK


def _suite(args: argparse.Namespace, console: Console) -> int:
    """The default runs: one line per run, then the coverage they decide together."""
    import json

    from rich.text import Text

    from virtio_sim.orchestration.conformance.catalog import CatalogError, load_catalog
    from virtio_sim.orchestration.conformance.report import coverage
    from virtio_sim.orchestration.conformance.suite import (
        default_runs,
        qemu_documented,
        run_suite,
        unexplained,
    )
    from virtio_sim.outpaths import OutputPathError, write_text

    try:
        catalog = load_catalog()
        Outputs(json=args.json).check()  # before the runs: a bad path must not cost them
    except (CatalogError, OutputPathError) as e:
        print(f"virtio-sim conformance: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    failed_runs = []
    documented = qemu_documented()

    def progress(run: Any, log: Any) -> None:
        bad = unexplained(run, log, catalog, documented)
        if bad:
            failed_runs.append(str(run))
        known = len([f for f in log.failures() if f.known]) + len(
            [f for f in log.failures() if (run.target, run.transport, run.ring, f.requirement) in documented]
        )
        line = f"{run}: {len(bad)} unexplained, {known} KNOWN/documented" + (f": {bad[:3]}" if bad else "")
        console.print(Text(line))

    results = run_suite(default_runs(), catalog, progress)
    cov = coverage(catalog, [log for _, log in results])
    console.print(Text(cov.line()))
    for area, why in cov.out_of_scope.items():
        console.print(Text(f"out of scope: {area}: {why}"))
    for rid, why in cov.unreachable.items():
        console.print(Text(f"unreachable: {rid}: {why}"))
    if args.json:
        data = {
            "suite": args.suite,
            "runs": [
                {
                    "target": r.target,
                    "transport": r.transport,
                    "ring": r.ring,
                    "unexplained": unexplained(r, log, catalog, documented),
                    "failures": sorted(f.requirement for f in log.unexplained_failures()),
                    "known": sorted(f.requirement for f in log.failures() if f.known),
                    "errors": sorted(f.requirement for f in log.errors()) + list(log.run_errors),
                }
                for r, log in results
            ],
            "coverage": cov.to_dict(),
        }
        if args.json == "-":
            print(json.dumps(data, indent=2))
        else:
            try:
                write_text("--json", args.json, json.dumps(data, indent=2))
            except OutputPathError as e:
                print(f"virtio-sim conformance: error: {e}", file=sys.stderr)
                return EXIT_USAGE
    return EXIT_FAIL if failed_runs else EXIT_OK


async def _run(kind: str, args: argparse.Namespace, policy: Any, catalog: Any) -> Any:
    kw = {"transport": args.transport, "ring": args.ring, "policy": policy, "catalog": catalog}
    if kind == "driver":
        module = importlib.import_module("virtio_sim.orchestration.conformance.driver_runner")
        run_driver: Callable[..., Awaitable[Any]] = module.run_driver_target
        return await run_driver(args.target, **kw)
    from virtio_sim.orchestration.conformance.device_runner import run_device_target

    return await run_device_target(args.target, thorough=not args.quick, **kw)
