"""Console workloads.

``console-echo`` needs loopback chardevs: every byte written to an open port must come
back on the same port, in order, whatever the receive buffers' sizes. With MULTIPORT the
bring-up itself is checked (port 0 nominated as the console, the host side open). With
EMERG_WRITE one byte goes through emerg_wr and must come back on the console port.
``console-write`` writes one line to the console, for file and stdio chardevs.
"""

from __future__ import annotations

import random
from typing import Any

from virtio_sim.guest.drivers.base import DeviceProtocolError, GuestDriver
from virtio_sim.guest.drivers.console import ConsoleDriver
from virtio_sim.guest.evidence import CorruptionDetected
from virtio_sim.guest.kinds import GuestHalf
from virtio_sim.spec import CONSOLE_F

DEFAULT_SEED = 0xC0DE
CHUNKS_PER_PORT = 12
MAX_CHUNK = 300
RX_BUFFER = 64  # smaller than most chunks: they come back over several buffers
EMERGENCY_CHAR = ord("!")


async def _open(c: ConsoleDriver) -> dict[str, Any]:
    await c.open(RX_BUFFER)
    console = c.console_port
    if console is None:
        raise DeviceProtocolError("the device nominated no console port")
    for port in c.ports.values():
        if not port.guest_open:
            await c.open_port(port.id)
    return {
        "multiport": c.multiport,
        "max_ports": c.max_ports,
        "ports": sorted(c.ports),
        "console_port": console.id,
        "size": list(c.size) if c.size else None,
        "names": {p.id: p.name for p in c.ports.values() if p.name},
    }


async def console_echo_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    assert isinstance(driver, ConsoleDriver)
    c = driver
    rnd = random.Random(seed if seed is not None else DEFAULT_SEED)
    evidence = await _open(c)
    echoed: dict[int, int] = {}
    for port in sorted(c.ports.values(), key=lambda p: p.id):
        if not port.host_open:
            raise DeviceProtocolError(f"port {port.id}: the host side never opened")
        total = 0
        for i in range(CHUNKS_PER_PORT):
            data = rnd.randbytes(rnd.randint(1, MAX_CHUNK))
            await c.write(port.id, data)
            got = await c.read(port.id, len(data))
            if got != data:
                raise CorruptionDetected(f"port {port.id} chunk {i}: echo differs")
            total += len(data)
        burst = [rnd.randbytes(rnd.randint(1, MAX_CHUNK)) for _ in range(4)]
        for data in burst:
            await c.write(port.id, data)
        want = b"".join(burst)
        if await c.read(port.id, len(want)) != want:
            raise CorruptionDetected(f"port {port.id}: burst echo differs")
        echoed[port.id] = total + len(want)
    evidence["bytes_echoed"] = echoed
    if c.dev.has(CONSOLE_F.EMERG_WRITE):
        await c.emergency_write(EMERGENCY_CHAR)
        got = await c.read(evidence["console_port"], 1)
        if got != bytes([EMERGENCY_CHAR]):
            raise CorruptionDetected(f"emergency write came back as {got!r}")
        evidence["emergency_write"] = "echoed"
    if c.stats.control_errors:
        raise DeviceProtocolError(f"{c.stats.control_errors} malformed control messages")
    return evidence


async def console_write_workload(driver: GuestDriver, seed: int | None = None) -> dict[str, Any]:
    assert isinstance(driver, ConsoleDriver)
    evidence = await _open(driver)
    line = f"virtio-sim console-write seed={seed}\n".encode()
    await driver.write(evidence["console_port"], line)
    evidence["written"] = line.decode()
    return evidence


GUEST = GuestHalf(
    ConsoleDriver, {"console-echo": console_echo_workload, "console-write": console_write_workload}
)
