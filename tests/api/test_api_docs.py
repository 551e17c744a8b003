"""docs/api.md, taken at its word: every Python example in it runs, the pytest example
as a test file of its own (through the installed plugin), and the API returns what the
commands print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
SNIPPETS = [b for b in BLOCKS if "def test_" not in b]
TEST_FILES = [b for b in BLOCKS if "def test_" in b]


def test_the_doc_has_its_examples() -> None:
    assert len(SNIPPETS) >= 5 and len(TEST_FILES) == 1
    assert all(name in DOC.read_text() for name in ("virtio_sim.run", "virtio_sim.Matrix", "__version__"))


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_doc_snippet_runs(code: str) -> None:
    """Each snippet in a fresh interpreter from the repository root, as a reader would."""
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_doc_pytest_example_passes_through_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_from_doc.py").write_text(TEST_FILES[0])
    # a project of its own: no conftest, no ini of ours; the fixtures come from the
    # plugin the package registers (entry point pytest11)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 passed" in p.stdout
    lines = [line for line in TEST_FILES[0].splitlines() if line.strip()]
    assert max(len(block) for block in _functions(lines)) <= 10  # "a test in ten lines"


def _functions(lines: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for line in lines:
        if line.startswith("def "):
            out.append([])
        out[-1].append(line)
    return out


def test_run_returns_what_the_command_prints() -> None:
    """The CLI prints the run's record (docs/json-schema.md); the API's RunResult carries
    the same evidence under the record's names."""
    import virtio_sim

    ours = virtio_sim.run("virtio-rng-device", "rng", driver="linux-4.8", seed=5).to_json()
    p = subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "run", "--device", "virtio-rng-device",
         "--workload", "rng", "--driver", "linux-4.8", "--seed", "5", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    same = ("outcome", "detail", "negotiated", "status_trace", "device_features", "driver_features", "probes")
    assert {k: record[k] for k in same} == {k: ours[k] for k in same}
    assert record["evidence"] == ours["workload"] and record["ring_info"] == ours["ring"]


def test_matrix_cells_are_the_commands_cells() -> None:
    import virtio_sim

    axes = {"driver": "linux-6.1", "device": "qemu-7.2", "transport": "pci-modern", "workload": "rng",
            "ring": "split"}  # fmt: skip
    cells = virtio_sim.Matrix(ROOT / "specs/matrices/default.toml", **axes).run(workers=1).cells
    flags = [x for k, v in axes.items() for x in (f"--{k}", v)]
    p = subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "matrix", "specs/matrices/default.toml",
         *flags, "--workers", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr

    def strip(cs: list[dict[str, object]]) -> list[dict[str, object]]:
        return sorted(
            ({k: v for k, v in c.items() if k != "seconds"} for c in cs), key=lambda c: str(c["id"])
        )

    assert len(cells) == 4 and strip(cells) == strip(json.loads(p.stdout)["cells"])


def test_bad_api_input_is_a_clear_error() -> None:
    import virtio_sim

    with pytest.raises(virtio_sim.ConfigError, match=r"no such profile|linux-99"):
        virtio_sim.run("virtio-rng-device", "rng", driver="linux-99")
    with pytest.raises(virtio_sim.MatrixError, match="unknown axis"):
        virtio_sim.Matrix(drivers="linux-6.1")
    assert virtio_sim.run("virtio-blk-device,nope=1", "blk-rw").outcome == "HOST_REFUSED"
