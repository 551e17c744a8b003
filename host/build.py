"""Build a host from QEMU-style options: guest RAM, a machine, its devices.

Both the embedded mode and the host process build their side here, so a device option
means the same thing in either. Anything the options get wrong is a PropertyError raised
before the guest runs (the run's outcome is then HOST_REFUSED).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtio_sim.devices import kind_by_name
from virtio_sim.dma import AddressSpace, IdentityAddressSpace, TranslatedAddressSpace, WriteLog
from virtio_sim.host.devices.base import PropertyError, parse_bool
from virtio_sim.host.kinds import BuildContext, host_half
from virtio_sim.host.machine import Machine
from virtio_sim.host.machine_types import MachineSpec, check_placement, parse_machine, ram_layout
from virtio_sim.host.platform import TRANSLATING, P2mAddressSpace, PlatformIommuWindow, p2m_shift
from virtio_sim.host.platform import cmdline_param as platform_cmdline
from virtio_sim.host.qdev import (
    BuiltDevice,
    DeviceSpec,
    build_device,
    device_props,
    model_name,
    parse_device_option,
    pci_name,
)
from virtio_sim.host.qemu_backends import Backends, resolve
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.layouts import ByteOrder
from virtio_sim.memory import GuestMemory

# The IOMMU, PCI and firmware-table code is imported where a machine needs it: an mmio
# run on microvm (the default) builds none of it (start-up, tests/test_cli_imports.py).
if TYPE_CHECKING:
    from virtio_sim.host.iommu import Iommu, UnisolatedAddressSpace
    from virtio_sim.host.pci import PciFunction

PCI_TRANSPORTS = ("pci-modern", "pci-transitional", "pci-legacy")
HOST_TRANSPORTS = ("mmio-v2", "mmio-v1", "mmio", *PCI_TRANSPORTS)
IOMMU_KINDS = ("none", "virtio-iommu")

# What each PCI transport choice sets on a virtio-*-pci device unless the user did.
# pci-legacy is the transitional device; the guest is told to drive its legacy interface.
PCI_TRANSPORT_PROPS: dict[str, dict[str, str]] = {
    "pci-modern": {"disable-legacy": "on", "disable-modern": "off"},
    "pci-transitional": {"disable-legacy": "off", "disable-modern": "off"},
    "pci-legacy": {"disable-legacy": "off", "disable-modern": "off"},
}
# QEMU -global properties this host knows, with QEMU's defaults.
GLOBAL_DEFAULTS = {
    "virtio-mmio.force-legacy": "on",
    # A machine-wide default for every virtio device (QEMU's abstract virtio-device type);
    # a device's own iommu_platform= overrides it.
    "virtio-device.iommu_platform": "off",
}


@dataclass
class HostConfig:
    devices: list[str]
    transport: str = "mmio-v2"
    ram_size: int = 64 << 20
    seed: int | None = None
    guest_order: ByteOrder = "little"
    #: where default disk images are created; a callable makes the folder when the first
    #: image needs it (a run without a scratch disk creates none)
    scratch_dir: str | Callable[[], str] | None = None
    globals: dict[str, str] = field(default_factory=dict)  # QEMU -global driver.prop=value
    iommu: str = "none"  # QEMU's machine property: none | virtio-iommu
    # How devices reach guest RAM, asked each time a device sets up a ring: identity over
    # the shared map by default; the process host supplies DMA over the wire for TCP.
    # An IOMMU translates on top of it.
    address_space: Callable[[GuestMemory], AddressSpace] | None = None
    #: "qemu": the IOMMU translates PCI functions only and needs a PCI bus, as QEMU's
    #: virtio-iommu; "spec": virtio-mmio transports are endpoints too (the virtio-iommu
    #: spec and the VIOT allow it; conformance runs check the device model that way)
    iommu_topology: str = "qemu"
    #: QEMU's -M value (microvm|q35|virt[,acpi=..][,iommu=virtio][,x-mmio-hid=..]); None:
    #: the microvm layout announced on the command line (q35's PCI for PCI transports)
    machine: str | None = None
    #: -drive / -netdev / -chardev definitions the devices' drive=/netdev=/chardev= name
    backends: Backends = field(default_factory=Backends)


@dataclass
class HostSetup:
    memory: GuestMemory
    machine: Machine
    devices: list[VirtioDevice] = field(default_factory=list)
    built: list[BuiltDevice] = field(default_factory=list)
    iommu: Iommu | None = None
    iommu_device: VirtioDevice | None = None
    machine_spec: MachineSpec | None = None
    #: raw-GPA address spaces of devices behind the IOMMU (evidence for OK_NO_ISOLATION)
    unisolated: list[UnisolatedAddressSpace] = field(default_factory=list)
    #: devices' views of a Xen-PV-like machine (machine addresses through the p2m)
    p2m_spaces: list[P2mAddressSpace] = field(default_factory=list)

    @property
    def unisolated_accesses(self) -> int:
        return sum(s.unisolated_accesses for s in self.unisolated)

    @property
    def ram_base(self) -> int:
        return self.machine_spec.ram_base if self.machine_spec is not None else 0

    @property
    def arch(self) -> str:
        return str(self.machine_spec.facts["arch"]) if self.machine_spec is not None else "x86_64"

    @property
    def ram_regions(self) -> tuple[tuple[int, int], ...]:
        """The memory map the firmware hands the guest (e820 / the DT memory node)."""
        return tuple((r.gpa, r.size) for r in self.memory.regions)

    def evidence(self) -> dict[str, Any]:
        """What the host saw, as plain data (RunResult.add_host_evidence folds it in)."""
        return {
            "devices": [
                {
                    "device_features": vdev.device_features,
                    "visible_features": vdev.visible_features,
                    "notes": list(vdev.notes),
                    "violations": [dict(v.__dict__) for v in vdev.violations],
                    "ring": _ring_evidence(vdev),
                }
                for vdev in self.devices
            ],
            "machine_notes": list(self.machine.notes),
            "iommu": self._iommu_evidence(),
            "raw_writes": self._raw_writes(),
        }

    def _raw_writes(self) -> list[list[int]]:
        """Guest RAM written by devices whose addresses were used untranslated."""
        log = WriteLog()
        logs = [s.writes for s in self.unisolated] + [s.writes for s in self.p2m_spaces]
        for written in logs:
            for a, b in written.ranges:
                log.add(a, b - a)
        return log.ranges

    def _iommu_evidence(self) -> dict[str, Any] | None:
        if self.iommu is None:
            return None
        faults = self.iommu.faults
        return {
            "faults": [f"{f.address:#x} ep {f.endpoint} reason {f.reason}" for f in faults[:8]],
            "fault_count": len(faults),
            "unisolated_accesses": self.unisolated_accesses,
            "iotlb_hits": self.iommu.iotlb_hits,
            "iotlb_misses": self.iommu.iotlb_misses,
            "first_fault_address": faults[0].address if faults else 0,
        }

    def close(self) -> None:
        for b in self.built:
            close = getattr(b.model, "close", None)
            if close:
                close()
        self.memory.close()


def _ring_evidence(vdev: VirtioDevice) -> dict[str, Any]:
    """The ring format and features as the device side saw them."""
    rings = [q.ring for q in vdev.queues if q.ring is not None]
    return {
        "device_format": type(rings[0]).__name__ if rings else None,
        "device_barriers": vdev.barriers,
        "notify_data_checked": vdev.notify_data_checked,
        "device_queue_resets": len(vdev.queue_resets),
    }


def _apply_defaults(spec: DeviceSpec, cfg: HostConfig, index: int) -> None:
    """Fill in what a one-line run leaves out (a scratch disk, the entropy seed, a MAC per
    NIC): each device kind's host half says what (host/kinds.py)."""
    kind = kind_by_name(model_name(spec.driver))
    if kind is not None and kind.qdev_model:
        host_half(kind.key).defaults(spec.props, BuildContext(index, cfg.seed, cfg.scratch_dir))


