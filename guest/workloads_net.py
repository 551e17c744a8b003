"""Network workloads: every frame checked end to end, every drop proven by a marker.

``net-loopback`` needs a device on the loopback backend: frames of random sizes and
contents come back intact on the queue pair they left from. A frame the device must drop
(too big for a receive buffer without MRG_RXBUF, refused by the receive filter) is
followed by a marker frame that must be the next one received, so a drop is proven
without waiting for a timeout. ``net-pair`` needs two net devices on one switch.
"""

from __future__ import annotations

import random
from typing import Any

from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.drivers.net import NetDriver, RxFrame
from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.netproto import BROADCAST, checksum_ok, format_mac
from virtio_sim.spec import NET, NET_F, NET_HDR_F

DEFAULT_SEED = 0x1005
RANDOM_FRAMES = 24
BURST = 8
FOREIGN_MAC = bytes.fromhex("021122334455")  # unicast, locally administered, not ours
MULTICAST_MAC = bytes.fromhex("01005e000001")
ETHERTYPE_TEST = bytes.fromhex("88b5")  # IEEE local experimental ethertype
BIG_MERGED_FRAME = 4000  # spans many small buffers with MRG_RXBUF
CSUM_FRAME = 100
CSUM_START, CSUM_OFFSET, CSUM_PSEUDO = 34, 6, 0x1234


def small_rx_buffers(hdr_len: int) -> list[int]:
    """Mergeable receive buffers as small as allowed (one header) and a few sizes above."""
    return [hdr_len, 64, 200, 512]


def make_frame(rnd: random.Random, dst: bytes, src: bytes, size: int) -> bytes:
    head = dst + src + ETHERTYPE_TEST
    return head + rnd.randbytes(max(size - len(head), 0))


def random_frame(rnd: random.Random, size: int) -> bytes:
    return rnd.randbytes(size)


async def expect(driver: NetDriver, want: bytes, what: str) -> RxFrame:
    got = await driver.receive()
    if got.data != want:
        raise CorruptionDetected(
            f"{what}: received a {len(got.data)}-byte frame, expected {len(want)} bytes"
            + (" (same length, different bytes)" if len(got.data) == len(want) else "")
        )
    return got


async def _echo(driver: NetDriver, frame: bytes, pair: int, what: str) -> RxFrame:
    await driver.send(frame, pair=pair)
    got = await expect(driver, frame, what)
    if got.pair != pair % driver.curr_pairs:
        raise CorruptionDetected(f"{what}: sent on pair {pair}, came back on pair {got.pair}")
    return got


async def _dropped_then_marker(driver: NetDriver, rnd: random.Random, dropped: bytes, what: str) -> None:
    """Send ``dropped`` (which must not arrive), then a marker that must come next."""
    await driver.send(dropped)
    marker = make_frame(rnd, driver.mac, driver.mac, 64)
    await driver.send(marker)
    await expect(driver, marker, f"{what}: the frame was delivered although it must be dropped")


