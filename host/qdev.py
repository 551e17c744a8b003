"""QEMU-style ``-device`` options: parse them, check every property, build the device.

``virtio-blk-device,drive=disk.img,event_idx=off`` becomes a configured device model plus
its transport-level settings. Unknown devices and properties and bad values are refused
before anything runs, with QEMU's wording where QEMU has one. Properties that QEMU does
not have carry the ``x-`` prefix QEMU uses for non-standard ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field

from virtio_sim.host import qdev_props
from virtio_sim.host.devices.base import DeviceModel, PropertyError, parse_bool
from virtio_sim.host.kinds import host_half, qdev_kinds
from virtio_sim.host.qdev_props import Prop, props_for
from virtio_sim.host.virtio_device import ErrorPolicy, TransportFeatures
from virtio_sim.spec import PCI_CFG

COMMON_PROPS = tuple(qdev_props.COMMON_PROPS)
DMA_MODES = ("honor", "bypass", "translate-always")
PCI_PROPS = tuple(qdev_props.PCI_PROPS)
_RING_ATTRS = {"x-order-platform": "order_platform", "x-in-order-batch": "in_order_batch"}
# Ring-layout and ring-feature properties every virtio device has: the TransportFeatures
# attribute each sets and its default (host/qdev_props.py: QEMU 7.2's).
RING_PROPS: dict[str, tuple[str, bool]] = {
    name: (_RING_ATTRS.get(name, name), p.default == "on") for name, p in qdev_props.RING_PROPS.items()
}


@dataclass
class DeviceSpec:
    driver: str
    props: dict[str, str] = field(default_factory=dict)


@dataclass
class PciOptions:
    """The virtio-pci proxy properties of a ``virtio-*-pci`` device, resolved."""

    modern: bool
    legacy: bool
    vectors: int
    class_code: int
    slot: int | None = None
    function: int = 0


@dataclass
class BuiltDevice:
    spec: DeviceSpec
    model: DeviceModel
    transport_features: TransportFeatures
    policy: ErrorPolicy
    strict_rings: bool
    validate_access_platform: bool = True
    #: how device DMA meets an IOMMU: honor the negotiated bit, always bypass, always translate
    dma_mode: str = "honor"
    pci: PciOptions | None = None


def parse_device_option(text: str) -> DeviceSpec:
    """Split ``driver,key=value,...``; QEMU's ``,,`` escape for commas in values is honoured."""
    parts: list[str] = text.split(",") if ",," not in text else []  # the common case, in C
    cur = ""
    i = len(text) if parts else 0
    while i < len(text):
        c = text[i]
        if c == "," and text[i + 1 : i + 2] == ",":
            cur += ","
            i += 2
            continue
        if c == ",":
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if ",," in text:
        parts.append(cur)
    driver = parts[0].strip()
    if not driver:
        raise PropertyError("Parameter 'driver' is missing")
    props: dict[str, str] = {}
    for p in parts[1:]:
        if "=" not in p:
            raise PropertyError(f"Invalid parameter '{p}' (expected key=value)")
        k, v = p.split("=", 1)
        if k in props:
            raise PropertyError(f"Property '{driver}.{k}' given twice")
        props[k] = v
    return DeviceSpec(driver, props)


def format_device_option(spec: DeviceSpec) -> str:
    """The inverse of :func:`parse_device_option` (commas in values doubled)."""
    parts = [spec.driver] + [f"{k}={v}".replace(",", ",,") for k, v in spec.props.items()]
    return ",".join(parts)


DeviceType = tuple[Callable[[dict[str, str]], DeviceModel], tuple[str, ...]]


class _DeviceTypes(MutableMapping[str, DeviceType]):
    """Model name -> (factory, properties it takes besides the common ones), derived from
    the host halves of the device kinds (virtio_sim/devices, host/kinds.py). The names
    come from the descriptors; a kind's host half (its device model) is imported when
    its entry is first looked up, so a run loads the models it builds and no others.
    An entry can be replaced (a test swaps a broken model in with monkeypatch.setitem)."""

    def __init__(self) -> None:
        self._keys = {kind.device_name: kind.key for kind in qdev_kinds()}
        self._entries: dict[str, DeviceType] = {}  # looked up or replaced

    def __getitem__(self, name: str) -> DeviceType:
        entry = self._entries.get(name)
        if entry is None:
            half = host_half(self._keys[name])
            entry = self._entries[name] = (half.factory, tuple(half.props))
        return entry

    def __setitem__(self, name: str, entry: DeviceType) -> None:
        self._keys.setdefault(name, "")  # a name of no kind: only its set entry exists
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._keys[name]
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


#: name -> (factory, properties it accepts besides the common ones)
DEVICE_TYPES: MutableMapping[str, DeviceType] = _DeviceTypes()
#: virtio-*-pci: the same device models behind a virtio-pci proxy (name -> model, PCI class)
PCI_DEVICE_TYPES: dict[str, tuple[str, int]] = {
    kind.pci_name: (kind.device_name, kind.pci_class) for kind in qdev_kinds()
}


