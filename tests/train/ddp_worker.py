"""One process of the two-process gloo DDP test (``tests/train/test_module_ddp.py``), started by torchrun.

Its stage's predictions depend only on the sample id, so the metrics of the gathered rows can be compared
exactly with ``Stage.evaluate`` of the whole validation set in one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tests.train.boring import BoringStage, LinearProblem

#: 7 validation samples: with 2 ranks the sampler pads rank 1 with sample 0 again.
VAL_PROB = np.array([0.9, 0.2, 0.7, 0.35, 0.6, 0.1, 0.8])
VAL_TRUE = np.array([0, 0, 1, 1, 0, 1, 1])


class ValSet(Dataset):
    def __len__(self) -> int:
        return len(VAL_PROB)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": torch.full((8,), float(i)), "y": torch.zeros(1), "id": i}


class AucStage(BoringStage):
    """Validation rows = (id, prob, true) fixed per sample; the metric is a global AUC and a mean log loss."""

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        return LinearProblem(8, 0), ValSet()

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        ids = batch["id"].numpy()
        return pd.DataFrame({"id": ids, "prob": VAL_PROB[ids], "true": VAL_TRUE[ids]})

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return evaluate_rows(predictions)


def evaluate_rows(rows: pd.DataFrame) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    p = rows["prob"].to_numpy()
    y = rows["true"].to_numpy()
    out = {"logloss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), "n_rows": float(len(rows))}
    if 0 < y.sum() < len(y):
        out["auc"] = float(roc_auc_score(y, p))
    return out


def main(out: Path) -> None:
    import lightning as L

    from spinelab.train.module import SpineModule

    stage = AucStage(out)
    train_ds, val_ds = stage.datasets(0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", num_nodes=1, max_epochs=1,
                        limit_train_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    module = SpineModule(stage)
    module.model = nn.Linear(8, 1)
    trainer.fit(module, DataLoader(train_ds, batch_size=4), DataLoader(val_ds, batch_size=2))
    result = {"world_size": trainer.world_size,
              "logged": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
              "val_metrics": getattr(module, "val_metrics", None)}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
