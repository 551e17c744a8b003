"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.ci_policy import pytest_runtest_makereport  # noqa: F401  (CI=true: a skipped qemu test fails)
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.qemu.tools import (
    QEMU_ARM,
    QEMU_INSTALL_HINT,
    QEMU_X86,
    MissingTool,
    static_busybox,
)


def _static_busybox() -> bool:
    try:
        static_busybox()
    except MissingTool:
        return False
    return True


#: programs tests run, for ``@pytest.mark.tool(NAME)``: how to find one, and the Debian
#: package that has it (README.md names every one; tests/project/test_readme_ci.py checks that)
SYSTEM_TOOLS: dict[str, tuple[Callable[[], bool], str]] = {
    "iasl": (lambda: shutil.which("iasl") is not None, "acpica-tools"),
    "chromium": (lambda: shutil.which("chromium") is not None, "chromium"),
    "busybox": (_static_busybox, "busybox-static"),
    "dpdk-testpmd": (lambda: shutil.which("dpdk-testpmd") is not None, "dpdk-dev"),
}

# Hypothesis under CI (CI=true, as GitHub Actions and most CI systems set it): the same
# examples on every run, so a red CI job is reproducible and a green one is not luck;
# no example database (nothing persists between CI runs anyway) and no per-example
# deadline (a loaded runner is slow, not wrong). Registered here, before any test module
# builds its own settings objects, which inherit from the loaded profile.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``qemu`` run whenever QEMU is installed; otherwise they are skipped
    with the command that installs it (CI installs it, so there they always run; under
    CI=true such a skip is a failure: support/ci_policy.py). The same for ``tool(NAME)``:
    skipped with ``apt-get install PACKAGE`` when NAME is missing (a failure under CI too)."""
    for marker, binary in (("qemu", QEMU_X86), ("qemu_arm", QEMU_ARM)):
        if shutil.which(binary):
            continue
        skip = pytest.mark.skip(reason=f"{binary} not found: {QEMU_INSTALL_HINT}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
    present: dict[str, bool] = {}
    for item in items:
        for mark in item.iter_markers("tool"):
            (name,) = mark.args
            found, package = SYSTEM_TOOLS[name]
            if name not in present:
                present[name] = found()
            if not present[name]:
                item.add_marker(pytest.mark.skip(reason=f"{name} not found: apt-get install {package}"))


@pytest.fixture
def guest_memory():  # type: ignore[no-untyped-def]
    mem = GuestMemory.create(16 << 20)
    yield mem
    mem.close()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 1 MiB raw disk image filled with a known pattern (sector n starts with n)."""
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        for n in range(2048):
            f.write(n.to_bytes(4, "little") + bytes(508))
    os.sync()
    return path


def _process_umask() -> int:
    """The umask as /proc shows it: reading it with os.umask would set it, for every thread."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise RuntimeError("no Umask line in /proc/self/status")


@pytest.fixture(autouse=True)
def _umask_is_left_alone() -> Iterator[None]:
    """A test (or the code it runs) that leaves the process umask changed breaks every
    later test that creates files: a sockets.py race once left it at 0177 and chromium,
    run by a later test, died in its own 0600 profile directory. Fail the test that did it."""
    before = _process_umask()
    yield
    after = _process_umask()
    assert after == before, f"the process umask changed from {before:04o} to {after:04o} during this test"
