"""What a checking device may watch: every driver-visible event, as callbacks.

A :class:`DriverObserver` attached to a :class:`~host.virtio_device.VirtioDevice`
(``device.observer``) is called by the device core and by the transports on each event a
driver causes: status writes and reads, feature window reads and writes, queue register
writes (size, addresses, enable / QueueReady / PFN, queue reset), notifications (with the
width of the access), device config writes, ring violations the device found while
serving a queue, and register misuse the transports refused (wrong width, read-only,
write-only, undefined offsets, each as a short *kind*). The vhost-user back-end calls the
same callbacks for what it can see of the front-end's driver.

The observer reads the rings itself through a :class:`RingSource`: at a notification it
is called *before* the device serves the queue, so it sees what the driver published
before the device consumed it.

With no observer attached every hook is one ``is None`` test: checking costs nothing when
nobody checks. Observers never change what the device does.
"""

from __future__ import annotations

from typing import Protocol

from virtio_sim.ring.view import RingSource, RingView

__all__ = ["DriverObserver", "RingSource", "RingView"]


class DriverObserver(Protocol):
    """Callbacks a checking device receives; see the module docstring for when."""

    def on_status_write(self, old: int, value: int, new: int) -> None:
        """``old`` status, the ``value`` written, the ``new`` status the device kept."""

    def on_status_read(self, value: int) -> None: ...

    def on_features_read(self, window: int, value: int) -> None:
        """The driver read 32 offered feature bits of ``window`` (0: bits 0-31)."""

    def on_features_write(self, window: int, value: int) -> None: ...

    def on_queue_write(self, index: int, field: str, value: int, ready: bool) -> None:
        """A queue register write (``field``: size, desc, driver, device, enable, pfn,
        align, reset); ``ready`` is whether the queue was live before the write."""

    def on_queue_read(self, index: int, field: str, value: int) -> None:
        """A queue register read (ready, reset, size_max, pfn)."""

    def on_notify(self, index: int, value: int, width: int) -> None:
        """An available-buffer notification for queue ``index`` with the raw ``value``
        written and the access ``width`` in bytes (0: an eventfd kick, no register)."""

    def on_config_read(self, offset: int, size: int) -> None: ...

    def on_config_write(self, offset: int, size: int, value: int) -> None: ...

    def on_ring_violation(self, index: int, violation: str, message: str) -> None:
        """The device refused something while serving queue ``index`` (RingError class)."""

    def on_register(self, op: str, name: str, value: int) -> None:
        """virtio-mmio: a well-formed ``op`` ("read"/"write") of register ``name``."""

    def on_misuse(self, kind: str, message: str) -> None:
        """A register access the transport refused; ``kind`` names the class of misuse."""
