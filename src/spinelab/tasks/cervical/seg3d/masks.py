"""The seg3d route's between-stage step: vertebra masks for every training study, then their crops.

As stage 2 of the slice route trains on stage 1's out-of-fold localisation, the classifier stages train on
out-of-fold masks: a study that the ``seg`` stage trained on is segmented by the fold model that held it out,
every other study by the ensemble of the trained folds. ``crops.masks: truth`` uses the dataset's own
segmentations instead (studies without one are left out): it measures the classifiers without segmentation
errors. The crops go to the run folder's crop cache (``crops/``), with ``crops/index.json`` naming each study's
mask source, found vertebrae and vertebra-check warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_json
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.seg3d.crops import CropCache, crop_key, vertebra_crops
from spinelab.tasks.cervical.seg3d.vertebra_stage import CROPS_INDEX
from spinelab.tasks.cervical.studies import CervicalStudies, prepare_cervical_volume

__all__ = ["truth_labels", "write_training_crops"]

log = logging.getLogger("spinelab")


def truth_labels(cfg: Any, uid: str, volume: Volume) -> np.ndarray:
    """The dataset's own mask of ``uid`` (``derived/masks``, written by the route's setup) on ``volume``'s grid
    as model classes (1..7 = C1..C7; 8 = T1 with ``seg.include_t1``, which the crops ignore)."""
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti
    from spinelab.tasks.cervical.seg3d.schemes import remap_labels
    from spinelab.tasks.cervical.seg3d.seg_stage import masks_dir

    on_ct = resample_to(read_nifti(masks_dir(cfg) / f"{uid}.nii.gz", is_label=True), volume, order=0)
    return remap_labels(np.asarray(on_ct.array), cfg.seg.label_scheme, cfg.seg.n_classes)


def _with_masks(cfg: Any, ids: list[str]) -> list[str]:
    """The studies among ``ids`` that have a dataset mask: those the ``seg`` stage trains on."""
    from spinelab.tasks.cervical.seg3d.seg_stage import dataset_cases

    return [case.id for case in dataset_cases(cfg, ids)]


def _segmenters(cfg: Any, run_dir: Path) -> tuple[Callable[[str, Volume], tuple[np.ndarray, list[str], str]], str]:
    """``(uid, canonical volume) -> (labels, warnings, source)`` with the out-of-fold rule, and a tag of the seg
    weights (a retrained ``seg`` stage makes every crop again)."""
    from spinelab.infer.batch import weights_sha256
    from spinelab.tasks.cervical.seg3d.segment import Segmenter
    from spinelab.train.run_folder import fold_dir, trained_folds

    folds = trained_folds(run_dir, "seg")
    if not folds:
        raise InputError(run_dir / "seg", "no trained segmentation model; train the seg stage first "
                                         "(or set crops.masks: truth)")
    shas = weights_sha256(run_dir, [fold_dir(run_dir, "seg", f) / "model.pt" for f in folds])
    tag = "oof:" + ",".join(sorted(shas.values()))
    studies = CervicalStudies(cfg)
    trained_on = set(_with_masks(cfg, list(studies.labels.index)))
    made: dict[Any, Any] = {}

    def segmenter(key: Any) -> Any:
        if key not in made:
            chosen = [key] if key != "all" else ([f for f in folds if f is not None] or folds)
            made[key] = Segmenter(run_dir, folds=chosen, tta=False)
        return made[key]

    def segment(uid: str, volume: Volume) -> tuple[np.ndarray, list[str], str]:
        fold = studies.folds.get(uid)
        key = int(fold) if uid in trained_on and fold is not None and int(fold) in folds else "all"
        result = segmenter(key).segment(volume)  # labels on the grid it is given: here the canonical one
        labels = np.asarray(prepare_cervical_volume(result.labels).array)
        return labels, [str(i) for i in result.issues], f"seg fold {key}" if key != "all" else "seg ensemble"

    return segment, tag


def write_training_crops(cfg: Any, run_dir: Path, context: Any = None, progress: bool = True) -> Path:
    """Masks and crops of every labelled training study into ``run_dir/crops`` (``crops/index.json``).

    Studies already cropped with the same settings and masks are kept; a study that fails is logged and left
    out of training (its error in the index).
    """
    from spinelab.infer.batch import progress_bar

    run_dir = Path(run_dir)
    studies = CervicalStudies(cfg)
    if cfg.crops.masks == "truth":
        def segment(uid: str, volume: Volume) -> tuple[np.ndarray, list[str], str]:
            return truth_labels(cfg, uid, volume), [], "truth"

        ids = _with_masks(cfg, list(studies.labels.index))
        tag = "truth"
    else:
        segment, tag = _segmenters(cfg, run_dir)
        ids = list(studies.labels.index)
    key = crop_key(cfg.crops, tag)
    cache = CropCache(run_dir / "crops", key)
    index_path = run_dir / CROPS_INDEX
    old: dict[str, Any] = {}
    if index_path.is_file():
        import json

        with_key = json.loads(index_path.read_text())
        old = with_key.get("studies", {}) if with_key.get("key") == key else {}
    entries: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with progress_bar() as bar:
        task = bar.add_task("masks and crops", total=len(ids), visible=progress)
        for uid in ids:
            try:
                if uid in old and cache.has(uid):
                    entries[uid] = old[uid]
                else:
                    volume = studies.volume(uid)
                    labels, warnings, source = segment(uid, volume)
                    crops = vertebra_crops(volume, labels, cfg.crops)
                    cache.put(uid, crops)
                    entries[uid] = {"source": source, "found": crops.found.tolist(), "warnings": warnings}
            except SpinelabError as err:
                failed[uid] = str(err)
                log.warning("%s: no crops (%s); left out of training", uid, err)
            bar.advance(task)
    path = atomic_write_json(index_path, {"key": key, "masks": cfg.crops.masks, "studies": entries,
                                          "failed": failed})
    complete = np.mean([all(e["found"]) for e in entries.values()]) if entries else 0.0
    log.info("crops of %d training studies (%s masks); all of %s found in %.0f%%", len(entries), tag.split(":")[0],
             "-".join((VERTEBRAE[0], VERTEBRAE[-1])), 100 * complete)
    return path
