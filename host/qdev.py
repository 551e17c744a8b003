"""QEMU-style ``-device`` options: parse them, check every property, build the device.

``virtio-blk-device,drive=disk.img,event_idx=off`` becomes a configured device model plus
its transport-level settings. Unknown devices and properties and bad values are refused
before anything runs, with QEMU's wording where QEMU has one. Properties that QEMU does
not have carry the ``x-`` prefix QEMU uses for non-standard ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from host.devices.base import DeviceModel, PropertyError, parse_bool
from host.devices.blk import BlkDevice
from host.devices.rng import RngDevice
from host.virtio_device import ErrorPolicy, TransportFeatures

COMMON_PROPS = ("event_idx", "indirect_desc", "x-error-policy", "x-strict-rings")
# Ring-layout and ring-feature properties every virtio device has, with QEMU 7.2's
# defaults (queue_reset is on since 7.2); x- ones have no QEMU equivalent.
RING_PROPS: dict[str, tuple[str, bool]] = {
    "packed": ("packed", False),
    "in_order": ("in_order", False),
    "notification_data": ("notification_data", False),
    "queue_reset": ("queue_reset", True),
    "x-order-platform": ("order_platform", False),
    "x-in-order-batch": ("in_order_batch", False),
}


@dataclass
class DeviceSpec:
    driver: str
    props: dict[str, str] = field(default_factory=dict)


@dataclass
class BuiltDevice:
    spec: DeviceSpec
    model: DeviceModel
    transport_features: TransportFeatures
    policy: ErrorPolicy
    strict_rings: bool


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


def _rng(props: dict[str, str]) -> DeviceModel:
    seed = props.pop("x-seed", None)
    try:
        return RngDevice(seed=int(seed, 0) if seed is not None else None)
    except ValueError:
        raise PropertyError(f"Property 'x-seed' doesn't take value '{seed}'") from None


def _blk(props: dict[str, str]) -> DeviceModel:
    drive = props.pop("drive", None)
    if not drive:
        raise PropertyError("drive property not set")
    readonly = parse_bool("readonly", props.pop("readonly", "off"))
    serial = props.pop("serial", "virtio-sim-blk")
    qs = props.pop("queue-size", "256")
    lbs = props.pop("logical_block_size", "512")
    try:
        queue_size, block_size = int(qs, 0), int(lbs, 0)
    except ValueError:
        raise PropertyError("queue-size and logical_block_size take integers") from None
    if queue_size < 2 or queue_size > 1024 or queue_size & (queue_size - 1):
        raise PropertyError(
            f"invalid queue-size property ({queue_size}), must be a power of 2 in 2..1024"
        )
    return BlkDevice(
        drive,
        read_only=readonly,
        serial=serial,
        queue_size=queue_size,
        logical_block_size=block_size,
    )


# name -> (factory, properties it accepts besides the common ones)
DEVICE_TYPES: dict[str, tuple[Callable[[dict[str, str]], DeviceModel], tuple[str, ...]]] = {
    "virtio-rng-device": (_rng, ("x-seed",)),
    "virtio-blk-device": (
        _blk,
        ("drive", "readonly", "serial", "queue-size", "logical_block_size"),
    ),
}


def build_device(spec: DeviceSpec) -> BuiltDevice:
    entry = DEVICE_TYPES.get(spec.driver)
    if entry is None:
        raise PropertyError(f"'{spec.driver}' is not a valid device model name")
    factory, own = entry
    for k in spec.props:
        if k not in own and k not in COMMON_PROPS and k not in RING_PROPS:
            raise PropertyError(f"Property '{spec.driver}.{k}' not found")
    props = dict(spec.props)
    tf = TransportFeatures(
        event_idx=parse_bool("event_idx", props.pop("event_idx", "on")),
        indirect_desc=parse_bool("indirect_desc", props.pop("indirect_desc", "on")),
    )
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
    model = factory(props)
    return BuiltDevice(spec, model, tf, policy, strict)
