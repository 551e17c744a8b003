"""``virtio-sim vhost-user``: serve one of our device models to a QEMU front-end.

    virtio-sim vhost-user --socket /tmp/vu.sock -device virtio-blk-device,drive=disk.img
    qemu-system-x86_64 ... -M q35,memory-backend=mem \\
        -object memory-backend-memfd,id=mem,size=512M,share=on \\
        -chardev socket,id=vu,path=/tmp/vu.sock -device vhost-user-blk-pci,chardev=vu

The back-end listens, serves the first front-end that connects until it disconnects, then
prints (and with ``--report`` writes) what it saw: the messages, the negotiated features,
per-ring counters, and every note and ring violation the device side recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from virtio_sim.argtypes import positive_seconds
from virtio_sim.exit_codes import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.host.vhost_user import VhostUserBackend, serve_socket

SUPPORTED = ("virtio-rng-device", "virtio-blk-device")


def add_vhost_user_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, help="Unix socket path to listen on (QEMU connects)")
    p.add_argument(
        "-device",
        "--device",
        dest="device",
        required=True,
        help="our device model, QEMU-style: " + " | ".join(SUPPORTED) + " (blk needs drive=FILE)",
    )
    p.add_argument("--report", help="write the back-end's report as JSON to this file at the end")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=None,
        help="give up when no front-end connects within this many seconds",
    )


def _summary(report: dict[str, Any]) -> list[str]:
    lines = [
        f"vhost-user {report['device']}: {report['ended']}",
        f"  acked      {report['features_acked']} ({', '.join(report['negotiated']) or '-'})",
        f"  status     {report['status']}",
    ]
    for q in report["queues"]:
        lines.append(
            f"  queue {q['index']}    size {q['size']}, {q['kicks']} kicks, {q['chains']} chains"
            f" ({q['indirect_chains']} indirect), {q['interrupts_sent']} interrupts"
            f" ({q['interrupts_suppressed']} suppressed)"
        )
    lines.append(f"  violations {len(report['violations'])}")
    lines += [f"    {v['violation']}: {v['message']}" for v in report["violations"]]
    lines += [f"  note       {n}" for n in report["notes"]]
    return lines


def cmd_vhost_user(args: argparse.Namespace) -> int:
    spec = parse_device_option(args.device) if args.device else None
    try:
        if spec is None or spec.driver not in SUPPORTED:
            raise PropertyError(
                f"'{spec.driver if spec else ''}' cannot be served over vhost-user"
                f" (supported: {', '.join(SUPPORTED)})"
            )
        built = build_device(spec)
    except PropertyError as e:
        print(f"virtio-sim vhost-user: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if os.path.exists(args.socket):
        print(f"virtio-sim vhost-user: error: {args.socket} already exists", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> VhostUserBackend | None:
        served: list[VhostUserBackend | None] = []

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            served.append(
                await serve_socket(
                    args.socket, built, connect_timeout=args.connect_timeout, task_status=task_status
                )
            )

        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            print(f"vhost-user: listening on {args.socket}", file=sys.stderr, flush=True)
        return served[0]

    try:
        backend = trio.run(main)
    finally:
        close = getattr(built.model, "close", None)
        if close:
            close()
    if backend is None:
        print("virtio-sim vhost-user: no front-end connected", file=sys.stderr)
        return EXIT_FAIL
    report = backend.report()
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    if args.json:
        print(json.dumps(report, indent=2))
    for line in _summary(report):
        print(line, file=sys.stderr)
    clean = report["ended"] == "front-end closed the connection" and not report["violations"]
    return EXIT_OK if clean else EXIT_FAIL
