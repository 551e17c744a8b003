"""The ``virtio-sim`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import trio
from rich.console import Console

from virtio_sim.embedded import TRANSPORTS, ConfigError, RunConfig, run_embedded
from virtio_sim.outcome import Outcome, RunResult

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(t[:-1], 0) * units[t[-1]]
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M)") from None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="virtio-sim", description="virtio feature-negotiation and vring emulator")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one device with one workload, host and guest embedded")
    run.add_argument(
        "--device", required=True, help="QEMU-style device, e.g. virtio-blk-device,drive=disk.img"
    )
    run.add_argument("--workload", required=True, help="rng | blk-rw")
    run.add_argument("--transport", default="mmio-v2", choices=TRANSPORTS)
    run.add_argument(
        "--seed", type=lambda s: int(s, 0), default=1, help="seed for reproducible entropy/data"
    )
    run.add_argument("--ram", type=_size, default="64M", help="guest RAM size (default 64M)")
    run.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds before HANG")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _print_human(result: RunResult) -> None:
    console = Console()
    colour = "green" if result.outcome is Outcome.OK else "red"
    console.print(f"[bold {colour}]{result.outcome}[/] {result.device} over {result.transport}")
    console.print(f"  offered    {result.device_features:#x}")
    console.print(
        f"  acked      {result.driver_features:#x}  ({', '.join(result.negotiated) or '-'})"
    )
    console.print(f"  status     {' -> '.join(result.status_trace) or '-'}")
    if result.ring:
        r = result.ring
        console.print(f"  ring       {r.get('format')}, barriers {r.get('barriers')}")
    console.print(f"  detail     {result.detail}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        cfg = RunConfig(
            device=args.device,
            workload=args.workload,
            transport=args.transport,
            ram_size=args.ram,
            seed=args.seed,
            timeout=args.timeout,
        )
        try:
            result = trio.run(run_embedded, cfg)
        except ConfigError as e:
            print(f"virtio-sim: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        else:
            _print_human(result)
        return 0 if result.outcome is Outcome.OK else 1
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
