"""The cervical report: labels in order without overlap, the axial slice with the crop box, the legend, the
labels beside the prediction, the index page with status, warnings and scores, and the same figure for a CT
stored with mirrored columns."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.report.cervical import draw_cervical_study, plot_cervical_study, vertebra_slices
from spinelab.report.figures import RISK_BANDS, contrast_ratio, plt


def _volume(depth: int = 60, size: int = 48) -> Volume:
    """A canonical CT-like volume (head first, rows to posterior, columns to the left), 2 x 0.8 x 0.8 mm."""
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, 0.8], [0, 0.8, 0], [-2.0, 0, 0]]  # D to the feet, H posterior, W to the left
    return Volume(rng.normal(0, 300, (depth, size, size)).astype(np.float32), affine,
                  slice_ids=[str(100 + i) for i in range(depth)])


def test_the_test_volume_is_canonical() -> None:
    assert _volume().orientation == "IPL"


def _result(ranges: dict[str, tuple[int, int]], probs: dict[str, float] | None = None) -> dict:
    probs = probs or {t: 0.1 for t in CERVICAL_TARGETS}
    return {"study": "s1", "probabilities": probs, "crop_box": [10, 12, 30, 36], "missing_vertebrae": ["C7"],
            "vertebra_ranges": {v: {"start_index": a, "end_index": b, "slice_numbers": None}
                                for v, (a, b) in ranges.items()},
            "warnings": ["C7 not found: placed next to C6"], "status": "warning"}


def _label_boxes(fig: plt.Figure) -> list[tuple[str, object]]:
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "vertebra-label"]
    return [(t.get_text().split()[0].rstrip("?"), t.get_bbox_patch().get_window_extent(renderer)) for t in texts]


@pytest.mark.parametrize("layout", ["crowded", "out_of_order", "short_scan"])
def test_vertebra_labels_in_anatomical_order_without_overlap(layout: str) -> None:
    volume = _volume()
    if layout == "crowded":  # seven ranges squeezed into 8 slices: labels must spread
        ranges = {v: (i, i + 1) for i, v in enumerate(VERTEBRAE)}
    elif layout == "out_of_order":  # an implausible prediction: C7 above C1
        ranges = {v: (40 - 5 * i, 44 - 5 * i) for i, v in enumerate(VERTEBRAE)}
    else:  # 8 slices of 2 mm: the sagittal is a strip, too short for seven labels
        volume = _volume(depth=8)
        ranges = {v: (i, i + 1) for i, v in enumerate(VERTEBRAE)}
    fig = draw_cervical_study(volume, _result(ranges))
    fig.canvas.draw()
    boxes = _label_boxes(fig)
    assert [name for name, _ in boxes] == list(VERTEBRAE)
    tops = [box.y1 for _, box in boxes]
    assert tops == sorted(tops, reverse=True)  # C1 highest on the page, C7 lowest
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), (a, b)
    for t in (t for ax in fig.axes for t in ax.texts if t.get_gid() == "vertebra-label"):
        assert contrast_ratio(t.get_color(), t.get_bbox_patch().get_facecolor()[:3]) >= 4.5, t.get_text()
    plt.close(fig)


def test_axial_slice_at_the_most_suspicious_vertebra_with_the_crop_box() -> None:
    ranges = {v: (4 + 7 * i, 10 + 7 * i) for i, v in enumerate(VERTEBRAE)}
    probs = {t: 0.1 for t in CERVICAL_TARGETS} | {"C5": 0.81, "patient_overall": 0.7}
    fig = draw_cervical_study(_volume(), _result(ranges, probs))
    sag, cor, axial, bars = fig.axes[:4]
    assert "C5" in axial.get_title() and "slice 35" in axial.get_title()  # C5 spans slices 32..38
    (box,) = [p for p in axial.patches if p.get_gid() == "crop-box"]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == pytest.approx((9.5, 11.5, 20, 24))
    for ax in (sag, cor):  # the axial level is marked where it is
        (line,) = [line for line in ax.lines if line.get_gid() == "axial-level"]
        assert line.get_ydata()[0] == pytest.approx(35)
    legend = [t.get_text() for t in bars.get_legend().get_texts()]
    assert legend == [label for _, _, label in RISK_BANDS]
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "C7 not found" in notes and "warning" in fig._suptitle.get_text()
    plt.close(fig)


def test_labels_are_drawn_beside_the_probabilities() -> None:
    ranges = {v: (4 + 7 * i, 10 + 7 * i) for i, v in enumerate(VERTEBRAE)}
    truth = {t: int(t in ("C2", "patient_overall")) for t in CERVICAL_TARGETS}
    fig = draw_cervical_study(_volume(), _result(ranges), truth=truth)
    marks = [t.get_text() for t in fig.axes[3].texts if t.get_gid() == "truth"]
    assert marks == ["none", "fracture", "none", "none", "none", "none", "none", "fracture"]
    plt.close(fig)


def test_reformats_of_a_short_scan_are_narrowed_around_the_crop_box() -> None:
    ranges = {v: (i, i + 1) for i, v in enumerate(VERTEBRAE)}
    fig = draw_cervical_study(_volume(depth=8, size=120), _result(ranges))  # 16 mm tall, 96 mm wide
    # the crop box [10, 12, 30, 36] spans 24 rows (the sagittal's columns) and 20 columns (the coronal's)
    for ax, box_px in zip(fig.axes[:2], (24, 20), strict=True):
        image = ax.get_images()[0].get_array()
        assert image.shape[0] == 8 and image.shape[1] < 120  # narrowed ...
        assert image.shape[1] >= box_px + 2 * 25  # ... but the crop box and 2 cm (25 px) either side stay
    plt.close(fig)


def test_ranges_follow_slice_numbers_on_any_slice_order() -> None:
    volume = _volume(depth=20)
    result = _result({"C1": (0, 0)})
    result["vertebra_ranges"]["C1"] = {"start_index": 17, "end_index": 19, "slice_numbers": ["102", "100"]}
    assert vertebra_slices(volume, result) == {"C1": (0, 2)}
    result["vertebra_ranges"]["C1"]["slice_numbers"] = None  # no names: the indices are used
    assert vertebra_slices(volume, result) == {"C1": (17, 19)}


def test_index_shows_status_warnings_truth_and_scores(cervical_report: Path,
                                                      cervical_predictions: tuple[Path, Path]) -> None:
    page = cervical_report.read_text()
    folder = cervical_report.parent
    studies = sorted(p.name for p in (cervical_predictions[0] / "test_images").iterdir())
    # every study listed once, highest overall first; the refused one has no picture
    rows = re.findall(r"<tr><td class=\"id\">([^<]+)</td><td class=\"num\" title=\"([0-9.]+)\"", page)
    assert sorted(sid for sid, _ in rows) == studies
    assert [float(p) for _, p in rows] == sorted((float(p) for _, p in rows), reverse=True)
    assert len(list((folder / "studies").glob("*.png"))) == 2
    for status in ("ok", "warning", "refused"):
        assert f">{status}</td>" in page
    assert '<div class="warn">z-extent 96 mm' in page and "refused, prior used" in page
    assert "competition metric" in page and "constant that predicts the label prevalence" in page
    assert "ROC AUC" in page and "C1-C7 pooled" in page and "●" in page
    assert (folder / "calibration.png").is_file() and 'src="calibration.png"' in page
    assert 'src="curves_stage1.png"' in page and 'src="curves_stage2.png"' in page


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:.*empty SeriesInstanceUID")  # a known quirk of this real series
def test_figure_is_the_same_for_a_ct_stored_with_mirrored_columns(realdata: Path, tmp_path: Path) -> None:
    from spinelab.io.dicom import read_series
    from spinelab.io.dicom_write import write_series

    stored = read_series(realdata / "totalsegmentator" / "example_ct_dicom_j2k")
    depth, height, width = stored.shape
    mirrored_affine = stored.affine.copy()
    mirrored_affine[:3, 3] += stored.affine[:3, 2] * (width - 1)  # column 0 is now the old last column
    mirrored_affine[:3, 2] = -stored.affine[:3, 2]  # columns run towards the patient's right
    names = [f"{s}.dcm" for s in stored.slice_ids]
    for name, volume in (("as_stored", stored), ("mirrored", stored.with_array(stored.array[:, :, ::-1].copy()))):
        if name == "mirrored":
            volume = Volume(volume.array, mirrored_affine, slice_ids=stored.slice_ids)
        write_series(volume, tmp_path / name, file_names=names, bits_stored=16, study_uid="1.2.3")
    a, b = read_series(tmp_path / "as_stored"), read_series(tmp_path / "mirrored")
    assert not np.array_equal(a.array, b.array)  # the files really differ
    ranges = {v: (2 * i, 2 * i + 3) for i, v in enumerate(VERTEBRAE)}
    result = _result(ranges, {t: 0.1 + 0.1 * i for i, t in enumerate(CERVICAL_TARGETS)})
    result["crop_box"] = [180, 200, 340, 380]
    pictures = [imread(plot_cervical_study(v, result, tmp_path / f"{n}.png")) for n, v in (("a", a), ("b", b))]
    assert pictures[0].shape == pictures[1].shape
    np.testing.assert_array_equal(pictures[0], pictures[1])


def test_unreadable_or_absent_studies_and_moved_labels_do_not_stop_the_report(
        cervical_predictions: tuple[Path, Path], tmp_path: Path) -> None:
    import json
    import shutil

    from spinelab.report.cervical import write_cervical_report

    data, pred = cervical_predictions
    copy_data, copy_pred = tmp_path / "data", tmp_path / "pred"
    shutil.copytree(pred, copy_pred)
    evaluation = json.loads((copy_pred / "evaluation.json").read_text())
    (copy_pred / "evaluation.json").write_text(json.dumps({**evaluation, "labels": str(tmp_path / "gone.csv")}))
    ok = [json.loads(p.read_text()) for p in sorted((copy_pred / "studies").glob("*.json"))]
    drawable = [r["study"] for r in ok if r["status"] in ("ok", "warning")]
    shutil.copytree(data / "test_images" / drawable[0], copy_data / "test_images" / drawable[0])
    for f in (copy_data / "test_images" / drawable[0]).iterdir():
        f.write_bytes(b"DICM but not really")  # unreadable: no picture, the report goes on
    shutil.copytree(data / "test_images" / drawable[1], copy_data / "test_images" / "someone_else")
    page = write_cervical_report(predictions=copy_pred, input=copy_data, out=tmp_path / "report",
                                 progress=False).read_text()
    assert page.count("no picture: ") == 2  # the unreadable study and the absent one; the refused one has none
    assert f"no picture: study not found under {copy_data}" in page
    assert f"no picture: {copy_data / 'test_images' / drawable[0]}" in page  # the reader's one-line error
    assert "gone.csv no longer exists: truth not shown per study" in page
    assert "competition metric" in page and "●" not in page
    assert not list((tmp_path / "report").glob("studies/*.png"))


@pytest.mark.parametrize("bad", ["out_is_a_file", "model_missing", "no_predictions"])
def test_bad_paths_are_one_line_errors_before_anything_is_written(bad: str, tmp_path: Path,
                                                                  cervical_predictions: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from spinelab.cli import app

    data, pred = cervical_predictions
    out = tmp_path / "report"
    args = ["report", "cervical", "-p", str(pred), "-i", str(data), "-o", str(out)]
    if bad == "out_is_a_file":
        out.write_text("not a folder")
    elif bad == "model_missing":
        args += ["--model", str(tmp_path / "no_run")]
    else:
        args[3] = str(tmp_path)  # a folder without studies/*.json
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and str(tmp_path) in result.output
    assert out.is_file() if bad == "out_is_a_file" else not out.exists()  # nothing drawn, nothing half-written
