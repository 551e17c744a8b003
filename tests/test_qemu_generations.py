"""Every QEMU device generation against the QEMU machine type that keeps its ABI.

A profile (specs/profiles/devices/qemu-X.Y.toml) claims what QEMU X.Y's devices show a
guest; QEMU 7.2's pc-i440fx-X.Y keeps exactly that for migration. For every profile,
device model (blk, rng, net, console) and PCI transport, our device and QEMU's are read
with the same probe (ids, revision, subsystem, class, feature words per interface, queue
sizes, config bytes, notify multiplier); any difference not listed, with its reason, in
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

from virtio_sim.profiles import ProfileError, load_device_profile
from virtio_sim.qemu import generations as gen
from virtio_sim.spec import SPECS_DIR

DOC = Path(__file__).resolve().parent.parent / "docs" / "qemu-deviations.md"


def _doc_keys() -> list[str]:
    m = re.search(r"```generation-keys\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/qemu-deviations.md has no generation-keys block"
    return [line.strip() for line in m.group(1).splitlines() if line.strip()]


@cache
def _all() -> dict[str, list[gen.GenerationDiff]]:
    return {name: gen.compare_profile(name) for name in gen.qemu_profiles()}


@pytest.mark.qemu
def test_every_generation_presents_what_its_compat_machine_presents() -> None:
    keys = _doc_keys()
    found = [d for results in _all().values() for r in results for d in r.differences]
    missing = [d for d in found if not any(fnmatch.fnmatchcase(d, k) for k in keys)]
    assert not missing, "undocumented differences from QEMU's compat machines:\n" + "\n".join(missing)
    stale = [k for k in keys if not any(fnmatch.fnmatchcase(d, k) for d in found)]
    assert not stale, "documented differences that no longer occur:\n" + "\n".join(stale)


@pytest.mark.qemu
def test_every_profile_with_a_machine_was_compared_on_every_transport_it_has() -> None:
    compared = {(r.profile, r.transport) for results in _all().values() for r in results if not r.refused}
    for name in gen.qemu_profiles():
        for transport in gen.transports_of(load_device_profile(name)):
            assert (name, transport) in compared
    # the generations the issue names are all there, and measured where a machine exists
    assert {"qemu-2.3", "qemu-2.6", "qemu-5.0", "qemu-5.2", "qemu-7.2"} <= set(gen.qemu_profiles())


@pytest.mark.qemu
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
    cmd = [sys.executable, "-m", "virtio_sim.cli", "matrix", "--device", "qemu-9.9", "--driver", "linux-6.1"]
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
