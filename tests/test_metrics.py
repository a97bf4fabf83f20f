"""Tests of the two competition metrics, the submission frames and the constant baselines."""

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
    lumbar_grade_matrix,
    lumbar_score,
    lumbar_score_details,
    lumbar_submission_frame,
    lumbar_weight_optimal_constant,
    score_files,
)
from spinelab.registry import (
    CERVICAL_TARGETS,
    CERVICAL_WEIGHTS,
    LUMBAR_CONDITIONS,
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_LEVELS,
    condition_group,
    lumbar_columns,
    lumbar_row_ids,
)


# --- helpers ----------------------------------------------------------------------------------------------
def _cervical_train(rows: dict[str, list[int]]) -> pd.DataFrame:
    """train.csv frame from ``{uid: [C1..C7]}``; patient_overall = max."""
    records = [
        {
            "StudyInstanceUID": uid,
            "patient_overall": max(v),
            **dict(zip(CERVICAL_TARGETS[:7], v, strict=True)),
        }
        for uid, v in rows.items()
    ]
    return pd.DataFrame(records)[["StudyInstanceUID", "patient_overall", *CERVICAL_TARGETS[:7]]]


def _lumbar_train(grades: dict[str, np.ndarray]) -> pd.DataFrame:
    """train.csv frame from ``{study_id: (25,) int grades, -1 = blank}``."""
    records = []
    for sid, g in grades.items():
        rec: dict[str, object] = {"study_id": sid}
        for col, v in zip(lumbar_columns(), g, strict=True):
            rec[col] = LUMBAR_GRADE_NAMES[v] if v >= 0 else np.nan
        records.append(rec)
    return pd.DataFrame(records)


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


# --- cervical ---------------------------------------------------------------------------------------------
def test_cervical_hand_computed() -> None:
    # One study, fracture at C1 only (so overall = 1); every prediction 0.5:
    #   every row loses ln 2; weights C1=2, C2..C7=1 each (6), overall=14 -> sum 22;
    #   row-normalised = 22 ln2 / 22 = ln 2 = 0.693147.
    sol = _cervical_train({"1.2.3": [1, 0, 0, 0, 0, 0, 0]})
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
    sol = _cervical_train({"A": [0] * 7, "B": [0, 1, 0, 0, 0, 0, 0]})
    sub = cervical_submission_frame(pd.DataFrame(0.5, index=["A", "B"], columns=list(CERVICAL_TARGETS)))
    sub.loc[sub["row_id"] == "B_patient_overall", "fractured"] = 0.99
    assert cervical_score(sol, sub) == pytest.approx(0.475798, abs=1e-6)
    assert cervical_score(sol, sub, normalisation="global") == pytest.approx(0.427498, abs=1e-6)
    with pytest.raises(ValueError, match="normalisation"):
        cervical_score(sol, sub, normalisation="study")


def test_cervical_clips_zero_and_one() -> None:
    # A confident wrong prediction costs -ln(1e-15) = 34.538776, not infinity.
    sol = _cervical_train({"S": [0] * 7})
    sub = cervical_submission_frame(pd.DataFrame(0.0, index=["S"], columns=list(CERVICAL_TARGETS)))
    sub.loc[sub["row_id"] == "S_C3", "fractured"] = 1.0
    # weights: 7 vertebrae x 1 + overall 7 = 14; only C3 (w=1) is wrong: about 34.54 / 14 = 2.467.
    # (1.0 is clipped to the float 1 - 1e-15, whose complement is 9.992e-16, not exactly 1e-15.)
    assert cervical_score(sol, sub) == pytest.approx(-math.log(1.0 - (1.0 - 1e-15)) / 14, rel=1e-9)
    assert cervical_score(sol, sub) == pytest.approx(2.467, abs=1e-3)


def test_cervical_matches_sklearn_on_random_data(rng: np.random.Generator) -> None:
    n = 30
    y = (rng.random((n, 7)) < 0.2).astype(int)
    sol = _cervical_train({f"1.2.{i}": list(y[i]) for i in range(n)})
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


