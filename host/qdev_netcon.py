"""``-device`` factories and host halves of virtio-net and virtio-console (virtio_sim/devices).

QEMU names and properties, and how this simulator maps them:

``virtio-net-device`` (QEMU's virtio-net on virtio-mmio; ``virtio-net-pci`` is the same
model behind PCI):
  ``mac=52:54:00:12:34:56`` (QEMU's default for the first NIC; the host builder counts it
  up per device like QEMU does), ``mrg_rxbuf=``, ``mq=``, ``ctrl_vq=``, ``ctrl_rx=``,
  ``ctrl_mac_addr=``, ``csum=``, ``guest_csum=``, ``status=`` (QEMU's feature switches,
  QEMU's defaults: all on but mq; ctrl_rx and ctrl_mac_addr default to ctrl_vq's value
  because they need it). Non-QEMU: ``x-backend=loopback|switch:NAME`` stands for QEMU's
  ``netdev=`` (default loopback), ``x-queue-pairs=N`` for the netdev's ``queues=N``
  (several pairs need mq=on), ``x-fault=num-buffers-zero|num-buffers-extra`` makes the
  device lie in num_buffers (for driver robustness runs).

``virtio-serial-device`` (QEMU's virtio-serial bus on virtio-mmio, with one
``virtconsole`` at port 0):
  ``max_ports=N`` (QEMU's, default 31; MULTIPORT is offered when N > 1, as QEMU does),
  ``emergency-write=on|off`` (QEMU's, default on). Non-QEMU: ``x-console=loopback|
  file:PATH|stdio`` is the chardev of the virtconsole at port 0 (QEMU: ``-device
  virtconsole,chardev=...``; default loopback), ``x-ports=K`` adds K ``virtserialport``
  ports 1..K on loopback chardevs, ``x-size=COLSxROWS`` offers VIRTIO_CONSOLE_F_SIZE with
  that console size (QEMU never offers it).
"""

from __future__ import annotations

from virtio_sim.host.devices.base import DeviceModel, PropertyError, parse_bool
from virtio_sim.host.devices.chardev import LoopbackChar, chardev_from_spec
from virtio_sim.host.devices.console import ConsoleDevice
from virtio_sim.host.devices.net import FAULTS, NetDevice
from virtio_sim.host.devices.netbackend import SWITCHES, LoopbackBackend, NetBackend
from virtio_sim.host.kinds import BuildContext, HostHalf
from virtio_sim.host.qdev_props import Prop, b
from virtio_sim.netproto import nth_mac, parse_mac
from virtio_sim.spec import CONSOLE, NET

NET_PROPS: dict[str, Prop] = {
    "mac": Prop("str", NET.qemu_default_mac, "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56"),
    "netdev": Prop("str", None, "ID of a netdev to use as a backend (-netdev hubport,...)"),
    "mrg_rxbuf": b(True, "VIRTIO_NET_F_MRG_RXBUF"),
    "mq": b(False, "VIRTIO_NET_F_MQ"),
    "ctrl_vq": b(True, "VIRTIO_NET_F_CTRL_VQ"),
    "ctrl_rx": b(True, "VIRTIO_NET_F_CTRL_RX (needs ctrl_vq)"),
    "ctrl_mac_addr": b(True, "VIRTIO_NET_F_CTRL_MAC_ADDR (needs ctrl_vq)"),
    "csum": b(True, "VIRTIO_NET_F_CSUM"),
    "guest_csum": b(True, "VIRTIO_NET_F_GUEST_CSUM"),
    "status": b(True, "VIRTIO_NET_F_STATUS"),
    "x-backend": Prop("str", "loopback", "loopback|switch:NAME (what netdev= names)"),
    "x-queue-pairs": Prop("uint16", "1", "queue pairs (a netdev's queues=)"),
    "x-fault": Prop("str", None, "num-buffers-zero|num-buffers-extra: lie in num_buffers"),
}
SERIAL_PROPS: dict[str, Prop] = {
    "max_ports": Prop("uint32", str(CONSOLE.qemu_max_ports), "ports (MULTIPORT when > 1)"),
    "emergency-write": b(True, "VIRTIO_CONSOLE_F_EMERGENCY_WRITE"),
    "chardev": Prop("str", None, "ID of a chardev for the console at port 0 (-chardev ...)"),
    "x-console": Prop("str", "loopback", "loopback|file:PATH|stdio: the port-0 console"),
    "x-ports": Prop("uint32", "0", "more ports 1..K on loopback chardevs"),
    "x-size": Prop("str", None, "COLSxROWS: offer VIRTIO_CONSOLE_F_SIZE"),
}