async def net_loopback_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    assert isinstance(driver, NetDriver)
    d = driver
    rnd = random.Random(seed if seed is not None else DEFAULT_SEED)
    await d.open(small_rx_buffers(d.hdr_len) if d.mergeable else None)
    if not d.link_up:
        raise DeviceProtocolError("the device reports the link down")
    evidence: dict[str, Any] = {
        "hdr_len": d.hdr_len,
        "mergeable": d.mergeable,
        "legacy": d.dev.legacy,
        "mac": format_mac(d.mac),
        "queue_pairs": d.curr_pairs,
    }
    # 1. random sizes and contents, one at a time, over every queue pair
    sizes = [NET.eth_hlen, 60, NET.eth_frame_max] + [
        rnd.randint(NET.eth_hlen, NET.eth_frame_max) for _ in range(RANDOM_FRAMES)
    ]
    pairs_seen: set[int] = set()
    for i, n in enumerate(sizes):
        got = await _echo(d, random_frame(rnd, n), i % d.curr_pairs, f"frame {i}")
        pairs_seen.add(got.pair)
    # 2. a burst: several frames in flight before the first is read
    burst = [random_frame(rnd, rnd.randint(NET.eth_hlen, NET.eth_frame_max)) for _ in range(BURST)]
    for frame in burst:
        await d.send(frame)
    for i, frame in enumerate(burst):
        await expect(d, frame, f"burst frame {i}")
    evidence["frames"] = len(sizes) + BURST
    evidence["pairs_used"] = sorted(pairs_seen)
    # 3. frames larger than one receive buffer
    if d.mergeable:
        await _echo(d, random_frame(rnd, BIG_MERGED_FRAME), 0, "merged frame")
        if d.stats.max_buffers_per_frame < 2:
            raise CorruptionDetected("small mergeable buffers but no frame spanned two")
        evidence["big_frame"] = "merged"
    else:
        await _dropped_then_marker(d, rnd, random_frame(rnd, NET.eth_frame_max + 1), "oversize")
        evidence["big_frame"] = "dropped"
    evidence["max_buffers_per_frame"] = d.stats.max_buffers_per_frame
    if d.stats.rx_fill_errors:
        raise DeviceProtocolError("a merged frame left a buffer before its last one unfilled")
    # 4. checksum offload
    if d.dev.has(NET_F.CSUM):
        evidence["csum"] = await _checksum(d, rnd)
    # 5. receive filter through the control queue
    if d.dev.has(NET_F.CTRL_RX):
        evidence["rx_filter"] = await _rx_filter(d, rnd)
    # 6. changing the address
    if d.dev.has(NET_F.CTRL_MAC_ADDR) or d.dev.legacy:
        evidence["mac_change"] = await _mac_change(d, rnd)
    evidence["rx_buffers"] = d.stats.rx_buffers
    return evidence


async def _checksum(d: NetDriver, rnd: random.Random) -> str:
    frame = bytearray(make_frame(rnd, d.mac, d.mac, CSUM_FRAME))
    where = CSUM_START + CSUM_OFFSET
    frame[where : where + 2] = CSUM_PSEUDO.to_bytes(2, "big")
    await d.send(bytes(frame), csum=(CSUM_START, CSUM_OFFSET))
    got = await d.receive()
    if len(got.data) != len(frame):
        raise CorruptionDetected("checksum frame came back with another length")
    if d.dev.has(NET_F.GUEST_CSUM):
        if not got.flags & NET_HDR_F.NEEDS_CSUM or (got.csum_start, got.csum_offset) != (
            CSUM_START,
            CSUM_OFFSET,
        ):
            raise CorruptionDetected("partial checksum request did not reach the receiver")
        if got.data != bytes(frame):
            raise CorruptionDetected("partial-checksum frame changed on the way")
        return "passed-through"
    if got.flags & NET_HDR_F.NEEDS_CSUM:
        raise CorruptionDetected("NEEDS_CSUM delivered without VIRTIO_NET_F_GUEST_CSUM")
    outside = got.data[:where] + got.data[where + 2 :]
    if outside != bytes(frame[:where] + frame[where + 2 :]):
        raise CorruptionDetected("checksum completion changed bytes outside the field")
    if not checksum_ok(got.data, CSUM_START, CSUM_PSEUDO):
        raise CorruptionDetected("the device completed a wrong checksum")
    return "completed"


