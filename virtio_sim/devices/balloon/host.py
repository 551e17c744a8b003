"""The virtio-balloon device model and its ``-device`` half (the device side, QEMU's role).

``virtio-balloon-device`` / ``virtio-balloon-pci`` take QEMU's ``deflate-on-oom``
(default off: DEFINE_PROP_BIT in hw/virtio/virtio-balloon.c) and ``x-num-pages``, the
target QEMU's monitor sets with its ``balloon`` command (virtio_balloon_to_target); a
one-line run asks for :data:`RUN_TARGET_PAGES` pages so that the driver has work to do.

Serving a request reads the chain's device-readable bytes as 32-bit frame numbers (little
endian, or the guest's order on the legacy interface, as QEMU's virtio_ldl_p), moves
each page into or out of the balloon and completes the chain with used.len 0: the device
wrote nothing (5.5.6.2.1 notes that old devices put the buffer length there; QEMU puts
the bytes it read). A frame number outside guest RAM is skipped, as QEMU skips an address
that is not RAM; device-writable buffers and trailing bytes are noted and ignored. A page
in the balloon is left as it is: the spec allows the device to change its contents
(5.5.6.2), and leaving them keeps every device write inside the buffers the driver made
writable, which the canaries check.
"""

from __future__ import annotations

import struct

from virtio_sim.devices.balloon import (
    CONFIG_ACTUAL,
    CONFIG_SIZE,
    F_DEFLATE_ON_OOM,
    INFLATEQ,
    PFN_SHIFT,
    PFN_SIZE,
    QUEUE_SIZE,
)
from virtio_sim.host.devices.base import DeviceModel, DeviceQueue, PropertyError, parse_bool
from virtio_sim.host.kinds import BuildContext, HostHalf
from virtio_sim.host.qdev_props import Prop, b
from virtio_sim.ring.chain import ChainReader
from virtio_sim.spec import bit

#: the target a one-line run (and a matrix cell) sets, in pages (256 KiB)
RUN_TARGET_PAGES = 64


class BalloonDevice(DeviceModel):
    type_key = "balloon"
    num_queues = 2  # inflateq, deflateq (no statistics queue: never offered)
    queue_max_size = QUEUE_SIZE

    def __init__(self, num_pages: int = 0, deflate_on_oom: bool = False) -> None:
        super().__init__()
        self.num_pages = num_pages
        self.deflate_on_oom = deflate_on_oom
        self.config = bytearray(struct.pack("<II", num_pages, 0))
        #: page frame numbers in the balloon now
        self.ballooned: set[int] = set()
        self.inflated = 0
        self.deflated = 0
        #: the highest frame number ever given (evidence that the byte order was read right)
        self.highest_pfn = 0

    @property
    def actual(self) -> int:
        """What the driver last wrote to ``actual`` (little-endian on every interface)."""
        return int(struct.unpack_from("<I", self.config, CONFIG_ACTUAL)[0])

    def device_features(self) -> int:
        return bit(F_DEFLATE_ON_OOM) if self.deflate_on_oom else 0

    def config_space(self) -> bytes:
        # 5.5.4.1: little-endian even for a legacy driver, whatever self.order says
        return bytes(self.config)

    def config_write(self, offset: int, data: bytes) -> None:
        """Only ``actual`` is the driver's to write; ``num_pages`` is the device's."""
        if offset < CONFIG_ACTUAL or offset + len(data) > CONFIG_SIZE:
            self.events.note(f"balloon: write of {len(data)} bytes to config offset {offset:#x} ignored")
            return
        self.config[offset : offset + len(data)] = data

    def reset(self) -> None:
        super().reset()
        self.config[CONFIG_ACTUAL:CONFIG_SIZE] = bytes(4)
        self.ballooned.clear()

    def process(self, queue: DeviceQueue) -> int:
        done = 0
        order = self.order  # guest order while legacy, else little (set at activate)
        while (chain := queue.pop()) is not None:
            if chain.writable:
                self.events.note(f"balloon: request {chain.head} has device-writable buffers (ignored)")
            data = ChainReader(queue.space, chain.readable).read(chain.readable_len)
            whole = len(data) - len(data) % PFN_SIZE
            if whole != len(data):
                self.events.note(f"balloon: request {chain.head} ends in {len(data) - whole} stray bytes")
            for i in range(0, whole, PFN_SIZE):
                pfn = int.from_bytes(data[i : i + PFN_SIZE], order)
                self._move(pfn, inflate=queue.index == INFLATEQ)
            queue.push(chain.head, 0)
            done += 1
        return done

    def _move(self, pfn: int, *, inflate: bool) -> None:
        if inflate:
            self.ballooned.add(pfn)
            self.inflated += 1
            self.highest_pfn = max(self.highest_pfn, pfn)
        elif pfn in self.ballooned:
            self.ballooned.discard(pfn)
            self.deflated += 1
        else:
            self.events.note(f"balloon: deflate of page {pfn << PFN_SHIFT:#x}, which is not in the balloon")


def _device(props: dict[str, str]) -> DeviceModel:
    raw = props.pop("x-num-pages", "0")
    try:
        num_pages = int(raw, 0)
    except ValueError:
        num_pages = -1
    if not 0 <= num_pages < 1 << 32:
        raise PropertyError(f"Property 'x-num-pages' doesn't take value '{raw}'")
    return BalloonDevice(num_pages, parse_bool("deflate-on-oom", props.pop("deflate-on-oom", "off")))


def _defaults(props: dict[str, str], ctx: BuildContext) -> None:
    """A one-line run sets a target, as QEMU's ``balloon`` monitor command would."""
    props.setdefault("x-num-pages", str(RUN_TARGET_PAGES))


PROPS: dict[str, Prop] = {
    "deflate-on-oom": b(False, "VIRTIO_BALLOON_F_DEFLATE_ON_OOM"),
    "x-num-pages": Prop("uint32", "0", "the target in 4 KiB pages (QEMU: the monitor's balloon command)"),
}

HOST = HostHalf(_device, PROPS, _defaults)
