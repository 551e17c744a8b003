"""Hostile PCI traffic: nothing a guest does to config space, BARs or registers can crash
the host, and a function stays usable (or cleanly unmapped) afterwards."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.pci_bench import HostBench, make_host, with_guest
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.host.machine import Q35_ECAM_BASE
from virtio_sim.layouts import COMMON_CFG, PCI_HEADER
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.spec import CONF1, PCI, PCI_CMD, QEMU_PCI, STATUS

MODERN_BASE = 0xC0100000
IO_BASE = 0xC000

access = st.tuples(
    st.sampled_from(["cfg", "cf8", "mmio", "pio"]),
    st.integers(0, 0x1FFF),
    st.sampled_from([1, 2, 3, 4, 8]),
    st.integers(0, 0xFFFFFFFF),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(access, max_size=60))
def test_random_register_traffic_never_crashes(ops: list[tuple[str, int, int, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        setup = make_host(Path(tmp), "virtio-blk-pci")
        try:
            b = HostBench(setup)
            b.place({0: IO_BASE, 1: 0xC0000000, 4: MODERN_BASE})
            m = b.m
            for kind, off, size, value, write in ops:
                value &= (1 << 8 * min(size, 8)) - 1
                if kind == "cfg":
                    addr = b.ecam(off % 0x1000)
                elif kind == "cf8":
                    if write and off % 2:
                        m.pio_write(CONF1.address_port, 4, value)
                        continue
                    addr = CONF1.data_port + off % 4
                elif kind == "mmio":
                    addr = MODERN_BASE + off * 8
                else:
                    addr = IO_BASE + off % 0x100
                if kind in ("cf8", "pio"):
                    if write:
                        m.pio_write(addr, size, value)
                    else:
                        m.pio_read(addr, size)
                elif write:
                    m.mmio_write(addr, size, value)
                else:
                    m.mmio_read(addr, size)
            # the function still identifies itself
            assert b.cfg_r(PCI_HEADER["vendor_id"], 2) == PCI.vendor_id
        finally:
            setup.close()


def test_bogus_bar_programming_is_unmapped_not_fatal(tmp_path: Path) -> None:
    b = HostBench(make_host(tmp_path, "virtio-rng-pci"))
    num_queues = COMMON_CFG["num_queues"]
    cases = {
        "at 0": 0,
        "ending at 2^64": 0xFFFFFFFF_FFFFC000,
        "all ones": 0xFFFFFFFF_FFFFFFFF,
        "over ECAM": Q35_ECAM_BASE,
    }
    for what, addr in cases.items():
        b.place({4: addr})
        got = b.m.mmio_read(addr + num_queues, 2)
        if what == "over ECAM":
            assert got == b.m.mmio_read(Q35_ECAM_BASE + num_queues, 2)  # ECAM wins
            assert any("ECAM" in n for n in b.m.pci.notes)  # type: ignore[union-attr]
        else:
            assert got in (0, 0xFFFF), what
    # 32-bit MSI-X BAR at the top of the 4 GiB space, I/O BAR past 64 KiB
    b.place({1: 0xFFFFF000, 0: 0}, PCI_CMD.MEMORY | PCI_CMD.IO)
    assert b.proxy.fn.bar_base(b.proxy.fn.bars[1]) is None
    b.cfg_w(b.bar_reg(0), 4, 0x1FFE1)  # past the 64 KiB port space
    assert b.proxy.fn.bar_base(b.proxy.fn.bars[0]) is None
    b.cfg_w(b.bar_reg(0), 4, 0xFFE1)  # the last 32 ports: fine
    assert b.proxy.fn.bar_base(b.proxy.fn.bars[0]) == 0xFFE0
    # a good address works again afterwards
    b.place({4: MODERN_BASE})
    assert b.m.mmio_read(MODERN_BASE + num_queues, 2) == 1


def test_overlapping_bars_of_two_functions(tmp_path: Path) -> None:
    from virtio_sim.host.build import HostConfig, build_host

    setup = build_host(
        HostConfig(
            devices=["virtio-rng-pci", "virtio-blk-pci,queue-size=16"],
            transport="pci-modern",
            ram_size=8 << 20,
            scratch_dir=str(tmp_path),
        )
    )
    try:
        m = setup.machine
        first, second = (HostBench(setup) for _ in range(2))
        second.proxy = m.pci_devices[1]
        second.bdf = second.proxy.fn.bdf
        first.place({4: MODERN_BASE})
        second.place({4: MODERN_BASE})
        assert any("overlaps" in n for n in m.pci.notes)  # type: ignore[union-attr]
        # the earlier function answers; nothing crashes
        size = m.mmio_read(MODERN_BASE + COMMON_CFG["queue_size"], 2)
        assert size == setup.devices[0].queues[0].max_size
        second.place({4: MODERN_BASE + 2 * QEMU_PCI.notify_offset * 4})
        assert m.mmio_read(MODERN_BASE + 2 * QEMU_PCI.notify_offset * 4 + COMMON_CFG["queue_size"], 2) == 16
    finally:
        setup.close()


async def test_guest_that_disables_bus_mastering_gets_no_dma(tmp_path: Path) -> None:
    """Clearing bus mastering stops the device as in QEMU: DRIVER_OK is dropped, so a kick
    that follows is held for a later DRIVER_OK (2.1.2: no buffer is consumed before it) and
    no DMA happens; the request is never completed, no DMA violation is recorded (nothing
    was attempted) and the host keeps serving."""
    setup = make_host(tmp_path, "virtio-rng-pci,vectors=0", "pci-modern")
    done: list[bytes] = []

    async def body(kernel):  # type: ignore[no-untyped-def]
        rec = kernel.probes[0]
        assert rec.bound
        t = rec.device.transport
        assert await t.get_status() & STATUS.DRIVER_OK
        await kernel.pci_bus.set_master(t.pci, False)
        with trio.move_on_after(0.3):
            done.append(await rec.driver.read(16))
        assert not done
        assert not await t.get_status() & STATUS.DRIVER_OK

    try:
        await with_guest(setup, body)
        d = setup.devices[0]
        assert d.deferred_notifies == {0}
        assert not d.violations
        assert any("bus mastering disabled: DRIVER_OK dropped" in n for n in d.notes)
    finally:
        setup.close()


async def test_pci_run_with_hostile_transport_choice_is_refused() -> None:
    r = await run_embedded(RunConfig("virtio-blk-pci", "blk-rw", transport="mmio-v2"))
    assert r.outcome is Outcome.HOST_REFUSED and "No 'PCI' bus" in r.detail
    r = await run_embedded(
        RunConfig("virtio-rng-pci,disable-legacy=on,disable-modern=on", "rng", transport="pci-modern")
    )
    assert r.outcome is Outcome.HOST_REFUSED
    assert "device cannot work as neither modern nor legacy mode is enabled" in r.detail
    r = await run_embedded(
        RunConfig(
            "virtio-rng-device",
            "rng",
            transport="pci-modern",
            guest=GuestPolicy(pci_config_access="ecam"),
        )
    )
    assert r.outcome is Outcome.OK