def _place_on_bus(spec: DeviceSpec, transport: str) -> None:
    """Fit a device name to the transport's bus (QEMU refuses a device on the wrong bus;
    here a bus-independent ``virtio-X-device`` name follows the transport chosen)."""
    is_pci = model_name(spec.driver) != spec.driver
    if transport in PCI_TRANSPORTS:
        if not is_pci:
            name = pci_name(spec.driver)
            if name is None:
                raise PropertyError(f"No 'virtio-pci' flavour of device '{spec.driver}'")
            spec.driver = name
        for k, v in PCI_TRANSPORT_PROPS[transport].items():
            spec.props.setdefault(k, v)
    elif is_pci:
        raise PropertyError(f"No 'PCI' bus found for device '{spec.driver}'")


def mmio_force_legacy(cfg: HostConfig) -> bool:
    """mmio-v1 / mmio-v2 pick the version; plain mmio follows virtio-mmio.force-legacy."""
    if cfg.transport == "mmio-v1":
        return True
    if cfg.transport == "mmio-v2":
        return False
    key = "virtio-mmio.force-legacy"
    return parse_bool(key, cfg.globals.get(key, GLOBAL_DEFAULTS[key]))


def default_transport(devices: list[str], globals_: dict[str, str]) -> str:
    """The transport a device name implies, as QEMU puts a device on the bus its name
    says: virtio-*-pci on q35's PCI (transitional on the root bus, as QEMU's
    disable-legacy=auto; modern with disable-legacy=on; driven through the legacy
    interface with disable-modern=on), virtio-*-device on virtio-mmio (version 2, or
    whatever -global virtio-mmio.force-legacy says)."""
    if not devices:
        return "mmio-v2"
    spec = parse_device_option(devices[0])
    if model_name(spec.driver) != spec.driver:
        if spec.props.get("disable-modern", "off") in ("on", "true", "yes"):
            return "pci-legacy"
        if spec.props.get("disable-legacy", "auto") in ("on", "true", "yes"):
            return "pci-modern"
        return "pci-transitional"
    return "mmio" if "virtio-mmio.force-legacy" in globals_ else "mmio-v2"


