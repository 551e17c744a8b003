"""The wire corpus gives the same answers when the host is slow (issue 23 item 9).

On a loaded machine (the corpus niced beside two CPU hogs) a host thread can wait
seconds for a core. The corpus used to read that as misbehaviour: it started reading a
"never-reads" guest's replies after 2 s (which let a late host drain them, so it never
stalled and kept the guest), probed connections the host was about to end after 1.5 s,
and sent the next guest while the host still tore the hostile connection down. Here the
load is made deterministic: every guest the in-process host serves first waits
``STARVED`` seconds on its own thread, and each register access takes ``SLOW_ACCESS``
seconds, as on a thread that gets a core now and then.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import virtio_sim.orchestration.attacks.corpus_wire as corpus_wire
from virtio_sim.handshake import guest_handshake
from virtio_sim.host import server as host_server
from virtio_sim.host.process import HostOptions, HostServer, plan_host
from virtio_sim.orchestration.attacks.corpus_wire import CASES, run_wire_corpus
from virtio_sim.orchestration.attacks.scenario import Verdict
from virtio_sim.sockets import SocketFrameChannel, UnixAddress
from virtio_sim.wire import bye

STARVED = 2.5  # seconds: longer than the old corpus's 1.5 s and 2 s windows
SLOW_ACCESS = 0.01  # seconds per register access: a flood of 2000 takes 20 s
SLOW_CASES = ("wire-never-reads", "wire-hello-twice", "wire-fd-flood")


@pytest.fixture
def starved_host(monkeypatch: pytest.MonkeyPatch) -> None:
    real = HostServer._guest_thread

    def starved(self: HostServer, guest: object) -> tuple[str, str]:
        time.sleep(STARVED)  # no core for a while: nothing of this guest happens meanwhile
        return real(self, guest)  # type: ignore[arg-type]

    monkeypatch.setattr(HostServer, "_guest_thread", starved)
    guarded = host_server.guarded

    def slow(*args: Any) -> int:
        time.sleep(SLOW_ACCESS)
        return guarded(*args)

    monkeypatch.setattr(host_server, "guarded", slow)


@pytest.mark.usefixtures("starved_host")
async def test_the_corpus_judges_a_starved_host_by_what_it_does(tmp_path: Path) -> None:
    chosen = [c for c in CASES if c.id in SLOW_CASES]
    results = await run_wire_corpus(str(tmp_path), chosen)
    by_id = {r.scenario: r for r in results}
    assert all(r.verdict is Verdict.HANDLED for r in results), [
        (r.scenario, r.verdict, r.detail) for r in results
    ]
    assert by_id["wire-never-reads"].policy == "close"  # it hung up: the send stalled
    assert by_id["wire-hello-twice"].policy == "close"  # ended by the host, not by a probe
    assert by_id["wire-fd-flood"].policy == "alive"


async def test_wait_idle_returns_once_every_connection_is_over(tmp_path: Path) -> None:
    """The corpus's "next guest" waits for this: the host's own account of its
    connections, not a time."""
    path = str(tmp_path / "h.sock")
    opts = HostOptions(listen=UnixAddress(path), devices=["virtio-rng-device"], ram_size=2 << 20)
    server = HostServer(plan_host(opts), out=io.StringIO(), err=io.StringIO())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await server.wait_idle()  # nobody connected: at once
        stream = await trio.open_unix_socket(path)
        ch = SocketFrameChannel(stream)
        await guest_handshake(ch, secret=None, can_take_fds=False)
        idle = trio.Event()

        async def waiter() -> None:
            await server.wait_idle()
            idle.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not idle.is_set() and len(server.live) == 1  # a guest is being served
        await ch.send(bye())
        with trio.fail_after(corpus_wire.BOUND):
            await idle.wait()
        assert server.live == {}
        await ch.aclose()
        nursery.cancel_scope.cancel()
