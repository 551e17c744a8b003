"""Where a virtio-net device's frames go: a loopback, or a switch shared by several NICs.

QEMU connects a NIC to a netdev (tap, user, socket, hubport); here the two backends a
simulator needs are enough: ``loopback`` hands every transmitted frame back to the same
NIC, and a :class:`Switch` is a learning Ethernet switch between the NICs attached to it
(several devices of one host, or the devices of several guests served by one host
process). A frame carries its partial-checksum request (NEEDS_CSUM) with it, as tap's
vnet header does, so a receiver can be handed the same request or a completed checksum.

Switches are found by name in a process-wide :class:`SwitchRegistry`; a switch exists as
long as a port is attached to it, so two runs in one process only meet on a switch when
they are alive at the same time and chose the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from virtio_sim.netproto import is_multicast
from virtio_sim.spec import NET


@dataclass(frozen=True)
class Frame:
    """One Ethernet frame in flight between NICs."""

    data: bytes
    #: (csum_start, csum_offset) when the sender asked for checksum completion
    partial_csum: tuple[int, int] | None = None
    #: the sender's queue pair: receivers with several pairs spread flows by it
    queue_hint: int = 0

    @property
    def dst(self) -> bytes:
        return self.data[: NET.eth_alen]

    @property
    def src(self) -> bytes:
        return self.data[NET.eth_alen : 2 * NET.eth_alen]


class NetEndpoint(Protocol):
    """The NIC side of a backend: what a backend delivers frames to."""

    def receive_frame(self, frame: Frame) -> None: ...


class NetBackend(Protocol):
    name: str

    def attach(self, nic: NetEndpoint) -> None: ...

    def detach(self, nic: NetEndpoint) -> None: ...

    def transmit(self, nic: NetEndpoint, frame: Frame) -> None: ...


class LoopbackBackend:
    """Every frame a NIC transmits comes back on its own receive side."""

    name = "loopback"

    def __init__(self) -> None:
        self.frames = 0

    def attach(self, nic: NetEndpoint) -> None:
        pass

    def detach(self, nic: NetEndpoint) -> None:
        pass

    def transmit(self, nic: NetEndpoint, frame: Frame) -> None:
        self.frames += 1
        nic.receive_frame(frame)


@dataclass
class SwitchStats:
    forwarded: int = 0  # frames sent to the one port that learned the destination
    flooded: int = 0  # frames sent to every other port (broadcast, multicast, unknown)
    dropped: int = 0  # frames with nowhere to go (the sender is alone on the switch)


class Switch:
    """A learning switch: unicast to the port that last sent from the destination
    address, everything else to every port but the sender. It never reflects a frame
    back to the port it came from."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ports: list[NetEndpoint] = []
        self.table: dict[bytes, NetEndpoint] = {}
        self.stats = SwitchStats()

    def attach(self, nic: NetEndpoint) -> None:
        if nic not in self.ports:
            self.ports.append(nic)

    def detach(self, nic: NetEndpoint) -> None:
        if nic in self.ports:
            self.ports.remove(nic)
        self.table = {mac: port for mac, port in self.table.items() if port is not nic}

    def transmit(self, nic: NetEndpoint, frame: Frame) -> None:
        if len(frame.data) >= 2 * NET.eth_alen and not is_multicast(frame.src):
            self.table[frame.src] = nic
        if len(frame.data) >= NET.eth_alen and not is_multicast(frame.dst):
            port = self.table.get(frame.dst)
            if port is not None and port is not nic and port in self.ports:
                self.stats.forwarded += 1
                port.receive_frame(frame)
                return
        others = [p for p in self.ports if p is not nic]
        if not others:
            self.stats.dropped += 1
            return
        self.stats.flooded += 1
        for port in others:
            port.receive_frame(frame)


@dataclass
class SwitchRegistry:
    """Named switches of one host process, created on first use, gone with their last port."""

    switches: dict[str, Switch] = field(default_factory=dict)

    def port(self, name: str) -> SwitchBackend:
        if not name:
            raise ValueError("a switch needs a name (switch:NAME)")
        return SwitchBackend(self, name)

    def _get(self, name: str) -> Switch:
        sw = self.switches.get(name)
        if sw is None:
            sw = self.switches[name] = Switch(name)
        return sw

    def _release(self, name: str) -> None:
        sw = self.switches.get(name)
        if sw is not None and not sw.ports:
            del self.switches[name]


class SwitchBackend:
    """One NIC's attachment to a named switch."""

    def __init__(self, registry: SwitchRegistry, switch_name: str) -> None:
        self.registry = registry
        self.switch_name = switch_name
        self.name = f"switch:{switch_name}"
        self.switch: Switch | None = None

    def attach(self, nic: NetEndpoint) -> None:
        self.switch = self.registry._get(self.switch_name)
        self.switch.attach(nic)

    def detach(self, nic: NetEndpoint) -> None:
        if self.switch is not None:
            self.switch.detach(nic)
            self.registry._release(self.switch_name)
            self.switch = None

    def transmit(self, nic: NetEndpoint, frame: Frame) -> None:
        if self.switch is not None:
            self.switch.transmit(nic, frame)


#: the switches of this host process (``x-backend=switch:NAME``)
SWITCHES = SwitchRegistry()
