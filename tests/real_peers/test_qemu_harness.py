"""The real-peer harness without QEMU: qtest protocol handling against a scripted peer,
initramfs archives, kernel module resolution, QEMU command lines, missing tools."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
import trio

from virtio_sim.orchestration.embedded import RunConfig
from virtio_sim.orchestration.qemu import kernel, tools
from virtio_sim.orchestration.qemu.firmware import X86_HALT_LOOP, X86_RESET_VECTOR, x86_halt_image
from virtio_sim.orchestration.qemu.initramfs import Entry, init_script, newc_archive, parse_markers
from virtio_sim.orchestration.qemu.machines import machine_args, q35_gsi, qemu_devices
from virtio_sim.orchestration.qemu.qtest import QtestClient, QtestError
from virtio_sim.orchestration.qemu.run import qemu_refusal, run_qemu
from virtio_sim.outcome import Outcome


def scripted_qemu(replies: dict[str, bytes]) -> tuple[QtestClient, threading.Thread, list[str]]:
    """A QtestClient whose peer answers each command line with ``replies[command]``."""
    ours, theirs = socket.socketpair()
    seen: list[str] = []

    def peer() -> None:
        f = theirs.makefile("rb")
        for line in f:
            cmd = line.decode().strip()
            seen.append(cmd)
            reply = replies.get(cmd.split()[0])
            if reply is None:
                break
            theirs.sendall(reply)
        theirs.close()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    return QtestClient(ours, reply_timeout=2), t, seen


def test_irq_lines_that_arrive_with_a_reply_are_delivered_at_once() -> None:
    client, _, _ = scripted_qemu({"writel": b"OK\nIRQ raise 20\n", "readl": b"IRQ lower 20\nOK 0x5\n"})
    got: list[tuple[bool, int]] = []
    client.on_irq = lambda raised, line: got.append((raised, line))
    client.write(0x1000, 4, 1)
    assert got == [(True, 20)]  # not left waiting in the buffer for the next command
    assert client.read(0x1000, 4) == 5
    assert got == [(True, 20), (False, 20)]


def test_qtest_peer_failures_are_errors_not_hangs() -> None:
    client, _, _ = scripted_qemu({"readl": b"FAIL no\n", "readq": b"OK notanumber\n"})
    with pytest.raises(QtestError, match="refused 'readl'"):
        client.read(0, 4)
    with pytest.raises(QtestError, match="where a number belongs"):
        client.read(0, 8)
    client, _, _ = scripted_qemu({"readl": b"IRQ sideways 3\n"})
    with pytest.raises(QtestError, match="malformed IRQ"):
        client.read(0, 4)
    client, _, _ = scripted_qemu({})  # the peer hangs up at the first command
    with pytest.raises(QtestError, match="closed"):
        client.read(0, 4)
    with pytest.raises(QtestError):  # and stays failed
        client.read(0, 4)
    ours, _theirs = socket.socketpair()  # a peer that never answers
    with pytest.raises(QtestError, match="did not answer"):
        QtestClient(ours, reply_timeout=0.2).read(0, 4)


def test_b64_memory_commands() -> None:
    client, _, seen = scripted_qemu({"b64write": b"OK\n", "b64read": b"OK aGVsbG8=\n"})
    client.memwrite(0x10, b"hello")
    assert client.memread(0x10, 5) == b"hello"
    assert seen == ["b64write 0x10 0x5 aGVsbG8=", "b64read 0x10 0x5"]
    with pytest.raises(QtestError, match="returned 5"):
        client.memread(0x10, 6)


def _parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_newc_archive_round_trip() -> None:
    data = newc_archive([Entry("bin", stat.S_IFDIR | 0o755), Entry("bin/x", stat.S_IFREG | 0o755, b"abcde")])
    assert len(data) % 512 == 0
    files = _parse_newc(data)
    assert files["bin/x"] == (stat.S_IFREG | 0o755, b"abcde")
    assert stat.S_ISDIR(files["bin"][0])


def test_init_script_and_markers() -> None:
    script = init_script(["virtio_ring", "virtio"], ['mark hello "world"'])
    assert script.startswith("#!/bin/busybox sh\n") and "poweroff -f" in script
    assert script.index("virtio_ring virtio") < script.index("mark hello")
    log = "[    1.0] noise\nVSIM:booted:6.1\nxxVSIM:rng:00ff\nVSIM:end:done\nVSIM:broken"
    assert parse_markers(log) == [("booted", "6.1"), ("rng", "00ff"), ("end", "done")]


def test_halt_firmware_parks_the_cpu_at_the_reset_vector() -> None:
    image = x86_halt_image()
    assert len(image) == 64 << 10
    assert image[X86_RESET_VECTOR : X86_RESET_VECTOR + 3] == X86_HALT_LOOP
    assert image.count(0) == len(image) - len(X86_HALT_LOOP)


def test_kernel_modules_resolve_dependencies_first(tmp_path: Path) -> None:
    mods = tmp_path / "kernel" / "drivers"
    mods.mkdir(parents=True)
    for name, deps in (("virtio_ring", ""), ("virtio", "virtio_ring"), ("virtio-rng", "virtio,virtio_ring")):
        (mods / f"{name}.ko").write_bytes(
            b"\x7fELF junk\0name=" + name.replace("-", "_").encode() + b"\0depends=" + deps.encode() + b"\0"
        )
    order = kernel.resolve_modules(tmp_path / "kernel", ("virtio_rng",))
    assert [n for n, _ in order] == ["virtio_ring", "virtio", "virtio_rng"]
    with pytest.raises(kernel.KernelFetchError, match="not in the kernel package"):
        kernel.resolve_modules(tmp_path / "kernel", ("virtio_blk",))


def test_static_busybox_check(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(b"#!/bin/sh\n")
    assert not tools.is_static_elf(str(fake))
    assert not tools.is_static_elf("/bin/sh")  # dynamically linked on Debian


def test_qemu_device_arguments(tmp_path: Path) -> None:
    devs = qemu_devices(
        ["virtio-rng-device,x-seed=1", "virtio-blk-device,serial=a,,b"], "pci-modern", tmp_path
    )
    assert devs.names == ["virtio-rng-pci", "virtio-blk-pci"]
    assert "virtio-rng-pci,disable-legacy=on,disable-modern=off" in devs.args
    drive = next(a for a in devs.args if a.startswith("file="))
    assert drive.endswith(",format=raw,if=none,id=drive1") and os.path.exists(devs.disks[0])
    assert "virtio-blk-pci,serial=a,,b,disable-legacy=on,disable-modern=off,drive=drive1" in devs.args
    assert devs.notes == ["virtio-rng-pci: x-seed=1 is ours, not QEMU's (QEMU ran without it)"]
    assert machine_args("mmio-v1", 64 << 20)[-2:] == ["-global", "virtio-mmio.force-legacy=on"]


def test_q35_interrupt_routing_rule() -> None:
    assert q35_gsi(4, 1) == 20 and q35_gsi(4, 2) == 21 and q35_gsi(7, 1) == 23 and q35_gsi(8, 1) == 20
    assert q35_gsi(3, 0) is None  # no interrupt pin


def test_qemu_refusal_text() -> None:
    err = "qemu-system-x86_64: -device virtio-rng-pci,iommu_platform=on: VIRTIO_F_IOMMU_PLATFORM was not ok\n"
    assert qemu_refusal(err) == "VIRTIO_F_IOMMU_PLATFORM was not ok"
    assert qemu_refusal("qemu-system-x86_64: Property 'x.y' not found") == "Property 'x.y' not found"
    assert qemu_refusal("nothing") == ""


def test_without_qemu_a_run_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    r = trio.run(run_qemu, RunConfig(device="virtio-rng-device", workload="rng"))
    assert r.outcome is Outcome.HOST_REFUSED
    assert tools.QEMU_INSTALL_HINT in r.detail
