"""The percentile rule: applying it, its summaries, and its seeded fit on out-of-fold maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinelab.errors import InputError
from spinelab.registry import CERVICAL_TARGETS, CERVICAL_WEIGHTS, VERTEBRAE
from spinelab.tasks.cervical.fracseg.percentile import (
    RULE_FILE,
    SEED_PARAMETERS,
    PercentileRule,
    RuleParameters,
    fit_percentile_rule,
    summarize_map,
)


def _labels_for(p: np.ndarray, copies: int, rounds: int = 4) -> np.ndarray:
    """``(copies, 8)`` labels whose metric-optimal constant per target is ``p`` (up to 1 / copies).

    The row-normalised metric weighs a positive twice a negative, divided by each study's weight sum, so the
    best constant for a group of studies is their weighted positive share, not their positive share: the count
    of positives of each target is set (a few rounds, each target given the others) to bring that share to p.
    """
    neg = np.array([CERVICAL_WEIGHTS[t][0] for t in CERVICAL_TARGETS])
    pos = np.array([CERVICAL_WEIGHTS[t][1] for t in CERVICAL_TARGETS])
    order = (np.arange(copies)[:, None] + np.arange(8)[None, :] * (copies // 8)) % copies  # spread positives
    counts = np.round(copies * p / (2 - p)).astype(int)
    for _ in range(rounds):
        for j in range(8):
            y = order < counts[None, :]
            rest = np.where(y, pos, neg).sum(1) - np.where(y[:, j], pos[j], neg[j])
            yj = order[None, :, j] < np.arange(copies + 1)[:, None]  # every count of positives at once
            wj = np.where(yj, pos[j], neg[j]) / (rest[None, :] + np.where(yj, pos[j], neg[j]))
            counts[j] = int(np.argmin(np.abs((wj * yj).sum(1) / wj.sum(1) - p[j])))
    return (order < counts[None, :]).astype(int)


def _toy_case(truth: dict[str, RuleParameters], copies: int = 200, vertebrae: tuple[str, ...] = VERTEBRAE):
    """Studies whose labels follow the rule ``truth``: each map has one fractured-looking vertebra (background
    below 0.1, in varying amounts, plus evenly spread signal from its alpha up); ``copies`` studies share a map,
    labelled so that the metric's best constant for them is the rule's probability (``_labels_for``)."""
    summaries, rows = {}, []
    for k, v in enumerate(VERTEBRAE, start=1):
        if v not in vertebrae:
            continue
        a = truth[v].alpha
        for top, n_bg, n_signal in zip(np.linspace(a + 0.05, 0.99, 9), [10, 50, 200] * 3,
                                       [5, 5, 5, 11, 11, 11, 30, 30, 30], strict=True):
            voxels = np.concatenate([np.linspace(0.0, 0.099, n_bg), np.linspace(a + 1e-3, top, n_signal)])
            prob = voxels.reshape(1, 1, -1)
            summary = summarize_map(prob, np.full(prob.shape, k))
            p = PercentileRule(truth).predict_summary(summary)
            y = _labels_for(np.array([p[t] for t in CERVICAL_TARGETS]), copies)
            for c in range(copies):
                sid = f"{v}_{top:.3f}_{c}"
                summaries[sid] = summary
                rows.append({"StudyInstanceUID": sid, **dict(zip(CERVICAL_TARGETS, y[c].tolist(), strict=True))})
    return summaries, pd.DataFrame(rows)


def _rule(alpha: float, beta: float, lo: float) -> RuleParameters:
    """Parameters whose upper clip binds for a third of the maps (the highest raw score is a + b (0.99 - a))."""
    return RuleParameters(alpha=alpha, beta=beta, lo=lo, hi=round(alpha + beta * (0.99 - alpha) * 0.7, 3))


TRUTH = {**{v: _rule(0.1 + 0.02 * i, 0.3 + 0.06 * i, 0.1) for i, v in enumerate(VERTEBRAE)},
         "patient_overall": _rule(0.1, 0.5, 0.2)}


def test_fit_recovers_known_parameters() -> None:
    summaries, labels = _toy_case(TRUTH)
    rule = fit_percentile_rule(summaries, labels, seed=0, refine=20)
    for t in CERVICAL_TARGETS:
        got, want = rule.parameters[t], TRUTH[t]
        assert abs(got.beta - want.beta) <= 0.02, (t, got, want)
        assert abs(got.lo - want.lo) <= 0.01, (t, got, want)
        assert abs(got.hi - want.hi) <= 0.01, (t, got, want)
        # alpha matters only where it changes the voxel set: anywhere between the background and the signal
        assert 0.099 < got.alpha <= want.alpha + 2e-3, (t, got, want)  # float32 voxels
    assert rule.info["oof_score"] < rule.info["seed_parameters_score"]
    assert rule.info["seed"] == 0 and rule.info["studies"] == len(labels)


def test_shared_fit_recovers_one_rule_for_every_vertebra() -> None:
    shared = _rule(0.15, 0.5, 0.1)
    truth = {**{v: shared for v in VERTEBRAE}, "patient_overall": TRUTH["patient_overall"]}
    summaries, labels = _toy_case(truth, copies=60)
    rule = fit_percentile_rule(summaries, labels, seed=0, refine=10, shared_vertebrae=True)
    fitted = {rule.parameters[v] for v in VERTEBRAE}
    assert len(fitted) == 1  # one set of numbers, not seven
    got = fitted.pop()
    assert abs(got.beta - shared.beta) <= 0.02 and abs(got.lo - shared.lo) <= 0.01 and abs(got.hi - shared.hi) <= 0.01
    assert rule.parameters["patient_overall"] != got and rule.info["search"]["shared_vertebrae"] is True


def test_fit_is_seeded_and_round_trips(tmp_path) -> None:
    summaries, labels = _toy_case(TRUTH, copies=4, vertebrae=("C2",))
    a = fit_percentile_rule(summaries, labels, seed=3, refine=10, alphas=[0.1])
    b = fit_percentile_rule(summaries, labels, seed=3, refine=10, alphas=[0.1])
    assert a.parameters == b.parameters
    a.save(tmp_path)
    back = PercentileRule.load(tmp_path)
    assert back.parameters == a.parameters
    assert back.info["oof_score"] == pytest.approx(a.info["oof_score"])


def test_rule_on_a_map() -> None:
    prob = np.zeros((4, 4, 4), np.float32)
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2] = 2  # C2
    labels[2:] = 5  # C5
    prob[0, 0, :] = [0.2, 0.4, 0.6, 0.8]  # in C2
    rule = PercentileRule({t: RuleParameters(alpha=0.1, beta=0.5, lo=0.05, hi=0.95) for t in CERVICAL_TARGETS})
    out = rule.predict(prob, labels)
    assert out["C2"] == pytest.approx(0.5)  # median of 0.2..0.8
    assert out["patient_overall"] == pytest.approx(0.5)  # any vertebra: the same voxels
    assert out["C5"] == pytest.approx(0.05)  # no voxel above alpha: the lower clip
    assert out["C1"] == pytest.approx(0.05)  # no such vertebra


def test_summary_thins_and_checks_shapes() -> None:
    prob = np.linspace(0, 1, 10_000).reshape(10, 10, 100)
    s = summarize_map(prob, np.ones(prob.shape, np.uint8), max_voxels=101)
    assert len(s.values["C1"]) == 101 and s.values["C1"][0] == 0 and s.values["C1"][-1] == 1
    assert np.percentile(s.values["C1"], 30) == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(ValueError, match="differ in shape"):
        summarize_map(prob, np.ones((2, 2, 2)))


def test_load_refuses_missing_or_bad_file(tmp_path) -> None:
    with pytest.raises(InputError, match="no fitted percentile rule"):
        PercentileRule.load(tmp_path)
    (tmp_path / RULE_FILE).write_text('{"parameters": {"C1": {}}}')
    with pytest.raises(InputError, match="not a percentile rule"):
        PercentileRule.load(tmp_path)


def test_seed_parameters_are_the_seeds() -> None:
    assert SEED_PARAMETERS["patient_overall"] == RuleParameters(0.055, 0.475, 0.116, 0.99)
    assert SEED_PARAMETERS["C7"] == RuleParameters(0.024, 0.36, 0.048, 0.999)
