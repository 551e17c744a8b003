"""The guest halves of the device kinds (virtio_sim/devices): driver and workloads.

A :class:`GuestHalf` sits beside its driver's workloads and says what Linux's
``virtio_driver`` (its ``id_table``) says: which driver binds the device kind, plus what
a run may do with a bound driver. guest/platform.py's probe and guest/workloads.py's
WORKLOADS are derived from these, never from a list of device names of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
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
    """The guest half of device kind ``key`` (KeyError: no such kind)."""
    ref = KINDS[key].guest
    half = resolve(ref, "guest")
    if not isinstance(half, GuestHalf):
        raise TypeError(f"{ref} is not a GuestHalf")
    return half


def drivers() -> dict[str, type[GuestDriver]]:
    """Device kind -> the driver class that binds it."""
    return {key: guest_half(key).driver for key in KINDS}


def workloads() -> dict[str, tuple[str, WorkloadFn]]:
    """Workload name -> (the device kind it needs, the workload)."""
    out: dict[str, tuple[str, WorkloadFn]] = {}
    for key in KINDS:
        for name, fn in guest_half(key).workloads.items():
            if name in out:
                raise ValueError(f"workload {name!r} of {key} is also one of {out[name][0]}")
            out[name] = (key, fn)
    return out
