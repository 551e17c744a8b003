"""The driver watch as rule families: chains walked by the shared walker, request framing
found beside each device kind through the DeviceKind registry."""

from __future__ import annotations

import pytest

from virtio_sim.devices import KINDS
from virtio_sim.devices.framing import Framing, framing_class
from virtio_sim.dma import IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.conformance import driver_watch
from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.driver_watch import DriverWatch, framings
from virtio_sim.orchestration.conformance.findings import FindingLog, Verdict
from virtio_sim.ring.mock import MockSplitRing, split_layout
from virtio_sim.ring.view import RingView
from virtio_sim.ring.walker import ChainWalker, ViolationLog
from virtio_sim.spec import DESC_F, F, bit

Q = 8
DATA = 0x8000


class Source:
    """One split queue of guest memory, as a device would show it to the watch."""

    def __init__(self, mem: GuestMemory, ring: MockSplitRing) -> None:
        self.space = IdentityAddressSpace(mem)
        self.ring = ring
        self.driver_features = bit(F.VERSION_1)
        self.device_features = 0

    def ring_view(self, index: int) -> RingView | None:
        r = self.ring
        return RingView(
            index, Q, Q, r.desc_addr, r.avail_addr, r.used_addr, True, False, "little", self.space
        )


def _look(device_type: str, build: object) -> FindingLog:
    """A watch on a fresh ring that ``build`` fills, after one kick."""
    mem = GuestMemory.create(0x10000)
    try:
        ring = MockSplitRing(mem, Q, *split_layout(0x1000, Q))
        build(ring)  # type: ignore[operator]
        log = FindingLog(load_catalog().level_of)
        watch = DriverWatch(
            log, Source(mem, ring), transport="vhost-user", device_type=device_type, vantage="vhost-user"
        )
        watch.on_notify(0, 0, 0)
        watch.finish()
        return log
    finally:
        mem.close()


def _readable_entropy_buffer(ring: MockSplitRing) -> None:
    ring.desc_table.store(0, DATA, 64)  # device-readable: wrong on the entropy queue
    ring.make_available(0)


def _verdict(log: FindingLog, requirement: str) -> Verdict | None:
    finding = log.findings.get(requirement)
    return None if finding is None else finding.verdict


def test_every_kinds_framing_lives_in_its_own_package() -> None:
    found = framings()
    assert set(found) == {k for k, kind in KINDS.items() if kind.framing is not None}
    assert {"rng", "blk", "net", "console", "iommu"} <= set(found)
    for key, cls in found.items():
        assert issubclass(cls, Framing) and cls.__module__ == f"virtio_sim.devices.{key}.framing"
    with pytest.raises(ValueError):
        framing_class("virtio_sim.orchestration.conformance.driver_watch:DriverWatch")  # not beside a device


def test_the_watch_judges_chains_by_the_kinds_framing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A readable buffer on the entropy queue fails the rng rule, which the watch takes
    from devices/rng/framing.py; without the registry's framing nothing judges it."""
    assert _verdict(_look("rng", _readable_entropy_buffer), "rng.drv.writable-only") is Verdict.FAIL
    monkeypatch.setattr(driver_watch, "framings", lambda: {})
    assert _verdict(_look("rng", _readable_entropy_buffer), "rng.drv.writable-only") is None


def _loop_back(ring: MockSplitRing) -> None:
    ring.desc_table.store(0, DATA, 16, DESC_F.NEXT, 1)  # header
    ring.desc_table.store(1, DATA + 16, 1, DESC_F.WRITE | DESC_F.NEXT, 0)  # status, back to the head
    ring.make_available(0)


def test_a_loop_is_named_a_loop_though_the_walk_stops_on_the_order_first() -> None:
    """The shared walker stops at the first rule broken within its budget (here READ after
    WRITE, when the loop comes back to the header); the watch names the loop, as the rule
    the driver broke."""
    mem = GuestMemory.create(0x10000)
    try:
        ring = MockSplitRing(mem, Q, *split_layout(0x1000, Q))
        _loop_back(ring)
        sink = ViolationLog()
        walker = ChainWalker(
            IdentityAddressSpace(mem), Q, indirect=False, strict=True, max_indirect=Q, sink=sink
        )
        assert walker.walk_split(0, None, ring.desc_addr) is None
        assert [e.violation for e in sink.found] == ["readable-after-writable"]
        assert walker.revisit(0, ring.desc_addr) == 0
        ring.desc_table.store(1, DATA + 16, 1, DESC_F.WRITE)  # the chain ends: no loop
        assert walker.revisit(0, ring.desc_addr) is None
    finally:
        mem.close()
    log = _look("blk", _loop_back)
    assert _verdict(log, "split.desc.drv-chain-len-limit") is Verdict.FAIL
    assert _verdict(log, "framing.drv.readable-before-writable") is not Verdict.FAIL
