"""net-loopback, net-pair, console-echo and console-write end to end (host and guest in one
trio run), on every transport the embedded runner offers at test time.

Expectations are derived from what was negotiated, not from the transport's name: the
header is 12 bytes with VERSION_1 or MRG_RXBUF and 10 otherwise, whichever transport
(mmio v1/v2, PCI legacy/modern) produced that negotiation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from virtio_sim.guest.profile import guest_policy
from virtio_sim.orchestration.embedded import TRANSPORTS, RunConfig, run_embedded
from virtio_sim.outcome import Outcome, RunResult
from virtio_sim.profiles import load_driver_profile

TIMEOUT = 20.0
CLI = [sys.executable, "-m", "virtio_sim.orchestration.cli", "run"]
SEED5 = ["--seed", "5", "--json"]


def run(device: str, workload: str, transport: str, *extra: str, driver: str | None = None) -> RunResult:
    cfg = RunConfig(
        device=device, workload=workload, transport=transport, timeout=TIMEOUT, extra_devices=list(extra)
    )
    if driver is not None:
        cfg.guest = guest_policy(load_driver_profile(driver))
    return trio.run(run_embedded, cfg)


def expected_hdr_len(result: RunResult) -> int:
    names = set(result.negotiated)
    return 12 if {"VIRTIO_F_VERSION_1", "VIRTIO_NET_F_MRG_RXBUF"} & names else 10


def ok(result: RunResult) -> dict[str, object]:
    assert result.outcome is Outcome.OK, (result.outcome, result.detail, result.device_notes[:5])
    assert not result.violations
    return result.workload


# --------------------------------------------------------------------------- net-loopback


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mrg", ["on", "off"])
def test_net_loopback(transport: str, mrg: str) -> None:
    r = run(f"virtio-net-device,mrg_rxbuf={mrg}", "net-loopback", transport)
    w = ok(r)
    assert w["hdr_len"] == expected_hdr_len(r)
    assert w["legacy"] is ("VIRTIO_F_VERSION_1" not in r.negotiated)
    assert w["mergeable"] is (mrg == "on")
    if mrg == "on":
        assert w["big_frame"] == "merged"
        assert isinstance(w["max_buffers_per_frame"], int) and w["max_buffers_per_frame"] > 2
    else:
        assert w["big_frame"] == "dropped" and w["max_buffers_per_frame"] == 1
    assert w["csum"] == "passed-through"
    assert w["rx_filter"] == {
        "foreign_unicast": "filtered",
        "multicast": "filtered",
        "broadcast": "accepted",
        "allmulti": "accepted",
        "mac_table": "accepted",
        "mac_table_cleared": "filtered",
    }
    assert w["mac_change"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_loopback_several_queue_pairs_and_checksum_completion(transport: str) -> None:
    w = ok(run("virtio-net-device,mq=on,x-queue-pairs=3,guest_csum=off", "net-loopback", transport))
    assert w["queue_pairs"] == 3 and w["pairs_used"] == [0, 1, 2]
    assert w["csum"] == "completed"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_loopback_without_control_queue(transport: str) -> None:
    r = run("virtio-net-device,ctrl_vq=off,mrg_rxbuf=off", "net-loopback", transport)
    w = ok(r)
    assert "rx_filter" not in w
    assert not {"VIRTIO_NET_F_CTRL_VQ", "VIRTIO_NET_F_CTRL_RX"} & set(r.negotiated)
    assert w["hdr_len"] == expected_hdr_len(r)


@pytest.mark.parametrize("profile", ["linux-3.18", "linux-3.18-ppc64be"])
@pytest.mark.parametrize("mrg", ["on", "off"])
def test_net_loopback_with_a_legacy_only_driver(profile: str, mrg: str) -> None:
    """Legacy interface (guest-native byte order, 10-byte header without MRG_RXBUF)."""
    transports = [t for t in load_driver_profile(profile).transports if t in TRANSPORTS]
    assert transports, "the embedded runner offers no transport this legacy driver supports"
    for transport in transports:
        r = run(
            f"virtio-net-device,mrg_rxbuf={mrg},mq=on,x-queue-pairs=2",
            "net-loopback",
            transport,
            driver=profile,
        )
        w = ok(r)
        assert "VIRTIO_F_VERSION_1" not in r.negotiated
        assert w["hdr_len"] == (12 if mrg == "on" else 10)
        assert w["queue_pairs"] == 2 and w["rx_filter"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_legacy_driver_changes_mac_through_config_space(transport: str) -> None:
    r = run("virtio-net-device,ctrl_mac_addr=off", "net-loopback", transport, driver="linux-3.18")
    if r.outcome is Outcome.NOT_PROBED:  # a transport this legacy driver cannot drive
        assert transport not in load_driver_profile("linux-3.18").transports
        return
    w = ok(r)
    assert w["mac_change"] == "52:54:00:12:34:a9"


@pytest.mark.parametrize("fault", ["num-buffers-zero", "num-buffers-extra"])
def test_device_lying_in_num_buffers_is_a_device_error(fault: str) -> None:
    r = run(f"virtio-net-device,x-fault={fault}", "net-loopback", TRANSPORTS[0])
    assert r.outcome is Outcome.DEVICE_ERROR, r.detail
    assert "num_buffers" in r.detail


def test_net_loopback_on_a_switch_alone_hangs_cleanly() -> None:
    """Nobody else on the switch: the frames go nowhere and the run is a HANG, not a crash."""
    cfg = RunConfig(device="virtio-net-device,x-backend=switch:lonely", workload="net-loopback", timeout=0.5)
    r = trio.run(run_embedded, cfg)
    assert r.outcome is Outcome.HANG


# --------------------------------------------------------------------------- net-pair


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mrg", ["on", "off"])
def test_net_pair_over_a_switch(transport: str, mrg: str) -> None:
    nic = f"virtio-net-device,x-backend=switch:lan,mrg_rxbuf={mrg}"
    r = run(nic, "net-pair", transport, nic)
    w = ok(r)
    assert w["a_to_b"] == w["b_to_a"] == 24
    assert w["broadcast"] == "delivered"
    assert w["mac_a"] != w["mac_b"]
    assert w["hdr_len"] == expected_hdr_len(r)


def test_net_pair_needs_two_nics() -> None:
    r = run("virtio-net-device,x-backend=switch:lan", "net-pair", TRANSPORTS[0])
    assert r.outcome is Outcome.DEVICE_ERROR
    assert "second net device" in r.detail


def test_net_pair_from_the_command_line() -> None:
    nic = "virtio-net-device,x-backend=switch:s0"
    p = subprocess.run(
        [*CLI, "--device", nic, "--device", nic, "--workload", "net-pair", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["outcome"] == "OK" and r["evidence"]["a_to_b"] == 24


# --------------------------------------------------------------------------- console


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "props, ports",
    [
        ("", [0]),  # QEMU's default: 31 possible ports, MULTIPORT, one virtconsole
        (",max_ports=1", [0]),  # no MULTIPORT: port 0 only, no control queue
        (",max_ports=4,x-ports=3,x-size=80x25", [0, 1, 2, 3]),
    ],
)
def test_console_echo(transport: str, props: str, ports: list[int]) -> None:
    r = run(f"virtio-serial-device{props}", "console-echo", transport)
    w = ok(r)
    assert w["ports"] == ports and w["console_port"] == 0
    assert w["multiport"] is ("VIRTIO_CONSOLE_F_MULTIPORT" in r.negotiated)
    echoed = w["bytes_echoed"]
    assert isinstance(echoed, dict) and sorted(echoed) == ports and all(n > 0 for n in echoed.values())
    assert w["emergency_write"] == "echoed"
    if "x-size" in props:
        assert w["size"] == [80, 25]


@pytest.mark.parametrize("profile", ["linux-3.18", "linux-3.18-ppc64be"])
def test_console_echo_with_a_legacy_only_driver(profile: str) -> None:
    for transport in [t for t in load_driver_profile(profile).transports if t in TRANSPORTS]:
        r = run(
            "virtio-serial-device,max_ports=3,x-ports=2,x-size=100x30",
            "console-echo",
            transport,
            driver=profile,
        )
        w = ok(r)
        assert w["ports"] == [0, 1, 2] and w["size"] == [100, 30]
        assert "emergency_write" not in w  # Linux's driver never negotiates EMERG_WRITE


def test_console_write_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    w = ok(run(f"virtio-serial-device,x-console=file:{log}", "console-write", TRANSPORTS[0]))
    assert log.read_text() == w["written"] == "virtio-sim console-write seed=1\n"


def test_console_write_to_stdout() -> None:
    p = subprocess.run(
        [*CLI, "--device", "virtio-serial-device,x-console=stdio", "--workload", "console-write", *SEED5],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    line, _, rest = p.stdout.partition("\n")
    assert line == "virtio-sim console-write seed=5"
    assert json.loads(rest)["outcome"] == "OK"
