"""Turn a device generation (a DeviceProfile) into the QEMU options it would accept.

A matrix cell asks for a device type on a transport with some settings (iommu_platform,
ring layout). A QEMU generation either has the property and the transport mode or it
does not; in the latter case QEMU refuses to start, and so does this, with QEMU's
wording. What the profile says about behaviour (validating bit 33, how DMA meets an
IOMMU, whether the bit is offered at all) becomes ``x-`` properties of the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.devices import KINDS
from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.qdev import RING_PROPS
from virtio_sim.profiles import DeviceProfile


@dataclass(frozen=True)
class DeviceRequest:
    device_key: str  # "blk", "rng"
    transport: str  # one of virtio_sim.profiles.TRANSPORT_NAMES
    iommu_platform: bool = False
    packed: bool = False


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def device_option(req: DeviceRequest, profile: DeviceProfile, *, abi: bool = True) -> str:
    """The ``-device`` string for ``req`` on a ``profile`` device, or PropertyError.

    With ``abi`` (our models), the profile's per-device property values (what that QEMU
    version's machine type sets: queue-size, scsi, discard, any_layout, ...) are spelled
    out; without (QEMU's own devices on the matching compat machine) they are left to
    the machine type, so that its hw_compat tables decide them.
    """
    pci = req.transport.startswith("pci-")
    kind = KINDS[req.device_key]
    name = kind.pci_name if pci else kind.device_name
    props: dict[str, str] = {}

    def need(prop: str, owner: str = name) -> None:
        if prop not in profile.properties:
            raise PropertyError(f"Property '{owner}.{prop}' not found")

    if req.transport == "mmio-v2" and not profile.mmio_v2:
        need("force-legacy", "virtio-mmio")
    if pci:
        if req.transport in ("pci-modern", "pci-transitional") and not profile.pci_modern:
            need("disable-modern")
        if req.transport == "pci-modern":
            need("disable-legacy")
            props["disable-legacy"] = "on"
            props["disable-modern"] = "off"
        elif req.transport == "pci-transitional":
            if "disable-legacy" in profile.properties:
                props["disable-legacy"] = "off"
                props["disable-modern"] = "off"
        elif "disable-modern" in profile.properties:  # pci-legacy
            props["disable-modern"] = "on"
            props["disable-legacy"] = "off"
        elif not profile.pci_modern:
            # Before virtio 1.0 the device simply has no modern interface (no property yet).
            props["disable-modern"] = "on"
    if req.iommu_platform:
        need("iommu_platform")
        if profile.access_platform_offer == "property":
            props["iommu_platform"] = "on"
    if abi:
        # The machine's global defaults (a confidential-guest machine's iommu_platform=on,
        # disable-legacy=on) apply where the cell left the property unset.
        for prop, value in profile.machine_globals.items():
            if prop == "disable-legacy" and not pci:
                continue
            props.setdefault(prop, _onoff(bool(value)))
    if req.packed:
        need("packed")
        props["packed"] = "on"
    for prop in ("event_idx", "indirect_desc"):
        if prop in profile.defaults:
            props[prop] = _onoff(bool(profile.defaults[prop]))
    if abi:
        for prop, value in profile.device_properties.get(req.device_key, {}).items():
            props[prop] = _onoff(value) if isinstance(value, bool) else str(value)
    # Ring features this generation did not have are off, whatever today's defaults are;
    # a property the generation lacks is only spelled out when our model's default differs
    # (QEMU 7.2 itself refuses in_order= and notification_data=, which came later).
    for prop in ("queue_reset", "in_order", "notification_data"):
        value = bool(profile.defaults.get(prop, False))
        if prop in profile.properties or value != RING_PROPS[prop][1]:
            props[prop] = _onoff(value)
    props["x-validate-access-platform"] = _onoff(profile.validate_access_platform)
    props["x-dma"] = profile.dma
    return ",".join([name, *(f"{k}={v}" for k, v in props.items())])


#: the -device model QEMU would need for ``--iommu KIND`` on a bus (PCI or not)
IOMMU_DEVICE_MODELS = {
    ("virtio-iommu", True): "virtio-iommu-pci",
    ("virtio-iommu", False): "virtio-iommu-device",
}


def check_iommu_model(kind: str, pci_bus: bool, profile: DeviceProfile) -> None:
    """Refuse an IOMMU the device generation does not have, as that QEMU would: an
    unknown -device name (virtio-iommu-pci arrived in QEMU 5.0)."""
    if kind == "none":
        return
    model = IOMMU_DEVICE_MODELS.get((kind, pci_bus))
    if model is None or model not in profile.iommu_models:
        name = model or kind
        raise PropertyError(f"'{name}' is not a valid device model name")
