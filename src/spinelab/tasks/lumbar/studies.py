"""Lumbar studies and series: series choice by description, anatomical slice order, world mapping, labels.

A study folder holds one folder per series. Series are picked by description (``Sagittal T1``,
``Sagittal T2/STIR``, ``Axial T2``) from ``{split}_series_descriptions.csv`` or, when that file is absent
(hospital data), from each series' DICOM SeriesDescription; when the description names no kind, the kind is
inferred from the header (``kind_from_header``: the image plane, then TR/TE/inversion time). Every volume
is reordered so sagittal slices run from the patient's right to left and axial slices from head to feet,
whatever the file order; points move between series through world (LPS mm) coordinates only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.schema import LumbarConfig
from spinelab.data.lumbar_layout import (
    read_descriptions,
    read_lumbar_coordinates,
    read_lumbar_labels,
)
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_LEVELS, lumbar_columns

__all__ = [
    "SERIES_KINDS",
    "series_kind",
    "kind_from_header",
    "classify_series",
    "read_descriptions",
    "orient",
    "instance_index",
    "volume_window",
    "LumbarStudy",
    "load_study",
    "LumbarStudies",
]

#: Internal series kinds, in the order of ``registry.LUMBAR_SERIES_TYPES``.
SERIES_KINDS: tuple[str, ...] = ("sag_t1", "sag_t2", "axial")


def series_kind(description: str) -> str | None:
    """``sag_t1`` / ``sag_t2`` / ``axial`` for a series description, ``None`` when it is none of them."""
    d = str(description).lower()
    if "sag" in d and "t1" in d:
        return "sag_t1"
    if "sag" in d and ("t2" in d or "stir" in d):
        return "sag_t2"
    if ("ax" in d or "tra" in d) and "t2" in d:
        return "axial"
    return None


#: The header tags ``kind_from_header`` reads (one file per series).
KIND_TAGS = ("SeriesDescription", "ImageOrientationPatient", "RepetitionTime", "EchoTime", "InversionTime")
#: STIR's inversion time nulls fat: about 150 ms at 1.5 T, 220 ms at 3 T.
STIR_TI_MS = (100.0, 250.0)
#: T1-weighted: short TR and short TE.
T1_MAX_TR_MS, T1_MAX_TE_MS = 800.0, 30.0
#: T2-weighted: long TE (with a long TR).
T2_MIN_TE_MS, T2_MIN_TR_MS = 60.0, 1500.0


def kind_from_header(tags: dict[str, Any]) -> tuple[str | None, str]:
    """Series kind from the image plane and the sequence timing, and the rule that decided, in words.

    Sagittal (slice normal along the patient's left-right axis): STIR (inversion time 100-250 ms) -> ``sag_t2``;
    TR < 800 ms and TE < 30 ms -> ``sag_t1``; TE > 60 ms and TR > 1500 ms -> ``sag_t2``. Axial (normal along
    head-feet): TE > 60 ms and TR > 1500 ms -> ``axial``. Anything else (coronal, another inversion recovery,
    intermediate timing, missing tags) -> ``None``.
    """
    iop = tags.get("ImageOrientationPatient")
    if not isinstance(iop, list) or len(iop) != 6:
        return None, "no ImageOrientationPatient"
    normal = np.abs(np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float)))
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(normal))]

    def ms(tag: str) -> float | None:
        value = tags.get(tag)
        return float(value) if isinstance(value, float) else None

    tr, te, ti = ms("RepetitionTime"), ms("EchoTime"), ms("InversionTime")
    timing = ", ".join(f"{k} {v:g} ms" for k, v in (("TR", tr), ("TE", te), ("TI", ti)) if v is not None)
    why = f"{plane}, {timing or 'no TR/TE'}"
    stir = ti is not None and STIR_TI_MS[0] <= ti <= STIR_TI_MS[1]
    other_ir = ti is not None and ti > 0 and not stir
    t1 = tr is not None and te is not None and tr < T1_MAX_TR_MS and te < T1_MAX_TE_MS and not other_ir
    t2 = te is not None and te > T2_MIN_TE_MS and (tr is None or tr > T2_MIN_TR_MS) and not other_ir
    if plane == "sagittal":
        if stir:
            return "sag_t2", why + " (STIR)"
        if t1:
            return "sag_t1", why + " (T1)"
        if t2:
            return "sag_t2", why + " (T2)"
    if plane == "axial" and t2 and not stir:
        return "axial", why + " (T2)"
    return None, why


def _series_header(folder: Path) -> dict[str, Any]:
    """``KIND_TAGS`` of the first readable DICOM file of a series folder (``{}`` when none)."""
    from spinelab.infer.checks import file_tags

    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            tags = file_tags(f, KIND_TAGS)
            if tags:
                return tags
    return {}


def classify_series(study_dir: str | Path, descriptions: pd.DataFrame | None = None
                    ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Series folder names of a study by kind, and the series whose kind came from their header.

    Each series' kind comes from its description (the Kaggle table's, else its DICOM SeriesDescription); when
    that names no kind, from ``kind_from_header``.

    Returns:
        ``({kind: [series folder name, ...]}`` for every kind in ``SERIES_KINDS`` (listing order: CSV order,
        else folder-name order), ``{series: rule}`` for the kinds inferred from a header).
    """
    study_dir = Path(study_dir)
    present = sorted(d.name for d in study_dir.iterdir() if d.is_dir()) if study_dir.is_dir() else []
    out: dict[str, list[str]] = {k: [] for k in SERIES_KINDS}
    inferred: dict[str, str] = {}
    listed: list[tuple[str, str | None]] = []
    if descriptions is not None:
        rows = descriptions[descriptions.study_id == study_dir.name]
        pairs = zip(rows.series_id, rows.series_description, strict=True)
        listed = [(s, d) for s, d in pairs if s in present]
    seen = {s for s, _ in listed}
    listed += [(s, None) for s in present if s not in seen]
    for series, desc in listed:
        header: dict[str, Any] | None = None
        if desc is None:
            header = _series_header(study_dir / series)
            desc = str(header.get("SeriesDescription", ""))
        kind = series_kind(desc)
        if kind is None:
            header = _series_header(study_dir / series) if header is None else header
            kind, why = kind_from_header(header)
            if kind is not None:
                inferred[series] = f"{kind} from the header ({why}); description {desc!r}"
        if kind is not None:
            out[kind].append(series)
    return out, inferred


def orient(volume: Volume, kind: str) -> Volume:
    """Reorder slices by world direction: sagittal right -> left (+x LPS), axial head -> feet (-z LPS)."""
    axis, sign = (0, 1.0) if kind.startswith("sag") else (2, -1.0)
    if volume.affine[axis, 0] * sign >= 0 or volume.shape[0] == 1:
        return volume
    depth = volume.shape[0]
    affine = volume.affine.copy()
    affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (depth - 1)
    affine[:3, 0] = -affine[:3, 0]
    meta = dict(volume.meta)
    if isinstance(meta.get("instance_numbers"), list | tuple):
        meta["instance_numbers"] = list(meta["instance_numbers"])[::-1]
    ids = list(volume.slice_ids)[::-1] if volume.slice_ids is not None else None
    return Volume(np.asarray(volume.array)[::-1], affine, slice_ids=ids, meta=meta, is_label=volume.is_label)


def instance_index(volume: Volume, instance_number: int) -> int | None:
    """Array index of a DICOM InstanceNumber (from the volume's meta, else its file names)."""
    numbers = volume.meta.get("instance_numbers")
    if not numbers and volume.slice_ids is not None:
        numbers = [int(s) if str(s).isdigit() else None for s in volume.slice_ids]
    if not numbers:
        return None
    for i, n in enumerate(numbers):
        if n is not None and int(n) == int(instance_number):
            return i
    return None


def volume_window(volume: Volume) -> tuple[float, float]:
    """MR intensity window of a whole series: its 0.5 and 99.5 percentiles (from every other slice)."""
    sample = np.asarray(volume.array[:: max(1, volume.shape[0] // 8)], dtype=np.float32)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-3))


@dataclass
class LumbarStudy:
    """The oriented volumes of one study.

    Args:
        study_id: the study folder name.
        series: ``{kind: [Volume, ...]}`` (listing order; empty when the kind is missing).
        series_ids: ``{kind: [series folder name, ...]}`` matching ``series``.
        warnings: what the loader had to work around (missing kinds, several series).
        inferred: ``{series: rule}`` for the series whose kind came from their header, not a description.
    """

    study_id: str
    series: dict[str, list[Volume]]
    series_ids: dict[str, list[str]]
    warnings: list[str] = field(default_factory=list)
    inferred: dict[str, str] = field(default_factory=dict)
    windows: dict[int, tuple[float, float]] = field(default_factory=dict, repr=False)

    def first(self, kind: str) -> Volume | None:
        """The first series of ``kind`` or ``None``."""
        vols = self.series.get(kind) or []
        return vols[0] if vols else None

    def window(self, volume: Volume) -> tuple[float, float]:
        """Cached ``volume_window`` of one of this study's volumes."""
        key = id(volume)
        if key not in self.windows:
            self.windows[key] = volume_window(volume)
        return self.windows[key]

    @property
    def missing(self) -> list[str]:
        return [k for k in SERIES_KINDS if not self.series.get(k)]


def load_study(study_dir: str | Path, *, descriptions: pd.DataFrame | None = None,
               loader: Any = None, policy: str = "first") -> LumbarStudy:
    """Read and orient the series of one study folder.

    Args:
        study_dir: ``<images>/<study_id>``.
        descriptions: Kaggle descriptions table (``None``: DICOM SeriesDescription).
        loader: ``loader(series_folder: Path) -> Volume``; default ``read_series`` (majority image size).
        policy: ``"first"`` keeps the first listed sagittal series of each kind, ``"all"`` keeps all (axial
            series are always all kept: split axial blocks cover different levels).

    Raises:
        InputError: the study has none of the three series kinds.
    """
    from spinelab.io.dicom import read_series

    study_dir = Path(study_dir)
    listing, inferred = classify_series(study_dir, descriptions)
    if not any(listing.values()):
        raise InputError(study_dir, "no Sagittal T1, Sagittal T2/STIR or Axial T2 series found (by description, "
                                    "nor by image plane and TR/TE/inversion time)")
    load = loader or (lambda p: read_series(p, mixed_sizes="majority"))
    warns: list[str] = []
    series: dict[str, list[Volume]] = {}
    ids: dict[str, list[str]] = {}
    for kind, names in listing.items():
        if len(names) > 1 and kind != "axial" and policy == "first":
            warns.append(f"{len(names)} {kind} series; using the first ({names[0]})")
            names = names[:1]
        series[kind] = [orient(load(study_dir / n), kind) for n in names]
        ids[kind] = list(names)
        if not names:
            warns.append(f"missing {kind} series: predicted from the other views (its inputs are masked)")
    kept = {n for names in ids.values() for n in names}
    return LumbarStudy(study_dir.name, series, ids, warns, inferred={k: v for k, v in inferred.items() if k in kept})


@dataclass
class LumbarStudies:
    """The lumbar training table: labels, folds, descriptions, world points and cached volumes.

    Args:
        cfg: the experiment config (``data`` section).
    """

    cfg: LumbarConfig
    _studies: dict[str, LumbarStudy] = field(default_factory=dict, repr=False)
    _points: dict[str, dict[tuple[str, str], np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def dataset_dir(self) -> Path:
        return Path(self.cfg.data.dataset_dir)

    @cached_property
    def train_table(self) -> pd.DataFrame:
        """train.csv as read (``data.lumbar_layout.read_lumbar_labels``), without ``data.drop_studies``."""
        return read_lumbar_labels(self.dataset_dir / "train.csv", drop=self.cfg.data.drop_studies)

    @cached_property
    def labels(self) -> pd.DataFrame:
        """Grades ``(n, 25)`` int (-1 missing) in ``registry.lumbar_columns()`` order, indexed by study_id."""
        from spinelab.metrics import lumbar_grade_matrix

        df = self.train_table
        grades = lumbar_grade_matrix(df, source=self.dataset_dir / "train.csv")
        present = {d.name for d in (self.dataset_dir / "train_images").iterdir() if d.is_dir()} \
            if (self.dataset_dir / "train_images").is_dir() else set()
        out = pd.DataFrame(grades, index=df.study_id.to_numpy(), columns=lumbar_columns())
        return out[out.index.isin(present)]

    @cached_property
    def raw_labels(self) -> pd.DataFrame:
        """train.csv as read (for the metric), restricted to ``labels``' studies."""
        df = self.train_table
        return df[df.study_id.isin(self.labels.index)].reset_index(drop=True)

    @cached_property
    def folds(self) -> pd.Series:
        """Fold of each study (``data.folds_file``, else DATASET_DIR/folds.csv, else made in memory)."""
        from spinelab.data.folds import load_folds

        return load_folds(self.cfg).reindex(self.labels.index)

    @cached_property
    def descriptions(self) -> pd.DataFrame | None:
        return read_descriptions(self.dataset_dir, "train")

    @cached_property
    def coordinates(self) -> pd.DataFrame:
        """train_label_coordinates.csv with registry condition / level names (empty when absent)."""
        return read_lumbar_coordinates(self.dataset_dir / "train_label_coordinates.csv")

    def split(self, ids: list[str], fold: int | None) -> tuple[list[str], list[str]]:
        """Training and validation ids of ``fold`` (``None``: all for training)."""
        if fold is None:
            return list(ids), []
        f = self.folds.reindex(ids)
        return [i for i in ids if f[i] != fold], [i for i in ids if f[i] == fold]

    def study(self, study_id: str) -> LumbarStudy:
        """The study's oriented volumes (memory-mapped from the cache when configured)."""
        if study_id not in self._studies:
            from spinelab.io.cache import load_series

            def loader(folder: Path) -> Volume:
                rel = f"train_images/{study_id}/{folder.name}"
                return load_series(rel, dataset_dir=self.dataset_dir, cache_dir=self.cfg.data.cache_dir)

            self._studies[study_id] = load_study(self.dataset_dir / "train_images" / study_id,
                                                 descriptions=self.descriptions, loader=loader,
                                                 policy=self.cfg.stage2.series_policy)
        return self._studies[study_id]

    def world_points(self, study_id: str) -> dict[tuple[str, str], np.ndarray]:
        """Labelled points of a study in world (LPS mm): ``{(condition, level): (3,)}``."""
        if study_id in self._points:
            return self._points[study_id]
        st = self.study(study_id)
        by_series = {sid: vol for kind in SERIES_KINDS
                     for sid, vol in zip(st.series_ids[kind], st.series[kind], strict=True)}
        rows = self.coordinates[self.coordinates.study_id == study_id]
        out: dict[tuple[str, str], np.ndarray] = {}
        for r in rows.itertuples(index=False):
            vol = by_series.get(str(r.series_id))
            if vol is None:
                from spinelab.io.cache import load_series

                rel = f"train_images/{study_id}/{r.series_id}"
                if not (self.dataset_dir / rel).is_dir():
                    continue
                vol = load_series(rel, dataset_dir=self.dataset_dir, cache_dir=self.cfg.data.cache_dir)
                by_series[str(r.series_id)] = vol
            d = instance_index(vol, int(r.instance_number))
            if d is not None:
                out[(r.condition, r.level)] = vol.voxel_to_world(np.array([d, r.y, r.x], dtype=np.float64))
        self._points[study_id] = out
        return out

    def level_points(self, study_id: str, condition: str) -> np.ndarray:
        """``(5, 3)`` world points of ``condition`` per level, NaN where unlabelled."""
        pts = self.world_points(study_id)
        return np.stack([pts.get((condition, lv), np.full(3, np.nan)) for lv in LUMBAR_LEVELS])

    def grades(self, study_id: str) -> np.ndarray:
        """``(25,)`` int grades (-1 missing) in ``lumbar_columns()`` order."""
        return self.labels.loc[study_id].to_numpy(dtype=np.int64)


CONDITION_INDEX = {c: i for i, c in enumerate(LUMBAR_CONDITIONS)}
