"""The 7th place's percentile rule: from a fracture-probability map and vertebra labels to the 8 probabilities.

For each target ``j`` (C1..C7 and ``patient_overall``) the rule takes the map's voxels inside the target's mask
(vertebra ``j``; any of C1..C7 for the patient) whose probability is at least ``alpha_j``, the
``100 * beta_j``-th percentile of them (linear interpolation, numpy's default), and clips it to
``[lo_j, hi_j]``. A target with no such voxel gets ``lo_j``.

The seed tuned its 32 numbers by hand (``SEED_PARAMETERS``). ``fit_percentile_rule`` fits them on out-of-fold
maps by minimising the competition metric (``spinelab.metrics.cervical_score``, row-normalised). The metric's
weights depend on the labels only, so it is a sum of one term per target and each target is fitted on its own:

1. for every ``alpha`` of a grid (``alphas`` and 32 of the voxel values, the only places the voxel sets
   change), the best ``beta`` of the ``betas`` grid, then refined by 0.01 around it; for every pair, the clip
   ``[lo, hi]`` that minimises the loss (exact: each split of the sorted raw scores; ``_best_clip``);
2. ``refine`` seeded random steps around the best (Gaussian steps in ``alpha`` and ``beta`` that shrink
   geometrically, the clip re-fitted each time), a step kept only when it lowers the loss;
3. coordinate scans until neither moves: ``alpha`` over up to 256 voxel values, then ``beta`` by 0.01.

With ``shared_vertebrae`` the seven vertebrae share one ``(alpha, beta, lo, hi)``, fitted on every (study,
vertebra) pair at once: seven times the rows for four numbers instead of 28, which matters when a vertebra
has a handful of fractured examples (the patient keeps its own four).

The fitted rule is stored in the run folder as ``percentile_rule.json`` (``RULE_FILE``) with the seed, the search
and the out-of-fold score of the rule alone. Voxels are summarised once per study and target
(``summarize_map``: the sorted values at or above ``floor``, at most ``max_voxels`` of them by even ranks).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.errors import InputError
from spinelab.registry import CERVICAL_TARGETS, CERVICAL_WEIGHTS, VERTEBRAE

__all__ = ["RuleParameters", "PercentileRule", "VoxelSummary", "summarize_map", "fit_percentile_rule",
           "SEED_PARAMETERS", "RULE_FILE", "RULE_SCHEMA_VERSION"]

RULE_FILE = "percentile_rule.json"
RULE_SCHEMA_VERSION = 1
CLIP_EPS = 1e-4  # the probabilities a rule gives stay inside (eps, 1 - eps), as the other routes' do

# The seed's hand-tuned values, order overall, C1..C7 (seed-systems.md 4.3).
_SEED = {"alpha": [.055, .044, .052, .05, .07, .077, .09, .024], "beta": [.475, .34, .37, .38, .31, .35, .38, .36],
         "lo": [.116, .075, .015, .015, .01, .02, .032, .048], "hi": [.99, .999, .993, .99, 1.0, .943, .997, .999]}


@dataclass(frozen=True)
class RuleParameters:
    """One target's rule: voxels ``>= alpha``, their ``100 * beta``-th percentile, clipped to ``[lo, hi]``."""

    alpha: float
    beta: float
    lo: float
    hi: float

    def to_json(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "lo": self.lo, "hi": self.hi}


_ORDER = ("patient_overall", *VERTEBRAE)
#: The seed's hand-tuned rule, per target.
SEED_PARAMETERS: dict[str, RuleParameters] = {
    t: RuleParameters(*(float(_SEED[k][i]) for k in ("alpha", "beta", "lo", "hi"))) for i, t in enumerate(_ORDER)}


@dataclass
class VoxelSummary:
    """One study's voxels per target: sorted probabilities at or above the summary's floor."""

    values: dict[str, np.ndarray] = field(default_factory=dict)

    def raw(self, target: str, alpha: float, beta: float) -> float:
        """The percentile of the voxels ``>= alpha`` (0.0 when there is none)."""
        v = self.values.get(target)
        if v is None or not len(v):
            return 0.0
        above = v[np.searchsorted(v, alpha, side="left"):]
        return float(np.percentile(above, 100.0 * beta)) if len(above) else 0.0


