"""Under CI=true a skipped qemu- or tool-marked test is an error (issue 23 item 11; the tool
mark since dpdk-testpmd left Debian's ``dpdk`` package and its test skipped unnoticed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """
import pytest

@pytest.mark.qemu
def test_needs_qemu():
    pytest.skip("qemu-system-x86_64 not found")

@pytest.mark.qemu_arm
@pytest.mark.skip(reason="no aarch64")
def test_needs_arm():
    pass

@pytest.mark.tool("dpdk-testpmd")
@pytest.mark.skip(reason="dpdk-testpmd not found: apt-get install dpdk-dev")
def test_needs_a_program():
    pass

@pytest.mark.skip(reason="an ordinary skip")
def test_ordinary():
    pass
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    hook = "from tests.support.ci_policy import pytest_runtest_makereport  # noqa: F401\n"
    (tmp_path / "conftest.py").write_text(hook)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "-o", "markers=qemu\nqemu_arm\ntool", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_skipped_qemu_tests_fail_under_ci(tmp_path: Path, ci: str) -> None:
    p = _run(tmp_path, ci)
    assert p.returncode == 1, p.stdout
    assert "1 failed, 1 skipped, 2 errors" in p.stdout, p.stdout  # setup-time skips: errors
    assert "a real-peer test was skipped under CI=true" in p.stdout


def test_skipped_qemu_tests_stay_skips_outside_ci(tmp_path: Path) -> None:
    p = _run(tmp_path, None)
    assert p.returncode == 0, p.stdout
    assert "4 skipped" in p.stdout
