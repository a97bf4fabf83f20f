"""A small, dependency-free HTML index: one row per study with a thumbnail and the numbers beside it.

The page fits a 1400 px wide window without a horizontal scrollbar (fixed table layout, images scaled to the
page width, long ids broken anywhere). Each study's picture gets its own full-width row under its numbers, so
it is read at (nearly) its own size; probabilities are shown on their risk colour with the text colour that
contrasts most with it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinelab.errors import InputError
from spinelab.io.atomic import atomic_write_text
from spinelab.report.figures import RISK_BANDS, readable_text_color, risk_color

__all__ = ["Column", "write_index", "metric_table", "metric_row", "check_report_folder", "STATUS_COLORS"]

#: Background of each study status (text colour chosen by contrast).
STATUS_COLORS = {"ok": "#e8f5e9", "warning": "#fff3cd", "refused": "#fde0dc", "failed": "#f8bbd0"}

# Column widths (percent of the table) by kind; the warnings column takes what is left.
_WIDTHS = {"id": 13.0, "prob": 6.8, "status": 7.0, "text": 9.0}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:20px;color:#1a1a1a;line-height:1.35}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em}
table.studies{border-collapse:collapse;width:100%;table-layout:fixed}
td,th{border-bottom:1px solid #ddd;padding:5px 6px;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f0f0;text-align:left;font-size:85%;overflow-wrap:break-word}
tr.picture td{border-bottom:2px solid #bbb;padding-bottom:14px}
tr.picture img{max-width:100%;height:auto;display:block}
.p{display:inline-block;min-width:2.6em;padding:1px 4px;border-radius:3px;text-align:right}
.num{text-align:right;font-variant-numeric:tabular-nums}
.id{font-family:ui-monospace,monospace;font-size:85%;word-break:break-all}
.warn{color:#6d4c00;font-size:88%;margin-bottom:3px}
.status{font-weight:600;text-align:center}
.legend span{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:3px}
table.metrics{border-collapse:collapse;margin:6px 24px 10px 0;display:inline-table;vertical-align:top}
table.metrics td{padding:3px 10px}
figure{margin:10px 0 24px} figure img{max-width:100%;height:auto} figcaption{font-weight:600;margin-bottom:4px}
"""


@dataclass(frozen=True)
class Column:
    """A column of the index table.

    Args:
        key: the row key shown.
        title: header text.
        kind: ``id``, ``prob`` (a probability on its risk colour), ``status``, ``warnings`` or ``text``.
        help: what the header means (shown on hover).
    """

    key: str
    title: str
    kind: str = "text"
    help: str = ""


def check_report_folder(out: str | Path) -> Path:
    """``out`` as a report folder: it may not exist yet, but must not be a file (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "the report folder (-o) is a file; give a folder")
    return out


def _cell(column: Column, row: dict[str, Any]) -> str:
    value = row.get(column.key, "")
    if column.kind == "prob" and isinstance(value, float):
        bg = risk_color(round(value, 2))  # coloured as shown: a "0.20" is never green
        mark = " ●" if int((row.get("truth") or {}).get(column.key, 0)) == 1 else ""
        return (f'<td class="num" title="{value:.4f}"><span class="p" style="background:{bg};'
                f'color:{readable_text_color(bg)}">{value:.2f}</span>{mark}</td>')
    if column.kind == "status":
        bg = STATUS_COLORS.get(str(value), "#ffffff")
        style = f"background:{bg};color:{readable_text_color(bg)}"
        return f'<td class="status" style="{style}">{html.escape(str(value))}</td>'
    if column.kind == "warnings":
        return "<td>" + "".join(f'<div class="warn">{html.escape(str(w))}</div>' for w in value or []) + "</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    css = ' class="id"' if column.kind == "id" else ""
    return f"<td{css}>{html.escape(str(value))}</td>"


def metric_table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A small two-column table of named values, for the summary above the study table."""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='metrics'><caption><b>{html.escape(title)}</b></caption>{body}</table>"


def metric_row(title: str, values: Sequence[tuple[str, str]]) -> str:
    """A one-row table of named values side by side (per-vertebra AUCs), for the summary."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k, _ in values)
    body = "".join(f"<td class='num'>{html.escape(v)}</td>" for _, v in values)
    caption = f"<caption><b>{html.escape(title)}</b></caption>"
    return f"<table class='metrics'>{caption}<tr>{head}</tr><tr>{body}</tr></table>"


def _risk_legend() -> str:
    spans = "".join(f'<span style="background:{c};color:{readable_text_color(c)}">{html.escape(label)}</span>'
                    for _, c, label in RISK_BANDS)
    return f'<p class="legend">Probability colours: {spans}</p>'


def _colgroup(columns: Sequence[Column]) -> str:
    fixed = [_WIDTHS.get(c.kind, _WIDTHS["text"]) for c in columns if c.kind != "warnings"]
    rest = max(100.0 - sum(fixed), 8.0)
    widths = [rest if c.kind == "warnings" else _WIDTHS.get(c.kind, _WIDTHS["text"]) for c in columns]
    return "<colgroup>" + "".join(f'<col style="width:{w:.1f}%">' for w in widths) + "</colgroup>"


def write_index(path: str | Path, *, title: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]],
                intro: Sequence[str] = (), summary: str = "", figures: Sequence[tuple[str, str]] = (),
                legend: bool = False) -> Path:
    """Write the report's ``index.html``.

    Args:
        path: output file.
        title: page title.
        columns: the table columns.
        rows: one dict per study; ``image`` (relative PNG path), or each of ``images``, is shown in a full-width
            row under it,
            ``truth`` (``{key: 0/1}``) puts a ● after probabilities labelled positive.
        intro: paragraphs of plain text (escaped) above the table.
        summary: HTML made by ``metric_table`` (scores), shown above the table.
        figures: ``(caption, relative PNG path)`` shown below the table (training curves, calibration).
        legend: explain the probability colours above the table.
    """
    head = "".join(
        f'<th data-key="{html.escape(c.key)}" title="{html.escape(c.help)}">{html.escape(c.title)}</th>'
        for c in columns)
    body = []
    for row in rows:
        body.append("<tr>" + "".join(_cell(c, row) for c in columns) + "</tr>")
        for image in row.get("images") or ([row["image"]] if row.get("image") else []):
            src, alt = html.escape(image), html.escape(f"picture of study {row.get('study', '')}")
            body.append(f'<tr class="picture"><td colspan="{len(columns)}"><a href="{src}">'
                        f'<img src="{src}" alt="{alt}"></a></td></tr>')
    extra = "".join(f'<figure><figcaption>{html.escape(caption)}</figcaption><img src="{html.escape(src)}" '
                    f'alt="{html.escape(caption)}"></figure>' for caption, src in figures)
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in intro)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{paragraphs}"
            f"{summary and '<div class=summary>' + summary + '</div>'}{_risk_legend() if legend else ''}"
            f"<table class='studies'>{_colgroup(columns)}<tr>{head}</tr>{''.join(body)}</table>{extra}"
            f"</body></html>\n")
    return atomic_write_text(path, page)
