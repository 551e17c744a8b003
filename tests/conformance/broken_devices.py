"""Deliberately broken host devices: each breaks one spec rule the conformance suite must
catch, by requirement id. A defect is a patch applied to a freshly built host (before
anything runs) plus the device, transport and ring it is shown on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtio_sim import layouts
from virtio_sim.host.build import HostSetup
from virtio_sim.host.virtio_device import VirtioDevice
from virtio_sim.ring.hooks import DeviceHooks
from virtio_sim.ring.split import SplitDeviceQueue
from virtio_sim.spec import STATUS


@dataclass(frozen=True)
class Defect:
    name: str
    device: str
    transport: str
    requirement: str  # the id that must FAIL
    patch: Callable[[HostSetup], None]
    ring: str = "split"


def _vdev(setup: HostSetup) -> VirtioDevice:
    return setup.devices[0]


def _on_split_rings(setup: HostSetup, hooks: DeviceHooks) -> None:
    """Every split ring the device builds from now on runs with ``hooks``."""
    vdev = _vdev(setup)
    original = vdev._ring

    def ring(q: Any) -> Any:
        r = original(q)
        if isinstance(r, SplitDeviceQueue):
            r.hooks = hooks
        return r

    vdev._ring = ring  # type: ignore[method-assign]


class IdxBeforeElement(DeviceHooks):
    """Publishes used idx first, then writes the element (a driver can read garbage)."""

    def write_used(self, ring: Any, head: int, written: int, count: int) -> None:
        element = ring.used_idx
        ring.write_used_idx(element + count)  # the index first ...
        ring.write_used(head, written, count)  # ... then the element (and the index again)


class WrongUsedLen(DeviceHooks):
    """Reports one byte more than it wrote."""

    def write_used(self, ring: Any, head: int, written: int, count: int) -> None:
        ring.write_used(head, written + 1, count)


def used_idx_before_element(setup: HostSetup) -> None:
    _on_split_rings(setup, IdxBeforeElement())


def wrong_used_len(setup: HostSetup) -> None:
    _on_split_rings(setup, WrongUsedLen())


def accepts_unoffered_feature(setup: HostSetup) -> None:
    vdev = _vdev(setup)
    vdev._features_ok_refusal = lambda: None  # type: ignore[method-assign]


def consumes_before_driver_ok(setup: HostSetup) -> None:
    """Serves a kick before DRIVER_OK (what the host did before the deferral fix)."""
    vdev = _vdev(setup)
    original = vdev.notify

    def notify(index: int) -> None:
        saved = vdev.status
        vdev.status |= STATUS.DRIVER_OK
        try:
            original(index)
        finally:
            vdev.status = saved | (vdev.status & STATUS.DEVICE_NEEDS_RESET)

    vdev.notify = notify  # type: ignore[method-assign]


def isr_not_cleared_on_read(setup: HostSetup) -> None:
    proxy = setup.machine.pci_devices[0]

    def read_isr() -> int:
        return int(proxy.isr)

    proxy.read_isr = read_isr  # type: ignore[method-assign]


def generation_not_bumped(setup: HostSetup) -> None:
    vdev = _vdev(setup)

    def config_changed() -> None:
        vdev._config_snapshot = vdev._config_space()
        if vdev.status & STATUS.DRIVER_OK and vdev.sink:
            vdev.sink.config_interrupt()

    vdev.config_changed = config_changed  # type: ignore[method-assign]


def writes_readable_buffer(setup: HostSetup) -> None:
    """Scribbles over the request header (a device-readable buffer) after serving it."""
    model = _vdev(setup).model
    original = model.process

    def process(queue: Any) -> int:
        pop = queue.pop

        def scribbling_pop() -> Any:
            chain = pop()
            if chain is not None and chain.readable:
                addr, _ = chain.readable[0]
                queue.space.write(addr, b"\xff")
            return chain

        queue.pop = scribbling_pop
        return int(original(queue))

    model.process = process  # type: ignore[method-assign]


def status_not_zero_after_reset(setup: HostSetup) -> None:
    vdev = _vdev(setup)
    original = vdev.reset

    def reset() -> None:
        original()
        vdev.status = STATUS.ACKNOWLEDGE

    vdev.reset = reset  # type: ignore[method-assign]


def queue_ready_not_read_back(setup: HostSetup) -> None:
    transport = setup.machine.slots[0].transport
    original = transport.read

    def read(offset: int, size: int) -> int:
        if offset == layouts.MMIO_OFFSETS["QueueReady"]:
            return 0
        return int(original(offset, size))

    transport.read = read  # type: ignore[method-assign]


def interrupts_despite_no_interrupt(setup: HostSetup) -> None:
    class Noisy(DeviceHooks):
        def needs_interrupt(self, ring: Any, wanted: bool) -> bool:
            return True

    _on_split_rings(setup, Noisy())


def iommu_ignores_attach_reserved(setup: HostSetup) -> None:
    model = setup.iommu_device.model if setup.iommu_device else None
    assert model is not None
    original = model._apply  # type: ignore[attr-defined]

    def apply(rtype: int, body: Any) -> int:
        if hasattr(body, "reserved") and hasattr(body, "flags") and hasattr(body, "endpoint"):
            body = body._replace(reserved=bytes(len(body.reserved)))  # bodies are named tuples
        return int(original(rtype, body))

    model._apply = apply  # type: ignore[attr-defined]


DEFECTS = (
    Defect(
        "used-idx-before-element",
        "virtio-rng-device",
        "mmio-v2",
        "split.used.dev-len-before-idx",
        used_idx_before_element,
    ),
    Defect("wrong-used-len", "virtio-blk-device", "mmio-v2", "split.used.len-bytes-written", wrong_used_len),
    Defect(
        "accepts-unoffered-feature",
        "virtio-rng-device",
        "mmio-v2",
        "features.dev.reject-via-features-ok",
        accepts_unoffered_feature,
    ),
    Defect(
        "consumes-before-driver-ok",
        "virtio-rng-pci",
        "pci-modern",
        "status.dev.no-use-before-driver-ok",
        consumes_before_driver_ok,
    ),
    Defect(
        "isr-not-cleared-on-read",
        "virtio-rng-pci",
        "pci-modern",
        "pci.isr.dev-clear-on-read",
        isr_not_cleared_on_read,
    ),
    Defect(
        "config-generation-not-bumped",
        "virtio-net-device",
        "mmio-v2",
        "mmio.dev.config-generation",
        generation_not_bumped,
    ),
    Defect(
        "writes-readable-buffer",
        "virtio-blk-device",
        "mmio-v2",
        "split.desc.dev-no-write-readable",
        writes_readable_buffer,
    ),
    Defect(
        "status-not-zero-after-reset",
        "virtio-blk-pci",
        "pci-modern",
        "reset.dev.status-zero",
        status_not_zero_after_reset,
    ),
    Defect(
        "queue-ready-not-read-back",
        "virtio-rng-device",
        "mmio-v2",
        "mmio.dev.queue-ready-readback",
        queue_ready_not_read_back,
    ),
    Defect(
        "interrupts-with-event-idx-far-ahead",
        "virtio-rng-device",
        "mmio-v2",
        "split.usedsupp.dev-event-idx-else-quiet",
        interrupts_despite_no_interrupt,
    ),
    Defect(
        "iommu-ignores-attach-reserved",
        "virtio-iommu",
        "mmio-v2",
        "iommu.attach.dev-reserved-inval",
        iommu_ignores_attach_reserved,
    ),
)
