"""Bad command lines end at once with one clear line (issue 23 item 5): unwritable report
paths before the matrix runs, a directory as matrix file, nan/inf/negative timeouts on
every command, a closed stdout pipe, an unreachable dask scheduler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_sim.exit_codes import EXIT_BROKEN_PIPE, EXIT_USAGE

ONE_CELL = ("--driver", "linux-6.1", "--device", "qemu-7.2", "--transport", "mmio-v2",
            "--workload", "rng", "--iommu-platform", "off")  # fmt: skip


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("option", ["--json", "--junit-xml", "--html"])
@pytest.mark.parametrize("command", ["matrix", "compat"])
def test_unwritable_report_path_is_refused_before_anything_runs(
    tmp_path: Path, option: str, command: str
) -> None:
    bad = tmp_path / "no-such-dir" / "report.out"
    extra = ("--old", "linux-4.0", "--new", "linux-6.1") if command == "compat" else ("--driver", "linux-6.1")
    cells = ONE_CELL[2:]
    p = _cli(command, *extra, *cells, option, str(bad), timeout=120)
    assert p.returncode == EXIT_USAGE, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "No such file or directory" in lines[0]
    assert p.stdout == ""  # no table: nothing ran
    p = _cli(command, *extra, *cells, option, str(tmp_path), timeout=120)  # a directory
    assert p.returncode == EXIT_USAGE and "is a directory" in p.stderr and p.stdout == ""


def test_report_path_check_leaves_no_file_behind_and_keeps_existing_ones(tmp_path: Path) -> None:
    from virtio_sim.outpaths import check_writable

    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("previous run")
    check_writable([("--json", new), ("--html", old), ("--junit-xml", None), ("--json", "-")])
    assert not new.exists() and old.read_text() == "previous run"


def test_matrix_directory_is_a_usage_error(tmp_path: Path) -> None:
    p = _cli("matrix", str(tmp_path))
    assert p.returncode == EXIT_USAGE
    assert (
        p.stderr.strip()
        == f"virtio-sim matrix: error: {tmp_path}: is a directory, not a matrix file (give a .toml file)"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "NaN"])
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--device", "virtio-rng-device", "--workload", "rng", "--timeout"],
        ["guest", "--connect", "unix:/nonexistent", "--workload", "rng", "--timeout"],
        ["host", "--listen", "unix:", "--frame-timeout"],
        ["host", "--listen", "unix:", "--handshake-timeout"],
        ["matrix", "--timeout"],
        ["compat", "--old", "linux-4.0", "--new", "linux-6.1", "--timeout"],
        ["matrix", "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout"],
        ["vhost-user", "--socket", "/nonexistent/s", "-device", "virtio-rng-device", "--connect-timeout"],
    ],
    ids=lambda a: "-".join(a[:1] + a[-1:]) if isinstance(a, list) else a,
)
def test_non_finite_or_non_positive_timeouts_are_refused_at_parsing(
    argv: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from virtio_sim.orchestration import cli

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args([*argv[:-1], f"{argv[-1]}={value}"])  # =: "-1" is no option
    assert e.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{argv[-1]}: must be a finite number of seconds above 0" in err


def test_matrix_file_with_nan_timeout_is_refused() -> None:
    from virtio_sim.orchestration.matrix.spec import MatrixError, parse_matrix

    for bad in (float("nan"), float("inf"), True):
        with pytest.raises(MatrixError, match="finite positive"):
            parse_matrix({"axes": {"driver": ["a"], "device": ["b"]}, "timeout": bad}, "m.toml")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--device", "virtio-rng-device", "--workload", "rng", "--json"],
        ["matrix", *ONE_CELL, "--json"],
    ],
    ids=["run", "matrix"],
)
def test_closed_stdout_pipe_ends_quietly_with_141(argv: list[str]) -> None:
    """`virtio-sim run --json | head -c1`: the reader is gone before we write (its end is
    closed here before the child starts, so the write always finds the pipe broken)."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "virtio_sim.orchestration.cli", *argv], stdout=w, stderr=subprocess.PIPE,
            text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(w)
    assert p.returncode == EXIT_BROKEN_PIPE == 141
    # no BrokenPipeError traceback, no "Exception ignored" (a matrix's selection and progress
    # lines on stderr are its normal output)
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    assert all(line.startswith(("matrix: ", "1 of ", "2 of ", "4 of ")) for line in p.stderr.splitlines())


def test_unreachable_dask_scheduler_fails_fast_with_one_line() -> None:
    p = _cli("matrix", *ONE_CELL, "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "0.5", timeout=120)
    assert p.returncode == EXIT_USAGE
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("virtio-sim matrix: error: cannot reach the dask scheduler tcp://127.0.0.1:1")
    assert p.stdout == ""


def test_conformance_report_path_is_checked_before_the_run(tmp_path: Path) -> None:
    p = _cli("conformance", "--target", "host:virtio-rng", "--html", str(tmp_path / "nope" / "r.html"))
    assert p.returncode == EXIT_USAGE
    bad = tmp_path / "nope" / "r.html"
    assert p.stderr.strip().splitlines() == [
        f"virtio-sim conformance: error: --html {bad}: cannot write: No such file or directory"
    ]
    assert p.stdout == ""  # nothing ran
