"""Pure-data registry of tasks, targets and label schemes (no torch import).

Everything that names a target, a row id or a label value lives here once, so the metric, the submission
writer, the synthetic generators and the models agree by construction.
"""

from __future__ import annotations

__all__ = [
    "VERTEBRAE",
    "CERVICAL_TARGETS",
    "CERVICAL_WEIGHTS",
    "RSNA2022_SEG_LABELS",
    "LUMBAR_CONDITIONS",
    "LUMBAR_LEVELS",
    "LUMBAR_LEVEL_NAMES",
    "LUMBAR_GRADES",
    "LUMBAR_GRADE_NAMES",
    "LUMBAR_GROUPS",
    "LUMBAR_SERIES_TYPES",
    "LUMBAR_CONDITION_TITLES",
    "LUMBAR_LEVEL_TITLES",
    "lumbar_columns",
    "lumbar_row_ids",
    "cervical_row_ids",
    "condition_group",
    "TASKS",
]

# --- RSNA 2022 cervical spine fracture detection -------------------------------------------------------
VERTEBRAE: tuple[str, ...] = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
CERVICAL_TARGETS: tuple[str, ...] = (*VERTEBRAE, "patient_overall")
# Competition weights (negative, positive) per target; see seed-systems.md section 1.1.
CERVICAL_WEIGHTS: dict[str, tuple[float, float]] = {**{v: (1.0, 2.0) for v in VERTEBRAE},
                                                    "patient_overall": (7.0, 14.0)}
# Label values in the RSNA 2022 segmentations: 1-7 = C1-C7, 8-19 = T1-T12.
RSNA2022_SEG_LABELS: dict[int, str] = {**{i + 1: v for i, v in enumerate(VERTEBRAE)},
                                       **{8 + i: f"T{i + 1}" for i in range(12)}}


def cervical_row_ids(study_uid: str) -> list[str]:
    """Kaggle row ids of one study, in submission order (C1..C7, patient_overall)."""
    return [f"{study_uid}_{t}" for t in CERVICAL_TARGETS]


# --- RSNA 2024 lumbar spine degenerative classification -------------------------------------------------
# Order follows the sample submission: left NFN, left SS, right NFN, right SS, spinal canal stenosis.
LUMBAR_CONDITIONS: tuple[str, ...] = (
    "left_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_neural_foraminal_narrowing",
    "right_subarticular_stenosis",
    "spinal_canal_stenosis",
)
LUMBAR_CONDITION_TITLES: dict[str, str] = {
    "spinal_canal_stenosis": "Spinal Canal Stenosis",
    "left_neural_foraminal_narrowing": "Left Neural Foraminal Narrowing",
    "right_neural_foraminal_narrowing": "Right Neural Foraminal Narrowing",
    "left_subarticular_stenosis": "Left Subarticular Stenosis",
    "right_subarticular_stenosis": "Right Subarticular Stenosis",
}
LUMBAR_LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
LUMBAR_LEVEL_TITLES: dict[str, str] = {
    "l1_l2": "L1/L2", "l2_l3": "L2/L3", "l3_l4": "L3/L4", "l4_l5": "L4/L5", "l5_s1": "L5/S1",
}
LUMBAR_LEVEL_NAMES = LUMBAR_LEVEL_TITLES
LUMBAR_GRADES: tuple[str, ...] = ("normal_mild", "moderate", "severe")
LUMBAR_GRADE_NAMES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
LUMBAR_GROUPS: dict[str, tuple[str, ...]] = {
    "spinal": ("spinal_canal_stenosis",),
    "foraminal": ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"),
    "subarticular": ("left_subarticular_stenosis", "right_subarticular_stenosis"),
}
LUMBAR_SERIES_TYPES: tuple[str, ...] = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")


def condition_group(condition: str) -> str:
    """Metric group ('spinal', 'foraminal', 'subarticular') of a condition name."""
    for group, conditions in LUMBAR_GROUPS.items():
        if condition in conditions:
            return group
    raise KeyError(condition)


def lumbar_columns() -> list[str]:
    """The 25 ``{condition}_{level}`` label columns of train.csv, in sample-submission order."""
    return [f"{c}_{lv}" for c in LUMBAR_CONDITIONS for lv in LUMBAR_LEVELS]


def lumbar_row_ids(study_id: str | int) -> list[str]:
    """Kaggle row ids of one study (25 rows), in sample-submission order."""
    return [f"{study_id}_{col}" for col in lumbar_columns()]


TASKS: dict[str, dict[str, object]] = {
    "cervical": {
        "competition": "rsna-2022-cervical-spine-fracture-detection",
        "modality": "CT",
        "targets": list(CERVICAL_TARGETS),
        "submission_columns": ["row_id", "fractured"],
    },
    "lumbar": {
        "competition": "rsna-2024-lumbar-spine-degenerative-classification",
        "modality": "MR",
        "targets": lumbar_columns(),
        "submission_columns": ["row_id", *LUMBAR_GRADES],
    },
}
