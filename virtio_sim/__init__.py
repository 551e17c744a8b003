"""virtio-sim: a virtio feature-negotiation and vring emulator."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("virtio-sim")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
