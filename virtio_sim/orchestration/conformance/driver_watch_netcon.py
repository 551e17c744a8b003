"""Driver-side rules of virtio-net (5.1) and virtio-console (5.3), for the DriverWatch.

The watch hands every chain the driver makes available (``check_chain``), every config
write (``on_config_write``) and the end of the run (``finish``) to a :class:`NetconRules`
for a net or console device. What it judges from the chains: the net header at the start
of every transmit and receive buffer and its transmit fields (flags, GSO type,
num_buffers, the checksum window), control commands (framing, the RX and MAC classes only
with CTRL_RX, the MAC table layout), receive buffers big enough for the header; console
receive buffers writable, transmit buffers readable, DEVICE_READY and PORT_OPEN on the
control transmitq, and the legacy interface's framing and byte order. Rules whose feature
condition does not hold are NOT_APPLICABLE at the end; rules about an event that never
happened (no GSO frame sent) stay NOT_COVERED.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from virtio_sim import layouts
from virtio_sim.netproto import net_hdr_len
from virtio_sim.spec import (
    CONSOLE,
    CONSOLE_E,
    CONSOLE_F,
    NET_CTRL,
    NET_CTRL_MAC,
    NET_F,
    NET_FEATURE_DEPS,
    NET_GSO,
    NET_HDR_F,
    F,
    unmet_dependencies,
)

Segments = list[tuple[int, int, bool]]
HOST_GSO = {NET_GSO.TCPV4: "HOST_TSO4", NET_GSO.TCPV6: "HOST_TSO6", NET_GSO.UDP: "HOST_UFO"}
#: net rules and the feature condition under which they apply (name of a NET_F bit,
#: "!" for "not negotiated"); None: always
NET_RULES: dict[str, str | None] = {
    "net.hdr.layout": None,
    "net.tx.drv-flags-zero-without-csum": "!CSUM",
    "net.tx.drv-no-rx-only-flags": None,
    "net.tx.drv-gso-none": "!HOST_GSO",
    "net.tx.drv-gso-gated": None,
    "net.tx.drv-num-buffers-zero": None,
    "net.tx.drv-needs-csum-rules": "CSUM",
    "net.rx.drv-buffer-min-mrg": "MRG_RXBUF",
    "net.rx.drv-hdr-size-calc": None,
    "net.ctrl.format": "CTRL_VQ",
    "net.ctrl.drv-rx-mode-gated": "!CTRL_RX",
    "net.mac.drv-needs-ctrl-rx": "!CTRL_RX",
    "net.mac.drv-table-format": "CTRL_RX",
    "net.cfg.drv-read-only": "VERSION_1",
    "net.features.dependencies": None,
    "net.legacy.drv-framing": "!ANY_LAYOUT",
    "net.legacy.hdr-10-bytes": "!MRG_RXBUF",
    "net.legacy.mac-entries-native-endian": "CTRL_RX",
    "net.tx.drv-hdr-size-same": None,
}
CONSOLE_RULES: dict[str, str | None] = {
    "console.drv.rx-writable": None,
    "console.drv.tx-readable": None,
    "console.drv.device-ready": "MULTIPORT",
    "console.drv.console-port-open": "MULTIPORT",
    "console.legacy.drv-framing": "!ANY_LAYOUT",
    "console.legacy.control-native-endian-drv": "MULTIPORT",
}
#: legacy-interface rules: NOT_APPLICABLE on a modern interface
LEGACY_ONLY = {
    "net.legacy.drv-framing",
    "net.legacy.hdr-10-bytes",
    "net.legacy.mac-entries-native-endian",
    "console.legacy.drv-framing",
    "console.legacy.control-native-endian-drv",
}
DRIVER_EVENTS = {CONSOLE_E.DEVICE_READY, CONSOLE_E.PORT_READY, CONSOLE_E.PORT_OPEN}


@dataclass
class NetconRules:
    device_type: str  # "net" | "console"
    features: Callable[[], int]
    legacy: Callable[[], bool]
    model: Any  # the device model (queue roles, console port count); None: unknown
    check: Callable[[str, bool, str], bool]
    ok: Callable[..., None]
    config_writes: list[tuple[int, int]] = field(default_factory=list)
    gso_seen: bool = False
    needs_csum_seen: bool = False
    device_ready: bool = False
    port_open: bool = False
    driver_ok: bool = False
    #: the driver went on far enough for the console rules to be judged (a run cut short
    #: by its deadline before them decides nothing): control receive buffers posted, data
    #: sent on port 0
    control_rx_seen: bool = False
    port0_tx_seen: bool = False

    def has(self, name: str) -> bool:
        feats = self.features()
        if name == "HOST_GSO":
            return any(feats >> getattr(NET_F, n) & 1 for n in ("HOST_TSO4", "HOST_TSO6", "HOST_UFO"))
        bit_number = getattr(CONSOLE_F if self.device_type == "console" else NET_F, name, None)
        if bit_number is None:
            bit_number = getattr(F, name)
        return bool(feats >> bit_number & 1)

    def applies(self, rule: str) -> bool:
        table = NET_RULES if self.device_type == "net" else CONSOLE_RULES
        if rule in LEGACY_ONLY and not self.legacy():
            return False
        cond = table.get(rule)
        if cond is None:
            return True
        return self.has(cond.lstrip("!")) != cond.startswith("!")

    def _check(self, rule: str, ok: bool, why: str) -> None:
        if self.applies(rule):
            self.check(rule, ok, why)

    # -- chains -------------------------------------------------------------------------

    def check_chain(
        self, where: str, index: int, order: str, read: Callable[[int, int], bytes], segs: Segments
    ) -> None:
        if self.device_type == "net":
            self._net_chain(where, index, order, read, segs)
        else:
            self._console_chain(where, index, order, read, segs)

    def _net_role(self, index: int) -> str:
        feats = self.features()
        total = self.model.queue_count(feats) if self.model is not None else 3
        if feats >> NET_F.CTRL_VQ & 1 and index == total - 1:
            return "ctrl"
        return "tx" if index & 1 else "rx"

    def _net_chain(
        self, where: str, index: int, order: str, read: Callable[[int, int], bytes], segs: Segments
    ) -> None:
        role = self._net_role(index)
        hdr_len = net_hdr_len(self.features())
        readable = [(a, n) for a, n, w in segs if not w]
        writable = [(a, n) for a, n, w in segs if w]
        if role == "rx":
            room = sum(n for _, n in writable)
            self._check(
                "net.hdr.layout",
                room >= hdr_len and not readable,
                f"{where}: receive chain: {room} writable, {len(readable)} readable; header {hdr_len}",
            )
            self._check(
                "net.rx.drv-hdr-size-calc",
                room >= hdr_len,
                f"{where}: {room} bytes for a {hdr_len}-byte header",
            )
            self._check(
                "net.rx.drv-buffer-min-mrg",
                room >= layouts.NET_HDR_SIZE,
                f"{where}: a {room}-byte receive buffer with MRG_RXBUF (at least {layouts.NET_HDR_SIZE})",
            )
            return
        data = b"".join(read(a, n) for a, n in readable)
        if role == "ctrl":
            self._net_ctrl(where, order, data, segs)
            return
        if not self._check_ok(
            "net.hdr.layout",
            len(data) >= hdr_len and not writable,
            f"{where}: transmit chain of {len(data)} readable bytes ({len(writable)} writable)",
        ):
            return
        codec = layouts.net_hdr_codec(order, hdr_len == layouts.NET_HDR_SIZE)
        fields = codec.unpack(data[:hdr_len])
        flags, gso, _hlen, gso_size, cstart, coff = fields[:6]
        frame_len = len(data) - hdr_len
        self._check(
            "net.tx.drv-flags-zero-without-csum", flags == 0, f"{where}: tx flags {flags:#x} without CSUM"
        )
        self._check(
            "net.tx.drv-no-rx-only-flags",
            not flags & (NET_HDR_F.DATA_VALID | NET_HDR_F.RSC_INFO),
            f"{where}: tx flags {flags:#x} carry DATA_VALID/RSC_INFO",
        )
        self._check("net.tx.drv-gso-none", gso == NET_GSO.NONE, f"{where}: gso_type {gso} without host GSO")
        allowed = gso == NET_GSO.NONE or (gso & 0x7F in HOST_GSO and self.has(HOST_GSO[gso & 0x7F]))
        self._check("net.tx.drv-gso-gated", allowed, f"{where}: gso_type {gso:#x} not negotiated")
        if len(fields) > 6:
            self._check("net.tx.drv-num-buffers-zero", fields[6] == 0, f"{where}: tx num_buffers {fields[6]}")
        if flags & NET_HDR_F.NEEDS_CSUM:
            self.needs_csum_seen = True
            self._check(
                "net.tx.drv-needs-csum-rules",
                cstart + coff + 2 <= frame_len,
                f"{where}: NEEDS_CSUM with start {cstart} offset {coff} in a {frame_len}-byte frame",
            )
        if gso != NET_GSO.NONE:
            self.gso_seen = True
            self.check(
                "net.tx.drv-gso-needs-csum-and-size",
                bool(flags & NET_HDR_F.NEEDS_CSUM) and gso_size > 0,
                f"{where}: gso_type {gso} with flags {flags:#x}, gso_size {gso_size}",
            )
        if self.legacy() and len(readable) > 1:
            # without ANY_LAYOUT the header sits in its own descriptor: 10 bytes, 12 with MRG_RXBUF
            first = readable[0][1]
            self._check(
                "net.legacy.drv-framing",
                first == hdr_len,
                f"{where}: the first descriptor holds {first} bytes, the header is {hdr_len}",
            )
            self._check(
                "net.legacy.hdr-10-bytes",
                first == layouts.NET_HDR_LEGACY_SIZE,
                f"{where}: a {first}-byte header descriptor without MRG_RXBUF",
            )
            # the header alone in its descriptor: its size is visible, and must be the
            # receive header's for the negotiated features
            self._check(
                "net.tx.drv-hdr-size-same",
                first == hdr_len,
                f"{where}: a {first}-byte transmit header, receive headers are {hdr_len}",
            )

    def _check_ok(self, rule: str, ok: bool, why: str) -> bool:
        self._check(rule, ok, why)
        return ok

    def _net_ctrl(self, where: str, order: str, data: bytes, segs: Segments) -> None:
        writes = [w for _, _, w in segs]
        framed = (
            len(data) >= layouts.NET_CTRL_HDR_SIZE
            and bool(writes)
            and writes[-1]
            and writes == sorted(writes)
        )
        if not self._check_ok(
            "net.ctrl.format",
            framed,
            f"{where}: control chain of {len(data)} readable bytes, write flags {writes}",
        ):
            return
        cls, cmd, body = data[0], data[1], data[2:]
        if cls == NET_CTRL.RX:
            self._check(
                "net.ctrl.drv-rx-mode-gated", False, f"{where}: RX class command {cmd} without CTRL_RX"
            )
        if cls == NET_CTRL.MAC and cmd == NET_CTRL_MAC.TABLE_SET:
            self._check("net.mac.drv-needs-ctrl-rx", False, f"{where}: MAC_TABLE_SET without CTRL_RX")
            count = layouts.net_ctrl_mac_entries(order)
            size = count.sizeof()
            pos, ok = 0, True
            for _ in range(2):
                if len(body) < pos + size:
                    ok = False
                    break
                n = count.parse(body[pos : pos + size])
                pos += size + n * 6
            ok = ok and pos == len(body)
            rule = "net.legacy.mac-entries-native-endian" if self.legacy() else "net.mac.drv-table-format"
            self._check(
                rule,
                ok,
                f"{where}: MAC_TABLE_SET of {len(body)} bytes does not add up ({order}-endian counts)",
            )
            if not self.legacy():
                return
            self._check(
                "net.mac.drv-table-format", ok, f"{where}: MAC_TABLE_SET of {len(body)} bytes does not add up"
            )

    def _console_chain(
        self, where: str, index: int, order: str, read: Callable[[int, int], bytes], segs: Segments
    ) -> None:
        role, port = self.model.role(index) if self.model is not None else ("tx" if index & 1 else "rx", 0)
        if role == "c_rx":
            self.control_rx_seen = True
        if role == "tx" and port == 0:
            self.port0_tx_seen = True
        if role in ("rx", "c_rx"):
            self._check(
                "console.drv.rx-writable",
                all(w for _, _, w in segs),
                f"{where}: a device-readable buffer on a receive queue",
            )
        elif role in ("tx", "c_tx"):
            self._check(
                "console.drv.tx-readable",
                not any(w for _, _, w in segs),
                f"{where}: a device-writable buffer on a transmit queue",
            )
        if role in ("c_rx", "c_tx") and self.legacy():
            self._check(
                "console.legacy.drv-framing",
                len(segs) == 1,
                f"{where}: a control buffer in {len(segs)} descriptors",
            )
        if role != "c_tx":
            return
        data = b"".join(read(a, n) for a, n, w in segs if not w)
        if len(data) < layouts.CONSOLE_CONTROL_SIZE:
            return
        codec = layouts.console_control_codec(order)
        port, event, value = codec.unpack(data[: layouts.CONSOLE_CONTROL_SIZE])
        max_nr = getattr(self.model, "max_ports", CONSOLE.max_ports_limit)
        sane = event in DRIVER_EVENTS and (
            port < max_nr or (event == CONSOLE_E.DEVICE_READY and port == CONSOLE.bad_id)
        )
        if self.legacy():
            self._check(
                "console.legacy.control-native-endian-drv",
                sane,
                f"{where}: control message (id {port:#x}, event {event:#x}, value {value:#x})"
                " read in the guest's order",
            )
        if event == CONSOLE_E.DEVICE_READY and value == 1:
            self.device_ready = True
        if event == CONSOLE_E.PORT_OPEN and port == 0 and value == 1:
            self.port_open = True

    # -- config and the end -------------------------------------------------------------

    def on_config_write(self, offset: int, size: int) -> None:
        if self.device_type == "net":
            self.config_writes.append((offset, size))

    def finish(self, driver_ok: bool, not_applicable: Callable[[str, str], None]) -> None:
        table = NET_RULES if self.device_type == "net" else CONSOLE_RULES
        if driver_ok and self.device_type == "net":
            self._check(
                "net.cfg.drv-read-only",
                not self.config_writes,
                f"config writes (offset, size) {self.config_writes[:4]} on a modern interface",
            )
            deps = unmet_dependencies(self.features(), NET_FEATURE_DEPS)
            self._check(
                "net.features.dependencies", not deps, f"acked net features without prerequisites: {deps}"
            )
            # the generic rule, decided where the catalogue has a dependency table (net)
            self.check(
                "features.drv.deps-accepted", not deps, f"acked features without prerequisites: {deps}"
            )
            if not self.has("CTRL_RX"):
                self.ok("net.ctrl.drv-rx-mode-gated", "net.mac.drv-needs-ctrl-rx")  # none sent (else FAIL)
        if driver_ok and self.device_type == "console" and self.has("MULTIPORT"):
            self._check(
                "console.drv.device-ready", self.device_ready, "MULTIPORT negotiated, no DEVICE_READY sent"
            )
            if (
                self.model is not None
                and getattr(self.model, "ports", None)
                and (self.port_open or self.port0_tx_seen)
            ):
                self._check(
                    "console.drv.console-port-open",
                    self.port_open,
                    "the device nominated port 0 as console; data sent there without PORT_OPEN 1",
                )
        for rule in table:
            if not self.applies(rule):
                why = (
                    "modern interface"
                    if rule in LEGACY_ONLY and not self.legacy()
                    else f"{table[rule]} (negotiated features)"
                )
                not_applicable(rule, why)
