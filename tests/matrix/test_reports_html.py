"""The matrix HTML report, checked where people read it: in a browser (headless Chromium,
after the page's script ran), and its size for the whole default matrix."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from virtio_sim import __version__
from virtio_sim.orchestration.matrix import report
from virtio_sim.orchestration.matrix.html_report import OUTCOME_MEANING
from virtio_sim.orchestration.matrix.spec import expand, load_matrix
from virtio_sim.outcome import Outcome

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_HINT = "apt-get install chromium"
#: the page stays under this many bytes per cell (2880 cells: 1.1 MB; the page that
#: embedded every cell's JSON record was 5.7 MB for those 2880)
BYTES_PER_CELL = 400
ROOT = Path(__file__).resolve().parents[2]

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=f"chromium not found: {CHROMIUM_HINT}")


class Dom(HTMLParser):
    """Elements of a dumped DOM: tag, attributes, text, and whether it or an ancestor
    carries ``hidden`` (what the page's filter script sets)."""

    VOID = frozenset({"meta", "br", "input", "img", "hr", "link"})

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._stack: list[dict[str, Any]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        hidden = "hidden" in a or any(e["hidden"] for e in self._stack)
        el = {"tag": tag, "attrs": a, "text": "", "hidden": hidden, "own_hidden": "hidden" in a}
        el["row"] = next((e for e in reversed(self._stack) if e["tag"] == "tr"), None)
        el["table"] = next((e for e in reversed(self._stack) if e["tag"] == "table"), None)
        self.elements.append(el)
        if tag not in self.VOID:
            self._stack.append(el)

    def handle_endtag(self, tag: str) -> None:
        if any(e["tag"] == tag for e in self._stack):
            while self._stack.pop()["tag"] != tag:
                pass

    def handle_data(self, data: str) -> None:
        for e in self._stack:
            e["text"] += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def marks(self) -> list[dict[str, Any]]:
        return [
            e for e in self.elements if e["tag"] == "i" and "c" in (e["attrs"].get("class") or "").split()
        ]


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chrome-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", *extra, url,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _dom(tmp_path: Path, page: Path, fragment: str = "") -> Dom:
    p = _chromium(tmp_path, page.as_uri() + (f"#{fragment}" if fragment else ""), "--dump-dom")
    assert p.returncode == 0 and "<body" in p.stdout, p.stderr[-2000:]
    return Dom(p.stdout)


MATRIX = """
description = "report test"
timeout = 10.0
[axes]
driver = ["linux-4.0", "linux-4.8"]
device = ["qemu-2.6", "qemu-7.2"]
transport = ["mmio-v2", "pci-modern"]
workload = ["rng"]
iommu_platform = ["off", "on"]
[[expect]]
outcome = "OK"
[[expect]]
driver = "linux-4.0"
device = "qemu-7.2"
iommu_platform = "on"
outcome = "FAILED_CLEAN"
[[expect]]   # no iommu_platform property before QEMU 2.9
device = "qemu-2.6"
iommu_platform = "on"
outcome = "HOST_REFUSED"
[[expect]]   # no virtio-mmio.force-legacy (virtio-mmio v2) before QEMU 2.7
device = "qemu-2.6"
transport = "mmio-v2"
outcome = "HOST_REFUSED"
[[expect]]   # deliberately wrong: the page must lead with this cell
driver = "linux-4.8"
device = "qemu-7.2"
transport = "pci-modern"
iommu_platform = "off"
outcome = "FAILED_CLEAN"
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("html")
    (d / "m.toml").write_text(MATRIX)
    out = d / "m.html"
    p = subprocess.run(
        [sys.executable, "-m", "virtio_sim.orchestration.cli", "matrix", str(d / "m.toml"),
         "--html", str(out), "--seed", "7"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr  # the one wrong expectation
    return out


@needs_chromium
def test_page_opens_with_verdict_unexpected_cells_legend_and_metadata(page: Path, tmp_path: Path) -> None:
    dom = _dom(tmp_path, page)
    body_text = next(e for e in dom.elements if e["tag"] == "body")["text"]
    (verdict,) = dom.find("p", id="verdict")
    assert verdict["text"] == "16 cells, 1 unexpected" and verdict["attrs"]["class"] == "fail"
    assert body_text.index("1 unexpected") < body_text.index("Legend") < body_text.index("mmio-v2")
    (unexpected,) = dom.find("table", id="unexpected")
    assert "linux-4.8/qemu-7.2/pci-modern/auto/none/off/split/rng" in unexpected["text"]
    legend = dom.find("table", id="legend")[0]["text"]
    assert all(o in legend for o in [*(str(x) for x in Outcome), "TOOL_ERROR"])
    assert set(OUTCOME_MEANING) == {*(str(x) for x in Outcome), "TOOL_ERROR"}
    meta = dom.find("dl", id="meta")[0]["text"]
    assert __version__ in meta and "m.toml" in meta and "seed7" in meta.replace(" ", "")
    assert "date" in meta
    # 16 marks in the grids, the unexpected one framed
    marks = dom.marks()
    grid_marks = [m for m in marks if m["attrs"].get("data-id")]
    assert len(grid_marks) == 16 and all(not m["hidden"] for m in grid_marks)
    framed = [m["attrs"]["data-id"] for m in grid_marks if "x" in m["attrs"]["class"].split()]
    assert framed == ["linux-4.8/qemu-7.2/pci-modern/auto/none/off/split/rng"]
    # what changed between generations: the compat explanation of linux-4.0 -> linux-4.8
    gen = dom.find("ul", data_axis="driver")[0]["text"]
    assert "linux-4.0 → linux-4.8" in gen
    assert "linux-4.8 accepts VIRTIO_F_ACCESS_PLATFORM, FAILED_CLEAN -> OK" in gen
    assert "qemu-2.6 → qemu-7.2" in dom.find("ul", data_axis="device")[0]["text"]


@needs_chromium
@pytest.mark.parametrize(
    ("fragment", "visible"),
    [
        ("driver=linux-4.0", lambda i: i.startswith("linux-4.0/")),
        ("device=qemu-2.6&transport=mmio-v2", lambda i: "/qemu-2.6/mmio-v2/" in i),
        ("outcome=HOST_REFUSED", lambda i: "/qemu-2.6/" in i and ("/on/" in i or "/mmio-v2/" in i)),
        ("unexpected=1", lambda i: i == "linux-4.8/qemu-7.2/pci-modern/auto/none/off/split/rng"),
    ],
)
def test_filters_hide_what_they_exclude(page: Path, tmp_path: Path, fragment: str, visible: Any) -> None:
    dom = _dom(tmp_path, page, fragment)
    marks = [m for m in dom.marks() if m["attrs"].get("data-id")]
    shown = {m["attrs"]["data-id"] for m in marks if not m["hidden"]}
    assert shown == {m["attrs"]["data-id"] for m in marks if visible(m["attrs"]["data-id"])}
    assert dom.find("span", id="shown")[0]["text"] == f"{len(shown)} of 16 cells shown"
    # a row without a visible cell is hidden as a whole, and so is a grid without rows
    rows = [r for r in dom.find("tr") if "data-driver" in r["attrs"]]
    assert len(rows) == 4
    for row in rows:
        assert row["own_hidden"] == all(m["own_hidden"] for m in marks if m["row"] is row)
    grids = dom.find("table", **{"class": "grid"})
    assert len(grids) == 2
    for grid in grids:
        assert grid["own_hidden"] == all(m["hidden"] for m in marks if m["table"] is grid)
    selects = {e["attrs"]["id"]: e for e in dom.find("select")}
    assert set(selects) == {"f-driver", "f-device", "f-transport", "f-outcome"}


@needs_chromium
def test_screenshot_renders(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    p = _chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1280,1600")
    assert p.returncode == 0, p.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
    assert len(data) > 20_000  # a rendered page, not an empty canvas


def test_default_matrix_page_stays_light() -> None:
    """Every cell of the default matrix, with details of realistic length, renders under
    BYTES_PER_CELL each."""
    details = {
        "OK": "blk-rw verified",
        "FAILED_CLEAN": "FEATURES_OK: device did not accept our subset of features",
        "NOT_PROBED": "no blk device bound (virtio-mmio@0xfeb00e00: Version 2 not supported!; "
        "virtio-mmio@0xfeb00c00: Version 2 not supported!)",
        "HOST_REFUSED": "Property 'virtio-blk-pci.iommu_platform' not found",
        "DEVICE_ERROR": "device recorded ring violations: avail-idx-jump: avail idx 38315 is 38315 ahead "
        "of last_avail 0 (queue size 64)",
    }
    outcomes = list(details)
    results = []
    for i, cell in enumerate(expand(load_matrix())):
        o = outcomes[i % len(outcomes)]
        results.append(
            {**cell.axes(), "id": cell.id, "outcome": o, "expected": o, "detail": details[o] * 2,
             "negotiated": ["VIRTIO_F_VERSION_1"], "status_trace": [], "probes": [], "seconds": 0.05}
        )  # fmt: skip
    assert len(results) >= 2880
    page = report.to_html(results, "virtio-sim matrix: default.toml", {"matrix": "default.toml", "seed": 1})
    assert len(page.encode()) < BYTES_PER_CELL * len(results)
    assert page.count("<i class='c o") == len(results) + len(OUTCOME_MEANING)  # cells + legend marks


def test_conformance_page_puts_failures_first_with_section_and_known_reason() -> None:
    from virtio_sim.orchestration.conformance.findings import Verdict
    from virtio_sim.orchestration.conformance.report import Report, Row
    from virtio_sim.orchestration.conformance.report import to_html as conformance_html
    from virtio_sim.orchestration.conformance.report import to_junit as conformance_junit

    def row(rid: str, verdict: Verdict, level: str = "MUST", known: str | None = None) -> Row:
        return Row(rid, "core", level, "device", f"2.1 <{rid}>", verdict, ["saw <x>"], "chk", None, known)

    rows = [
        row("a.pass", Verdict.PASS),
        row("b.known", Verdict.FAIL, known="QEMU 7.2 does this on purpose <see docs>"),
        row("c.should", Verdict.FAIL, level="SHOULD"),
        row("d.na", Verdict.NOT_APPLICABLE),
        row("e.must", Verdict.FAIL),
    ]
    rep = Report("host:virtio-blk", "pci-modern", "split", "lenient", rows)
    page = conformance_html(rep)
    order = [page.index(f"<td>{rid}</td>") for rid in ("e.must", "c.should", "b.known", "a.pass", "d.na")]
    assert order == sorted(order)
    assert "<b>FAIL</b>: 1 MUST failures, 1 other failures, 0 errors, 1 known deviations" in page
    assert "<td>2.1 &lt;e.must&gt;</td>" in page  # the spec section, escaped
    assert "<td>QEMU 7.2 does this on purpose &lt;see docs&gt;</td>" in page
    assert "data-verdict='KNOWN'" in page
    suite = ET.fromstring(
        conformance_junit(Report("host:virtio-blk", "pci-modern", "split", "lenient", rows))
    )
    assert suite.get("name") == "virtio-sim.conformance.host:virtio-blk.pci-modern.split"
    assert suite.get("timestamp") and suite.get("hostname")
