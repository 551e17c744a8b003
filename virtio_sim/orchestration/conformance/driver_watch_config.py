"""Driver watch, device config family: reads at each field's
natural width on a modern interface, no config write during feature negotiation, and the
generation loop (config read again while the generation moved under the reads). The
device kind's own config rules (blk writeback after FEATURES_OK, the iommu bypass byte,
net config read-only) are its framing's (virtio_sim/devices/<kind>/framing.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtio_sim.orchestration.conformance.driver_watch_base import Family
from virtio_sim.spec import STATUS, F, status_names

if TYPE_CHECKING:
    from virtio_sim.orchestration.conformance.driver_watch import DriverWatch


class ConfigRules(Family):
    # nothing here ends with a device reset: the widths owed and the generation loop
    # follow the driver's reads, not the device's state

    #: mmio generation loop: the generation read before the current config reads, whether
    #: config was read since, and why a re-read is owed (the generation moved meanwhile)
    gen_open: int | None = None
    gen_config_read = False
    gen_retry: str | None = None

    def __init__(self, watch: DriverWatch) -> None:
        super().__init__(watch)
        #: transitional config reads, judged once the interface is known
        self.pending_widths: list[tuple[int, int]] = []

    def on_config_read(self, offset: int, size: int) -> None:
        w = self.w
        w.transport_rules.after_odd(f"config read at {offset:#x}")
        if self.gen_open is not None:
            self.gen_config_read = True
        self.check_width(offset, size)
        for framing in w.framings:
            framing.on_config_read(offset, size, w.status)

    def check_width(self, offset: int, size: int) -> None:
        """Modern interfaces: every device config field at its natural width (64-bit fields
        may also be read as two aligned 32-bit halves; byte arrays byte by byte)."""
        w = self.w
        fields = next((f.CONFIG_FIELDS for f in w.framings if f.CONFIG_FIELDS is not None), None)
        if fields is None or w.legacy_transport:
            return
        if w.transport == "pci-transitional" and not w.has(F.VERSION_1):
            # a transitional device: which interface this read came through (legacy drivers
            # may read config at any width) is known once the driver acks VERSION_1 or not
            self.pending_widths.append((offset, size))
            return
        ok = False
        for start, width in fields:
            if start <= offset < start + width:
                natural = size == width and offset == start
                half = width == 8 and size == 4 and offset in (start, start + 4)
                array = width not in (1, 2, 4, 8) and size == 1
                ok = natural or half or array
                break
        rule = "mmio.drv.config-natural-width" if w.mmio else "pci.access.drv-natural-width"
        w.check(rule, ok, f"{w.device_type} config read of {size} bytes at {offset:#x}")

    def judge_pending_widths(self) -> None:
        """FEATURES_OK or DRIVER_OK set: the interface is known, judge the reads kept."""
        if not self.pending_widths:
            return
        pending, self.pending_widths = self.pending_widths, []
        if not self.w.legacy:
            for offset, size in pending:
                self.check_width(offset, size)

    def on_config_write(self, offset: int, size: int, value: int) -> None:
        w = self.w
        w.transport_rules.after_odd(f"config write at {offset:#x}")
        for framing in w.framings:
            framing.on_config_write(offset, size, value)
        w.check(
            "init.drv.no-config-write-before-features-ok",
            bool(w.status & STATUS.FEATURES_OK) or (w.legacy and bool(w.status & STATUS.DRIVER)),
            f"config write of {size} bytes at {offset:#x} during feature negotiation"
            f" ({status_names(w.status)})",
        )

    def on_generation(self, value: int) -> None:
        """A ConfigGeneration read: it closes the config reads since the previous one."""
        if self.gen_open is not None and self.gen_config_read:
            if value != self.gen_open:
                self.gen_retry = f"ConfigGeneration {self.gen_open} -> {value} across config reads"
            elif self.gen_retry is not None:
                self.gen_retry = None
                self.w.ok("config.drv.generation-loop")  # read again until it held still
        self.gen_open = value
        self.gen_config_read = False

    def went_on(self, what: str) -> None:
        """The driver acted on config values read while the generation moved."""
        if self.gen_retry is not None:
            why, self.gen_retry = self.gen_retry, None
            self.w.fail("config.drv.generation-loop", f"{why}, then {what} without reading them again")
