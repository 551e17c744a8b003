"""``virtio-sim run --processes``: the same run as the embedded mode, as two processes.

The runner starts ``virtio-sim host --once`` and ``virtio-sim guest`` as child processes
(the very commands a user would type), connects them over a Unix socket in a private
directory (or TCP on loopback with a one-time secret), and merges what they report: the
guest's result (JSON on its stdout) and the host's evidence (its ``guest-ended`` event),
folded exactly as :func:`virtio_sim.orchestration.embedded.add_host_evidence` folds it in one process.

Every child is bounded in time and reaped: a child that dies is reported with its exit
status and the other is stopped; Ctrl-C (SIGINT) or SIGTERM is passed on to both, which
say BYE and exit, and whatever is still running after a grace period is killed. Should
the runner itself be killed outright, its children see their stdin (their lifeline)
close and shut down. Nothing is left behind but the result.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import trio

from virtio_sim.exit_codes import (
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PEER_LOST,
    EXIT_USAGE,
)
from virtio_sim.host.build import PCI_TRANSPORT_PROPS
from virtio_sim.host.qdev import format_device_option, model_name, parse_device_option, pci_name
from virtio_sim.orchestration.embedded import RunConfig, check_config
from virtio_sim.outcome import Outcome, RunResult

LINKS = ("unix", "tcp")
STARTUP_TIMEOUT = 15.0  # seconds for the host to start listening
GRACE = 15.0  # beyond the guest's own timeout, for process start and teardown
STOP_GRACE = 3.0  # after SIGINT/SIGTERM, before SIGKILL


@dataclass
class ProcessRun:
    """What ``run --processes`` ends with."""

    status: int
    result: RunResult | None = None
    message: str | None = None
    host_events: list[dict[str, Any]] = field(default_factory=list)
    host_stderr: str = ""
    guest_stderr: str = ""


def _cli() -> list[str]:
    return [sys.executable, "-m", "virtio_sim.orchestration.cli"]


class _Child:
    """A child process whose stdout lines and stderr text are collected as they come."""

    def __init__(self, name: str, proc: trio.Process) -> None:
        self.name = name
        self.proc = proc
        self.stdout_lines: list[str] = []
        self.stderr = bytearray()
        self.line_event = trio.Event()
        self.drained = trio.Event()  # both pipes reached end of file

    async def pump(self) -> None:
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._pump_stdout)
                n.start_soon(self._pump_stderr)
        finally:
            self.drained.set()

    async def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        buf = bytearray()
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf = bytearray(rest)
                self.stdout_lines.append(line.decode(errors="replace"))
                self.line_event.set()
                self.line_event = trio.Event()
        if buf:
            self.stdout_lines.append(buf.decode(errors="replace"))
        self.line_event.set()

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for chunk in self.proc.stderr:
            self.stderr += chunk

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout_lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                out.append(event)
        return out

    def describe_exit(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return f"{self.name} process is still running"
        if rc < 0:
            return f"{self.name} process was killed by {signal.Signals(-rc).name}"
        return f"{self.name} process exited with status {rc}"

    async def stop(self, first: int) -> None:
        """Signal, wait a little, then kill: the child is gone when this returns."""
        if self.proc.returncode is None:
            self.proc.send_signal(first)
            with trio.move_on_after(STOP_GRACE):
                await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _start(name: str, cmd: list[str], nursery: trio.Nursery) -> _Child:
    # stdin is the child's lifeline (--lifeline): it closes when this process dies, even
    # by SIGKILL, and then the child shuts down instead of outliving us.
    proc = await trio.lowlevel.open_process(
        [*cmd, "--lifeline"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    child = _Child(name, proc)
    nursery.start_soon(child.pump)
    return child


def _on_transport(device: str, transport: str) -> str:
    """The -device option as the host process needs it for ``transport``: on q35 the
    virtio-pci flavour, with the interfaces the transport choice implies."""
    if not transport.startswith("pci-"):
        return device
    spec = parse_device_option(device)
    spec.driver = pci_name(model_name(spec.driver)) or spec.driver
    for k, v in PCI_TRANSPORT_PROPS[transport].items():
        spec.props.setdefault(k, v)
    return format_device_option(spec)


async def run_processes(cfg: RunConfig, link: str = "unix", driver: str | None = None) -> ProcessRun:
    """Run one cell as a host process and a guest process; never leaves a child behind.

    ``driver`` names the driver profile the guest runs (``cfg.guest`` is its policy,
    which the guest process rebuilds from the name).
    """
    check_config(cfg)
    if link not in LINKS:
        return ProcessRun(EXIT_USAGE, message=f"unknown link {link!r} (unix or tcp)")
    tmp = tempfile.mkdtemp(prefix="virtio-sim-run-")  # mode 0700: socket and secret live here
    children: list[_Child] = []
    interrupted: list[int] = []
    outcome = ProcessRun(EXIT_INTERRUPTED, message="interrupted")
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as main:

                    async def watch_signals() -> None:
                        async for signum in signals:
                            interrupted.append(signum)
                            main.cancel()
                            return

                    nursery.start_soon(watch_signals)
                    outcome = await _run(cfg, link, driver, tmp, nursery, children)
                with trio.CancelScope(shield=True):
                    first = interrupted[0] if interrupted else signal.SIGTERM
                    async with trio.open_nursery() as stoppers:
                        for child in children:
                            stoppers.start_soon(child.stop, first)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for child in children:
                if child.proc.returncode is None:
                    child.proc.kill()
                    await child.proc.wait()
                if child.proc.stdin is not None:
                    await child.proc.stdin.aclose()
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:
        name = signal.Signals(interrupted[0]).name
        outcome = ProcessRun(EXIT_INTERRUPTED, outcome.result, f"interrupted by {name}")
    for child in children:
        text = child.stderr.decode(errors="replace")
        if child.name == "host":
            outcome.host_stderr = text
            outcome.host_events = child.events()
        else:
            outcome.guest_stderr = text
    return outcome


async def _run(
    cfg: RunConfig,
    link: str,
    driver: str | None,
    tmp: str,
    nursery: trio.Nursery,
    children: list[_Child],
) -> ProcessRun:
    device = parse_device_option(cfg.device).driver
    pci = cfg.transport.startswith("pci-")
    machine = "q35" if pci else "microvm"
    if cfg.iommu != "none":
        machine += f",iommu={cfg.iommu}"
    if cfg.machine is not None:  # a firmware-described machine (-M virt, acpi=on, ...)
        machine = cfg.machine
    host_cmd = [
        *_cli(),
        "host",
        "--once",
        "-M",
        machine,
        "-m",
        f"{cfg.ram_size >> 10}K",
    ]  # QEMU -m syntax: a bare N is MiB
    for dev in [cfg.device, *cfg.extra_devices]:
        host_cmd += ["-device", _on_transport(dev, cfg.transport)]
    guest_cmd = [*_cli(), "guest", "--workload", cfg.workload, "--json"]
    guest_cmd += ["--timeout", repr(cfg.timeout)]
    if driver is not None:
        guest_cmd += ["--driver", driver]
    if cfg.seed is not None:
        host_cmd += ["--seed", str(cfg.seed)]
        guest_cmd += ["--seed", str(cfg.seed)]
    if cfg.transport == "pci-legacy":
        guest_cmd += ["--pci-force-legacy"]
    if cfg.transport == "mmio-v1":
        host_cmd += ["-global", "virtio-mmio.force-legacy=on"]
    if link == "unix":
        host_cmd += ["--listen", f"unix:{os.path.join(tmp, 'host.sock')}"]
    else:
        secret_file = os.path.join(tmp, "secret")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        host_cmd += ["--listen", "tcp:127.0.0.1:0", "--secret-file", secret_file]
        guest_cmd += ["--secret-file", secret_file]

    host = await _start("host", host_cmd, nursery)
    children.append(host)
    address = await _wait_listening(host)
    if address is None:
        return _host_did_not_start(host, cfg, device)

    guest = await _start("guest", [*guest_cmd, "--connect", address], nursery)
    children.append(guest)
    with trio.move_on_after(cfg.timeout + GRACE) as guest_wait:
        await _wait_either(guest, host)
    if guest_wait.cancelled_caught:
        return ProcessRun(
            EXIT_FAIL,
            RunResult(Outcome.HANG, cfg.transport, device=device, detail="guest process hung"),
            f"guest process did not finish within {cfg.timeout + GRACE:g}s",
        )
    if guest.proc.returncode is None:
        # The host ended first: give the guest the moment it needs to notice.
        with trio.move_on_after(STOP_GRACE):
            await guest.proc.wait()
    with trio.move_on_after(STOP_GRACE):
        await host.proc.wait()
        await host.drained.wait()
        await guest.drained.wait()
    return _merge(cfg, device, host, guest)


async def _wait_either(a: _Child, b: _Child) -> None:
    async with trio.open_nursery() as n:

        async def wait(child: _Child) -> None:
            await child.proc.wait()
            n.cancel_scope.cancel()

        n.start_soon(wait, a)
        n.start_soon(wait, b)


async def _wait_listening(host: _Child) -> str | None:
    with trio.move_on_after(STARTUP_TIMEOUT):
        while True:
            for event in host.events():
                if event["event"] == "listening":
                    return str(event["address"])
                if event["event"] == "refused":
                    return None
            if host.proc.returncode is not None:
                await trio.sleep(0.05)  # let the pumps drain
                for event in host.events():
                    if event["event"] == "listening":
                        return str(event["address"])
                return None
            with trio.move_on_after(0.1):
                await host.line_event.wait()
    return None


def _host_did_not_start(host: _Child, cfg: RunConfig, device: str) -> ProcessRun:
    for event in host.events():
        if event["event"] == "refused":
            result = RunResult(
                Outcome.HOST_REFUSED, cfg.transport, device=device, detail=str(event["detail"])
            )
            return ProcessRun(EXIT_FAIL, result)
    return ProcessRun(EXIT_FAIL, message=f"the host did not start listening ({host.describe_exit()})")


def _merge(cfg: RunConfig, device: str, host: _Child, guest: _Child) -> ProcessRun:
    result: RunResult | None = None
    try:
        result = RunResult.from_json(json.loads("\n".join(guest.stdout_lines)))
    except (ValueError, KeyError, TypeError):
        result = None
    ended = next((e for e in host.events() if e["event"] == "guest-ended"), None)
    if result is not None:
        result.device = device
        if not result.transport:
            result.transport = cfg.transport
        if ended is not None and "evidence" in ended:
            result.add_host_evidence(ended["evidence"])
    grc, hrc = guest.proc.returncode, host.proc.returncode
    problems = []
    if grc is None or grc < 0 or grc == EXIT_PEER_LOST:
        problems.append(guest.describe_exit() + _last_line(guest))
    if hrc is None or hrc < 0 or hrc == EXIT_PEER_LOST:
        problems.append(host.describe_exit() + _last_line(host))
    if problems:
        return ProcessRun(EXIT_PEER_LOST, result, "; ".join(problems))
    if result is None:
        return ProcessRun(EXIT_FAIL, None, f"the guest printed no result ({guest.describe_exit()})")
    return ProcessRun(EXIT_OK if result.outcome is Outcome.OK else EXIT_FAIL, result)


def _last_line(child: _Child) -> str:
    lines = child.stderr.decode(errors="replace").strip().splitlines()
    return f": {lines[-1]}" if lines else ""
