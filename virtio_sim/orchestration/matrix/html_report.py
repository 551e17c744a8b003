"""The matrix as one self-contained HTML page a person scans.

Top to bottom: the verdict and every unexpected cell (what a reader opens the page for),
the run's metadata, a legend for every outcome, filters (driver, device, transport,
outcome, unexpected only; kept in the URL's #fragment so a filtered view is a link), one
grid per transport (driver rows, device columns, one mark per cell with its variant and
detail on hover), and what changed between successive driver and device generations
(the compat explanation, virtio_sim/orchestration/compat.py).

The frame (document, verdict banner, metadata) is every campaign's (campaign/html.py);
the sections here are the matrix's own, hand-written like the frame: every piece of peer
or profile text goes through html.escape.
It stays light for the 2880-cell default matrix (a bound tests/matrix/test_reports_html.py
checks): a cell is one short element; the full record of each cell is in the JSON report.
"""

from __future__ import annotations

import datetime
import html
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

from virtio_sim.orchestration.campaign.html import banner, page
from virtio_sim.orchestration.campaign.html import meta as run_meta
from virtio_sim.orchestration.compat import compare

#: what each outcome means, for the legend (the classes of virtio_sim/outcome.py plus
#: the matrix's own TOOL_ERROR)
OUTCOME_MEANING = {
    "OK": "the workload ran and its data was verified end to end",
    "OK_NO_ISOLATION": "worked, but the device's DMA bypassed the IOMMU the guest had put it behind",
    "FAILED_CLEAN": "driver or device refused the configuration cleanly (status FAILED, nothing damaged)",
    "NOT_PROBED": "the guest bound no driver to the device (not found, unknown id or version)",
    "HOST_REFUSED": "the device generation refused the options before the guest ran (as QEMU would)",
    "DMA_FAULT": "the IOMMU stopped the device's DMA (translation faults)",
    "DEVICE_ERROR": "the device saw ring violations or needed a reset",
    "CORRUPTION": "data arrived wrong: silent corruption",
    "HANG": "nothing completed before the timeout",
    "TOOL_ERROR": "a bug in virtio-sim while running the cell: no verdict on the peers",
}
#: the longest detail kept in a cell's hover text (the JSON report has it all)
DETAIL_CHARS = 240
#: how many cause groups of one generation step the page lists
GROUPS_SHOWN = 12

_SCRIPT = """
const F=['driver','device','transport','outcome'];
function state(){const s={};new URLSearchParams(location.hash.slice(1)).forEach((v,k)=>s[k]=v);return s}
function apply(){
 const s=state();let shown=0,total=0;
 for(const k of F){const el=document.getElementById('f-'+k);if(el)el.value=s[k]||''}
 document.getElementById('f-unexpected').checked=s.unexpected==='1';
 for(const t of document.querySelectorAll('table.grid')){
  let tv=0;const tr0=t.dataset.transport;
  for(const r of t.querySelectorAll('tr[data-driver]')){
   let rv=0;
   for(const c of r.querySelectorAll('i.c')){
    total++;const d=c.parentElement.dataset.device;
    const ok=(!s.driver||s.driver===r.dataset.driver)&&(!s.device||s.device===d)&&
      (!s.transport||s.transport===tr0)&&(!s.outcome||s.outcome===c.dataset.o)&&
      (s.unexpected!=='1'||c.classList.contains('x'));
    c.hidden=!ok;if(ok){rv++;shown++}
   }
   r.hidden=rv===0;tv+=rv;
  }
  t.hidden=tv===0;t.previousElementSibling.hidden=tv===0;
 }
 document.getElementById('shown').textContent=shown+' of '+total+' cells shown';
}
function set(){
 const p=new URLSearchParams();
 for(const k of F){const v=document.getElementById('f-'+k).value;if(v)p.set(k,v)}
 if(document.getElementById('f-unexpected').checked)p.set('unexpected','1');
 location.hash=p.toString();apply();
}
window.addEventListener('hashchange',apply);
document.addEventListener('DOMContentLoaded',()=>{
 const els=document.querySelectorAll('#filters select,#filters input');
 for(const el of els)el.addEventListener('change',set);
 apply();
});
"""

