"""The suite's own guards against CI flakiness (issue 23 item 9): a hang fails one test
(pytest-timeout, with stacks) instead of the whole job, and hypothesis draws the same
examples on every CI run. (Readiness means "listening": HostServer.run reports through
``nursery.start`` after listen(), see tests/test_host_admission.py and the wire corpus.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
    code = "import conftest; from hypothesis import settings; print(settings.default.derandomize)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "tests", env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_hypothesis_is_derandomized_under_ci() -> None:
    assert _derandomized("true") == "True"
    assert _derandomized(None) == "False"  # locally: new examples every run