def model_name(driver: str) -> str:
    """The bus-independent model behind a device name (``virtio-blk-pci`` -> ``-device``)."""
    entry = PCI_DEVICE_TYPES.get(driver)
    return entry[0] if entry else driver


def pci_name(driver: str) -> str | None:
    """The virtio-pci flavour of a model name, if there is one."""
    return next((k for k, (m, _) in PCI_DEVICE_TYPES.items() if m == driver), None)


def _pci_addr(text: str, driver: str = "") -> tuple[int, int]:
    """QEMU's ``addr=SLOT[.FN]`` (hex)."""
    slot_s, _, fn_s = text.partition(".")
    bad = PropertyError(f"Property '{driver + '.' if driver else ''}addr' doesn't take value '{text}'")
    try:
        slot, fn = int(slot_s, 16), int(fn_s or "0", 16)
    except ValueError:
        raise bad from None
    if not 0 <= slot < PCI_CFG.devices_per_bus or not 0 <= fn < PCI_CFG.functions_per_device:
        raise bad
    return slot, fn


def _pci_options(props: dict[str, str], class_code: int, driver: str = "") -> PciOptions:
    table = qdev_props.PCI_PROPS
    disable_legacy = str(qdev_props.take(props, table, "disable-legacy")).lower()
    if disable_legacy in ("true", "yes"):
        disable_legacy = "on"
    if disable_legacy in ("false", "no"):
        disable_legacy = "off"
    if disable_legacy not in ("on", "off", "auto"):
        raise PropertyError(f"Parameter 'disable-legacy' does not accept value '{disable_legacy}'")
    disable_modern = parse_bool("disable-modern", str(qdev_props.take(props, table, "disable-modern")))
    vec = str(qdev_props.take(props, table, "vectors"))
    try:
        vectors = int(vec, 0)
    except ValueError:
        raise PropertyError(f"Property 'vectors' doesn't take value '{vec}'") from None
    if vectors < 0:
        raise PropertyError(f"Property 'vectors' doesn't take value '{vec}'")
    addr = props.pop("addr", None)
    slot, fn = _pci_addr(addr, driver) if addr is not None else (None, 0)
    # The machine's virtio-pci devices sit on the root bus, where auto keeps legacy on.
    from virtio_sim.host.transport.virtio_pci import resolve_modes  # PCI devices only

    modern, legacy = resolve_modes(disable_legacy, disable_modern, pcie_port=False)
    return PciOptions(modern, legacy, vectors, class_code, slot, fn)


def device_props(driver: str) -> dict[str, Prop]:
    """The property table of a device name (``-device NAME,help``); PropertyError for a
    name that is not a device type here."""
    if model_name(driver) not in DEVICE_TYPES:
        raise PropertyError(f"'{driver}' is not a valid device model name")
    return props_for(model_name(driver), driver in PCI_DEVICE_TYPES)


def build_device(spec: DeviceSpec) -> BuiltDevice:
    pci_entry = PCI_DEVICE_TYPES.get(spec.driver)
    table = device_props(spec.driver)
    factory, _own = DEVICE_TYPES[model_name(spec.driver)]
    for k in spec.props:
        if k not in table:
            raise PropertyError(f"Property '{spec.driver}.{k}' not found")
    props = dict(spec.props)
    for k in qdev_props.QDEV_PROPS:  # placement, handled by the machine builder
        props.pop(k, None)
    pci = _pci_options(props, pci_entry[1], spec.driver) if pci_entry else None

    def flag(name: str) -> bool:
        return parse_bool(name, str(qdev_props.take(props, table, name)))

    tf = TransportFeatures(
        event_idx=flag("event_idx"),
        indirect_desc=flag("indirect_desc"),
        access_platform=flag("iommu_platform"),
    )
    validate_ap = flag("x-validate-access-platform")
    dma_mode = str(qdev_props.take(props, table, "x-dma"))
    if dma_mode not in DMA_MODES:
        raise PropertyError(f"Property 'x-dma' doesn't take value '{dma_mode}' ({'|'.join(DMA_MODES)})")
    for prop, (attr, _default) in RING_PROPS.items():
        setattr(tf, attr, flag(prop))
    pol = str(qdev_props.take(props, table, "x-error-policy"))
    try:
        policy = ErrorPolicy(pol)
    except ValueError:
        raise PropertyError(
            f"Property 'x-error-policy' doesn't take value '{pol}' (needs-reset|drop)"
        ) from None
    strict = flag("x-strict-rings")
    lie = props.pop("x-hostile", None)
    model = factory(props)
    if lie is not None:
        from virtio_sim.host.devices import hostile  # only a hostile device needs it

        hostile.install(model, lie)  # hostile device mode: its completions lie
    if pci is not None and pci.legacy and tf.access_platform:
        # QEMU's virtio_pci_device_plugged(): bit 33 needs a modern-only (non-transitional) device.
        raise PropertyError("VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional device")
    return BuiltDevice(
        spec, model, tf, policy, strict, validate_access_platform=validate_ap, dma_mode=dma_mode, pci=pci
    )