def check_global(key: str, value: str) -> None:
    """One ``-global DRIVER.PROP=VALUE``, checked as QEMU checks it (the property must
    exist on that driver and take the value), with QEMU's wording."""
    driver, dot, prop = key.rpartition(".")
    try:
        if not dot or not driver or not prop:
            raise PropertyError(f"Invalid -global '{key}={value}': expected driver.property=value")
        if key in GLOBAL_DEFAULTS:
            parse_bool(prop, value)
            return
        if driver in ("virtio-mmio", "virtio-device"):
            raise PropertyError(f"Property '{key}' not found")
        table = device_props(driver)
        if prop not in table or prop in ("id", "bus", "addr"):
            raise PropertyError(f"Property '{key}' not found")
        if table[prop].type == "bool":
            parse_bool(prop, value)
    except PropertyError as e:
        raise PropertyError(f"can't apply global {key}={value}: {e}") from None


def _apply_globals(specs: list[DeviceSpec], globals_: dict[str, str]) -> None:
    """Device-type globals are defaults for every device of that exact name."""
    for key, value in globals_.items():
        driver, _, prop = key.rpartition(".")
        for spec in specs:
            if spec.driver == driver:
                spec.props.setdefault(prop, value)


def _placement(specs: list[DeviceSpec], cfg: HostConfig, mspec: MachineSpec | None) -> list[int | None]:
    """QEMU's id= (unique) and bus= (an existing bus of the device's kind) per device;
    the mmio bus index each device asked for."""
    seen: set[str] = set()
    buses: list[int | None] = []
    pci_machine = cfg.transport in PCI_TRANSPORTS
    for spec in specs:
        ident = spec.props.get("id")
        if ident is not None:
            if ident in seen or ident in cfg.backends.ids():
                raise PropertyError(f"Duplicate ID '{ident}' for device")
            seen.add(ident)
        bus = spec.props.get("bus")
        index: int | None = None
        if bus is not None:
            is_pci = model_name(spec.driver) != spec.driver or pci_machine
            prefix = "virtio-mmio-bus."
            if is_pci and bus == "pcie.0" and pci_machine:
                pass
            elif not is_pci and bus.startswith(prefix) and bus[len(prefix) :].isdigit():
                index = int(bus[len(prefix) :])
            else:
                raise PropertyError(f"Bus '{bus}' not found")
        buses.append(index)
    return buses


