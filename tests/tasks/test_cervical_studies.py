"""The cervical volume at load: canonical orientation, and derived labels that follow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.errors import GeometryError
from spinelab.io.orientation import CANONICAL, reorient
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.studies import canonical_fracture_slices, canonical_slice_table, prepare_cervical_volume

REPO = Path(__file__).resolve().parents[2]
DEPTH, H, W = 6, 8, 10


def _stored(row_dir: float, col_dir: float) -> Volume:
    """A standard axial series as ``read_series`` gives it (D towards the head), with chosen in-plane signs,
    holding one bright block on stored slice 1 (rows 2..3, columns 4..6)."""
    aff = np.eye(4)
    aff[:3, 0] = [0, 0, 2.0]
    aff[:3, 1] = [0, 0.5 * row_dir, 0]
    aff[:3, 2] = [0.5 * col_dir, 0, 0]
    arr = np.zeros((DEPTH, H, W), np.int16)
    arr[1, 2:4, 4:7] = 1000
    return Volume(arr, aff, slice_ids=[str(i + 1) for i in range(DEPTH)])


def _rows() -> pd.DataFrame:
    """slice_labels rows of the stored grid: the block's box on slice 1, nothing elsewhere."""
    rows = pd.DataFrame({"index": np.arange(DEPTH), "slice_number": np.arange(DEPTH) + 1})
    for c in ("x0", "y0", "x1", "y1", "nx0", "ny0", "nx1", "ny1"):
        rows[c] = np.nan
    rows.loc[1, ["x0", "y0", "x1", "y1"]] = [4, 2, 7, 4]
    rows.loc[1, ["nx0", "ny0", "nx1", "ny1"]] = [4 / W, 2 / H, 7 / W, 4 / H]
    rows["C1"] = 0.0
    rows.loc[1, "C1"] = 1.0
    return rows.sample(frac=1.0, random_state=0)  # row order must not matter


