"""virtio-console request framing (virtio 1.4 section 5.3.6): the driver's side of its buffers.

Receive queues carry buffers the device writes, transmit queues buffers it reads
(5.3.6.1). With MULTIPORT the driver announces itself with DEVICE_READY and opens the
console port with PORT_OPEN on the control transmit queue (5.3.6.2.2); control messages
are (id, event, value), in the guest's byte order on the legacy interface, each in one
descriptor without ANY_LAYOUT (5.3.6.4). Rules whose feature condition does not hold are
NOT_APPLICABLE at the end.
"""

from __future__ import annotations

from virtio_sim import layouts
from virtio_sim.devices.framing import GatedFraming, Judge, Request
from virtio_sim.spec import CONSOLE, CONSOLE_E, CONSOLE_F

DRIVER_EVENTS = {CONSOLE_E.DEVICE_READY, CONSOLE_E.PORT_READY, CONSOLE_E.PORT_OPEN}


class ConsoleFraming(GatedFraming):
    """The virtio-console buffer and control rules (see the module docstring)."""

    RULES = {
        "console.drv.rx-writable": None,
        "console.drv.tx-readable": None,
        "console.drv.device-ready": "MULTIPORT",
        "console.drv.console-port-open": "MULTIPORT",
        "console.legacy.drv-framing": "!ANY_LAYOUT",
        "console.legacy.control-native-endian-drv": "MULTIPORT",
    }
    LEGACY_ONLY = frozenset({"console.legacy.drv-framing", "console.legacy.control-native-endian-drv"})
    FEATURE_BITS = CONSOLE_F
    VHOST_USER = False  # as before the split into families: judged on our own transports only

    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self.device_ready = False
        self.port_open = False
        #: the driver went on far enough for the console rules to be judged (a run cut short
        #: by its deadline before them decides nothing): control receive buffers posted, data
        #: sent on port 0
        self.control_rx_seen = False
        self.port0_tx_seen = False

    def on_chain(self, request: Request) -> None:
        model, where, segs = self.judge.model, request.where, request.segments
        index = request.queue
        role, port = model.role(index) if model is not None else ("tx" if index & 1 else "rx", 0)
        if role == "c_rx":
            self.control_rx_seen = True
        if role == "tx" and port == 0:
            self.port0_tx_seen = True
        if role in ("rx", "c_rx"):
            self.gated(
                "console.drv.rx-writable",
                all(w for _, _, w in segs),
                f"{where}: a device-readable buffer on a receive queue",
            )
        elif role in ("tx", "c_tx"):
            self.gated(
                "console.drv.tx-readable",
                not any(w for _, _, w in segs),
                f"{where}: a device-writable buffer on a transmit queue",
            )
        if role in ("c_rx", "c_tx") and self.judge.legacy:
            self.gated(
                "console.legacy.drv-framing",
                len(segs) == 1,
                f"{where}: a control buffer in {len(segs)} descriptors",
            )
        if role == "c_tx":
            self._control(request)

    def _control(self, request: Request) -> None:
        data = request.gather()
        if len(data) < layouts.CONSOLE_CONTROL_SIZE:
            return
        codec = layouts.console_control_codec(request.order)
        port, event, value = codec.unpack(data[: layouts.CONSOLE_CONTROL_SIZE])
        max_nr = getattr(self.judge.model, "max_ports", CONSOLE.max_ports_limit)
        sane = event in DRIVER_EVENTS and (
            port < max_nr or (event == CONSOLE_E.DEVICE_READY and port == CONSOLE.bad_id)
        )
        if self.judge.legacy:
            self.gated(
                "console.legacy.control-native-endian-drv",
                sane,
                f"{request.where}: control message (id {port:#x}, event {event:#x}, value {value:#x})"
                " read in the guest's order",
            )
        if event == CONSOLE_E.DEVICE_READY and value == 1:
            self.device_ready = True
        if event == CONSOLE_E.PORT_OPEN and port == 0 and value == 1:
            self.port_open = True

    def finish(self, driver_ok: bool) -> None:
        if driver_ok and self.has_named("MULTIPORT"):
            self.gated(
                "console.drv.device-ready", self.device_ready, "MULTIPORT negotiated, no DEVICE_READY sent"
            )
            model = self.judge.model
            if model is not None and getattr(model, "ports", None) and (self.port_open or self.port0_tx_seen):
                self.gated(
                    "console.drv.console-port-open",
                    self.port_open,
                    "the device nominated port 0 as console; data sent there without PORT_OPEN 1",
                )
        self.mark_not_applicable()
