"""Every QEMU device generation against the QEMU machine type that keeps its ABI.

A profile (specs/profiles/devices/qemu-X.Y.toml) claims what QEMU X.Y's devices show a
guest; QEMU 7.2's pc-i440fx-X.Y keeps exactly that for migration. For every profile,
device model (blk, rng, net, console) and PCI transport, our device and QEMU's are read
with the same probe (ids, revision, subsystem, class, feature words per interface, queue
sizes, config bytes, notify multiplier), and on virtio-mmio (arm virt-X.Y: version, ids,
feature words, QueueNumMax, config bytes); any difference not listed, with its reason, in
docs/qemu-deviations.md (``generation-keys``) fails.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from virtio_sim.orchestration.qemu import generations as gen
from virtio_sim.profiles import ProfileError, load_device_profile
from virtio_sim.spec import SPECS_DIR

DOC = Path(__file__).resolve().parents[2] / "docs" / "qemu-deviations.md"


def _doc_keys() -> list[str]:
    m = re.search(r"```generation-keys\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/qemu-deviations.md has no generation-keys block"
    return [line.strip() for line in m.group(1).splitlines() if line.strip()]


@cache
def _all() -> dict[str, list[gen.GenerationDiff]]:
    return {name: gen.compare_profile(name) for name in gen.qemu_profiles()}


@pytest.mark.qemu
@pytest.mark.qemu_arm  # the virtio-mmio generations run on arm virt-X.Y
def test_every_generation_presents_what_its_compat_machine_presents() -> None:
    keys = _doc_keys()
    found = [d for results in _all().values() for r in results for d in r.differences]
    missing = [d for d in found if not any(fnmatch.fnmatchcase(d, k) for k in keys)]
    assert not missing, "undocumented differences from QEMU's compat machines:\n" + "\n".join(missing)
    stale = [k for k in keys if not any(fnmatch.fnmatchcase(d, k) for d in found)]
    assert not stale, "documented differences that no longer occur:\n" + "\n".join(stale)


@pytest.mark.qemu
@pytest.mark.qemu_arm  # the virtio-mmio generations run on arm virt-X.Y
def test_every_profile_with_a_machine_was_compared_on_every_transport_it_has() -> None:
    compared = {(r.profile, r.transport) for results in _all().values() for r in results if not r.refused}
    for name in gen.qemu_profiles():
        for transport in gen.transports_of(load_device_profile(name)):
            assert (name, transport) in compared
    # the generations the issue names are all there, and measured where a machine exists
    assert {"qemu-2.3", "qemu-2.6", "qemu-5.0", "qemu-5.2", "qemu-7.2"} <= set(gen.qemu_profiles())


@pytest.mark.qemu
@pytest.mark.qemu_arm  # the virtio-mmio generations run on arm virt-X.Y
def test_the_measured_words_change_where_qemu_changed_a_default() -> None:
    """What the compat machines present, read back: the changes the profiles model."""

    def word(name: str, transport: str, key: str, iface: str) -> int:
        r = next(r for r in _all()[name] if r.transport == transport)
        return int(str(r.qemu[key][f"{iface}.features"]), 16)

    assert word("qemu-2.3", "pci-legacy", "blk", "legacy") == 0x71000ED4  # SCSI, no ANY_LAYOUT
    assert word("qemu-2.3", "pci-legacy", "rng", "legacy") == 0x71000000  # any_layout=off
    assert word("qemu-2.6", "pci-legacy", "rng", "legacy") == 0x79000000
    assert word("qemu-2.9", "pci-modern", "blk", "modern") == 0x130000E54
    assert word("qemu-4.2", "pci-modern", "blk", "modern") == 0x130006E54  # DISCARD, WRITE_ZEROES
    assert word("qemu-7.2", "pci-modern", "blk", "modern") == 0x10130006E54  # RING_RESET
    assert word("qemu-2.7", "pci-modern", "console", "modern") == 0x130000002  # no EMERG_WRITE
    assert word("qemu-2.9", "pci-modern", "console", "modern") == 0x130000006
    assert word("qemu-2.6", "mmio-v1", "blk", "mmio") == 0x31000ED4  # arm virt-2.6, force-legacy
    assert word("qemu-4.2", "mmio-v2", "blk", "mmio") == 0x130006E54  # force-legacy=off (4.2+)


def test_unknown_device_property_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        'description = "x"\nproperties = ["event_idx"]\n[blk]\nqueue-sise = 128\n'
    )
    with pytest.raises(ProfileError, match=r"bad\.toml: key 'blk\.queue-sise': unknown property"):
        load_device_profile("bad", tmp_path)
    (tmp_path / "bad2.toml").write_text('description = "x"\nproperties = ["event_idx"]\n[blk]\nscsi = 1\n')
    with pytest.raises(ProfileError, match=r"bad2\.toml: key 'blk\.scsi' must be a bool"):
        load_device_profile("bad2", tmp_path)


def test_matrix_with_a_bad_device_profile_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    bad = specs / "profiles" / "devices" / "qemu-9.9.toml"
    bad.write_text((specs / "profiles" / "devices" / "qemu-7.2.toml").read_text() + "\n[rng]\nspeed = 3\n")
    cmd = [
        sys.executable,
        "-m",
        "virtio_sim.orchestration.cli",
        "matrix",
        "--device",
        "qemu-9.9",
        "--driver",
        "linux-6.1",
    ]
    cmd += ["--transport", "pci-modern", "--workload", "rng"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "VIRTIO_SIM_SPECS": str(specs)}
    )
    assert done.returncode == 2, done.stdout + done.stderr
    # TOML rejects the second [rng] table itself; either way the file is named
    assert "qemu-9.9.toml" in done.stderr and "Traceback" not in done.stderr
    bad.write_text(
        (specs / "profiles" / "devices" / "qemu-7.2.toml")
        .read_text()
        .replace("[rng]\n", "[rng]\nspeed = 3\n")
    )
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "VIRTIO_SIM_SPECS": str(specs)}
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "qemu-9.9.toml: key 'rng.speed': unknown property 'speed'" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- the qemu backend

PCI = ["--transport", "pci-legacy", "--transport", "pci-transitional", "--transport", "pci-modern"]


def _matrix(
    tmp_path: Path, backend: str, *sel: str, env: dict[str, str] | None = None
) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    out = tmp_path / f"{backend}.json"
    cmd = [
        sys.executable,
        "-m",
        "virtio_sim.orchestration.cli",
        "matrix",
        *sel,
        "--ring",
        "split",  # QEMU-backend cells are split-ring only
        "--device-backend",
        backend,
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    data = __import__("json").loads(out.read_text()) if out.exists() else {}
    return done.returncode, done.stderr, data


@pytest.mark.qemu
def test_qemu_2_6_runs_on_pc_i440fx_2_6_and_agrees_with_our_profile(tmp_path: Path) -> None:
    sel = ["--device", "qemu-2.6", "--driver", "linux-3.18", "--driver", "linux-4.0", "--driver", "linux-6.1",
           *PCI, "--workload", "rng", "--workload", "blk-rw",
           "--iommu-platform", "off", "--iommu", "none"]  # fmt: skip
    runs = {b: _matrix(tmp_path, b, *sel) for b in ("qemu", "ours")}
    for backend, (rc, err, _) in runs.items():
        assert rc == 0, f"{backend}: {err[-2000:]}"  # every cell as the default matrix expects
    qemu = {c["id"]: c for c in runs["qemu"][2]["cells"]}
    ours = {c["id"]: c for c in runs["ours"][2]["cells"]}
    assert qemu.keys() == ours.keys() and len(qemu) == 18
    assert {c["machine"] for c in qemu.values()} == {"pc-i440fx-2.6"}
    assert {c["evidence"].get("qemu_machine") for c in qemu.values() if c["outcome"] == "OK"} == {
        "pc-i440fx-2.6"
    }
    for key in ("outcome", "device_features", "driver_features"):
        assert {i: c[key] for i, c in qemu.items()} == {i: c[key] for i, c in ours.items()}, key
    # what the guest read on 2.6 is 2.6's ABI: a legacy-only blk (disable-modern=on) with
    # SCSI and without ANY_LAYOUT, no DISCARD/WRITE_ZEROES, a 128-entry queue
    legacy_blk = qemu["linux-3.18/qemu-2.6/pci-legacy/auto/none/off/split/blk-rw"]
    assert legacy_blk["outcome"] == "OK" and legacy_blk["device_features"] == "0x71000ed4"
    assert ours["linux-3.18/qemu-2.6/pci-legacy/auto/none/off/split/blk-rw"]["ring_info"]["queue_sizes"] == [
        128
    ]


@pytest.mark.qemu
def test_qemu_backend_refuses_a_generation_without_a_machine_in_one_line(tmp_path: Path) -> None:
    rc, err, _ = _matrix(
        tmp_path, "qemu", "--device", "qemu-6.0-cgs", "--driver", "linux-6.1", "--transport", "pci-modern"
    )
    assert rc == 2
    assert err.strip().count("\n") == 0 and "has no QEMU machine type for virtio-pci" in err
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    prof = specs / "profiles" / "devices" / "qemu-2.6.toml"
    prof.write_text(
        prof.read_text().replace('pci_machine = "pc-i440fx-2.6"', 'pci_machine = "pc-i440fx-0.9"')
    )
    env = {**os.environ, "VIRTIO_SIM_SPECS": str(specs)}
    rc, err, _ = _matrix(
        tmp_path,
        "qemu",
        "--device",
        "qemu-2.6",
        "--driver",
        "linux-6.1",
        "--transport",
        "pci-modern",
        env=env,
    )
    assert rc == 2
    assert err.strip().count("\n") == 0
    assert "needs machine type pc-i440fx-0.9, which the installed QEMU lacks" in err
