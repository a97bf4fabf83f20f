"""Train one stage on one fold (or on all data) into the run folder, with checkpoints and OOF output.

The run-folder layout and its readers live in ``spinelab.train.run_folder`` (no Lightning import, so
inference can use them); they are re-exported here. Lightning is imported only when training starts.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from spinelab.config.schema import TrainerConfig
from spinelab.errors import InputError
from spinelab.io.atomic import atomic_path, atomic_write_csv, atomic_write_json
from spinelab.train.run_folder import (
    fold_dir,
    load_stage_models,
    model_sha256,
    parse_fold_spec,
    read_training_log,
    safe_torch_load,
    select_folds,
    trained_folds,
)
from spinelab.train.stage import Stage

log = logging.getLogger("spinelab")
#: What ``train.keep`` / ``--keep`` leaves in a finished fold folder besides model.pt, logs and scores.
KEEP_CHOICES: dict[str, tuple[str, ...]] = {
    "all": ("checkpoint_best.ckpt", "checkpoint_last.ckpt"),
    "last": ("checkpoint_last.ckpt",),
    "best": ("checkpoint_best.ckpt",),
    "model": (),
}
SCORES_SCHEMA_VERSION = 1

__all__ = [
    "KEEP_CHOICES",
    "train_stage",
    "train_folds",
    "predict_dataset",
    "fold_dir",
    "load_stage_models",
    "model_sha256",
    "trained_folds",
    "select_folds",
    "parse_fold_spec",
    "read_training_log",
    "safe_torch_load",
]


def _finished(out: Path, epochs: int) -> dict[str, Any] | None:
    """The scores of a fold that already trained ``epochs`` epochs (model.pt written), else ``None``."""
    scores_path, model = out / "scores.json", out / "model.pt"
    if not (scores_path.is_file() and model.is_file()):
        return None
    try:
        scores = json.loads(scores_path.read_text())
    except (OSError, ValueError):
        return None
    return scores if isinstance(scores, dict) and scores.get("epochs", -1) >= epochs else None


def train_stage(stage: Stage, *, trainer_cfg: TrainerConfig, fold: int | None, resume: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Fit ``stage`` on ``fold`` and write checkpoints, weights, logs and out-of-fold predictions.

    Args:
        stage: what to train.
        trainer_cfg: devices, strategy, precision (passed to ``lightning.Trainer``).
        fold: validation fold; ``None`` trains on all data without validation.
        resume: continue from ``checkpoint_last.ckpt`` when it exists (a killed run); a fold that already
            finished its epochs (model.pt and scores.json written) is left as it is.
        progress: show a progress bar.

    Returns:
        ``{"dir": fold folder, "scores": validation metrics of the best model, "seconds": training wall time,
        summed over the resumed parts that finished}``.

    Raises:
        InputError: ``checkpoint_last.ckpt`` holds more than tensors and plain data, cannot be read, or has
            finished more epochs than the stage now trains.
    """
    from spinelab.train.ranks import is_global_zero, on_rank_zero

    tc = stage.train_config
    out = fold_dir(stage.run_dir, stage.name, fold)
    # Under DDP rank 0 decides what --resume does (its node reads the shared run folder) and every process
    # follows: a process that saw another state would wait forever in a collective the others never join.
    if resume and (done := on_rank_zero(_finished, out, tc.epochs)) is not None:
        if not is_global_zero():
            return {"dir": out, "scores": {}, "seconds": float(done.get("seconds", 0.0))}
        log.info("%s: already trained (%s epochs); --resume leaves it as it is", out, done.get("epochs"))
        return {"dir": out, "scores": done, "seconds": float(done.get("seconds", 0.0))}
    last = out / "checkpoint_last.ckpt"
    resuming = resume and on_rank_zero(last.is_file)
    if resuming:
        # Lightning loads it again below, also with weights_only=True; this load gives the one-line error.
        finished = int(safe_torch_load(last).get("epoch", -1)) + 1
        if finished > tc.epochs:  # Lightning would stop with a traceback on the restored epoch counter
            raise InputError(last, f"the killed run already finished {finished} epochs, more than train.epochs="
                                   f"{tc.epochs}; set train.epochs to {finished} or more, or train without --resume")
    import lightning as L
    from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from spinelab.train.module import SpineModule

    on_rank_zero(out.mkdir, parents=True, exist_ok=True)
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

        # stderr: rich's global console otherwise moves to stdout, where only results belong
        callbacks.append(RichProgressBar(leave=True, console_kwargs={"stderr": True}))
    # Versioned log folders (logs/version_N): a resumed run appends a new version instead of overwriting.
    loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="logs")]
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices, strategy=trainer_cfg.strategy,
        num_nodes=trainer_cfg.num_nodes, precision=trainer_cfg.precision, max_epochs=tc.epochs,
        accumulate_grad_batches=tc.accumulate, gradient_clip_val=tc.grad_clip,
        limit_train_batches=tc.limit_train_batches, limit_val_batches=tc.limit_val_batches,
        check_val_every_n_epoch=tc.epochs if tc.validation == "last_epoch" else 1,
        log_every_n_steps=trainer_cfg.log_every_n_steps, deterministic=trainer_cfg.deterministic,
        callbacks=callbacks, logger=loggers, default_root_dir=out, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    module = SpineModule(stage)
    stage.initialize(module.model, fold)  # a resumed run then loads its checkpoint over these weights
    # Training time adds up over resumed parts (those that finished; a killed part's time is not known).
    earlier = (json.loads((out / "scores.json").read_text()).get("seconds", 0.0)
               if resuming and (out / "scores.json").is_file() else 0.0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The fold folder holds logs/ (and, on --resume, the checkpoints being continued) by design.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # Under DDP the stage's metrics are computed once from every rank's rows and logged unreduced on
        # purpose (spinelab.train.module); the epoch means of the training losses are rank 0's shard.
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(")
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resuming else None,
                    weights_only=True)
    seconds = time.perf_counter() - start + earlier
    if trainer.global_rank != 0:
        return {"dir": out, "scores": {}, "seconds": seconds}

    # The best checkpoint holds the (EMA-averaged) weights to keep; model.pt is what inference loads.
    best = Path(checkpoint.best_model_path) if checkpoint is not None and checkpoint.best_model_path else last
    if not best.is_file():
        # A fold continued with more epochs after train.keep removed its best checkpoint, and no later
        # epoch did better: the last epoch is what is left.
        log.warning("%s: best checkpoint %s no longer exists; model.pt takes the last epoch", out, best.name)
        best = last
    best_ckpt = safe_torch_load(best)
    state = best_ckpt["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    with atomic_path(out / "model.pt", suffix=".pt") as tmp:
        torch.save(weights, tmp)
    scores: dict[str, Any] = {"schema_version": SCORES_SCHEMA_VERSION, "epochs": trainer.current_epoch,
                              "global_step": trainer.global_step, "seconds": round(seconds, 1),
                              "best_checkpoint": best.name, "best_epoch": int(best_ckpt.get("epoch", -1)),
                              "model_sha256": model_sha256(out / "model.pt")}
    if val_ds is not None:
        model = stage.build_model()
        model.load_state_dict(weights)
        oof = predict_dataset(stage, model, val_ds)
        atomic_write_csv(out / "oof.csv", oof)
        scores.update({k: float(v) for k, v in stage.evaluate(oof).items()})
    kept = _prune_checkpoints(out, tc.keep)
    scores["checkpoints_kept"] = kept
    atomic_write_json(out / "scores.json", scores)
    return {"dir": out, "scores": scores, "seconds": seconds}


def train_folds(stage: Stage, folds: list[int | None], *, trainer_cfg: TrainerConfig, resume: bool = False,
                progress: bool = True) -> list[dict[str, Any]]:
    """``train_stage`` for each fold in turn; the weight hashes of provenance.json follow each fold."""
    from spinelab.train.provenance import record_weights

    results = []
    for f in folds:
        results.append(train_stage(stage, trainer_cfg=trainer_cfg, fold=f, resume=resume, progress=progress))
        if results[-1]["scores"]:  # rank 0 only: the other ranks return no scores
            record_weights(stage.run_dir)
    return results


def _prune_checkpoints(out: Path, keep: str) -> list[str]:
    """Delete the Lightning checkpoints of a finished fold that ``keep`` does not name; return those left.

    ``best`` falls back to ``checkpoint_last.ckpt`` when the stage has no best checkpoint (no validation
    fold or no monitor), since that one then holds the weights of model.pt.
    """
    wanted = set(KEEP_CHOICES[keep])
    if keep == "best" and not (out / "checkpoint_best.ckpt").is_file():
        wanted = {"checkpoint_last.ckpt"}
    for ckpt in out.glob("checkpoint_*.ckpt"):
        if ckpt.name not in wanted:
            try:
                ckpt.unlink()
            except OSError as err:
                raise InputError(ckpt, f"cannot delete (train.keep={keep}): {err.strerror or err}") from None
    return sorted(p.name for p in out.glob("checkpoint_*.ckpt"))


@torch.inference_mode()
def predict_dataset(stage: Stage, model: torch.nn.Module, dataset: Any, *, batch_size: int | None = None
                    ) -> pd.DataFrame:
    """Run ``model`` over ``dataset`` and collect ``stage.predictions`` rows (CPU, eval mode)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size or stage.train_config.batch_size, shuffle=False,
                        collate_fn=stage.collate_fn(), num_workers=0)
    frames = [stage.predictions(stage.forward(model, batch), batch) for batch in loader]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
