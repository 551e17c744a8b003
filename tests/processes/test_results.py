"""Host and guest as separate processes give the same results as the embedded mode.

Over a Unix socket guest RAM is the host's memfd, passed with SCM_RIGHTS and mapped by
both; over TCP the guest keeps its RAM and the host reaches it with DMA messages. Either
way the run's JSON result is byte-for-byte the embedded one, the seeded rng bytes are
identical, and a blk run leaves the very same disk image.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
import trio

from tests.support.processes import host, run_guest, spawn
from virtio_sim.guest.profile import guest_policy
from virtio_sim.guest.workloads import blk_pattern_seed
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.orchestration.processes import ProcessRun, run_processes
from virtio_sim.profiles import load_driver_profile

SECTOR = 512


async def _cli_json(*args: str, timeout: float = 60) -> tuple[int, dict[str, object], str]:
    async with spawn(*args, name="virtio-sim") as p:
        rc = await p.exit(timeout)
    record = json.loads(p.stdout)
    record.pop("seconds")  # wall-clock time: two equal runs differ in it
    record.pop("device_option")  # the --device given, echoed (each mode gets its own disk path)
    return rc, record, p.stderr


@pytest.mark.parametrize("link", ["unix", "tcp"])
async def test_run_processes_rng_matches_embedded(link: str) -> None:
    with trio.fail_after(60):
        common = ("run", "--device", "virtio-rng-device", "--workload", "rng", "--json")
        rc_e, embedded, _ = await _cli_json(*common, "--seed", "42")
        rc_p, procs, err = await _cli_json(*common, "--seed", "42", "--processes", "--link", link)
    assert rc_e == 0 and rc_p == 0, err
    assert procs == embedded
    workload = procs["evidence"]
    assert isinstance(workload, dict)
    assert workload["verified_stream"] is True  # every byte checked against the seed
    assert len(str(workload["sha256"])) == 64


@pytest.mark.parametrize("link", ["unix", "tcp"])
async def test_run_processes_blk_leaves_the_same_disk(tmp_path: Path, link: str) -> None:
    disks = {}
    results = {}
    with trio.fail_after(60):
        for mode in ("embedded", link):
            disk = tmp_path / f"{mode}.img"
            disk.write_bytes(bytes(1 << 20))
            extra = () if mode == "embedded" else ("--processes", "--link", link)
            rc, results[mode], err = await _cli_json(
                "run", "--device", f"virtio-blk-device,drive={disk}", "--workload", "blk-rw",
                "--json", "--seed", "7", *extra,
            )  # fmt: skip
            assert rc == 0, err
            disks[mode] = disk.read_bytes()
    assert results[link] == results["embedded"]
    assert disks[link] == disks["embedded"]
    # ... and that image holds what the workload wrote, recomputed independently.
    rnd = random.Random(blk_pattern_seed(7))
    plan = results[link]["evidence"]["plan"]  # type: ignore[index]
    assert plan
    for start, count in plan:
        assert disks[link][start * SECTOR : (start + count) * SECTOR] == rnd.randbytes(count * SECTOR)


@pytest.mark.parametrize(
    "transport, link",
    [("pci-modern", "unix"), ("pci-transitional", "tcp"), ("pci-legacy", "unix")],
)
async def test_pci_transports_over_processes_match_embedded(
    tmp_path: Path, transport: str, link: str
) -> None:
    """The q35 host process serves virtio-pci (PIO config cycles, MSI-X or INTx) as the
    embedded mode does; the legacy path is the transitional device with force_legacy."""
    disks, results = {}, {}
    with trio.fail_after(90):
        for mode in ("embedded", link):
            disk = tmp_path / f"{mode}.img"
            disk.write_bytes(bytes(1 << 20))
            extra = () if mode == "embedded" else ("--processes", "--link", link)
            rc, results[mode], err = await _cli_json(
                "run", "--device", f"virtio-blk-device,drive={disk}", "--workload", "blk-rw",
                "--transport", transport, "--json", "--seed", "3", *extra,
            )  # fmt: skip
            assert rc == 0, err
            disks[mode] = disk.read_bytes()
    assert results[link] == results["embedded"]
    assert results[link]["transport"] == transport
    assert disks[link] == disks["embedded"]


async def test_run_processes_refusal_matches_embedded(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.img")
    refused = ("run", "--device", f"virtio-blk-device,drive={missing}", "--workload", "blk-rw", "--json")
    with trio.fail_after(60):
        rc_e, embedded, _ = await _cli_json(*refused)
        rc_p, procs, _ = await _cli_json(*refused, "--processes")
    assert rc_e == rc_p == 1
    assert procs == embedded
    assert procs["outcome"] == "HOST_REFUSED"
    assert "Could not open" in str(procs["detail"])


BLK = "virtio-blk-device,event_idx=on,indirect_desc=on,x-validate-access-platform=on"
# Cells whose outcome rests on something the processes must carry across: the guest's byte
# order (legacy big-endian), ciphertext in private pages, IOMMU faults and bypass counts,
# a switch between two NICs of one machine, a console backend. (QEMU's virtio-iommu needs a
# PCI bus, so the IOMMU cells are on pci-modern.)
CELLS = {
    "big-endian legacy": ("virtio-rng-device", "rng", "mmio-v1", "linux-3.18-ppc64be", "none", "OK"),
    "private memory seen as ciphertext": (
        f"{BLK},x-dma=honor", "blk-rw", "mmio-v2", "linux-5.4-sev", "none", "HANG",
    ),
    "IOMMU fault": (
        f"{BLK},x-dma=translate-always", "blk-rw", "pci-modern", "linux-6.1", "virtio-iommu", "DMA_FAULT",
    ),
    "IOMMU bypassed": (
        f"{BLK},x-dma=honor", "blk-rw", "pci-modern", "linux-6.1", "virtio-iommu", "OK_NO_ISOLATION",
    ),
    "IOMMU translated": (
        f"{BLK},iommu_platform=on,x-dma=honor", "blk-rw", "pci-modern", "linux-6.1", "virtio-iommu", "OK",
    ),
    "two NICs on a switch": (
        "virtio-net-device,x-backend=switch:lan", "net-pair", "mmio-v2", None, "none", "OK",
    ),
    "console": ("virtio-serial-device", "console-echo", "mmio-v2", None, "none", "OK"),
}  # fmt: skip


HANG_AFTER = 5.0  # seconds: the run timeout that reports the ciphertext cell's wait as HANG
BACKSTOP = 60.0  # seconds: the run timeout of cells that end by themselves


@pytest.mark.parametrize("cell", list(CELLS))
async def test_matrix_cells_match_embedded_over_both_links(cell: str) -> None:
    device, workload, transport, driver, iommu, expected = CELLS[cell]
    # The run timeout is what turns the ciphertext cell's wait into HANG; for every other
    # cell it is only a backstop, which a loaded machine must not reach (over TCP every
    # guest RAM access is a message: net-pair there is seconds of wall time under load).
    timeout = HANG_AFTER if expected == "HANG" else BACKSTOP
    cfg = RunConfig(
        device=device, workload=workload, transport=transport, seed=3, timeout=timeout, iommu=iommu
    )
    if workload == "net-pair":
        cfg.extra_devices = [device]
    if driver is not None:
        cfg.guest = guest_policy(load_driver_profile(driver))
    with trio.fail_after(3 * BACKSTOP):
        embedded = _plain((await run_embedded(cfg)).to_json())
        runs: dict[str, ProcessRun] = {}

        async def run(link: str) -> None:
            runs[link] = await run_processes(cfg, link, driver)

        async with trio.open_nursery() as n:
            n.start_soon(run, "unix")
            n.start_soon(run, "tcp")
    assert embedded["outcome"] == expected, embedded["detail"]
    for link, done in runs.items():
        assert done.result is not None, (link, done.message, done.host_stderr, done.guest_stderr)
        assert _same_evidence(_plain(done.result.to_json())) == _same_evidence(embedded), link


def _same_evidence(d: dict[str, object]) -> dict[str, object]:
    """The result without the IOTLB hit count, which depends on the data path: a host on
    shared memory reaches ring memory through leases (no translation per access), a host
    on DMA messages translates each access. Page walks (misses), faults and everything
    else must still be equal."""
    iommu = d.get("iommu")
    if isinstance(iommu, dict) and "iotlb_hits" in iommu:
        d = {**d, "iommu": {k: v for k, v in iommu.items() if k != "iotlb_hits"}}
    # How many ring reads bypassed the IOMMU depends on how often the device polled the
    # avail ring, i.e. on how kicks and service interleave across processes; that some did
    # (and the outcome) is the evidence both links must agree on.
    iommu = d.get("iommu")
    if isinstance(iommu, dict) and isinstance(iommu.get("unisolated_accesses"), int):
        d = {**d, "iommu": {**iommu, "unisolated_accesses": iommu["unisolated_accesses"] > 0}}
    if isinstance(d.get("detail"), str):
        d = {**d, "detail": re.sub(r"\d+ DMA accesses bypassed", "N DMA accesses bypassed", str(d["detail"]))}
    return d


def _plain(d: dict[str, object]) -> dict[str, object]:
    """As JSON carries it (tuples become lists)."""
    result: dict[str, object] = json.loads(json.dumps(d))
    return result


@pytest.mark.parametrize(
    "listen, memory, expect",
    [("unix:", "auto", "shared"), ("unix:", "dma", "dma"), ("tcp:127.0.0.1:0", "auto", "dma")],
)
async def test_host_and_guest_commands_use_the_announced_memory_path(
    tmp_path: Path, listen: str, memory: str, expect: str
) -> None:
    """The standalone commands: the host reports how guest RAM travelled, and DMA traffic
    exists exactly when RAM is not shared."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    with trio.fail_after(60):
        async with host(
            "--listen", listen, "-device", "virtio-rng-device", "--seed", "9",
            "--memory", memory, "--secret-file", str(secret),
        ) as h:  # fmt: skip
            g = await run_guest(
                h.address, "--workload", "rng", "--seed", "9", "--json",
                "--secret-file", str(secret),
            )  # fmt: skip
            assert g.proc.returncode == 0, g.stderr
            ended = await h.event("guest-ended")
    result = g.json_result()
    assert result["outcome"] == "OK"
    assert result["workload"]["verified_stream"] is True
    assert ended["end"] == "clean" and ended["memory"] == expect
    assert ended["evidence"]["devices"][0]["violations"] == []
    if expect == "dma":
        dma = ended["dma"]
        assert dma["reads"] > 0 and dma["writes"] > 0
        # Every entropy byte reached the guest as a DMA_WRITE.
        assert dma["bytes_written"] >= result["workload"]["bytes"]
    else:
        assert "dma" not in ended
