"""Test helpers for PCI: a host built from QEMU-style options, driven either register by
register from the test (host side) or by the real guest kernel over a real link."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from virtio_sim.guest.link import HostLink
from virtio_sim.guest.platform import GuestKernel, GuestPolicy
from virtio_sim.host.build import HostConfig, HostSetup, build_host
from virtio_sim.host.machine import Q35_ECAM_BASE
from virtio_sim.host.server import serve
from virtio_sim.host.transport.virtio_pci import VirtioPciProxy
from virtio_sim.layouts import PCI_BAR_SIZE, PCI_HEADER
from virtio_sim.spec import PCI_CFG, PCI_CMD
from virtio_sim.wire import memory_link

RAM = 32 << 20


def make_host(tmp: Path, device: str, transport: str = "pci-transitional", **kw: Any) -> HostSetup:
    return build_host(
        HostConfig(devices=[device], transport=transport, ram_size=RAM, seed=1, scratch_dir=str(tmp), **kw)
    )


def proxy_of(setup: HostSetup) -> VirtioPciProxy:
    return setup.machine.pci_devices[0]


class HostBench:
    """Plays firmware and driver against the host machine directly (no guest)."""

    def __init__(self, setup: HostSetup) -> None:
        self.setup = setup
        self.m = setup.machine
        self.proxy = proxy_of(setup)
        self.bdf = self.proxy.fn.bdf

    def ecam(self, offset: int, bdf: tuple[int, int, int] | None = None) -> int:
        bus, dev, fn = bdf or self.bdf
        return (
            Q35_ECAM_BASE
            + (bus << PCI_CFG.ecam_bus_shift)
            + (dev << PCI_CFG.ecam_device_shift)
            + (fn << PCI_CFG.ecam_function_shift)
            + offset
        )

    def cfg_r(self, offset: int, size: int) -> int:
        return self.m.mmio_read(self.ecam(offset), size)

    def cfg_w(self, offset: int, size: int, value: int) -> None:
        self.m.mmio_write(self.ecam(offset), size, value)

    def bar_reg(self, index: int) -> int:
        return PCI_HEADER["bar0"] + PCI_BAR_SIZE * index

    def place(
        self, addrs: dict[int, int], command: int = PCI_CMD.IO | PCI_CMD.MEMORY | PCI_CMD.MASTER
    ) -> None:
        for index, addr in addrs.items():
            self.cfg_w(self.bar_reg(index), 4, addr & 0xFFFFFFFF)
            if self.proxy.fn.bars[index].kind.value == "mem64":
                self.cfg_w(self.bar_reg(index + 1), 4, addr >> 32)
        self.cfg_w(PCI_HEADER["command"], 2, command)


async def with_guest(
    setup: HostSetup,
    body: Callable[[GuestKernel], Awaitable[None]],
    policy: GuestPolicy | None = None,
    *,
    probe: bool = True,
    timeout: float = 10,
) -> None:
    """Boot the real guest kernel against ``setup`` and run ``body`` with it."""
    host_end, guest_end = memory_link()
    link = HostLink(guest_end)
    with trio.fail_after(timeout):
        async with trio.open_nursery() as n:
            n.start_soon(serve, host_end, setup.machine)
            n.start_soon(link.run)
            kernel = GuestKernel(link, setup.memory, RAM, policy or GuestPolicy())
            n.start_soon(kernel.irq_loop)
            if probe:
                await kernel.probe_platform(setup.machine.kernel_cmdline())
            await body(kernel)
            await link.bye()
            n.cancel_scope.cancel()
