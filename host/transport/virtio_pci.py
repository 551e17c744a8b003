"""A virtio device as one PCI function (QEMU's VirtIOPCIProxy).

The function carries the modern interface (virtio capabilities pointing into memory
BAR 4, :mod:`host.transport.pci_modern`), the legacy interface (I/O BAR 0,
:mod:`host.transport.pci_legacy`), or both: a *transitional* device. What both interfaces
share lives here: the PCI identity (transitional ids 0x1000-0x103F with revision 0 and the
device type as subsystem id, or 0x1040 + type with revision 1), the ISR status byte and the
INTx pin it drives, the MSI-X vectors of the config change and of every queue, and the
queue selector (one register seen through either interface, as in QEMU).

QEMU's property rules are kept: ``disable-legacy`` (on/off/auto; auto keeps legacy on a
root bus) and ``disable-modern``, and a device with neither interface is refused when it
is created.
"""

from __future__ import annotations

from virtio_sim.host.devices.base import PropertyError
from virtio_sim.host.pci import Msix, PciFunction
from virtio_sim.host.transport.pci_legacy import LegacyInterface
from virtio_sim.host.transport.pci_modern import ModernInterface
from virtio_sim.host.virtio_device import InterruptSink, VirtioDevice
from virtio_sim.layouts import ByteOrder
from virtio_sim.spec import MSIX, PCI, PCI_CMD, PCI_ISR, PCI_PIN, QEMU_PCI, STATUS

NO_VECTOR = PCI.msix_no_vector
CONFIG_VECTOR = -1  # the "queue" index an observer hears for config_msix_vector
NEITHER_MODE = (
    "device cannot work as neither modern nor legacy mode is enabled "
    "(Set either disable-modern or disable-legacy to off)"
)
DISABLE_LEGACY_VALUES = ("on", "off", "auto")


def resolve_modes(disable_legacy: str, disable_modern: bool, *, pcie_port: bool) -> tuple[bool, bool]:
    """QEMU's virtio_pci_realize: (modern, legacy), or PropertyError for neither."""
    if disable_legacy not in DISABLE_LEGACY_VALUES:
        raise PropertyError(f"Parameter 'disable-legacy' does not accept value '{disable_legacy}'")
    # auto: a root-bus (integrated) device stays transitional, one behind a port does not
    legacy = not pcie_port if disable_legacy == "auto" else disable_legacy == "off"
    modern = not disable_modern
    if not modern and not legacy:
        raise PropertyError(NEITHER_MODE)
    return modern, legacy


