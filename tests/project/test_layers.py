"""The layers of docs/architecture.md hold, import by import (issue 26, step 6).

Four layers, read from the code's own ``import`` statements (also those inside functions
and under ``TYPE_CHECKING``, and ``import_module("...")`` with a literal name):

- core (the spec, layouts, memory, DMA, rings, wire, profiles, device descriptors) imports
  neither side nor orchestration;
- host (the device side, QEMU's role) and guest (the driver side, Linux's role) import
  core only, never each other, never orchestration;
- orchestration (embedded runs, processes, the matrix, attacks, conformance, the campaign
  harness, real peers, the CLI and the API) sits on top and may import all of them.

A module's layer is its path: ``virtio_sim/orchestration/`` is orchestration, ``host/``
and ``guest/`` (and the halves ``virtio_sim/devices/<kind>/host.py``, ``guest.py``) are
the sides, everything else in ``virtio_sim/`` is core. So a new module that imports both
sides fails here until it is put in ``orchestration/``: the folder says the layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "virtio_sim"

#: virtio_sim/<ORCHESTRATION>/: the one package of the orchestration layer
ORCHESTRATION = "orchestration"
SIDES = ("host", "guest")

#: (importer, imported) pairs allowed against the rules, each with its reason. Keep it
#: short: every entry is a debt.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # The package face: ``virtio_sim.run`` etc. are loaded on first use from api.py (a
    # string passed to import_module, and names under TYPE_CHECKING for mypy), so that
    # ``import virtio_sim.spec`` does not pull in the host and guest stacks.
    ("virtio_sim", "virtio_sim.orchestration.api"): "lazy package face (virtio_sim/__init__.py)",
}


def module_files() -> Iterator[tuple[str, Path]]:
    """Every module of the package with its dotted name. host/ and guest/ are reached
    through the symlinks virtio_sim/host and virtio_sim/guest, which rglob does not follow."""
    roots = [(PKG, ("virtio_sim",))] + [(ROOT / side, ("virtio_sim", side)) for side in SIDES]
    for base, prefix in roots:
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if base == PKG and rel.parts[0] in SIDES:
                continue
            parts = prefix + rel.with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


@cache
def imported(name: str, path: Path) -> frozenset[str]:
    """The virtio_sim modules ``name`` imports, wherever in the file the import stands."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.add(node.args[0].value)
    return frozenset(m for m in out if m == "virtio_sim" or m.startswith("virtio_sim."))


def layer(module: str) -> str:
    """core | host | guest | orchestration for one dotted module name, from its path."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # the package itself: its face (see EXCEPTIONS)
    top = parts[1]
    if top in SIDES:
        return top
    if top == "devices" and len(parts) >= 4 and parts[3] in SIDES:
        return parts[3]  # virtio_sim.devices.<kind>.host / .guest: the halves of a device
    if top == ORCHESTRATION:
        return "orchestration"
    return "core"


ALLOWED = {
    "core": {"core"},
    "host": {"core", "host"},
    "guest": {"core", "guest"},
    "orchestration": {"core", "host", "guest", "orchestration"},
}


def violations() -> list[str]:
    found = []
    for name, path in module_files():
        mine = layer(name)
        for target in sorted(imported(name, path)):
            theirs = layer(target)
            if theirs in ALLOWED.get(mine, set()) or (name, target) in EXCEPTIONS:
                continue
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where}: {mine} module {name} imports {theirs} {target}")
    return found


@pytest.mark.parametrize(
    ("module", "want"),
    [
        ("virtio_sim", "core"),
        ("virtio_sim.ring.split", "core"),
        ("virtio_sim.devices.balloon", "core"),
        ("virtio_sim.devices.balloon.host", "host"),
        ("virtio_sim.devices.balloon.guest", "guest"),
        ("virtio_sim.host.qdev", "host"),
        ("virtio_sim.guest.virtio", "guest"),
        ("virtio_sim.orchestration", "orchestration"),
        ("virtio_sim.orchestration.matrix.cell", "orchestration"),
        ("virtio_sim.orchestration.campaign.pool", "orchestration"),
    ],
)
def test_the_layer_is_the_path(module: str, want: str) -> None:
    assert layer(module) == want


def test_orchestration_is_one_package_on_top() -> None:
    """What imports both sides lives in virtio_sim/orchestration/, and only there."""
    both = {n for n, p in module_files() if {layer(t) for t in imported(n, p)} >= set(SIDES)}
    assert both and {layer(n) for n in both} == {"orchestration"}, both


def test_layers_hold() -> None:
    assert violations() == []


def test_exceptions_are_still_needed() -> None:
    """An exception nobody needs any more is removed, so the list only shrinks."""
    used = {(n, t) for n, p in module_files() for t in imported(n, p)}
    assert set(EXCEPTIONS) <= used


def test_sides_do_not_reach_each_other_through_core() -> None:
    """No core module imports a side, so host -> core -> guest cannot happen either."""
    assert not [v for v in violations() if v.split(": ")[1].startswith("core")]


@pytest.mark.parametrize(
    ("importer", "target", "want"),
    [
        ("virtio_sim.spec", "virtio_sim.host.qdev", "core module virtio_sim.spec imports host"),
        ("virtio_sim.host.qdev", "virtio_sim.guest.virtio", "host module"),
        ("virtio_sim.guest.virtio", "virtio_sim.orchestration.matrix.cell", "guest module"),
        ("virtio_sim.ring.split", "virtio_sim.orchestration.embedded", "imports orchestration"),
        ("virtio_sim.host.qdev", "virtio_sim.orchestration.matrix.cell", "imports orchestration"),
    ],
)
def test_the_check_sees_a_broken_rule(
    importer: str, target: str, want: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The rule check itself fails on each kind of wrong import (a module that gains one)."""
    files = dict(module_files())
    fake = tmp_path / files[importer].name
    fake.write_text(files[importer].read_text() + f"\n\ndef _late() -> None:\n    import {target}\n")
    real = module_files

    def patched() -> Iterator[tuple[str, Path]]:
        for name, path in real():
            yield name, fake if name == importer else path

    monkeypatch.setattr(f"{__name__}.module_files", patched)
    found = violations()
    assert any(importer in v and target in v and want in v for v in found), found
