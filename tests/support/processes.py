"""Helpers for tests with real host and guest processes.

Every child runs ``python -m virtio_sim.orchestration.cli ...`` from the worktree root in a process group
of its own, so that cleanup can reach grandchildren (``run --processes`` spawns two) and
a test can prove that nothing it started is still alive afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from virtio_sim import wire
from virtio_sim.sockets import SocketFrameChannel, UnixAddress, connect, parse_address

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "virtio_sim.orchestration.cli"]


def live_group_members(pgid: int) -> list[int]:
    """Processes in group ``pgid`` that are alive (zombies do not count)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            out.append(int(entry))
    return out


class Proc:
    """A running child: stdout lines and stderr text collected as they arrive."""

    def __init__(self, name: str, proc: trio.Process) -> None:
        self.name = name
        self.proc = proc
        self.pgid = proc.pid
        self.lines: list[str] = []
        self.stderr = ""
        self.changed = trio.Event()
        self.drained = trio.Event()
        self.address = ""  # a host's listening address

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def pump(self) -> None:
        async def out() -> None:
            assert self.proc.stdout is not None
            buf = b""
            async for chunk in self.proc.stdout:
                buf += chunk
                *done, buf = buf.split(b"\n")
                self.lines += [d.decode(errors="replace") for d in done]
                self._changed()
            if buf:
                self.lines.append(buf.decode(errors="replace"))

        async def err() -> None:
            assert self.proc.stderr is not None
            async for chunk in self.proc.stderr:
                self.stderr += chunk.decode(errors="replace")
                self._changed()

        try:
            async with trio.open_nursery() as n:
                n.start_soon(out)
                n.start_soon(err)
        finally:
            self.drained.set()
            self._changed()

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and "event" in e:
                found.append(e)
        return found

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked whenever output arrives)."""
        with trio.fail_after(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                if self.drained.is_set() and self.proc.returncode is not None:
                    value = predicate()
                    if value:
                        return value
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before the condition; "
                        f"stderr:\n{self.stderr}\nstdout:\n{self.stdout}"
                    )
                with trio.move_on_after(0.2):
                    await self.changed.wait()

    async def event(self, name: str, timeout: float = 10.0, nth: int = 1) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            hits = [e for e in self.events() if e["event"] == name]
            return hits[nth - 1] if len(hits) >= nth else None

        result: dict[str, Any] = await self.wait_for(find, timeout)
        return result

    async def ended(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """A host's first ``count`` guest-ended events, once there are that many."""

        def find() -> list[dict[str, Any]] | None:
            hits = [e for e in self.events() if e["event"] == "guest-ended"]
            return hits[:count] if len(hits) >= count else None

        result: list[dict[str, Any]] = await self.wait_for(find, timeout)
        return result

    async def log(self, text: str, timeout: float = 10.0) -> float:
        """Wait for ``text`` on stderr; returns the trio clock when it was seen."""
        await self.wait_for(lambda: text in self.stderr, timeout)
        return trio.current_time()

    async def exit(self, timeout: float = 20.0) -> int:
        with trio.fail_after(timeout):
            rc = await self.proc.wait()
            await self.drained.wait()
        return rc

    def json_result(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.stdout)
        return result

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


@asynccontextmanager
async def spawn(*args: str, name: str = "child") -> AsyncIterator[Proc]:
    """Start ``virtio-sim ARGS``; on exit stop its whole process group and prove it gone.

    The child's TMPDIR is a directory of its own, removed afterwards: what a process killed
    with SIGKILL could not clean up (its socket directory, scratch disks) goes with it.
    """
    scratch = tempfile.mkdtemp(prefix="vs-test-")
    proc = await trio.lowlevel.open_process(
        [*CLI, *args],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": scratch},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    p = Proc(name, proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.pump)
            try:
                yield p
            finally:
                with trio.CancelScope(shield=True):
                    await _kill_group(p)
    finally:
        if proc.returncode is None:
            proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)


async def _kill_group(p: Proc) -> None:
    """SIGTERM first (a host removes its socket), SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0.0)):
        if not live_group_members(p.pgid):
            break
        try:
            os.killpg(p.pgid, sig)
        except ProcessLookupError:
            break
        with trio.move_on_after(grace):
            while live_group_members(p.pgid):
                await trio.sleep(0.02)
    with trio.move_on_after(5):
        await p.proc.wait()
        await p.drained.wait()
    with trio.move_on_after(5):
        while live_group_members(p.pgid):
            await trio.sleep(0.02)
    assert not live_group_members(p.pgid), f"{p.name}: processes survived the test"


@asynccontextmanager
async def host(*args: str) -> AsyncIterator[Proc]:
    """A host process (``virtio-sim host ARGS``), listening at ``.address``."""
    async with spawn("host", *args, name="host") as h:
        event = await h.event("listening", timeout=15)
        h.address = str(event["address"])
        yield h


async def run_guest(address: str, *args: str, timeout: float = 30.0) -> Proc:
    """Run a guest process to its end; returns it (exit status in .proc.returncode)."""
    async with spawn("guest", "--connect", address, *args, name="guest") as g:
        await g.exit(timeout)
    return g


async def raw_channel(address: str) -> SocketFrameChannel:
    """A bare connection to a host, for speaking (or mangling) the protocol by hand."""
    addr = parse_address(address, listen=False)
    stream = await connect(addr)
    return SocketFrameChannel(stream, accept_fds=isinstance(addr, UnixAddress))


async def expect_error(channel: SocketFrameChannel, timeout: float = 5.0) -> tuple[int, str]:
    """Skip the host's HELLO/MEM_REGIONs; the next ERROR frame, then the end of the stream."""
    with trio.fail_after(timeout):
        while True:
            frame = await channel.receive()
            if frame.type is wire.MsgType.ERROR:
                code, message = wire.parse_error(frame)
                break
        try:
            extra = await channel.receive()
        except trio.EndOfChannel:
            return code, message
    raise AssertionError(f"host kept talking after ERROR: {extra}")
