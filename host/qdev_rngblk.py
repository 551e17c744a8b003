"""``-device`` factories and host halves of virtio-rng and virtio-blk (virtio_sim/devices).

``virtio-rng-device`` (QEMU's virtio-rng): ``x-seed=N`` seeds a reproducible entropy
stream (a run's seed by default), ``x-queue-size=N`` the request queue's size.
``virtio-blk-device`` (QEMU's virtio-blk): ``drive=`` (a -drive id or a raw image path;
a one-line run gets a scratch disk), QEMU's block sizes, queue sizes and switches with
QEMU 7.2's defaults (hw/block/virtio-blk.c virtio_blk_properties).
"""

from __future__ import annotations

import os

from virtio_sim.host import qdev_props
from virtio_sim.host.devices.base import DeviceModel, PropertyError, parse_bool
from virtio_sim.host.devices.blk import BlkDevice
from virtio_sim.host.devices.rng import RngDevice
from virtio_sim.host.kinds import BuildContext, HostHalf
from virtio_sim.host.qdev_props import Prop, b
from virtio_sim.spec import MMIO

RNG_PROPS: dict[str, Prop] = {
    "x-seed": Prop("uint64", None, "seed a reproducible entropy stream"),
    "x-queue-size": Prop("uint16", None, "request queue size (power of 2)"),
}
BLK_PROPS: dict[str, Prop] = {
    "drive": Prop("str", None, "Node name or ID of a block device (-drive id=...) or a raw image path"),
    "readonly": b(False, "VIRTIO_BLK_F_RO"),
    "serial": Prop("str", "virtio-sim-blk", "the disk's serial (VIRTIO_BLK_T_GET_ID)"),
    "queue-size": Prop("uint16", "256", "request queue size (power of 2, 2..1024)"),
    "logical_block_size": Prop("size", "512", "A power of two between 512 B and 2 MiB"),
    "physical_block_size": Prop("size", "512", "A power of two between 512 B and 2 MiB"),
    "num-queues": Prop("uint16", "1", "request queues"),
    # QEMU's virtio-blk switches (their 7.2 defaults; machine types before change them)
    "scsi": b(False, "VIRTIO_BLK_F_SCSI (legacy)"),
    "config-wce": b(True, "VIRTIO_BLK_F_CONFIG_WCE"),
    "discard": b(True, "VIRTIO_BLK_F_DISCARD"),
    "write-zeroes": b(True, "VIRTIO_BLK_F_WRITE_ZEROES"),
    "seg-max-adjust": b(True, "seg_max follows the queue size"),
}
#: the scratch disk a one-line run gets when it names no drive
DEFAULT_DISK_SIZE = 1 << 20


def _rng(props: dict[str, str]) -> DeviceModel:
    seed = props.pop("x-seed", None)
    qs = props.pop("x-queue-size", None)
    try:
        dev = RngDevice(seed=int(seed, 0) if seed is not None else None)
    except ValueError:
        raise PropertyError(f"Property 'x-seed' doesn't take value '{seed}'") from None
    if qs is not None:
        try:
            size = int(qs, 0)
        except ValueError:
            raise PropertyError(f"Property 'x-queue-size' doesn't take value '{qs}'") from None
        if size < 2 or size > MMIO.qemu_queue_num_max or size & (size - 1):
            raise PropertyError(
                f"invalid x-queue-size property ({size}), must be a power of 2 "
                f"in 2..{MMIO.qemu_queue_num_max}"
            )
        dev.queue_max_size = size
    return dev


def _block_size(name: str, raw: str) -> int:
    """QEMU's block-size properties (hw/core/qdev-properties-system.c set_blocksize):
    a power of two between 512 B and 2 MiB."""
    try:
        value = int(raw, 0)
    except ValueError:
        raise PropertyError(f"Property .{name} doesn't take value '{raw}'") from None
    if value & (value - 1):
        raise PropertyError(f"Property .{name} doesn't take value '{raw}', it's not a power of 2")
    if not BLOCK_SIZE_MIN <= value <= BLOCK_SIZE_MAX:
        raise PropertyError(
            f"Property .{name} doesn't take value '{raw}' (min: {BLOCK_SIZE_MIN}, max: {BLOCK_SIZE_MAX})"
        )
    return value


def _blk(props: dict[str, str]) -> DeviceModel:
    table = BLK_PROPS
    drive = props.pop("drive", None)
    if not drive:
        raise PropertyError("drive property not set")
    readonly = parse_bool("readonly", str(qdev_props.take(props, table, "readonly")))
    serial = str(qdev_props.take(props, table, "serial"))
    qs = str(qdev_props.take(props, table, "queue-size"))
    nq = str(qdev_props.take(props, table, "num-queues"))
    block_size = _block_size("logical_block_size", str(qdev_props.take(props, table, "logical_block_size")))
    physical = _block_size("physical_block_size", str(qdev_props.take(props, table, "physical_block_size")))
    if block_size > physical:  # QEMU blkconf_blocksizes()
        raise PropertyError("logical_block_size > physical_block_size not supported")
    try:
        queue_size, num_queues = int(qs, 0), int(nq, 0)
    except ValueError:
        raise PropertyError("queue-size and num-queues take integers") from None
    if queue_size < 2 or queue_size > 1024 or queue_size & (queue_size - 1):
        raise PropertyError(f"invalid queue-size property ({queue_size}), must be a power of 2 in 2..1024")
    # QEMU's virtio-blk switches (their 7.2 defaults; machine types before change them)
    switches = {
        name: parse_bool(name, props.pop(name, "on" if default else "off"))
        for name, default in BLK_SWITCHES.items()
    }
    return BlkDevice(
        drive,
        read_only=readonly,
        serial=serial,
        queue_size=queue_size,
        logical_block_size=block_size,
        scsi=switches["scsi"],
        config_wce=switches["config-wce"],
        discard=switches["discard"],
        write_zeroes=switches["write-zeroes"],
        seg_max_adjust=switches["seg-max-adjust"],
        num_queues=num_queues,
    )


BLOCK_SIZE_MIN, BLOCK_SIZE_MAX = 512, 2 << 20
#: virtio-blk's on/off properties with QEMU 7.2's defaults (host/qdev_props.py)
BLK_SWITCHES = {
    name: BLK_PROPS[name].default == "on"
    for name in ("scsi", "config-wce", "discard", "write-zeroes", "seg-max-adjust")
}


def rng_defaults(props: dict[str, str], ctx: BuildContext) -> None:
    """A seeded run's entropy is the seed's stream, so its bytes can be checked."""
    if ctx.seed is not None:
        props.setdefault("x-seed", str(ctx.seed))


def blk_defaults(props: dict[str, str], ctx: BuildContext) -> None:
    """A one-line run without ``drive=`` gets a scratch disk in the run's directory."""
    if "drive" in props:
        return
    folder = ctx.scratch_folder()
    if folder is None:
        raise PropertyError("drive property not set")
    disk = os.path.join(folder, f"disk{ctx.index}.img")
    with open(disk, "wb") as f:
        f.truncate(DEFAULT_DISK_SIZE)
    props["drive"] = disk


HOST_RNG = HostHalf(_rng, RNG_PROPS, rng_defaults)
HOST_BLK = HostHalf(_blk, BLK_PROPS, blk_defaults)
