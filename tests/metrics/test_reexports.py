"""The ``spinelab.metrics`` package keeps its public API: every name it exported as one module."""

from __future__ import annotations

import spinelab.metrics
from spinelab.metrics import cervical, common, files, lumbar

PUBLIC = ["CLIP_EPS", "cervical_score", "lumbar_score", "lumbar_score_details", "score_files",
          "cervical_submission_frame", "lumbar_submission_frame", "cervical_prevalence_constant",
          "lumbar_weight_optimal_constant", "lumbar_grade_matrix"]


def test_package_reexports_the_task_modules() -> None:
    assert spinelab.metrics.__all__ == PUBLIC
    homes = {name: module for module in (common, cervical, lumbar, files) for name in module.__all__}
    for name in PUBLIC:
        assert getattr(spinelab.metrics, name) is getattr(homes[name], name), name
