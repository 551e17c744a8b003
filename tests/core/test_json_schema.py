"""One JSON record for ``run --json`` and every ``matrix`` cell, checked against
specs/schema/result.schema.json and against its documentation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

from virtio_sim.orchestration.matrix.run import partial_results, plan
from virtio_sim.orchestration.matrix.spec import load_matrix
from virtio_sim.result_record import RECORD_KEYS
from virtio_sim.spec import SPECS_DIR

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((SPECS_DIR / "schema" / "result.schema.json").read_text())
CELL = SCHEMA["$defs"]["cell"]


def _validate(instance: Any, ref: str) -> None:
    jsonschema.validate(instance, {**SCHEMA, "$ref": ref}, cls=jsonschema.Draft202012Validator)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_and_matrix_print_the_same_record(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    run = _cli("run", "--device", f"virtio-blk-device,drive={disk}", "--workload", "blk-rw", "--json")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    _validate(record, "#/$defs/cell")
    assert record["evidence"]["sectors_written"] > 0 and record["ring_info"]["format"] == "split"
    assert record["id"] is None and record["device_option"] == f"virtio-blk-device,drive={disk}"

    matrix = _cli(
        "matrix", "--driver", "linux-6.1", "--driver", "linux-4.0", "--device", "qemu-7.2",
        "--device", "qemu-2.3", "--transport", "mmio-v2", "--transport", "pci-modern",
        "--workload", "blk-rw", "--iommu", "none", "--iommu-platform", "on", "--json",
    )  # fmt: skip
    report = json.loads(matrix.stdout)
    _validate(report, "#/$defs/matrix_report")
    outcomes = {c["outcome"] for c in report["cells"]}
    assert {"OK", "FAILED_CLEAN", "HOST_REFUSED"} <= outcomes  # refused cells have the same keys
    for cell in report["cells"]:
        assert list(cell) == list(record) == list(RECORD_KEYS)
    ok = next(c for c in report["cells"] if c["outcome"] == "OK" and c["transport"] == "mmio-v2")
    for key in ("transport", "machine", "iommu", "workload", "device_backend", "device_model"):
        assert ok[key] == record[key], key  # same names, same meaning
    # a cell's device_option repeats it with `run`, given a drive (the cell's scratch disk is gone
    # with the cell, and -device virtio-blk-* without drive= is refused as QEMU refuses it)
    again = _cli(
        "run", "--device", f"{ok['device_option']},drive={disk}", "--driver", ok["driver"],
        "--transport", ok["transport"],
        "--workload", "blk-rw", "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert (rerun["outcome"], rerun["negotiated"], rerun["driver"]) == ("OK", ok["negotiated"], ok["driver"])


def test_cells_that_never_ran_have_the_same_keys() -> None:
    spec = load_matrix()
    cells = plan(spec, {"driver": ["linux-6.1"], "device": ["qemu-7.2"], "transport": ["mmio-v2"]})
    results = partial_results(spec, cells, {}, "interrupted by SIGTERM")
    for r in results:
        _validate(r, "#/$defs/cell")
        assert r["outcome"] == "NOT_RUN" and r["expected"] is not None and r["machine"] == "microvm"


def test_the_schema_is_strict_and_documented() -> None:
    assert CELL["additionalProperties"] is False and set(CELL["required"]) == set(RECORD_KEYS)
    doc = (ROOT / "docs" / "json-schema.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, re.M))
    assert documented == set(RECORD_KEYS)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    try:
        _validate({**dict.fromkeys(RECORD_KEYS), "workload_evidence": {}}, "#/$defs/cell")
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a record with an unknown key validated")


def test_every_run_result_field_is_in_the_record() -> None:
    from virtio_sim.outcome import RunResult
    from virtio_sim.result_record import RENAMED

    assert {RENAMED.get(f, f) for f in RunResult.__dataclass_fields__} <= set(RECORD_KEYS)
