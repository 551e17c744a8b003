"""QEMU's command-line habits: help generated from the parsing tables, the bus that
follows the device name, backends (-drive/-netdev/-chardev), id=/bus=/addr=, one
spelling per option, --json [PATH], --version, and the same accept/refuse decision as
real QEMU 7.2 for a list of -device lines."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from virtio_sim.host.build import HostConfig, build_host, check_global, default_transport
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import DEVICE_TYPES, PCI_DEVICE_TYPES, device_props
from virtio_sim.host.qdev_help import device_help, device_list, machine_help
from virtio_sim.host.qemu_backends import Backends, add_drive
from virtio_sim.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


# ------------------------------------------------------------------ help from the tables


def _accepts(device: str, machine: str | None = None) -> str | None:
    """None if our host builds the device line, else the refusal."""
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "d.img"
        disk.write_bytes(bytes(1 << 20))
        b = Backends()
        add_drive(b, f"file={disk},if=none,id=d0")
        try:
            setup = build_host(
                HostConfig([device], default_transport([device], {}), 8 << 20, machine=machine, backends=b)
            )
        except PropertyError as e:
            return str(e)
        setup.close()
        return None


@pytest.mark.parametrize("name", sorted([*DEVICE_TYPES, *PCI_DEVICE_TYPES]))
def test_device_help_lists_exactly_what_the_parser_takes(name: str) -> None:
    text = device_help(f"{name},help")
    listed = [line.split("=")[0].strip() for line in text.splitlines()[1:]]
    assert listed == sorted(device_props(name)) and f'name "{name}"' in device_list()
    assert "(default: on)" in text  # event_idx, from the same table the parser reads
    # a listed property is known to the parser; one that is not listed is refused
    base = name + (",drive=d0" if "blk" in name else "")
    for prop in ("event_idx", "iommu_platform", "queue_reset"):
        assert "not found" not in (_accepts(f"{base},{prop}=off") or "")
    assert _accepts(f"{base},not-listed=1") == f"Property '{name}.not-listed' not found"


def test_device_help_with_a_generation_and_machine_help() -> None:
    text = device_help("virtio-rng-pci,help", "qemu-2.6")
    assert "lacks:" in text and "iommu_platform" in text.splitlines()[-1]
    assert "(default: on)" in device_help("virtio-rng-pci,help", "qemu-7.2")
    m = machine_help("microvm,help")
    assert m.startswith("microvm-machine options:") and "acpi=<OnOffAuto>" in m and "(default: off)" in m
    with pytest.raises(PropertyError, match="not a valid device model name"):
        device_help("virtio-nope,help")


def test_cli_help_version_and_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["run", "-device", "help"],
        ["run", "--device", "help"],
        ["host", "--listen", "unix:", "-device", "help"],
    ):
        assert main(argv) == 0
        assert 'name "virtio-blk-pci", bus PCI' in capsys.readouterr().out
    assert main(["run", "-device", "virtio-blk-pci,help"]) == 0
    assert "logical_block_size=<size>" in capsys.readouterr().out
    for argv in (
        ["run", "-M", "help"],
        ["run", "--machine", "q35,help"],
        ["host", "--listen", "unix:", "-M", "help"],
    ):
        assert main(argv) == 0
        assert "q35" in capsys.readouterr().out
    assert main(["run", "-device", "virtio-nope,help"]) == 2
    p = _cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("virtio-sim ")


def test_bus_follows_the_device_name_and_json_path(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    out = tmp_path / "r.json"
    p = _cli(
        "run", "-drive", f"file={disk},if=none,id=d0,format=raw", "--device", "virtio-blk-pci,drive=d0,id=b0",
        "-m", "32M", "--workload", "blk-rw", "--json", str(out),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["outcome"] == "OK" and r["transport"] == "pci-transitional"
    assert r["probes"][0]["source"] == "pci" and "OK virtio-blk-pci" in p.stdout  # JSON went to the file
    p = _cli("run", "-device", "virtio-rng-device", "--ram", "32M", "--workload", "rng", "--json")
    assert json.loads(p.stdout)["transport"] == "mmio-v2"
    legacy = ("-global", "virtio-mmio.force-legacy=on")
    p = _cli("run", "-device", "virtio-rng-device", *legacy, "--workload", "rng", "--json")
    assert json.loads(p.stdout)["transport"] == "mmio-v1"
    assert default_transport(["virtio-rng-pci,disable-legacy=on"], {}) == "pci-modern"
    assert default_transport(["virtio-rng-pci,disable-modern=on"], {}) == "pci-legacy"


def test_backends_and_placement(tmp_path: Path) -> None:
    p = _cli(
        "run", "-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-device,netdev=n0",
        "-device", "virtio-net-device,netdev=n0", "--workload", "net-pair", "--json",
    )  # fmt: skip
    assert p.returncode == 0 and json.loads(p.stdout)["outcome"] == "OK", p.stdout + p.stderr
    log = tmp_path / "console.txt"
    p = _cli("run", "-chardev", f"file,id=c0,path={log}", "-device", "virtio-serial-device,chardev=c0",
             "--workload", "console-write", "--json")  # fmt: skip
    assert p.returncode == 0 and json.loads(p.stdout)["outcome"] == "OK", p.stdout + p.stderr
    assert log.stat().st_size > 0  # the guest's console output reached the chardev's file
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    drive = ("-drive", f"file={disk},if=none,id=d0")  # also through a host process
    blk = ("-device", "virtio-blk-device,drive=d0", "--workload", "blk-rw")
    p = _cli("run", *drive, *blk, "--processes", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["outcome"] == "OK", p.stdout + p.stderr
    p = _cli("run", "-device", "virtio-rng-device,bus=virtio-mmio-bus.3", "--workload", "rng", "--json")
    r = json.loads(p.stdout)
    assert r["outcome"] == "OK" and r["probes"][0]["where"] == "virtio-mmio@0xfeb00600"  # slot 3
    drive = ("-drive", "file=x.img,if=virtio,id=d0")
    p = _cli("run", *drive, "-device", "virtio-blk-pci,drive=d0", "--workload", "blk-rw")
    assert p.returncode == 2 and "only if=none" in p.stderr and "Traceback" not in p.stderr


def test_globals_are_checked_like_qemu() -> None:
    check_global("virtio-mmio.force-legacy", "off")
    check_global("virtio-rng-pci.event_idx", "off")
    with pytest.raises(PropertyError, match=r"can't apply global virtio-mmio.force-legacy=maybe: Parameter"):
        check_global("virtio-mmio.force-legacy", "maybe")
    with pytest.raises(PropertyError, match=r"Property 'virtio-rng-pci.nope' not found"):
        check_global("virtio-rng-pci.nope", "1")


# ------------------------------------------------------------------ vs real QEMU 7.2

QEMU_CASES: list[tuple[str, list[str], list[str]]] = [
    # (machine, -device lines, extra QEMU options besides the drive d0)
    ("q35", ["virtio-blk-pci"], []),
    ("q35", ["virtio-blk-pci,drive=d0"], []),
    ("q35", ["virtio-blk-pci,drive=nosuch"], []),
    ("q35", ["virtio-blk-pci,drive=d0,logical_block_size=4096"], []),
    ("q35", ["virtio-blk-pci,drive=d0,logical_block_size=4096,physical_block_size=4096"], []),
    ("q35", ["virtio-blk-pci,drive=d0,logical_block_size=1000"], []),
    ("q35", ["virtio-blk-pci,drive=d0,queue-size=100"], []),
    ("q35", ["virtio-rng-pci"], []),
    ("q35", ["virtio-rng-pci,nope=1"], []),
    ("q35", ["virtio-rng-pci,event_idx=maybe"], []),
    ("q35", ["virtio-rng-pci,event_idx=off,indirect_desc=off,packed=on"], []),
    ("q35", ["virtio-rng-pci,bus=foo"], []),
    ("q35", ["virtio-rng-pci,bus=pcie.0,addr=3,id=r0"], []),
    ("q35", ["virtio-rng-pci,addr=zz"], []),
    ("q35", ["virtio-rng-pci,id=r0", "virtio-rng-pci,id=r0"], []),
    ("q35", ["virtio-rng-pci,disable-legacy=on,iommu_platform=on"], []),
    ("q35", ["virtio-rng-pci,iommu_platform=on"], []),
    ("q35", ["virtio-rng-pci,disable-legacy=maybe"], []),
    ("q35", ["virtio-net-pci,mq=on,mac=52:54:00:12:34:57"], []),
    ("q35", ["virtio-net-pci,mac=zz"], []),
    ("q35", ["virtio-serial-pci,max_ports=4"], []),
    ("q35", ["virtio-rng-device"], []),
    ("q35", ["virtio-foo-pci"], []),
    ("q35", ["virtio-rng-pci"], ["-global", "virtio-rng-pci.nope=1"]),
    ("q35", ["virtio-rng-pci"], ["-global", "virtio-rng-pci.event_idx=off"]),
    ("microvm", ["virtio-rng-device"], []),
    ("microvm", ["virtio-rng-device,bus=virtio-mmio-bus.3"], []),
    ("microvm", ["virtio-rng-device,bus=virtio-mmio-bus.99"], []),
    ("microvm", ["virtio-rng-pci"], []),
    ("microvm", ["virtio-blk-device,drive=d0"], []),
    ("microvm", ["virtio-rng-device"], ["-global", "virtio-mmio.force-legacy=maybe"]),
    ("microvm", ["virtio-rng-device"], ["-global", "virtio-mmio.force-legacy=off"]),
]


def _qemu_accepts(
    qemu: str, machine: str, devices: list[str], extra: list[str], disk: Path
) -> tuple[bool, str]:
    """QEMU's own decision: -S stops before the guest runs; the monitor's quit ends an
    accepted configuration, a refused one exits before reading it."""
    cmd = [qemu, "-M", machine, "-nodefaults", "-display", "none", "-S", "-monitor", "stdio",
           "-drive", f"file={disk},if=none,id=d0,format=raw", *extra]  # fmt: skip
    for d in devices:
        cmd += ["-device", d]
    p = subprocess.run(cmd, input="quit\n", capture_output=True, text=True, timeout=60, check=False)
    return p.returncode == 0, p.stderr.strip()


def _our_decision(machine: str, devices: list[str], extra: list[str], disk: Path) -> tuple[bool, str]:
    globals_ = {e.partition("=")[0]: e.partition("=")[2] for e in extra[1::2]}
    b = Backends()
    add_drive(b, f"file={disk},if=none,id=d0,format=raw")
    try:
        for key, value in globals_.items():
            check_global(key, value)
        cfg = HostConfig(devices, default_transport(devices, globals_), 64 << 20, machine=machine, backends=b)
        cfg.globals = globals_
        build_host(cfg).close()
    except PropertyError as e:
        return False, str(e)
    return True, ""


@pytest.mark.qemu
def test_same_accept_or_refuse_as_qemu(tmp_path: Path) -> None:
    from virtio_sim.orchestration.qemu.tools import require_qemu

    qemu = require_qemu()
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    differ = []
    for machine, devices, extra in QEMU_CASES:
        theirs, why = _qemu_accepts(qemu, machine, devices, extra, disk)
        ours, our_why = _our_decision(machine, devices, extra, disk)
        if theirs != ours:
            differ.append(f"-M {machine} {extra} {devices}: QEMU {'accepts' if theirs else why}; "
                          f"we {'accept' if ours else our_why}")  # fmt: skip
    assert not differ, "\n".join(differ)
    assert sum(1 for m, d, e in QEMU_CASES if _our_decision(m, d, e, disk)[0]) >= 10  # both kinds covered


def test_one_json_convention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` alone: one JSON document on stdout and nothing else; ``--json PATH``:
    the same document in that file, for run, matrix, compat, conformance and attack."""
    one = ("--device", "qemu-7.2", "--transport", "mmio-v2", "--iommu", "none", "--iommu-platform", "on",
           "--workload", "rng", "--workers", "1")  # fmt: skip
    commands = {
        "run": ["run", "-device", "virtio-rng-device", "--workload", "rng"],
        "matrix": ["matrix", "specs/matrices/default.toml", "--driver", "linux-6.1", *one],
        "compat": ["compat", "specs/matrices/default.toml", "--old", "linux-4.0", "--new", "linux-6.1", *one],
        "conformance": ["conformance", "--target", "host:virtio-rng", "--quick"],
        "attack": ["attack", "--target", "host:rng/mmio-v2/split", "--scenario", "B15"],
    }
    for name, argv in commands.items():
        alone = _cli(*argv, "--json")
        assert alone.returncode in (0, 1), alone.stderr
        doc = json.loads(alone.stdout)  # stdout is exactly one JSON document
        path = tmp_path / f"{name}.json"
        p = _cli(*argv, "--json", str(path))
        assert p.returncode == alone.returncode, p.stderr
        assert set(json.loads(path.read_text())) == set(doc), name
