"""Tests of the RSNA 2024 lumbar metric, its submission frame, grade parsing and the weight-optimal constant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from spinelab.errors import InputError
from spinelab.metrics import (
    lumbar_grade_matrix,
    lumbar_score,
    lumbar_score_details,
    lumbar_submission_frame,
    lumbar_weight_optimal_constant,
)
from spinelab.registry import (
    LUMBAR_CONDITIONS,
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_LEVELS,
    condition_group,
    lumbar_columns,
    lumbar_row_ids,
)
from tests.metrics._helpers import lumbar_pair, lumbar_train


def _real_lumbar_train(rsna_labels: Path) -> pd.DataFrame:
    """The 2024 per-(study, T2 series, level) folds file deduplicated to study x level, as train.csv."""
    raw = pd.read_csv(rsna_labels / "lhwcv__solution-rsna-2024-lumbar-spine" / "folds_t2s_each.csv")
    per_level = raw.drop_duplicates(["study_id", "level"])
    # Labels are per study x level: every T2 series of a study carries the same grades.
    assert len(per_level) == raw[["study_id", "level"]].drop_duplicates().shape[0]
    wide = {}
    for cond in LUMBAR_CONDITIONS:
        table = per_level.pivot(index="study_id", columns="level", values=cond)
        for lv_index, lv in enumerate(LUMBAR_LEVELS):
            wide[f"{cond}_{lv}"] = table[lv_index].map(
                lambda g: LUMBAR_GRADE_NAMES[int(g)] if g >= 0 else np.nan
            )
    frame = pd.DataFrame(wide)[lumbar_columns()]
    frame.index = frame.index.astype(str)
    return frame.rename_axis("study_id").reset_index()



def test_lumbar_hand_computed() -> None:
    # One study, every label Normal/Mild except spinal l1_l2 = Severe; prediction (0.7, 0.2, 0.1) everywhere.
    #   spinal: 4 rows y=0 (w=1, loss -ln .7 = 0.356675) + 1 row y=2 (w=4, loss -ln .1 = 2.302585)
    #           = (4 * 0.356675 + 4 * 2.302585) / 8 = 1.329630
    #   foraminal, subarticular: all y=0, w=1 -> 0.356675 each
    #   any_severe: y=1, p = max P(severe) = 0.1, w = 4 -> 2.302585
    #   score = (1.329630 + 0.356675 + 0.356675 + 2.302585) / 4 = 1.086391
    g = np.zeros(25, dtype=int)
    g[lumbar_columns().index("spinal_canal_stenosis_l1_l2")] = 2
    sol, sub = lumbar_pair({"7": g}, np.tile([0.7, 0.2, 0.1], (25, 1)))
    d = lumbar_score_details(sol, sub)
    assert d["spinal"] == pytest.approx(1.329630, abs=1e-6)
    assert d["foraminal"] == pytest.approx(-math.log(0.7), abs=1e-12)
    assert d["subarticular"] == pytest.approx(-math.log(0.7), abs=1e-12)
    assert d["any_severe_spinal"] == pytest.approx(-math.log(0.1), abs=1e-12)
    assert d["score"] == pytest.approx(1.086391, abs=1e-6)
    assert lumbar_score(sol, sub) == d["score"]


def test_lumbar_normalises_rows_and_drops_missing() -> None:
    # Rows (1.4, 0.4, 0.2) are normalised to (0.7, 0.2, 0.1): same numbers as the hand example above
    # (probabilities <= 1 are required, so use (0.35, 0.1, 0.05) = half of it).
    g = np.zeros(25, dtype=int)
    g[lumbar_columns().index("spinal_canal_stenosis_l1_l2")] = 2
    sol, sub = lumbar_pair({"7": g}, np.tile([0.35, 0.1, 0.05], (25, 1)))
    assert lumbar_score(sol, sub) == pytest.approx(1.086391, abs=1e-6)
    # A blank label drops its row: blank out all foraminal rows but one, which we predict badly.
    g2 = g.copy()
    cols = lumbar_columns()
    nfn = [i for i, c in enumerate(cols) if "foraminal" in c]
    g2[nfn[1:]] = -1
    probs = np.tile([0.7, 0.2, 0.1], (25, 1))
    probs[nfn[1:]] = [0.0, 0.0, 1.0]  # unscored rows: any prediction is fine
    probs[nfn[0]] = [0.5, 0.25, 0.25]
    sol2, sub2 = lumbar_pair({"7": g2}, probs)
    assert lumbar_score_details(sol2, sub2)["foraminal"] == pytest.approx(math.log(2), abs=1e-12)


def test_lumbar_matches_sklearn_on_random_data(rng: np.random.Generator) -> None:
    studies = [str(1000 + i) for i in range(25)]
    grades = {s: rng.choice([-1, 0, 0, 0, 1, 2], size=25) for s in studies}
    sol = lumbar_train(grades)
    raw = {s: rng.uniform(0.05, 1.0, size=(25, 3)) for s in studies}
    sub = lumbar_submission_frame(raw)
    d = lumbar_score_details(sol, sub)
    # Direct formulation with sklearn: one-hot truth, normalised probabilities, weights 2**grade.
    cols = lumbar_columns()
    expected = {}
    for group, key in [("spinal", "spinal"), ("foraminal", "foraminal"), ("subarticular", "subarticular")]:
        y, p, w = [], [], []
        for s in studies:
            for j, col in enumerate(cols):
                if key in col and grades[s][j] >= 0:
                    y.append(grades[s][j])
                    p.append(raw[s][j] / raw[s][j].sum())
                    w.append(2 ** grades[s][j])
        expected[group] = log_loss(y, np.array(p), sample_weight=w, labels=[0, 1, 2])
    ya, pa, wa = [], [], []
    spinal = [j for j, c in enumerate(cols) if c.startswith("spinal")]
    for s in studies:
        lab = [j for j in spinal if grades[s][j] >= 0]
        if not lab:
            continue
        ya.append(int(any(grades[s][j] == 2 for j in lab)))
        pa.append(max(raw[s][j][2] / raw[s][j].sum() for j in lab))
        wa.append(max(2 ** grades[s][j] for j in lab))
    expected["any_severe_spinal"] = log_loss(ya, pa, sample_weight=wa, labels=[0, 1])
    for key, value in expected.items():
        assert d[key] == pytest.approx(value, rel=1e-9), key
    assert d["score"] == pytest.approx(np.mean(list(expected.values())), rel=1e-9)
    # Melted Kaggle solution (one-hot + sample_weight, unlabelled rows all zero) scores the same.
    rows = []
    for s in studies:
        for rid, gr in zip(lumbar_row_ids(s), grades[s], strict=True):
            onehot = np.eye(3)[gr] if gr >= 0 else np.zeros(3)
            rows.append(
                {
                    "row_id": rid,
                    **dict(zip(LUMBAR_GRADES, onehot, strict=True)),
                    "sample_weight": 2.0**gr if gr >= 0 else 0.0,
                }
            )
    assert lumbar_score(pd.DataFrame(rows), sub) == pytest.approx(d["score"], rel=1e-12)


def test_lumbar_bad_submissions() -> None:
    sol, sub = lumbar_pair(
        {"11": np.zeros(25, dtype=int), "12": np.ones(25, dtype=int)}, np.tile([0.6, 0.3, 0.1], (25, 1))
    )
    with pytest.raises(InputError, match=r"25 row ids missing.*12_left_neural_foraminal_narrowing_l1_l2"):
        lumbar_score(sol, sub[~sub["row_id"].str.startswith("12_")])
    with pytest.raises(InputError, match="columns must be"):
        lumbar_score(sol, sub.drop(columns="severe"))
    bad = sub.copy()
    bad.loc[3, "moderate"] = np.nan
    with pytest.raises(InputError, match=r"1 rows hold NaN.*11_left_neural_foraminal_narrowing_l4_l5"):
        lumbar_score(sol, bad)
    with pytest.raises(InputError, match="more than once"):
        lumbar_score(sol, pd.concat([sub, sub.iloc[[7]]]))
    with pytest.raises(InputError, match="unknown grade 'Mild'"):
        lumbar_score(sol.replace({"Normal/Mild": "Mild"}), sub)


def test_lumbar_grade_matrix_accepts_numbers() -> None:
    frame = lumbar_train({"5": np.array([0, 1, 2, -1, 0] * 5)})
    numeric = frame.copy()
    numeric[lumbar_columns()] = np.array([[0, 1, 2, np.nan, 0] * 5])
    expected = np.array([[0, 1, 2, -1, 0] * 5])
    assert (lumbar_grade_matrix(frame) == expected).all()
    assert (lumbar_grade_matrix(numeric) == expected).all()


def test_lumbar_weight_optimal_constant_on_real_labels(rsna_labels: Path) -> None:
    train = _real_lumbar_train(rsna_labels)
    assert len(train) == 1975
    sub = lumbar_weight_optimal_constant(train)
    assert len(sub) == 25 * 1975
    d = lumbar_score_details(train, sub)
    assert d["score"] == pytest.approx(0.911, abs=0.01)
    # Per-group values from seed-systems.md 1.2: SCS 0.783, NFN 0.919, SS 1.051, any_severe 0.891.
    assert d["spinal"] == pytest.approx(0.783, abs=0.005)
    assert d["any_severe_spinal"] == pytest.approx(0.891, abs=0.005)
    # The weighted-optimal constant beats the plain class prior under this metric.
    grades = lumbar_grade_matrix(train)
    prior = np.zeros((25, 3))
    groups = [condition_group(c.rsplit("_", 2)[0]) for c in lumbar_columns()]
    for j in range(25):
        g = grades[:, [i for i in range(25) if groups[i] == groups[j]]].reshape(-1)
        prior[j] = [(g == k).mean() / (g >= 0).mean() for k in range(3)]
    plain = lumbar_submission_frame({s: prior for s in train["study_id"]})
    assert lumbar_score(train, plain) > d["score"] + 0.05
