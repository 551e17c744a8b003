"""What ``virtio-sim run`` loads: the host and guest stack, not the other commands' code.

Start-up is CPU every run pays (three times with ``--processes``); rich, the matrix, the
conformance suite, the attack corpus and the compat report are imported by the command
that uses them. These are structural checks (which modules are loaded), never timings:
the start-up figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from virtio_sim.orchestration import cli
from virtio_sim.outcome import Outcome, RunResult

HEAVY = (
    "rich",
    "virtio_sim.orchestration.matrix",
    "virtio_sim.orchestration.conformance",
    "virtio_sim.orchestration.attacks",
    "virtio_sim.orchestration.compat",
)


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    cmd = [sys.executable, "-c", probe]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return [m for m in out.stdout.split() if m.split(".")[0] == "rich" or m.startswith(HEAVY[1:])]


def test_importing_the_cli_loads_no_command_code() -> None:
    assert _loaded_after("import virtio_sim.orchestration.cli") == []


def test_a_run_parser_loads_only_the_run_stack() -> None:
    code = (
        "import virtio_sim.orchestration.cli as c\nc.build_parser('run').parse_args(['run', '-device', 'x'])"
    )
    assert _loaded_after(code) == []


@pytest.mark.parametrize(
    "command", ["matrix", "compat", "conformance", "attack", "fuzz", "run", "host", "guest", "vhost-user"]
)
def test_each_command_still_has_its_options(command: str) -> None:
    """The parser built for one command has that command's options (its --help lists
    them); the full parser has every command's."""
    one = cli.build_parser(command)
    full = cli.build_parser()
    for parser in (one, full):
        sub = next(a for a in parser._actions if a.dest == "command")
        own = sub.choices[command]  # type: ignore[index]
        assert len(own._actions) > 1, command  # more than -h


def _result() -> RunResult:
    r = RunResult(Outcome.DEVICE_ERROR, transport="mmio-v2", device="virtio-[bold]rng\x1b[31m-device")
    r.detail = "host error 1: [/x] tab\there\nsecond line \x9b and\tmore"
    r.negotiated = ["VIRTIO_F_VERSION_1"]
    r.status_trace = ["RESET", "ACKNOWLEDGE"]
    r.ring = {"format": "split", "barriers": "weak"}
    return r


def test_plain_output_is_what_rich_prints_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal ``run`` prints without importing rich; the text must be the same
    as rich's there (no styles, no wrapping, peer text escaped, tabs expanded)."""
    out = io.StringIO()
    cli.print_human(_result(), Console(file=out, width=100_000, no_color=True, highlight=False))
    cli.print_human(_result())
    plain = capsys.readouterr().out
    assert plain == out.getvalue()
    assert "\\x1b" in plain and "[/x]" in plain and "\t" not in plain
