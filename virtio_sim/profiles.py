"""Driver and device generations as data (specs/profiles/), validated on load.

A new Linux or QEMU generation is a new TOML file, not a subclass. Loading checks every
key and every feature name and fails with the file and the key at fault, because a typo
in a profile would otherwise silently change what a matrix cell tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtio_sim import tomlcache
from virtio_sim.devices import KINDS
from virtio_sim.spec import FEATURES, SPECS_DIR

PROFILES_DIR = SPECS_DIR / "profiles"
TRANSPORT_NAMES = ("pci-modern", "pci-transitional", "pci-legacy", "mmio-v1", "mmio-v2")


class ProfileError(ValueError):
    """A profile file is missing, malformed or names something unknown."""


@dataclass(frozen=True)
class DriverProfile:
    name: str
    description: str
    transport_features: int
    device_features: dict[str, int]
    transports: tuple[str, ...]
    mmio_versions: tuple[int, ...]
    pci_match: str  # "any" | "transitional-only"
    acpi_hids: tuple[str, ...]
    dt_compatibles: tuple[str, ...]
    dma_api: str  # "never" | "xen" | "feature" | "always" | "quirk-list" (guest/platform_dma.py)
    features_ok: bool
    endianness: str  # "little" | "big"
    restricted_memory: bool = False
    refuse_unrestricted: bool = False
    #: virtio_blk's DISCARD ranges: "per-bio" (Linux 5.0-5.8) or "single-range" (5.9+)
    blk_discard: str = "single-range"
    needs_reset: str = "detect"  # "detect" | "ignore" (what the drivers do with NEEDS_RESET)
    #: a proposal argued on the lists, not a release: where and when (thread, date)
    proposal: str = ""
    #: firmware descriptions of the IOMMU topology this kernel reads ("viot": ACPI VIOT)
    iommu_firmware: tuple[str, ...] = ("viot",)
    #: transport features a driver accepts on some transports only (feature mask ->
    #: transport names), as Linux's per-transport finalize_features hooks decide
    transport_only: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def features_on(self, transport: str) -> int:
        """The transport features this driver keeps on ``transport``."""
        kept = self.transport_features
        for mask, where in self.transport_only.items():
            if transport not in where:
                kept &= ~mask
        return kept


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    properties: frozenset[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    pci_modern: bool = True
    mmio_v2: bool = True
    validate_access_platform: bool = True
    dma: str = "honor"  # "honor" | "bypass" | "translate-always"
    access_platform_offer: str = "property"  # "property" | "never"
    #: per device kind (blk, rng, net, console, ...): QEMU property -> value as this QEMU
    #: version's machine type sets it (its hw_compat tables and device defaults)
    device_properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: property defaults the machine registers for every virtio device (QEMU 6.0+ with
    #: confidential-guest-support: iommu_platform=on, disable-legacy=on as "sugar"
    #: globals); a property the cell sets explicitly still wins, as on QEMU's command line
    machine_globals: dict[str, Any] = field(default_factory=dict)
    #: QEMU's machine types that carry this generation's ABI ("" : none installed here)
    pci_machine: str = ""
    mmio_machine: str = ""
    #: qemu-system-aarch64's virt-X.Y: the compat machine that presents this generation's
    #: virtio-mmio devices (microvm has no versioned types)
    arm_machine: str = ""
    #: where a compat machine does not reproduce the real old version, and what we do
    compat_notes: tuple[str, ...] = ()
    #: the vIOMMU device models this generation has (QEMU's -device names); a cell that
    #: asks for an IOMMU the generation lacks is refused with QEMU's words
    iommu_models: tuple[str, ...] = ()


_DRIVER_KEYS = {
    "description": str, "transport_features": list, "device_features": dict, "transports": list,
    "mmio_versions": list, "pci_match": str, "acpi_hids": list, "dt_compatibles": list,
    "dma_api": str, "features_ok": bool, "endianness": str, "restricted_memory": bool,
    "refuse_unrestricted": bool, "transport_only": dict, "blk_discard": str, "needs_reset": str,
    "proposal": str, "iommu_firmware": list,
}  # fmt: skip
_DRIVER_REQUIRED = set(_DRIVER_KEYS) - {
    "restricted_memory", "refuse_unrestricted", "transport_only", "blk_discard", "needs_reset",
    "proposal", "iommu_firmware",
}  # fmt: skip
_DEVICE_KEYS = {
    "description": str, "properties": list, "defaults": dict, "pci_modern": bool,
    "mmio_v2": bool, "validate_access_platform": bool, "dma": str, "access_platform_offer": str,
    "machine_globals": dict, "qemu": dict, "iommu_models": list,
}  # fmt: skip
_CHOICES = {
    "pci_match": ("any", "transitional-only"),
    "dma_api": ("never", "xen", "feature", "always", "quirk-list"),
    "endianness": ("little", "big"),
    "dma": ("honor", "bypass", "translate-always"),
    "access_platform_offer": ("property", "never"),
    "blk_discard": ("per-bio", "single-range"),
    "needs_reset": ("detect", "ignore"),
}
KNOWN_DEVICE_PROPERTIES = frozenset(
    {
        "event_idx", "indirect_desc", "disable-legacy", "disable-modern", "iommu_platform",
        "packed", "force-legacy", "queue_reset", "in_order", "notification_data",
    }
)  # fmt: skip
#: QEMU's per-device properties a profile may set (name -> type), by device kind: each
#: kind's descriptor says which (virtio_sim/devices); the values become -device properties
#: of our models (their host halves take the same names)
DEVICE_MODEL_PROPERTIES: dict[str, dict[str, type]] = {
    key: dict(kind.profile_properties) for key, kind in KINDS.items()
}
_DEVICE_KEYS.update(dict.fromkeys(DEVICE_MODEL_PROPERTIES, dict))
FORCEABLE = {"iommu_platform": bool, "disable-legacy": bool}
_QEMU_KEYS = {"pci_machine": str, "mmio_machine": str, "arm_machine": str, "notes": list}


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomlcache.load(path)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile") from None
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise ProfileError(f"{path}: invalid TOML: {e}") from None


def _check_keys(path: Path, data: dict[str, Any], keys: dict[str, type], required: set[str]) -> None:
    for k, v in data.items():
        if k not in keys:
            raise ProfileError(f"{path}: unknown key {k!r}")
        if not isinstance(v, keys[k]):
            raise ProfileError(f"{path}: key {k!r} must be a {keys[k].__name__}")
        if k in _CHOICES and v not in _CHOICES[k]:
            raise ProfileError(f"{path}: key {k!r} must be one of {', '.join(_CHOICES[k])}")
    missing = required - set(data)
    if missing:
        raise ProfileError(f"{path}: missing key(s) {', '.join(sorted(missing))}")


def _features(path: Path, key: str, names: list[Any], scope: str | None) -> int:
    mask = 0
    for n in names:
        if not isinstance(n, str) or not FEATURES.known(n):
            raise ProfileError(f"{path}: key {key!r}: unknown feature {n!r}")
        fb = FEATURES.get(n)
        if scope is not None and fb.scope != scope:
            raise ProfileError(f"{path}: key {key!r}: {n} belongs to {fb.scope}, not {scope}")
        mask |= fb.mask
    return mask


def load_driver_profile(name: str, directory: Path | None = None) -> DriverProfile:
    path = (directory or PROFILES_DIR / "drivers") / f"{name}.toml"
    data = _read(path)
    _check_keys(path, data, _DRIVER_KEYS, _DRIVER_REQUIRED)
    for t in data["transports"]:
        if t not in TRANSPORT_NAMES:
            raise ProfileError(f"{path}: key 'transports': unknown transport {t!r}")
    dev_feats = {}
    for key, names in data["device_features"].items():
        if not isinstance(names, list):
            raise ProfileError(f"{path}: key 'device_features.{key}' must be a list")
        dev_feats[key] = _features(path, f"device_features.{key}", names, key)
    return DriverProfile(
        name=name,
        description=data["description"],
        transport_features=_features(path, "transport_features", data["transport_features"], "transport"),
        device_features=dev_feats,
        transports=tuple(data["transports"]),
        mmio_versions=tuple(int(v) for v in data["mmio_versions"]),
        pci_match=data["pci_match"],
        acpi_hids=tuple(data["acpi_hids"]),
        dt_compatibles=tuple(data["dt_compatibles"]),
        dma_api=data["dma_api"],
        features_ok=data["features_ok"],
        endianness=data["endianness"],
        restricted_memory=data.get("restricted_memory", False),
        refuse_unrestricted=data.get("refuse_unrestricted", False),
        transport_only=_transport_only(path, data.get("transport_only", {})),
        blk_discard=data.get("blk_discard", "single-range"),
        needs_reset=data.get("needs_reset", "detect"),
        proposal=data.get("proposal", ""),
        iommu_firmware=_iommu_firmware(path, data.get("iommu_firmware", ["viot"])),
    )


def _transport_only(path: Path, table: dict[str, Any]) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}
    for name, where in table.items():
        mask = _features(path, "transport_only", [name], "transport")
        if not isinstance(where, list) or not all(t in TRANSPORT_NAMES for t in where):
            raise ProfileError(
                f"{path}: key 'transport_only.{name}' must list transports of {TRANSPORT_NAMES}"
            )
        out[mask] = tuple(where)
    return out


def _iommu_firmware(path: Path, names: list[Any]) -> tuple[str, ...]:
    for n in names:
        if n not in ("viot",):
            raise ProfileError(f"{path}: key 'iommu_firmware': unknown firmware table {n!r} (viot)")
    return tuple(names)


def load_device_profile(name: str, directory: Path | None = None) -> DeviceProfile:
    path = (directory or PROFILES_DIR / "devices") / f"{name}.toml"
    data = _read(path)
    _check_keys(path, data, _DEVICE_KEYS, {"description", "properties"})
    props = data["properties"]
    for p in props:
        if p not in KNOWN_DEVICE_PROPERTIES:
            raise ProfileError(f"{path}: key 'properties': unknown property {p!r}")
    for p in data.get("defaults", {}):
        if p not in props:
            raise ProfileError(f"{path}: key 'defaults.{p}': property is not in 'properties'")
    dev_props = {
        key: _typed(path, key, data.get(key, {}), known) for key, known in DEVICE_MODEL_PROPERTIES.items()
    }
    machine_globals = _typed(path, "machine_globals", data.get("machine_globals", {}), FORCEABLE)
    qemu = _typed(path, "qemu", data.get("qemu", {}), _QEMU_KEYS)
    if not all(isinstance(n, str) for n in qemu.get("notes", [])):
        raise ProfileError(f"{path}: key 'qemu.notes' must be a list of strings")
    return DeviceProfile(
        name=name,
        description=data["description"],
        properties=frozenset(props),
        defaults=dict(data.get("defaults", {})),
        pci_modern=data.get("pci_modern", True),
        mmio_v2=data.get("mmio_v2", True),
        validate_access_platform=data.get("validate_access_platform", True),
        dma=data.get("dma", "honor"),
        access_platform_offer=data.get("access_platform_offer", "property"),
        device_properties=dev_props,
        machine_globals=machine_globals,
        pci_machine=qemu.get("pci_machine", ""),
        mmio_machine=qemu.get("mmio_machine", ""),
        arm_machine=qemu.get("arm_machine", ""),
        compat_notes=tuple(qemu.get("notes", [])),
        iommu_models=_iommu_models(path, data.get("iommu_models", [])),
    )


def _typed(path: Path, table: str, values: dict[str, Any], known: Mapping[str, type]) -> dict[str, Any]:
    """A property table whose every key is known and of the right type, or ProfileError."""
    for k, v in values.items():
        if k not in known:
            raise ProfileError(f"{path}: key '{table}.{k}': unknown property {k!r}")
        # bool is an int in Python: an int property must not take true/false
        if not isinstance(v, known[k]) or (known[k] is int and isinstance(v, bool)):
            raise ProfileError(f"{path}: key '{table}.{k}' must be a {known[k].__name__}")
    return dict(values)


IOMMU_MODELS = ("virtio-iommu-pci", "virtio-iommu-device", "intel-iommu")


def _iommu_models(path: Path, names: list[Any]) -> tuple[str, ...]:
    for n in names:
        if n not in IOMMU_MODELS:
            raise ProfileError(f"{path}: key 'iommu_models': unknown IOMMU model {n!r}")
    return tuple(names)


def list_profiles(kind: str) -> list[str]:
    return sorted(p.stem for p in (PROFILES_DIR / kind).glob("*.toml"))