def _int(props: dict[str, str], name: str, default: int) -> int:
    raw = props.pop(name, None)
    if raw is None:
        return default
    try:
        return int(raw, 0)
    except ValueError:
        raise PropertyError(f"Property '{name}' doesn't take value '{raw}'") from None


def net_backend(spec: str) -> NetBackend:
    if spec == "loopback":
        return LoopbackBackend()
    if spec.startswith("switch:") and len(spec) > len("switch:"):
        return SWITCHES.port(spec[len("switch:") :])
    raise PropertyError(f"Property 'x-backend' doesn't take value '{spec}' (loopback|switch:NAME)")


def net_device(props: dict[str, str]) -> DeviceModel:
    try:
        mac = parse_mac(props.pop("mac", NET.qemu_default_mac))
    except ValueError as e:
        raise PropertyError(f"Property 'mac': {e}") from None

    def flag(name: str, default: bool) -> bool:
        return parse_bool(name, props.pop(name, "on" if default else "off"))

    ctrl_vq = flag("ctrl_vq", True)
    fault = props.pop("x-fault", None)
    if fault is not None and fault not in FAULTS:
        raise PropertyError(f"Property 'x-fault' doesn't take value '{fault}' ({'|'.join(FAULTS)})")
    options = {
        "mrg_rxbuf": flag("mrg_rxbuf", True),
        "mq": flag("mq", False),
        "ctrl_rx": flag("ctrl_rx", ctrl_vq),
        "ctrl_mac_addr": flag("ctrl_mac_addr", ctrl_vq),
        "csum": flag("csum", True),
        "guest_csum": flag("guest_csum", True),
        "status": flag("status", True),
    }
    pairs = _int(props, "x-queue-pairs", 1)
    backend = net_backend(props.pop("x-backend", "loopback"))
    return NetDevice(
        mac=mac,
        backend=backend,
        ctrl_vq=ctrl_vq,
        queue_pairs=pairs,
        fault=fault,
        mrg_rxbuf=options["mrg_rxbuf"],
        mq=options["mq"],
        ctrl_rx=options["ctrl_rx"],
        ctrl_mac_addr=options["ctrl_mac_addr"],
        csum=options["csum"],
        guest_csum=options["guest_csum"],
        status=options["status"],
    )


def _size(raw: str | None) -> tuple[int, int] | None:
    if raw is None:
        return None
    cols, sep, rows = raw.lower().partition("x")
    try:
        size = (int(cols, 0), int(rows, 0))
    except ValueError:
        size = (-1, -1)
    if not sep or not all(0 < v <= 0xFFFF for v in size):
        raise PropertyError(f"Property 'x-size' doesn't take value '{raw}' (COLSxROWS)")
    return size


def serial_device(props: dict[str, str]) -> DeviceModel:
    max_ports = _int(props, "max_ports", CONSOLE.qemu_max_ports)
    extra = _int(props, "x-ports", 0)
    if extra < 0:
        raise PropertyError("Property 'x-ports' must not be negative")
    size = _size(props.pop("x-size", None))
    emergency = parse_bool("emergency-write", props.pop("emergency-write", "on"))
    if not 1 <= max_ports <= CONSOLE.max_ports_limit:
        raise PropertyError(f"maximum ports supported: {CONSOLE.max_ports_limit}")
    if 1 + extra > max_ports:
        raise PropertyError(f"{1 + extra} ports do not fit max_ports={max_ports}")
    console = chardev_from_spec(props.pop("x-console", "loopback"))
    return ConsoleDevice(
        console=console,
        max_ports=max_ports,
        extra_ports=[LoopbackChar() for _ in range(extra)],
        emergency_write=emergency,
        size=size,
    )


def net_defaults(props: dict[str, str], ctx: BuildContext) -> None:
    """QEMU counts its default NIC address up per NIC; here per device slot."""
    props.setdefault("mac", nth_mac(NET.qemu_default_mac, ctx.index))


HOST_NET = HostHalf(net_device, NET_PROPS, net_defaults)
HOST_CONSOLE = HostHalf(serial_device, SERIAL_PROPS)
