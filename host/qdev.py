"""QEMU-style ``-device`` options: parse them, check every property, build the device.

``virtio-blk-device,drive=disk.img,event_idx=off`` becomes a configured device model plus
its transport-level settings. Unknown devices and properties and bad values are refused
before anything runs, with QEMU's wording where QEMU has one. Properties that QEMU does
not have carry the ``x-`` prefix QEMU uses for non-standard ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from virtio_sim.host.devices import hostile
from virtio_sim.host.devices.base import DeviceModel, PropertyError, parse_bool
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.host.qdev_netcon import NET_PROPS, SERIAL_PROPS, net_device, serial_device
from virtio_sim.host.transport.virtio_pci import resolve_modes
from virtio_sim.host.virtio_device import ErrorPolicy, TransportFeatures
from virtio_sim.spec import MMIO, PCI_CFG, PCI_CLASS, QEMU_PCI

COMMON_PROPS = (
    "event_idx",
    "indirect_desc",
    "iommu_platform",
    "x-error-policy",
    "x-strict-rings",
    "x-validate-access-platform",
    "x-dma",
    "x-hostile",
)
DMA_MODES = ("honor", "bypass", "translate-always")
PCI_PROPS = ("disable-legacy", "disable-modern", "vectors", "addr")
# Ring-layout and ring-feature properties every virtio device has, with QEMU 7.2's
# defaults (queue_reset is on since 7.2); x- ones have no QEMU equivalent.
RING_PROPS: dict[str, tuple[str, bool]] = {
    "packed": ("packed", False),
    "in_order": ("in_order", False),
    "notification_data": ("notification_data", False),
    "queue_reset": ("queue_reset", True),
    # legacy-only bit 27; hw_compat_2_3 turns it off for machine types up to 2.3
    "any_layout": ("any_layout", True),
    "x-order-platform": ("order_platform", False),
    "x-in-order-batch": ("in_order_batch", False),
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
    parts: list[str] = []
    cur = ""
    i = 0
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


def _rng(props: dict[str, str]) -> DeviceModel:
    seed = props.pop("x-seed", None)
    qs = props.pop("x-queue-size", None)
    try:
        dev = RngDevice(seed=int(seed, 0) if seed is not None else None)
    except ValueError:
        raise PropertyError(f"Property 'x-seed' doesn't take value '{seed}'") from None
    if qs is not None:
        try:
            size = int(qs, 0)
        except ValueError:
            raise PropertyError(f"Property 'x-queue-size' doesn't take value '{qs}'") from None
        if size < 2 or size > MMIO.qemu_queue_num_max or size & (size - 1):
            raise PropertyError(
                f"invalid x-queue-size property ({size}), must be a power of 2 "
                f"in 2..{MMIO.qemu_queue_num_max}"
            )
        dev.queue_max_size = size
    return dev


def _blk(props: dict[str, str]) -> DeviceModel:
    drive = props.pop("drive", None)
    if not drive:
        raise PropertyError("drive property not set")
    readonly = parse_bool("readonly", props.pop("readonly", "off"))
    serial = props.pop("serial", "virtio-sim-blk")
    qs = props.pop("queue-size", "256")
    lbs = props.pop("logical_block_size", "512")
    nq = props.pop("num-queues", "1")
    try:
        queue_size, block_size, num_queues = int(qs, 0), int(lbs, 0), int(nq, 0)
    except ValueError:
        raise PropertyError("queue-size, logical_block_size and num-queues take integers") from None
    if queue_size < 2 or queue_size > 1024 or queue_size & (queue_size - 1):
        raise PropertyError(f"invalid queue-size property ({queue_size}), must be a power of 2 in 2..1024")
    # QEMU's virtio-blk switches (their 7.2 defaults; machine types before change them)
    switches = {
        name: parse_bool(name, props.pop(name, "on" if default else "off"))
        for name, default in BLK_SWITCHES.items()
    }
    return BlkDevice(
        drive,
        read_only=readonly,
        serial=serial,
        queue_size=queue_size,
        logical_block_size=block_size,
        scsi=switches["scsi"],
        config_wce=switches["config-wce"],
        discard=switches["discard"],
        write_zeroes=switches["write-zeroes"],
        seg_max_adjust=switches["seg-max-adjust"],
        num_queues=num_queues,
    )


#: virtio-blk's on/off properties with QEMU 7.2's defaults
BLK_SWITCHES = {
    "scsi": False,
    "config-wce": True,
    "discard": True,
    "write-zeroes": True,
    "seg-max-adjust": True,
}


# name -> (factory, properties it accepts besides the common ones)
DEVICE_TYPES: dict[str, tuple[Callable[[dict[str, str]], DeviceModel], tuple[str, ...]]] = {
    "virtio-rng-device": (_rng, ("x-seed", "x-queue-size")),
    "virtio-blk-device": (
        _blk,
        ("drive", "readonly", "serial", "queue-size", "logical_block_size", "num-queues", *BLK_SWITCHES),
    ),
    "virtio-net-device": (net_device, NET_PROPS),
    "virtio-serial-device": (serial_device, SERIAL_PROPS),
}


# virtio-*-pci: the same device models behind a virtio-pci proxy (name -> model, PCI class)
PCI_DEVICE_TYPES: dict[str, tuple[str, int]] = {
    "virtio-blk-pci": ("virtio-blk-device", PCI_CLASS.storage_scsi),
    "virtio-rng-pci": ("virtio-rng-device", PCI_CLASS.others),
    "virtio-net-pci": ("virtio-net-device", PCI_CLASS.network_ethernet),
    "virtio-serial-pci": ("virtio-serial-device", PCI_CLASS.communication_other),
}


def model_name(driver: str) -> str:
    """The bus-independent model behind a device name (``virtio-blk-pci`` -> ``-device``)."""
    entry = PCI_DEVICE_TYPES.get(driver)
    return entry[0] if entry else driver


def pci_name(driver: str) -> str | None:
    """The virtio-pci flavour of a model name, if there is one."""
    return next((k for k, (m, _) in PCI_DEVICE_TYPES.items() if m == driver), None)


def _pci_addr(text: str) -> tuple[int, int]:
    """QEMU's ``addr=SLOT[.FN]`` (hex)."""
    slot_s, _, fn_s = text.partition(".")
    try:
        slot, fn = int(slot_s, 16), int(fn_s or "0", 16)
    except ValueError:
        raise PropertyError(f"Property 'addr' doesn't take value '{text}'") from None
    if not 0 <= slot < PCI_CFG.devices_per_bus or not 0 <= fn < PCI_CFG.functions_per_device:
        raise PropertyError(f"Property 'addr' doesn't take value '{text}'")
    return slot, fn


