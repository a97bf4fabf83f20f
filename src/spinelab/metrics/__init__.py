"""The two competition metrics (RSNA 2022 cervical, RSNA 2024 lumbar), submission frames, constant baselines.

Both metrics follow seed-systems.md section 1 exactly: ``cervical`` holds the RSNA 2022 weighted log loss,
``lumbar`` the RSNA 2024 metric, ``common`` the submission checks they share (a bad submission raises
``InputError`` naming the offending rows) and ``files`` the CSV entry point of ``spinelab score``.
"""

from spinelab.metrics.cervical import cervical_prevalence_constant, cervical_score, cervical_submission_frame
from spinelab.metrics.common import CLIP_EPS
from spinelab.metrics.files import score_files
from spinelab.metrics.lumbar import (
    lumbar_grade_matrix,
    lumbar_score,
    lumbar_score_details,
    lumbar_submission_frame,
    lumbar_weight_optimal_constant,
)

__all__ = [
    "CLIP_EPS",
    "cervical_score",
    "lumbar_score",
    "lumbar_score_details",
    "score_files",
    "cervical_submission_frame",
    "lumbar_submission_frame",
    "cervical_prevalence_constant",
    "lumbar_weight_optimal_constant",
    "lumbar_grade_matrix",
]
