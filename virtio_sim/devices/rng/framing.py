"""virtio-rng request framing (virtio 1.4 section 5.4): the driver's side of a request.

The entropy queue carries only buffers for the device to fill (5.4.6.1: "The driver MUST
NOT place driver-readable buffers into the queue").
"""

from __future__ import annotations

from virtio_sim.devices.framing import Framing, Request


class RngFraming(Framing):
    """Every buffer on the entropy queue is device-writable."""

    def on_chain(self, request: Request) -> None:
        self.judge.check(
            "rng.drv.writable-only",
            all(w for _, _, w in request.segments),
            f"{request.where}: a device-readable buffer on the entropy queue",
        )
