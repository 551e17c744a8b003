"""Packed virtqueue against hostile rings: malformed descriptors the device must refuse with
the right violation, and broken devices the driver must refuse.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.packed_bytes import AVAIL, INDIRECT, NEXT, USED, WRITE, put, rd
from tests.support.ringpair import RingPair
from virtio_sim.ring.chain import DeviceBrokenError, RingError
from virtio_sim.ring.packed import PackedDeviceQueue
from virtio_sim.ring.split import SplitRingAddresses
from virtio_sim.ring.types import RingFeatures

# --------------------------------------------------------------------------- hostile rings


def _two_desc_chain(p: RingPair, second_flags: int, slot0: int = 0) -> None:
    put(p, (slot0 + 1) % p.q, p.data + 16, 4, 1, second_flags)
    put(p, slot0, p.data, 4, 0, NEXT | AVAIL)


MALFORMED: dict[str, Any] = {}


def malformed(name: str, violation: str, head: bool) -> Any:
    def deco(fn: Any) -> Any:
        MALFORMED[name] = (fn, violation, head)
        return fn

    return deco


@malformed("second descriptor with the old wrap bits", "desc-wrap-bits", False)
def _wrap_bits(p: RingPair) -> None:
    _two_desc_chain(p, WRITE | USED)


@malformed("second descriptor with AVAIL and USED both set", "desc-wrap-bits", False)
def _both_bits(p: RingPair) -> None:
    _two_desc_chain(p, WRITE | AVAIL | USED)


@malformed("chain past the ring end without flipping the wrap counter", "desc-wrap-bits", False)
def _past_end(p: RingPair) -> None:
    for i in range(p.q - 2):  # legitimate traffic up to slot q-2
        p.driver.add([(p.data, 4)], [], i)
        c = p.device.pop()
        assert c is not None
        p.device.push(c.head, 0)
        assert p.driver.get_used() == (i, 0)
    put(p, 0, p.data, 4, 0, AVAIL)  # lap 0's bits where lap 1's (USED) belong
    put(p, p.q - 1, p.data, 4, 0, NEXT | AVAIL)
    put(p, p.q - 2, p.data, 4, 0, NEXT | AVAIL)


@malformed("chain longer than the ring", "chain-too-long", False)
def _too_long(p: RingPair) -> None:
    # Every slot available with NEXT, including those after the ring end (lap-1 bits),
    # so the chain only ends because the walk is bounded.
    for i in range(p.q):
        put(p, i, p.data, 4, 0, NEXT | AVAIL)


@malformed("buffer id out of range", "buffer-id-out-of-range", False)
def _id_range(p: RingPair) -> None:
    put(p, 0, p.data, 4, p.q, AVAIL)


@malformed("buffer id reused while in flight", "buffer-id-in-flight", False)
def _id_reuse(p: RingPair) -> None:
    put(p, 0, p.data, 4, 3, AVAIL)
    put(p, 1, p.data, 4, 3, AVAIL)


@malformed("INDIRECT after NEXT in the ring", "indirect-in-chain", True)
def _ind_in_chain(p: RingPair) -> None:
    table = p.pool_base
    put(p, 1, table, 16, 0, INDIRECT | AVAIL)
    put(p, 0, p.data, 4, 0, NEXT | AVAIL)


@malformed("INDIRECT with NEXT", "indirect-with-next", True)
def _ind_next(p: RingPair) -> None:
    put(p, 1, p.data, 4, 0, AVAIL)
    put(p, 0, p.pool_base, 16, 0, INDIRECT | NEXT | AVAIL)


@malformed("indirect table of length 0", "indirect-bad-length", True)
def _ind_zero(p: RingPair) -> None:
    put(p, 0, p.pool_base, 0, 0, INDIRECT | AVAIL)


@malformed("indirect table length not a multiple of 16", "indirect-bad-length", True)
def _ind_len(p: RingPair) -> None:
    put(p, 0, p.pool_base, 24, 0, INDIRECT | AVAIL)


@malformed("indirect table too large", "indirect-too-large", True)
def _ind_big(p: RingPair) -> None:
    put(p, 0, p.pool_base, 16 * 64, 0, INDIRECT | AVAIL)


@malformed("indirect table outside guest memory", "bad-address", True)
def _ind_addr(p: RingPair) -> None:
    put(p, 0, 1 << 40, 32, 0, INDIRECT | AVAIL)


@malformed("indirect inside an indirect table", "nested-indirect", True)
def _ind_nested(p: RingPair) -> None:
    import struct

    p.mem.write(p.pool_base, struct.pack("<QIHH", p.pool_base + 64, 16, 0, INDIRECT))
    put(p, 0, p.pool_base, 16, 0, INDIRECT | AVAIL)


@malformed("buffer outside guest memory", "bad-address", True)
def _bad_addr(p: RingPair) -> None:
    put(p, 0, p.total + 0x1000, 4, 0, AVAIL)


@malformed("readable after writable", "readable-after-writable", True)
def _order(p: RingPair) -> None:
    _two_desc_chain(p, AVAIL)  # second readable ...
    put(p, 0, p.data, 4, 0, NEXT | WRITE | AVAIL)  # ... after a writable head


@malformed("zero-length descriptor", "zero-length", True)
def _zero(p: RingPair) -> None:
    put(p, 0, p.data, 0, 0, AVAIL)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_packed_rings_raise_named_violations(name: str) -> None:
    build, violation, head_known = MALFORMED[name]
    with RingPair("packed", 8, indirect=True, max_indirect=8) as p:
        if name == "buffer id reused while in flight":
            build(p)
            c = p.device.pop()
            assert c is not None and c.head == 3
        else:
            build(p)
        before = p.device._avail_pos
        with pytest.raises(RingError) as e:
            p.device.pop()
        assert e.value.violation == violation, str(e.value)
        if head_known:
            # Consumed, so that a drop policy can complete it and nothing loops forever.
            assert e.value.head is not None and e.value.head in p.device.in_flight
            assert p.device._avail_pos > before
            p.device.push(e.value.head, 0)
            assert rd(p, before % p.q)[3] & (AVAIL | USED) == AVAIL | USED
        else:
            assert e.value.head is None


def test_ring_overrun_into_slots_still_in_flight() -> None:
    with RingPair("packed", 4) as p:
        d, v = p.driver, p.device
        for i in range(3):
            d.add([(p.data, 4)], [], i)
        for _ in range(3):
            assert v.pop() is not None
        # The driver owns one slot (3); a two-descriptor chain there runs into slot 0,
        # which the device still owns. Slot 0 carries lap-1 bits, as a buggy driver would.
        put(p, 0, p.data, 4, 1, USED)
        put(p, 3, p.data, 4, 0, NEXT | AVAIL)
        with pytest.raises(RingError) as e:
            v.pop()
        assert e.value.violation == "ring-overrun"


def test_head_with_wrong_wrap_bits_is_not_available() -> None:
    with RingPair("packed", 4) as p:
        for flags in (0, AVAIL | USED, USED):  # zeroed, used-looking, next lap's bits
            put(p, 0, p.data, 4, 0, flags)
            assert not p.device.has_available()
            assert p.device.pop() is None
        put(p, 0, p.data, 4, 0, AVAIL)
        assert p.device.has_available()


def test_indirect_entries_ignore_ids_and_reserved_flags() -> None:
    import struct

    with RingPair("packed", 4, indirect=True) as p:
        junk = NEXT | AVAIL | USED | 0x7000
        p.mem.write(
            p.pool_base,
            struct.pack("<QIHHQIHH", p.data, 4, 0xBEEF, junk, p.data + 64, 8, 0xCAFE, junk | WRITE),
        )
        put(p, 0, p.pool_base, 32, 1, INDIRECT | WRITE | AVAIL)  # WRITE here is ignored
        c = p.device.pop()
        assert c is not None and c.head == 1
        assert c.readable == [(p.data, 4)] and c.writable == [(p.data + 64, 8)]


def test_indirect_without_the_feature_is_refused_in_strict_mode_only() -> None:
    for strict in (True, False):
        with RingPair("packed", 4, indirect=False, strict=strict) as p:
            import struct

            p.mem.write(p.pool_base, struct.pack("<QIHH", p.data, 4, 0, 0))
            put(p, 0, p.pool_base, 16, 0, INDIRECT | AVAIL)
            if strict:
                with pytest.raises(RingError, match="indirect-not-negotiated"):
                    p.device.pop()
            else:
                c = p.device.pop()
                assert c is not None and c.readable == [(p.data, 4)]


def test_misaligned_or_inaccessible_rings_are_refused() -> None:
    with RingPair("packed", 4) as p:
        bad = SplitRingAddresses(p.addrs.desc + 8, p.addrs.avail, p.addrs.used)
        with pytest.raises(RingError, match="ring-alignment"):
            PackedDeviceQueue(p.space, 4, bad)
        PackedDeviceQueue(p.space, 4, bad, RingFeatures(strict=False))
        far = SplitRingAddresses(p.total, p.addrs.avail, p.addrs.used)
        with pytest.raises(RingError, match="ring-address"):
            PackedDeviceQueue(p.space, 4, far)
        with pytest.raises(ValueError):
            PackedDeviceQueue(p.space, 4, p.addrs, order="big")


# --------------------------------------------------------------------------- broken devices


def _used(p: RingPair, slot: int, length: int, buf_id: int, flags: int) -> None:
    put(p, slot, 0, length, buf_id, flags)


def test_driver_refuses_used_ids_not_in_flight_and_long_lengths() -> None:
    with RingPair("packed", 4) as p:
        d = p.driver
        d.add([], [(p.data, 8)], "a")
        _used(p, 0, 0, 3, AVAIL | USED)
        with pytest.raises(DeviceBrokenError) as e:
            d.get_used()
        assert e.value.violation == "used-bad-id"
        with pytest.raises(DeviceBrokenError):
            d.add([], [(p.data, 8)], "after")  # the queue stays broken
    with RingPair("packed", 4) as p:
        d = p.driver
        d.add([], [(p.data, 8)], "a")
        _used(p, 0, 9, 0, AVAIL | USED | WRITE)
        with pytest.raises(DeviceBrokenError) as e:
            d.get_used()
        assert e.value.violation == "used-bad-len"


def test_driver_takes_len_without_write_as_linux_does_and_ignores_next() -> None:
    """QEMU 7.2 never sets WRITE in a used descriptor (virtqueue_packed_fill_desc) and
    Linux 6.1 reads len regardless (virtqueue_get_buf_ctx_packed): a read completed by
    QEMU must report the bytes it wrote. The spec's "ignore len" is counted, not applied."""
    with RingPair("packed", 4) as p:
        d = p.driver
        d.add([(p.data, 8)], [], "tx")
        d.add([], [(p.data, 8)], "rx")
        d.add([], [(p.data, 8)], "rx-qemu")
        _used(p, 0, 0, 0, AVAIL | USED | NEXT)
        _used(p, 1, 5, 1, AVAIL | USED | WRITE | NEXT)
        _used(p, 2, 7, 2, AVAIL | USED)  # QEMU's way: len without WRITE
        assert d.get_used() == ("tx", 0)
        assert d.get_used() == ("rx", 5)
        assert d.get_used() == ("rx-qemu", 7)
        assert d.get_used() is None
        assert d.len_without_write == 1
    with RingPair("packed", 4) as p:
        p.driver.add([(p.data, 8)], [], "tx")
        _used(p, 0, 0xFFFFFFFF, 0, AVAIL | USED)  # more than the chain could take: still refused
        with pytest.raises(DeviceBrokenError) as e:
            p.driver.get_used()
        assert e.value.violation == "used-bad-len"
