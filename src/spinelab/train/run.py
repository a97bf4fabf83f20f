"""Train one stage on one fold (or on all data) into the run folder, with checkpoints and OOF output.

Run folder layout (the API of ``spinelab predict``; nnU-Net's results folder is the model)::

    RUN_DIR/config.yaml                 resolved config (input contract: windows, sizes, slices)
    RUN_DIR/folds.csv                   the folds used
    RUN_DIR/<stage>/fold_<k>/           checkpoint_best.ckpt, checkpoint_last.ckpt, model.pt,
                                        logs/version_N/ (metrics.csv, TensorBoard), oof.csv, scores.json
    RUN_DIR/<stage>/full/               the same for a model trained on all data (no validation, so no
                                        checkpoint_best: model.pt is the last epoch)
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from spinelab.config.schema import TrainerConfig
from spinelab.io.atomic import atomic_path, atomic_write_csv, atomic_write_json
from spinelab.train.module import SpineModule
from spinelab.train.stage import Stage

__all__ = [
    "train_stage",
    "fold_dir",
    "load_stage_models",
    "trained_folds",
    "select_folds",
    "parse_fold_spec",
    "read_training_log",
]


def fold_dir(run_dir: str | Path, stage: str, fold: int | None) -> Path:
    """``RUN_DIR/<stage>/fold_<k>`` or ``RUN_DIR/<stage>/full``."""
    return Path(run_dir) / stage / ("full" if fold is None else f"fold_{fold}")


def train_stage(stage: Stage, *, trainer_cfg: TrainerConfig, fold: int | None, resume: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Fit ``stage`` on ``fold`` and write checkpoints, weights, logs and out-of-fold predictions.

    Args:
        stage: what to train.
        trainer_cfg: devices, strategy, precision (passed to ``lightning.Trainer``).
        fold: validation fold; ``None`` trains on all data without validation.
        resume: continue from ``checkpoint_last.ckpt`` when it exists (a killed run).
        progress: show a progress bar.

    Returns:
        ``{"dir": fold folder, "scores": validation metrics of the best model, "seconds": training wall time,
        summed over the resumed parts that finished}``.
    """
    tc = stage.train_config
    out = fold_dir(stage.run_dir, stage.name, fold)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(tc.seed + (0 if fold is None else fold), workers=True, verbose=False)
    train_ds, val_ds = stage.datasets(fold)
    collate = stage.collate_fn()
    persistent = tc.num_workers > 0
    train_loader = DataLoader(train_ds, batch_size=tc.batch_size, shuffle=True, num_workers=tc.num_workers,
                              collate_fn=collate, drop_last=len(train_ds) > tc.batch_size,
                              persistent_workers=persistent)
    val_loader = (DataLoader(val_ds, batch_size=tc.batch_size, shuffle=False, num_workers=tc.num_workers,
                             collate_fn=collate, persistent_workers=persistent) if val_ds is not None else None)

    # Two callbacks, not one with save_last=True: Lightning (2.6) refreshes "last" only when a new best was
    # saved in that step, so a resumed run went back to the best epoch and trained the later ones again.
    # The monitor-less callback rewrites checkpoint_last.ckpt after every epoch.
    last_checkpoint = ModelCheckpoint(dirpath=out, filename="checkpoint_last", save_top_k=1, monitor=None,
                                      enable_version_counter=False)
    callbacks: list[Any] = [last_checkpoint, LearningRateMonitor(logging_interval="step")]
    checkpoint = None
    if val_loader is not None and stage.monitor:
        checkpoint = ModelCheckpoint(dirpath=out, filename="checkpoint_best", save_top_k=1, monitor=stage.monitor,
                                     mode="min", enable_version_counter=False)
        callbacks.insert(0, checkpoint)
    if tc.ema:
        callbacks.append(EMAWeightAveraging(decay=tc.ema))
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    # Versioned log folders (logs/version_N): a resumed run appends a new version instead of overwriting.
    loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="logs")]
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices, strategy=trainer_cfg.strategy,
        num_nodes=trainer_cfg.num_nodes, precision=trainer_cfg.precision, max_epochs=tc.epochs,
        accumulate_grad_batches=tc.accumulate, gradient_clip_val=tc.grad_clip,
        limit_train_batches=tc.limit_train_batches, limit_val_batches=tc.limit_val_batches,
        log_every_n_steps=trainer_cfg.log_every_n_steps, deterministic=trainer_cfg.deterministic,
        callbacks=callbacks, logger=loggers, default_root_dir=out, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    module = SpineModule(stage)
    stage.initialize(module.model, fold)  # a resumed run then loads its checkpoint over these weights
    last = out / "checkpoint_last.ckpt"
    resuming = resume and last.is_file()
    # Training time adds up over resumed parts (those that finished; a killed part's time is not known).
    earlier = (json.loads((out / "scores.json").read_text()).get("seconds", 0.0)
               if resuming and (out / "scores.json").is_file() else 0.0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The fold folder holds logs/ (and, on --resume, the checkpoints being continued) by design.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resuming else None)
    seconds = time.perf_counter() - start + earlier
    if trainer.global_rank != 0:
        return {"dir": out, "scores": {}, "seconds": seconds}

    # The best checkpoint holds the (EMA-averaged) weights to keep; model.pt is what inference loads.
    best = Path(checkpoint.best_model_path) if checkpoint is not None and checkpoint.best_model_path else last
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    with atomic_path(out / "model.pt", suffix=".pt") as tmp:
        torch.save(weights, tmp)
    scores: dict[str, Any] = {"epochs": trainer.current_epoch, "global_step": trainer.global_step,
                              "seconds": round(seconds, 1), "best_checkpoint": best.name}
    if val_ds is not None:
        model = stage.build_model()
        model.load_state_dict(weights)
        oof = predict_dataset(stage, model, val_ds)
        atomic_write_csv(out / "oof.csv", oof)
        scores.update({k: float(v) for k, v in stage.evaluate(oof).items()})
    atomic_write_json(out / "scores.json", scores)
    return {"dir": out, "scores": scores, "seconds": seconds}


