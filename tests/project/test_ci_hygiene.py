"""The suite's own guards against CI flakiness (issue 23 item 9): a hang fails one test
(pytest-timeout, with stacks) instead of the whole job, and hypothesis draws the same
examples on every CI run. (Readiness means "listening": HostServer.run reports through
``nursery.start`` after listen(), see tests/host/test_admission.py and the wire corpus.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PER_TEST_TIMEOUT = 300  # seconds; pyproject.toml says why


def test_every_test_runs_under_a_timeout(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed"
    assert pytestconfig.getoption("timeout") == PER_TEST_TIMEOUT
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("pytest-timeout") for dep in extras["test"])


def _derandomized(ci: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    code = "import tests.conftest; from hypothesis import settings; print(settings.default.derandomize)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_hypothesis_is_derandomized_under_ci() -> None:
    assert _derandomized("true") == "True"
    assert _derandomized(None) == "False"  # locally: new examples every run


async def test_the_host_reports_ready_only_once_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket file exists from bind() on, before listen(): a client that waits for
    the file can be refused (about 5% of CI runs under load). HostServer.run reports
    readiness through nursery.start, after listen(): at that moment the socket accepts."""
    import io
    import socket

    import trio

    import virtio_sim.host.process as host_process
    from virtio_sim.host.process import HostOptions, HostServer, plan_host
    from virtio_sim.sockets import UnixAddress

    opened = []
    real_open = host_process.open_listener

    async def spy(addr):  # type: ignore[no-untyped-def]
        listener = await real_open(addr)
        opened.append(listener)
        return listener

    monkeypatch.setattr(host_process, "open_listener", spy)
    opts = HostOptions(
        listen=UnixAddress(str(tmp_path / "h.sock")), devices=["virtio-rng-device"], ram_size=2 << 20
    )
    server = HostServer(plan_host(opts), out=io.StringIO(), err=io.StringIO())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        sock = opened[0].listener.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert str(address) == str(opened[0].address)
        nursery.cancel_scope.cancel()
