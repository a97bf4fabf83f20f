"""The lumbar report: grade values readable on their cells, abbreviations spelled out, L/R on axial panels
with each side's point on its side, and the index page."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.registry import LUMBAR_GRADE_NAMES
from spinelab.report.figures import contrast_ratio, plt
from spinelab.report.lumbar import ABBREVIATIONS, draw_lumbar_study, grade_cell_colors


@pytest.fixture(scope="module")
def drawn(lumbar_predictions: tuple[Path, Path]):
    import json

    from spinelab.tasks.lumbar.studies import load_study, read_descriptions

    data, pred = lumbar_predictions
    folder = sorted((data / "test_images").iterdir())[0]
    study = load_study(folder, descriptions=read_descriptions(data, "test"))
    result = json.loads((pred / "studies" / f"{folder.name}.json").read_text())
    labels = pd.read_csv(data / "test_labels.csv", dtype={"study_id": str}).set_index("study_id").loc[folder.name]
    truth = {c: LUMBAR_GRADE_NAMES.index(g) if isinstance(g, str) else -1 for c, g in labels.items()}
    fig = draw_lumbar_study(study, result, truth=truth)
    fig.canvas.draw()
    yield fig, result, truth
    plt.close(fig)


def test_grade_cell_text_contrast_is_at_least_aa() -> None:
    for value in np.linspace(0, 1, 101):
        background, text = grade_cell_colors(value)
        assert contrast_ratio(text, background[:3]) >= 4.5, value


def test_every_drawn_grade_value_is_legible(drawn) -> None:
    fig, *_ = drawn
    values = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "grade-value"]
    assert len(values) == 2 * 25  # P(moderate) and P(severe) for 5 conditions x 5 levels
    cmap = plt.get_cmap("Reds")
    for t in values:
        assert contrast_ratio(t.get_color(), cmap(float(t.get_text()))[:3]) >= 4.5, t.get_text()


def test_level_labels_on_the_points_are_legible(drawn) -> None:
    fig, *_ = drawn
    labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "level-label"]
    assert len(labels) >= 5
    for t in labels:
        assert contrast_ratio(t.get_color(), t.get_bbox_patch().get_facecolor()[:3]) >= 4.5, t.get_text()


def test_abbreviations_are_spelled_out(drawn, lumbar_report: Path) -> None:
    fig, *_ = drawn
    notes = " ".join(t.get_text() for t in fig.texts)
    for spelled in ("SCS = spinal canal stenosis", "NFN = neural foraminal narrowing", "SS = subarticular stenosis",
                    "L- / R- = the patient's left / right"):
        assert spelled in notes and spelled in ABBREVIATIONS
    ticks = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert {"SCS", "L-NFN", "R-NFN", "L-SS", "R-SS"} <= ticks
    assert "SCS = spinal canal stenosis" in lumbar_report.read_text()


def test_axial_panels_have_lr_letters_and_each_side_on_its_side(drawn) -> None:
    fig, result, _ = drawn
    axial = [ax for ax in fig.axes if ax.get_title().startswith("Axial")]
    assert axial, "no axial panel drawn"
    checked = 0
    for ax in axial:
        edges = {t.get_text() for t in ax.texts if t.get_gid() == "orientation"}
        assert edges == {"A", "P", "R", "L"}
        left_edge = min((t for t in ax.texts if t.get_gid() == "orientation"), key=lambda t: t.get_position()[0])
        assert left_edge.get_text() == "R"  # radiological convention: the patient's right on the image left
        sides = {t.get_text(): t.xy[0] for t in ax.texts if t.get_gid() == "side-marker"}
        if {"L-SS", "R-SS"} <= set(sides):
            assert sides["L-SS"] > sides["R-SS"]  # the left point is drawn on the image's right
            checked += 1
    assert checked >= 1


def test_the_labelled_grade_is_framed(drawn) -> None:
    fig, _, truth = drawn
    tables = {ax.get_title(): ax for ax in fig.axes if ax.get_title().startswith("P(")}
    for title, grade in (("P(moderate)", 1), ("P(severe)", 2)):
        framed = [p for p in tables[title].patches if p.get_gid() == "truth-cell"]
        assert len(framed) == sum(g == grade for g in truth.values())
    assert "A framed cell is the labelled grade" in " ".join(t.get_text() for t in fig.texts)


def test_index_marks_groups_labelled_severe(lumbar_report: Path, lumbar_predictions: tuple[Path, Path]) -> None:
    labels = pd.read_csv(lumbar_predictions[0] / "test_labels.csv", dtype={"study_id": str}).set_index("study_id")
    severe = labels == "Severe"
    expected = 0
    for _, row in severe.iterrows():
        groups = [row[[c for c in row.index if c.startswith(p)]].any()
                  for p in (("spinal",), ("left_neural", "right_neural"), ("left_sub", "right_sub"))]
        expected += sum(groups) + int(row.any())  # the three group columns and "max P(severe)"
    page = lumbar_report.read_text()
    assert expected > 0  # the synthetic labels hold severe levels, so the marks can be counted
    assert page.count("●") == expected + 1  # the explanation above the table has one too
    assert "Score against the labels" in page and "best constant prediction" in page


def test_index_lists_studies_with_status_and_spelled_headers(lumbar_report: Path,
                                                             lumbar_predictions: tuple[Path, Path]) -> None:
    page = lumbar_report.read_text()
    studies = sorted(p.name for p in (lumbar_predictions[0] / "test_images").iterdir())
    rows = re.findall(r"<tr><td class=\"id\">([^<]+)</td><td class=\"num\" title=\"([0-9.]+)\"", page)
    assert sorted(sid for sid, _ in rows) == studies
    assert [float(p) for _, p in rows] == sorted((float(p) for _, p in rows), reverse=True)
    assert 'data-key="max_severe"' in page and "neural foraminal narrowing: highest P(severe)" in page
    assert page.count(">ok</td>") == len(studies)
    assert len(list((lumbar_report.parent / "studies").glob("*.png"))) == len(studies)


def test_axial_series_stored_mirrored_gives_the_same_figure(lumbar_predictions: tuple[Path, Path]) -> None:
    import copy
    import json

    from spinelab.io.volume import Volume
    from spinelab.tasks.lumbar.studies import LumbarStudy, load_study, read_descriptions

    data, pred = lumbar_predictions
    folder = sorted((data / "test_images").iterdir())[0]
    study = load_study(folder, descriptions=read_descriptions(data, "test"))
    result = json.loads((pred / "studies" / f"{folder.name}.json").read_text())
    mirrored_series = []
    for vol in study.series["axial"]:  # the same pixels with columns running towards the patient's right
        width = vol.shape[2]
        affine = vol.affine.copy()
        affine[:3, 3] += vol.affine[:3, 2] * (width - 1)
        affine[:3, 2] = -vol.affine[:3, 2]
        mirrored_series.append(Volume(np.ascontiguousarray(vol.array[:, :, ::-1]), affine, slice_ids=vol.slice_ids))
    mirrored = LumbarStudy(study.study_id, {**study.series, "axial": mirrored_series}, study.series_ids)
    flipped = copy.deepcopy(result)
    widths = dict(zip(study.series_ids["axial"], (v.shape[2] for v in study.series["axial"]), strict=True))
    for side in ("left", "right"):  # the predicted points move with the pixels
        for rec in flipped["points"][f"{side}_subarticular_stenosis"].values():
            rec["x"] = widths[rec["series_id"]] - 1 - rec["x"]
    pictures = []
    for s, r in ((study, result), (mirrored, flipped)):
        fig = draw_lumbar_study(s, r)
        fig.canvas.draw()
        pictures.append(np.asarray(fig.canvas.buffer_rgba()).copy())
        plt.close(fig)
    np.testing.assert_array_equal(pictures[0], pictures[1])
