"""virtio-net request framing (virtio 1.4 section 5.1.9): the driver's side of its buffers.

Every transmit and receive buffer starts with the net header, 12 bytes with VERSION_1 or
MRG_RXBUF, else 10 (virtio_sim/netproto.py). What a device can judge of the driver:
receive buffers writable and big enough for the header, with MRG_RXBUF at least a whole
header (5.1.9.3.1); transmit headers whose flags, GSO type and num_buffers the negotiated
features allow, and a checksum window inside the frame (5.1.9.2.1); control commands
framed as class, command, data, then the writable ack, RX-mode and MAC table commands
only with CTRL_RX, the MAC table adding up (5.1.9.5); config left alone on a modern
interface (5.1.4.2); the legacy interface's header in a descriptor of its own without
ANY_LAYOUT and its MAC counts in the guest's byte order (5.1.9.8). Rules whose feature
condition does not hold are NOT_APPLICABLE at the end; rules about an event that never
happened (no GSO frame sent) stay NOT_COVERED.
"""

from __future__ import annotations

from virtio_sim import layouts
from virtio_sim.devices.framing import GatedFraming, Judge, Request, Segments
from virtio_sim.netproto import net_hdr_len
from virtio_sim.spec import (
    NET_CTRL,
    NET_CTRL_MAC,
    NET_F,
    NET_FEATURE_DEPS,
    NET_GSO,
    NET_HDR_F,
    unmet_dependencies,
)

HOST_GSO = {NET_GSO.TCPV4: "HOST_TSO4", NET_GSO.TCPV6: "HOST_TSO6", NET_GSO.UDP: "HOST_UFO"}


