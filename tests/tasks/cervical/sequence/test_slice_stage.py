"""Stage ``slices``: the vertebra AUC from each vertebra's highest held-out slice, overlapping windows averaged."""

from __future__ import annotations

import pandas as pd
import pytest

from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.sequence.slice_stage import evaluate_slices, slice_stage_name


def _rows(uid: str, index: int, c2: float, label_c2: int) -> dict:
    row = {"StudyInstanceUID": uid, "index": index}
    row.update({f"pred_{v}": 0.1 for v in VERTEBRAE})
    row.update({f"label_{v}": 0 for v in VERTEBRAE})
    row["pred_C2"], row["label_C2"] = c2, label_c2
    return row


def test_the_vertebra_auc_reads_each_vertebra_s_highest_slice() -> None:
    rows = [
        _rows("a", 0, 0.9, 1), _rows("a", 1, 0.2, 1),  # fractured C2 with one high slice
        _rows("b", 0, 0.5, 0), _rows("b", 0, 0.0, 0),  # the same slice in two windows: mean 0.25 < 0.9
        _rows("b", 1, 0.3, 0),
    ]
    scores = evaluate_slices(pd.DataFrame(rows))
    # C2 of a (0.9) ranks above C2 of b (0.3) and above every other vertebra (0.1): perfect ranking
    assert scores["auc_vertebra"] == pytest.approx(1.0)
    rows[0]["pred_C2"] = 0.05  # a's highest C2 slice is now 0.2, below b's 0.3
    assert evaluate_slices(pd.DataFrame(rows))["auc_vertebra"] < 1.0


def test_each_seed_has_its_own_stage_folder() -> None:
    assert [slice_stage_name(s) for s in (0, 7)] == ["slices_s0", "slices_s7"]