class VirtioPciProxy(InterruptSink):
    def __init__(
        self,
        device: VirtioDevice,
        *,
        modern: bool,
        legacy: bool,
        vectors: int,
        class_code: int,
        name: str = "",
    ) -> None:
        if not modern and not legacy:
            raise PropertyError(NEITHER_MODE)
        dtype = device.type
        if legacy:
            if dtype.pci_transitional_id is None:
                raise PropertyError("device is modern-only, use disable-legacy=on")
            device_id = dtype.pci_transitional_id
            revision = PCI.transitional_revision
            subsystem_id = dtype.id
        else:
            device_id = PCI.modern_device_id_base + dtype.id
            revision = PCI.modern_revision_min
            subsystem_id = QEMU_PCI.subsystem_id_modern
        self.device = device
        device.modern_only = not legacy
        self.fn = PciFunction(
            vendor_id=PCI.vendor_id,
            device_id=device_id,
            class_code=class_code,
            revision=revision,
            subsystem_vendor_id=PCI.vendor_id,
            subsystem_id=subsystem_id,
            interrupt_pin=PCI_PIN.INTA,
            name=name or f"virtio-{dtype.key}-pci",
        )
        # QEMU's virtio_pci_pre_plugged: VERSION_1 with the modern interface only, and
        # the "bad feature" bit that only a driver acking everything would take.
        device.transport_features.version_1 = modern
        device.transport_features.bad_feature = True
        device.model.plugged(modern)  # may refuse (virtio-blk scsi=on with virtio 1.0)
        device.sink = self
        self.isr = 0
        self.queue_sel = 0
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * len(device.queues)
        self.modern: ModernInterface | None = ModernInterface(self) if modern else None
        self.legacy: LegacyInterface | None = LegacyInterface(self) if legacy else None
        if self.modern:
            self.modern.register()
        if vectors > QEMU_PCI.max_vectors or vectors > MSIX.max_vectors:
            self.note(f"unable to init msix vectors to {vectors}; running without MSI-X")
            vectors = 0
        if vectors:
            Msix(self.fn, vectors, QEMU_PCI.msix_bar)
        if self.legacy:
            self.legacy.register()
        self.fn.on_command_change = self._command_changed

    # -- helpers for the two interfaces -------------------------------------------------

    def note(self, message: str) -> None:
        self.device.note(f"pci: {message}")

    @property
    def msix_enabled(self) -> bool:
        return self.fn.msix is not None and self.fn.msix.enabled

    def _vector_ok(self, vector: int) -> int:
        """QEMU's msix_vector_use: a vector the table has, else NO_VECTOR (the driver reads
        the register back to find out)."""
        if vector == NO_VECTOR:
            return NO_VECTOR
        if self.fn.msix is None or not 0 <= vector < self.fn.msix.vectors:
            self.device.misuse(
                "pci-msix-range", f"pci: MSI-X vector {vector} is not in the table; reads back NO_VECTOR"
            )
            return NO_VECTOR
        return vector

    def set_config_vector(self, vector: int) -> None:
        if self.device.observer is not None:
            self.device.observer.on_queue_write(CONFIG_VECTOR, "msix_vector", vector, False)
        self.config_vector = self._vector_ok(vector)

    def read_config_vector(self) -> int:
        if self.device.observer is not None:
            self.device.observer.on_queue_read(CONFIG_VECTOR, "msix_vector", self.config_vector)
        return self.config_vector

    def read_queue_vector(self) -> int:
        value = self.queue_vector()
        if self.device.observer is not None:
            self.device.observer.on_queue_read(self.queue_sel, "msix_vector", value)
        return value

    def set_queue_vector(self, vector: int) -> None:
        q = self.device.queue(self.queue_sel)
        if q is None:
            self.note(f"MSI-X vector for nonexistent queue {self.queue_sel} ignored")
            return
        if self.device.observer is not None:
            self.device.observer.on_queue_write(q.index, "msix_vector", vector, q.ready)
        self.queue_vectors[q.index] = self._vector_ok(vector)

    def queue_vector(self) -> int:
        q = self.device.queue(self.queue_sel)
        return self.queue_vectors[q.index] if q else NO_VECTOR

    def select_queue(self, value: int) -> None:
        if value < QEMU_PCI.queue_max:
            self.queue_sel = value
        else:
            self.note(f"queue select {value} is beyond {QEMU_PCI.queue_max} (ignored)")

    def write_status(self, value: int) -> None:
        self.device.write_status(value & 0xFF)
        if self.device.status == 0:
            self.reset()

    def reset(self) -> None:
        """QEMU's virtio_pci_reset: the device, ISR, vectors and the queue selector."""
        if self.device.status:
            self.device.write_status(0)
        self.isr = 0
        self.fn.set_intx(False)
        self.queue_sel = 0
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * len(self.device.queues)
        if self.modern:
            self.modern.reset_registers()

    def read_isr(self) -> int:
        """Reading the ISR returns and clears it, and drops the INTx line."""
        value = self.isr
        self.isr = 0
        self.fn.set_intx(False)
        return value

    def read_device_config(self, offset: int, size: int, order: ByteOrder) -> int:
        value = self.device.read_config(offset, size, order)
        if value is None:
            self.note(f"device config read of {size} bytes at {offset:#x} is out of range")
            return (1 << (8 * size)) - 1  # QEMU's virtio_config_read*: all ones
        return value

    def write_device_config(self, offset: int, size: int, value: int, order: ByteOrder) -> None:
        if offset < 0 or offset + size > self.device.config_size():
            self.note(f"device config write of {size} bytes at {offset:#x} is out of range")
            return
        self.device.write_config(offset, size, value, order)

    # -- InterruptSink ---------------------------------------------------------------------

    def queue_interrupt(self, index: int) -> None:
        self.isr |= PCI_ISR.QUEUE
        vector = self.queue_vectors[index] if 0 <= index < len(self.queue_vectors) else NO_VECTOR
        self._notify(vector)

    def config_interrupt(self) -> None:
        # QEMU's virtio_notify_config sets both ISR bits (0x3).
        self.isr |= PCI_ISR.QUEUE | PCI_ISR.CONFIG
        self._notify(self.config_vector)

    def _notify(self, vector: int) -> None:
        """QEMU's virtio_pci_notify: a vector when MSI-X is on, else INTx = ISR bit 0."""
        if self.fn.msix is not None and self.fn.msix.enabled:
            if vector != NO_VECTOR:
                self.fn.msix.notify(vector)
            return
        self.fn.set_intx(bool(self.isr & PCI_ISR.QUEUE))

    # -- PCI side effects ---------------------------------------------------------------------

    def _command_changed(self, old: int, new: int) -> None:
        lost_master = old & PCI_CMD.MASTER and not new & PCI_CMD.MASTER
        if lost_master and self.device.status & STATUS.DRIVER_OK:
            # QEMU's virtio_write_config: taking bus mastering away stops the device.
            self.note("bus mastering disabled: DRIVER_OK dropped")
            self.device.status &= ~STATUS.DRIVER_OK
