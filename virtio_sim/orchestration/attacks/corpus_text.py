"""Hostile text (row X4): a lying host sends the guest ERROR messages that are markup,
terminal control sequences or far over the protocol's 4000 characters.

The guest must treat them as data: end the connection with the host's words as the
refusal detail, cut to the bound (specs/limits.toml [wire] max_error_chars), and the CLI
must print them literally (no MarkupError, no escape reaching the terminal, no
quadratic rendering). The other direction, a hostile guest sending such ERRORs to the
host process, is in the wire corpus (corpus_wire.py: wire-error-markup, wire-error-huge).
"""

from __future__ import annotations

import io
import os
import time
import traceback
from dataclasses import dataclass

import trio
from rich.console import Console

from virtio_sim.orchestration.attacks.scenario import CaseResult, Verdict
from virtio_sim.peertext import MAX_PEER_TEXT
from virtio_sim.wire import ErrorCode, ErrorPayload, Frame, MsgType

# A backstop for a guest that never gives up on the lying host: a passing case never
# waits for it (the ERROR ends the guest at once), so it is generous for loaded machines.
BOUND = 60.0


@dataclass(frozen=True)
class TextCase:
    id: str
    title: str
    message: str
    must_show: str  # what the rendered result must contain, literally


TEXT_CASES = [
    TextCase(
        "text-error-markup",
        "ERROR whose message is rich markup: [/x], [bold], [link=...]",
        "refused [/x] [bold]not bold[/bold] [link=file:///etc/passwd]click[/link]",
        "[/x] [bold]not bold[/bold]",
    ),
    TextCase(
        "text-error-huge",
        "ERROR of 60,000 characters (the u16 length allows it; the protocol says 4000)",
        "x" * 60_000,
        "more characters cut",
    ),
    TextCase(
        "text-error-terminal",
        "ERROR carrying terminal escapes (title change, clear screen, 8-bit CSI)",
        "\x1b]0;owned\x07\x1b[2J\x9b31mred",
        "\\x1b[2J",
    ),
]


def raw_error(message: str, code: int = ErrorCode.CONFIG) -> bytes:
    """An ERROR frame exactly as a hostile peer would send it (wire.error() caps the text)."""
    return Frame(MsgType.ERROR, 0, ErrorPayload.build({"code": code, "message": message})).encode()


async def lying_host(listener: trio.socket.SocketType, message: str) -> None:
    """Accept one guest, answer with the ERROR, then wait for the guest to hang up."""
    sock, _ = await listener.accept()
    with sock:
        await sock.send(raw_error(message))
        with trio.move_on_after(BOUND):
            while await sock.recv(4096):
                pass


async def run_text_case(c: TextCase, tmp: str, n: int) -> CaseResult:
    from virtio_sim.exit_codes import EXIT_FAIL
    from virtio_sim.guest.process import GuestOptions, guest_main
    from virtio_sim.orchestration.cli import print_human
    from virtio_sim.outcome import Outcome
    from virtio_sim.sockets import UnixAddress

    start = time.perf_counter()
    res = CaseResult(c.id, "guest", Verdict.HANDLED)
    path = os.path.join(tmp, f"liar{n}.sock")
    try:
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(path)
        listener.listen(1)  # listening before the guest connects: no readiness race
        with listener:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lying_host, listener, c.message)
                with trio.move_on_after(BOUND) as scope:
                    done = await guest_main(GuestOptions(UnixAddress(path), "rng", handshake_timeout=BOUND))
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            res.verdict, res.detail = Verdict.HANG, f"the guest did not give up within {BOUND:g}s"
            return res
        out = io.StringIO()
        if done.result is not None:
            print_human(done.result, Console(file=out, width=100))
        shown = out.getvalue().replace("\n", "")
        detail = done.result.detail if done.result is not None else ""
        res.policy = "close"
        if done.status != EXIT_FAIL or done.result is None or done.result.outcome is not Outcome.HOST_REFUSED:
            res.verdict = Verdict.FAILURE
            res.detail = f"the guest ended with status {done.status}, {done.result}: {done.message}"
        elif len(detail) > MAX_PEER_TEXT or len(done.message or "") > MAX_PEER_TEXT + 100:
            res.verdict = Verdict.FAILURE
            res.detail = f"the guest kept {len(detail)} characters of the host's message"
        elif c.must_show not in shown or "\x1b" in shown or "\x9b" in shown:
            res.verdict = Verdict.FAILURE
            res.detail = f"the result was not shown literally: {shown[:300]!r}"
    except Exception:  # a MarkupError or anything else escaping the guest is the finding
        res.verdict, res.detail = Verdict.CRASH, traceback.format_exc(limit=-8)
    finally:
        res.seconds = time.perf_counter() - start
    return res


async def run_text_corpus(tmp: str, cases: list[TextCase] | None = None) -> list[CaseResult]:
    return [await run_text_case(c, tmp, n) for n, c in enumerate(TEXT_CASES if cases is None else cases)]


def hostile_guest_error(message: str) -> bytes:
    """For the wire corpus: what a hostile guest sends the host instead of its HELLO."""
    return raw_error(message, ErrorCode.PROTOCOL)