def _pci_options(props: dict[str, str], class_code: int) -> PciOptions:
    disable_legacy = props.pop("disable-legacy", "auto").lower()
    if disable_legacy in ("true", "yes"):
        disable_legacy = "on"
    if disable_legacy in ("false", "no"):
        disable_legacy = "off"
    disable_modern = parse_bool("disable-modern", props.pop("disable-modern", "off"))
    vec = props.pop("vectors", str(QEMU_PCI.default_vectors))
    try:
        vectors = int(vec, 0)
    except ValueError:
        raise PropertyError(f"Property 'vectors' doesn't take value '{vec}'") from None
    if vectors < 0:
        raise PropertyError(f"Property 'vectors' doesn't take value '{vec}'")
    addr = props.pop("addr", None)
    slot, fn = _pci_addr(addr) if addr is not None else (None, 0)
    # The machine's virtio-pci devices sit on the root bus, where auto keeps legacy on.
    modern, legacy = resolve_modes(disable_legacy, disable_modern, pcie_port=False)
    return PciOptions(modern, legacy, vectors, class_code, slot, fn)


def build_device(spec: DeviceSpec) -> BuiltDevice:
    pci_entry = PCI_DEVICE_TYPES.get(spec.driver)
    entry = DEVICE_TYPES.get(model_name(spec.driver))
    if entry is None:
        raise PropertyError(f"'{spec.driver}' is not a valid device model name")
    factory, own = entry
    for k in spec.props:
        if (
            k not in own
            and k not in COMMON_PROPS
            and k not in RING_PROPS
            and not (pci_entry and k in PCI_PROPS)
        ):
            raise PropertyError(f"Property '{spec.driver}.{k}' not found")
    props = dict(spec.props)
    pci = _pci_options(props, pci_entry[1]) if pci_entry else None
    tf = TransportFeatures(
        event_idx=parse_bool("event_idx", props.pop("event_idx", "on")),
        indirect_desc=parse_bool("indirect_desc", props.pop("indirect_desc", "on")),
        access_platform=parse_bool("iommu_platform", props.pop("iommu_platform", "off")),
    )
    validate_ap = parse_bool("x-validate-access-platform", props.pop("x-validate-access-platform", "on"))
    dma_mode = props.pop("x-dma", "honor")
    if dma_mode not in DMA_MODES:
        raise PropertyError(f"Property 'x-dma' doesn't take value '{dma_mode}' ({'|'.join(DMA_MODES)})")
    for prop, (attr, default) in RING_PROPS.items():
        setattr(tf, attr, parse_bool(prop, props.pop(prop, "on" if default else "off")))
    pol = props.pop("x-error-policy", ErrorPolicy.NEEDS_RESET.value)
    try:
        policy = ErrorPolicy(pol)
    except ValueError:
        raise PropertyError(
            f"Property 'x-error-policy' doesn't take value '{pol}' (needs-reset|drop)"
        ) from None
    strict = parse_bool("x-strict-rings", props.pop("x-strict-rings", "on"))
    lie = props.pop("x-hostile", None)
    model = factory(props)
    if lie is not None:
        hostile.install(model, lie)  # hostile device mode: its completions lie
    if pci is not None and pci.legacy and tf.access_platform:
        # QEMU's virtio_pci_device_plugged(): bit 33 needs a modern-only (non-transitional) device.
        raise PropertyError("VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional device")
    return BuiltDevice(
        spec, model, tf, policy, strict, validate_access_platform=validate_ap, dma_mode=dma_mode, pci=pci
    )
