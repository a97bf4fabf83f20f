"""Tests of the RSNA 2022 cervical metric, its submission frame and the prevalence baseline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from spinelab.errors import InputError
from spinelab.metrics import (
    cervical_prevalence_constant,
    cervical_score,
    cervical_submission_frame,
)
from spinelab.registry import (
    CERVICAL_TARGETS,
    CERVICAL_WEIGHTS,
)
from tests.metrics._helpers import cervical_train


def test_cervical_hand_computed() -> None:
    # One study, fracture at C1 only (so overall = 1); every prediction 0.5:
    #   every row loses ln 2; weights C1=2, C2..C7=1 each (6), overall=14 -> sum 22;
    #   row-normalised = 22 ln2 / 22 = ln 2 = 0.693147.
    sol = cervical_train({"1.2.3": [1, 0, 0, 0, 0, 0, 0]})
    sub = pd.DataFrame({"row_id": [f"1.2.3_{t}" for t in CERVICAL_TARGETS], "fractured": 0.5})
    assert cervical_score(sol, sub) == pytest.approx(math.log(2), abs=1e-12)
    # Now predict C1 = 0.9 (loss -ln 0.9 = 0.105361), all else 0.5:
    #   (2 * 0.105361 + 20 * 0.693147) / 22 = (0.210721 + 13.862944) / 22 = 0.639712.
    sub.loc[0, "fractured"] = 0.9
    assert cervical_score(sol, sub) == pytest.approx((2 * -math.log(0.9) + 20 * math.log(2)) / 22, abs=1e-12)
    assert cervical_score(sol, sub) == pytest.approx(0.639712, abs=1e-6)


def test_cervical_row_vs_global_normalisation() -> None:
    # Study A: no fracture, all predictions 0.5 -> weights 7x1 + 7 = 14, loss ln2 each -> row loss ln2.
    # Study B: C2 fracture, predictions 0.5 except overall 0.99 (loss -ln .99 = 0.0100503):
    #   weights C2=2, six others 1, overall 14 -> 22; sum wl = 8 ln2 + 14 * 0.0100503 = 5.545177 + 0.140705
    #   row loss = 5.685882 / 22 = 0.258449; row-normalised score = (0.693147 + 0.258449) / 2 = 0.475798.
    #   global = (14 ln2 + 5.685882) / (14 + 22) = (9.704061 + 5.685882) / 36 = 0.427498.
    sol = cervical_train({"A": [0] * 7, "B": [0, 1, 0, 0, 0, 0, 0]})
    sub = cervical_submission_frame(pd.DataFrame(0.5, index=["A", "B"], columns=list(CERVICAL_TARGETS)))
    sub.loc[sub["row_id"] == "B_patient_overall", "fractured"] = 0.99
    assert cervical_score(sol, sub) == pytest.approx(0.475798, abs=1e-6)
    assert cervical_score(sol, sub, normalisation="global") == pytest.approx(0.427498, abs=1e-6)
    with pytest.raises(ValueError, match="normalisation"):
        cervical_score(sol, sub, normalisation="study")


def test_cervical_clips_zero_and_one() -> None:
    # A confident wrong prediction costs -ln(1e-15) = 34.538776, not infinity.
    sol = cervical_train({"S": [0] * 7})
    sub = cervical_submission_frame(pd.DataFrame(0.0, index=["S"], columns=list(CERVICAL_TARGETS)))
    sub.loc[sub["row_id"] == "S_C3", "fractured"] = 1.0
    # weights: 7 vertebrae x 1 + overall 7 = 14; only C3 (w=1) is wrong: about 34.54 / 14 = 2.467.
    # (1.0 is clipped to the float 1 - 1e-15, whose complement is 9.992e-16, not exactly 1e-15.)
    assert cervical_score(sol, sub) == pytest.approx(-math.log(1.0 - (1.0 - 1e-15)) / 14, rel=1e-9)
    assert cervical_score(sol, sub) == pytest.approx(2.467, abs=1e-3)


def test_cervical_matches_sklearn_on_random_data(rng: np.random.Generator) -> None:
    n = 30
    y = (rng.random((n, 7)) < 0.2).astype(int)
    sol = cervical_train({f"1.2.{i}": list(y[i]) for i in range(n)})
    p = rng.uniform(0.01, 0.99, size=(n, 8))
    sub = cervical_submission_frame(
        pd.DataFrame(p, index=sol["StudyInstanceUID"], columns=list(CERVICAL_TARGETS))
    )
    truth = sol[list(CERVICAL_TARGETS)].to_numpy()
    weights = np.array(
        [[CERVICAL_WEIGHTS[t][int(v)] for t, v in zip(CERVICAL_TARGETS, row, strict=True)] for row in truth]
    )
    per_study = [log_loss(truth[i], p[i], sample_weight=weights[i], labels=[0, 1]) for i in range(n)]
    assert cervical_score(sol, sub) == pytest.approx(float(np.mean(per_study)), rel=1e-9)
    glob = log_loss(truth.reshape(-1), p.reshape(-1), sample_weight=weights.reshape(-1), labels=[0, 1])
    assert cervical_score(sol, sub, normalisation="global") == pytest.approx(glob, rel=1e-9)
    # The melted Kaggle solution gives the same number, whatever the submission row order.
    melted = pd.DataFrame(
        {
            "row_id": [f"{s}_{t}" for s in sol["StudyInstanceUID"] for t in CERVICAL_TARGETS],
            "fractured": truth.reshape(-1),
        }
    )
    shuffled = sub.sample(frac=1.0, random_state=1)
    assert cervical_score(melted, shuffled) == pytest.approx(float(np.mean(per_study)), rel=1e-9)


def test_cervical_submission_frame_order() -> None:
    probs = pd.DataFrame([[0.1] * 7 + [0.9]], index=["1.2.9"], columns=list(CERVICAL_TARGETS))
    frame = cervical_submission_frame(probs)
    assert frame["row_id"].tolist() == [f"1.2.9_{t}" for t in CERVICAL_TARGETS]
    assert frame["fractured"].tolist()[-1] == 0.9
    with pytest.raises(ValueError, match="patient_overall"):
        cervical_submission_frame(probs.drop(columns="patient_overall"))




def test_cervical_bad_submissions(small_cervical: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    sol, sub = small_cervical
    with pytest.raises(InputError, match=r"96 row ids missing.*1\.2\.0_C1.*first 10 of 96"):
        cervical_score(sol, sub.iloc[:0])
    with pytest.raises(InputError, match=r"1 row ids missing from the submission: 1\.2\.3_C4$"):
        cervical_score(sol, sub[sub["row_id"] != "1.2.3_C4"])
    extra = pd.concat([sub, pd.DataFrame({"row_id": ["9.9_C1"], "fractured": [0.5]})])
    with pytest.raises(InputError, match=r"1 row ids not in the solution: 9\.9_C1"):
        cervical_score(sol, extra)
    with pytest.raises(InputError, match=r"appear more than once: 1\.2\.0_C1"):
        cervical_score(sol, pd.concat([sub, sub.iloc[:1]]))
    nan = sub.copy()
    nan.loc[5, "fractured"] = np.nan
    with pytest.raises(InputError, match=r"1 rows hold NaN.*1\.2\.0_C6"):
        cervical_score(sol, nan)
    out = sub.copy()
    out.loc[[0, 9], "fractured"] = [1.2, -0.1]
    with pytest.raises(InputError, match=r"2 rows hold values outside \[0, 1\]: 1\.2\.0_C1, 1\.2\.1_C2"):
        cervical_score(sol, out)
    text = sub.astype({"fractured": object})
    text.loc[3, "fractured"] = "high"
    with pytest.raises(InputError, match="non-numeric.*1.2.0_C4"):
        cervical_score(sol, text)
    with pytest.raises(InputError, match="columns must be"):
        cervical_score(sol, sub.rename(columns={"fractured": "prob"}))
    with pytest.raises(InputError, match="columns must be"):
        cervical_score(sol, sub.assign(extra=1))


def test_cervical_bad_solution(small_cervical: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    sol, sub = small_cervical
    bad = sol.copy()
    bad.loc[0, "C2"] = 3
    with pytest.raises(InputError, match=r"not 0/1: 1\.2\.0_C2"):
        cervical_score(bad, sub)
    with pytest.raises(InputError, match="solution must have"):
        cervical_score(sol.drop(columns="C7"), sub)


def test_cervical_prevalence_constant_on_real_labels(rsna_labels: Path) -> None:
    train = pd.read_csv(
        rsna_labels / "darraghdog__RSNA22" / "train_folded_v01.csv", dtype={"StudyInstanceUID": str}
    )
    sub = cervical_prevalence_constant(train)
    assert len(sub) == 8 * len(train) == 8 * 2019
    assert cervical_score(train, sub) == pytest.approx(0.5638, abs=5e-4)
    assert cervical_score(train, sub, normalisation="global") == pytest.approx(0.6127, abs=5e-4)
    flat = sub.assign(fractured=0.5)
    assert cervical_score(train, flat) == pytest.approx(math.log(2), abs=1e-9)
