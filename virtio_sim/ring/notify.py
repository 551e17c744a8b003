"""The driver notification value of VIRTIO_F_NOTIFICATION_DATA (virtio 1.4 section 2.9).

With the feature a notification is one 32-bit value: the queue index and where the driver
will put its next buffer (``next_off`` and ``next_wrap``). For a split ring those are the
low 15 bits and bit 15 of the new avail idx; for a packed ring the offset of the next
descriptor slot and the driver's wrap counter. The bit positions live in
specs/rings.toml [notify_data]; both transports (mmio QueueNotify, the PCI notify region)
encode and decode through here so that the layout is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.spec import NOTIFY_DATA


@dataclass(frozen=True)
class NotifyData:
    queue: int
    next_off: int
    next_wrap: int


def encode_notify_data(queue: int, next_off: int, next_wrap: int) -> int:
    if queue & ~NOTIFY_DATA.vq_mask or next_off & ~NOTIFY_DATA.off_mask or next_wrap & ~1:
        raise ValueError(f"notification data out of range: {queue}, {next_off}, {next_wrap}")
    return queue | next_off << NOTIFY_DATA.off_shift | next_wrap << NOTIFY_DATA.wrap_shift


def decode_notify_data(value: int) -> NotifyData:
    return NotifyData(
        queue=value & NOTIFY_DATA.vq_mask,
        next_off=value >> NOTIFY_DATA.off_shift & NOTIFY_DATA.off_mask,
        next_wrap=value >> NOTIFY_DATA.wrap_shift & 1,
    )