@pytest.fixture
def small_cervical() -> tuple[pd.DataFrame, pd.DataFrame]:
    sol = _cervical_train({f"1.2.{i}": [i % 2, 0, 0, 0, 0, 0, 0] for i in range(12)})
    sub = cervical_submission_frame(
        pd.DataFrame(0.3, index=sol["StudyInstanceUID"], columns=list(CERVICAL_TARGETS))
    )
    return sol, sub


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


# --- lumbar -----------------------------------------------------------------------------------------------
def _lumbar_pair(grades: dict[str, np.ndarray], probs: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _lumbar_train(grades), lumbar_submission_frame({s: probs for s in grades})


def test_lumbar_hand_computed() -> None:
    # One study, every label Normal/Mild except spinal l1_l2 = Severe; prediction (0.7, 0.2, 0.1) everywhere.
    #   spinal: 4 rows y=0 (w=1, loss -ln .7 = 0.356675) + 1 row y=2 (w=4, loss -ln .1 = 2.302585)
    #           = (4 * 0.356675 + 4 * 2.302585) / 8 = 1.329630
    #   foraminal, subarticular: all y=0, w=1 -> 0.356675 each
    #   any_severe: y=1, p = max P(severe) = 0.1, w = 4 -> 2.302585
    #   score = (1.329630 + 0.356675 + 0.356675 + 2.302585) / 4 = 1.086391
    g = np.zeros(25, dtype=int)
    g[lumbar_columns().index("spinal_canal_stenosis_l1_l2")] = 2
    sol, sub = _lumbar_pair({"7": g}, np.tile([0.7, 0.2, 0.1], (25, 1)))
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
    sol, sub = _lumbar_pair({"7": g}, np.tile([0.35, 0.1, 0.05], (25, 1)))
    assert lumbar_score(sol, sub) == pytest.approx(1.086391, abs=1e-6)
    # A blank label drops its row: blank out all foraminal rows but one, which we predict badly.
    g2 = g.copy()
    cols = lumbar_columns()
    nfn = [i for i, c in enumerate(cols) if "foraminal" in c]
    g2[nfn[1:]] = -1
    probs = np.tile([0.7, 0.2, 0.1], (25, 1))
    probs[nfn[1:]] = [0.0, 0.0, 1.0]  # unscored rows: any prediction is fine
    probs[nfn[0]] = [0.5, 0.25, 0.25]
    sol2, sub2 = _lumbar_pair({"7": g2}, probs)
    assert lumbar_score_details(sol2, sub2)["foraminal"] == pytest.approx(math.log(2), abs=1e-12)


def test_lumbar_matches_sklearn_on_random_data(rng: np.random.Generator) -> None:
    studies = [str(1000 + i) for i in range(25)]
    grades = {s: rng.choice([-1, 0, 0, 0, 1, 2], size=25) for s in studies}
    sol = _lumbar_train(grades)
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
    sol, sub = _lumbar_pair(
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
    frame = _lumbar_train({"5": np.array([0, 1, 2, -1, 0] * 5)})
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


# --- files ------------------------------------------------------------------------------------------------
def test_score_files(tmp_path: Path, small_cervical: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    sol, sub = small_cervical
    sol.to_csv(tmp_path / "train.csv", index=False)
    sub.to_csv(tmp_path / "submission.csv", index=False)
    value = score_files(tmp_path / "train.csv", tmp_path / "submission.csv", task="cervical")
    assert value == pytest.approx(cervical_score(sol, sub), rel=1e-12)
    sub.iloc[:-3].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match=r"short\.csv: 3 row ids missing"):
        score_files(tmp_path / "train.csv", tmp_path / "short.csv", task="cervical")
    with pytest.raises(InputError, match="not found"):
        score_files(tmp_path / "nope.csv", tmp_path / "submission.csv", task="cervical")
    # Lumbar: numeric-looking study ids stay strings and match the row ids.
    lsol, lsub = _lumbar_pair({"4003253": np.zeros(25, dtype=int)}, np.tile([0.8, 0.1, 0.1], (25, 1)))
    lsol.to_csv(tmp_path / "ltrain.csv", index=False)
    lsub.to_csv(tmp_path / "lsub.csv", index=False)
    lvalue = score_files(tmp_path / "ltrain.csv", tmp_path / "lsub.csv", task="lumbar")
    assert lvalue == pytest.approx(lumbar_score(lsol, lsub), rel=1e-12)
