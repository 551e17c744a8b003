"""Request amplification against a host process (issue 23 item 2).

The attack: a guest with 16 MiB of RAM posts one virtio-blk read through an indirect
table whose 500 entries all point at one 2 MiB buffer: 1000 MiB of request. Before the
fix the blk model read the whole request into one buffer (host RSS +1000 MiB) on the
event loop every connection shares (every other guest, and every new connection's
handshake, waited for it). Now: host peak RSS grows by less than RSS_BOUND, and a new
connection gets its HELLO while the request is still being served.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.support.processes import host, raw_channel
from virtio_sim.handshake import guest_handshake, session_memory
from virtio_sim.host.machine import MICROVM_MMIO_BASE, MICROVM_MMIO_SLOTS
from virtio_sim.host.transport.mmio import MMIO_WINDOW
from virtio_sim.orchestration.attacks.amplify import (
    MIB,
    Amplified,
    finish,
    hello_latency,
    post_amplified_read,
    reset_peak_rss,
    rss,
    sparse_disk,
)
from virtio_sim.sockets import UnixAddress, connect

BLK_BASE = MICROVM_MMIO_BASE + (MICROVM_MMIO_SLOTS - 1) * MMIO_WINDOW  # the only device
RSS_BOUND = 64 * MIB  # host peak RSS growth allowed for the whole 1000 MiB request
#: a new connection's HELLO may wait at most this share of the time the request itself
#: takes to serve (same run, same load): device work runs beside the event loop, in steps
#: of [blk] io_chunk_bytes (1 MiB of 1000), never holding it for a large part of a request
HELLO_SHARE = 0.25
BOUND = 120.0  # the request itself, on a loaded 2-core machine


async def test_a_1000_mib_request_from_a_16_mib_guest(tmp_path: Path) -> None:
    attack = Amplified()
    assert attack.total == 1000 * MIB
    disk = tmp_path / "big.img"
    sparse_disk(str(disk), attack.total + MIB)
    with trio.fail_after(BOUND):
        async with host("--listen", "unix:", "-m", "16M", "-device", f"virtio-blk-device,drive={disk}") as h:
            pid = h.proc.pid
            ch = await raw_channel(h.address)
            mem = session_memory(await guest_handshake(ch, secret=None, can_take_fds=True))
            try:
                reset_peak_rss(pid)
                _, before = rss(pid)
                served_at: list[float] = []

                async def serve_attack() -> None:
                    await finish(ch, mem, attack)
                    served_at.append(trio.current_time())

                async with trio.open_nursery() as nursery:
                    await post_amplified_read(ch, mem, BLK_BASE, attack)
                    posted_at = trio.current_time()
                    nursery.start_soon(serve_attack)
                    latency = await hello_latency(await connect(UnixAddress(h.address[len("unix:") :])))
                    hello_at = trio.current_time()
                _, peak = rss(pid)
            finally:
                mem.backing.close()
                await ch.aclose()
    growth = peak - before
    print(f"\namplification: HELLO answered in {latency * 1000:.1f} ms while the request ran "
          f"({(served_at[0] - posted_at) * 1000:.0f} ms); "
          f"host peak RSS +{growth / MIB:.1f} MiB for {attack.total // MIB} MiB")  # fmt: skip
    assert hello_at < served_at[0], "the HELLO waited for the device: device work blocks the host"
    service = served_at[0] - posted_at
    assert latency < HELLO_SHARE * service, f"HELLO {latency:.3f} s of a {service:.3f} s request"
    assert growth < RSS_BOUND, f"host peak RSS grew by {growth / MIB:.0f} MiB"
