"""A peer that dies or is interrupted: the other side notices at once, says so, and exits.

``kill -9`` leaves no chance to say BYE; the survivor sees the end of the stream (or a
reset) and must report it with a clear message and a non-zero status. "At once" is a
mechanism, not a number: the survivor is woken by the stream's end. Its own timers (the
guest's run timeout, the host's idle timeout) are set to an hour, far past the tests'
guard, so a survivor that only a timer could wake fails the guard; the message says the
link ended (not "no completion" or "idle timeout").
Ctrl-C is the polite version: BYE to the peer, the socket removed, status 130.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from tests.support.processes import host, live_group_members, run_guest, spawn
from tests.support.wire_tap import tap
from virtio_sim.exit_codes import EXIT_INTERRUPTED, EXIT_PEER_LOST

SEED = ("--seed", "3")
#: the survivors' own timers: far past GUARD, so only the stream's end can wake them in time
TIMERS = "3600"
GUARD = 60  # seconds: the whole test, start-up and a loaded machine included
SOAK = ("--workload", "rng-soak", *SEED, "--timeout", TIMERS, "--json")
NO_IDLE = ("--idle-timeout", TIMERS)


def _listen(link: str, tmp_path: Path) -> tuple[str, ...]:
    if link == "unix":
        return ("--listen", "unix:", *NO_IDLE)
    secret = tmp_path / "secret"
    secret.write_text("kill-test")
    os.chmod(secret, 0o600)
    return ("--listen", "tcp:127.0.0.1:0", "--secret-file", str(secret), *NO_IDLE)


def _guest_secret(link: str, tmp_path: Path) -> tuple[str, ...]:
    return () if link == "unix" else ("--secret-file", str(tmp_path / "secret"))


@pytest.mark.parametrize("link", ["unix", "tcp"])
async def test_kill_9_guest_mid_workload(tmp_path: Path, link: str) -> None:
    with trio.fail_after(GUARD):
        async with host(*_listen(link, tmp_path), "-device", "virtio-rng-device", *SEED) as h:
            async with (
                tap(h.address, tmp_path) as t,
                spawn(
                    "guest", "--connect", t.address, *SOAK, *_guest_secret(link, tmp_path), name="guest"
                ) as g,
            ):
                await h.log("guest 1: handshake done")
                await t.kicked.wait()  # the driver is past DRIVER_OK and requests flow
                assert g.proc.returncode is None
                g.signal(signal.SIGKILL)
                await h.log("guest 1: LOST", timeout=GUARD)
            ended = await h.event("guest-ended")
            assert ended["end"] == "lost"
            assert "before BYE" in ended["reason"]
            # The host is still up and serves the next guest as if nothing happened.
            nxt = await run_guest(
                h.address, "--workload", "rng", "--seed", "3", "--json",
                *_guest_secret(link, tmp_path),
            )  # fmt: skip
            assert nxt.proc.returncode == 0, nxt.stderr
            assert nxt.json_result()["outcome"] == "OK"
            assert h.proc.returncode is None


async def test_kill_9_guest_ends_a_once_host_with_status_3(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        async with (
            host("--listen", "unix:", *NO_IDLE, "--once", "-device", "virtio-rng-device", *SEED) as h,
            tap(h.address, tmp_path) as t,
            spawn("guest", "--connect", t.address, *SOAK, name="guest") as g,
        ):
            await h.log("handshake done")
            await t.kicked.wait()
            g.signal(signal.SIGKILL)
            rc = await h.exit(timeout=GUARD)
    assert rc == EXIT_PEER_LOST
    assert "LOST" in h.stderr and "the guest died or dropped the link" in h.stderr


@pytest.mark.parametrize("link", ["unix", "tcp"])
async def test_kill_9_host_mid_workload(tmp_path: Path, link: str) -> None:
    with trio.fail_after(GUARD):
        async with (
            host(*_listen(link, tmp_path), "-device", "virtio-rng-device", *SEED) as h,
            tap(h.address, tmp_path) as t,
            spawn("guest", "--connect", t.address, *SOAK, *_guest_secret(link, tmp_path), name="guest") as g,
        ):
            await h.log("guest 1: handshake done")
            await t.kicked.wait()  # mid-workload: the status trace below must show DRIVER_OK
            assert g.proc.returncode is None
            h.signal(signal.SIGKILL)
            rc = await g.exit(timeout=GUARD)
    assert rc == EXIT_PEER_LOST
    assert "host link lost" in g.stderr
    result = g.json_result()
    assert result["outcome"] == "DEVICE_ERROR"
    assert "host link lost" in result["detail"]
    # It was mid-workload: the device had been set up and driven.
    assert result["status_trace"][-1].endswith("DRIVER_OK|FEATURES_OK")


async def test_ctrl_c_on_the_host_says_bye_and_removes_the_socket(tmp_path: Path) -> None:
    sock_dir = tmp_path / "private"
    sock = sock_dir / "vs.sock"
    with trio.fail_after(60):
        async with host("--listen", f"unix:{sock}", "-device", "virtio-rng-device", *SEED) as h:
            assert oct(sock_dir.stat().st_mode & 0o777) == oct(0o700)
            assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
            async with spawn("guest", "--connect", h.address, *SOAK, name="guest") as g:
                await h.log("handshake done")
                h.signal(signal.SIGINT)
                grc = await g.exit(timeout=5)
                hrc = await h.exit(timeout=5)
    assert hrc == EXIT_INTERRUPTED
    assert "SIGINT: saying BYE to 1 guest(s)" in h.stderr
    assert grc == EXIT_PEER_LOST
    assert "host link lost" in g.stderr
    assert not sock.exists()  # the socket is gone ...
    assert not sock_dir.exists()  # ... and so is the private directory the host created


async def test_ctrl_c_on_the_guest_says_bye(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with host("--listen", "unix:", "-device", "virtio-rng-device", *SEED) as h:
            async with (
                tap(h.address, tmp_path) as t,
                spawn("guest", "--connect", t.address, *SOAK, name="guest") as g,
            ):
                await h.log("handshake done")
                await t.kicked.wait()
                g.signal(signal.SIGINT)
                rc = await g.exit(timeout=5)
            ended = await h.event("guest-ended")
    assert rc == EXIT_INTERRUPTED
    assert "interrupted by SIGINT" in g.stderr
    assert ended["end"] == "clean"  # the guest said BYE on its way out


@pytest.mark.parametrize("target", ["group", "runner"])
async def test_ctrl_c_on_run_processes_stops_everything(target: str) -> None:
    """Ctrl-C in a terminal signals the whole process group; ``kill -INT`` only the runner.
    Either way the runner, its host and its guest are gone quickly and nothing is left."""
    with trio.fail_after(60):
        async with spawn(
            "run", "--device", "virtio-rng-device", "--workload", "rng-soak", "--timeout", "60",
            "--processes", name="runner",
        ) as r:  # fmt: skip
            await r.wait_for(lambda: len(live_group_members(r.pgid)) >= 3, timeout=15)
            guests = await r.wait_for(
                lambda: [pid for pid in live_group_members(r.pgid) if _is_guest(pid)], timeout=15
            )
            await r.wait_for(lambda: _has_mapped_guest_ram(guests[0]), timeout=30)  # connected
            if target == "group":
                os.killpg(r.pgid, signal.SIGINT)
            else:
                r.signal(signal.SIGINT)
            rc = await r.exit(timeout=10)
            assert live_group_members(r.pgid) == []
    assert rc == EXIT_INTERRUPTED
    assert "interrupted by SIGINT" in r.stderr


async def test_run_processes_reports_a_killed_guest() -> None:
    with trio.fail_after(60):
        async with spawn(
            "run", "--device", "virtio-rng-device", "--workload", "rng-soak", "--timeout", "60",
            "--processes", name="runner",
        ) as r:  # fmt: skip
            members = await r.wait_for(
                lambda: [pid for pid in live_group_members(r.pgid) if _is_guest(pid)], timeout=15
            )
            # Kill only once the guest has mapped guest RAM, i.e. finished the handshake: a
            # guest killed before the host has it leaves the host no loss to report.
            await r.wait_for(lambda: _has_mapped_guest_ram(members[0]), timeout=30)
            os.kill(members[0], signal.SIGKILL)
            rc = await r.exit(timeout=10)
            assert live_group_members(r.pgid) == []
    assert rc == EXIT_PEER_LOST
    assert "guest process was killed by SIGKILL" in r.stderr
    assert "LOST" in r.stderr  # the host's own report, passed on


def _has_mapped_guest_ram(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "memfd:" in f.read()
    except OSError:
        return False


def _is_guest(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"guest" in argv and b"virtio_sim.orchestration.cli" in argv


async def test_children_do_not_outlive_a_killed_runner() -> None:
    """``kill -9`` of ``run --processes`` itself leaves it no chance to stop its children;
    they see their stdin lifeline close and shut down on their own.

    Outliving is judged by the CPU the children spend after the kill, not by wall clock: on
    a loaded machine a child that shuts down at once may still wait seconds for a core,
    while children that missed the lifeline go on with the soak (seconds of CPU over TCP)."""
    with trio.fail_after(90):
        async with spawn(
            "run", "--device", "virtio-rng-device", "--workload", "rng-soak", "--timeout", "60",
            "--processes", "--link", "tcp", name="runner",
        ) as r:  # fmt: skip
            # Kill once the guest is connected to the host: both children are in their
            # session (the host watches its lifeline from the start, the guest from here on).
            guests = await r.wait_for(
                lambda: [pid for pid in live_group_members(r.pgid) if _is_guest(pid)], timeout=30
            )
            await r.wait_for(lambda: _tcp_connected(guests[0]), timeout=30)
            children = [pid for pid in live_group_members(r.pgid) if pid != r.proc.pid]
            assert len(children) == 2, children
            r.signal(signal.SIGKILL)
            at_kill = {pid: _cpu_seconds(pid) for pid in children}
            while alive := [pid for pid in live_group_members(r.pgid) if pid in at_kill]:
                spent = sum(max(0.0, _cpu_seconds(pid) - at_kill[pid]) for pid in alive)
                assert spent < SHUTDOWN_CPU, (
                    f"children outlived the runner ({spent:.2f} s CPU after the kill)"
                )
                await trio.sleep(0.05)


#: CPU seconds both children may spend between the runner's death and their own exit: a
#: shutdown costs a few hundredths; the rest of an rng-soak over TCP costs several seconds
SHUTDOWN_CPU = 1.0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0 once it is gone: only live pids are asked)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tcp_connected(pid: int) -> bool:
    """Whether ``pid`` holds an ESTABLISHED TCP socket (its fds against /proc/net/tcp*)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "01" and f"socket:[{cols[9]}]" in inodes:
                return True
    return False