class NetFraming(GatedFraming):
    """The virtio-net buffer rules (see the module docstring)."""

    RULES = {
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
    LEGACY_ONLY = frozenset(
        {"net.legacy.drv-framing", "net.legacy.hdr-10-bytes", "net.legacy.mac-entries-native-endian"}
    )
    FEATURE_BITS = NET_F
    VHOST_USER = False  # as before the split into families: judged on our own transports only

    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self.config_writes: list[tuple[int, int]] = []
        self.gso_seen = False
        self.needs_csum_seen = False

    def has_named(self, name: str) -> bool:
        if name == "HOST_GSO":
            return any(self.judge.has(getattr(NET_F, n)) for n in ("HOST_TSO4", "HOST_TSO6", "HOST_UFO"))
        return super().has_named(name)

    def _role(self, index: int) -> str:
        feats = self.judge.driver_features
        model = self.judge.model
        total = model.queue_count(feats) if model is not None else 3
        if feats >> NET_F.CTRL_VQ & 1 and index == total - 1:
            return "ctrl"
        return "tx" if index & 1 else "rx"

    def on_chain(self, request: Request) -> None:
        role = self._role(request.queue)
        hdr_len = net_hdr_len(self.judge.driver_features)
        where = request.where
        readable, writable = request.readable(), request.writable()
        if role == "rx":
            room = sum(n for _, n in writable)
            self.gated(
                "net.hdr.layout",
                room >= hdr_len and not readable,
                f"{where}: receive chain: {room} writable, {len(readable)} readable; header {hdr_len}",
            )
            self.gated(
                "net.rx.drv-hdr-size-calc",
                room >= hdr_len,
                f"{where}: {room} bytes for a {hdr_len}-byte header",
            )
            self.gated(
                "net.rx.drv-buffer-min-mrg",
                room >= layouts.NET_HDR_SIZE,
                f"{where}: a {room}-byte receive buffer with MRG_RXBUF (at least {layouts.NET_HDR_SIZE})",
            )
            return
        data = request.gather()
        if role == "ctrl":
            self._ctrl(where, request.order, data, request.segments)
            return
        if not self.gated(
            "net.hdr.layout",
            len(data) >= hdr_len and not writable,
            f"{where}: transmit chain of {len(data)} readable bytes ({len(writable)} writable)",
        ):
            return
        self._tx(request, data, hdr_len, readable)

    def _tx(self, request: Request, data: bytes, hdr_len: int, readable: list[tuple[int, int]]) -> None:
        where = request.where
        codec = layouts.net_hdr_codec(request.order, hdr_len == layouts.NET_HDR_SIZE)
        fields = codec.unpack(data[:hdr_len])
        flags, gso, _hlen, gso_size, cstart, coff = fields[:6]
        frame_len = len(data) - hdr_len
        self.gated(
            "net.tx.drv-flags-zero-without-csum", flags == 0, f"{where}: tx flags {flags:#x} without CSUM"
        )
        self.gated(
            "net.tx.drv-no-rx-only-flags",
            not flags & (NET_HDR_F.DATA_VALID | NET_HDR_F.RSC_INFO),
            f"{where}: tx flags {flags:#x} carry DATA_VALID/RSC_INFO",
        )
        self.gated("net.tx.drv-gso-none", gso == NET_GSO.NONE, f"{where}: gso_type {gso} without host GSO")
        allowed = gso == NET_GSO.NONE or (gso & 0x7F in HOST_GSO and self.has_named(HOST_GSO[gso & 0x7F]))
        self.gated("net.tx.drv-gso-gated", allowed, f"{where}: gso_type {gso:#x} not negotiated")
        if len(fields) > 6:
            self.gated("net.tx.drv-num-buffers-zero", fields[6] == 0, f"{where}: tx num_buffers {fields[6]}")
        if flags & NET_HDR_F.NEEDS_CSUM:
            self.needs_csum_seen = True
            self.gated(
                "net.tx.drv-needs-csum-rules",
                cstart + coff + 2 <= frame_len,
                f"{where}: NEEDS_CSUM with start {cstart} offset {coff} in a {frame_len}-byte frame",
            )
        if gso != NET_GSO.NONE:
            self.gso_seen = True
            self.judge.check(
                "net.tx.drv-gso-needs-csum-and-size",
                bool(flags & NET_HDR_F.NEEDS_CSUM) and gso_size > 0,
                f"{where}: gso_type {gso} with flags {flags:#x}, gso_size {gso_size}",
            )
        if self.judge.legacy and len(readable) > 1:
            # without ANY_LAYOUT the header sits in its own descriptor: 10 bytes, 12 with MRG_RXBUF
            first = readable[0][1]
            self.gated(
                "net.legacy.drv-framing",
                first == hdr_len,
                f"{where}: the first descriptor holds {first} bytes, the header is {hdr_len}",
            )
            self.gated(
                "net.legacy.hdr-10-bytes",
                first == layouts.NET_HDR_LEGACY_SIZE,
                f"{where}: a {first}-byte header descriptor without MRG_RXBUF",
            )
            # the header alone in its descriptor: its size is visible, and must be the
            # receive header's for the negotiated features
            self.gated(
                "net.tx.drv-hdr-size-same",
                first == hdr_len,
                f"{where}: a {first}-byte transmit header, receive headers are {hdr_len}",
            )

    def _ctrl(self, where: str, order: str, data: bytes, segs: Segments) -> None:
        writes = [w for _, _, w in segs]
        framed = (
            len(data) >= layouts.NET_CTRL_HDR_SIZE
            and bool(writes)
            and writes[-1]
            and writes == sorted(writes)
        )
        if not self.gated(
            "net.ctrl.format",
            framed,
            f"{where}: control chain of {len(data)} readable bytes, write flags {writes}",
        ):
            return
        cls, cmd, body = data[0], data[1], data[2:]
        if cls == NET_CTRL.RX:
            self.gated(
                "net.ctrl.drv-rx-mode-gated", False, f"{where}: RX class command {cmd} without CTRL_RX"
            )
        if cls != NET_CTRL.MAC or cmd != NET_CTRL_MAC.TABLE_SET:
            return
        self.gated("net.mac.drv-needs-ctrl-rx", False, f"{where}: MAC_TABLE_SET without CTRL_RX")
        count = layouts.net_ctrl_mac_entries(order)
        size = count.sizeof()
        pos, ok = 0, True
        for _ in range(2):  # the unicast table, then the multicast table
            if len(body) < pos + size:
                ok = False
                break
            n = count.parse(body[pos : pos + size])
            pos += size + n * 6
        ok = ok and pos == len(body)
        legacy = self.judge.legacy
        rule = "net.legacy.mac-entries-native-endian" if legacy else "net.mac.drv-table-format"
        self.gated(
            rule, ok, f"{where}: MAC_TABLE_SET of {len(body)} bytes does not add up ({order}-endian counts)"
        )
        if legacy:
            self.gated(
                "net.mac.drv-table-format", ok, f"{where}: MAC_TABLE_SET of {len(body)} bytes does not add up"
            )

    def on_config_write(self, offset: int, size: int, value: int) -> None:
        if not self.judge.legacy:
            self.config_writes.append((offset, size))

    def finish(self, driver_ok: bool) -> None:
        if driver_ok:
            self.gated(
                "net.cfg.drv-read-only",
                not self.config_writes,
                f"config writes (offset, size) {self.config_writes[:4]} on a modern interface",
            )
            deps = unmet_dependencies(self.judge.driver_features, NET_FEATURE_DEPS)
            self.gated(
                "net.features.dependencies", not deps, f"acked net features without prerequisites: {deps}"
            )
            # the generic rule, decided where the catalogue has a dependency table (net)
            self.judge.check(
                "features.drv.deps-accepted", not deps, f"acked features without prerequisites: {deps}"
            )
            if not self.has_named("CTRL_RX"):
                self.judge.ok(
                    "net.ctrl.drv-rx-mode-gated", "net.mac.drv-needs-ctrl-rx"
                )  # none sent (else FAIL)
        self.mark_not_applicable()
