"""Request framing rules: what a device of one kind can tell about a driver's requests.

Why here: a device kind's framing (virtio-blk's 16-byte header and status byte, the net
header, console control messages, entropy buffers writable, virtio-iommu's head, body and
tail) is part of the device, like its feature bits and config layout, so its rules live in
its own package (``virtio_sim/devices/<kind>/framing.py``) and a new kind brings its own.
The driver watch (virtio_sim/orchestration/conformance/driver_watch*.py) finds them through
:attr:`DeviceKind.framing <virtio_sim.devices.DeviceKind>` and hands them every chain the
driver makes available, the device config accesses and the end of the run.

Core (imports neither side): a rule family sees the driver only through a :class:`Judge`
(record a verdict, the negotiated features, the device config) and a :class:`Request`
(the validated segments of one chain and how to read them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any, ClassVar, Protocol

from virtio_sim.layouts import ByteOrder
from virtio_sim.spec import F

#: (device address, length, device-writable) of every buffer of a chain, in chain order
Segments = list[tuple[int, int, bool]]


class Judge(Protocol):
    """What a framing rule family may ask of the watch that runs it."""

    def check(self, requirement: str, ok: bool, evidence: str) -> bool:
        """Record ``requirement`` exercised (``ok``) or FAIL it; returns ``ok``."""
        ...

    def ok(self, *requirements: str) -> None:
        """Record ``requirements`` exercised without a failure."""
        ...

    def not_applicable(self, requirement: str, why: str) -> None: ...

    def has(self, feature: int) -> bool:
        """Whether the driver negotiated feature bit ``feature``."""
        ...

    @property
    def driver_features(self) -> int: ...

    @property
    def legacy(self) -> bool:
        """No VERSION_1: the legacy interface (guest byte order, fixed framing)."""
        ...

    @property
    def legacy_transport(self) -> bool:
        """A legacy-only transport (virtio-mmio v1, legacy PCI): config fields are read
        at any width and the whole config space is there before FEATURES_OK."""
        ...

    @property
    def model(self) -> Any:
        """The device model (queue roles, port count), None when not known."""
        ...

    def config(self, order: ByteOrder) -> bytes | None:
        """The device config space in ``order`` (None: this device cannot say)."""
        ...

    def config_order(self) -> ByteOrder:
        """The byte order the driver reads the config in (the guest's on legacy)."""
        ...


@dataclass(frozen=True)
class Request:
    """One chain the driver made available on queue ``queue``, already walked."""

    where: str  # "queue 0 head 3": where the evidence points
    queue: int
    order: ByteOrder  # the ring's byte order (the guest's on a legacy interface)
    read: Callable[[int, int], bytes]  # reads device addresses (the queue's address space)
    segments: Segments

    def readable(self) -> list[tuple[int, int]]:
        return [(a, n) for a, n, w in self.segments if not w]

    def writable(self) -> list[tuple[int, int]]:
        return [(a, n) for a, n, w in self.segments if w]

    def gather(self) -> bytes:
        """Every device-readable byte of the chain, in order."""
        return b"".join(self.read(a, n) for a, n in self.readable())


class Framing:
    """Base of one device kind's framing rules; subclasses override what they judge.

    ``CONDITIONS``: rule id -> the feature it needs ("!NAME": needs it not negotiated);
    the watch marks a rule whose condition does not hold NOT_APPLICABLE at the end.
    Names are VIRTIO_F bits, or the kind's own bits after ``FEATURE_PREFIX`` found in
    ``FEATURE_BITS`` (``BLK_DISCARD`` is BLK_F.DISCARD), which mean nothing on another kind.
    ``VHOST_USER``: whether the rules are judged behind a vhost-user front-end.
    ``CONFIG_FIELDS``: (offset, width) of every device config field, for the rule that
    a modern driver reads each at its natural width; None: not judged for this kind.
    """

    CONDITIONS: ClassVar[Mapping[str, str]] = {}
    FEATURE_PREFIX: ClassVar[str | None] = None
    FEATURE_BITS: ClassVar[Any] = None  # the spec namespace of the kind's bits (BLK_F)
    VHOST_USER: ClassVar[bool] = True
    CONFIG_FIELDS: ClassVar[list[tuple[int, int]] | None] = None

    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def on_chain(self, request: Request) -> None:
        """A chain the driver made available (walked without a ring violation)."""

    def on_config_read(self, offset: int, size: int, status: int) -> None:
        """A device config read, with the device status at the time."""

    def on_config_write(self, offset: int, size: int, value: int) -> None:
        """A device config write (the generic rules are the watch's)."""

    def finish(self, driver_ok: bool) -> None:
        """The end of the run (``driver_ok``: the driver reached DRIVER_OK)."""


class GatedFraming(Framing):
    """Rules judged only while their feature condition holds (net and console).

    ``RULES``: rule id -> condition (the name of a ``FEATURE_BITS`` bit, else of a
    VIRTIO_F bit; "!NAME": not negotiated; None: always). ``LEGACY_ONLY``: rules of the
    legacy interface, NOT_APPLICABLE on a modern one. A rule whose condition does not hold
    is not judged, and is NOT_APPLICABLE at the end (:meth:`mark_not_applicable`).
    """

    RULES: ClassVar[Mapping[str, str | None]] = {}
    LEGACY_ONLY: ClassVar[frozenset[str]] = frozenset()

    def has_named(self, name: str) -> bool:
        bit = getattr(self.FEATURE_BITS, name, None)
        if bit is None:
            bit = getattr(F, name)
        return self.judge.has(bit)

    def applies(self, rule: str) -> bool:
        if rule in self.LEGACY_ONLY and not self.judge.legacy:
            return False
        cond = self.RULES.get(rule)
        if cond is None:
            return True
        return self.has_named(cond.lstrip("!")) != cond.startswith("!")

    def gated(self, rule: str, ok: bool, why: str) -> bool:
        """Judge ``rule`` if its condition holds; returns ``ok`` either way."""
        if self.applies(rule):
            self.judge.check(rule, ok, why)
        return ok

    def mark_not_applicable(self) -> None:
        for rule, cond in self.RULES.items():
            if not self.applies(rule):
                legacy = rule in self.LEGACY_ONLY and not self.judge.legacy
                self.judge.not_applicable(
                    rule, "modern interface" if legacy else f"{cond} (negotiated features)"
                )


def framing_class(ref: str) -> type[Framing]:
    """The :class:`Framing` subclass a ``module:ATTR`` reference names (core modules only:
    framing rules judge from the device's side and import neither side)."""
    module, _, attr = ref.partition(":")
    if not module.startswith("virtio_sim.devices.") or not attr:
        raise ValueError(f"{ref!r} is not a virtio_sim.devices framing reference")
    cls = getattr(import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Framing)):
        raise TypeError(f"{ref} is not a Framing class")
    return cls


__all__ = ["Framing", "GatedFraming", "Judge", "Request", "Segments", "framing_class"]
