"""Tests for lumbar series handling, world mapping, crops, anchors, flips, the loss and heatmap decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.data.synthetic.lumbar import generate_lumbar_dataset, read_lumbar_truth
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_LEVELS, lumbar_columns
from spinelab.tasks.lumbar.grading import (
    FLIP_ORDER,
    complete_anchors,
    flip_items,
    grading_inputs,
    lumbar_loss,
)
from spinelab.tasks.lumbar.images import crop_at_world, image_to_voxel, voxel_to_image
from spinelab.tasks.lumbar.points import decode_heatmaps, flip_lr, heatmap_loss
from spinelab.tasks.lumbar.studies import (
    LumbarStudies,
    classify_series,
    kind_from_header,
    load_study,
    orient,
    read_descriptions,
    series_kind,
)

CONFIG = Path(__file__).resolve().parents[2] / "src/spinelab/configs" / "lumbar" / "tiny.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_lumbar_dataset(tmp_path_factory.mktemp("lumbar") / "ds", studies=3, test_studies=0,
                                   size=64, seed=3, workers=1, progress=False)


def _volume(d_dir: np.ndarray, depth: int = 5) -> Volume:
    aff = np.eye(4)
    aff[:3, 0] = d_dir
    axial = abs(d_dir[2]) > 0.5
    aff[:3, 1] = [0, 1, 0] if axial else [0, 0, -1]
    aff[:3, 2] = [1, 0, 0] if axial else [0, 1, 0]
    arr = np.arange(depth, dtype=np.float32)[:, None, None] * np.ones((depth, 4, 4), np.float32)
    return Volume(arr, aff, slice_ids=[str(i + 1) for i in range(depth)],
                  meta={"instance_numbers": list(range(1, depth + 1))})


def test_series_kind_reads_descriptions() -> None:
    assert series_kind("Sagittal T1") == "sag_t1"
    assert series_kind("Sagittal T2/STIR") == "sag_t2"
    assert series_kind("SAG STIR") == "sag_t2"
    assert series_kind("Axial T2") == "axial"
    assert series_kind("Localizer") is None


def test_orient_sagittal_runs_right_to_left_and_keeps_world() -> None:
    vol = _volume(np.array([-3.5, 0, 0]))  # stored left -> right
    out = orient(vol, "sag_t1")
    assert out.affine[0, 0] > 0
    assert out.slice_ids[0] == "5" and out.meta["instance_numbers"][0] == 5
    for d in range(5):  # the same voxel content sits at the same world position
        np.testing.assert_allclose(out.voxel_to_world([d, 1, 2]), vol.voxel_to_world([4 - d, 1, 2]))
        assert out.array[d, 0, 0] == vol.array[4 - d, 0, 0]
    assert orient(out, "sag_t1") is out


def test_orient_axial_runs_head_to_feet() -> None:
    vol = _volume(np.array([0, 0, 4.0]))  # stored feet -> head
    out = orient(vol, "axial")
    assert out.affine[2, 0] < 0
    np.testing.assert_allclose(out.voxel_to_world([0, 0, 0]), vol.voxel_to_world([4, 0, 0]))


def test_study_series_from_csv_and_dicom_agree(dataset: Path) -> None:
    desc = read_descriptions(dataset, "train")
    study_dir = sorted((dataset / "train_images").iterdir())[0]
    from_csv = classify_series(study_dir, desc)[0]
    from_dicom = classify_series(study_dir, None)[0]
    assert {k: sorted(v) for k, v in from_csv.items()} == {k: sorted(v) for k, v in from_dicom.items()}
    assert from_csv["sag_t1"] and from_csv["sag_t2"] and from_csv["axial"]


SAG, AX, COR = [0.0, 1, 0, 0, 0, -1], [1.0, 0, 0, 0, 1, 0], [1.0, 0, 0, 0, 0, -1]


@pytest.mark.parametrize(("iop", "tr", "te", "ti", "kind"), [
    (SAG, 550.0, 9.0, None, "sag_t1"),
    (SAG, 3500.0, 95.0, None, "sag_t2"),
    (SAG, 4000.0, 40.0, 160.0, "sag_t2"),  # STIR at 1.5 T
    (SAG, 5000.0, 30.0, 230.0, "sag_t2"),  # STIR at 3 T
    (SAG, 9000.0, 120.0, 2500.0, None),  # FLAIR: another inversion recovery
    (SAG, 2000.0, 40.0, None, None),  # intermediate (proton density)
    (AX, 4000.0, 100.0, None, "axial"),
    (AX, 500.0, 10.0, None, None),  # axial T1 is not a grading input
    (COR, 3500.0, 95.0, None, None),
    (None, 3500.0, 95.0, None, None),
])
def test_kind_from_header_rule(iop: list | None, tr: float, te: float, ti: float | None, kind: str | None) -> None:
    tags = {k: v for k, v in {"ImageOrientationPatient": iop, "RepetitionTime": tr, "EchoTime": te,
                              "InversionTime": ti}.items() if v is not None}
    got, why = kind_from_header(tags)
    assert got == kind
    assert ("no ImageOrientationPatient" in why) if iop is None else (f"TR {tr:g} ms" in why)


def test_series_without_descriptions_get_their_kind_from_the_header(dataset: Path, tmp_path: Path) -> None:
    import shutil

    import pydicom

    desc = read_descriptions(dataset, "train")
    source = sorted((dataset / "train_images").iterdir())[0]
    study = tmp_path / source.name
    shutil.copytree(source, study)
    timing = {"sag_t1": (600.0, 10.0, None), "sag_t2": (3800.0, 100.0, None), "axial": (4200.0, 90.0, None)}
    expected = classify_series(source, desc)[0]
    for kind, names in expected.items():
        for name in names:
            for f in (study / name).iterdir():
                ds = pydicom.dcmread(f)
                ds.SeriesDescription = "Series 1"  # unhelpful, as hospital exports often are
                ds.RepetitionTime, ds.EchoTime = timing[kind][:2]
                ds.save_as(f)
    listing, inferred = classify_series(study, None)
    assert {k: sorted(v) for k, v in listing.items()} == {k: sorted(v) for k, v in expected.items()}
    assert set(inferred) == {n for names in expected.values() for n in names}
    assert all("from the header" in why for why in inferred.values())
    assert load_study(study).inferred == inferred


def test_load_study_without_series_raises(tmp_path: Path) -> None:
    (tmp_path / "123" / "456").mkdir(parents=True)
    with pytest.raises(InputError, match="no Sagittal T1"):
        load_study(tmp_path / "123")


def test_world_points_match_synthetic_truth(dataset: Path) -> None:
    cfg = load_config("lumbar", [CONFIG], [f"data.dataset_dir={dataset}"])
    studies = LumbarStudies(cfg)
    sid = studies.labels.index[0]
    truth = read_lumbar_truth(dataset, sid)
    pts = studies.world_points(sid)
    assert pts
    for key, world in pts.items():
        true = np.asarray(truth["points"][key]["world"])
        # labels sit on the nearest slice: off by at most half a slice (~2 mm) plus in-plane rounding
        assert np.linalg.norm(world - true) < 3.0


def test_crop_at_world_and_pixel_mapping(dataset: Path) -> None:
    cfg = load_config("lumbar", [CONFIG], [f"data.dataset_dir={dataset}"])
    studies = LumbarStudies(cfg)
    sid = studies.labels.index[0]
    study = studies.study(sid)
    vol = study.first("sag_t2")
    centre = vol.voxel_to_world([vol.shape[0] // 2, 30, 30])
    crop, ok = crop_at_world(vol, centre, span=3, size=32, crop_mm=40, window=study.window(vol))
    assert ok and crop.shape == (3, 32, 32) and crop.min() >= 0 and crop.max() <= 1
    far = centre + np.array([500.0, 0, 0])
    _, ok_far = crop_at_world(vol, far, span=3, size=32, crop_mm=40, window=(0, 1))
    assert not ok_far
    hw = np.array([[10.0, 20.0]])
    np.testing.assert_allclose(image_to_voxel(voxel_to_image(hw, vol, 48), vol, 48), hw)
    anchors = complete_anchors({c: studies.level_points(sid, c) for c in LUMBAR_CONDITIONS})
    inputs = grading_inputs(study, anchors, cfg)
    assert inputs["sag"].shape == (25, 3, 32, 32) and inputs["mask"].shape == (25, 2)
    assert inputs["mask"][:, 0].all()  # every sagittal view found on a complete study


def test_complete_anchors_fills_from_other_views() -> None:
    spinal = np.arange(15, dtype=float).reshape(5, 3)
    out = complete_anchors({"spinal_canal_stenosis": spinal})
    np.testing.assert_allclose(out["left_subarticular_stenosis"], spinal)
    left = spinal + 10
    right = spinal - 10
    out = complete_anchors({"left_neural_foraminal_narrowing": left,
                            "right_neural_foraminal_narrowing": right})
    np.testing.assert_allclose(out["spinal_canal_stenosis"], spinal)
    assert np.isnan(complete_anchors({})["spinal_canal_stenosis"]).all()


def test_flip_swaps_left_and_right_items() -> None:
    cols = lumbar_columns()
    for i, j in enumerate(FLIP_ORDER):
        a, b = cols[i], cols[j]
        assert a.replace("left", "X").replace("right", "left").replace("X", "right") == b
    sag = np.random.default_rng(0).random((25, 3, 4, 4)).astype(np.float32)
    inputs = {"sag": sag, "axial": sag.copy(), "mask": np.ones((25, 2), bool), "target": np.arange(25)}
    flipped = flip_items(inputs)
    left_ss = cols.index("left_subarticular_stenosis_l3_l4")
    right_ss = cols.index("right_subarticular_stenosis_l3_l4")
    assert flipped["target"][left_ss] == right_ss
    np.testing.assert_allclose(flipped["axial"][left_ss], sag[right_ss][..., ::-1])
    np.testing.assert_allclose(flipped["sag"][left_ss], sag[right_ss][::-1])
    np.testing.assert_allclose(flip_items(flipped)["sag"], sag)


def test_point_flip_swaps_channels() -> None:
    image = np.zeros((3, 8, 8), np.float32)
    xy = np.array([[1.0, 2.0], [6.0, 3.0]])
    img2, xy2, valid2 = flip_lr(image, xy, np.array([True, True]), [(0, 1)], 8)
    np.testing.assert_allclose(xy2, [[1.0, 3.0], [6.0, 2.0]])
    assert img2.shape == image.shape and valid2.all()


def test_lumbar_loss_matches_weighted_metric() -> None:
    from spinelab.metrics import lumbar_score_details, lumbar_submission_frame

    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(2, 25, 3)), dtype=torch.float32)
    target = torch.tensor(rng.integers(-1, 3, size=(2, 25)))
    target[:, 20:] = torch.tensor([0, 2, 1, 0, 0])  # spinal labelled, one severe
    losses = lumbar_loss(logits, target, any_severe_weight=1.0)
    probs = torch.softmax(logits, -1).numpy()
    sub = lumbar_submission_frame({"a": probs[0], "b": probs[1]})
    names = ["Normal/Mild", "Moderate", "Severe"]
    sol = pd.DataFrame([{"study_id": s, **{c: (names[g] if g >= 0 else "")
                                           for c, g in zip(lumbar_columns(), t, strict=True)}}
                        for s, t in zip("ab", target.numpy().tolist(), strict=True)])
    details = lumbar_score_details(sol, sub)
    assert losses["any_severe"].item() == pytest.approx(details["any_severe_spinal"], rel=1e-4)
    assert losses["loss"].item() > losses["grade"].item() > 0


def test_heatmap_decode_recovers_target() -> None:
    xy = torch.tensor([[[13.0, 40.0], [50.0, 9.0]]])
    # logits = log of the Gaussian target: the decoded point must be the target
    b, k, h, w = 1, 2, 16, 16
    ys = (torch.arange(h) + 0.5) * 4 - 0.5
    xs = (torch.arange(w) + 0.5) * 4 - 0.5
    logit = -0.5 * (((xs.view(1, 1, 1, w) - xy[..., 0].view(b, k, 1, 1)) / 6) ** 2
                    + ((ys.view(1, 1, h, 1) - xy[..., 1].view(b, k, 1, 1)) / 6) ** 2)
    prob = torch.softmax(logit.flatten(2), -1).view(b, k, h, w).numpy()
    out, mass = decode_heatmaps(prob, 4)
    np.testing.assert_allclose(out[0], xy[0].numpy(), atol=1.0)
    assert (mass > 0.5).all()
    good = heatmap_loss(logit * 5, xy, torch.ones(1, 2, dtype=torch.bool), stride=4, sigma=1.5)
    bad = heatmap_loss(-logit * 5, xy, torch.ones(1, 2, dtype=torch.bool), stride=4, sigma=1.5)
    assert good < bad
    assert heatmap_loss(logit, xy, torch.zeros(1, 2, dtype=torch.bool), stride=4, sigma=1.5) == 0


def test_levels_registry_order() -> None:
    assert lumbar_columns()[0] == f"{LUMBAR_CONDITIONS[0]}_{LUMBAR_LEVELS[0]}"


def test_series_policy_first_or_all(dataset: Path, tmp_path: Path) -> None:
    import shutil

    from spinelab.tasks.lumbar.predict import sagittal_variants

    source = sorted((dataset / "train_images").iterdir())[0]
    study_dir = tmp_path / source.name
    shutil.copytree(source, study_dir)
    t2 = classify_series(study_dir)[0]["sag_t2"][0]
    shutil.copytree(study_dir / t2, study_dir / "999")  # a second Sagittal T2/STIR series
    desc = None  # DICOM SeriesDescription fallback
    first = load_study(study_dir, descriptions=desc, policy="first")
    assert len(first.series["sag_t2"]) == 1 and any("using the first" in w for w in first.warnings)
    both = load_study(study_dir, descriptions=desc, policy="all")
    assert len(both.series["sag_t2"]) == 2
    views = sagittal_variants(both)
    assert [v.series_ids["sag_t2"] for v in views] == [[s] for s in both.series_ids["sag_t2"]]
    assert views[0].series["sag_t1"] == both.series["sag_t1"]


class _PointRecorder(torch.nn.Module):
    """A stage-1 heatmap model that keeps its inputs and predicts a flat map."""

    def __init__(self, points: int) -> None:
        super().__init__()
        self.points, self.seen = points, []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(x.numpy().copy())
        return {"heatmap": torch.zeros(x.shape[0], self.points, x.shape[-2] // 4, x.shape[-1] // 4)}


def _user_study(dataset: Path, sid: str):
    """The study as a user's input is read: ``load_study`` on its folder, no cache."""
    return load_study(dataset / "train_images" / sid, descriptions=read_descriptions(dataset, "train"))


