"""One descriptor per device kind, every registry derived from it (issue 26, step 3).

virtio_sim/devices holds a DeviceKind per kind; the host's -device tables, the guest's
driver table and workloads, the attack targets and the device-profile keys are read from
it. The traditional memory balloon (virtio 1.3 section 5.5) was added as one package plus
one registry line, and runs in the matrix like the kinds that came before it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import trio

from virtio_sim.devices import KIND_MODULES, KINDS, kind_by_name, resolve
from virtio_sim.devices.balloon import PFN_SHIFT
from virtio_sim.devices.balloon.host import RUN_TARGET_PAGES, BalloonDevice
from virtio_sim.guest.platform import DRIVERS
from virtio_sim.guest.profile import guest_policy
from virtio_sim.guest.workloads import WORKLOADS
from virtio_sim.host.build import HostSetup
from virtio_sim.host.device_profile import DeviceRequest, device_option
from virtio_sim.host.qdev import DEVICE_TYPES, PCI_DEVICE_TYPES, device_props
from virtio_sim.orchestration.attacks.targets import DEVICES as ATTACK_DEVICES
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.matrix.executors import LocalPool
from virtio_sim.orchestration.matrix.run import execute, plan
from virtio_sim.orchestration.matrix.spec import load_matrix
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import (
    DEVICE_MODEL_PROPERTIES,
    list_profiles,
    load_device_profile,
    load_driver_profile,
)
from virtio_sim.spec import DEVICE_TYPES_BY_ID, FEATURES

ROOT = Path(__file__).resolve().parents[2]
BALLOON_PACKAGE = ROOT / "virtio_sim" / "devices" / "balloon"
REGISTRY = ROOT / "virtio_sim" / "devices" / "__init__.py"


def test_every_registry_is_derived_from_the_kinds() -> None:
    qdev_kinds = [k for k in KINDS.values() if k.qdev_model]
    assert list(DEVICE_TYPES) == [k.device_name for k in qdev_kinds]
    assert {k.pci_name: (k.device_name, k.pci_class) for k in qdev_kinds} == PCI_DEVICE_TYPES
    assert set(DRIVERS) == set(KINDS)
    assert {key for key, _fn in WORKLOADS.values()} <= set(KINDS)
    assert {
        k.key: (k.device_name, k.attack_queue) for k in KINDS.values() if k.attack_queue is not None
    } == ATTACK_DEVICES
    assert set(DEVICE_MODEL_PROPERTIES) == set(KINDS)
    for kind in KINDS.values():
        assert DEVICE_TYPES_BY_ID[kind.device_id].key == kind.key
        assert kind_by_name(kind.pci_name) is kind


def test_the_console_keeps_qemus_name() -> None:
    """A kind whose QEMU type is not virtio-<key> is named once, in its descriptor."""
    assert KINDS["console"].device_name == "virtio-serial-device"
    request = DeviceRequest(device_key="console", transport="pci-modern")
    assert device_option(request, load_device_profile("qemu-7.2")).startswith("virtio-serial-pci,")


def test_a_half_is_loaded_only_from_its_own_side() -> None:
    with pytest.raises(ValueError, match=r"not a virtio_sim\.host object"):
        resolve(KINDS["rng"].guest, "host")
    with pytest.raises(ValueError, match=r"not a virtio_sim\.guest object"):
        resolve(KINDS["balloon"].host, "guest")


def _mentions(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if "balloon" in line.lower()]


def test_the_balloon_is_one_package_plus_one_registry_line() -> None:
    """Every source file outside the balloon package that names the balloon is known:
    one line of the registry (code), one data line per driver generation saying what
    that Linux's virtio_balloon knew (plus its source comment), and the spec's device
    id tables that listed every device id before the balloon had a model."""
    sources = [
        p
        for top in ("virtio_sim", "host", "guest", "specs", "benchmarks")
        for p in (ROOT / top).rglob("*")
        if p.suffix in (".py", ".toml", ".json") and not p.is_relative_to(BALLOON_PACKAGE)
    ]
    touched = {p.relative_to(ROOT).as_posix(): _mentions(p) for p in sources if _mentions(p)}
    generations = {f"specs/profiles/drivers/{n}.toml" for n in list_profiles("drivers")}
    spec_id_tables = {"specs/devices.toml", "specs/conformance/pci.toml"}
    code = set(touched) - generations - spec_id_tables
    assert code == {"virtio_sim/devices/__init__.py"}
    assert touched["virtio_sim/devices/__init__.py"] == ['    "virtio_sim.devices.balloon",']
    for name in generations:
        data = [line for line in touched[name] if not line.startswith("#")]
        assert len(data) == 1 and data[0].startswith("balloon = ["), name
    package = sorted(p.relative_to(ROOT).as_posix() for p in BALLOON_PACKAGE.glob("*.py"))
    assert package == [f"virtio_sim/devices/balloon/{n}" for n in ("__init__.py", "guest.py", "host.py")]


def test_the_registry_is_one_line_per_kind() -> None:
    tree = ast.parse(REGISTRY.read_text())
    assigned = next(
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "KIND_MODULES"
    )
    assert isinstance(assigned.value, ast.Tuple)
    lines = {e.lineno for e in assigned.value.elts}
    assert len(lines) == len(KIND_MODULES) == len(KINDS)


def test_balloon_feature_bits_come_from_its_package() -> None:
    fb = FEATURES.get("VIRTIO_BALLOON_F_DEFLATE_ON_OOM")
    assert (fb.scope, fb.bit) == ("balloon", 2)
    assert FEATURES.names(0b101, "balloon") == [
        "VIRTIO_BALLOON_F_MUST_TELL_HOST",
        "VIRTIO_BALLOON_F_DEFLATE_ON_OOM",
    ]
    assert "deflate-on-oom" in device_props("virtio-balloon-pci")


@pytest.mark.parametrize(
    ("driver", "transport"),
    [("linux-6.1", "pci-modern"), ("linux-6.1", "mmio-v2"), ("linux-3.18-ppc64be", "pci-legacy")],
)
def test_balloon_pages_reach_the_device_in_the_right_byte_order(driver: str, transport: str) -> None:
    """The device saw every page the guest gave and took back, as frame numbers inside guest
    RAM: little-endian, or big-endian from a big-endian guest's legacy driver (a device that
    read them in the wrong order would see numbers far beyond RAM)."""
    seen: list[BalloonDevice] = []
    ram = 64 << 20

    def grab(setup: HostSetup) -> None:
        model = setup.built[0].model
        assert isinstance(model, BalloonDevice)
        seen.append(model)

    cfg = RunConfig(
        device="virtio-balloon-device,deflate-on-oom=on",
        workload="balloon",
        transport=transport,
        guest=guest_policy(load_driver_profile(driver)),
        ram_size=ram,
        on_host=grab,
    )
    result = trio.run(run_embedded, cfg)
    assert result.outcome is Outcome.OK, result.detail
    (model,) = seen
    assert model.inflated == model.deflated == RUN_TARGET_PAGES
    assert not model.ballooned
    assert 0 < model.highest_pfn < ram >> PFN_SHIFT
    assert model.actual == 0
    negotiated = result.workload["features"]
    assert ("VIRTIO_BALLOON_F_DEFLATE_ON_OOM" in negotiated) == (driver == "linux-6.1")


def test_the_matrix_runs_the_balloon_like_any_other_kind() -> None:
    """tests/devices/balloon.toml: balloon and rng in the same cells end the same way,
    because refusals, hangs and unbound drivers come from negotiation, transports and DMA,
    never from a device kind; the OK cells include big-endian legacy guests."""
    spec = load_matrix(ROOT / "tests" / "devices" / "balloon.toml")
    results = execute(spec, plan(spec), LocalPool(2))
    by_rest: dict[str, dict[str, str]] = {}
    for r in results:
        rest = re.sub(r"/(rng|balloon)$", "/*", r["id"])
        by_rest.setdefault(rest, {})[r["workload"]] = r["outcome"]
    assert all(set(v) == {"rng", "balloon"} for v in by_rest.values())
    assert {k: v for k, v in by_rest.items() if v["rng"] != v["balloon"]} == {}
    ok = {r["id"] for r in results if r["workload"] == "balloon" and r["outcome"] == "OK"}
    assert "linux-3.18-ppc64be/qemu-7.2/pci-legacy/auto/none/off/split/balloon" in ok
    assert "linux-6.1/qemu-7.2/pci-modern/auto/none/on/packed/balloon" in ok
    assert {r["outcome"] for r in results} >= {"OK", "HOST_REFUSED", "NOT_PROBED", "FAILED_CLEAN"}


def test_a_target_beyond_guest_memory_stops_short_and_gives_everything_back() -> None:
    """Linux's fill_balloon stops when no page is left ("Out of puff!") and keeps what it
    got; the requests themselves use the driver's own frame-number array, so running the
    guest out of pages is no error: the device saw every page in and out again."""
    seen: list[BalloonDevice] = []

    def grab(setup: HostSetup) -> None:
        model = setup.built[0].model
        assert isinstance(model, BalloonDevice)
        seen.append(model)

    cfg = RunConfig(
        device="virtio-balloon-device,x-num-pages=1000000",
        workload="balloon",
        transport="mmio-v2",
        ram_size=16 << 20,
        on_host=grab,
    )
    result = trio.run(run_embedded, cfg)
    assert result.outcome is Outcome.OK, result.detail
    assert result.workload["out_of_guest_memory"] is True
    inflated = result.workload["inflated"]
    assert 0 < inflated < (16 << 20) >> PFN_SHIFT
    (model,) = seen
    assert model.inflated == model.deflated == inflated
    assert not model.ballooned
