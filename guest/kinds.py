"""The guest halves of the device kinds (virtio_sim/devices): driver and workloads.

A :class:`GuestHalf` sits beside its driver's workloads and says what Linux's
``virtio_driver`` (its ``id_table``) says: which driver binds the device kind, plus what
a run may do with a bound driver. guest/platform.py's probe and guest/workloads.py's
WORKLOADS are derived from these, never from a list of device names of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from virtio_sim.devices import KINDS, resolve
from virtio_sim.guest.drivers.base import GuestDriver

WorkloadFn = Callable[[GuestDriver, int | None], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class GuestHalf:
    #: the driver that binds this device kind (Linux's virtio_driver for its device id)
    driver: type[GuestDriver]
    #: workload name -> what a run does with the bound driver (name unique over all kinds)
    workloads: Mapping[str, WorkloadFn] = field(default_factory=dict)


@cache
def guest_half(key: str) -> GuestHalf:
    """The guest half of device kind ``key`` (KeyError: no such kind), imported on first
    use: a run loads the driver and workloads of its own device kinds only."""
    kind = KINDS[key]
    half = resolve(kind.guest, "guest")
    if not isinstance(half, GuestHalf):
        raise TypeError(f"{kind.guest} is not a GuestHalf")
    if tuple(half.workloads) != kind.workloads:
        listed = f"the {key} descriptor lists {kind.workloads}"
        raise ValueError(f"{kind.guest}: workloads {tuple(half.workloads)} but {listed}")
    return half


class _Drivers(Mapping[str, "type[GuestDriver]"]):
    """Device kind -> the driver class that binds it; a kind's guest half is imported
    when its driver is first asked for (the probe asks for the devices it found)."""

    def __getitem__(self, key: str) -> type[GuestDriver]:
        if key not in KINDS:
            raise KeyError(key)
        return guest_half(key).driver

    def __contains__(self, key: object) -> bool:
        return key in KINDS

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


class _Workloads(Mapping[str, "tuple[str, WorkloadFn]"]):
    """Workload name -> (the device kind it needs, the workload). The names come from
    the kinds' descriptors, so listing and checking them imports no driver; a workload
    is imported with its kind's guest half when it is looked up."""

    def __init__(self) -> None:
        self._kind_of: dict[str, str] = {}
        for key, kind in KINDS.items():
            for name in kind.workloads:
                if name in self._kind_of:
                    raise ValueError(f"workload {name!r} of {key} is also one of {self._kind_of[name]}")
                self._kind_of[name] = key

    def __getitem__(self, name: str) -> tuple[str, WorkloadFn]:
        key = self._kind_of[name]
        return key, guest_half(key).workloads[name]

    def __contains__(self, name: object) -> bool:
        return name in self._kind_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._kind_of)

    def __len__(self) -> int:
        return len(self._kind_of)


def drivers() -> Mapping[str, type[GuestDriver]]:
    """Device kind -> the driver class that binds it (each imported on first use)."""
    return _Drivers()


def workloads() -> Mapping[str, tuple[str, WorkloadFn]]:
    """Workload name -> (the device kind it needs, the workload), imported on first use."""
    return _Workloads()
