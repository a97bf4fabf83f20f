"""Stage ``study`` of the sequence route: the frozen slice CNN's embeddings of a whole study -> 8 targets.

For fold k, the CNN of the same fold of the seed's slice stage (it never saw fold k) embeds every route slice of
every study once (``embeddings.EmbeddingCache``), with the slice model's windowed per-slice fracture and ratio
logits appended when ``study.slice_curves`` (``inputs.head_steps``); an item is one study's steps as
``study.max_steps`` steps (``inputs.fit_steps``: resampled when longer, padded and masked when shorter) and its 8
labels. Loss: the competition-weighted BCE normalised per study (``fracture.competition_bce``, the weights of
``metrics/cervical.py``). ``study.cache: false`` runs the frozen CNN for every item instead (what the cache
saves: ``bench/embedding_cache.py``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spinelab.config.schema import TrainConfig
from spinelab.errors import InputError
from spinelab.tasks.cervical.sequence.embeddings import EmbeddingCache
from spinelab.tasks.cervical.sequence.inputs import (
    CURVE_FEATURES,
    fit_steps,
    head_steps,
    slice_images,
    study_embeddings,
    study_positions,
    windowed_outputs,
)
from spinelab.tasks.cervical.sequence.labels import labels_dir, read_slice_labels
from spinelab.tasks.cervical.sequence.slice_stage import SliceSequenceStage
from spinelab.tasks.cervical.studies import CervicalStudies
from spinelab.train.ranks import on_rank_zero
from spinelab.train.stage import Stage

__all__ = ["StudyEmbeddingDataset", "StudyHeadStage", "study_stage_name", "study_stages", "embedder"]

log = logging.getLogger("spinelab")


def study_stage_name(seed: int) -> str:
    """The run-folder name of one seed's study head."""
    return f"study_s{seed}"


@functools.lru_cache(maxsize=8)
def _feature_size(name: str, args: str) -> int:
    from spinelab.models import create_model

    return int(create_model(name, **json.loads(args)).num_features)


def embedder(cfg: Any, run_dir: Path, model: torch.nn.Module, studies: CervicalStudies,
             localization: dict[str, Any]) -> Callable[[str], np.ndarray]:
    """``uid -> (T, F [+ 14])``: the frozen slice model over a training study's route slices, as the predictor
    feeds the study head (the cache's and the uncached dataset's one definition)."""
    s = cfg.slices

    def embed(uid: str) -> np.ndarray:
        z = read_slice_labels(run_dir, uid)["z_range"]
        vol = studies.volume(uid)
        images = slice_images(vol, study_positions(z, s.slice_step), localization[uid]["box"], cfg)
        feats = study_embeddings(model, images)
        curves = windowed_outputs(model, feats, s.window_len, s.window_stride) if cfg.study.slice_curves else None
        return head_steps(feats, curves)

    return embed


class StudyEmbeddingDataset(Dataset):
    """One item = one study's ``max_steps`` embeddings, their mask and the 8 labels.

    Args:
        features: ``uid -> (T, F)`` (the cache's memory-mapped arrays, or the CNN itself).
    """

    def __init__(self, studies: CervicalStudies, ids: list[str], features: Callable[[str], np.ndarray],
                 max_steps: int) -> None:
        self.studies, self.ids, self.features, self.max_steps = studies, list(ids), features, max_steps

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uid = self.ids[i]
        emb, mask = fit_steps(np.asarray(self.features(uid), dtype=np.float32), self.max_steps)
        return {"embedding": torch.from_numpy(emb), "mask": torch.from_numpy(mask),
                "target": torch.from_numpy(self.studies.targets(uid)), "uid": uid}


