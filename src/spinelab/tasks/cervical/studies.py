"""The cervical training table: labels, folds, derived slice labels and volume access for a dataset."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from spinelab.config.schema import CervicalConfig
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS

__all__ = ["CervicalStudies", "head_first"]


def head_first(volume: Volume) -> bool:
    """True when array index 0 is the most cranial slice (the D axis points towards the feet)."""
    # LPS: +z is superior. The sign of the D axis' z component decides, whatever the file order was.
    return bool(volume.affine[2, 0] < 0)


@dataclass
class CervicalStudies:
    """Everything training needs to know about a cervical dataset.

    Args:
        cfg: the experiment config (``data`` section).
    """

    cfg: CervicalConfig

    @property
    def dataset_dir(self) -> Path:
        return Path(self.cfg.data.dataset_dir)

    @property
    def derived_dir(self) -> Path:
        return Path(self.cfg.data.derived_dir or self.dataset_dir / "derived")

    @cached_property
    def labels(self) -> pd.DataFrame:
        """train.csv indexed by StudyInstanceUID (dropped studies removed)."""
        path = self.dataset_dir / "train.csv"
        if not path.is_file():
            raise InputError(path, "train.csv not found: is this an RSNA 2022 dataset folder?")
        df = pd.read_csv(path)
        missing = [c for c in ("StudyInstanceUID", *CERVICAL_TARGETS) if c not in df.columns]
        if missing:
            raise InputError(path, f"missing columns {missing}")
        df = df[~df.StudyInstanceUID.isin(self.cfg.data.drop_studies)]
        return df.set_index("StudyInstanceUID")

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
        """Array indices of the slices with a fracture box, per study and per vertebra (``""`` when the box
        could not be attributed to one, e.g. the study has no segmentation). Studies absent from the map
        have no boxes (most real RSNA 2022 positives); an absent table means no boxes at all."""
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
        """The study's CT volume: memory-mapped from the cache when configured, else decoded."""
        from spinelab.io.cache import load_series

        return load_series(self.series_path(uid, split), dataset_dir=self.dataset_dir,
                           cache_dir=self.cfg.data.cache_dir)

    def targets(self, uid: str) -> np.ndarray:
        """Study labels in registry order (C1..C7, patient_overall), float32."""
        return self.labels.loc[uid, list(CERVICAL_TARGETS)].to_numpy(dtype=np.float32)


