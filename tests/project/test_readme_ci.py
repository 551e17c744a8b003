"""README.md and .ci/run say the same thing: the set-up commands, the system packages the
tests use, and CI running exactly the README's test command in a venv of its own with
pinned test tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.conftest import SYSTEM_TOOLS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


def _apt_packages(line: str) -> set[str]:
    return set(line.split("install", 1)[1].split()) - {"-y", "-qq", "--no-install-recommends"}


def test_ci_runs_the_readme_test_command_verbatim_in_its_own_venv() -> None:
    blocks = _sh_blocks(README)
    test_cmd = blocks[blocks.index("pip install -e . && virtio-sim matrix") + 1]
    assert test_cmd == "pip install -e '.[test]' && python -m pytest"
    lines = [line.strip() for line in CI.splitlines()]
    assert test_cmd in lines
    venv = lines.index("python3 -m venv .venv")
    activate = lines.index(". .venv/bin/activate")
    assert venv < activate < lines.index(test_cmd)
    assert "python3 -m venv .venv && . .venv/bin/activate" in blocks  # the README sets one up too


def test_readme_and_ci_name_every_system_package_the_tests_use() -> None:
    (readme_apt,) = [b for b in _sh_blocks(README) if b.startswith("sudo apt-get install")]
    packages = _apt_packages(readme_apt)
    ci_packages = set(re.search(r'^PACKAGES="([^"]+)"', CI, re.M)[1].split())  # type: ignore[index]
    assert packages == ci_packages
    needed = {package for _, package in SYSTEM_TOOLS.values()}
    needed |= {"qemu-system-x86", "qemu-system-arm"}  # the qemu / qemu_arm markers
    assert needed <= packages, needed - packages
    for package in packages - {"python3-venv"}:
        assert f"`{package}`" in README or f"`{package}`/" in README, package  # and says what for


def test_ci_pins_every_test_tool() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    tools = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower() for req in extras}
    pins = dict(
        line.split("==")
        for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(pins) == tools and all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values())
    assert 'export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"' in CI


def test_ci_builds_the_wheel_and_runs_the_matrix_outside_the_checkout() -> None:
    lines = [line.strip() for line in CI.splitlines()]
    wheel = next(i for i, line in enumerate(lines) if line.startswith("pip wheel"))
    assert lines[wheel - 1].startswith("git ls-files")  # from the tracked files, not the work tree
    assert '"$away/venv/bin/pip" install -q "$away"/dist/virtio_sim-*.whl' in lines[wheel:]
    assert lines[-1] == '(cd "$away" && "$away/venv/bin/virtio-sim" matrix)'
