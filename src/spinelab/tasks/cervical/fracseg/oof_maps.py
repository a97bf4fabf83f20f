"""The last round's out-of-fold fracture maps, and the percentile rule fitted on them (step ``percentile``).

Every labelled study whose fold was trained in the last pseudo-labelling round gets that fold's fracture
probability on its crop (the model that held it out; no flip TTA). Its vertebrae: its mask
(``pseudo_masks.vertebra_mask_path``), else the run's own ``seg`` stage segments it (those models never trained
on a study without a mask). The map is written as ``RUN/<last round>/oof_maps/<UID>.nii.gz`` (float32, the
crop's affine: the folder the rounds' labels use), its vertebra labels on the same crop as
``RUN/<last round>/oof_vertebrae/<UID>.nii.gz``. A map already written with the same weights and crop settings
is kept (``oof_vertebrae/index.json``), so a killed step resumes.

The rule is then fitted on those maps (``percentile.fit_percentile_rule``, section ``percentile``) and written as
``RUN/percentile_rule.json``. Its out-of-fold probabilities go to ``RUN/percentile/oof.csv`` (the stage
``overall`` and the route's CV score read them): cross-fitted, each fold's studies by a rule fitted on the other
folds' maps, since a rule fitted on every study would score studies whose labels tuned it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.fracseg import FracsegConfig, round_name
from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.registry import CERVICAL_TARGETS

__all__ = ["write_oof_maps", "fit_rule_on_oof", "oof_pairs", "vertebrae_dir", "PERCENTILE_DIR", "MAPS_SCHEMA_VERSION"]

log = logging.getLogger("spinelab")
MAPS_SCHEMA_VERSION = 1
PERCENTILE_DIR = "percentile"


def vertebrae_dir(run_dir: Path, k: int) -> Path:
    """Round ``k``'s vertebra labels on the crops of its out-of-fold maps."""
    return Path(run_dir) / round_name(k) / "oof_vertebrae"


def oof_pairs(run_dir: Path, k: int) -> dict[str, tuple[Path, Path]]:
    """Study id -> (map, vertebra labels) of round ``k`` that both exist."""
    from spinelab.tasks.cervical.fracseg.fracture_stage import oof_maps_dir

    maps, verts = oof_maps_dir(run_dir, k), vertebrae_dir(run_dir, k)
    out = {}
    for p in sorted(verts.glob("*.nii.gz")):
        uid = p.name.removesuffix(".nii.gz")
        if (maps / p.name).is_file():
            out[uid] = (maps / p.name, p)
    return out


