"""``virtio-sim conformance``: run a conformance target and report per requirement.

Exit codes: 0 when no MUST/MUST NOT failed, 1 when one did, 2 for usage errors (a bad
target or an unknown device, a transport/ring that cannot be combined, a broken
catalogue). The driver side lives in :mod:`virtio_sim.conformance.driver_runner`
(imported only for ``driver:`` targets).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from rich.console import Console

from virtio_sim.exit_codes import EXIT_FAIL, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from virtio_sim.conformance.report import Report

TRANSPORT_CHOICES = ("mmio-v2", "mmio-v1", "pci-modern", "pci-transitional", "pci-legacy")


def add_conformance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        required=True,
        help="host:DEVICE[,props] | qemu:DEVICE[,props] | driver:PROFILE[,props]",
    )
    p.add_argument("--transport", default="mmio-v2", help=f"{'|'.join(TRANSPORT_CHOICES)} (default mmio-v2)")
    p.add_argument("--ring", default="split", help="split|packed (default split)")
    p.add_argument("--policy", default="lenient", choices=("strict", "lenient"))
    p.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON (to stdout alone if no PATH)"
    )
    p.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report here")
    p.add_argument("--html", metavar="FILE", help="write an HTML report here")
    p.add_argument("--quick", action="store_true", help="skip the slow checks (event-idx wrap)")


def check_target(target_text: str, *, transport: str, ring: str, policy: str, thorough: bool) -> Report:
    """Run one conformance target; its Report (the CLI and ``virtio_sim.conformance()``).
    Bad targets and combinations raise CatalogError, TargetError or DutError."""
    from virtio_sim.conformance.catalog import load_catalog
    from virtio_sim.conformance.dut import device_key
    from virtio_sim.conformance.findings import Policy
    from virtio_sim.conformance.report import build_report
    from virtio_sim.conformance.targets import check_transport_ring, parse_target

    catalog = load_catalog()
    target = parse_target(target_text)
    check_transport_ring(transport, ring)
    if target.kind != "driver":
        device_key(target.name)
    args = argparse.Namespace(target=target_text, transport=transport, ring=ring, quick=not thorough)
    log = trio.run(lambda: _run(target.kind, args, Policy(policy), catalog))
    return build_report(
        catalog,
        log,
        target=target_text,
        actor="driver" if target.kind == "driver" else "device",
        transport=transport,
        ring=ring,
        device_key=None if target.kind == "driver" else device_key(target.name),
    )


def cmd_conformance(args: argparse.Namespace) -> int:
    from virtio_sim.conformance.catalog import CatalogError, load_catalog
    from virtio_sim.conformance.dut import DutError
    from virtio_sim.conformance.report import catalog_coverage, print_report, to_html, to_json, to_junit
    from virtio_sim.conformance.targets import TargetError

    console = Console()
    try:
        report = check_target(
            args.target, transport=args.transport, ring=args.ring, policy=args.policy, thorough=not args.quick
        )
    except (CatalogError, TargetError, DutError) as e:
        print(f"virtio-sim conformance: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    coverage = catalog_coverage(load_catalog())
    if args.json == "-":
        print(to_json(report, coverage))
    else:
        print_report(report, console, coverage)
    outputs: list[tuple[str | None, Callable[[], str]]] = [
        (args.json if args.json != "-" else None, lambda: to_json(report, coverage)),
        (args.junit_xml, lambda: to_junit(report)),
        (args.html, lambda: to_html(report, coverage)),
    ]
    for path, text in outputs:
        if path:
            Path(path).write_text(text(), encoding="utf-8")
    return EXIT_FAIL if report.must_failures else EXIT_OK


async def _run(kind: str, args: argparse.Namespace, policy: Any, catalog: Any) -> Any:
    kw = {"transport": args.transport, "ring": args.ring, "policy": policy, "catalog": catalog}
    if kind == "driver":
        module = importlib.import_module("virtio_sim.conformance.driver_runner")
        run_driver: Callable[..., Awaitable[Any]] = module.run_driver_target
        return await run_driver(args.target, **kw)
    from virtio_sim.conformance.device_runner import run_device_target

    return await run_device_target(args.target, thorough=not args.quick, **kw)
