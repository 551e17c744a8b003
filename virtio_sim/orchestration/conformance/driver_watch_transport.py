"""Driver watch, transport family: the register rules of virtio-mmio and virtio-pci and
how a driver copes with what a device presents.

virtio-mmio (4.2): MagicValue and Version read first, feature selectors written before
the feature registers, InterruptStatus read before InterruptACK with only its bits, no
shared-memory registers touched, GuestPageSize on the legacy interface; an odd MagicValue,
Version or DeviceID makes the driver leave the device alone. Register misuse the
transports refused (undefined offsets, wrong widths, read-only writes, ...) is mapped to
its rule in :data:`MISUSE`. PCI (4.1): reserved capability types and BARs skipped, large
capability lengths accepted, any revision taken, the function matched by its id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtio_sim.orchestration.conformance.driver_watch_base import Family
from virtio_sim.spec import MMIO_INT

if TYPE_CHECKING:
    from virtio_sim.orchestration.conformance.driver_watch import DriverWatch

#: what a device presented to test the driver -> the rule a driver that copes keeps
PRESENTED = {
    "reserved-type": "pci.cap.drv-ignore-reserved-type",
    "reserved-bar": "pci.cap.drv-ignore-reserved-bar",
    "large-cap-len": "pci.cap.drv-accept-large-cap-len",
    "odd-revision": "pci.id.drv-any-revision",
}
#: odd mmio identification value presented (host MmioTransport.present_odd) -> the
#: register that reveals it and the rules of a driver that then leaves the device alone
ODD_MMIO: dict[str, tuple[str, tuple[str, ...]]] = {
    "bad-magic": ("MagicValue", ("mmio.drv.ignore-bad-magic",)),
    "bad-version": ("Version", ("mmio.drv.ignore-bad-version",)),
    "device-id-zero": ("DeviceID", ("mmio.drv.ignore-devid-zero", "mmio.drv.init-devid-zero-abort")),
}
#: PCI transport -> the id rule a driver that brings the function up keeps
MATCH_RULE = {
    "pci-modern": "pci.id.drv-match-modern",
    "pci-transitional": "pci.id.drv-match-transitional",
    "pci-legacy": "pci.id.drv-match-transitional",
}
#: register misuse class (host transports) -> requirement
MISUSE: dict[str, str] = {
    "mmio-undefined": "mmio.drv.no-undefined-offsets",
    "mmio-config-range": "mmio.drv.no-undefined-offsets",
    "mmio-width": "mmio.drv.control-32bit",
    "mmio-read-wo": "mmio.drv.no-read-wo",
    "mmio-write-ro": "mmio.drv.no-write-ro",
    "mmio-config-width": "mmio.drv.config-natural-width",
    "pci-common-width": "pci.access.drv-natural-width",
    "pci-common-undefined": "pci.access.drv-natural-width",
    "pci-config-width": "pci.access.drv-natural-width",
    "pci-isr-width": "pci.access.drv-natural-width",
    "pci-common-write-ro": "pci.common.drv-no-write-ro",
    "pci-msix-range": "pci.msix.drv-in-range",
    "pci-cap-write": "pci.cap.drv-no-write",
    "pci-cfgcap-unaligned": "pci.cfgcap.drv-aligned",
    "pci-cfgcap-range": "pci.cfgcap.drv-valid-range",
}
#: the access rules a driver that never misused a register kept (PASS at the end)
MMIO_ACCESS_IDS = (
    "mmio.drv.no-undefined-offsets",
    "mmio.drv.control-32bit",
    "mmio.drv.no-read-wo",
    "mmio.drv.no-write-ro",
    "mmio.drv.config-natural-width",
)
PCI_ACCESS_IDS = ("pci.access.drv-natural-width", "pci.common.drv-no-write-ro", "pci.cap.drv-no-write")


class TransportRules(Family):
    def __init__(self, watch: DriverWatch) -> None:
        super().__init__(watch)
        self.first_registers: list[tuple[str, str]] = []  # mmio: the first accesses
        #: an odd mmio value presented: (register revealing it, rules), read yet, touched after
        self.odd = next((ODD_MMIO[p] for p in watch.presented if p in ODD_MMIO), None)
        self.odd_seen = False
        self.odd_touched = False

    def reset(self) -> None:
        self.dfsel = self.gfsel = False  # mmio feature selectors written since the reset
        self.page_size = False  # legacy mmio GuestPageSize written since the reset
        self.int_status: int | None = None  # mmio InterruptStatus read and not yet acked

    def on_register(self, op: str, name: str, value: int) -> None:
        """virtio-mmio register rules that need the register's name."""
        w = self.w
        if self.odd is not None:
            self.after_odd(f"{op} of {name}")
            if op == "read" and name == self.odd[0]:
                self.odd_seen = True
        if op == "read" and name == "ConfigGeneration":
            w.config_rules.on_generation(value)
        if len(self.first_registers) < 2:
            self.first_registers.append((op, name))
            if len(self.first_registers) == 2:
                ok = self.first_registers == [("read", "MagicValue"), ("read", "Version")]
                w.check("mmio.drv.init-magic-version-first", ok, f"first accesses {self.first_registers}")
        if name.startswith("SHM"):
            w.fail(
                "mmio.drv.no-shm-unless-expected", f"{op} of {name} by a driver that uses no shared memory"
            )
        if op == "read" and name == "InterruptStatus":
            self.int_status = value
        elif op == "write" and name == "InterruptACK":
            self._interrupt_ack(value)
        elif op == "write" and name == "DeviceFeaturesSel":
            self.dfsel = True
        elif op == "write" and name == "DriverFeaturesSel":
            self.gfsel = True
        elif op == "read" and name == "DeviceFeatures":
            w.check(
                "mmio.drv.select-before-device-features",
                self.dfsel,
                "DeviceFeatures read before DeviceFeaturesSel was written",
            )
        elif op == "write" and name == "DriverFeatures":
            w.check(
                "mmio.drv.select-before-driver-features",
                self.gfsel,
                "DriverFeatures written before DriverFeaturesSel",
            )
        elif op == "write" and name == "GuestPageSize":
            self.page_size = True

    def _interrupt_ack(self, value: int) -> None:
        w = self.w
        seen = self.int_status
        w.check(
            "mmio.drv.read-interrupt-status",
            seen is not None,
            f"InterruptACK {value:#x} without reading InterruptStatus",
        )
        w.check(
            "mmio.drv.ack-after-handling", seen is not None, f"InterruptACK {value:#x} for no interrupt read"
        )
        defined = MMIO_INT.USED_BUFFER | MMIO_INT.CONFIG_CHANGE
        ok = not value & ~defined and (seen is None or not value & ~seen)
        w.check("mmio.drv.ack-mask", ok, f"InterruptACK {value:#x} after InterruptStatus {seen}")
        self.int_status = None

    def after_odd(self, what: str) -> None:
        """Any access once the odd value was read: the driver did not leave the device alone."""
        if self.odd is None or not self.odd_seen or self.odd_touched:
            return
        self.odd_touched = True
        register, rules = self.odd
        for rule in rules:
            self.w.fail(rule, f"{what} after {register} read an odd value")

    def on_misuse(self, kind: str, message: str) -> None:
        w = self.w
        self.after_odd(f"refused access ({message})")
        requirement = MISUSE.get(kind)
        if requirement is None:
            w.unmapped.append(f"{kind}: {message}")
        else:
            w.fail(requirement, message)

    def finish_presented(self) -> None:
        """The odd things presented, coped with (see the callers in DriverWatch.finish)."""
        w = self.w
        if w.presented and w.reset_seen and not w.legacy:
            # the driver found the real common config and notify structures through the
            # walk and drove the device with them (a driver that did not skip the odd ones
            # never gets here: driver_runner.judge_presented fails it from the run)
            for what in w.presented:
                if what in PRESENTED:
                    w.ok(PRESENTED[what])

    def finish(self) -> None:
        w = self.w
        if self.odd is not None and self.odd_seen and not self.odd_touched:
            w.ok(*self.odd[1])  # read the odd value, then touched nothing more
        if w.transport in MATCH_RULE and w.driver_ok_seen and not w.vhost:
            # a driver brought this function up: it matched the function's id (a modern
            # 0x1040+ id, or a transitional one); driver_runner.judge_bound fails a driver
            # that left a function it should have taken untouched
            w.ok(MATCH_RULE[w.transport])
        if not w.vhost and w.reset_seen:
            family = (
                MMIO_ACCESS_IDS
                if w.mmio
                else PCI_ACCESS_IDS
                if w.transport in ("pci-modern", "pci-transitional")
                else ()
            )
            w.ok(*family)
