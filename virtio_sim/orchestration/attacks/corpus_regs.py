"""Register abuse (rows D and E of specs/attacks.toml): queue setup out of order or out
of range, status and feature negotiation violations, config and register accesses that
leave the defined space, and a backend that dies at activation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from virtio_sim.host.transport.virtio_pci import VirtioPciProxy
from virtio_sim.layouts import COMMON_CFG, EVENT_SUPPRESS_SIZE, MMIO_OFFSETS
from virtio_sim.orchestration.attacks.runner import require
from virtio_sim.orchestration.attacks.scenario import Expect, Scenario
from virtio_sim.orchestration.attacks.targets import RAM, Bench
from virtio_sim.spec import PCI, STATUS, F, bit

SCENARIOS: list[Scenario] = []
MODERN = ("mmio-v2", "pci-modern", "pci-transitional")
PCI_MODERN = ("pci-modern", "pci-transitional")
ALL_ONES = 0xFFFFFFFF
MMIO_QUEUE_RESET = MMIO_OFFSETS["QueueReset"]
MMIO_QUEUE_ALIGN = MMIO_OFFSETS["QueueAlign"]
LIVE = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK


def scenario(
    sid: str, row: str, expect: Expect, title: str, classes: frozenset[str] = frozenset(), **kw: Any
) -> Callable[[Callable[[Bench], None]], Callable[[Bench], None]]:
    def deco(fn: Callable[[Bench], None]) -> Callable[[Bench], None]:
        SCENARIOS.append(Scenario(sid, row, "regs", expect, title, fn, classes, **kw))
        return fn

    return deco


def size_of(b: Bench) -> int:
    return b.vdevs[0].queues[b.qi].size


# --------------------------------------------------------------------------- D. queues


def _bad_size(size: Callable[[Bench], int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        b.negotiate()
        p = b.ports[0]
        p.select(b.qi)
        before = size_of(b)
        p.set_size(size(b))
        require(size_of(b) == before, f"queue size {size_of(b)} accepted")
        b.map_iommu(0)
        b.queue()
        b.driver_ok()
        require(b.serves(), "the queue does not work after the refused size")

    return body


scenario("queue-size-zero", "D30", Expect.IGNORED, "QueueSize 0", transports=MODERN)(_bad_size(lambda b: 0))
scenario("queue-size-over-max", "D31", Expect.IGNORED, "QueueSize above the maximum", transports=MODERN)(
    _bad_size(lambda b: 2 * b.vdevs[0].queues[b.qi].max_size)
)
scenario(
    "queue-size-not-pow2",
    "D31",
    Expect.IGNORED,
    "QueueSize 6 on a split ring",
    transports=MODERN,
    rings=("split",),
)(_bad_size(lambda b: 6))
scenario("queue-size-ffff", "D31", Expect.IGNORED, "QueueSize 0xffff", transports=MODERN)(
    _bad_size(lambda b: 0xFFFF)
)


@scenario("packed-odd-size", "D31", Expect.LEGAL, "a packed ring of 6 entries (legal)", rings=("packed",))
def _packed_odd(b: Bench) -> None:
    b.negotiate()
    b.map_iommu(0)
    b.queue(size=6)
    b.driver_ok()
    for _ in range(8):
        require(b.serves(), "a 6-entry packed ring does not work")


@scenario("queue-size-while-live", "D35", Expect.IGNORED, "QueueSize rewritten while the queue is live")
def _size_live(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    p.select(b.qi)
    before = size_of(b)
    p.set_size(max(before // 2, 1))
    require(size_of(b) == before, "the live queue changed size")
    require(b.serves(), "the queue stopped working")


@scenario(
    "queue-addr-while-live", "D35", Expect.IGNORED, "queue addresses rewritten while live", transports=MODERN
)
def _addr_live(b: Bench) -> None:
    f = b.bring_up()
    p = b.ports[0]
    p.select(b.qi)
    p.set_rings(RAM + 0x1000, RAM + 0x2000, RAM + 0x3000)
    q = b.vdevs[0].queues[b.qi]
    require(q.desc == f.desc, "the live queue moved")
    require(b.serves(), "the queue stopped working")


@scenario("queue-enable-zero", "D35", Expect.IGNORED, "queue_enable written 0", transports=PCI_MODERN)
def _enable_zero(b: Bench) -> None:
    b.bring_up()
    b.ports[0].select(b.qi)
    b.ports[0].disable()
    require(b.vdevs[0].queues[b.qi].ready, "queue_enable=0 disabled the queue")
    require(b.serves(), "the queue stopped working")


# Not on pci-legacy: QEMU drops an out-of-range queue_sel there, so the writes that follow
# re-point the previously selected queue (legal on the legacy interface).
@scenario(
    "queue-select-huge",
    "D36",
    Expect.IGNORED,
    "queue_select 0xffff then queue writes",
    transports=(*MODERN, "mmio-v1"),
)
def _select_huge(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    p.select(0xFFFF)
    p.set_size(4)
    p.set_rings(0x1000, 0x2000, 0x3000)
    p.enable()
    require(b.serves(), "the queue stopped working")


def _misaligned(which: int) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        b.negotiate()
        b.map_iommu(0)
        f = b.queue(enable=False)
        addrs = [f.desc, f.avail, f.used]
        addrs[which] += (8, 1, 2)[which]
        p = b.ports[0]
        p.set_rings(*addrs)
        # lenient packed rings accept the area where the driver put it: the device may
        # write its event suppression structure there (a split used ring is refused)
        b.extra.append((addrs[2], EVENT_SUPPRESS_SIZE))
        p.enable()
        b.driver_ok()
        b.post(b.good_request())
        b.kick()

    return body


for _i, _name in enumerate(("desc", "avail", "used")):
    scenario(
        f"misaligned-{_name}",
        "D32",
        Expect.VIOLATION,
        f"{_name} ring misaligned",
        frozenset({"ring-alignment"}),
        transports=MODERN,
        lenient=("packed",),  # lenient packed rings do not check alignment; split always does
    )(_misaligned(_i))


@scenario(
    "rings-outside-ram",
    "D33",
    Expect.VIOLATION,
    "rings beyond the end of RAM",
    frozenset({"ring-address", "dma"}),
)
def _rings_outside(b: Bench) -> None:
    b.negotiate()
    b.map_iommu(0)
    p = b.ports[0]
    p.select(b.qi)
    if not p.legacy:
        p.set_size(8)
    p.set_rings(RAM + 0x10000, RAM + 0x11000, RAM + 0x12000)
    p.enable()
    b.driver_ok()
    b.kick()


@scenario(
    "rings-overlap",
    "D33",
    Expect.SURVIVE,
    "descriptor, avail and used rings at one address",
    transports=MODERN,
)
def _rings_overlap(b: Bench) -> None:
    b.negotiate()
    b.map_iommu(0)
    f = b.queue(enable=False)
    p = b.ports[0]
    p.set_rings(f.desc, f.desc, f.desc)
    p.enable()
    b.extra.append((f.desc, 0x4000))
    b.driver_ok()
    b.post(b.good_request())
    b.kick()


@scenario(
    "enable-without-addresses",
    "D33",
    Expect.SURVIVE,
    "queue enabled with addresses never written",
    transports=MODERN,
)
def _no_addr(b: Bench) -> None:
    b.negotiate()
    p = b.ports[0]
    p.select(b.qi)
    p.set_size(8)
    b.extra.append((0, 0x1000))  # GPA 0 is where such a device thinks its used ring is
    p.enable()
    b.driver_ok()
    b.kick()


@scenario("queue-align-zero", "D34", Expect.IGNORED, "legacy QueueAlign 0 / 3", transports=("mmio-v1",))
def _align_zero(b: Bench) -> None:
    b.negotiate()
    p = b.ports[0]
    p.select(b.qi)
    p.raw_write(MMIO_QUEUE_ALIGN, 4, 0)
    p.raw_write(MMIO_QUEUE_ALIGN, 4, 3)
    b.queue()
    b.driver_ok()
    require(b.serves(), "the queue does not work")


def _notify(value: Callable[[Bench], int]) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        b.bring_up()
        b.post(b.good_request())
        b.ports[0].notify(value(b))
        require(b.published() == 0, "a notify of another queue served the main queue")

    return body


scenario("notify-ffff", "D36", Expect.IGNORED, "notify queue 0xffff")(_notify(lambda b: 0xFFFF))
scenario("notify-num-queues", "D36", Expect.IGNORED, "notify queue == number of queues")(
    _notify(lambda b: len(b.vdevs[0].queues))
)
scenario("notify-32bit", "D36", Expect.IGNORED, "notify value 0x7fffffff", transports=("mmio-v2", "mmio-v1"))(
    _notify(lambda b: 0x7FFFFFFF)
)
scenario(
    "notify-unconfigured-queue",
    "D36",
    Expect.IGNORED,
    "notify a queue that was never set up",
    devices=("net", "console"),
)(_notify(lambda b: 0))


@scenario(
    "notify-before-driver-ok", "D36", Expect.LEGAL, "kick before DRIVER_OK: held until DRIVER_OK (2.1.2)"
)
def _early_kick(b: Bench) -> None:
    b.negotiate()
    b.map_iommu(0)
    b.queue()
    b.post(b.good_request())
    b.kick()
    if not b.ports[0].legacy:  # the legacy interface has no such rule
        require(b.published() == 0, "a buffer was consumed before DRIVER_OK")
    b.driver_ok()
    require(b.published() == 1, "the kick made before DRIVER_OK was lost")


@scenario("spurious-notify-storm", "D36", Expect.LEGAL, "1000 notifies with nothing available")
def _storm(b: Bench) -> None:
    b.bring_up()
    for _ in range(1000):
        b.kick()
    require(b.serves(), "the queue stopped working")


@scenario(
    "msix-vector-out-of-range", "D37", Expect.IGNORED, "MSI-X vectors beyond the table", transports=PCI_MODERN
)
def _msix(b: Bench) -> None:
    b.bring_up()
    port: Any = b.ports[0]
    for name in ("config_msix_vector", "queue_msix_vector"):
        port.c_w(name, 2, 0x7FF)
        got = port.c_r(name, 2)
        require(got == PCI.msix_no_vector, f"{name} reads {got:#x} after an out-of-range write")
    proxy: VirtioPciProxy = port.proxy
    require(proxy.fn is not None, "function gone")
    require(b.serves(), "the queue stopped working")


# --------------------------------------------------------------------------- E. status


@scenario("unoffered-features", "E38", Expect.IGNORED, "driver acks every feature bit", transports=MODERN)
def _all_features(b: Bench) -> None:
    b.negotiate(features=(1 << 64) - 1)
    require(not b.ports[0].status() & STATUS.FEATURES_OK, "FEATURES_OK accepted for unoffered features")


@scenario(
    "features-after-features-ok",
    "E39",
    Expect.IGNORED,
    "features rewritten after FEATURES_OK",
    transports=MODERN,
)
def _late_features(b: Bench) -> None:
    acked = b.negotiate()
    b.ports[0].set_driver_features(0)
    require(b.vdevs[0].driver_features == acked, "features changed after FEATURES_OK")
    b.map_iommu(0)
    b.queue()
    b.driver_ok()
    require(b.serves(), "the device does not work")


@scenario(
    "driver-ok-without-features-ok",
    "E39",
    Expect.VIOLATION,
    "DRIVER_OK with no FEATURES_OK",
    frozenset({"driver-ok-without-features-ok"}),
    transports=MODERN,
)
def _no_features_ok(b: Bench) -> None:
    b.negotiate(features_ok=False)
    b.map_iommu(0)
    b.queue()
    b.driver_ok()
    b.post(b.good_request())
    b.kick()
    require(b.published() == 0, "a device that never accepted features served a request")


@scenario(
    "no-version-1-modern-only",
    "E40",
    Expect.IGNORED,
    "a modern-only device offered no VERSION_1 ack",
    transports=("mmio-v2", "pci-modern"),
)
def _no_v1(b: Bench) -> None:
    b.negotiate(features=b.features() & ~bit(F.VERSION_1))
    require(not b.ports[0].status() & STATUS.FEATURES_OK, "FEATURES_OK accepted without VERSION_1")


@scenario("renegotiate-after-reset", "E41", Expect.LEGAL, "the same features negotiated twice")
def _renegotiate(b: Bench) -> None:
    for _ in range(2):
        b.bring_up()
        require(b.ports[0].status() & STATUS.DRIVER_OK, "DRIVER_OK refused")
        require(b.serves(), "not served")


def _status(values: Callable[[Bench], list[int]], expect_serving: bool = False) -> Callable[[Bench], None]:
    def body(b: Bench) -> None:
        b.bring_up()
        for v in values(b):
            b.ports[0].set_status(v)
        b.post(b.good_request())
        b.kick()
        if expect_serving:
            require(b.published() == 1, "not served")

    return body


scenario("status-clear-bits", "E42", Expect.SURVIVE, "DRIVER_OK device told ACKNOWLEDGE only")(
    _status(lambda b: [STATUS.ACKNOWLEDGE])
)
scenario("status-undefined-bits", "E42", Expect.SURVIVE, "status 0xff")(_status(lambda b: [0xFF]))
scenario("status-failed-then-kick", "E42", Expect.SURVIVE, "FAILED set, then a kick")(
    _status(lambda b: [LIVE | STATUS.FAILED])
)
scenario("status-double-driver-ok", "E42", Expect.LEGAL, "DRIVER_OK written twice")(
    _status(lambda b: [LIVE, LIVE], True)
)
scenario("status-needs-reset-by-driver", "E42", Expect.SURVIVE, "the driver sets DEVICE_NEEDS_RESET")(
    _status(lambda b: [LIVE | STATUS.DEVICE_NEEDS_RESET])
)


@scenario("reinit-without-reset", "E42", Expect.SURVIVE, "a second handshake without writing 0")
def _reinit(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    p.set_status(STATUS.ACKNOWLEDGE)
    p.set_status(STATUS.ACKNOWLEDGE | STATUS.DRIVER)
    p.set_driver_features(0)
    p.set_status(LIVE)
    b.post(b.good_request())
    b.kick()


@scenario("config-read-out-of-range", "E43", Expect.IGNORED, "config reads past the end and of odd widths")
def _cfg_read(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    size = b.vdevs[0].config_size()
    for off, width in ((size, 4), (size - 1, 4), (0xFFC, 4), (0, 3), (1, 8)):
        p.cfg_read(off, width)
    if p.name.startswith("mmio"):
        require(p.cfg_read(config_past(size), 4) == ALL_ONES, "a config read past the end is not all ones")
    require(b.serves(), "not served")


def config_past(size: int) -> int:
    return (size + 3) // 4 * 4


@scenario("config-write-out-of-range", "E43", Expect.IGNORED, "config writes past the end and of odd widths")
def _cfg_write(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    before = b.vdevs[0].config_bytes("little")
    size = len(before)
    for off, width in ((size, 4), (size - 1, 4), (0xFFC, 4), (0, 3), (1, 8)):
        p.cfg_write(off, width, ALL_ONES)
    require(b.serves(), "not served")


@scenario(
    "register-wrong-widths", "E43", Expect.IGNORED, "every register hit with 1, 2, 3 and 8 byte accesses"
)
def _widths(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    skip = {COMMON_CFG["device_status"]} if p.name.startswith("pci-m") else set()
    for off in range(0, 0x40 if p.legacy and p.name == "pci-legacy" else 0x100, 4):
        if off in skip:
            continue
        for width in (1, 2, 8):
            p.raw_read(off, width)
            if off not in (0x70, 0x14, 0x12, 0x50, 0x10):  # status and notify: real effects
                p.raw_write(off, width, 0)
    require(b.serves(), "not served")


@scenario(
    "undefined-registers",
    "E43",
    Expect.IGNORED,
    "writes to the gaps of the register block",
    transports=("mmio-v2", "mmio-v1"),
)
def _gaps(b: Bench) -> None:
    b.bring_up()
    p = b.ports[0]
    for off in (0x18, 0x1C, 0x2C, 0x48, 0x54, 0x68, 0x74, 0x88, 0x98, 0xA8, 0xC4, 0xF8):
        p.raw_write(off, 4, ALL_ONES)
        p.raw_read(off, 4)
    require(b.serves(), "not served")


@scenario(
    "activation-fails",
    "E44",
    Expect.VIOLATION,
    "the backend dies as the driver sets DRIVER_OK",
    frozenset({"activation-failed"}),
)
def _activation(b: Bench) -> None:
    model = b.vdevs[0].model

    def dead(features: int, order: Any) -> None:
        raise OSError("backend went away")

    model.activate = dead  # type: ignore[method-assign]
    b.negotiate()
    b.map_iommu(0)
    b.queue()
    b.driver_ok()
    del model.activate  # the instance override; reset() and a new DRIVER_OK work again
    b.post(b.good_request())
    b.kick()
    require(b.published() == 0, "a device whose activation failed served a request")


@scenario(
    "blk-backend-gone",
    "E44",
    Expect.SURVIVE,
    "the disk's file descriptor is gone under a live device",
    devices=("blk",),
    recovers=False,
)
def _blk_gone(b: Bench) -> None:
    b.bring_up()
    model: Any = b.vdevs[0].model
    fd, model.fd = model.fd, -1  # every read and write now fails with EBADF
    try:
        b.post(b.good_request())
        b.kick()
        status = b.memory.read(b.last_status, 1)[0]
        require(b.published() == 0 or status != 0, "a request on a dead disk completed OK")
    finally:
        model.fd = fd


@scenario(
    "queue-reset-live",
    "D35",
    Expect.LEGAL,
    "queue reset with a request pending, then the queue reused",
    transports=MODERN,
)
def _queue_reset(b: Bench) -> None:
    b.bring_up()
    require(b.vdevs[0].has_feature(F.RING_RESET), "RING_RESET not negotiated")
    b.post(b.good_request())
    port: Any = b.ports[0]
    port.select(b.qi)
    if port.name.startswith("mmio"):
        port.raw_write(MMIO_QUEUE_RESET, 4, 1)
    else:
        port.c_w("queue_reset", 2, 1)
    require(not b.vdevs[0].queues[b.qi].ready, "the queue is still live after its reset")
    b.queue()
    require(b.serves(), "the reset queue does not work again")
