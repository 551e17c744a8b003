"""virtio-net rules that both sides must compute the same way.

The device model and the guest driver each decide the virtio_net_hdr size from the
negotiated features, parse MAC addresses, classify destination addresses and complete
partial checksums. Keeping these in one role-neutral module means a disagreement between
host and guest can only come from the features, never from two copies of a rule.
"""

from __future__ import annotations

from virtio_sim.layouts import NET_HDR_LEGACY_SIZE, NET_HDR_SIZE
from virtio_sim.spec import NET, NET_F, F


def net_hdr_len(features: int) -> int:
    """Size of virtio_net_hdr: 12 with VERSION_1 or MRG_RXBUF, else the legacy 10 bytes.

    (HASH_REPORT and the tunnel/IPsec extensions are not offered by this simulator.)
    """
    if features >> F.VERSION_1 & 1 or features >> NET_F.MRG_RXBUF & 1:
        return NET_HDR_SIZE
    return NET_HDR_LEGACY_SIZE


def has_num_buffers(features: int) -> bool:
    return net_hdr_len(features) == NET_HDR_SIZE


BROADCAST = b"\xff" * NET.eth_alen


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` -> 6 bytes; ValueError with the reason otherwise."""
    parts = text.split(":")
    if len(parts) != NET.eth_alen or not all(len(p) == 2 for p in parts):
        raise ValueError(f"'{text}' is not a MAC address (xx:xx:xx:xx:xx:xx)")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"'{text}' is not a MAC address (xx:xx:xx:xx:xx:xx)") from None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def nth_mac(base: str, n: int) -> str:
    """QEMU's default NIC addresses: the base address with its last byte counted up."""
    raw = bytearray(parse_mac(base))
    raw[-1] = (raw[-1] + n) & 0xFF
    return format_mac(bytes(raw))


def is_multicast(mac: bytes) -> bool:
    """The group bit (broadcast is multicast too)."""
    return bool(mac[0] & 1)


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit ones'-complement sum of big-endian words (an odd tail is zero-padded)."""
    view = bytes(data)
    if len(view) & 1:
        view += b"\0"
    total = initial + sum(int.from_bytes(view[i : i + 2], "big") for i in range(0, len(view), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def complete_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> bool:
    """Finish a NEEDS_CSUM frame in place (what a device does for a driver without
    GUEST_CSUM): the field at csum_start+csum_offset holds the pseudo-header sum, and the
    ones' complement of the sum from csum_start to the end goes there. False if the
    offsets do not fit the frame (nothing is changed then).
    """
    where = csum_start + csum_offset
    if csum_start >= len(frame) or where + 2 > len(frame):
        return False
    folded = ones_complement_sum(frame[csum_start:])
    frame[where : where + 2] = ((~folded) & 0xFFFF).to_bytes(2, "big")
    return True


def checksum_ok(frame: bytes, csum_start: int, pseudo: int) -> bool:
    """A receiver's check: the pseudo-header sum plus the ones'-complement sum from
    csum_start (completed checksum included) must come out 0xffff."""
    return ones_complement_sum(frame[csum_start:], pseudo) == 0xFFFF
