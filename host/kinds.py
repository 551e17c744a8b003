"""The host halves of the device kinds (virtio_sim/devices): what ``-device`` builds.

A :class:`HostHalf` sits beside its model's code and says what QEMU's TypeInfo and
Property list say for a device: how to build the model from its properties, which
properties it takes (with their defaults and help), and what a one-line run fills in
that QEMU's command line would have to say (a scratch disk, a seeded stream, a MAC per
NIC). host/qdev.py, host/qdev_props.py and host/build.py read these, never a list of
device names of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

from virtio_sim.devices import KINDS, DeviceKind, resolve
from virtio_sim.host.devices.base import DeviceModel
from virtio_sim.host.qdev_props import Prop


@dataclass(frozen=True)
class BuildContext:
    """What the host builder knows when it fills in a device's defaults."""

    index: int  # the device's slot on the machine (0, 1, ...)
    seed: int | None  # the run's seed
    #: where default disk images may be created; a callable makes the folder when the
    #: first image needs it
    scratch_dir: str | Callable[[], str] | None

    def scratch_folder(self) -> str | None:
        """The scratch folder, made now if it is made on demand (None: there is none)."""
        return self.scratch_dir() if callable(self.scratch_dir) else self.scratch_dir


def no_defaults(props: dict[str, str], ctx: BuildContext) -> None:
    """A device whose ``-device`` line needs nothing filled in."""


@dataclass(frozen=True)
class HostHalf:
    #: the model from its own properties (the common ones are taken off already);
    #: PropertyError for a bad value
    factory: Callable[[dict[str, str]], DeviceModel]
    #: the device's own properties (QEMU names, x- for ours), beside the common ones
    props: Mapping[str, Prop]
    #: fill in what a one-line run leaves out (``props`` is the -device line's, changed in place)
    defaults: Callable[[dict[str, str], BuildContext], None] = no_defaults


@cache
def host_half(key: str) -> HostHalf:
    """The host half of device kind ``key`` (KeyError: no such kind or not a -device)."""
    kind = KINDS[key]
    if not kind.qdev_model:
        raise KeyError(key)
    half = resolve(kind.host, "host")
    if not isinstance(half, HostHalf):
        raise TypeError(f"{kind.host} is not a HostHalf")
    return half


def qdev_kinds() -> list[DeviceKind]:
    """The kinds ``-device`` builds, in registry order."""
    return [k for k in KINDS.values() if k.qdev_model]
