"""Devices under test: one virtio device, reached the way a guest reaches it.

A :class:`Dut` gives the conformance driver what a guest kernel has: register access
(``link``: MMIO and port I/O), guest RAM (``memory``), the platform description
(``cmdline``) and the interrupts the device raised (``irqs``). Two back-ends provide it:

* :class:`HostDut`: our host devices in this process (host.build), the link calling the
  machine directly. It also records every write the device made to guest memory, in
  order (:attr:`Dut.trace`), which is what lets ordering rules ("len before used idx")
  be decided instead of guessed from the final state;
* :class:`QemuDut`: a QEMU device under qtest (virtio_sim.orchestration.qemu), where only final states
  can be observed (``trace`` is None) and config changes cannot be provoked.

:func:`open_transport` then finds the device on the platform and returns the guest's
transport driver for it (mmio v1/v2, PCI modern or legacy), so the conformance driver
speaks to every back-end through the same code.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from virtio_sim.dma import AddressSpace, IdentityAddressSpace
from virtio_sim.guest.firmware import discover
from virtio_sim.guest.pci import (
    Conf1Access,
    ConfigAccess,
    EcamAccess,
    GuestPciBus,
    GuestPciDevice,
    parse_pci_param,
)
from virtio_sim.guest.platform import parse_cmdline
from virtio_sim.guest.transport.base import ConfigOps, TransportError
from virtio_sim.guest.transport.mmio import MmioTransportDriver
from virtio_sim.guest.transport.pci_legacy import PciLegacyTransport
from virtio_sim.guest.transport.pci_modern import PciModernTransport
from virtio_sim.host.build import HostConfig, HostSetup, build_host
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import ByteAccess
from virtio_sim.spec import DEVICE_TYPES, NET_F, PCI

RAM_SIZE = 64 << 20
#: how a host device under test reaches guest RAM (open_host)
MEMORY_PATHS = ("checked", "lease")
#: the window of guest RAM the conformance driver allocates from (above what firmware uses)
ARENA_OFFSET = 16 << 20
ARENA_SIZE = 32 << 20


class DutError(Exception):
    """The device under test could not be brought up (bad target, QEMU missing, no device)."""


@dataclass
class Access:
    """One device access to guest memory."""

    write: bool
    addr: int
    data: bytes  # for reads: the bytes read


class Link(Protocol):
    async def read(self, addr: int, size: int) -> int: ...

    async def write(self, addr: int, size: int, value: int) -> None: ...

    async def pio_read(self, port: int, size: int) -> int: ...

    async def pio_write(self, port: int, size: int, value: int) -> None: ...


@dataclass
class Dut:
    """What the conformance driver holds of a device under test."""

    name: str  # the -device name, e.g. virtio-blk-pci
    backend: str  # "host" or "qemu"
    transport: str
    link: Any  # a Link (HostLink-compatible for the guest transport drivers)
    memory: ByteAccess
    cmdline: str
    ram_base: int = 0
    ram_size: int = RAM_SIZE
    #: interrupts seen: ("line", n, level) or ("msi", data)
    irqs: list[tuple[Any, ...]] = field(default_factory=list)
    #: every device access to guest memory in order (host back-end), else None
    trace: list[Access] | None = None
    #: device type key of the device under test ("blk", "rng", "iommu", ...)
    key: str = ""
    #: provoke a device-side config change; returns False when the back-end cannot
    poke_config: Callable[[], bool] = lambda: False
    #: for an IOMMU under test: endpoints behind it as (endpoint id, transport ops opener)
    endpoints: list[int] = field(default_factory=list)
    setup: HostSetup | None = None
    #: the disk image behind a QEMU blk device (to check what reached the backing store)
    disk: str | None = None
    #: the QEMU process (to watch its sync calls on ``disk``), None for our in-process devices
    pid: int | None = None
    notes: list[str] = field(default_factory=list)
    #: the guest CPU's byte order: what the legacy interface uses for rings and config
    guest_order: ByteOrder = "little"
    #: which interface of a transitional PCI function the conformance driver uses:
    #: "modern" (default) or "legacy" (its I/O BAR 0, as a legacy driver would)
    interface: str = "modern"
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for c in reversed(self.closers):
            c()
        self.closers.clear()

    def interrupts_since(self, mark: int) -> int:
        """Raised lines (level 1) and MSIs since ``mark`` (an index into ``irqs``)."""
        return sum(1 for e in self.irqs[mark:] if e[0] == "msi" or e[2])


class TracingSpace:
    """An AddressSpace that records every device access before passing it on."""

    def __init__(self, inner: AddressSpace, trace: list[Access]) -> None:
        self.inner = inner
        self.trace = trace
        self.name = f"traced-{inner.name}"

    def read(self, addr: int, length: int) -> bytes:
        data = self.inner.read(addr, length)
        self.trace.append(Access(False, addr, bytes(data)))
        return data

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.trace.append(Access(True, addr, bytes(data)))
        self.inner.write(addr, data)

    def check(self, addr: int, length: int, write: bool) -> None:
        self.inner.check(addr, length, write)


class DirectLink:
    """The guest link to an in-process machine: every access is a direct call."""

    def __init__(self, setup: HostSetup) -> None:
        self.machine = setup.machine
        self.failure = None
        self.dma_memory = None

    async def read(self, addr: int, size: int) -> int:
        await trio.lowlevel.checkpoint()
        return self.machine.mmio_read(addr, size)

    async def write(self, addr: int, size: int, value: int) -> None:
        await trio.lowlevel.checkpoint()
        self.machine.mmio_write(addr, size, value)

    async def pio_read(self, port: int, size: int) -> int:
        await trio.lowlevel.checkpoint()
        return self.machine.pio_read(port, size)

    async def pio_write(self, port: int, size: int, value: int) -> None:
        await trio.lowlevel.checkpoint()
        self.machine.pio_write(port, size, value)


def device_key(name: str) -> str:
    """``virtio-blk-pci`` / ``virtio-blk-device`` / ``virtio-blk`` -> ``blk``."""
    for key in DEVICE_TYPES:
        if name == f"virtio-{key}" or name.startswith(f"virtio-{key}-"):
            return key
    if name == "virtio-serial" or name.startswith("virtio-serial-"):
        return "console"
    raise DutError(f"unknown device {name!r}")


IOMMU_ENDPOINT_DEVICE = "virtio-rng"  # what sits behind an IOMMU under test


def open_host(
    device: str,
    transport: str,
    *,
    patch: Callable[[HostSetup], None] | None = None,
    guest_order: ByteOrder = "little",
    memory_path: str = "checked",
) -> Dut:
    """Our host device ``device`` (a -device string) on ``transport``, in this process.

    ``virtio-iommu`` is the machine's IOMMU (an mmio slot, as build_host places it) with a
    virtio-rng endpoint behind it on ``transport`` that honours ACCESS_PLATFORM, so that
    translations and faults can be observed. ``patch`` lets test fixtures break the built
    devices before anything runs.

    ``memory_path``: "checked" (default) gives the device an address space that records
    every access (:attr:`Dut.trace`) and offers no direct windows, so the rings take their
    checked path; "lease" gives it guest RAM's own address space, whose leases put the
    rings on their fast path (no trace then: ordering rules are not decided from it).
    """
    if memory_path not in MEMORY_PATHS:
        raise DutError(f"memory path {memory_path!r}: {' or '.join(MEMORY_PATHS)}")
    name = device.split(",", 1)[0]
    trace: list[Access] = []
    scratch = tempfile.TemporaryDirectory(prefix="virtio-sim-conf-")
    iommu = name.startswith("virtio-iommu")
    pci = transport.startswith("pci")
    if iommu:
        bus = "pci" if pci else "device"
        # two endpoints: a domain shared by both can be tried
        devices = [f"{IOMMU_ENDPOINT_DEVICE}-{bus},iommu_platform=on,x-seed={seed}" for seed in (7, 8)]
    else:
        devices = [device]
    cfg = HostConfig(
        devices=devices,
        transport=transport,
        ram_size=RAM_SIZE,
        scratch_dir=scratch.name,
        iommu="virtio-iommu" if iommu else "none",
        iommu_topology="spec",  # the device model on its own: mmio transports are endpoints too
        guest_order=guest_order,
        address_space=(
            (lambda mem: TracingSpace(IdentityAddressSpace(mem), trace))
            if memory_path == "checked"
            else IdentityAddressSpace
        ),
    )
    try:
        setup = build_host(cfg)
    except Exception as e:
        scratch.cleanup()
        raise DutError(str(e)) from None
    if patch is not None:
        patch(setup)
    dut = Dut(
        name=name,
        backend="host",
        transport=transport,
        link=DirectLink(setup),
        memory=setup.memory,
        cmdline=setup.machine.kernel_cmdline(),
        trace=trace if memory_path == "checked" else None,
        key="iommu" if iommu else device_key(name),
        setup=setup,
        guest_order=guest_order,
    )
    setup.machine.irq_out = lambda irq, level: dut.irqs.append(("line", irq, level))
    setup.machine.msi_out = lambda address, data: dut.irqs.append(("msi", data))
    dut.poke_config = lambda: _poke_host_config(setup)
    if iommu:
        dut.endpoints = sorted(setup.iommu.endpoints) if setup.iommu else []
    dut.closers += [scratch.cleanup, setup.close]
    return dut


def _poke_host_config(setup: HostSetup) -> bool:
    """A device-side config change: net link flap (down and up again, with
    VIRTIO_NET_F_STATUS offered), blk image resize; rng, console without a size and the
    IOMMU have none to offer."""
    for b in setup.built:
        set_link = getattr(b.model, "set_link", None)
        if set_link is not None and getattr(b.model, "offered", 0) >> NET_F.STATUS & 1:
            up = getattr(b.model, "link_up", True)
            set_link(not up)  # a flap: two config changes, and the link as it was after
            set_link(up)
            return True
        resize = getattr(b.model, "resize", None)
        if resize is not None:
            resize(int(getattr(b.model, "size_bytes", 0)) + (1 << 20))
            return True
    return False


# -- finding the transport -----------------------------------------------------------------


@dataclass
class OpenedTransport:
    ops: ConfigOps
    kind: str  # mmio-v1, mmio-v2, pci-modern, pci-legacy
    mmio_base: int | None = None
    mmio_irq: int | None = None
    pci: GuestPciDevice | None = None
    bus: GuestPciBus | None = None


async def open_transport(dut: Dut, *, want_key: str | None = None) -> OpenedTransport:
    """Find the device of type ``want_key`` (default: the DUT's) and bring its transport
    up the way Linux's probe does, without starting any driver."""
    key = want_key or dut.key
    type_id = DEVICE_TYPES[key].id
    # PCI as the platform describes it: ACPI (MCFG + the host bridge's _CRS) when firmware
    # left tables, else the command-line stand-in of a machine without firmware
    fw = parse_pci_param(dut.cmdline)
    if fw is None and not dut.transport.startswith("mmio"):
        fw = discover(dut.memory, dut.cmdline, dut.ram_base).pci
    if dut.transport.startswith("mmio") or (key == "iommu" and dut.backend == "host"):
        for res in parse_cmdline(dut.cmdline):
            t = MmioTransportDriver(dut.link, res.base, dut.guest_order)
            try:
                found = await t.identify((1, 2))
            except TransportError:
                continue
            if found == type_id:
                return OpenedTransport(t, t.name, res.base, res.irq)
        raise DutError(f"no virtio-mmio {key} device on the platform")
    if fw is None:
        raise DutError("no PCI host on the platform")
    access: ConfigAccess = (
        EcamAccess(dut.link, fw.ecam_base, fw.ecam_buses)
        if fw.ecam_base is not None
        else Conf1Access(dut.link)
    )
    bus = GuestPciBus(access, fw)
    for pdev in await bus.scan():
        if pdev.vendor_id != PCI.vendor_id:
            continue
        await bus.enable(pdev)
        legacy = dut.transport == "pci-legacy" or (
            dut.transport == "pci-transitional" and dut.interface == "legacy"
        )
        cls = PciLegacyTransport if legacy else PciModernTransport
        t2 = cls(dut.link, bus, pdev, dut.guest_order)
        try:
            found = await t2.probe()
        except TransportError:
            continue
        if found != type_id:
            continue
        await bus.set_master(pdev)
        return OpenedTransport(t2, "pci-legacy" if legacy else "pci-modern", pci=pdev, bus=bus)
    raise DutError(f"no PCI {key} device on the platform")


# -- QEMU -------------------------------------------------------------------------------------


#: QEMU slots of a virtio-iommu-pci under test and of the rng endpoint behind it (q35)
QEMU_IOMMU_SLOT = 3
QEMU_ENDPOINT_SLOT = 4


def _qemu_iommu(device: str, transport: str) -> tuple[list[str], list[int]]:
    """QEMU's virtio-iommu-pci (a q35 PCI function; QEMU 7.2 has no mmio flavour a machine
    of ours takes) with its properties, and the endpoint ids behind it: one virtio-rng-pci
    with iommu_platform=on, whose requester id is its bus/device/function."""
    if transport != "pci-modern":
        raise DutError("qemu:virtio-iommu runs on pci-modern (virtio-iommu-pci on q35) only")
    _, _, props = device.partition(",")
    option = ",".join(filter(None, [f"virtio-iommu-pci,addr={QEMU_IOMMU_SLOT:x}.0", props]))
    requester = QEMU_ENDPOINT_SLOT << PCI_SLOT_SHIFT  # bus 0, function 0
    return ["-device", option], [requester]


PCI_SLOT_SHIFT = 3  # requester id: bus << 8 | slot << 3 | function


def open_qemu(device: str, transport: str, *, workdir: Path | None = None) -> Dut:
    """A QEMU device under qtest (blocking: spawns QEMU). Raises DutError when QEMU is
    missing or refuses the device."""
    from virtio_sim.host.devices.base import PropertyError
    from virtio_sim.orchestration.qemu.fw_cfg import FwCfgError
    from virtio_sim.orchestration.qemu.machines import (
        QEMU_TRANSPORTS,
        MachineFacts,
        describe,
        install_acpi,
        machine_args,
        machine_of,
        qemu_devices,
    )
    from virtio_sim.orchestration.qemu.qtest import QtestError, spawn_qtest
    from virtio_sim.orchestration.qemu.qtest_link import QtestLink, QtestMemory
    from virtio_sim.orchestration.qemu.run import QEMU_BINARY, qemu_refusal
    from virtio_sim.orchestration.qemu.tools import MissingTool, require_qemu

    name = device.split(",", 1)[0]
    if transport not in QEMU_TRANSPORTS:
        raise DutError(f"transport {transport!r} is not available with QEMU's devices")
    scratch = tempfile.TemporaryDirectory(prefix="virtio-sim-conf-qemu-")
    try:
        facts = MachineFacts.of(machine_of(transport))
        qemu = require_qemu(QEMU_BINARY[facts.arch])
        iommu = name.startswith("virtio-iommu")
        if iommu:
            iommu_args, endpoints = _qemu_iommu(device, transport)
            device = f"{IOMMU_ENDPOINT_DEVICE}-device,iommu_platform=on,addr={QEMU_ENDPOINT_SLOT:x}.0"
        devs = qemu_devices([device], transport, Path(scratch.name))
        if iommu:
            devs.args = iommu_args + devs.args
        # microvm without ACPI lists its transports on the command line (no tables to read);
        # q35's PCI is enumerated by the conformance driver itself, through the ECAM and
        # windows of QEMU's tables
        acpi = facts.name != "microvm"
        args = machine_args(transport, RAM_SIZE, facts.name, acpi=acpi) + devs.args
        q = spawn_qtest(qemu, facts.arch, args, workdir=workdir or Path(scratch.name))
    except (PropertyError, MissingTool, QtestError) as e:
        scratch.cleanup()
        raise DutError(qemu_refusal(str(e)) or str(e)) from None
    try:
        q.client.intercept_irqs(facts.irq_controller)
        rsdp = ""
        if acpi:
            rsdp = f"acpi_rsdp={install_acpi(q.client, facts.name).rsdp_address:#x}"
        cmdline = f"{describe(q.client, transport, facts.name, acpi=acpi)} {rsdp}".strip()
    except (FwCfgError, QtestError) as e:
        stderr = q.close()
        scratch.cleanup()
        raise DutError(qemu_refusal(stderr) or f"QEMU stopped: {e}") from None
    link = QtestLink(q.client, irq_base=facts.irq_line_offset)
    dut = Dut(
        name=name,
        backend="qemu",
        transport=transport,
        link=link,
        memory=QtestMemory(q.client, link),
        cmdline=cmdline,
        ram_base=facts.ram_base,
        key=device_key(name),
        disk=devs.disks[0] if devs.disks else None,
        pid=q.process.pid,
    )
    if iommu:
        dut.endpoints = endpoints
    link.irq_handler = lambda kind, line, value: dut.irqs.append(("line", line, value))
    dut.closers += [scratch.cleanup, lambda: dut.notes.extend(q.close().splitlines())]
    return dut
