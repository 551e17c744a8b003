"""QEMU under the qtest protocol: spawn it, talk to it, take it down.

Debian's QEMU has no qtest accelerator, so the machine runs under TCG with a firmware
image that halts the CPU (:mod:`virtio_sim.orchestration.qemu.firmware`), and ``-qtest unix:PATH``
makes QEMU connect to a socket we listen on. The protocol is text, one command per line
(``readl ADDR``, ``writeq ADDR V``, ``outl PORT V``, ``b64read ADDR LEN``, ...), one reply
per command starting with ``OK`` (or ``FAIL``/``ERR``); lines starting with ``IRQ``
(``IRQ raise N`` / ``IRQ lower N``, after ``irq_intercept_in``) arrive whenever an
intercepted interrupt line changes, also in between replies.

:class:`QtestClient` is deliberately synchronous: a command is a ~30 us round trip, and
guest memory reads in the ring code are synchronous calls. IRQ lines found while waiting
for a reply, or by :meth:`QtestClient.poll` when the socket turns readable between
commands, go to ``on_irq``. A QEMU that does not answer within ``reply_timeout`` or goes
away is a :class:`QtestError`, never a hang.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtio_sim.orchestration.qemu.firmware import write_halt_image

REPLY_TIMEOUT = 10.0  # seconds for one command's reply
CONNECT_TIMEOUT = 10.0  # seconds for QEMU to start and connect
RECV_CHUNK = 1 << 16
ACCESS_SUFFIX = {1: "b", 2: "w", 4: "l", 8: "q"}
PIO_SUFFIX = {1: "b", 2: "w", 4: "l"}


class QtestError(Exception):
    """QEMU refused a command, broke the protocol, or is gone."""


class QtestClient:
    """The qtest text protocol over a connected socket."""

    def __init__(self, sock: socket.socket, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.sock = sock
        self.sock.settimeout(reply_timeout)
        self._buf = b""
        self.on_irq: Callable[[bool, int], None] = lambda raised, line: None
        self.closed: str | None = None
        self.commands = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- lines ---------------------------------------------------------------------------

    def _take_line(self) -> str | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            return None
        line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
        return line.decode(errors="replace").strip()

    def _irq_line(self, line: str) -> bool:
        """Handle an asynchronous IRQ line; False if ``line`` is something else."""
        if not line.startswith("IRQ"):
            return False
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("raise", "lower") and parts[2].isdigit():
            self.on_irq(parts[1] == "raise", int(parts[2]))
            return True
        raise self._fail(f"malformed IRQ line from QEMU: {line!r}")

    def _fail(self, why: str) -> QtestError:
        if self.closed is None:
            self.closed = why
        return QtestError(why)

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(RECV_CHUNK)
        except BlockingIOError:
            raise
        except TimeoutError:
            raise self._fail("QEMU did not answer in time") from None
        except OSError as e:
            raise self._fail(f"qtest connection lost: {e.strerror or e}") from None
        if not data:
            raise self._fail("QEMU closed the qtest connection")
        return data

    def poll(self) -> None:
        """Deliver IRQ lines that arrived between commands (never blocks)."""
        if self.closed:
            raise QtestError(self.closed)
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)  # a socket timeout would make recv wait, whatever the flags
        try:
            while True:
                try:
                    self._buf += self._recv()
                except BlockingIOError:
                    break
        finally:
            self.sock.settimeout(timeout)
        self._drain_irqs()

    def _drain_irqs(self) -> None:
        while (line := self._take_line()) is not None:
            if not self._irq_line(line):
                raise self._fail(f"unexpected line from QEMU outside a command: {line!r}")

    # -- commands ------------------------------------------------------------------------

    def command(self, text: str) -> str:
        """Send one command, return what follows ``OK`` in its reply."""
        if self.closed:
            raise QtestError(self.closed)
        try:
            self.sock.sendall(text.encode() + b"\n")
        except OSError as e:
            raise self._fail(f"qtest connection lost: {e.strerror or e}") from None
        self.commands += 1
        while True:
            line = self._take_line()
            if line is None:
                self._buf += self._recv()
                continue
            if self._irq_line(line):
                continue
            # Whatever came in after the reply can only be IRQ lines: deliver them now,
            # or they would wait in the buffer for the next command.
            self._drain_irqs()
            head, _, rest = line.partition(" ")
            if head == "OK":
                return rest
            raise QtestError(f"QEMU refused {text.split()[0]!r}: {line}")

    def _value(self, reply: str) -> int:
        try:
            return int(reply, 0)
        except ValueError:
            raise self._fail(f"QEMU replied {reply!r} where a number belongs") from None

    def read(self, addr: int, size: int) -> int:
        return self._value(self.command(f"read{ACCESS_SUFFIX[size]} {addr:#x}"))

    def write(self, addr: int, size: int, value: int) -> None:
        self.command(f"write{ACCESS_SUFFIX[size]} {addr:#x} {value:#x}")

    def pio_read(self, port: int, size: int) -> int:
        return self._value(self.command(f"in{PIO_SUFFIX[size]} {port:#x}"))

    def pio_write(self, port: int, size: int, value: int) -> None:
        self.command(f"out{PIO_SUFFIX[size]} {port:#x} {value:#x}")

    def memread(self, addr: int, length: int) -> bytes:
        if length == 0:
            return b""
        reply = self.command(f"b64read {addr:#x} {length:#x}")
        try:
            data = base64.b64decode(reply, validate=True)
        except ValueError:
            raise self._fail("QEMU sent bad base64 for b64read") from None
        if len(data) != length:
            raise self._fail(f"b64read of {length} bytes returned {len(data)}")
        return data

    def memwrite(self, addr: int, data: bytes) -> None:
        if data:
            self.command(f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}")

    def intercept_irqs(self, device: str) -> None:
        self.command(f"irq_intercept_in {device}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --------------------------------------------------------------------------- the process


@dataclass
class QemuQtest:
    """One QEMU process under qtest."""

    process: subprocess.Popen[bytes]
    client: QtestClient
    workdir: Path
    stderr_path: Path
    command: list[str] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> str:
        """Stop QEMU (it has nothing to save); returns its stderr.

        QEMU goes first: closing the qtest socket under a running QEMU makes it print a
        GLib assertion (its qtest log timer) that would read like a device message.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        text = self.stderr()
        if self._tmp is not None:
            self._tmp.cleanup()
        return text


