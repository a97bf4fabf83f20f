"""The cervical training table: labels, folds, derived slice labels and volume access for a dataset.

Every cervical CT, in training (``CervicalStudies.volume``) and at inference, goes through
``prepare_cervical_volume``: the canonical orientation of ``io.orientation`` (D head to feet, rows towards
posterior, columns towards the patient's left), so the models always see the same anatomy whatever the
stored order and in-plane orientation. The derived label tables stay on the stored grid of ``read_series``
(array index, pixel boxes); ``canonical_label_rows`` (any table), ``canonical_slice_table`` and
``canonical_fracture_slices`` move them onto the canonical grid where they are consumed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from spinelab.config.schema import CervicalConfig
from spinelab.errors import InputError
from spinelab.io.orientation import stored_axis_map, to_canonical
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE

__all__ = ["CervicalStudies", "prepare_cervical_volume", "canonical_label_rows", "canonical_slice_table",
           "canonical_fracture_slices", "step_targets"]

_PIXEL_BOX = ["x0", "y0", "x1", "y1"]
_NORM_BOX = ["nx0", "ny0", "nx1", "ny1"]


def prepare_cervical_volume(volume: Volume) -> Volume:
    """A cervical CT as the models see it: in the canonical orientation (``io.orientation.to_canonical``).

    The one place this happens, for training and inference; the result's ``meta["axis_map"]`` says how labels
    on the stored grid follow. Arrays are views (no copy).
    """
    return to_canonical(volume)


def canonical_label_rows(rows: pd.DataFrame, volume: Volume) -> pd.DataFrame:
    """Rows of a derived label table (``slice_labels.csv``, ``fracture_boxes.csv``) of one study, with their
    ``index`` and pixel boxes (``x0 .. y1``, ``nx0 .. ny1``) moved from the stored grid of ``read_series`` onto
    ``volume``'s grid by the move recorded in ``volume.meta["axis_map"]`` (slice order, in-plane flips and
    transpose). Row order and other columns are kept.

    Raises:
        GeometryError: the volume was reoriented across slices (the slice axis moved).
    """
    m = stored_axis_map(volume)
    out = rows.copy()
    out["index"] = m.slice_index(out["index"].to_numpy())
    for cols, normalised in ((_PIXEL_BOX, False), (_NORM_BOX, True)):
        if set(cols) <= set(out.columns):
            out[cols] = m.boxes(out[cols].to_numpy(np.float64), normalised=normalised)
    return out


_MAPPED_VOLUMES = 512  # open memory maps kept (address space only; the pages stay the kernel's to drop)


def _memory_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is, or is a view of, a read-only ``np.memmap`` (a cache entry, not decoded pixels)."""
    while array is not None:
        if isinstance(array, np.memmap):
            return not array.flags.writeable
        array = array.base if isinstance(array.base, np.ndarray) else None
    return False


def canonical_slice_table(rows: pd.DataFrame, volume: Volume) -> pd.DataFrame:
    """One study's ``slice_labels.csv`` rows on ``volume``'s (canonical) grid, indexed ``0 .. D-1`` (slices
    without a row are NaN); see ``canonical_label_rows``."""
    return canonical_label_rows(rows, volume).set_index("index").sort_index().reindex(range(volume.shape[0]))


def canonical_fracture_slices(boxes: dict[str, set[int]] | None, volume: Volume) -> dict[str, set[int]] | None:
    """``CervicalStudies.fracture_slices[uid]`` (stored array indices) as indices of ``volume``'s grid."""
    if not boxes:
        return boxes
    m = stored_axis_map(volume)
    return {v: {int(d) for d in m.slice_index(np.fromiter(idx, dtype=np.int64))} for v, idx in boxes.items()}


def step_targets(slices: np.ndarray, labels: np.ndarray, boxes: dict[str, set[int]] | None) -> np.ndarray:
    """Per-step fracture targets ``(7, steps)``: 1, 0, or -1 for "unknown" (left out of the loss).

    A vertebra labelled intact has no fractured slice, so all its steps are 0. For a fractured vertebra
    the fracture boxes say which slices show the fracture: a step is 1 when one of its slices has a box
    attributed to that vertebra (or to none, when the study has no segmentation). A fractured vertebra
    without boxes (most real positives) is unknown.

    Args:
        slices: ``(7, steps, k)`` array indices of each step (``FractureInputs.slices``).
        labels: study targets in registry order (C1..C7 first).
        boxes: the study's fracture slices on the volume's grid (``canonical_fracture_slices``), or ``None``
            when the study has no boxes.
    """
    boxes = boxes or {}
    out = np.zeros(slices.shape[:2], dtype=np.float32)
    for i, v in enumerate(VERTEBRAE):
        if labels[i] < 0.5:
            continue
        marked = boxes.get(v, set()) | boxes.get("", set())
        if not marked:
            out[i] = -1.0
            continue
        out[i] = [float(any(int(d) in marked for d in step)) for step in slices[i]]
    return out


