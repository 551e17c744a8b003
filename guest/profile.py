"""A driver generation (DriverProfile data) as the guest's policy objects."""

from __future__ import annotations

from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.guest.virtio import DriverPolicy
from virtio_sim.profiles import DriverProfile


def guest_policy(profile: DriverProfile) -> GuestPolicy:
    return GuestPolicy(
        driver=DriverPolicy(
            known_features=profile.transport_features,
            features_ok=profile.features_ok,
            device_features=dict(profile.device_features),
            restricted_memory=profile.restricted_memory,
            refuse_unrestricted=profile.refuse_unrestricted,
            blk_discard=profile.blk_discard,
            drivers=frozenset(profile.device_features),
            transport_only=dict(profile.transport_only),
            needs_reset=profile.needs_reset,
        ),
        mmio_versions=profile.mmio_versions,
        guest_order="big" if profile.endianness == "big" else "little",
        dma_api=profile.dma_api,
        iommu_firmware=profile.iommu_firmware,
        # A pre-1.0 kernel has only the legacy virtio-pci driver: it matches 0x1000-0x103F rev 0.
        pci_modern=profile.pci_match != "transitional-only",
        acpi_hids=profile.acpi_hids,
        dt_compatibles=profile.dt_compatibles,
    )
