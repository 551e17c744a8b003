"""Character backends of console ports (QEMU's chardevs): loopback, a file, stdio.

A backend takes what the guest wrote to a port (:meth:`CharBackend.write`) and may hand
the device bytes for the guest through the ``deliver`` callback it was attached with.

* ``loopback``: every byte written comes straight back (an echo chardev).
* ``file:PATH``: output goes to PATH, truncated when the device is created (QEMU's file
  chardev); there is no input.
* ``stdio``: output goes to the host process's stdout; input is read from its stdin by a
  daemon thread and handed to the device inside the trio loop that runs the device
  (``trio.lowlevel.TrioToken.run_sync_soon``), started when the guest first sets
  DRIVER_OK, so that nothing reads stdin for a host that never runs a guest.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

import trio

from virtio_sim.host.devices.base import PropertyError

Deliver = Callable[[bytes], None]


class CharBackend:
    name = "null"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self.bytes_out = 0

    def attach(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def start(self) -> None:
        """The device went live (DRIVER_OK): begin producing input, if any."""

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)

    def close(self) -> None:
        pass


class LoopbackChar(CharBackend):
    name = "loopback"

    def write(self, data: bytes) -> None:
        super().write(data)
        if self._deliver is not None:
            self._deliver(data)


class FileChar(CharBackend):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.name = f"file:{path}"
        try:
            self._f: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise PropertyError(f"Could not open '{path}': {e.strerror}") from None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self._f is not None:
            self._f.write(data)
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class StdioChar(CharBackend):
    name = "stdio"
    READ_CHUNK = 4096

    def __init__(self, out: BinaryIO | None = None, in_fd: int | None = None) -> None:
        super().__init__()
        self.out = out if out is not None else sys.stdout.buffer
        self.in_fd = in_fd if in_fd is not None else sys.stdin.fileno()
        self._reader: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        self.out.write(data)
        self.out.flush()

    def start(self) -> None:
        if self._reader is not None or self._deliver is None:
            return
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return  # not inside a trio run: nobody could take the input
        deliver = self._deliver
        self._reader = threading.Thread(
            target=self._read_loop, args=(token, deliver), name="virtio-sim-stdin", daemon=True
        )
        self._reader.start()

    def _read_loop(self, token: trio.lowlevel.TrioToken, deliver: Deliver) -> None:
        while True:
            try:
                data = os.read(self.in_fd, self.READ_CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                token.run_sync_soon(deliver, data)
            except trio.RunFinishedError:
                return


def chardev_from_spec(spec: str) -> CharBackend:
    """``loopback`` | ``file:PATH`` | ``stdio``."""
    if spec == "loopback":
        return LoopbackChar()
    if spec == "stdio":
        return StdioChar()
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileChar(spec[len("file:") :])
    raise PropertyError(f"chardev '{spec}' is not loopback, file:PATH or stdio")
