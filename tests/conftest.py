"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtio_sim.memory import GuestMemory


@pytest.fixture
def guest_memory():  # type: ignore[no-untyped-def]
    mem = GuestMemory.create(16 << 20)
    yield mem
    mem.close()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 1 MiB raw disk image filled with a known pattern (sector n starts with n)."""
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        for n in range(2048):
            f.write(n.to_bytes(4, "little") + bytes(508))
    os.sync()
    return path
