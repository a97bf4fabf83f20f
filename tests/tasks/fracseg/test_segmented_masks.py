"""Boxed studies without a vertebra mask: segmented by a trained ``seg`` stage, then given pseudo-masks as the
studies with an RSNA segmentation are; kept once written; the CLI with a real trained run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.io.nifti import read_nifti
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.fracseg.pseudo_masks import study_vertebrae


def _labels(dataset: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["labels", "cervical", str(dataset), "--fracture-masks", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((dataset / "derived" / "fracture_masks" / "index.json").read_text())


@pytest.fixture(scope="module")
def full_and_part(fracseg_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """The dataset with its pseudo-masks (``full``), and a copy whose boxed studies lost their RSNA
    segmentation (``part``; those studies returned)."""
    root = tmp_path_factory.mktemp("segmented")
    full, part = root / "full", root / "part"
    shutil.copytree(fracseg_dataset, full, ignore=shutil.ignore_patterns("derived"))
    index = _labels(full)
    hidden = sorted(u for u, rec in index["studies"].items() if rec["status"] == "ok")[:2]
    assert hidden
    shutil.copytree(full, part, ignore=shutil.ignore_patterns("derived"))
    for uid in hidden:
        for path in (part / "segmentations").glob(f"{uid}.nii*"):
            path.unlink()
    return full, part, hidden


def test_segmented_studies_get_the_pseudo_masks_their_true_vertebrae_give(
        full_and_part: tuple[Path, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full, part, hidden = full_and_part
    part = Path(shutil.copytree(part, tmp_path / "part"))
    before = _labels(part)
    assert all(before["studies"][u]["status"] == "no_vertebra_mask" for u in hidden)
    calls: list[str] = []

    class TruthSegmenter:
        """Segments a study with its true vertebrae (the masks of ``full``)."""

        def __init__(self, run_dir: Path, **_: Any) -> None:
            self.weights = {"model.pt": "truth"}

        def segment(self, volume: Volume) -> SimpleNamespace:
            uid = next(u for u in hidden if u in str(volume.meta.get("source", "")))
            calls.append(uid)
            truth = study_vertebrae(full / "derived" / "masks" / f"{uid}.nii.gz", volume)
            return SimpleNamespace(labels=volume.with_array(truth, is_label=True), issues=[])

    import spinelab.tasks.cervical.seg3d.segment as segment_module

    monkeypatch.setattr(segment_module, "Segmenter", TruthSegmenter)
    after = _labels(part, "--vertebra-model", str(tmp_path / "any_run"))
    assert sorted(calls) == hidden
    made = json.loads((part / "derived" / "segmented_masks" / "index.json").read_text())["studies"]
    truth_index = json.loads((full / "derived" / "fracture_masks" / "index.json").read_text())["studies"]
    for uid in hidden:
        assert made[uid]["status"] == "ok" and made[uid]["weights_sha256"] == {"model.pt": "truth"}
        rec = after["studies"][uid]
        assert rec["status"] == "ok" and rec["covered"] == truth_index[uid]["covered"]
        assert Path(rec["vertebra_mask"]).parent == (part / "derived" / "segmented_masks").resolve()
        ours = read_nifti(part / "derived" / "fracture_masks" / f"{uid}.nii.gz", is_label=True)
        theirs = read_nifti(full / "derived" / "fracture_masks" / f"{uid}.nii.gz", is_label=True)
        assert np.allclose(ours.affine, theirs.affine)
        assert np.array_equal(ours.array, theirs.array)
    # studies that had a mask are untouched; a second pass segments nothing again
    for uid, rec in before["studies"].items():
        if uid not in hidden:
            assert after["studies"][uid] == rec
    _labels(part, "--vertebra-model", str(tmp_path / "any_run"))
    assert sorted(calls) == hidden


def test_the_cli_segments_with_a_trained_run(full_and_part: tuple[Path, Path, list[str]], fracseg_run: Path,
                                             tmp_path: Path) -> None:
    _, part, hidden = full_and_part
    part = Path(shutil.copytree(part, tmp_path / "part"))
    index = _labels(part, "--vertebra-model", str(fracseg_run))
    made = json.loads((part / "derived" / "segmented_masks" / "index.json").read_text())["studies"]
    assert sorted(made) == hidden
    for uid in hidden:
        assert made[uid]["run_dir"] == str(fracseg_run.resolve())
        assert made[uid]["weights_sha256"]
        # a one-epoch segmentation may find no vertebra (then the pseudo-mask fails), never no record at all
        assert index["studies"][uid]["status"] != "no_vertebra_mask"
        if made[uid]["status"] == "ok":
            mask = read_nifti(part / "derived" / "segmented_masks" / f"{uid}.nii.gz", is_label=True)
            assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= set(range(9))
            assert made[uid]["labels"] == sorted(int(v) for v in np.unique(mask.array) if v)


def test_a_run_without_a_trained_seg_stage_is_one_clear_error(full_and_part: tuple[Path, Path, list[str]],
                                                              tmp_path: Path) -> None:
    _, part, _ = full_and_part
    part = Path(shutil.copytree(part, tmp_path / "part"))
    (tmp_path / "empty_run").mkdir()
    result = CliRunner().invoke(app, ["labels", "cervical", str(part), "--fracture-masks",
                                      "--vertebra-model", str(tmp_path / "empty_run")])
    assert result.exit_code == 2
    assert "empty_run" in result.output and "Traceback" not in result.output
    assert not (part / "derived" / "segmented_masks" / "index.json").exists()


def test_the_route_segments_its_boxed_studies_after_stage_seg(full_and_part: tuple[Path, Path, list[str]],
                                                              tmp_path: Path) -> None:
    from spinelab import api
    from spinelab.config.load import load_config

    from .conftest import TINY, tiny_overrides

    _, part, hidden = full_and_part
    part = Path(shutil.copytree(part, tmp_path / "part"))
    cfg = load_config("cervical", [TINY], [*tiny_overrides(part), "rounds=1"])
    run = api.train(cfg, run_dir=tmp_path / "run", fold="0", stage="seg", progress=False)
    derived = run / "derived"  # a run's own derived labels
    assert (derived / "fracture_masks" / "index.json").is_file()
    assert not (derived / "segmented_masks").exists()  # the step belongs to round 1
    api.train(cfg, run_dir=run, fold="0", stage="fracture_seg", progress=False)
    made = json.loads((derived / "segmented_masks" / "index.json").read_text())["studies"]
    assert sorted(made) == hidden and all(r["run_dir"] == str(Path(run).resolve()) for r in made.values())
    index = json.loads((derived / "fracture_masks" / "index.json").read_text())["studies"]
    assert all(index[u]["status"] != "no_vertebra_mask" for u in hidden)
    assert (run / "fracture_seg" / "fold_0" / "model.pt").is_file()