async def _rx_filter(d: NetDriver, rnd: random.Random) -> dict[str, str]:
    out: dict[str, str] = {}
    await d.set_promisc(False)
    try:
        own = make_frame(rnd, d.mac, FOREIGN_MAC, 80)
        await d.send(own)
        await expect(d, own, "own unicast with promisc off")
        await _dropped_then_marker(d, rnd, make_frame(rnd, FOREIGN_MAC, d.mac, 80), "foreign")
        out["foreign_unicast"] = "filtered"
        await _dropped_then_marker(d, rnd, make_frame(rnd, MULTICAST_MAC, d.mac, 80), "multi")
        out["multicast"] = "filtered"
        bcast = make_frame(rnd, BROADCAST, d.mac, 80)
        await d.send(bcast)
        await expect(d, bcast, "broadcast")
        out["broadcast"] = "accepted"
        await d.set_allmulti(True)
        multi = make_frame(rnd, MULTICAST_MAC, d.mac, 80)
        await d.send(multi)
        await expect(d, multi, "multicast with allmulti on")
        out["allmulti"] = "accepted"
        await d.set_allmulti(False)
        await d.set_mac_table([FOREIGN_MAC], [MULTICAST_MAC])
        for frame, what in (
            (make_frame(rnd, FOREIGN_MAC, d.mac, 80), "unicast in the MAC table"),
            (make_frame(rnd, MULTICAST_MAC, d.mac, 80), "multicast in the MAC table"),
        ):
            await d.send(frame)
            await expect(d, frame, what)
        out["mac_table"] = "accepted"
        await d.set_mac_table([], [])
        await _dropped_then_marker(d, rnd, make_frame(rnd, FOREIGN_MAC, d.mac, 80), "cleared")
        out["mac_table_cleared"] = "filtered"
    finally:
        await d.set_promisc(True)
    return out


async def _mac_change(d: NetDriver, rnd: random.Random) -> str:
    old = d.mac
    new = bytes([old[0] | 0x02]) + old[1:5] + bytes([old[5] ^ 0xFF])
    await d.set_mac(new)
    if d.dev.has(NET_F.MAC):
        seen = await d.read_mac()
        if seen != new:
            raise CorruptionDetected(f"config mac is {format_mac(seen)} after setting it")
    if d.dev.has(NET_F.CTRL_RX):
        await d.set_promisc(False)
        try:
            frame = make_frame(rnd, new, FOREIGN_MAC, 80)
            await d.send(frame)
            await expect(d, frame, "frame to the new address")
            await _dropped_then_marker(d, rnd, make_frame(rnd, old, FOREIGN_MAC, 80), "old mac")
        finally:
            await d.set_promisc(True)
    await d.set_mac(old)
    return format_mac(new)


async def net_pair_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    """Two NICs on one switch: unicast both ways, broadcast, no reflection to the sender."""
    assert isinstance(driver, NetDriver)
    peers = [p for p in driver.peers if isinstance(p, NetDriver)]
    if not peers:
        raise DeviceProtocolError("net-pair needs a second net device (none was bound)")
    a, b = driver, peers[0]
    if a.mac == b.mac:
        raise DeviceProtocolError(f"both NICs have the address {format_mac(a.mac)}")
    rnd = random.Random(seed if seed is not None else DEFAULT_SEED)
    await a.open()
    await b.open()
    counts = {"a_to_b": 0, "b_to_a": 0}
    for i in range(RANDOM_FRAMES):
        for src, dst, key in ((a, b, "a_to_b"), (b, a, "b_to_a")):
            frame = make_frame(rnd, dst.mac, src.mac, rnd.randint(60, NET.eth_frame_max))
            await src.send(frame)
            await expect(dst, frame, f"{key} frame {i}")
            counts[key] += 1
    bcast = make_frame(rnd, BROADCAST, a.mac, 100)
    await a.send(bcast)
    await expect(b, bcast, "broadcast from a")
    marker = make_frame(rnd, a.mac, b.mac, 64)
    await b.send(marker)
    await expect(a, marker, "a received its own broadcast back (the switch reflected it)")
    return {
        **counts,
        "broadcast": "delivered",
        "mac_a": format_mac(a.mac),
        "mac_b": format_mac(b.mac),
        "hdr_len": a.hdr_len,
    }


GUEST = GuestHalf(NetDriver, {"net-loopback": net_loopback_workload, "net-pair": net_pair_workload})
