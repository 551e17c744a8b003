"""What the qemu device backend can compare honestly, and what it refuses.

Net and console cells get a peer on QEMU's side, as our models have one: a UDP socket
netdev sending to itself for ``x-backend=loopback`` (every frame comes back, as our
loopback backend does) and a UDP chardev to itself behind the virtconsole at port 0 (an
echo). A big-endian driver profile against qemu-system-x86_64 is refused with the reason:
QEMU serves legacy virtio little-endian there, so a HANG would only measure the mismatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from virtio_sim.guest.profile import guest_policy
from virtio_sim.orchestration.embedded import RunConfig
from virtio_sim.orchestration.qemu.machines import qemu_devices
from virtio_sim.orchestration.qemu.run import run_qemu
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import load_driver_profile

pytestmark = pytest.mark.qemu


def _run(device: str, workload: str, transport: str, driver: str = "linux-6.1") -> object:
    cfg = RunConfig(
        device=device,
        workload=workload,
        transport=transport,
        timeout=20,
        guest=guest_policy(load_driver_profile(driver)),
    )
    return trio.run(lambda: run_qemu(cfg))


@pytest.mark.parametrize(
    ("device", "workload"),
    [("virtio-net-device", "net-loopback"), ("virtio-serial-device", "console-echo")],
)
@pytest.mark.parametrize("transport", ["pci-modern", "mmio-v2"])
def test_net_and_console_run_against_a_qemu_peer(device: str, workload: str, transport: str) -> None:
    result = _run(device, workload, transport)
    assert result.outcome is Outcome.OK, (result.detail, result.device_notes)  # type: ignore[attr-defined]


def test_the_peers_are_on_qemus_command_line(tmp_path: Path) -> None:
    net = qemu_devices(["virtio-net-device"], "pci-modern", tmp_path)
    assert "-netdev" in net.args and any(a.startswith("socket,id=net0,udp=127.0.0.1:") for a in net.args)
    assert any("netdev=net0" in a for a in net.args)
    pair = qemu_devices(
        ["virtio-net-device,x-backend=switch:a", "virtio-net-device,x-backend=switch:a"], "mmio-v2", tmp_path
    )
    hubs = [a for a in pair.args if a.startswith("hubport,")]
    assert len(hubs) == 2 and hubs[0].split("hubid=")[1] == hubs[1].split("hubid=")[1]
    con = qemu_devices(["virtio-serial-device"], "mmio-v2", tmp_path)
    assert "virtconsole,chardev=con0" in con.args
    assert any(a.startswith("udp,id=con0,") for a in con.args)


@pytest.mark.parametrize("transport", ["mmio-v1", "pci-legacy"])
def test_big_endian_profiles_are_refused_with_the_reason(transport: str) -> None:
    result = _run("virtio-rng-device", "rng", transport, driver="linux-3.18-ppc64be")
    assert result.outcome is Outcome.HOST_REFUSED  # type: ignore[attr-defined]
    assert "big-endian" in result.detail and "little-endian" in result.detail  # type: ignore[attr-defined]