@dataclass
class CervicalStudies:
    """Everything training needs to know about a cervical dataset.

    Args:
        cfg: the experiment config (``data`` section).
    """

    cfg: CervicalConfig
    # canonical views of memory-mapped cache entries, by (split, uid): a training item reads one vertebra's few
    # slices, and opening the cache and working out the orientation again each time was 40 % of its cost
    _mapped: OrderedDict[tuple[str, str], Volume] = field(default_factory=OrderedDict, init=False, repr=False,
                                                          compare=False)

    @property
    def dataset_dir(self) -> Path:
        return Path(self.cfg.data.dataset_dir)

    @property
    def derived_dir(self) -> Path:
        return Path(self.cfg.data.derived_dir or self.dataset_dir / "derived")

    @cached_property
    def labels(self) -> pd.DataFrame:
        """train.csv indexed by StudyInstanceUID (dropped studies removed)."""
        from spinelab.data.cervical_layout import read_cervical_labels

        return read_cervical_labels(self.dataset_dir / "train.csv",
                                    drop=self.cfg.data.drop_studies).set_index("StudyInstanceUID")

    @cached_property
    def folds(self) -> pd.Series:
        """Fold of each study (``data.folds_file``, else DATASET_DIR/folds.csv, else made in memory)."""
        from spinelab.data.folds import load_folds

        return load_folds(self.cfg).reindex(self.labels.index)

    @cached_property
    def slice_labels(self) -> pd.DataFrame:
        """Per-slice vertebra ratios and C1-C7 boxes (from `spinelab labels cervical`)."""
        path = self.derived_dir / "slice_labels.csv"
        if not path.is_file():
            raise InputError(path, "slice labels not found; run `spinelab labels cervical DATASET_DIR`")
        df = pd.read_csv(path)
        return df[df.StudyInstanceUID.isin(self.labels.index)]

    @cached_property
    def fracture_slices(self) -> dict[str, dict[str, set[int]]]:
        """Array indices (stored grid: see ``canonical_fracture_slices``) of the slices with a fracture box, per
        study and per vertebra (``""`` when the box could not be attributed to one, e.g. the study has no
        segmentation). Studies absent from the map have no boxes (most real RSNA 2022 positives); an absent
        table means no boxes at all."""
        path = self.derived_dir / "fracture_boxes.csv"
        if not path.is_file():
            return {}
        table = pd.read_csv(path, dtype={"vertebra": str}, keep_default_na=False)
        out: dict[str, dict[str, set[int]]] = {}
        for rec in table.itertuples(index=False):
            out.setdefault(rec.StudyInstanceUID, {}).setdefault(rec.vertebra, set()).add(int(rec.index))
        return out

    def segmented_ids(self) -> list[str]:
        """Studies with slice labels (i.e. with a segmentation)."""
        return sorted(self.slice_labels.StudyInstanceUID.unique())

    def split(self, ids: list[str], fold: int | None) -> tuple[list[str], list[str]]:
        """Training and validation ids of ``fold`` (``None``: all for training)."""
        if fold is None:
            return list(ids), []
        f = self.folds.reindex(ids)
        return [i for i in ids if f[i] != fold], [i for i in ids if f[i] == fold]

    def series_path(self, uid: str, split: str = "train") -> str:
        """Relative path of a study's series inside the dataset and the cache."""
        return f"{split}_images/{uid}"

    def volume(self, uid: str, split: str = "train") -> Volume:
        """The study's CT volume in the canonical orientation (``prepare_cervical_volume``): memory-mapped from
        the cache when configured, else decoded."""
        from spinelab.io.cache import load_series

        key = (split, uid)
        if key in self._mapped:
            self._mapped.move_to_end(key)
            return self._mapped[key]
        volume = prepare_cervical_volume(load_series(self.series_path(uid, split), dataset_dir=self.dataset_dir,
                                                     cache_dir=self.cfg.data.cache_dir))
        if _memory_mapped(volume.array):  # a decoded volume is not kept: hundreds of them would not fit in memory
            self._mapped[key] = volume
            if len(self._mapped) > _MAPPED_VOLUMES:
                self._mapped.popitem(last=False)
        return volume

    def targets(self, uid: str) -> np.ndarray:
        """Study labels in registry order (C1..C7, patient_overall), float32."""
        return self.labels.loc[uid, list(CERVICAL_TARGETS)].to_numpy(dtype=np.float32)


