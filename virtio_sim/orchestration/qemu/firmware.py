"""Firmware images that do nothing: the CPU halts at its reset vector and stays there.

Debian's QEMU has no qtest accelerator, so a qtest session runs under TCG; a guest CPU
running real firmware would touch the devices we want to drive ourselves (and spin the
host CPU). These images park the CPU instead. They are generated, never shipped.
"""

from __future__ import annotations

from pathlib import Path

# x86: the BIOS image is mapped so that its last 16 bytes hold the reset vector
# (physical 0xFFFFFFF0 = image offset size - 16).
X86_IMAGE_SIZE = 64 << 10
X86_RESET_VECTOR = X86_IMAGE_SIZE - 16
X86_HALT_LOOP = bytes((0xF4, 0xEB, 0xFD))  # hlt; jmp $-1 (back to the hlt)

# aarch64: execution starts at the beginning of flash.
ARM64_IMAGE_SIZE = 4096
ARM64_HALT_LOOP = bytes.fromhex("7f2003d5ffffff17")  # wfi; b .-4 (little-endian words)


def x86_halt_image() -> bytes:
    image = bytearray(X86_IMAGE_SIZE)
    image[X86_RESET_VECTOR : X86_RESET_VECTOR + len(X86_HALT_LOOP)] = X86_HALT_LOOP
    return bytes(image)


def arm64_halt_image() -> bytes:
    return ARM64_HALT_LOOP.ljust(ARM64_IMAGE_SIZE, b"\0")


def write_halt_image(directory: Path, arch: str) -> Path:
    """Write the image for ``arch`` ("x86_64" or "aarch64") and return its path."""
    data = {"x86_64": x86_halt_image, "aarch64": arm64_halt_image}[arch]()
    path = directory / f"halt-{arch}.bin"
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
    return path
