"""The HTML index: escaping, colours by contrast, status and warnings columns, and the demo-like pages in
headless Chromium at 1400 px (no horizontal scrollbar, every image loads)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spinelab.report.figures import contrast_ratio
from spinelab.report.html import STATUS_COLORS, Column, metric_row, metric_table, write_index
from tests.report._browser import check_page

COLUMNS = [Column("study", "study", "id"), Column("p", "P", "prob"), Column("status", "status", "status"),
           Column("warnings", "warnings", "warnings")]


def test_index_escapes_text_and_puts_warnings_in_their_own_column(tmp_path: Path) -> None:
    rows = [{"study": "<b>1.2.3</b>", "p": 0.73, "status": "warning", "warnings": ["short & <thin> scan"],
             "image": "studies/a.png"}]
    page = write_index(tmp_path / "index.html", title="t <x>", columns=COLUMNS, rows=rows, intro=["a < b"]).read_text()
    assert "<b>1.2.3</b>" not in page and "&lt;b&gt;1.2.3&lt;/b&gt;" in page
    assert "short &amp; &lt;thin&gt; scan" in page and "a &lt; b" in page
    header = re.findall(r"<th[^>]*>([^<]*)</th>", page)
    assert header == ["study", "P", "status", "warnings"]
    data_row = re.search(r"<tr><td.*?</tr>", page).group(0)
    cells = re.findall(r"<td.*?</td>", data_row)
    assert len(cells) == 4 and "short &amp;" in cells[3] and "short" not in cells[0] + cells[1] + cells[2]
    assert '<tr class="picture"><td colspan="4">' in page and 'src="studies/a.png"' in page


def test_probability_and_status_cells_are_readable(tmp_path: Path) -> None:
    rows = [{"study": s, "p": p, "status": s, "warnings": []}
            for s, p in zip(STATUS_COLORS, (0.05, 0.3, 0.6, 0.95), strict=True)]
    page = write_index(tmp_path / "index.html", title="t", columns=COLUMNS, rows=rows).read_text()
    styles = re.findall(r"background:(#[0-9a-f]{6});color:(black|white)", page)
    assert len(styles) == 8  # one probability chip and one status cell per row
    for background, text in styles:
        assert contrast_ratio(text, background) >= 4.5, (background, text)


def test_probability_colour_follows_the_shown_value(tmp_path: Path) -> None:
    rows = [{"study": "a", "p": 0.1996, "status": "ok", "warnings": []}]  # shown as 0.20: not green
    page = write_index(tmp_path / "index.html", title="t", columns=COLUMNS, rows=rows).read_text()
    assert ">0.20<" in page and "background:#f9a825" in page


def test_truth_marks_the_labelled_positives(tmp_path: Path) -> None:
    rows = [{"study": "a", "p": 0.4, "status": "ok", "warnings": [], "truth": {"p": 1}},
            {"study": "b", "p": 0.4, "status": "ok", "warnings": [], "truth": {"p": 0}}]
    page = write_index(tmp_path / "index.html", title="t", columns=COLUMNS, rows=rows).read_text()
    assert page.count("●") == 1 and page.index("●") < page.index(">b<")


def test_metric_tables_escape_names() -> None:
    assert "&lt;AUC&gt;" in metric_table("t", [("<AUC>", "0.9")])
    row = metric_row("t", [("C1", "0.8"), ("C2", "n/a")])
    assert row.count("<th>") == 2 and row.count("<td class='num'>") == 2


@pytest.mark.slow
@pytest.mark.parametrize("report", ["cervical_report", "lumbar_report"])
def test_demo_like_index_fits_1400px_and_every_image_loads(report: str, request: pytest.FixtureRequest) -> None:
    index: Path = request.getfixturevalue(report)
    result = check_page(index)
    assert result["images"] >= 2
    assert result["broken"] == []
    assert result["scrollWidth"] <= result["clientWidth"], f"horizontal scrollbar, too wide: {result['wide']}"


def test_browser_check_sees_a_missing_image_and_a_too_wide_page(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><img src='missing.png'><div style='width:2000px'>x</div>"
                    "</body></html>")
    result = check_page(page)
    assert result["broken"] == ["missing.png"]
    assert result["scrollWidth"] > result["clientWidth"]
