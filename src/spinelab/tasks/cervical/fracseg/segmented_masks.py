"""Vertebra masks that a trained ``seg`` stage makes for boxed studies without one (step ``vertebra_masks``).

A box pseudo-mask needs the study's vertebrae, and the RSNA segmentations cover 87 of the 2019 Kaggle studies, so
most boxed studies have none. With a ``seg`` section and ``pseudo.segment_missing`` (default), the
route's step ``vertebra_masks`` runs after stage ``seg``: every boxed study whose pseudo-mask is recorded
``no_vertebra_mask`` is segmented by the run's ``seg`` models (every trained fold averaged: none of them trained
on a study without a mask), written as ``<derived>/segmented_masks/<UID>.nii.gz`` (uint8 C1-C7 labels with the
CT's affine), and its pseudo-mask is then written as any other (``pseudo_masks.vertebra_mask_path`` reads this
folder last). ``index.json`` records each study's status, the issues of its segmentation (a vertebra missing,
say) and the run and weights that made it. ``spinelab labels cervical DATASET --fracture-masks --vertebra-model
RUN`` does the same with any run holding a trained ``seg`` stage.

The folder sits next to ``fracture_masks`` (in a training run's own ``derived/``, or the dataset's for the
CLI): a study segmented once keeps its mask, and a study whose segmentation failed is not tried again.
Deleting the folder makes the next run segment those studies again and write their pseudo-masks anew.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.config.fracseg import FracsegConfig
from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_json
from spinelab.tasks.cervical.fracseg.pseudo_masks import (
    fracture_masks_dir,
    read_mask_index,
    segmented_masks_dir,
    write_fracture_masks,
)

__all__ = ["SEGMENTED_SCHEMA_VERSION", "missing_vertebra_masks", "segment_missing_vertebrae"]

log = logging.getLogger("spinelab")
SEGMENTED_SCHEMA_VERSION = 1


def missing_vertebra_masks(cfg: FracsegConfig) -> list[str]:
    """Boxed studies whose pseudo-mask is recorded ``no_vertebra_mask``."""
    studies = read_mask_index(fracture_masks_dir(cfg)).get("studies", {})
    return sorted(u for u, rec in studies.items() if rec.get("status") == "no_vertebra_mask")


def _read_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the segmented-mask index: {err}") from None


def segment_missing_vertebrae(cfg: FracsegConfig, seg_run: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Segment the boxed studies without a vertebra mask with ``seg_run``'s ``seg`` stage, then write their
    pseudo-masks (module docstring). The pseudo-mask index must exist (``write_fracture_masks``).

    Returns:
        The pseudo-mask index after the new masks (``write_fracture_masks``'s result).

    Raises:
        InputError: ``seg_run`` has no trained ``seg`` stage (or its weights do not fit), or an index is unreadable.
        ConfigError: ``seg_run`` is a run without a ``seg`` section.
    """
    from spinelab.infer.batch import progress_bar
    from spinelab.infer.runtime import Runtime
    from spinelab.io.nifti import write_nifti
    from spinelab.tasks.cervical.studies import CervicalStudies

    out = segmented_masks_dir(cfg)
    index = _read_index(out / "index.json")
    done: dict[str, Any] = index.get("studies", {})
    # a study whose segmentation failed is not tried again (its error is in the index)
    todo = [u for u in missing_vertebra_masks(cfg)
            if not (out / f"{u}.nii.gz").is_file() and done.get(u, {}).get("status") != "failed"]
    if not todo:
        return write_fracture_masks(cfg, progress=progress)
    from spinelab.tasks.cervical.seg3d.segment import Segmenter

    runtime = Runtime(device="cpu" if cfg.trainer.accelerator == "cpu" else "auto", channels_last=False)
    segmenter = Segmenter(seg_run, runtime=runtime, tta=False)
    made_by = {"run_dir": str(Path(seg_run).resolve()), "weights_sha256": segmenter.weights}
    studies = CervicalStudies(cfg)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task = bar.add_task("vertebra masks of boxed studies", total=len(todo), visible=progress)
        for uid in todo:
            try:
                result = segmenter.segment(studies.volume(uid))
                labels = result.labels.with_array(np.asarray(result.labels.array, dtype=np.uint8), is_label=True)
                write_nifti(labels, out / f"{uid}.nii.gz")
                found = sorted(int(v) for v in np.unique(labels.array) if v)
                done[uid] = {"status": "ok", "labels": found, "issues": [str(i) for i in result.issues], **made_by}
            except SpinelabError as err:  # a refused or unreadable study stays without a vertebra mask
                done[uid] = {"status": "failed", "error": str(err), **made_by}
                log.warning("vertebra mask of %s not made: %s", uid, err)
            # recorded per study: a killed step resumes with the studies not yet written
            atomic_write_json(out / "index.json", {"schema_version": SEGMENTED_SCHEMA_VERSION, "studies": done})
            bar.advance(task)
    made = sum(done[u]["status"] == "ok" for u in todo)
    log.info("segmented %d of %d boxed studies without a vertebra mask (%s)", made, len(todo), out)
    return write_fracture_masks(cfg, progress=progress)
