"""virtio-rng: the entropy device (virtio 1.4 section 5.4).

One request queue, no feature bits, no config space. The driver posts device-writable
buffers and the device fills each with random bytes, reporting the count in used.len.
The entropy comes from the OS, or from a seeded generator so that a matrix run can be
reproduced and its bytes checked end to end.
"""

from __future__ import annotations

import os
import random

from virtio_sim.host.devices.base import DeviceModel, DeviceQueue
from virtio_sim.layouts import VirtioRngConfig, build_flat
from virtio_sim.ring.chain import ChainWriter


class EntropySource:
    """os.urandom, or a deterministic stream when given a seed."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._rng = random.Random(seed) if seed is not None else None

    def read(self, n: int) -> bytes:
        if self._rng is None:
            return os.urandom(n)
        return self._rng.randbytes(n)


class RngDevice(DeviceModel):
    type_key = "rng"
    num_queues = 1
    # QEMU's virtio-rng creates its request queue with 8 entries (virtio_add_queue(vdev,
    # 8, handle_input) in hw/virtio/virtio-rng.c; measured on every pc-i440fx-2.3 ... 7.2)
    queue_max_size = 8

    def __init__(self, seed: int | None = None, max_bytes_per_request: int = 1 << 16) -> None:
        super().__init__()
        self.source = EntropySource(seed)
        self.max_bytes = max_bytes_per_request
        self.bytes_served = 0

    def device_features(self) -> int:
        return 0

    def config_space(self) -> bytes:
        return build_flat(VirtioRngConfig, {})

    def process(self, queue: DeviceQueue) -> int:
        done = 0
        while (chain := queue.pop()) is not None:
            if chain.readable:
                self.events.note(f"rng: request {chain.head} has device-readable buffers (ignored)")
            writer = ChainWriter(queue.space, chain.writable)
            n = min(writer.remaining, self.max_bytes)
            if n:
                writer.write(self.source.read(n))
            else:
                self.events.note(f"rng: request {chain.head} has no writable space")
            self.bytes_served += writer.written
            queue.push(chain.head, writer.written)
            done += 1
        return done
