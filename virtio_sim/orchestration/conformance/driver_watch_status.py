"""Driver watch, status family: the device status sequence as the driver writes it.

Reset first and read back as 0, ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK one step
at a time, no bit ever cleared, FEATURES_OK read back before going on, nothing but a reset
after FAILED, and a driver that sets FAILED when the device offers no VERSION_1 on a
modern-only interface.
"""

from __future__ import annotations

from virtio_sim.orchestration.conformance.driver_watch_base import Family
from virtio_sim.spec import STATUS, F, bit, status_names

#: a modern interface whose device does not offer VERSION_1 (driver_runner, odd=...)
NO_VERSION_1 = "no-version-1"


class StatusRules(Family):
    CONDITIONS = {"init.legacy.drv-skip-features-ok": "!VERSION_1"}

    def reset(self) -> None:
        self.reset_pending = False  # 0 written, not read back yet
        self.fok_unverified = False  # FEATURES_OK written, not read back yet

    failed_set = False  # the driver set FAILED at some point

    def on_status_write(self, old: int, value: int, new: int) -> None:
        w = self.w
        w.config_rules.went_on(f"status {status_names(value)} written")
        if value == 0:
            w.notify_rules.finish_queues()
            w.reset_all()
            self.reset_pending = True
            w.reset_seen = True
            w.status = 0
            return
        w.check("init.drv.reset-first", w.reset_seen, f"first status write {value:#x} was not a reset")
        w.reset_seen = True
        if self.reset_pending:
            why = f"status {status_names(value)} written before the reset read back 0"
            w.fail("reset.drv.complete-on-zero", why)
            if w.pci:
                w.fail("pci.common.drv-wait-reset", why)
            self.reset_pending = False
        cleared = old & ~value & ~STATUS.DEVICE_NEEDS_RESET
        w.check(
            "status.drv.never-clear-bit",
            not cleared,
            f"status write {status_names(value)} clears {status_names(cleared)} of {status_names(old)}",
        )
        if NO_VERSION_1 in w.presented and value & ~old:
            # a driver needs VERSION_1 on a modern interface: FAILED, not FEATURES_OK/DRIVER_OK
            if value & ~old & (STATUS.FEATURES_OK | STATUS.DRIVER_OK):
                w.fail(
                    "features.drv.fail-if-no-fallback",
                    f"{status_names(value)} written although the device offers no VERSION_1",
                )
            elif value & STATUS.FAILED:
                w.ok("features.drv.fail-if-no-fallback")
        if value & STATUS.FAILED:
            self.failed_set = True
        if old & STATUS.FAILED and value & ~old & ~STATUS.FAILED:
            why = f"after FAILED the driver wrote {status_names(value)} without a reset"
            w.fail("status.drv.reset-after-failed", why)
            w.fail("init.drv.stop-on-error", why)
        added = value & ~old
        if added & STATUS.DRIVER:
            w.check(
                "init.drv.acknowledge",
                bool(old & STATUS.ACKNOWLEDGE),
                f"DRIVER set before ACKNOWLEDGE ({status_names(value)})",
            )
            self._step_ok(old, value, STATUS.ACKNOWLEDGE)
        if added & (STATUS.FEATURES_OK | STATUS.DRIVER_OK):
            w.config_rules.judge_pending_widths()
        if added & STATUS.FEATURES_OK:
            self._features_ok(old, value)
        if added & STATUS.DRIVER_OK:
            self._driver_ok(old, value)
        w.status = new

    def _features_ok(self, old: int, value: int) -> None:
        w = self.w
        self._step_ok(old, value, STATUS.DRIVER)
        w.check(
            "init.drv.driver-bit",
            bool(old & STATUS.DRIVER),
            f"FEATURES_OK set before DRIVER ({status_names(value)})",
        )
        w.feature_rules.check_features()
        w.check(
            "init.drv.feature-exchange",
            bool(w.feature_rules.offered) and bool(w.feature_rules.acked),
            "FEATURES_OK set without reading and writing the feature bits",
        )
        w.check(
            "features.legacy.drv-detect-legacy-device",
            bool(w.feature_rules.offered.get(1, 0) & bit(F.VERSION_1 - 32)),
            "FEATURES_OK set for a device that does not offer VERSION_1 (a legacy device)",
        )
        w.check(
            "init.legacy.drv-skip-features-ok", not w.legacy, "a legacy (no VERSION_1) driver set FEATURES_OK"
        )
        self.fok_unverified = True

    def _driver_ok(self, old: int, value: int) -> None:
        w = self.w
        if w.legacy:
            w.feature_rules.check_features()
            self._step_ok(old, value, STATUS.DRIVER)
            if not w.feature_rules.offered.get(1, 0) & bit(F.VERSION_1 - 32):
                w.ok("features.legacy.drv-detect-legacy-device")
            w.ok("init.legacy.drv-skip-features-ok")
        else:
            w.check(
                "init.drv.set-features-ok",
                bool(old & STATUS.FEATURES_OK),
                f"DRIVER_OK set before FEATURES_OK ({status_names(old)} -> {status_names(value)})",
            )
            w.check(
                "init.drv.reread-features-ok",
                not self.fok_unverified,
                "DRIVER_OK set without reading FEATURES_OK back",
            )
            self._step_ok(old, value, STATUS.FEATURES_OK)
        w.ok("init.drv.driver-ok-last")
        w.driver_ok_seen = True
        if w.mmio:
            w.ok("mmio.drv.generic-init", "mmio.drv.no-shm-unless-expected")
        w.queue_rules.vectors_at_driver_ok()

    def _step_ok(self, old: int, value: int, needed: int) -> None:
        self.w.check(
            "status.drv.set-bits-per-step",
            bool(old & needed),
            f"{status_names(value & ~old)} set before {status_names(needed)}"
            f" ({status_names(old)} -> {status_names(value)})",
        )

    def on_status_read(self, value: int) -> None:
        w = self.w
        if self.reset_pending and value == 0:
            self.reset_pending = False
            w.ok("reset.drv.complete-on-zero")
            if w.pci:
                w.ok("pci.common.drv-wait-reset")
        if self.fok_unverified:
            self.fok_unverified = False
            w.ok("init.drv.reread-features-ok")

    def features_ok_unverified(self, why: str) -> None:
        """Queue setup went on without FEATURES_OK read back."""
        if self.fok_unverified:
            self.w.fail("init.drv.reread-features-ok", why)

    def finish(self) -> None:
        if self.failed_set and not self.w.vhost:
            # FAILED was set and nothing but a reset followed (the status checks fail otherwise)
            self.w.ok("status.drv.reset-after-failed", "init.drv.stop-on-error")
