"""Every transport x every device model x two ring sizes, end to end through
run_embedded: negotiation and the rng / blk workloads verify their data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pci_bench import make_host, with_guest
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.orchestration.embedded import RunConfig, guest_policy_for, run_embedded
from virtio_sim.outcome import Outcome

TRANSPORTS = ("pci-modern", "pci-transitional", "pci-legacy", "mmio-v1", "mmio-v2")
LEGACY = ("pci-legacy", "mmio-v1")
MODELS = {
    "rng": ("virtio-rng-device", "rng", "x-queue-size"),
    "blk": ("virtio-blk-device", "blk-rw", "queue-size"),
}
QUEUE_SIZES = (16, 256)


@pytest.mark.parametrize("qsize", QUEUE_SIZES)
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_transport_model_ring_size(transport: str, model: str, qsize: int) -> None:
    device, workload, prop = MODELS[model]
    r = await run_embedded(RunConfig(f"{device},{prop}={qsize}", workload, transport=transport))
    assert r.outcome is Outcome.OK, r.detail
    assert r.transport == transport
    assert r.violations == []
    # the legacy interfaces negotiate without VERSION_1, the modern ones with it
    assert ("VIRTIO_F_VERSION_1" in r.negotiated) is (transport not in LEGACY)
    assert "VIRTIO_F_EVENT_IDX" in r.negotiated
    trace = " ".join(r.status_trace)
    assert ("FEATURES_OK" in trace) is (transport not in LEGACY)
    assert "DRIVER_OK" in r.status_trace[-1].split("|")


@pytest.mark.parametrize("qsize", QUEUE_SIZES)
@pytest.mark.parametrize("transport", ("pci-modern", "pci-transitional", "pci-legacy"))
async def test_ring_size_reaches_the_device(tmp_path: Path, transport: str, qsize: int) -> None:
    """A legacy ring has the device's size; a modern driver may ask for less (rng: 64)."""
    setup = make_host(tmp_path, f"virtio-rng-pci,x-queue-size={qsize}", transport)
    policy = guest_policy_for(RunConfig("", "", transport=transport, guest=GuestPolicy()))

    async def body(kernel):  # type: ignore[no-untyped-def]
        rec = kernel.probes[0]
        assert rec.bound, rec.reason
        got = await rec.driver.read(32)
        assert 1 <= len(got) <= 32
        q = setup.devices[0].queues[0]
        want = qsize if transport == "pci-legacy" else min(qsize, rec.driver.queue_size)
        assert q.size == want and q.ready
        assert rec.device.queues[0].ring.size == want

    try:
        await with_guest(setup, body, policy)
    finally:
        setup.close()