#: the matrix page's own look, on top of campaign/html.py's BASE_STYLE
_STYLE = """
td.detail{max-width:60em}
i.c{display:inline-block;font-style:normal;min-width:3.6em;color:#fff;padding:1px 3px;margin:1px;
 font-size:11px;border-radius:3px;text-align:center}
i.c.x{outline:3px solid #f00}
#filters{position:sticky;top:0;background:#f4f4f4;padding:.4em;border:1px solid #ddd}
#filters label{margin-right:1em}
"""


def _colour_css(colours: dict[str, str]) -> str:
    return "".join(f"i.o{k}{{background:{v}}}" for k, v in colours.items())


def _options(name: str, values: list[str]) -> str:
    esc = html.escape
    opts = "".join(f"<option value='{esc(v, quote=True)}'>{esc(v)}</option>" for v in values)
    return f"<label>{name} <select id='f-{name}'><option value=''>all</option>{opts}</select></label>"


def _unique(results: list[dict[str, Any]], key: str) -> list[str]:
    """Values in first-seen order (the matrix file's axis order)."""
    return list(dict.fromkeys(str(r[key]) for r in results))


def _is_unexpected(r: dict[str, Any]) -> bool:
    return bool(r.get("expected")) and r["expected"] != r["outcome"]


def generation_changes(results: list[dict[str, Any]], axis: str) -> list[tuple[str, str, int, list[str]]]:
    """For each pair of successive values of ``axis`` (driver or device generations, in
    the matrix's order): (older, newer, configurations changed, cause headlines)."""
    values = _unique(results, axis)
    out = []
    for old, new in itertools.pairwise(values):
        names = (old, new) if axis == "driver" else (f"the driver on {old}", f"the driver on {new}")
        rep = compare(results, old, new, axis=axis, names=names)
        out.append((old, new, len(rep.changes), [g.headline for g in rep.groups]))
    return out


def _verdict(results: list[dict[str, Any]], bad: list[dict[str, Any]]) -> list[str]:
    esc = html.escape
    p = [
        banner(
            not bad, f"{len(results)} cells, {len(bad)} unexpected{'' if bad else ': every cell as expected'}"
        ),
        f"<h2>Unexpected cells ({len(bad)})</h2>",
    ]
    if not bad:
        return [*p, "<p id='unexpected'>none</p>"]
    p.append("<table id='unexpected'><tr><th>cell</th><th>expected</th><th>got</th><th>detail</th></tr>")
    for r in bad:
        p.append(
            f"<tr><td>{esc(r['id'])}</td><td>{esc(str(r.get('expected') or '-'))}</td>"
            f"<td>{esc(r['outcome'])}</td><td class='detail'>{esc(str(r.get('detail', '')))}</td></tr>"
        )
    return [*p, "</table>"]


def _legend(counts: Counter[str], unexpected: int, abbrev: dict[str, str]) -> list[str]:
    esc = html.escape
    p = [
        "<h2>Legend</h2><table id='legend'>",
        "<tr><th>mark</th><th>outcome</th><th>cells</th><th>meaning</th></tr>",
    ]
    for o, meaning in OUTCOME_MEANING.items():
        p.append(
            f"<tr><td><i class='c o{o}'>{esc(abbrev.get(o, o))}</i></td><td>{o}</td>"
            f"<td>{counts.get(o, 0)}</td><td>{esc(meaning)}</td></tr>"
        )
    p.append(
        "<tr><td><i class='c x oOK'>OK</i></td><td>red frame</td>"
        f"<td>{unexpected}</td><td>the cell's outcome is not the matrix file's expectation</td></tr></table>"
    )
    return p


def _filters(results: list[dict[str, Any]], counts: Counter[str]) -> list[str]:
    p = ["<div id='filters'>"]
    p += [_options(axis, _unique(results, axis)) for axis in ("driver", "device", "transport")]
    p.append(_options("outcome", [o for o in OUTCOME_MEANING if counts.get(o)]))
    p.append("<label><input type='checkbox' id='f-unexpected'> unexpected only</label>")
    p.append(f"<span id='shown'>{len(results)} of {len(results)} cells shown</span></div>")
    return p


