"""vhost-user IOTLB: device addresses are IOVAs, translated by what the front-end tells us.

With VIRTIO_F_ACCESS_PLATFORM (bit 33) negotiated and the protocol features REPLY_ACK and
BACKEND_REQ (QEMU 7.2 refuses otherwise: "IOMMU support requires reply-ack and slave-req
protocol features", hw/virtio/vhost-user.c), QEMU stops translating for the back-end:
ring addresses in SET_VRING_ADDR and every descriptor address are I/O virtual addresses
of the guest's IOMMU (intel-iommu on q35 here). The back-end keeps an IOTLB:

* an access to an IOVA with no entry is a *miss*: the back-end sends IOTLB_MSG type MISS
  on the back-end channel; QEMU walks its vIOMMU (vhost_device_iotlb_miss) and answers on
  the main channel with IOTLB_MSG type UPDATE (iova, size, uaddr = QEMU's virtual address
  of the page, perm), which the back-end acks (REPLY_ACK) and then retries;
* INVALIDATE removes entries when the guest unmaps (QEMU's IOMMU notifier);
* a permission the entry does not grant (a device write to a read-only mapping) is an
  access fault: a DmaError for the device's error policy, as QEMU's own devices see.

A miss is not an error: :class:`IotlbMiss` deliberately does not derive from DmaError, so
the ring code does not turn it into a violation; the back-end undoes the half-taken chain
(as Linux's vhost_discard_vq_desc does) and serves the ring again after the UPDATE.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import socket
from dataclasses import dataclass

from virtio_sim import layouts
from virtio_sim.dma import DmaError
from virtio_sim.spec import VU_BACKEND_REQ, VU_FLAGS, VU_IOTLB

IOTLB_LIMIT = 65536  # entries kept; beyond it the oldest go (QEMU re-sends on the next miss)
SEND_TIMEOUT = 5.0  # seconds a back-end channel message may take to be written


class IotlbMiss(Exception):
    """No translation for ``iova`` yet: a MISS went (or goes) to the front-end."""

    def __init__(self, iova: int, write: bool) -> None:
        super().__init__(f"IOTLB miss at IOVA {iova:#x} ({'write' if write else 'read'})")
        self.iova = iova
        self.write = write


@dataclass(frozen=True)
class IotlbEntry:
    iova: int
    size: int
    uaddr: int
    perm: int

    @property
    def end(self) -> int:
        return self.iova + self.size


def _allows(perm: int, write: bool) -> bool:
    return bool(perm & (VU_IOTLB.PERM_WO if write else VU_IOTLB.PERM_RO))


class Iotlb:
    """IOVA -> front-end virtual address entries, sorted by IOVA, non-overlapping."""

    def __init__(self, limit: int = IOTLB_LIMIT) -> None:
        self.limit = limit
        self._starts: list[int] = []
        self._entries: list[IotlbEntry] = []
        self.updates = 0
        self.invalidates = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, iova: int, size: int, uaddr: int, perm: int) -> None:
        if size <= 0 or iova + size > 1 << 64 or uaddr + size > 1 << 64:
            raise ValueError(f"IOTLB update [{iova:#x}, +{size:#x}) -> {uaddr:#x} is not a range")
        if perm & ~VU_IOTLB.PERM_RW or not perm:
            raise ValueError(f"IOTLB update with permission {perm}")
        self.invalidate(iova, size, count=False)  # a newer mapping replaces what it covers
        if len(self._entries) >= self.limit:
            del self._starts[0], self._entries[0]
        at = bisect.bisect_left(self._starts, iova)
        self._starts.insert(at, iova)
        self._entries.insert(at, IotlbEntry(iova, size, uaddr, perm))
        self.updates += 1

    def invalidate(self, iova: int, size: int, *, count: bool = True) -> None:
        """Drop every entry that overlaps [iova, iova+size) (size 0: everything)."""
        if count:
            self.invalidates += 1
        if size == 0:
            self._starts, self._entries = [], []
            return
        end = iova + size
        keep = [e for e in self._entries if e.end <= iova or e.iova >= end]
        self._entries = keep
        self._starts = [e.iova for e in keep]

    def _find(self, iova: int) -> IotlbEntry | None:
        at = bisect.bisect_right(self._starts, iova) - 1
        if at >= 0:
            e = self._entries[at]
            if e.iova <= iova < e.end:
                return e
        return None

    def translate(self, iova: int, length: int, write: bool) -> list[tuple[int, int]]:
        """The front-end virtual ranges behind [iova, iova+length); IotlbMiss at the first
        byte with no entry, DmaError where an entry does not grant the access."""
        out: list[tuple[int, int]] = []
        pos, left = iova, length
        while left > 0:
            e = self._find(pos)
            if e is None:
                self.misses += 1
                raise IotlbMiss(pos, write)
            if not _allows(e.perm, write):
                what = "writes" if write else "reads"
                raise DmaError(iova, length, f"IOTLB entry at {e.iova:#x} does not allow {what}")
                raise DmaError(iova, length, f"IOTLB entry at {e.iova:#x} does not allow {what}")
            n = min(left, e.end - pos)
            out.append((e.uaddr + (pos - e.iova), n))
            pos += n
            left -= n
        return out


class BackendChannel:
    """The back-end -> front-end socket QEMU hands over with SET_BACKEND_REQ_FD.

    Messages on it are small and rare (a miss, a config change); they are written with a
    bounded blocking send from wherever the device work is, and no reply is asked for.
    """

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.settimeout(SEND_TIMEOUT)
        self.sent = 0
        self.failed = ""

    def send(self, request: int, payload: bytes) -> bool:
        if self.failed:
            return False
        header = layouts.vhost_user_header_codec.pack(request, VU_FLAGS.version, len(payload))
        try:
            self.sock.sendall(header + payload)
        except OSError as e:
            self.failed = e.strerror or str(e)
            return False
        self.sent += 1
        return True

    def iotlb_miss(self, iova: int, write: bool) -> bool:
        perm = VU_IOTLB.PERM_WO if write else VU_IOTLB.PERM_RO
        payload = layouts.vhost_iotlb_msg_codec.pack(iova, 0, 0, perm, VU_IOTLB.MISS, bytes(6))
        return self.send(VU_BACKEND_REQ.IOTLB_MSG, payload)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def parse_iotlb_msg(payload: bytes) -> tuple[int, int, int, int, int]:
    """(iova, size, uaddr, perm, type) of an IOTLB_MSG payload (checked by the caller's size)."""
    iova, size, uaddr, perm, kind, _ = layouts.vhost_iotlb_msg_codec.unpack(payload)
    return int(iova), int(size), int(uaddr), int(perm), int(kind)


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
