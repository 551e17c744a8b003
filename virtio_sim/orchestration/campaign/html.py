"""The frame every campaign's HTML report is written in.

A report page is a few fixed sections, so it is written by hand rather than templated
(no template engine is a dependency): :func:`page` gives the document (title, style,
script, heading), :func:`banner` the verdict a reader opens the page for, :func:`meta`
the run's metadata, :func:`table` a plain table. The bodies stay with their campaign
(the matrix's grids and filters, conformance's requirement table). Every piece of text
from a peer, a profile or a matrix file goes through :func:`esc`; the helpers take text
and escape it, except where an argument is named ``*_html``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: the look shared by every report page
BASE_STYLE = """
body{font-family:sans-serif;margin:1em;color:#222}
h1{margin:0 0 .3em}
#verdict{font-size:1.4em;padding:.4em .6em;border-radius:4px;color:#fff;display:inline-block}
#verdict.pass{background:#3c9a4a} #verdict.fail{background:#b02a2a}
table{border-collapse:collapse;margin:.4em 0 1.4em}
th,td{border:1px solid #ccc;padding:2px 4px;vertical-align:top;font-size:13px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:0 1em;font-size:13px}
dl.meta dt{font-weight:bold}
"""


def esc(text: object, quote: bool = False) -> str:
    return html.escape(str(text), quote=quote)


def attr(text: object) -> str:
    """A value for a single-quoted attribute."""
    return html.escape(str(text), quote=True)


def page(title: str, body_html: Iterable[str], *, style: str = "", script: str = "") -> str:
    """A whole self-contained document: ``title`` as the title and the first heading."""
    head = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{esc(title)}</title><style>{BASE_STYLE}{style}</style>"]  # fmt: skip
    if script:
        head.append(f"<script>{script}</script>")
    return "\n".join([*head, "</head><body>", f"<h1>{esc(title)}</h1>", *body_html, "</body></html>"])


def banner(passed: bool, text_html: str) -> str:
    """The verdict line (``#verdict``, green or red)."""
    return f"<p id='verdict' class='{'pass' if passed else 'fail'}'>{text_html}</p>"


def meta(items: Mapping[str, Any], heading: str = "Run") -> list[str]:
    rows = [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items()]
    return [f"<h2>{esc(heading)}</h2><dl class='meta' id='meta'>", *rows, "</dl>"]


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    id: str | None = None,
    row_attrs: Iterable[str] | None = None,
) -> list[str]:
    """A table of text cells; ``row_attrs``: raw attribute text per row (already escaped)."""
    opening = f"<table id='{attr(id)}'>" if id else "<table>"
    out = [opening + "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    extra = iter(row_attrs) if row_attrs is not None else None
    for r in rows:
        a = next(extra) if extra is not None else ""
        out.append(f"<tr{' ' + a if a else ''}>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return out
