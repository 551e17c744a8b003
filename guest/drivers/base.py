"""What a guest device driver declares: the device type it binds and the features it knows."""

from __future__ import annotations

from typing import ClassVar

from virtio_sim.guest.virtio import VirtioGuestDevice


class DeviceProtocolError(Exception):
    """The device answered in a way the driver cannot accept (a refused control command,
    a broken receive protocol): a run reports DEVICE_ERROR."""


class DriverProbeError(Exception):
    """The driver looked at the device and refused it (Linux's probe returning an error)."""


class BlkIoError(Exception):
    """A virtio-blk request completed with an error status (here, not beside the blk
    driver, so a run's outcome mapping catches it without loading that driver)."""

    def __init__(self, op: str, status: int) -> None:
        super().__init__(f"{op} completed with status {status}")
        self.status = status


class IommuRequestError(Exception):
    """A virtio-iommu request the device answered with an error status. Defined here,
    not beside the iommu driver, so the probe can catch it without loading that driver
    (a run without an IOMMU never does)."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what} failed with status {status}")
        self.status = status


class GuestDriver:
    #: key into specs/devices.toml
    type_key: ClassVar[str]
    #: device-type feature bits this driver knows (transport bits come from the profile)
    device_feature_mask: ClassVar[int] = 0

    def __init__(self, dev: VirtioGuestDevice) -> None:
        self.dev = dev
        #: the other bound drivers of the same device type, for workloads that use
        #: several devices at once (net-pair); filled in by the boot code
        self.peers: list[GuestDriver] = []

    async def probe(self) -> None:
        """Read config, set up queues (between FEATURES_OK and DRIVER_OK)."""
        raise NotImplementedError

    async def read_config_stable(self, fields: list[tuple[int, int]]) -> list[int]:
        """Read several config fields atomically: retry while config_generation moves."""
        t = self.dev.transport
        for _ in range(64):
            before = await t.config_generation()
            values = [await t.read_config(off, size) for off, size in fields]
            if await t.config_generation() == before:
                return values
        raise DriverProbeError("config generation never settled")
