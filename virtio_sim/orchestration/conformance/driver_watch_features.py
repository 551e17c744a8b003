"""Driver watch, features family: the feature exchange.

Only offered bits acked, none the spec does not define; VERSION_1, ACCESS_PLATFORM,
RING_PACKED and ORDER_PLATFORM accepted when offered; no SR-IOV without the capability;
a legacy driver acks no high bits, accepts ANY_LAYOUT and leaves bit 30 alone; nothing
written after FEATURES_OK; and a feature bit no spec defines does not stop the driver.
"""

from __future__ import annotations

from virtio_sim.orchestration.conformance.driver_watch_base import Family
from virtio_sim.spec import FEATURES, STATUS, F, bit, status_names

#: a feature bit no spec defines, offered on every driver run (driver_runner.unknown_feature)
UNKNOWN_FEATURE = "unknown-feature"


def known_feature_mask(device_type: str) -> int:
    """The feature bits the spec defines for ``device_type`` (and the transport)."""
    return sum(1 << b for b in range(64) if FEATURES.lookup(b, device_type) is not None)


class FeatureRules(Family):
    CONDITIONS = {
        "features.legacy.drv-no-high-bits": "!VERSION_1",
        "features.legacy.drv-accept-any-layout": "!VERSION_1",
    }

    #: the driver did not reach DRIVER_OK on a device offering an unknown feature bit
    #: (why); a control run without the bit decides whether that bit was the cause
    unknown_refused: str | None = None
    settled = 0  # the features the driver settled on (checked at FEATURES_OK)

    def reset(self) -> None:
        self.offered: dict[int, int] = {}  # window -> bits the driver read
        self.acked: dict[int, int] = {}  # window -> bits the driver wrote
        self.checked = False

    def on_features_read(self, window: int, value: int) -> None:
        self.offered[window] = value

    def on_features_write(self, window: int, value: int) -> None:
        w = self.w
        if not w.vhost and w.status & STATUS.FEATURES_OK:
            w.fail(
                "init.drv.no-features-after-features-ok",
                f"feature window {window} written ({value:#x}) after FEATURES_OK",
            )
            return
        self.acked[window] = value
        self.checked = False

    def check_features(self) -> None:
        """Judge the acked bits against the offered ones (once per exchange)."""
        if self.checked:
            return
        self.checked = True
        w = self.w
        offered = sum(v << (32 * n) for n, v in self.offered.items() if n < 2)
        acked = sum(v << (32 * n) for n, v in self.acked.items() if n < 2)
        self.settled = acked
        extra = acked & ~offered
        w.check(
            "features.drv.only-offered",
            not extra,
            f"acked {extra:#x}, which the device did not offer (offered {offered:#x})",
        )
        if w.vhost:
            return  # what the front-end offered its guest is not visible: no accept-* rules
        w.ok("init.drv.no-features-after-features-ok")
        if offered & bit(F.VERSION_1):
            w.check(
                "features.drv.accept-version-1",
                bool(acked & bit(F.VERSION_1)),
                "VERSION_1 offered but not accepted",
            )
        undefined = [b for b in range(64) if acked >> b & 1 and FEATURES.lookup(b, w.device_type) is None]
        w.check("features.drv.ignore-invalid", not undefined, f"acked undefined feature bits {undefined}")
        w.check(
            "features.drv.sriov-requires-cap",
            not acked & bit(F.SR_IOV),
            "VIRTIO_F_SR_IOV negotiated for a function without an SR-IOV capability",
        )
        if not acked & bit(F.VERSION_1):
            w.check("features.legacy.drv-no-high-bits", not acked >> 32, f"legacy driver acked {acked:#x}")
        if offered & bit(F.BAD_FEATURE):
            w.check(
                "features.legacy.bit30", not acked & bit(F.BAD_FEATURE), "bit 30 (BAD_FEATURE) negotiated"
            )
        if not acked & bit(F.VERSION_1) and offered & bit(F.ANY_LAYOUT):
            w.check(
                "features.legacy.drv-accept-any-layout",
                bool(acked & bit(F.ANY_LAYOUT)),
                "legacy driver did not accept the offered ANY_LAYOUT",
            )
        for feature, requirement in (
            (F.ACCESS_PLATFORM, "features.drv.accept-access-platform"),
            (F.RING_PACKED, "features.drv.accept-ring-packed"),
            (F.ORDER_PLATFORM, "features.drv.accept-order-platform"),
        ):
            if offered & bit(feature):
                w.check(
                    requirement, bool(acked & bit(feature)), f"feature bit {feature} offered but not accepted"
                )
            elif requirement not in w.log.findings:
                w.log.not_applicable(requirement, f"feature bit {feature} was not offered")

    def finish(self) -> None:
        w = self.w
        if UNKNOWN_FEATURE in w.presented and self.offered and not w.vhost:
            unknown = w.source.device_features & ~known_feature_mask(w.device_type)
            if w.driver_ok_seen:
                w.ok("features.drv.no-fail-on-unknown")
            else:
                # not judged here: the driver may stop for another reason; the runner's
                # control run without the unknown bit decides (driver_runner.judge_unknown)
                self.unknown_refused = (
                    f"offered feature bits {unknown:#x} no spec defines; the driver never set DRIVER_OK"
                    f" (status {status_names(w.status)})"
                )