def summarize_map(prob: np.ndarray, labels: np.ndarray, *, floor: float = 0.0,
                  max_voxels: int = 4096) -> VoxelSummary:
    """Per target, the sorted map values at or above ``floor`` inside its mask.

    Args:
        prob: fracture probability ``(D, H, W)`` in [0, 1].
        labels: vertebra labels on the same grid (1..7 = C1..C7; other values are no cervical vertebra).
        floor: values below it are dropped (no ``alpha`` below it is ever asked for).
        max_voxels: more voxels than this are thinned to this many by evenly spaced ranks (the percentiles
            barely move, and fitting stays fast).

    Raises:
        ValueError: the arrays differ in shape.
    """
    if prob.shape != labels.shape:
        raise ValueError(f"probability map {prob.shape} and vertebra labels {labels.shape} differ in shape")
    prob = np.asarray(prob, dtype=np.float32)
    keep = prob >= floor
    out: dict[str, np.ndarray] = {}
    for k, v in enumerate(VERTEBRAE, start=1):
        out[v] = _thin(np.sort(prob[keep & (labels == k)]), max_voxels)
    cervical = keep & (labels >= 1) & (labels <= len(VERTEBRAE))
    out["patient_overall"] = _thin(np.sort(prob[cervical]), max_voxels)
    return VoxelSummary(out)


def _thin(values: np.ndarray, n: int) -> np.ndarray:
    if len(values) <= n:
        return values
    return values[np.round(np.linspace(0, len(values) - 1, n)).astype(np.int64)]


class PercentileRule:
    """The rule for every target (``SEED_PARAMETERS`` unless given)."""

    def __init__(self, parameters: Mapping[str, RuleParameters] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.parameters = dict(parameters or SEED_PARAMETERS)
        self.info = info or {}

    def predict_summary(self, summary: VoxelSummary) -> dict[str, float]:
        """The 8 probabilities of one summarised study."""
        out = {}
        for t in CERVICAL_TARGETS:
            p = self.parameters[t]
            out[t] = float(np.clip(np.clip(summary.raw(t, p.alpha, p.beta), p.lo, p.hi), CLIP_EPS, 1 - CLIP_EPS))
        return out

    def predict(self, prob: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The 8 probabilities of a probability map and its vertebra labels (same grid)."""
        return self.predict_summary(summarize_map(prob, labels))

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": RULE_SCHEMA_VERSION,
                "parameters": {t: self.parameters[t].to_json() for t in CERVICAL_TARGETS}, **self.info}

    def save(self, run_dir: str | Path) -> Path:
        """Write ``percentile_rule.json`` into ``run_dir``."""
        from spinelab.io.atomic import atomic_write_json

        return atomic_write_json(Path(run_dir) / RULE_FILE, self.to_json())

    @classmethod
    def load(cls, run_dir: str | Path) -> PercentileRule:
        """The run folder's fitted rule.

        Raises:
            InputError: no ``percentile_rule.json``, or one that is not a rule.
        """
        path = Path(run_dir) / RULE_FILE
        if not path.is_file():
            raise InputError(path, "no fitted percentile rule (train the route's fracture stage with held-out folds)")
        try:
            data = json.loads(path.read_text())
            params = {t: RuleParameters(**{k: float(data["parameters"][t][k]) for k in ("alpha", "beta", "lo", "hi")})
                      for t in CERVICAL_TARGETS}
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(path, f"not a percentile rule ({type(err).__name__}: {err})") from None
        return cls(params, {k: v for k, v in data.items() if k not in ("parameters", "schema_version")})


# --- fitting ------------------------------------------------------------------------------------------------
def _padded(summaries: Sequence[VoxelSummary], target: str) -> tuple[np.ndarray, np.ndarray]:
    """The studies' sorted values for ``target`` as one ``(n, m)`` array padded with +inf, and their counts."""
    rows = [s.values.get(target, np.zeros(0, np.float32)) for s in summaries]
    m = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), m), np.inf, dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, np.array([len(r) for r in rows])


