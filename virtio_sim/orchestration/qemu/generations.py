"""Each device generation next to the QEMU machine type that keeps its ABI.

A device profile (specs/profiles/devices/qemu-X.Y.toml) claims what QEMU X.Y's devices
show a guest. QEMU 7.2's compat machine types (``pc-i440fx-X.Y``) exist to keep exactly
that across migration, so they are the oracle: for every profile, device model and PCI
transport the profile can present, :func:`compare_profile` builds the same four devices
(blk, rng, net, console) in our host (with the profile's property values) and in QEMU on
the profile's machine (with none: the machine type decides), reads both with the same
probe (:mod:`virtio_sim.orchestration.qemu.abi`: ids, revision, subsystem ids, class, feature words of
each interface, queue sizes, config bytes, notify multiplier) and lists every
difference as a stable key. docs/qemu-deviations.md explains the keys that remain.

One QEMU start per (profile, transport), all four devices in it.

    python -m virtio_sim.orchestration.qemu.generations            # every profile, as a table
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtio_sim.host.build import HostConfig, build_host
from virtio_sim.host.device_profile import DeviceRequest, device_option
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import parse_device_option
from virtio_sim.orchestration.qemu.abi import MmioAbi, PciAbi, probe_mmio, probe_pci
from virtio_sim.orchestration.qemu.machines import machine_args
from virtio_sim.orchestration.qemu.qtest import QtestError, spawn_qtest
from virtio_sim.orchestration.qemu.tools import QEMU_ARM, QEMU_X86, MissingTool, qemu_binary, require_qemu
from virtio_sim.profiles import DeviceProfile, list_profiles, load_device_profile
from virtio_sim.spec import FEATURES, load_toml

#: device model -> PCI slot (00:slot.0) on both machines
SLOTS = {"blk": 3, "rng": 4, "net": 5, "console": 6}
PCI_TRANSPORTS = ("pci-legacy", "pci-transitional", "pci-modern")
#: QEMU's first NIC address; given to both sides so that the config spaces can agree
MAC = "52:54:00:12:34:56"
DISK_BYTES = 4 << 20
FEATURE_FIELDS = ("legacy.features", "modern.features", "mmio.features")
MMIO_TRANSPORTS = ("mmio-v1", "mmio-v2")
_VIRT = load_toml("qemu_machines.toml")["virt"]


def mmio_base(index: int) -> int:
    """Where the ``index``-th -device lands on arm virt (ours and QEMU's): the highest slot first."""
    return int(_VIRT["mmio_base"] + (_VIRT["mmio_slots"] - 1 - index) * _VIRT["mmio_stride"])


@dataclass
class GenerationDiff:
    profile: str
    transport: str
    machine: str
    ours: dict[str, dict[str, Any]] = field(default_factory=dict)
    qemu: dict[str, dict[str, Any]] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    refused: str = ""


def qemu_profiles() -> list[str]:
    """Every device profile that names a QEMU machine type."""
    return [n for n in list_profiles("devices") if load_device_profile(n).pci_machine]


def transports_of(profile: DeviceProfile) -> tuple[str, ...]:
    """Every transport a compat machine presents for ``profile``: its PCI ones on
    pc-i440fx-X.Y, and virtio-mmio (v1; v2 where the generation has it) on arm virt-X.Y."""
    pci = PCI_TRANSPORTS if profile.pci_modern else ("pci-legacy",)
    mmio = () if not profile.arm_machine else MMIO_TRANSPORTS if profile.mmio_v2 else ("mmio-v1",)
    return pci + mmio


def _options(profile: DeviceProfile, transport: str, disk: Path, *, abi: bool) -> list[str]:
    out = []
    for key, slot in SLOTS.items():
        option = device_option(DeviceRequest(key, transport), profile, abi=abi)
        spec = parse_device_option(option)
        if transport.startswith("pci-"):
            spec.props["addr"] = f"{slot:#x}"
        if key == "blk":
            spec.props["drive"] = str(disk)
        if key == "net":
            spec.props["mac"] = MAC
        out.append(",".join([spec.driver, *(f"{k}={v}" for k, v in spec.props.items())]))
    return out


class _HostBus:
    """Our machine behind the probe's Bus protocol."""

    def __init__(self, machine: Any) -> None:
        self.m = machine

    def pio_read(self, port: int, size: int) -> int:
        return int(self.m.pio_read(port, size))

    def pio_write(self, port: int, size: int, value: int) -> None:
        self.m.pio_write(port, size, value)

    def read(self, addr: int, size: int) -> int:
        return int(self.m.mmio_read(addr, size))

    def write(self, addr: int, size: int, value: int) -> None:
        self.m.mmio_write(addr, size, value)


Abi = PciAbi | MmioAbi | None


def _probe(bus: Any, transport: str) -> dict[str, Abi]:
    if transport.startswith("pci-"):
        return {key: probe_pci(bus, slot) for key, slot in SLOTS.items()}
    return {key: probe_mmio(bus, mmio_base(i)) for i, key in enumerate(SLOTS)}


def ours(profile: DeviceProfile, transport: str, disk: Path) -> dict[str, Abi]:
    machine = None if transport.startswith("pci-") else "virt"
    options = _options(profile, transport, disk, abi=True)
    setup = build_host(HostConfig(devices=options, transport=transport, machine=machine))
    try:
        return _probe(_HostBus(setup.machine), transport)
    finally:
        setup.close()


def qemu(profile: DeviceProfile, transport: str, disk: Path, binary: str) -> dict[str, Abi]:
    """QEMU's devices on the profile's machine: only the transport's properties are
    given (our x- ones dropped); everything else is the machine type's."""
    if transport.startswith("pci-"):
        arch, args = "x86_64", ["-M", profile.pci_machine, "-m", "64M"]
    else:  # arm virt-X.Y: its -cpu, and force-legacy for the mmio version
        arch = "aarch64"
        args = machine_args(transport, 64 << 20, "virt")
        args[1] = profile.arm_machine
    args += ["-drive", f"file={disk},format=raw,if=none,id=disk0"]
    for text in _options(profile, transport, disk, abi=False):
        spec = parse_device_option(text)
        props = {k: v for k, v in spec.props.items() if not k.startswith("x-")}
        if "drive" in props:
            props["drive"] = "disk0"
        args += ["-device", ",".join([spec.driver, *(f"{k}={v}" for k, v in props.items())])]
    q = spawn_qtest(binary, arch, args)
    try:
        return _probe(q.client, transport)
    finally:
        q.close()


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > 40:
        return value[:40] + "..."
    return repr(value)


def diff_abi(where: str, key: str, ours_abi: Abi, qemu_abi: Abi) -> list[str]:
    """Stable keys: ``<where> <field> ours=... qemu=...``; feature words bit by bit."""
    prefix = f"{where} {key}"
    if ours_abi is None or qemu_abi is None:
        return (
            []
            if ours_abi is qemu_abi
            else [f"{prefix} present ours={ours_abi is not None} qemu={qemu_abi is not None}"]
        )
    a, b = ours_abi.fields(), qemu_abi.fields()
    out = []
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name), b.get(name)
        if va == vb:
            continue
        if name in FEATURE_FIELDS and va is not None and vb is not None:
            fa, fb = int(str(va), 16), int(str(vb), 16)
            out += [f"{prefix} {name} offered-only-by-qemu {n}" for n in FEATURES.names(fb & ~fa, key)]
            out += [f"{prefix} {name} offered-only-by-ours {n}" for n in FEATURES.names(fa & ~fb, key)]
            continue
        out.append(f"{prefix} {name} ours={_short(va)} qemu={_short(vb)}")
    return out


