"""What ``virtio-sim run`` loads: the host and guest stack, not the other commands' code.

Start-up is CPU every run pays (three times with ``--processes``); rich, the matrix, the
conformance suite, the attack corpus and the compat report are imported by the command
that uses them. These are structural checks (which modules are loaded), never timings:
the start-up figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import io
import json
import os
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


_RUN = (
    "import sys, virtio_sim.orchestration.cli as c\n"
    "c.main(['run', '--device', 'virtio-rng-device', '--workload', 'rng', '--json', sys.argv[1]])\n"
    "print('MODULES', ' '.join(sorted(sys.modules)))"
)


@pytest.fixture(scope="module")
def rng_run_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every module loaded by a whole ``virtio-sim run`` of rng on virtio-mmio, its
    caches warm (a second run: the first fills the TOML cache)."""
    tmp = tmp_path_factory.mktemp("run")
    env = {**os.environ, "VIRTIO_SIM_CACHE_DIR": str(tmp / "cache")}
    for _ in range(2):
        cmd = [sys.executable, "-c", _RUN, str(tmp / "run.json")]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=True)
    assert json.loads((tmp / "run.json").read_text())["outcome"] == "OK"
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


#: what an rng run on virtio-mmio does not use, each taken out of its import set for
#: start-up (docs/benchmarks.md, issue 24); each entry fails here if its import comes back
_GUEST_HALVES = "other kinds' drivers and workloads load when asked for (guest/kinds.py)"
_HOST_HALVES = "other kinds' device models load when one is built (host/qdev.py DEVICE_TYPES)"
_PCI = "machine.py and build.py import the PCI host and virtio-pci proxy for a PCI bus only"
_FIRMWARE = "build.py builds ACPI tables or a device tree only for a machine that has them"
_TABLES = "guest/firmware.py parses ACPI tables or a device tree only when the firmware has them"
#: the process mode's socket channels (an embedded run and a matrix worker have none)
_SOCKETS = "the frame server catches SendStalledError from wire.py, without the socket code"
NOT_IN_AN_RNG_RUN = {
    "tomllib": "spec and profile TOML comes from the cache when warm (virtio_sim/tomlcache.py)",
    "importlib.resources": "spec.py finds specs/ beside the package without it",
    "virtio_sim.guest.drivers.blk": _GUEST_HALVES,
    "virtio_sim.guest.drivers.console": _GUEST_HALVES,
    "virtio_sim.guest.drivers.iommu": _GUEST_HALVES,
    "virtio_sim.guest.drivers.net": _GUEST_HALVES,
    "virtio_sim.guest.drivers.rxpool": _GUEST_HALVES,
    "virtio_sim.guest.workloads_blk": _GUEST_HALVES,
    "virtio_sim.guest.workloads_console": _GUEST_HALVES,
    "virtio_sim.guest.workloads_net": _GUEST_HALVES,
    "virtio_sim.devices.balloon.guest": _GUEST_HALVES,
    "virtio_sim.netproto": _GUEST_HALVES,
    "virtio_sim.host.devices.chardev": _HOST_HALVES,
    "virtio_sim.host.devices.console": _HOST_HALVES,
    "virtio_sim.host.devices.net": _HOST_HALVES,
    "virtio_sim.host.devices.netbackend": _HOST_HALVES,
    "virtio_sim.host.qdev_netcon": _HOST_HALVES,
    "virtio_sim.devices.balloon.host": _HOST_HALVES,
    "virtio_sim.host.devices.hostile": "qdev.py imports it for a device with x-hostile only",
    "virtio_sim.host.devices.iommu": "build.py imports it for a machine with iommu=virtio-iommu only",
    "virtio_sim.host.iommu": "build.py imports it for a machine with an IOMMU only",
    "virtio_sim.host.pci": _PCI,
    "virtio_sim.host.transport.virtio_pci": _PCI,
    "virtio_sim.host.transport.pci_modern": _PCI,
    "virtio_sim.host.transport.pci_legacy": _PCI,
    "virtio_sim.host.firmware": _FIRMWARE,
    "virtio_sim.host.acpi": _FIRMWARE,
    "virtio_sim.host.fdt": _FIRMWARE,
    "virtio_sim.guest.acpi": _TABLES,
    "virtio_sim.guest.fdt": _TABLES,
    "virtio_sim.guest.pci_firmware": _TABLES,
    "virtio_sim.sockets": _SOCKETS,
    "virtio_sim.profiles": "cli.py loads a driver profile for --driver only",
    "virtio_sim.guest.profile": "cli.py loads a driver profile for --driver only",
}


@pytest.mark.parametrize("module", sorted(NOT_IN_AN_RNG_RUN))
def test_an_rng_run_does_not_import(module: str, rng_run_modules: set[str]) -> None:
    assert "virtio_sim.orchestration.embedded" in rng_run_modules  # the probe really ran the stack
    assert module not in rng_run_modules, NOT_IN_AN_RNG_RUN[module]


def test_a_matrix_worker_loads_everything_a_run_loads_on_demand() -> None:
    """matrix/cell.py imports what single runs import on demand, so the forkserver loads
    it once for every worker and the workers' gc.freeze covers it (virtio_sim/gcfreeze.py)."""
    ours = sorted(
        m for m, why in NOT_IN_AN_RNG_RUN.items() if m.startswith("virtio_sim.") and why != _SOCKETS
    )
    probe = "import sys, virtio_sim.orchestration.matrix.cell\n"
    code = probe + f"print([m for m in {ours!r} if m not in sys.modules])"
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


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
