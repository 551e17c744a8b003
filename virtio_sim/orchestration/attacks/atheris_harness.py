"""Optional coverage-guided fuzzing with atheris (``pip install virtio-sim[fuzz]``):
the wire frame decoder and the split/packed descriptor walkers, fed raw bytes.

    python -m virtio_sim.orchestration.attacks.atheris_harness wire  [atheris/libFuzzer options]
    python -m virtio_sim.orchestration.attacks.atheris_harness split
    python -m virtio_sim.orchestration.attacks.atheris_harness packed

Nothing else imports this module and no test needs atheris; the hypothesis machines in
fuzz.py are what CI runs. Only WireError / RingError / DmaError may come out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from virtio_sim import wire
from virtio_sim.dma import DmaError, IdentityAddressSpace
from virtio_sim.memory import GuestMemory
from virtio_sim.ring.chain import RingError
from virtio_sim.ring.packed import PackedDeviceQueue
from virtio_sim.ring.split import SplitDeviceQueue, SplitRingAddresses
from virtio_sim.ring.types import RingFeatures

MEM = 1 << 16
Q = 16
ADDRS = SplitRingAddresses(0x0, 0x1000, 0x2000)


def one_wire(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.WireError:
        pass


def _walker(packed: bool) -> Callable[[bytes], None]:
    mem = GuestMemory.create(MEM)
    space = IdentityAddressSpace(mem)

    def one(data: bytes) -> None:
        mem.write(0, data[:MEM].ljust(0x3000, b"\0"))
        ring = (
            PackedDeviceQueue(space, Q, ADDRS, RingFeatures(indirect=True))
            if packed
            else SplitDeviceQueue(space, Q, ADDRS, RingFeatures(indirect=True))
        )
        try:
            for _ in range(Q + 1):
                chain = ring.pop()
                if chain is None:
                    break
                ring.push(chain.head, 0)
        except (RingError, DmaError):
            pass

    return one


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional extra

    kind = argv[1] if len(argv) > 1 else "wire"
    target = one_wire if kind == "wire" else _walker(kind == "packed")
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