def compare_profile(name: str, binary: str | None = None) -> list[GenerationDiff]:
    """Every PCI transport of profile ``name``, ours against QEMU on its machine."""
    profile = load_device_profile(name)
    binary = binary or require_qemu(QEMU_X86)
    arm = qemu_binary(QEMU_ARM)
    results = []
    with tempfile.TemporaryDirectory(prefix="virtio-sim-gen-") as tmp:
        for transport in transports_of(profile):
            disk = Path(tmp) / f"{transport}.img"
            disk.write_bytes(bytes(DISK_BYTES))
            mmio = transport.startswith("mmio")
            res = GenerationDiff(name, transport, profile.arm_machine if mmio else profile.pci_machine)
            try:
                if mmio and arm is None:
                    raise MissingTool(f"{QEMU_ARM} is not installed")
                mine = ours(profile, transport, disk)
                theirs = qemu(profile, transport, disk, arm if mmio and arm else binary)
            except (PropertyError, QtestError, MissingTool) as e:
                res.refused = str(e)
                res.differences.append(f"{name} * {transport} refused {e}")
                results.append(res)
                continue
            for key in SLOTS:
                a, b = mine[key], theirs[key]
                res.ours[key] = a.fields() if a is not None else {}
                res.qemu[key] = b.fields() if b is not None else {}
                res.differences += diff_abi(f"{name} {transport}", key, mine[key], theirs[key])
            results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or qemu_profiles()
    for name in names:
        for r in compare_profile(name):
            words = {
                k: v.get("modern.features", v.get("legacy.features", v.get("mmio.features")))
                for k, v in r.qemu.items()
            }
            print(f"{name:<10} {r.transport:<17} {r.machine:<15} qemu features {words}")
            for d in r.differences:
                print(f"    {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