def build_host(cfg: HostConfig) -> HostSetup:
    if cfg.transport not in HOST_TRANSPORTS:
        raise PropertyError(f"unknown transport {cfg.transport!r}")
    for key, value in cfg.globals.items():
        check_global(key, value)
    if cfg.iommu not in IOMMU_KINDS:
        raise PropertyError(f"Property 'iommu' doesn't take value '{cfg.iommu}' ({'|'.join(IOMMU_KINDS)})")
    force_legacy = mmio_force_legacy(cfg)
    specs = [parse_device_option(d) for d in cfg.devices]
    for spec in specs:
        device_props(spec.driver)  # an unknown name first, as QEMU
    mspec = parse_machine(cfg.machine) if cfg.machine is not None else None
    iommu_kind = cfg.iommu
    if mspec is not None:
        check_placement(mspec, cfg.transport, specs[0].driver if specs else "", PCI_TRANSPORTS)
        if mspec.iommu != "none":
            iommu_kind = mspec.iommu
    _apply_globals(specs, cfg.globals)
    buses = _placement(specs, cfg, mspec)
    mmio_endpoints = cfg.iommu_topology == "spec"
    if iommu_kind == "virtio-iommu" and not mmio_endpoints and not _has_pci_bus(mspec, cfg.transport):
        # QEMU 7.2 hw/virtio/virtio-iommu.c realize: the IOMMU translates PCI buses only
        # (measured: `-M microvm -device virtio-iommu-device`; docs/dma.md).
        raise PropertyError("VIRTIO-IOMMU is not attached to any PCI bus!")
    built: list[BuiltDevice] = []
    try:
        iommu_default = cfg.globals.get("virtio-device.iommu_platform")
        for i, spec in enumerate(specs):
            if iommu_default is not None:
                spec.props.setdefault("iommu_platform", iommu_default)
            _place_on_bus(spec, cfg.transport)
            table = device_props(spec.driver)
            for k in spec.props:  # QEMU sets properties before it realizes the device
                if k not in table:
                    raise PropertyError(f"Property '{spec.driver}.{k}' not found")
            resolve(spec.driver, model_name(spec.driver), spec.props, cfg.backends)
            _apply_defaults(spec, cfg, i)
            built.append(build_device(spec))
    except PropertyError:
        for b in built:
            close = getattr(b.model, "close", None)
            if close:
                close()
        raise
    default_machine = "q35" if cfg.transport in PCI_TRANSPORTS else "microvm"
    machine_name = mspec.name if mspec is not None else default_machine
    memory = GuestMemory.create_layout(ram_layout(machine_name, cfg.ram_size))
    if mspec is None:
        machine = Machine(memory)
    else:
        facts = mspec.facts
        machine = Machine(
            memory, mmio_base=facts["mmio_base"], mmio_slots=facts["mmio_slots"], irq_base=mspec.irq_base
        )
        if facts["user_mmio"]:
            machine.empty_transports_legacy = force_legacy  # every slot a transport, as QEMU
    if cfg.transport in PCI_TRANSPORTS:
        if mspec is not None and mspec.name == "virt":
            machine.attach_virt_pci(mspec.facts)
        else:
            machine.attach_q35_pci()
    setup = HostSetup(memory, machine, built=built, machine_spec=mspec)
    make_ram = cfg.address_space or IdentityAddressSpace
    platform = mspec.platform if mspec is not None else "none"
    device_ram = make_ram
    try:
        if platform != "none" and iommu_kind != "none":
            raise PropertyError("x-platform and a virtio-iommu cannot be combined on one machine")
        if platform in TRANSLATING:
            # The platform IOMMU: off until the guest turns it on (x86), or always
            # translating (pseries' TCE); its registers sit where QEMU's intel-iommu's do.
            from virtio_sim.host.iommu import Iommu

            setup.iommu = Iommu(set(), bypass=platform != "tce")
            machine.sysdevs.append(PlatformIommuWindow(setup.iommu))
            machine.platform_params.append(platform_cmdline(platform))
        elif platform == "xen-pv":
            base, size = memory.regions[0].gpa, memory.regions[0].size
            shift = p2m_shift(size)
            machine.platform_params.append(platform_cmdline(platform, p2m=(base, size, shift)))

            def device_ram(mem: GuestMemory) -> AddressSpace:
                space = P2mAddressSpace(mem, base, size, shift, make_ram(mem))
                setup.p2m_spaces.append(space)
                return space

        if iommu_kind == "virtio-iommu":
            # The IOMMU itself sits on an mmio slot (also on q35); its endpoints are added
            # below as the devices are plugged.
            from virtio_sim.host.devices.iommu import IommuDevice
            from virtio_sim.host.iommu import Iommu

            setup.iommu = Iommu(set())
            iommu_dev = VirtioDevice(IommuDevice(setup.iommu), lambda f: make_ram(memory))
            iommu_dev.guest_order = cfg.guest_order
            machine.add_mmio_device(iommu_dev, legacy=force_legacy)
            setup.iommu_device = iommu_dev
        for index, b in enumerate(built, start=1):
            # mmio endpoints: the devices in command-line order from 1; PCI endpoints: the
            # requester id (bus << 8 | devfn), known once the function is plugged.
            endpoint: list[int] = [index]
            translated = dma_translated(b, setup.iommu is not None, mmio_endpoints=mmio_endpoints)
            space = _space_for(memory, setup, endpoint, translated, device_ram)
            vdev = _plug(machine, memory, b, force_legacy, space, make_ram, endpoint, buses[index - 1])
            vdev.guest_order = cfg.guest_order
            setup.devices.append(vdev)
            if setup.iommu is not None and b.pci is not None:
                # Only PCI functions are endpoints: QEMU's VIOT lists PCI ranges only, and
                # a virtio-mmio device is never behind the virtio-iommu (no get_dma_as).
                setup.iommu.endpoints.add(endpoint[0])
                machine.iommu_pci_endpoints[endpoint[0]] = endpoint[0]
            elif setup.iommu is not None and mmio_endpoints:
                setup.iommu.endpoints.add(endpoint[0])
                machine.iommu_endpoints[machine.slots[-1].base] = endpoint[0]
        if platform == "tce" and setup.iommu is not None:
            # Every PCI host bridge's DMA window exists from boot, with no entries yet.
            for rid in sorted(setup.iommu.endpoints):
                setup.iommu.attach(rid, rid, bypass=False)
        if mspec is not None and mspec.acpi:
            from virtio_sim.host.firmware import install_acpi

            install_acpi(machine, memory, mspec)
        elif mspec is not None and mspec.facts["arch"] == "aarch64":
            from virtio_sim.host.firmware import install_fdt

            install_fdt(machine, memory, mspec)
    except (PropertyError, ValueError) as e:
        setup.close()
        raise PropertyError(str(e)) from None
    return setup


