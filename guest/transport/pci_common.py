"""What the modern and the legacy virtio-pci transport drivers share.

* Id matching, as Linux does it: the modern driver takes device ids 0x1000-0x107F (the
  virtio type is the subsystem id below 0x1040, ``id - 0x1040`` above); the legacy driver
  takes only 0x1000-0x103F with revision 0 and the subsystem id as type. A function one
  driver does not take raises :class:`NoDevice` (Linux's -ENODEV), so the other may try.
* The interrupt plan of Linux's vp_find_vqs: with MSI-X, vector 0 for configuration
  changes and one vector per queue when the table has enough entries, otherwise one
  vector shared by every queue; a vector the device refuses (it reads back NO_VECTOR)
  or no MSI-X at all means INTx with the ISR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_sim.guest.link import HostLink
from virtio_sim.guest.pci import GuestMsix, GuestPciBus, GuestPciDevice
from virtio_sim.guest.transport.base import TransportError
from virtio_sim.layouts import ByteOrder
from virtio_sim.spec import PCI

NO_VECTOR = PCI.msix_no_vector
CONFIG_ENTRY = 0
FIRST_QUEUE_ENTRY = 1


class NoDevice(TransportError):
    """This transport driver does not handle the function (Linux's -ENODEV)."""


def modern_device_type(dev: GuestPciDevice) -> int:
    """virtio_pci_modern_probe's id rule; raises NoDevice outside 0x1000-0x107F."""
    if not PCI.device_id_min <= dev.device_id <= PCI.device_id_max:
        raise NoDevice(f"device id {dev.device_id:#06x} is not a virtio id")
    if dev.device_id < PCI.modern_device_id_base:
        return dev.subsystem_id  # transitional: the type is the subsystem id
    return dev.device_id - PCI.modern_device_id_base


def legacy_device_type(dev: GuestPciDevice) -> int:
    """virtio_pci_legacy_probe's id rule: transitional ids and ABI revision 0 only."""
    if not PCI.transitional_device_id_min <= dev.device_id <= PCI.transitional_device_id_max:
        raise NoDevice(f"device id {dev.device_id:#06x} is not a legacy virtio id")
    if dev.revision != PCI.transitional_revision:
        raise NoDevice(f"expected ABI version {PCI.transitional_revision}, got {dev.revision}")
    return dev.subsystem_id


@dataclass
class MsixPlan:
    """Which MSI-X table entry signals what."""

    msix: GuestMsix
    data: list[int]  # the guest vector (message data) of each entry
    active: bool = True
    queues_on: dict[int, list[int]] = field(default_factory=dict)

    def queue_entry(self, index: int) -> int:
        per_queue = FIRST_QUEUE_ENTRY + index
        return per_queue if per_queue < self.msix.entries else FIRST_QUEUE_ENTRY

    def assign(self, index: int) -> int:
        entry = self.queue_entry(index)
        for queues in self.queues_on.values():
            if index in queues:
                queues.remove(index)
        self.queues_on.setdefault(entry, []).append(index)
        return entry


class PciTransportBase:
    """State both PCI transport drivers keep: the function, the link, MSI-X."""

    name = "pci"
    legacy = False

    def __init__(
        self,
        link: HostLink,
        bus: GuestPciBus,
        dev: GuestPciDevice,
        guest_order: ByteOrder = "little",
    ) -> None:
        self.link = link
        self.bus = bus
        self.pci = dev
        self.guest_order = guest_order
        self.device_id = 0
        self.msix: MsixPlan | None = None
        self.irq_notes: list[str] = []

    @property
    def msix_active(self) -> bool:
        return self.msix is not None and self.msix.active

    async def use_msix(self, msix: GuestMsix, data: list[int]) -> None:
        """Enable MSI-X with one guest vector per table entry (before the first reset)."""
        await msix.enable(data)
        self.msix = MsixPlan(msix, data)

    async def fall_back_to_intx(self, why: str) -> None:
        """Linux's last resort in vp_find_vqs: free the vectors and use INTx."""
        if self.msix is not None and self.msix.active:
            self.irq_notes.append(f"MSI-X given up ({why}); using INTx")
            await self.msix.msix.disable()
            self.msix.active = False

    def queues_for_entry(self, entry: int) -> list[int] | None:
        """The queues an MSI-X entry serves; None for the config entry or no MSI-X."""
        if self.msix is None or entry == CONFIG_ENTRY:
            return None
        return list(self.msix.queues_on.get(entry, []))

    def legacy_ring_align(self) -> int | None:
        return None