def spawn_qtest(
    qemu: str,
    arch: str,
    args: list[str],
    *,
    workdir: Path | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    reply_timeout: float = REPLY_TIMEOUT,
) -> QemuQtest:
    """Start ``qemu`` with a halting firmware and ``args``; returns once qtest is connected."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="virtio-sim-qtest-")
        workdir = Path(tmp.name)
    firmware = write_halt_image(workdir, arch)
    sock_path = str(workdir / f"qtest-{os.getpid()}-{time.monotonic_ns()}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stderr_path = workdir / "qemu-stderr.log"
    try:
        listener.bind(sock_path)
        listener.listen(1)
        listener.settimeout(0.05)
        cmd = [
            qemu, "-accel", "tcg", "-bios", str(firmware), "-display", "none", "-nodefaults",
            "-qtest", f"unix:{sock_path}", "-qtest-log", "/dev/null", *args,
        ]  # fmt: skip
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                conn, _ = listener.accept()
                break
            except TimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                    text = stderr_path.read_text(errors="replace").strip()
                    if tmp is not None:
                        tmp.cleanup()
                    raise QtestError(f"QEMU did not start: {text or 'no qtest connection'}") from None
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(sock_path)
    return QemuQtest(proc, QtestClient(conn, reply_timeout), workdir, stderr_path, cmd, tmp)