def dma_translated(b: BuiltDevice, iommu_present: bool, *, mmio_endpoints: bool = False) -> bool:
    """QEMU's plug-time choice of a device's DMA address space (virtio_bus_device_plugged).

    The address space is picked once, when the device is plugged, from the device's
    ``iommu_platform`` property and from whether its bus has a DMA address space of its
    own (the transport's ``get_dma_as``): virtio-pci has one (the PCI bus's IOMMU address
    space when a vIOMMU covers the bus), virtio-mmio on sysbus has none, so QEMU never
    translates a virtio-mmio device. What the driver later negotiates does not change the
    choice: a translating device that the driver hands guest-physical addresses (it did
    not accept bit 33) translates them anyway. ``x-dma`` says how a generation's device
    meets that rule: ``honor`` (QEMU 2.9+: translated when the property is on),
    ``bypass`` (before 2.9, and a lying device: never), ``translate-always`` (a lying
    device: translated whatever the property says).
    """
    if (b.pci is None and not mmio_endpoints) or not iommu_present:
        return False
    if b.dma_mode == "translate-always":
        return True
    return b.dma_mode == "honor" and b.transport_features.access_platform


def _has_pci_bus(mspec: MachineSpec | None, transport: str) -> bool:
    """Whether the machine has a PCI bus: q35 and virt do, microvm does not (the default
    machine of the mmio transports)."""
    if mspec is None:
        return transport in PCI_TRANSPORTS
    return bool(mspec.facts["pci"])


