"""Grade sampling for the synthetic lumbar dataset: real per-level balance with correlated degeneration.

The marginal probabilities below were computed once from the RSNA 2024 team folds file
(``shared/rsna-labels/lhwcv__solution-rsna-2024-lumbar-spine/folds_t2s_each.csv``, deduplicated to
study x level, 1975 studies). That file's ``level`` column runs **0 = L5/S1 .. 4 = L1/L2** (not L1/L2 first):
only that reading matches the anatomy (severe canal stenosis peaks at L4/L5, foraminal narrowing at L5/S1,
axial labels go missing at L1/L2 where axial stacks often stop), so the table is stored in registry order
``l1_l2 .. l5_s1`` after reversing it.

Grades are drawn through a Gaussian copula: a study factor plus a level factor shared by all five conditions
at that level, thresholded per (condition, level) so each marginal equals the real one, while conditions
at one level and levels within one study stay correlated as in real spines.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_LEVELS

__all__ = ["REAL_GRADE_BALANCE", "MISSING", "sample_lumbar_grades", "expected_balance"]

#: Value used for a blank (unlabelled) cell.
MISSING = -1

#: (p_normal_mild, p_moderate, p_severe, p_missing) per condition, per level l1_l2 .. l5_s1.
REAL_GRADE_BALANCE: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "left_neural_foraminal_narrowing": (
        (0.967, 0.032, 0.001, 0.0010),
        (0.908, 0.087, 0.006, 0.0010),
        (0.771, 0.208, 0.020, 0.0010),
        (0.610, 0.319, 0.071, 0.0010),
        (0.632, 0.264, 0.104, 0.0010),
    ),
    "left_subarticular_stenosis": (
        (0.933, 0.051, 0.015, 0.0830),
        (0.821, 0.135, 0.044, 0.0415),
        (0.671, 0.230, 0.098, 0.0015),
        (0.450, 0.316, 0.234, 0.0015),
        (0.717, 0.208, 0.075, 0.0056),
    ),
    "right_neural_foraminal_narrowing": (
        (0.961, 0.032, 0.007, 0.0041),
        (0.912, 0.085, 0.003, 0.0041),
        (0.769, 0.210, 0.021, 0.0041),
        (0.614, 0.320, 0.066, 0.0041),
        (0.651, 0.252, 0.097, 0.0041),
    ),
    "right_subarticular_stenosis": (
        (0.926, 0.061, 0.013, 0.0815),
        (0.833, 0.128, 0.039, 0.0415),
        (0.670, 0.230, 0.100, 0.0010),
        (0.452, 0.315, 0.233, 0.0010),
        (0.711, 0.201, 0.088, 0.0035),
    ),
    "spinal_canal_stenosis": (
        (0.955, 0.034, 0.011, 0.0005),
        (0.897, 0.076, 0.027, 0.0005),
        (0.822, 0.117, 0.062, 0.0005),
        (0.751, 0.120, 0.129, 0.0005),
        (0.965, 0.026, 0.010, 0.0005),
    ),
}

# Shares of the latent variance: whole-study degeneration, per-level degeneration, independent noise.
_STUDY_VAR, _LEVEL_VAR = 0.12, 0.38


def _thresholds() -> np.ndarray:
    """Probit thresholds ``(5 conditions, 5 levels, 2)`` separating normal|moderate and moderate|severe."""
    out = np.zeros((len(LUMBAR_CONDITIONS), len(LUMBAR_LEVELS), 2))
    for ci, cond in enumerate(LUMBAR_CONDITIONS):
        for li, (p0, p1, p2, _) in enumerate(REAL_GRADE_BALANCE[cond]):
            total = p0 + p1 + p2
            out[ci, li, 0] = ndtri(p0 / total)
            out[ci, li, 1] = ndtri(min((p0 + p1) / total, 1 - 1e-9))
    return out


_THRESHOLDS = _thresholds()
_MISSING_P = np.array([[REAL_GRADE_BALANCE[c][li][3] for li in range(len(LUMBAR_LEVELS))]
                       for c in LUMBAR_CONDITIONS])


def sample_lumbar_grades(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw grades for ``n`` studies.

    Args:
        rng: the random generator to draw from.
        n: number of studies.

    Returns:
        ``(grades, labelled)``: ``grades`` int8 ``(n, 5 conditions, 5 levels)`` in {0, 1, 2}
        (registry order of ``LUMBAR_CONDITIONS`` x ``LUMBAR_LEVELS``), the anatomy to render; ``labelled``
        bool of the same shape, False where the label (and its coordinate) is left blank as in the real
        train.csv.
    """
    n_c, n_l = len(LUMBAR_CONDITIONS), len(LUMBAR_LEVELS)
    study = rng.standard_normal((n, 1, 1))
    level = rng.standard_normal((n, 1, n_l))
    noise = rng.standard_normal((n, n_c, n_l))
    latent = (np.sqrt(_STUDY_VAR) * study + np.sqrt(_LEVEL_VAR) * level
              + np.sqrt(1.0 - _STUDY_VAR - _LEVEL_VAR) * noise)
    grades = (latent > _THRESHOLDS[None, :, :, 0]).astype(np.int8) + (latent > _THRESHOLDS[None, :, :, 1])
    labelled = rng.random((n, n_c, n_l)) >= _MISSING_P[None]
    return grades.astype(np.int8), labelled


def expected_balance() -> dict[str, np.ndarray]:
    """Real grade balance of labelled rows: ``{condition: (5 levels, 3 grades)}``."""
    out = {}
    for cond in LUMBAR_CONDITIONS:
        table = np.array([row[:3] for row in REAL_GRADE_BALANCE[cond]])
        out[cond] = table / table.sum(axis=1, keepdims=True)
    return out
