"""The guest's PCI side against the real host: enumeration, id matching, modern/legacy
choice, MSI-X with INTx fallback, and the config generation loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.pci_bench import make_host, with_guest
from virtio_sim.guest.pci import parse_pci_param
from virtio_sim.guest.platform import GuestKernel, GuestPolicy
from virtio_sim.guest.transport.pci_legacy import PciLegacyTransport
from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.host.machine import Q35_ECAM_BASE, Q35_PCI_IO_WINDOW, Q35_PCI_MEM_WINDOW
from virtio_sim.layouts import COMMON_CFG, PCI_HEADER
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.spec import PCI, PCI_CAP_ID, PCI_CMD, PCI_IDS, QEMU_PCI

NO_VECTOR = PCI.msix_no_vector


async def boot(setup: Any, body: Any, **policy: Any) -> None:
    try:
        await with_guest(setup, body, GuestPolicy(**policy))
    finally:
        setup.close()


def test_firmware_parameter_round_trip(tmp_path: Path) -> None:
    setup = make_host(tmp_path, "virtio-rng-pci")
    try:
        fw = parse_pci_param(setup.machine.kernel_cmdline())
        assert fw is not None
        assert fw.ecam_base == Q35_ECAM_BASE and fw.ecam_buses == 256
        assert fw.mem == Q35_PCI_MEM_WINDOW and fw.io == Q35_PCI_IO_WINDOW
    finally:
        setup.close()
    assert parse_pci_param("console=ttyS0") is None


@pytest.mark.parametrize("access", ["ecam", "conf1"])
async def test_enumeration_places_bars_and_enables_the_function(tmp_path: Path, access: str) -> None:
    setup = make_host(tmp_path, "virtio-blk-pci", "pci-transitional")

    async def body(kernel: GuestKernel) -> None:
        bus = kernel.pci_bus
        assert bus is not None and bus.access.name == access
        ids = {(d.vendor_id, d.device_id) for d in bus.devices}
        assert (PCI_IDS.intel_vendor, PCI_IDS.q35_host_bridge) in ids
        (virtio,) = [d for d in bus.devices if d.vendor_id == PCI.vendor_id]
        assert virtio.device_id == 0x1001 and virtio.subsystem_id == 2
        placed = []
        for i, bar in virtio.bars.items():
            if bar.index != i:
                continue
            lo, hi = Q35_PCI_IO_WINDOW if bar.is_io else Q35_PCI_MEM_WINDOW
            assert lo <= bar.address and bar.address + bar.size <= hi
            assert bar.address % bar.size == 0
            placed.append((bar.address, bar.address + bar.size, bar.is_io))
            # the host decodes the BAR where the guest put it
            host_bar = setup.machine.pci_devices[0].fn.bars[i]
            assert setup.machine.pci_devices[0].fn.bar_base(host_bar) == bar.address
        assert {i for i, b in virtio.bars.items() if b.index == i} == {0, 1, 4}
        for a in placed:
            for b in placed:
                assert a is b or a[2] != b[2] or a[1] <= b[0] or b[1] <= a[0]
        cmd = await bus.read(virtio.bdf, PCI_HEADER["command"], 2)
        assert cmd & (PCI_CMD.IO | PCI_CMD.MEMORY | PCI_CMD.MASTER) == (
            PCI_CMD.IO | PCI_CMD.MEMORY | PCI_CMD.MASTER
        )
        assert PCI_CAP_ID.MSIX in [c for c, _ in virtio.caps]
        rec = kernel.probes[0]
        assert rec.bound
        assert await rec.driver.get_id() == b"virtio-sim-blk"

    await boot(setup, body, pci_config_access=access)


@pytest.mark.parametrize(
    ("transport", "policy", "expect"),
    [
        ("pci-transitional", {}, PciModernTransport),
        ("pci-transitional", {"pci_force_legacy": True}, PciLegacyTransport),
        ("pci-modern", {"pci_force_legacy": True}, PciModernTransport),  # no legacy BAR: modern
        ("pci-transitional", {"pci_modern": False}, PciLegacyTransport),
    ],
)
async def test_transport_choice(tmp_path: Path, transport: str, policy: dict[str, Any], expect: type) -> None:
    setup = make_host(tmp_path, "virtio-rng-pci", transport)

    async def body(kernel: GuestKernel) -> None:
        rec = kernel.probes[0]
        assert rec.bound, rec.reason
        assert type(rec.device.transport) is expect
        assert await rec.driver.read(8)

    await boot(setup, body, **policy)


async def test_legacy_only_device_falls_back_from_modern(tmp_path: Path) -> None:
    setup = make_host(tmp_path, "virtio-blk-pci,disable-modern=on", "pci-transitional")

    async def body(kernel: GuestKernel) -> None:
        rec = kernel.probes[0]
        assert rec.bound
        assert isinstance(rec.device.transport, PciLegacyTransport)
        await rec.driver.write(3, b"\x5a" * 512)
        assert await rec.driver.read(3, 1) == b"\x5a" * 512

    await boot(setup, body)


async def test_legacy_only_driver_does_not_match_a_modern_only_device() -> None:
    r = await run_embedded(
        RunConfig("virtio-rng-device", "rng", transport="pci-modern", guest=GuestPolicy(pci_modern=False))
    )
    assert r.outcome is Outcome.NOT_PROBED
    assert "not a legacy virtio id" in r.detail
    # ... nor a transitional device that claims a revision other than 0
    r = await run_embedded(
        RunConfig(
            "virtio-rng-device",
            "rng",
            transport="pci-transitional",
            guest=GuestPolicy(pci_modern=False),
        )
    )
    assert r.outcome is Outcome.OK and r.transport == "pci-legacy"


async def test_modern_only_driver_skips_a_legacy_only_device() -> None:
    r = await run_embedded(
        RunConfig(
            "virtio-rng-pci,disable-modern=on",
            "rng",
            transport="pci-transitional",
            guest=GuestPolicy(pci_legacy=False),
        )
    )
    assert r.outcome is Outcome.NOT_PROBED
    assert "leaving for legacy driver" in r.detail


# --------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("transport", ["pci-modern", "pci-legacy"])
async def test_msix_vectors_are_used(tmp_path: Path, transport: str) -> None:
    setup = make_host(tmp_path, "virtio-rng-pci", transport)
    proxy = setup.machine.pci_devices[0]

    async def body(kernel: GuestKernel) -> None:
        rec = kernel.probes[0]
        t = rec.device.transport
        assert t.msix_active
        assert proxy.fn.msix is not None and proxy.fn.msix.enabled
        assert proxy.config_vector == 0 and proxy.queue_vectors == [1]
        for _ in range(5):
            await rec.driver.read(64)
        assert not proxy.fn.intx_level and proxy.isr  # causes recorded, line never raised
        assert kernel.stray_msis == []

    await boot(setup, body, pci_force_legacy=transport == "pci-legacy")


@pytest.mark.parametrize(
    ("device", "policy"),
    [
        ("virtio-rng-pci,vectors=0", {}),
        ("virtio-rng-pci,vectors=1", {}),  # one entry is not enough for Linux's plans
        ("virtio-rng-pci", {"pci_msix": False}),
        ("virtio-rng-pci", {"pci_msix": False, "pci_force_legacy": True}),
    ],
)
async def test_intx_fallback(tmp_path: Path, device: str, policy: dict[str, Any]) -> None:
    setup = make_host(tmp_path, device, "pci-transitional")
    proxy = setup.machine.pci_devices[0]

    async def body(kernel: GuestKernel) -> None:
        rec = kernel.probes[0]
        assert rec.bound
        assert not rec.device.transport.msix_active
        for _ in range(5):
            assert await rec.driver.read(64)
        assert proxy.config_vector == NO_VECTOR
        # every cause gets read (and so cleared) by the handler; the last one may still
        # be on its way when the request was already reaped
        with trio.fail_after(2):
            while proxy.isr or proxy.fn.intx_level:
                await trio.sleep(0.001)

    await boot(setup, body, **policy)


async def test_masked_msix_vector_holds_the_completion_until_unmasked(tmp_path: Path) -> None:
    setup = make_host(tmp_path, "virtio-rng-pci", "pci-modern")

    async def body(kernel: GuestKernel) -> None:
        rec = kernel.probes[0]
        msix = rec.device.transport.msix.msix
        await msix.mask(1, True)
        done: list[bytes] = []

        async def reader() -> None:
            done.append(await rec.driver.read(32))

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            # everything that could still run has run (host and guest share this trio
            # run, no threads): the request was served, the interrupt is held pending,
            # and the reader, which only an interrupt wakes, has nothing
            await trio.testing.wait_all_tasks_blocked()
            assert await msix.pending(1)
            assert done == []
            await msix.mask(1, False)
        assert len(done) == 1 and 1 <= len(done[0]) <= 32
        assert not await msix.pending(1)

    await boot(setup, body)


# --------------------------------------------------------------------------- config generation


@pytest.mark.parametrize("transport", ["pci-modern", "pci-transitional"])
async def test_config_generation_retry_gives_a_consistent_capacity(tmp_path: Path, transport: str) -> None:
    """The capacity (a 64-bit field read as two halves) changes between the two reads;
    the driver must notice the generation move and read again."""
    old, new = 0x1_FFFF_FFFF, 0x2_0000_0000
    setup = make_host(tmp_path, "virtio-blk-pci", transport)
    vdev = setup.devices[0]
    model: Any = vdev.model
    model.size_bytes = old * 512
    machine = setup.machine
    dev_cfg_reads: list[int] = []
    generation_reads: list[int] = []
    real_read = machine.mmio_read

    def read(addr: int, size: int) -> int:
        value = real_read(addr, size)
        bar = machine.pci_devices[0].fn.bars[QEMU_PCI.modern_mem_bar]
        base = machine.pci_devices[0].fn.bar_base(bar)
        if base is not None:
            rel = addr - base
            if rel == QEMU_PCI.common_offset + COMMON_CFG["config_generation"]:
                generation_reads.append(value)
            if QEMU_PCI.device_offset <= rel < QEMU_PCI.device_offset + QEMU_PCI.device_size:
                dev_cfg_reads.append(rel)
                if len(dev_cfg_reads) == 1:  # right after the low half: the disk grows
                    model.size_bytes = new * 512
                    vdev.config_changed()
        return value

    machine.mmio_read = read  # type: ignore[method-assign]

    async def body(kernel: GuestKernel) -> None:
        rec = kernel.probes[0]
        assert rec.bound
        assert rec.driver.geometry.capacity == new
        # generation read before and after the first pass differ, so it read again
        assert len(set(generation_reads)) >= 2
        assert len(dev_cfg_reads) >= 6  # two passes of capacity (2) + seg_max + blk_size

    await boot(setup, body)
