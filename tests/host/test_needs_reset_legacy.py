"""QEMU's virtio_error() on the legacy interface: the device stops, the driver is told nothing.

hw/virtio/virtio.c virtio_error() (QEMU 2.8 to 7.2) sets DEVICE_NEEDS_RESET and sends the
configuration change interrupt only when VIRTIO_F_VERSION_1 was negotiated, and marks the
device broken either way. The same provocation (an avail index more than a ring ahead,
QEMU's "Guest moved used index" error, our ``avail-idx-jump`` violation) is made against
our device and, under qtest, against QEMU 7.2's: the status byte and the interrupt causes
must be the ones QEMU shows. A matrix cell whose legacy driver is left waiting is a HANG,
ended by the stall rule (guest/stall.py) instead of by a status bit the device never sets.
"""

from __future__ import annotations

import pytest
import trio

from virtio_sim.orchestration.conformance.catalog import load_catalog
from virtio_sim.orchestration.conformance.device_checks import Ctx, ack, bring_up, kick, traffic_queue
from virtio_sim.orchestration.conformance.device_runner import ARENA_OFFSET, ARENA_SIZE, DeviceLog
from virtio_sim.orchestration.conformance.dut import Dut, open_host, open_qemu, open_transport
from virtio_sim.orchestration.conformance.findings import Policy
from virtio_sim.orchestration.conformance.rawring import Arena, RawSplitRing
from virtio_sim.orchestration.conformance.targets import device_for_transport
from virtio_sim.orchestration.matrix.cell import run_cell
from virtio_sim.orchestration.matrix.spec import expand, load_matrix
from virtio_sim.outcome import Outcome
from virtio_sim.spec import STATUS

LIVE = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK
QUEUE, CONFIG = 0x1, 0x2  # interrupt causes (ISR / InterruptStatus bits)
#: (transport, interface) -> whether VERSION_1 is negotiated there
INTERFACES = [
    ("mmio-v1", "modern", False),
    ("pci-legacy", "modern", False),
    ("pci-transitional", "legacy", False),  # the transitional device through its legacy BAR
    ("mmio-v2", "modern", True),
    ("pci-modern", "modern", True),
]


async def provoke(backend: str, transport: str, interface: str) -> tuple[int, int]:
    """virtio-rng, live, then an avail index a ring and more ahead; (status, causes)."""
    device = device_for_transport("virtio-rng", transport)
    dut: Dut
    if backend == "host":
        dut = open_host(device, transport)
    else:
        dut = await trio.to_thread.run_sync(lambda: open_qemu(device, transport))
    dut.interface = interface
    try:
        opened = await open_transport(dut)
        start = dut.ram_base + ARENA_OFFSET
        ctx = Ctx(
            dut,
            opened,
            DeviceLog(load_catalog().level_of, Policy.LENIENT),
            "split",
            Arena(dut.memory, start, start + ARENA_SIZE),
            thorough=False,
        )
        q = traffic_queue(ctx)
        await bring_up(ctx, (q,))
        await ack(ctx)
        ring = ctx.rings[q]
        assert isinstance(ring, RawSplitRing)
        ring.set_avail_idx(ring.size + 2)
        await kick(ctx, q)
        return int(await ctx.t.ops.get_status()), await ack(ctx)
    finally:
        dut.close()


@pytest.mark.parametrize("transport,interface,version_1", INTERFACES)
def test_our_virtio_error_says_needs_reset_only_with_version_1(
    transport: str, interface: str, version_1: bool
) -> None:
    status, causes = trio.run(provoke, "host", transport, interface)
    if version_1:
        assert status == LIVE | STATUS.FEATURES_OK | STATUS.DEVICE_NEEDS_RESET
        assert causes == QUEUE | CONFIG  # QEMU's virtio_notify_config(): virtio_set_isr(vdev, 0x3)
    else:
        # the device stopped, and nothing tells the driver: no bit, no interrupt at all
        assert status == LIVE
        assert causes == 0


@pytest.mark.qemu
@pytest.mark.parametrize("transport,interface,version_1", INTERFACES)
def test_virtio_error_shows_what_qemu_72_shows(transport: str, interface: str, version_1: bool) -> None:
    ours = trio.run(provoke, "host", transport, interface)
    qemu = trio.run(provoke, "qemu", transport, interface)
    assert ours[0] == qemu[0]
    assert bool(ours[0] & STATUS.DEVICE_NEEDS_RESET) is version_1
    # the causes as QEMU's: 0x3 (virtio_notify_config() sets both) or, legacy, none
    assert ours[1] == qemu[1] == (QUEUE | CONFIG if version_1 else 0)


def test_a_legacy_driver_behind_a_broken_device_hangs_until_the_run_stalls() -> None:
    """linux-5.4-sev on mmio-v1 gives the device raw guest-physical addresses into
    encrypted memory: the device reads garbage and breaks. On the legacy interface the
    driver sees no DEVICE_NEEDS_RESET and waits: HANG, decided when nothing can run any
    more (the old model set the bit, and the guest reported the ignored bit instead)."""
    cell_id = "linux-5.4-sev/qemu-7.2/mmio-v1/auto/none/off/split/rng"
    (cell,) = [c for c in expand(load_matrix()) if c.id == cell_id]
    out = run_cell(cell, timeout=60.0)
    assert out["outcome"] == Outcome.HANG.value
    assert "the run stalled" in out["detail"]
    assert "DEVICE_NEEDS_RESET" not in out["detail"]
    assert not any("NEEDS_RESET" in s for s in out["status_trace"])
    assert out["violations"], "the device broke on a ring violation"