def _mark(r: dict[str, Any], abbrev: dict[str, str], variant: Callable[[dict[str, Any]], str]) -> str:
    """One cell: its outcome's mark; variant, expectation and detail on hover."""
    esc = html.escape
    detail = str(r.get("detail", ""))
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + "..."
    o = str(r["outcome"])
    x = _is_unexpected(r)
    tip = f"{variant(r)}: {o}" + (f" (expected {r['expected']})" if x else "") + f"\n{detail}"
    return (
        f"<i class='c o{esc(o)}{' x' if x else ''}' data-o='{esc(o, quote=True)}'"
        f" data-id='{esc(str(r['id']), quote=True)}' title='{esc(tip, quote=True)}'>"
        f"{esc(abbrev.get(o, o))}</i>"
    )


def _grids(
    results: list[dict[str, Any]], abbrev: dict[str, str], variant: Callable[[dict[str, Any]], str]
) -> list[str]:
    esc = html.escape
    variants = sorted({variant(r) for r in results})
    p = [f"<p>Within a box, marks are in this order: {esc(', '.join(variants))} (hover for detail).</p>"]
    for transport in _unique(results, "transport"):
        rows = [r for r in results if r["transport"] == transport]
        devices, drivers = _unique(rows, "device"), _unique(rows, "driver")
        by: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            by.setdefault((r["driver"], r["device"]), []).append(r)
        p.append(
            f"<h2>{esc(transport)}</h2><table class='grid' data-transport='{esc(transport, quote=True)}'>"
        )
        p.append("<tr><th>driver \\ device</th>" + "".join(f"<th>{esc(d)}</th>" for d in devices) + "</tr>")
        for drv in drivers:
            p.append(f"<tr data-driver='{esc(drv, quote=True)}'><th>{esc(drv)}</th>")
            for dev in devices:
                marks = "".join(
                    _mark(r, abbrev, variant) for r in sorted(by.get((drv, dev), []), key=variant)
                )
                p.append(f"<td data-device='{esc(dev, quote=True)}'>{marks}</td>")
            p.append("</tr>")
        p.append("</table>")
    return p


def _generations(results: list[dict[str, Any]]) -> list[str]:
    esc = html.escape
    p = ["<h2 id='generations'>What changed between generations</h2>"]
    for axis in ("driver", "device"):
        steps = generation_changes(results, axis)
        if not steps:
            continue
        p.append(f"<h3>{axis} generations</h3><ul class='gen' data-axis='{axis}'>")
        for old, new, n, headlines in steps:
            p.append(f"<li><b>{esc(old)} &rarr; {esc(new)}</b>: {n} configurations changed")
            if headlines:
                p.append("<ul>" + "".join(f"<li>{esc(h)}</li>" for h in headlines[:GROUPS_SHOWN]))
                if len(headlines) > GROUPS_SHOWN:
                    p.append(f"<li>... {len(headlines) - GROUPS_SHOWN} more causes (virtio-sim compat)</li>")
                p.append("</ul>")
            p.append("</li>")
        p.append("</ul>")
    return p


def render(
    results: list[dict[str, Any]],
    title: str,
    meta: dict[str, Any],
    *,
    colours: dict[str, str],
    abbrev: dict[str, str],
    variant: Callable[[dict[str, Any]], str],
) -> str:
    bad = [r for r in results if _is_unexpected(r) or r["outcome"] == "TOOL_ERROR"]
    counts = Counter(str(r["outcome"]) for r in results)
    body = [
        *_verdict(results, bad),
        *run_meta(meta),
        *_legend(counts, len(bad), abbrev),
        *_filters(results, counts),
        *_grids(results, abbrev, variant),
        *_generations(results),
    ]
    return page(title, body, style=_STYLE + _colour_css(colours), script=_SCRIPT)


def default_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The run metadata the page shows: virtio-sim's version and the date first."""
    from virtio_sim import __version__

    out: dict[str, Any] = {
        "virtio-sim": __version__,
        "date": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
    }
    out.update(meta or {})
    return out