class StudyHeadStage(Stage):
    """One seed's study head (``study_s<seed>``) on that seed's frozen slice CNN; section ``study``."""

    monitor = "val/loss"

    def __init__(self, cfg: Any, run_dir: Any, seed: int | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.slice_stage = SliceSequenceStage(cfg, run_dir, seed)
        self.seed = self.slice_stage.seed
        self.name = study_stage_name(self.seed)
        self.studies = CervicalStudies(cfg)
        self.last_build: dict[str, Any] = {}

    @property
    def section(self) -> Any:
        return self.cfg.study

    @property
    def train_config(self) -> TrainConfig:
        return self.section.train.model_copy(update={"seed": self.section.train.seed + self.seed})

    def model_kwargs(self) -> dict[str, Any]:
        mc = self.slice_stage.model_config
        args = {**mc.builder_args(), **self.slice_stage.model_kwargs()}
        args.pop("pretrained_path", None)  # the size does not depend on the weights
        args.pop("pretrained_sha256", None)
        return {"in_features": _feature_size(mc.name, json.dumps(args, sort_keys=True, default=str)),
                "curve_features": CURVE_FEATURES if self.section.slice_curves else 0}

    def slice_model(self, fold: int | None) -> tuple[torch.nn.Module, Path]:
        """The frozen CNN of ``fold`` (its slice stage's model of the same fold)."""
        from spinelab.train.run_folder import fold_dir, load_stage_models

        path = fold_dir(self.run_dir, self.slice_stage.name, fold) / "model.pt"
        if not path.is_file():
            raise InputError(path, f"stage {self.name} needs the {self.slice_stage.name} model of the same fold; "
                                   "train the slices stage first")
        gpu = torch.cuda.is_available() and self.cfg.trainer.accelerator in ("auto", "gpu", "cuda")
        return load_stage_models(self.slice_stage, [fold], device="cuda" if gpu else "cpu")[0], path

    def features(self, fold: int | None, ids: list[str], *, progress: bool = True) -> Callable[[str], np.ndarray]:
        """``uid -> (T, F)`` for ``fold``: the cache (built for ``ids`` where missing), or the CNN itself."""
        from spinelab.tasks.cervical.fracture import read_localization

        model, weights = self.slice_model(fold)
        for p in model.parameters():
            p.requires_grad_(False)
        embed = embedder(self.cfg, self.run_dir, model, self.studies, read_localization(self.run_dir))
        if not self.section.cache:
            return embed
        index = labels_dir(self.run_dir) / "index.json"
        labels_key = json.loads(index.read_text()).get("key") if index.is_file() else None
        cache = EmbeddingCache(self.run_dir, self.slice_stage.name, fold, weights, self.cfg, labels_key)
        # Under DDP one process writes the cache and the others wait, then every rank memory-maps the same files.
        self.last_build = on_rank_zero(cache.build, ids, embed, progress=progress)
        return cache.load

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.fracture import read_localization

        loc = read_localization(self.run_dir)
        ids = [u for u in self.studies.labels.index if u in loc]
        train_ids, val_ids = self.studies.split(ids, fold)
        feats = self.features(fold, train_ids + val_ids)
        m = self.section.max_steps
        train = StudyEmbeddingDataset(self.studies, train_ids, feats, m)
        return train, StudyEmbeddingDataset(self.studies, val_ids, feats, m) if val_ids else None

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["embedding"], batch["mask"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from spinelab.tasks.cervical.fracture import competition_bce

        logits = torch.cat([outputs["vertebra"], outputs["overall"][:, None]], dim=1).float()
        return {"loss": competition_bce(logits, batch["target"].float())}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        from spinelab.tasks.cervical.fracture import study_prediction_rows

        return study_prediction_rows(outputs, batch)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        from spinelab.tasks.cervical.fracture import evaluate_cervical

        return evaluate_cervical(predictions)


def study_stages(cfg: Any, run_dir: Any, context: Any = None) -> list[StudyHeadStage]:
    """The ``study`` step: one study head per seed, each on its own seed's CNN."""
    return [StudyHeadStage(cfg, run_dir, seed) for seed in cfg.slices.seeds]