def test_training_and_inference_build_the_same_stage1_inputs(dataset: Path) -> None:
    from spinelab.infer.runtime import Runtime
    from spinelab.tasks.lumbar.localize import localize_study
    from spinelab.tasks.lumbar.points import PointDataset, SagT1PointStage, SagT2PointStage

    cfg = load_config("lumbar", [CONFIG], [f"data.dataset_dir={dataset}"])
    studies = LumbarStudies(cfg)
    sid = studies.labels.index[0]
    geometry = {"t1_offsets_mm": {"left": 12.0, "right": -12.0}}
    models = {"stage1_sag_t2": [_PointRecorder(5)], "stage1_sag_t1": [_PointRecorder(5)],
              "stage1_axial": [_PointRecorder(2)]}
    localize_study(_user_study(dataset, sid), models, cfg, geometry, runtime=Runtime(), tta=False)
    t2 = SagT2PointStage(cfg, dataset, studies)
    item = PointDataset(studies, t2.samples([sid], train=False), cfg, train=True, augment=False)[0]
    np.testing.assert_array_equal(item["image"].numpy(), models["stage1_sag_t2"][0].seen[0][0])
    t1 = SagT1PointStage(cfg, dataset, studies)
    t1.offsets = geometry["t1_offsets_mm"]
    items = PointDataset(studies, t1.samples([sid], train=False), cfg, train=False)
    seen = models["stage1_sag_t1"][0].seen[0]
    assert len(items) == len(seen) == 2  # left, right
    for k in range(2):
        np.testing.assert_array_equal(items[k]["image"].numpy(), seen[k])


