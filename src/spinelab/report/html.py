"""A small, dependency-free HTML index: one row per study with a thumbnail and the numbers beside it."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spinelab.io.atomic import atomic_write_text

__all__ = ["write_index"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse} td,th{border-bottom:1px solid #ddd;padding:6px 10px;vertical-align:top}
th{background:#f4f4f4;text-align:left} img{max-width:520px} .warn{color:#b26a00;font-size:90%}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def write_index(path: str | Path, *, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]],
                intro: str = "", images: Sequence[str] = ()) -> Path:
    """Write an HTML table.

    Args:
        path: output ``index.html``.
        title: page title.
        columns: keys of ``rows`` shown as columns, in order.
        rows: one dict per study; ``image`` (relative PNG path) and ``warnings`` (list) are shown specially.
        intro: a paragraph of HTML-escaped text above the table.
        images: extra figures (relative paths) shown below the table (e.g. training curves).
    """
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["picture", *columns])
    body = []
    for row in rows:
        cells = [f'<td><a href="{html.escape(row["image"])}"><img src="{html.escape(row["image"])}"></a></td>'
                 if row.get("image") else "<td></td>"]
        for c in columns:
            v = row.get(c, "")
            text = f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
            cells.append(f'<td class="num">{text}</td>' if isinstance(v, float) else f"<td>{text}</td>")
        if row.get("warnings"):
            cells[-1] = cells[-1][:-5] + "".join(f'<div class="warn">{html.escape(w)}</div>'
                                                 for w in row["warnings"]) + "</td>"
        body.append("<tr>" + "".join(cells) + "</tr>")
    extra = "".join(f'<h2>{html.escape(Path(i).stem)}</h2><img src="{html.escape(i)}">' for i in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
            f"<table><tr>{head}</tr>{''.join(body)}</table>{extra}</body></html>\n")
    return atomic_write_text(path, page)