def _raw_scores(values: np.ndarray, counts: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Every study's percentile of its values ``>= alpha`` (0 where none), as ``np.percentile`` computes it."""
    start = (values < alpha).sum(1)
    n = counts - start
    pos = start + beta * np.maximum(n - 1, 0)
    lo_i = np.floor(pos).astype(np.int64)
    hi_i = np.minimum(lo_i + 1, np.maximum(counts - 1, 0))
    rows = np.arange(len(values))
    lo_v, hi_v = values[rows, np.minimum(lo_i, values.shape[1] - 1)], values[rows, hi_i]
    frac = pos - lo_i
    lo_v = np.where(np.isfinite(lo_v), lo_v, 0.0)  # rows with no voxel >= alpha (set to 0 below)
    raw = lo_v + frac * np.where(np.isfinite(hi_v), hi_v - lo_v, 0.0)
    return np.where(n > 0, raw, 0.0)


def _clip_value(pos: np.ndarray, neg: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best common probability of a group with summed positive / negative weights, kept in ``[low, high]``
    (the log loss is convex: the weighted positive share, clipped), and the group's loss at it."""
    total = pos + neg
    share = np.divide(pos, total, out=np.full_like(total, 0.5), where=total > 0)
    p = np.clip(np.clip(share, low, high), CLIP_EPS, 1 - CLIP_EPS)
    return p, -(pos * np.log(p) + neg * np.log(1 - p))


def _best_clip(raw: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray, n_grid: int) -> tuple[float, float, float]:
    """``(loss, lo, hi)``: the clip that minimises the loss for the raw scores ``raw``.

    Every split of the sorted scores into clipped-up / kept / clipped-down (at most ``n_grid`` cut points each
    side, between distinct scores) is tried; for a split, the best ``lo`` is the clipped-up group's weighted
    positive share kept between its neighbouring scores (likewise ``hi``), so the optimum is exact, not a grid
    value. ``pos_w`` / ``neg_w``: each map's summed metric weight of positive / negative labels."""
    order = np.argsort(raw, kind="stable")
    r, yw, nw = raw[order], pos_w[order], neg_w[order]
    n = len(r)
    pc = np.clip(r, CLIP_EPS, 1 - CLIP_EPS)
    mid = -(yw * np.log(pc) + nw * np.log(1 - pc))
    c_yw, c_nw, c_mid = (np.concatenate([[0.0], np.cumsum(a)]) for a in (yw, nw, mid))
    distinct = np.unique(r)
    if len(distinct) > n_grid:
        distinct = distinct[np.round(np.linspace(0, len(distinct) - 1, n_grid)).astype(np.int64)]
    cuts = np.unique(np.concatenate([np.searchsorted(r, distinct, side="left"), [0, n]]))
    before = np.concatenate([[0.0], r])[cuts]  # the score just below each cut (0 at the start)
    after = np.concatenate([r, [1.0]])[cuts]  # the score just above it (1 at the end)
    lo, lo_loss = _clip_value(c_yw[cuts], c_nw[cuts], before, after)  # studies [0, cut) clipped up to lo
    hi, hi_loss = _clip_value(c_yw[-1] - c_yw[cuts], c_nw[-1] - c_nw[cuts], before, after)  # [cut, n) down to hi
    loss = lo_loss[:, None] + (c_mid[cuts][None, :] - c_mid[cuts][:, None]) + hi_loss[None, :]
    valid = (cuts[:, None] <= cuts[None, :]) & (lo[:, None] <= hi[None, :])
    loss = np.where(valid, loss, np.inf)
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    return float(loss[i, j]), float(lo[i]), float(hi[j])


def _alpha_candidates(values: np.ndarray, n: int) -> np.ndarray:
    """Where the voxel sets change: the distinct voxel values (at most ``n``, by even ranks), and 0."""
    pooled = np.unique(values[np.isfinite(values)])
    if len(pooled) > n:
        pooled = pooled[np.round(np.linspace(0, len(pooled) - 1, n)).astype(np.int64)]
    return np.concatenate([[0.0], pooled])


def _fit_target(values: np.ndarray, counts: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray, *,
                alphas: np.ndarray, betas: np.ndarray, clip_grid: int, refine: int, rng: np.random.Generator,
                ) -> tuple[RuleParameters, float]:
    """One target's search (module docstring): per alpha the best beta, seeded random steps, coordinate scans."""
    best = (np.inf, 0.0, 0.5, CLIP_EPS, 1 - CLIP_EPS)

    def trial(a: float, b: float) -> float:
        nonlocal best
        loss, lo, hi = _best_clip(_raw_scores(values, counts, a, b), pos_w, neg_w, clip_grid)
        if loss < best[0] - 1e-12:
            best = (loss, float(a), float(b), lo, hi)
        return loss

    step = 0.01
    for a in np.unique(np.concatenate([alphas, _alpha_candidates(values, 32)])):
        coarse = min(betas, key=lambda b, a=a: trial(a, b))
        for b in np.arange(coarse - 0.05, coarse + 0.05 + 1e-9, step):
            trial(a, float(np.clip(b, 0.0, 1.0)))
    a_span = float(np.ptp(alphas)) / 4 or 0.05
    for k in range(refine):
        shrink = 0.5 ** (4 * k / max(refine, 1))
        trial(float(np.clip(best[1] + rng.normal(0, a_span * shrink), 0.0, 1.0)),
              float(np.clip(best[2] + rng.normal(0, 0.1 * shrink), 0.0, 1.0)))
    fine_a, fine_b = _alpha_candidates(values, 256), np.linspace(0.0, 1.0, 101)
    for _ in range(4):  # coordinate scans until neither moves
        before = best
        for a in fine_a:
            trial(a, best[2])
        for b in fine_b:
            trial(best[1], b)
        if best == before:
            break
    return RuleParameters(alpha=best[1], beta=best[2], lo=best[3], hi=best[4]), best[0]


def fit_percentile_rule(summaries: Mapping[str, VoxelSummary], labels: pd.DataFrame, *, seed: int = 0,
                        alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None,
                        clip_grid: int = 128, refine: int = 100, shared_vertebrae: bool = False) -> PercentileRule:
    """Fit the rule's parameters of every target on out-of-fold maps, minimising the competition metric.

    Args:
        summaries: study id -> its summarised out-of-fold map (``summarize_map``).
        labels: train.csv format (``StudyInstanceUID`` and the 8 targets), one row per study at least.
        seed: the random refinement's seed (the same inputs and seed give the same rule).
        alphas: ``alpha`` values tried besides 32 of the voxel values (default 16 from 0.01 to 0.5, geometric).
        betas: the coarse ``beta`` grid (default 0.1 .. 0.9 by 0.1).
        clip_grid: at most this many raw scores (quantiles) tried for each clip bound.
        refine: seeded random steps per target (between the grid and the coordinate scans).
        shared_vertebrae: one rule for C1..C7, fitted on all their (study, vertebra) pairs together.

    Raises:
        InputError: no study has both a map and labels.
    """
    from spinelab.metrics import cervical_score, cervical_submission_frame

    truth = labels.assign(StudyInstanceUID=labels.StudyInstanceUID.astype(str)).set_index("StudyInstanceUID")
    ids = [s for s in summaries if s in truth.index]
    if not ids:
        raise InputError(Path("."), "no study has both an out-of-fold fracture map and labels to fit the percentile "
                                    "rule on")
    grid_a = np.asarray(alphas if alphas is not None else np.geomspace(0.01, 0.5, 16), dtype=np.float64)
    grid_b = np.asarray(betas if betas is not None else np.arange(1, 10) / 10, dtype=np.float64)
    rng = np.random.default_rng(seed)
    y_all = truth.loc[ids, list(CERVICAL_TARGETS)].to_numpy(np.float64)
    neg = np.array([CERVICAL_WEIGHTS[t][0] for t in CERVICAL_TARGETS])
    pos = np.array([CERVICAL_WEIGHTS[t][1] for t in CERVICAL_TARGETS])
    w_all = np.where(y_all > 0.5, pos, neg)
    w_all = w_all / w_all.sum(1, keepdims=True)  # row normalisation: each study's weights sum to 1
    # studies that share one summary object (repeated maps) are one row with their weights summed
    groups: dict[int, int] = {}
    listed: list[VoxelSummary] = []
    for s in ids:
        if id(summaries[s]) not in groups:
            groups[id(summaries[s])] = len(listed)
            listed.append(summaries[s])
    row = np.array([groups[id(summaries[s])] for s in ids])

    def weights(j: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.bincount(row, weights=y_all[:, j] * w_all[:, j], minlength=len(listed)),
                np.bincount(row, weights=(1 - y_all[:, j]) * w_all[:, j], minlength=len(listed)))

    def fit(values: np.ndarray, counts: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray) -> RuleParameters:
        return _fit_target(values, counts, pos_w, neg_w, alphas=grid_a, betas=grid_b, clip_grid=clip_grid,
                           refine=refine, rng=rng)[0]

    params: dict[str, RuleParameters] = {}
    together = [j for j, t in enumerate(CERVICAL_TARGETS) if shared_vertebrae and t in VERTEBRAE]
    if together:
        # one row per (map, vertebra): the vertebrae's voxel sets stacked, each with its own label weights
        pooled = [VoxelSummary({"_": x.values.get(CERVICAL_TARGETS[j], np.zeros(0, np.float32))})
                  for j in together for x in listed]
        values, counts = _padded(pooled, "_")
        pos_w, neg_w = (np.concatenate(w) for w in zip(*(weights(j) for j in together), strict=True))
        shared = fit(values, counts, pos_w, neg_w)
        params.update({CERVICAL_TARGETS[j]: shared for j in together})
    for j, t in enumerate(CERVICAL_TARGETS):
        if t not in params:
            values, counts = _padded(listed, t)
            params[t] = fit(values, counts, *weights(j))
    rule = PercentileRule(params)
    fitted = [rule.predict_summary(x) for x in listed]
    seeds = [PercentileRule().predict_summary(x) for x in listed]
    wide = pd.DataFrame([fitted[i] for i in row], index=ids)
    seed_wide = pd.DataFrame([seeds[i] for i in row], index=ids)
    solution = truth.loc[ids].reset_index()
    rule.info = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "studies": len(ids), "seed": seed,
        "oof_score": float(cervical_score(solution, cervical_submission_frame(wide))),
        "seed_parameters_score": float(cervical_score(solution, cervical_submission_frame(seed_wide))),
        "search": {"alphas": grid_a.tolist(), "betas": grid_b.tolist(), "clip_grid": clip_grid, "refine": refine,
                   "shared_vertebrae": shared_vertebrae,
                   "objective": "competition metric, row-normalised (spinelab.metrics.cervical_score)"},
    }
    return rule