def _space_for(
    memory: GuestMemory,
    setup: HostSetup,
    endpoint_ref: list[int],
    translated: bool,
    make_ram: Callable[[GuestMemory], AddressSpace] = IdentityAddressSpace,
) -> Callable[[int], AddressSpace]:
    """The device's address space, as chosen at plug time (:func:`dma_translated`)."""

    def space(features: int) -> AddressSpace:
        iommu = setup.iommu
        endpoint = endpoint_ref[0]
        if iommu is None or endpoint not in iommu.endpoints:
            return make_ram(memory)  # not behind the IOMMU at all (a virtio-mmio device)
        from virtio_sim.host.iommu import EndpointTranslator, UnisolatedAddressSpace

        if translated:
            translator = EndpointTranslator(iommu, endpoint)
            return TranslatedAddressSpace(memory, translator, make_ram(memory))
        raw = UnisolatedAddressSpace(memory, iommu, endpoint, make_ram(memory))
        setup.unisolated.append(raw)
        return raw

    return space


def _plug(
    machine: Machine,
    memory: GuestMemory,
    b: BuiltDevice,
    force_legacy: bool,
    mmio_space: Callable[[int], AddressSpace],
    make_ram: Callable[[GuestMemory], AddressSpace] = IdentityAddressSpace,
    endpoint_ref: list[int] | None = None,
    bus: int | None = None,
) -> VirtioDevice:
    if b.pci is None:
        vdev = VirtioDevice(
            b.model,
            mmio_space,
            transport_features=b.transport_features,
            policy=b.policy,
            strict_rings=b.strict_rings,
            validate_access_platform=b.validate_access_platform,
        )
        machine.add_mmio_device(vdev, legacy=force_legacy, bus=bus)
        return vdev
    from virtio_sim.host.pci import BusMasterGate
    from virtio_sim.host.transport.virtio_pci import VirtioPciProxy

    # A PCI device's DMA goes through its function: no bus mastering, no access.
    holder: list[PciFunction] = []

    def space_for(features: int) -> AddressSpace:
        return BusMasterGate(mmio_space(features), lambda: holder[0] if holder else None)

    vdev = VirtioDevice(
        b.model,
        space_for,
        transport_features=b.transport_features,
        policy=b.policy,
        strict_rings=b.strict_rings,
        validate_access_platform=b.validate_access_platform,
    )
    opts = b.pci
    proxy = VirtioPciProxy(
        vdev,
        modern=opts.modern,
        legacy=opts.legacy,
        vectors=opts.vectors,
        class_code=opts.class_code,
        name=b.spec.driver,
    )
    holder.append(proxy.fn)
    machine.add_pci_device(proxy, opts.slot, opts.function)
    if endpoint_ref is not None:
        bus, slot, fn = proxy.fn.bdf
        endpoint_ref[0] = bus << 8 | slot << 3 | fn  # the requester id
    return vdev
