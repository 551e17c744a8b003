"""The emulated IOMMU: request semantics, translation, isolation, faults, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.mmio_bench import make_bench
from virtio_sim.dma import DmaError, TranslatedAddressSpace
from virtio_sim.guest.platform import GuestPolicy
from virtio_sim.guest.profile import guest_policy
from virtio_sim.host.devices.iommu import IommuDevice
from virtio_sim.host.iommu import EndpointTranslator, Iommu
from virtio_sim.layouts import IOMMU_BODIES, IommuFault, IommuReqHead
from virtio_sim.memory import GuestMemory
from virtio_sim.orchestration.embedded import RunConfig, run_embedded
from virtio_sim.outcome import Outcome
from virtio_sim.profiles import load_driver_profile
from virtio_sim.spec import IOMMU_F, IOMMU_FAULT_R, IOMMU_MAP_F, IOMMU_S, IOMMU_T

RW = IOMMU_MAP_F.READ | IOMMU_MAP_F.WRITE
G = 4096


# --------------------------------------------------------------------------- Iommu state


def test_unmap_never_splits_and_partial_ranges_remove_whole_mappings() -> None:
    i = Iommu({1})
    assert i.attach(7, 1, bypass=False) == IOMMU_S.OK
    assert i.map(7, 0x10000, 0x1FFFF, 0x100000, RW) == IOMMU_S.OK
    assert i.map(7, 0x30000, 0x30FFF, 0x200000, RW) == IOMMU_S.OK
    assert i.unmap(7, 0x10000, 0x10FFF) == IOMMU_S.RANGE  # would split
    assert i.translate(1, 0x10000, 4, False) == [(0x100000, 4)]  # nothing removed
    assert i.unmap(7, 0, 0x2FFFF) == IOMMU_S.OK  # covers a hole and one whole mapping
    with pytest.raises(Exception, match="no mapping"):
        i.translate(1, 0x10000, 4, False)
    assert i.translate(1, 0x30010, 4, False) == [(0x200010, 4)]


def test_map_errors() -> None:
    i = Iommu({1})
    i.attach(1, 1, bypass=False)
    assert i.map(1, 0, G - 1, 0, RW) == IOMMU_S.OK
    assert i.map(1, 0, 2 * G - 1, 0x5000, RW) == IOMMU_S.INVAL  # overlap
    assert i.map(1, 0x10001, 0x11FFF, 0, RW) == IOMMU_S.RANGE  # unaligned
    assert i.map(1, 0x20000, 0x1FFFF, 0, RW) == IOMMU_S.RANGE  # end before start
    assert i.map(99, 0x20000, 0x20FFF, 0, RW) == IOMMU_S.NOENT  # no domain
    assert i.map(1, 0x20000, 0x20FFF, 0, 0x80) == IOMMU_S.INVAL  # unknown flag
    i.attach(2, 1, bypass=False)  # moves the endpoint; domain 1 is freed
    assert i.map(1, 0x20000, 0x20FFF, 0, RW) == IOMMU_S.NOENT


def test_permissions_and_bypass() -> None:
    i = Iommu({1, 2}, bypass=False)
    i.attach(1, 1, bypass=False)
    i.map(1, 0, G - 1, 0x8000, IOMMU_MAP_F.READ)
    assert i.translate(1, 8, 8, write=False) == [(0x8008, 8)]
    with pytest.raises(Exception, match="no permission"):
        i.translate(1, 8, 8, write=True)
    with pytest.raises(Exception, match="not attached"):
        i.translate(2, 0, 4, write=False)  # unattached, global bypass off: isolated
    i.bypass = True
    assert i.translate(2, 0x1234, 4, write=True) == [(0x1234, 4)]
    i.attach(3, 2, bypass=True)
    assert i.map(3, 0, G - 1, 0, RW) == IOMMU_S.INVAL  # no MAP into a bypass domain
    assert i.attach(3, 1, bypass=False) == IOMMU_S.INVAL  # bypass flag mismatch
    assert [f.reason for f in i.faults] == [IOMMU_FAULT_R.MAPPING, IOMMU_FAULT_R.DOMAIN]


def test_iotlb_is_invalidated_by_unmap() -> None:
    i = Iommu({1}, bypass=False)
    i.attach(1, 1, bypass=False)
    i.map(1, 0, G - 1, 0x8000, RW)
    i.translate(1, 0, 4, False)
    i.translate(1, 4, 4, False)
    assert i.iotlb_hits == 1
    i.unmap(1, 0, G - 1)
    with pytest.raises(Exception, match="no mapping"):
        i.translate(1, 0, 4, False)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("map"),
            st.integers(0, 15),
            st.integers(1, 4),
            st.integers(0, 31),
            st.sampled_from([1, 2, 3]),
        ),
        st.tuples(st.just("unmap"), st.integers(0, 15), st.integers(1, 6)),
        st.tuples(st.just("attach"), st.integers(1, 3)),
        st.tuples(st.just("detach"), st.integers(1, 3)),
        st.tuples(st.just("access"), st.integers(0, 20 * G), st.integers(1, 3 * G), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_programming_never_lets_a_device_outside_live_mappings(program: list[tuple]) -> None:  # type: ignore[type-arg]
    """Model check: every byte a translated access reaches is covered by a live mapping
    of the endpoint's current domain with the needed permission, at the right offset."""
    ram = 64 * G
    memory = GuestMemory.create(ram)
    try:
        iommu = Iommu({1}, bypass=False)
        space = TranslatedAddressSpace(memory, EndpointTranslator(iommu, 1))
        model: dict[int, dict[int, tuple[int, int]]] = {}  # domain -> {iova page: (phys page, flags)}
        current: int | None = None
        for op in program:
            if op[0] == "map" and current is not None:
                _, vpage, npages, ppage, flags = op
                status = iommu.map(current, vpage * G, (vpage + npages) * G - 1, ppage * G, flags)
                if status == IOMMU_S.OK:
                    for k in range(npages):
                        model[current][vpage + k] = (ppage + k, flags)
            elif op[0] == "unmap" and current is not None:
                _, vpage, npages = op
                if iommu.unmap(current, vpage * G, (vpage + npages) * G - 1) == IOMMU_S.OK:
                    dom = iommu.domains[current]
                    live = {(m.virt_start // G + k) for m in dom.mappings.values()
                            for k in range((m.virt_end + 1 - m.virt_start) // G)}  # fmt: skip
                    model[current] = {p: v for p, v in model[current].items() if p in live}
            elif op[0] == "attach":
                iommu.attach(op[1], 1, bypass=False)
                if current is not None and current != op[1] and not iommu.domains.get(current):
                    model.pop(current, None)
                current = op[1]
                model.setdefault(current, {})
            elif op[0] == "detach" and current is not None:
                if iommu.detach(current, 1) == IOMMU_S.OK:
                    model.pop(current, None)
                    current = None
            elif op[0] == "access":
                _, addr, length, write = op
                need = IOMMU_MAP_F.WRITE if write else IOMMU_MAP_F.READ
                pages = range(addr // G, (addr + length - 1) // G + 1)
                allowed = current is not None and all(
                    p in model[current] and model[current][p][1] & need for p in pages
                )
                in_ram = allowed and all(model[current][p][0] < ram // G for p in pages)  # type: ignore[index]
                try:
                    if write:
                        space.write(addr, b"\xab" * length)
                    else:
                        space.read(addr, length)
                    ok = True
                except DmaError:
                    ok = False
                assert ok == (allowed and in_ram), (op, current, model.get(current or -1))
    finally:
        memory.close()


# --------------------------------------------------------------------------- device model


def _req(bench, q, name: str, fields: dict, writable: int = 4):  # type: ignore[no-untyped-def]
    raw = IommuReqHead.build({"type": getattr(IOMMU_T, name), "reserved": b"\x01\x02\x03"})
    raw += IOMMU_BODIES[name].build(fields)
    buf = bench.dma.alloc(len(raw) + writable)
    bench.memory.write(buf.gpa, raw + b"\xee" * writable)
    q.add([(buf.gpa, len(raw))], [(buf.gpa + len(raw), writable)], name, use_indirect=False)
    bench.w("QueueNotify", 0)
    _, used = q.get_used()
    return used, bench.memory.read(buf.gpa + len(raw), writable)


def test_device_requests_and_fault_event() -> None:
    iommu = Iommu({5}, bypass=True)
    b = make_bench(IommuDevice(iommu))
    b.negotiate()
    reqq = b.setup_queue(0, 16)
    evq = b.setup_queue(1, 16)
    b.driver_ok()
    ev = b.dma.alloc(IommuFault.sizeof())
    evq.add([], [(ev.gpa, IommuFault.sizeof())], "ev")
    b.w("QueueNotify", 1)
    used, tail = _req(b, reqq, "ATTACH", {"domain": 1, "endpoint": 5, "flags": 0, "reserved": bytes(4)})
    assert used == 4 and tail == bytes(4)  # OK and tail.reserved zeroed; head.reserved ignored
    used, tail = _req(b, reqq, "ATTACH", {"domain": 1, "endpoint": 9, "flags": 0, "reserved": bytes(4)})
    assert tail[0] == IOMMU_S.NOENT
    used, tail = _req(
        b, reqq, "ATTACH", {"domain": 1, "endpoint": 5, "flags": 0, "reserved": b"\x01" + bytes(3)}
    )
    assert tail[0] == IOMMU_S.INVAL
    used, tail = _req(
        b, reqq, "MAP", {"domain": 1, "virt_start": 0, "virt_end": G - 1, "phys_start": 0x10000, "flags": RW}
    )
    assert tail[0] == IOMMU_S.OK
    used, tail = _req(b, reqq, "PROBE", {"endpoint": 5, "reserved": bytes(64)}, writable=512 + 4)
    assert used == 516 and tail[516 - 4] == IOMMU_S.OK
    assert int.from_bytes(tail[0:2], "little") & 0xFFF == 1  # RESV_MEM property first
    # A device access outside the mapping: fault event delivered, nothing written.
    before = b.memory.read(0x20000, 16)
    with pytest.raises(DmaError):
        TranslatedAddressSpace(b.memory, EndpointTranslator(iommu, 5)).write(G, b"x" * 16)
    assert b.memory.read(0x20000, 16) == before
    tok, n = evq.get_used()
    assert tok == "ev" and n == IommuFault.sizeof()
    fault = IommuFault.parse(b.memory.read(ev.gpa, n))
    assert (fault.reason, fault.endpoint, fault.address) == (IOMMU_FAULT_R.MAPPING, 5, G)
    # Reset: nothing stays attached.
    b.w("Status", 0)
    assert iommu.attached == {}


def test_unparsable_request_is_returned_unwritten() -> None:
    b = make_bench(IommuDevice(Iommu({1})))
    b.negotiate()
    q = b.setup_queue(0, 8)
    b.driver_ok()
    buf = b.dma.alloc(16)
    b.memory.write(buf.gpa, b"\x03\x00\x00\x00" + b"\xee" * 4)  # MAP head, then only a tail
    q.add([(buf.gpa, 4)], [(buf.gpa + 4, 4)], "short", use_indirect=False)
    b.w("QueueNotify", 0)
    assert q.get_used() == ("short", 0)
    assert b.memory.read(buf.gpa + 4, 4) == b"\xee" * 4


def test_device_offers_map_unmap_and_bypass_config() -> None:
    dev = IommuDevice(Iommu({1}))
    f = dev.device_features()
    assert f >> IOMMU_F.MAP_UNMAP & 1 and f >> IOMMU_F.BYPASS_CONFIG & 1
    assert not f >> IOMMU_F.BYPASS & 1


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("transport", ["mmio-v2", "pci-modern"])
@pytest.mark.parametrize("device, workload", [("virtio-blk-device", "blk-rw"), ("virtio-rng-device", "rng")])
def test_iova_translated_dma_end_to_end(device: str, workload: str, transport: str) -> None:
    cfg = RunConfig(
        device=f"{device},iommu_platform=on",
        workload=workload,
        transport=transport,
        iommu="virtio-iommu",
        # QEMU never puts virtio-mmio behind its IOMMU; the spec (and our VIOT) allow it
        iommu_topology="spec" if transport.startswith("mmio") else "qemu",
        guest=guest_policy(load_driver_profile("linux-6.1")),
    )
    r = trio.run(run_embedded, cfg)
    assert r.outcome is Outcome.OK, r.detail
    assert r.transport == transport
    assert "VIRTIO_F_ACCESS_PLATFORM" in r.negotiated
    assert r.iommu["fault_count"] == 0
    assert r.iommu["iotlb_misses"] > 0  # DMA really went through translation
    assert r.iommu["unisolated_accesses"] == 0


@pytest.mark.parametrize(
    "props, driver, outcome",
    [
        ("iommu_platform=on", "linux-6.1", Outcome.OK),
        ("", "linux-6.1", Outcome.OK_NO_ISOLATION),  # QEMU without iommu_platform bypasses
        ("x-dma=translate-always", "linux-6.1", Outcome.DMA_FAULT),  # translates without the bit
        # IOVAs used as GPAs: below 4 GiB on q35 (PCI), at the 64-bit mask's top (mmio) there is
        # no RAM; the device stops with NEEDS_RESET, which Linux ignores (docs/dma.md)
        ("iommu_platform=on,x-dma=bypass", "linux-6.1", Outcome.HANG),
        ("iommu_platform=on", "linux-4.0", Outcome.FAILED_CLEAN),  # old driver does not ack bit 33
        ("iommu_platform=on", "linux-4.8", Outcome.OK),  # knows the bit, no virtio-iommu driver
    ],
)
@pytest.mark.parametrize("transport", ["mmio-v2", "pci-modern"])
def test_lying_devices_and_old_drivers_land_in_the_right_class(
    props: str, driver: str, outcome: Outcome, transport: str
) -> None:
    dev = "virtio-blk-device" + ("," + props if props else "")
    cfg = RunConfig(
        device=dev,
        workload="blk-rw",
        transport=transport,
        iommu="virtio-iommu",
        iommu_topology="spec" if transport.startswith("mmio") else "qemu",
        guest=guest_policy(load_driver_profile(driver)),
    )
    r = trio.run(run_embedded, cfg)
    assert r.outcome is outcome, r.detail
    if outcome is Outcome.DMA_FAULT:
        assert r.iommu["fault_count"] >= 1 and r.iommu["faults"]
    if outcome is Outcome.OK_NO_ISOLATION:
        assert r.iommu["unisolated_accesses"] > 0


def test_run_cli_with_iommu(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))  # the command line needs drive=, as QEMU does
    device = f"virtio-blk-pci,drive={disk},iommu_platform=on"
    p = subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "run", "--device", device,
         "--transport", "pci-modern", "--workload", "blk-rw", "--iommu", "virtio-iommu", "--driver",
         "linux-6.1", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    r = json.loads(p.stdout)
    assert r["outcome"] == "OK" and r["iommu_evidence"]["iotlb_misses"] > 0


def test_default_policy_still_works_without_iommu() -> None:
    r = trio.run(run_embedded, RunConfig(device="virtio-rng-device", workload="rng", guest=GuestPolicy()))
    assert r.outcome is Outcome.OK and r.iommu == {}


def test_pci_endpoints_are_requester_ids(tmp_path: Path) -> None:
    from virtio_sim.host.build import HostConfig, build_host

    setup = build_host(HostConfig(devices=["virtio-blk-device", "virtio-rng-device"], transport="pci-modern",
                                  iommu="virtio-iommu", scratch_dir=str(tmp_path)))  # fmt: skip
    try:
        assert setup.iommu is not None
        rids = sorted(setup.machine.iommu_pci_endpoints)
        assert rids and setup.iommu.endpoints == set(rids)
        assert all(rid & 7 == 0 and rid >> 8 == 0 for rid in rids)  # function 0 on bus 0
        assert "pci:" in setup.machine.kernel_cmdline()
    finally:
        setup.close()


def test_machine_wide_iommu_platform_default_with_per_device_override(tmp_path: Path) -> None:
    from virtio_sim.host.build import HostConfig, build_host
    from virtio_sim.spec import F

    cfg = HostConfig(
        devices=["virtio-blk-device", "virtio-rng-device,iommu_platform=off"],
        globals={"virtio-device.iommu_platform": "on"},
        scratch_dir=str(tmp_path),
    )
    setup = build_host(cfg)
    try:
        blk, rng = setup.devices
        assert blk.device_features >> F.ACCESS_PLATFORM & 1
        assert not rng.device_features >> F.ACCESS_PLATFORM & 1
    finally:
        setup.close()
