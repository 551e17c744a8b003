"""Peer and user text is data (issue 23 item 3): never rich markup, never terminal
control, at most the wire protocol's 4000 characters (docs/wire-protocol.md, ERROR)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from virtio_sim import wire
from virtio_sim.exit_codes import EXIT_FAIL
from virtio_sim.orchestration import cli
from virtio_sim.orchestration.attacks.corpus_text import TEXT_CASES, raw_error, run_text_corpus
from virtio_sim.orchestration.attacks.scenario import Verdict
from virtio_sim.orchestration.matrix import report
from virtio_sim.peertext import MAX_PEER_TEXT, cap, peer_text
from virtio_sim.spec import LIMITS


def test_the_bound_is_the_documented_one() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "wire-protocol.md").read_text()
    assert f"at most {LIMITS.wire.max_error_chars} characters" in doc
    assert MAX_PEER_TEXT == LIMITS.wire.max_error_chars == 4000


def test_bound_error_message_cut_on_send_and_receive() -> None:
    sent = wire.decode(wire.error(1, "y" * 10_000).encode())
    assert len(wire.parse_error(sent)[1]) <= MAX_PEER_TEXT
    hostile = wire.decode(raw_error("x" * 60_000))  # what a peer that ignores the bound sends
    _code, message = wire.parse_error(hostile)
    assert len(message) <= MAX_PEER_TEXT and message.endswith("more characters cut)")
    assert len(cap("z" * 4001)) <= 4000 and cap("short") == "short"


def test_control_characters_are_shown_not_obeyed() -> None:
    assert peer_text("a\x1b[2Jb\x9b1m\x07\tc\nd") == "a\\x1b[2Jb\\x9b1m\\x07\tc\nd"


def _fake_host(message: str) -> tuple[str, threading.Thread]:
    """A host that answers every guest with ERROR(CONFIG, message), bypassing the cap.
    It is listening before the guest starts (bind + listen here, not in the thread)."""
    d = os.path.realpath(os.environ.get("TMPDIR", "/tmp"))
    path = os.path.join(d, f"vsim-text-{os.getpid()}-{threading.get_ident()}.sock")
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(raw_error(message))
            conn.settimeout(30)
            while conn.recv(4096):
                pass
        srv.close()
        os.unlink(path)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return path, t


def _guest(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "guest", "--connect", f"unix:{path}",
         "--workload", "rng"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_host_error_with_markup_prints_literally() -> None:
    message = "refused [/x] and [bold]this[/bold] is not bold"
    path, t = _fake_host(message)
    p = _guest(path)
    t.join(30)
    assert "Traceback" not in p.stderr and "MarkupError" not in p.stderr, p.stderr
    assert p.returncode == EXIT_FAIL  # HOST_REFUSED: the normal status of a refused guest
    out = p.stdout.replace("\n", "")
    assert "HOST_REFUSED" in out and message in out


def test_host_error_of_60000_characters_is_capped() -> None:
    path, t = _fake_host("x" * 60_000)
    p = _guest(path)
    t.join(30)
    assert p.returncode == EXIT_FAIL, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout.count("x") <= MAX_PEER_TEXT and "more characters cut" in p.stdout.replace("\n", "")
    assert p.stderr.count("x") <= MAX_PEER_TEXT + 100


def test_drive_path_with_markup_prints_literally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = tmp_path / "a[" / "x]"
    odd.mkdir(parents=True)
    missing = odd / "[/x]no.img"
    status = cli.main(["run", "--device", f"virtio-blk-device,drive={missing}", "--workload", "blk-rw"])
    out = capsys.readouterr()
    assert status == EXIT_FAIL, out.err  # HOST_REFUSED, as for any missing drive
    assert "Traceback" not in out.err
    flat = out.out.replace("\n", "")
    assert "HOST_REFUSED" in flat and "[/x]no.img" in flat


def test_matrix_table_shows_axis_values_and_details_literally() -> None:
    results = [
        {"id": "c1", "transport": "mmio-v2", "driver": "drv[/x]", "device": "[bold]dev", "workload": "rng",
         "outcome": "OK", "expected": "OK", "detail": "[/x]"},
    ]  # fmt: skip
    out = io.StringIO()
    report.print_table(results, Console(file=out, width=200))
    assert "drv[/x]" in out.getvalue() and "[bold]dev" in out.getvalue()


async def test_attack_corpus_hostile_text_to_the_guest(tmp_path: Path) -> None:
    results = await run_text_corpus(str(tmp_path))
    assert [r.scenario for r in results] == [c.id for c in TEXT_CASES]
    bad = [(r.scenario, r.verdict, r.detail[:500]) for r in results if r.verdict is not Verdict.HANDLED]
    assert not bad
    assert {r.policy for r in results} == {"close"}


def test_conformance_report_shows_target_and_evidence_literally(
    disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "x[" / "[/x]d.img"
    odd.parent.mkdir(parents=True)
    odd.write_bytes(disk.read_bytes())
    status = cli.main(["conformance", "--target", f"host:virtio-blk,drive={odd}", "--quick"])
    out = capsys.readouterr()
    assert status == 0, out.err
    flat = out.out.replace("\n", "")
    assert "[/x]d.img" in flat
    assert "[mmio-v2, split]" in flat  # was eaten as a markup tag before