@pytest.mark.parametrize("row_dir, col_dir", [(1, 1), (1, -1), (-1, 1), (-1, -1)])
def test_slice_labels_follow_the_volume_into_the_canonical_grid(row_dir: float, col_dir: float) -> None:
    vol = prepare_cervical_volume(_stored(row_dir, col_dir))
    assert vol.orientation == CANONICAL
    table = canonical_slice_table(_rows(), vol)
    assert list(table.index) == list(range(DEPTH))
    d = int(table["C1"].fillna(0).to_numpy().argmax())
    assert d == DEPTH - 2 and vol.slice_ids[d] == "2" and table.loc[d, "slice_number"] == 2  # head first
    ys, xs = np.nonzero(vol.array[d])
    np.testing.assert_array_equal(table.loc[d, ["x0", "y0", "x1", "y1"]].to_numpy(float),
                                  [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_allclose(table.loc[d, ["nx0", "ny0", "nx1", "ny1"]].to_numpy(float),
                               [xs.min() / W, ys.min() / H, (xs.max() + 1) / W, (ys.max() + 1) / H])
    assert table.drop(index=d)[["x0", "nx1"]].isna().all().all()


def test_fracture_slices_follow_the_slice_order() -> None:
    vol = prepare_cervical_volume(_stored(1, 1))
    assert canonical_fracture_slices({"C2": {0, 1}, "": {5}}, vol) == {"C2": {5, 4}, "": {0}}
    assert canonical_fracture_slices(None, vol) is None
    same = Volume(np.zeros((DEPTH, H, W)), np.diag([1.0, 1, 1, 1]))  # never reoriented: indices kept
    assert canonical_fracture_slices({"C1": {3}}, same) == {"C1": {3}}


def test_labels_cannot_follow_when_the_slice_axis_moved() -> None:
    moved = reorient(_stored(1, 1), "RSP")
    sagittal = prepare_cervical_volume(Volume(np.ascontiguousarray(moved.array), moved.affine))  # stored sagittal
    with pytest.raises(GeometryError, match="slice axis moved"):
        canonical_slice_table(_rows(), sagittal)


# --- the same real CT stored with columns towards the patient's right -----------------------------------------
def _tiny_run(run: Path) -> Path:
    """A run folder with untrained tiny stage-1 and stage-2 models (fixed seed): enough to compare predictions."""
    import torch

    from spinelab.config.load import load_config, save_config
    from spinelab.tasks.cervical.fracture import FractureStage
    from spinelab.tasks.cervical.localization import LocalizerStage
    from spinelab.train.run import fold_dir

    cfg = load_config("cervical", [REPO / "src/spinelab/configs" / "cervical" / "tiny.yaml"])
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    for stage in (LocalizerStage(cfg, run), FractureStage(cfg, run)):
        out = fold_dir(run, stage.name, 0)
        out.mkdir(parents=True)
        torch.save(stage.build_model().state_dict(), out / "model.pt")
    return run


@pytest.mark.realdata
@pytest.mark.parametrize("stored, iop", [("SPR", [-1, 0, 0, 0, 1, 0]), ("SAR", [-1, 0, 0, 0, -1, 0])],
                         ids=["columns-to-right", "rotated-180"])
def test_real_ct_stored_with_other_in_plane_axes_gives_the_same_volume_and_prediction(
        realdata: Path, tmp_path: Path, stored: str, iop: list) -> None:
    import warnings

    import pydicom

    from spinelab.io.dicom import read_series
    from spinelab.io.dicom_write import write_series
    from spinelab.tasks.cervical.predict import CervicalPredictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = read_series(realdata / "totalsegmentator" / "example_ct_dicom_j2k")
    assert original.orientation == "SPL"
    # Columns towards the patient's right (IOP -1,0,0,0,1,0: each row mirrored, positions at the other edge),
    # and the same with rows towards anterior too (a prone scan, the image turned by 180 degrees).
    mirrored = reorient(original, stored)
    lowest = int(np.asarray(original.array).min())
    write_series(mirrored.with_array(np.ascontiguousarray(mirrored.array)), tmp_path / "mirrored",
                 file_names=[f"{s}.dcm" for s in mirrored.slice_ids], rescale_intercept=lowest, bits_stored=16)
    flipped = read_series(tmp_path / "mirrored")
    written = [float(v) for v in pydicom.dcmread(next((tmp_path / "mirrored").iterdir())).ImageOrientationPatient]
    np.testing.assert_allclose(written, iop, atol=1e-6)
    assert not np.array_equal(np.asarray(flipped.array), np.asarray(original.array))  # stored differently

    a, b = prepare_cervical_volume(original), prepare_cervical_volume(flipped)
    assert a.orientation == b.orientation == CANONICAL
    np.testing.assert_array_equal(np.asarray(a.array), np.asarray(b.array))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)  # DICOM keeps 6 decimals of each position
    assert a.slice_ids == b.slice_ids

    predictor = CervicalPredictor(_tiny_run(tmp_path / "run"))
    # The models' own stages: predict_volume refuses this 40 mm scan before any model runs (infer.checks).
    sa, sb = predictor.locate(a), predictor.locate(b)
    assert sa["ranges"] == sb["ranges"]
    np.testing.assert_allclose(sa["box"], sb["box"], atol=1e-5)
    np.testing.assert_allclose(predictor.classify(a, sa), predictor.classify(b, sb), atol=1e-5)


def test_fracture_box_rows_follow_with_their_pixels() -> None:
    from spinelab.tasks.cervical.studies import canonical_label_rows

    vol = prepare_cervical_volume(_stored(-1, -1))  # rows towards anterior, columns towards the right
    boxes = pd.DataFrame({"StudyInstanceUID": ["s"], "slice_number": [2], "index": [1], "x0": [4.0], "y0": [2.0],
                          "x1": [7.0], "y1": [4.0], "vertebra": ["C2"]})
    out = canonical_label_rows(boxes, vol)
    d, x0, y0, x1, y1 = out.loc[0, ["index", "x0", "y0", "x1", "y1"]]
    ys, xs = np.nonzero(vol.array[int(d)])
    assert [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert vol.slice_ids[int(d)] == "2" and out.loc[0, "vertebra"] == "C2"


def test_a_cached_study_is_opened_once_and_a_decoded_one_every_time(tiny_cervical_dataset: Path,
                                                                    tmp_path: Path) -> None:
    """Training items read a few slices each: the memory-mapped canonical view is kept, decoded pixels are not."""
    from spinelab.config.load import load_config
    from spinelab.io.cache import build_cache
    from spinelab.tasks.cervical.studies import CervicalStudies, _memory_mapped

    build_cache(tiny_cervical_dataset, tmp_path / "cache", workers=1, progress=False)
    cfg = load_config("cervical", [], [f"data.dataset_dir={tiny_cervical_dataset}",
                                        f"data.cache_dir={tmp_path / 'cache'}"])
    cached = CervicalStudies(cfg)
    uid = str(cached.labels.index[0])
    first = cached.volume(uid)
    assert _memory_mapped(first.array) and cached.volume(uid) is first
    decoded = CervicalStudies(cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_dir": None})}))
    a, b = decoded.volume(uid), decoded.volume(uid)
    assert a is not b and not _memory_mapped(a.array) and not decoded._mapped
    np.testing.assert_array_equal(np.asarray(first.array), a.array)  # the same canonical pixels either way
    np.testing.assert_allclose(first.affine, a.affine)