@torch.inference_mode()
def predict_dataset(stage: Stage, model: torch.nn.Module, dataset: Any, *, batch_size: int | None = None
                    ) -> pd.DataFrame:
    """Run ``model`` over ``dataset`` and collect ``stage.predictions`` rows (CPU, eval mode)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size or stage.train_config.batch_size, shuffle=False,
                        collate_fn=stage.collate_fn(), num_workers=0)
    frames = [stage.predictions(stage.forward(model, batch), batch) for batch in loader]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_training_log(fold_folder: str | Path) -> pd.DataFrame:
    """All CSV logs of one fold (every resumed part, in order) as one frame."""
    parts = sorted(Path(fold_folder).glob("logs/version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.removeprefix("version_")))
    return pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def trained_folds(run_dir: str | Path, stage: str) -> list[int | None]:
    """Folds of ``stage`` that have weights (``None`` stands for the full-data model)."""
    root = Path(run_dir) / stage
    found: list[int | None] = []
    if not root.is_dir():
        return found
    for d in sorted(root.iterdir()):
        if (d / "model.pt").is_file():
            found.append(None if d.name == "full" else int(d.name.removeprefix("fold_")))
    return found


def parse_fold_spec(spec: str, k: int) -> list[int | None]:
    """``"all"`` -> every fold in turn, ``"full"`` -> the all-data model (``None``), ``"0,2"`` -> those folds."""
    if spec == "all":
        return list(range(k))
    if spec == "full":
        return [None]
    try:
        return [int(f) for f in spec.split(",")]
    except ValueError:
        from spinelab.errors import ConfigError

        raise ConfigError(f"--fold must be 'all', 'full' or fold numbers like '0,1', got {spec!r}") from None


def select_folds(run_dir: str | Path, stage: str, folds: list[int | None] | None) -> list[int | None]:
    """Folds of ``stage`` to ensemble: the requested ones (all must be trained), else every trained CV fold,
    else the full-data model."""
    from spinelab.errors import InputError

    available = trained_folds(run_dir, stage)
    if folds is None:
        return [f for f in available if f is not None] or available
    missing = [f for f in folds if f not in available]
    if missing:
        raise InputError(Path(run_dir) / stage, f"folds {missing} not trained (available: {available})")
    return list(folds)


def load_stage_models(stage: Stage, folds: list[int | None] | None = None, *, device: str = "cpu"
                      ) -> list[torch.nn.Module]:
    """Build and load the models of ``stage`` for the given folds (default: every trained fold)."""
    from spinelab.errors import InputError

    folds = trained_folds(stage.run_dir, stage.name) if folds is None else folds
    if not folds:
        raise InputError(stage.run_dir / stage.name, "no trained model (model.pt) found; run `spinelab train`")
    models = []
    for f in folds:
        path = fold_dir(stage.run_dir, stage.name, f) / "model.pt"
        if not path.is_file():
            raise InputError(path, "model weights not found")
        model = stage.build_model()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        models.append(model.eval().to(device))
    return models

