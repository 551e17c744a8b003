"""DPDK's virtio-user (dpdk-testpmd 22.11) as a third-party driver of our virtio-net model.

testpmd's virtio-user PMD is a vhost-user front-end with its own virtio driver and rings
in its own memory (IOVA-as-VA); our back-end serves it the virtio-net model with the
loopback backend. testpmd forwards in ``io`` mode after a first burst (``--tx-first``):
every frame it transmits comes back on our receive side and is forwarded again. Both
sides count; then testpmd is told to quit (a newline on stdin, its own "Press enter to
exit") and must stop its port (GET_VRING_BASE per ring), close the connection and exit 0
by itself: no signal is sent.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import trio

from virtio_sim.host.qdev import build_device, parse_device_option
from virtio_sim.host.vhost_user import VhostUserBackend, serve_socket
from virtio_sim.orchestration.qemu.tools import DPDK_TESTPMD

pytestmark = [
    pytest.mark.tool("dpdk-testpmd"),
    # A known bug, not a flake to retry: run it with `pytest --runxfail` on this file.
    pytest.mark.xfail(
        run=False,
        reason=(
            "open bug: 3 of 9 runs here never forwarded (a fresh-clone CI run and two runs alone,"
            " one with the trio loop starved for 300 s); suspected cause: our virtio-net transmit loop"
            " (host/devices/net.py _process_tx) has no burst bound like QEMU's tx_burst, and"
            " testpmd's io forwarding refills the ring from its own core as fast as we drain it"
        ),
    ),
]

ENOUGH_FRAMES = 2000  # frames our device must have carried before testpmd is stopped
RUN_LIMIT = 90.0  # seconds for the whole exchange (EAL start-up under load included)
EXIT_LIMIT = 30.0  # seconds testpmd may take to stop its port and exit after the newline
STATS = re.compile(r"RX-packets:\s+(\d+).*?TX-packets:\s+(\d+)", re.S)


def pmd_command(socket_path: Path, prefix: str) -> list[str]:
    return [
        DPDK_TESTPMD,
        "--no-pci",
        "--no-huge",
        "-m", "256",
        f"--file-prefix={prefix}",  # a private runtime directory: parallel runs do not meet
        "--vdev", f"net_virtio_user0,path={socket_path}",
        "--",
        "--forward-mode=io",
        "--tx-first",
        "--total-num-mbufs=2048",  # the default pool (155456 mbufs) does not fit -m 256
    ]  # fmt: skip


def test_testpmd_exchanges_frames_with_our_net_model_and_exits_cleanly(tmp_path: Path) -> None:
    sock = tmp_path / "vu.sock"
    out = tmp_path / "testpmd.out"
    built = build_device(parse_device_option("virtio-net-device"))
    holder: list[VhostUserBackend] = []
    finished: list[VhostUserBackend | None] = []
    returncode: list[int | None] = []

    async def main() -> None:
        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            finished.append(
                await serve_socket(str(sock), built, on_backend=holder.append, task_status=task_status)
            )

        async with trio.open_nursery() as nursery:
            await nursery.start(serve)  # listening before testpmd connects
            with out.open("wb") as log, trio.fail_after(RUN_LIMIT):
                proc = await trio.lowlevel.open_process(
                    pmd_command(sock, f"vsim{id(tmp_path)}"),
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    # wait for the condition (frames carried), not for a time
                    while not holder or holder[0].model.stats.rx_frames < ENOUGH_FRAMES:  # type: ignore[attr-defined]
                        if proc.poll() is not None:
                            break
                        await trio.sleep(0.05)
                    assert proc.stdin is not None
                    await proc.stdin.send_all(b"\n")
                    with trio.move_on_after(EXIT_LIMIT):
                        returncode.append(await proc.wait())
                finally:
                    if proc.poll() is None:
                        proc.kill()  # only on failure: the assertion below reports it
                        await proc.wait()
            with trio.fail_after(10):
                while not finished:
                    await trio.sleep(0.05)

    trio.run(main)
    text = out.read_text(errors="replace")
    assert returncode == [0], f"testpmd did not exit by itself:\n{text[-3000:]}"
    backend = finished[0]
    assert backend is not None
    report = backend.report()
    assert report["ended"] == "front-end closed the connection"
    assert report["violations"] == [], report["violations"]
    assert {"SET_MEM_TABLE", "SET_VRING_KICK", "GET_VRING_BASE"} <= set(report["messages"])
    # testpmd's own count (its final forward statistics) and ours
    m = STATS.search(text.split("Accumulated forward statistics", 1)[-1])
    assert m, text[-3000:]
    pmd_rx, pmd_tx = int(m[1]), int(m[2])
    net = report["net"]
    assert net["tx_frames"] >= ENOUGH_FRAMES and net["rx_frames"] >= ENOUGH_FRAMES
    # testpmd transmitted at least what we took from its tx ring (frames still in the
    # ring at the stop are counted by testpmd only); we delivered at least what it read
    assert pmd_tx >= net["tx_frames"] >= net["rx_frames"] >= pmd_rx > 0
    assert net["rx_backlog_dropped"] == 0 and net["tx_errors"] == 0
