"""What split and packed rings share: addresses, negotiated ring features, limits, errors.

Why a module of its own: both formats (and the driver watch, the fuzz harness and the
mock ring) need these, and neither format should import the other to get them. The
queue classes take one :class:`RingFeatures` value, decided once at queue setup from the
negotiated bits, instead of a boolean per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtio_sim.spec import CHAIN, LIMITS, F

IDX_MASK = 0xFFFF  # split ring indices are free-running 16-bit counters
CHAIN_BYTES_LIMIT = CHAIN.max_bytes  # spec 2.7.5 / 2.8.7: a chain must not exceed 2^32 bytes
# specs/limits.toml (QEMU's VIRTQUEUE_MAX_SIZE): the longest indirect table a device takes
INDIRECT_TABLE_LIMIT = LIMITS.indirect.max_entries


@dataclass(frozen=True, slots=True)
class RingAddresses:
    """The three areas a transport names: descriptor table/ring, driver area (split: avail
    ring; packed: driver event suppression), device area (split: used ring; packed:
    device event suppression)."""

    desc: int
    avail: int
    used: int


@dataclass(frozen=True, slots=True)
class RingFeatures:
    """The ring features one queue runs with, decided once when the queue is set up.

    ``event_idx``, ``indirect`` and ``in_order`` are the negotiated VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC and VIRTIO_F_IN_ORDER bits. ``batch_in_order`` (device only,
    QEMU's in-order batching, ``x-in-order-batch``) writes one used entry for a run of
    in-order completions. ``strict`` (device only) enforces the rules a lenient device
    lets pass (zero-length descriptors, INDIRECT without the feature, IN_ORDER slots,
    packed ring alignment). A driver ring takes indirect tables from its pool, so it
    reads ``event_idx`` and ``in_order`` only.
    """

    event_idx: bool = False
    indirect: bool = False
    in_order: bool = False
    batch_in_order: bool = False
    strict: bool = True

    @classmethod
    def from_bits(cls, features: int, *, batch_in_order: bool = False, strict: bool = True) -> RingFeatures:
        """The ring features of a negotiated feature word."""
        return cls(
            event_idx=bool(features >> F.EVENT_IDX & 1),
            indirect=bool(features >> F.INDIRECT_DESC & 1),
            in_order=bool(features >> F.IN_ORDER & 1),
            batch_in_order=batch_in_order,
            strict=strict,
        )


NO_FEATURES = RingFeatures()  # a queue without negotiated ring features (strict)


class QueueFullError(Exception):
    """Not enough free descriptors for the chain."""


__all__ = [
    "CHAIN_BYTES_LIMIT",
    "IDX_MASK",
    "INDIRECT_TABLE_LIMIT",
    "NO_FEATURES",
    "QueueFullError",
    "RingAddresses",
    "RingFeatures",
]
