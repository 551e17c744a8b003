"""virtio-iommu request framing (virtio 1.4 section 5.13.6): the driver's side of a request.

A request on the request queue is one device-readable part (the head: type and reserved
bytes, then the body of its type) and one device-writable part (PROBE's properties, then
the tail the device writes its status into). What a device can judge: that framing, MAP
ranges that end after they start, MMIO mappings only with the feature, UNMAP ranges that
do not split a mapping (5.13.6.6.1), domains and addresses inside the ranges the config
announces, PROBE's properties sized as probe_size says, and config writes only to
``bypass`` with 0 or 1. The section of every rule is in specs/conformance/iommu.toml.
"""

from __future__ import annotations

from typing import Any

from virtio_sim import layouts
from virtio_sim.devices.framing import Framing, Judge, Request
from virtio_sim.spec import IOMMU_F, IOMMU_MAP_F, IOMMU_T

REQUEST_QUEUE = 0  # the request queue; 1 is the event queue
NAMES = {
    IOMMU_T.ATTACH: "ATTACH",
    IOMMU_T.DETACH: "DETACH",
    IOMMU_T.MAP: "MAP",
    IOMMU_T.UNMAP: "UNMAP",
    IOMMU_T.PROBE: "PROBE",
}
BYPASS = layouts.field_offsets(layouts.VirtioIommuConfig)["bypass"]


def _config_fields() -> list[tuple[int, int]]:
    decl = layouts.VirtioIommuConfig
    widths = layouts.field_widths(decl)
    return [(off, widths[name]) for name, off in layouts.field_offsets(decl).items()]


class IommuFraming(Framing):
    """The virtio-iommu request rules (see the module docstring)."""

    CONDITIONS = {
        "iommu.probe.drv-size": "IOMMU_PROBE",
        "iommu.req.drv-domain-range": "IOMMU_DOMAIN_RANGE",
        "iommu.req.drv-input-range": "IOMMU_INPUT_RANGE",
    }
    FEATURE_PREFIX = "IOMMU"
    FEATURE_BITS = IOMMU_F
    CONFIG_FIELDS = _config_fields()

    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self.maps: dict[int, list[tuple[int, int]]] = {}  # domain -> mapped ranges

    def on_chain(self, request: Request) -> None:
        if request.queue != REQUEST_QUEUE:
            return
        judge, where = self.judge, request.where
        readable = request.gather()
        writable = sum(n for _, n in request.writable())
        ok = len(readable) >= layouts.IOMMU_HEAD_SIZE and writable >= layouts.IOMMU_TAIL_SIZE
        if not judge.check(
            "iommu.req.split", ok, f"{where}: {len(readable)} readable, {writable} writable bytes"
        ):
            return
        name = NAMES.get(readable[0])
        if name is None:
            return
        body_decl = layouts.IOMMU_BODIES[name]
        raw = readable[layouts.IOMMU_HEAD_SIZE :]
        if not judge.check(
            "iommu.req.split", len(raw) >= body_decl.sizeof(), f"{where}: {name} body of {len(raw)} bytes"
        ):
            return
        body = body_decl.parse(raw[: body_decl.sizeof()])
        config = judge.config("little") or b""
        cfg = (
            layouts.VirtioIommuConfig.parse(config)
            if len(config) >= layouts.VirtioIommuConfig.sizeof()
            else None
        )
        self._ranges(where, name, body, cfg)
        if name == "MAP":
            self._map(where, body)
        elif name == "UNMAP":
            self._unmap(where, body)
        elif name == "PROBE" and cfg is not None:
            props = writable - layouts.IOMMU_TAIL_SIZE
            judge.check(
                "iommu.probe.drv-size",
                props == cfg.probe_size,
                f"{where}: PROBE with {props} bytes for properties, probe_size {cfg.probe_size}",
            )

    def _ranges(self, where: str, name: str, body: Any, cfg: Any) -> None:
        """Domains and input addresses inside what the config announces."""
        judge = self.judge
        if "domain" in body and cfg is not None and judge.has(IOMMU_F.DOMAIN_RANGE):
            judge.check(
                "iommu.req.drv-domain-range",
                cfg.domain_start <= body.domain <= cfg.domain_end,
                f"{where}: domain {body.domain} outside {cfg.domain_start}..{cfg.domain_end}",
            )
        if name in ("MAP", "UNMAP") and cfg is not None and judge.has(IOMMU_F.INPUT_RANGE):
            judge.check(
                "iommu.req.drv-input-range",
                cfg.input_start <= body.virt_start and body.virt_end <= cfg.input_end,
                f"{where}: {body.virt_start:#x}-{body.virt_end:#x} outside the input range",
            )

    def _map(self, where: str, body: Any) -> None:
        judge = self.judge
        judge.check(
            "iommu.map.drv-end-gt-start",
            body.virt_end > body.virt_start,
            f"{where}: MAP {body.virt_start:#x}-{body.virt_end:#x}",
        )
        if body.flags & IOMMU_MAP_F.MMIO:
            judge.check(
                "iommu.map.drv-mmio-needs-feature",
                judge.has(IOMMU_F.MMIO),
                f"{where}: MAP_F_MMIO without VIRTIO_IOMMU_F_MMIO",
            )
        else:
            judge.ok("iommu.map.drv-mmio-needs-feature")
        self.maps.setdefault(body.domain, []).append((body.virt_start, body.virt_end))

    def _unmap(self, where: str, body: Any) -> None:
        """An UNMAP covers whole mappings (or none): it never splits one."""
        start, end = body.virt_start, body.virt_end
        maps = self.maps.get(body.domain, [])
        split = [(s, e) for s, e in maps if s <= end and e >= start and not (start <= s and e <= end)]
        self.judge.check(
            "iommu.unmap.drv-boundaries", not split, f"{where}: UNMAP {start:#x}-{end:#x} splits {split[:2]}"
        )
        self.maps[body.domain] = [(s, e) for s, e in maps if not (start <= s and e <= end)]

    def on_config_write(self, offset: int, size: int, value: int) -> None:
        self.judge.check(
            "iommu.cfg.drv-no-other-writes",
            offset == BYPASS and size == 1,
            f"config write of {size} bytes at {offset:#x} (only bypass may be written)",
        )
        if offset == BYPASS:
            self.judge.check("iommu.cfg.drv-bypass-0-1", value in (0, 1), f"bypass written with {value}")