def _read_index(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def write_oof_maps(cfg: FracsegConfig, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write the last round's out-of-fold map and crop vertebrae of every usable study (module docstring).

    Returns:
        ``{"settings": ..., "studies": {uid: {"status": ..., "fold": ...}}}`` (also ``oof_vertebrae/index.json``).

    Raises:
        InputError: the last round has no cross-validated fold.
    """
    from spinelab.infer.batch import progress_bar, weights_sha256
    from spinelab.infer.runtime import Runtime
    from spinelab.io.nifti import write_nifti
    from spinelab.tasks.cervical.fracseg.crop import prepare_crop
    from spinelab.tasks.cervical.fracseg.fracture_map import crop_probability
    from spinelab.tasks.cervical.fracseg.fracture_stage import FractureSegStage, oof_maps_dir
    from spinelab.tasks.cervical.fracseg.pseudo_masks import study_vertebrae, vertebra_mask_path
    from spinelab.tasks.cervical.studies import CervicalStudies
    from spinelab.train.run_folder import fold_dir, load_stage_models, trained_folds

    k = cfg.rounds
    stage = FractureSegStage(cfg, run_dir, round=k)
    folds = [f for f in trained_folds(run_dir, stage.name) if f is not None]
    if not folds:
        raise InputError(Path(run_dir) / stage.name, "the percentile rule and stage overall need the last round's "
                                                     "out-of-fold maps: train it with cross-validated folds "
                                                     "(--fold all or 0,1,...)")
    studies = CervicalStudies(cfg)  # type: ignore[arg-type]
    weights = weights_sha256(run_dir, [fold_dir(run_dir, stage.name, f) / "model.pt" for f in folds])
    settings = {"schema_version": MAPS_SCHEMA_VERSION, "stage": stage.name, "weights_sha256": weights,
                "grid": cfg.grid.model_dump(mode="json")}
    maps, verts = oof_maps_dir(run_dir, k), vertebrae_dir(run_dir, k)
    index = _read_index(verts / "index.json")
    done: dict[str, Any] = index.get("studies", {}) if index.get("settings") == settings else {}
    done = {u: r for u, r in done.items() if r.get("status") != "ok" or (maps / f"{u}.nii.gz").is_file()}
    todo = [u for u in studies.labels.index if u not in done]
    maps.mkdir(parents=True, exist_ok=True)
    verts.mkdir(parents=True, exist_ok=True)
    models: dict[int, Any] = {}
    runtime = Runtime(device="cpu" if cfg.trainer.accelerator == "cpu" else "auto", channels_last=False)
    segmenter = None
    if cfg.seg is not None and trained_folds(run_dir, "seg"):  # the run's own vertebrae where no mask exists
        from spinelab.tasks.cervical.seg3d.segment import Segmenter

        segmenter = Segmenter(run_dir, runtime=runtime, tta=False)
    with progress_bar() as bar:
        task = bar.add_task(f"out-of-fold maps of {stage.name}", total=len(todo), visible=progress and bool(todo))
        for uid in todo:
            fold, path = studies.folds.get(uid), vertebra_mask_path(cfg, uid)
            if path is None and segmenter is None:
                rec: dict[str, Any] = {"status": "no_vertebra_mask"}
            elif fold not in folds:
                rec = {"status": "no_oof_model"}
            else:
                if fold not in models:
                    models[fold] = load_stage_models(stage, [fold])[0]
                ct = studies.volume(uid)
                try:
                    vertebrae = study_vertebrae(path, ct) if path is not None else \
                        np.asarray(segmenter.segment(ct).labels.array)  # type: ignore[union-attr]
                    crop = prepare_crop(ct, vertebrae, cfg.grid)
                except SpinelabError as err:  # e.g. a segmentation without any cervical vertebra
                    done[uid] = {"status": "failed", "error": str(err)}
                    bar.advance(task)
                    continue
                prob = crop_probability([models[fold]], crop.image, cfg.fracture_seg, runtime, tta=False)
                write_nifti(crop.grid.volume(crop.vertebrae.astype(np.uint8), is_label=True), verts / f"{uid}.nii.gz")
                write_nifti(crop.grid.volume(prob.astype(np.float32), is_label=False), maps / f"{uid}.nii.gz")
                rec = {"status": "ok", "fold": int(fold), "vertebrae": "mask" if path is not None else "segmented"}
            done[uid] = rec
            bar.advance(task)
            atomic_write_json(verts / "index.json", {"settings": settings, "studies": done})  # resumable per study
    result = {"settings": settings, "studies": done}
    atomic_write_json(verts / "index.json", result)
    return result


def fit_rule_on_oof(cfg: FracsegConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the percentile rule on the last round's out-of-fold maps; write ``percentile_rule.json`` and
    ``percentile/oof.csv`` (the rule's probabilities with ``true_*`` labels, as every route's ``oof.csv``).

    Raises:
        InputError: no out-of-fold map has labels.
    """
    from spinelab.data.folds import read_folds
    from spinelab.io.nifti import read_nifti
    from spinelab.metrics import cervical_score, cervical_submission_frame
    from spinelab.tasks.cervical.fracseg.percentile import PercentileRule, fit_percentile_rule, summarize_map
    from spinelab.tasks.cervical.studies import CervicalStudies

    labels = CervicalStudies(cfg).labels  # type: ignore[arg-type]
    pairs = {u: p for u, p in oof_pairs(run_dir, cfg.rounds).items() if u in labels.index}
    if not pairs:
        raise InputError(Path(run_dir) / round_name(cfg.rounds), "no out-of-fold fracture map with labels to fit "
                                                                 "the percentile rule on")
    sec = cfg.percentile
    summaries = {u: summarize_map(np.asarray(read_nifti(m).array), np.asarray(read_nifti(v, is_label=True).array),
                                  max_voxels=sec.max_voxels) for u, (m, v) in pairs.items()}
    truth = labels.loc[list(summaries), list(CERVICAL_TARGETS)].reset_index()

    def fit(ids: list[str]) -> PercentileRule:
        return fit_percentile_rule({u: summaries[u] for u in ids}, truth[truth.StudyInstanceUID.isin(ids)],
                                   seed=sec.seed, refine=sec.refine, shared_vertebrae=sec.shared_vertebrae)

    rule = fit(list(summaries))
    # The rule's rows of the CV score are cross-fitted: each fold's studies get a rule fitted on the other
    # folds' maps, so their labels never tuned the numbers that score them (the saved rule uses every study).
    folds = read_folds(run_dir).reindex(list(summaries))
    fold_ids = sorted(folds.dropna().unique())
    wide_parts = []
    for k in fold_ids:
        held = [u for u in summaries if folds[u] == k]
        rest = [u for u in summaries if folds[u] != k]
        fold_rule = fit(rest) if rest else rule
        wide_parts.append(pd.DataFrame([fold_rule.predict_summary(summaries[u]) for u in held], index=held))
    unfolded = [u for u in summaries if pd.isna(folds[u])]  # not in the run's folds: the full rule
    wide_parts.append(pd.DataFrame([rule.predict_summary(summaries[u]) for u in unfolded], index=unfolded))
    wide = pd.concat(wide_parts).loc[truth.StudyInstanceUID]
    wide.index.name = "StudyInstanceUID"
    oof = oof_frame(wide, truth)
    rule.info.update(stage=round_name(cfg.rounds), cross_fitted_folds=len(fold_ids),
                     cross_fitted_score=float(cervical_score(truth, cervical_submission_frame(wide))))
    rule.save(run_dir)
    atomic_write_csv(Path(run_dir) / PERCENTILE_DIR / "oof.csv", oof)
    log.info("percentile rule fitted on %d studies: in-sample score %.4f, cross-fitted over %d folds %.4f (the "
             "seed's numbers: %.4f)", rule.info["studies"], rule.info["oof_score"], len(fold_ids),
             rule.info["cross_fitted_score"], rule.info["seed_parameters_score"])
    return rule.to_json()


def oof_frame(wide: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``StudyInstanceUID``, the 8 probabilities and ``true_<target>`` (the layout of every route's oof.csv)."""
    t = truth.set_index("StudyInstanceUID").loc[wide.index, list(CERVICAL_TARGETS)]
    out = wide[list(CERVICAL_TARGETS)].copy()
    for c in CERVICAL_TARGETS:
        out[f"true_{c}"] = t[c].astype(int).to_numpy()
    out.index.name = "StudyInstanceUID"
    return out.reset_index()