def test_training_and_inference_build_the_same_stage2_inputs(dataset: Path) -> None:
    from spinelab.tasks.lumbar.grading import GradingDataset

    cfg = load_config("lumbar", [CONFIG], [f"data.dataset_dir={dataset}"])
    studies = LumbarStudies(cfg)
    sid = studies.labels.index[0]
    item = GradingDataset(studies, [sid], cfg, train=True, augment=False)[0]
    anchors = complete_anchors({c: studies.level_points(sid, c) for c in LUMBAR_CONDITIONS})
    inputs = grading_inputs(_user_study(dataset, sid), anchors, cfg)  # what the predictor grades
    assert set(inputs) | {"target", "study"} == set(item)
    for key, value in inputs.items():
        np.testing.assert_array_equal(item[key].numpy(), value)


def test_lumbar_training_items_repeat_with_the_seed(dataset: Path) -> None:
    from spinelab.tasks.lumbar.grading import GradingDataset
    from spinelab.tasks.lumbar.points import AxialPointStage, PointDataset

    cfg = load_config("lumbar", [CONFIG], [f"data.dataset_dir={dataset}", "stage1.slice_jitter=1"])
    studies = LumbarStudies(cfg)
    ids = list(studies.labels.index[:2])
    samples = AxialPointStage(cfg, dataset, studies).samples(ids, train=True)[:4]

    def items(seed: int) -> list[np.ndarray]:
        points = PointDataset(studies, samples, cfg, train=True, flip_pairs=[(0, 1)], seed=seed)
        grading = GradingDataset(studies, ids, cfg, train=True, seed=seed)
        return ([points[i]["image"].numpy() for i in range(len(points))]
                + [grading[i]["sag"].numpy() for i in range(len(grading))])

    first, again, other = items(0), items(0), items(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
