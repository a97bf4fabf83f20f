"""Scoring a submission CSV against a solution CSV (``spinelab score``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spinelab.errors import InputError

__all__ = ["score_files"]


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        # Ids stay strings: a lumbar study_id must not become an int and a UID must not lose digits.
        return pd.read_csv(
            path, dtype={"row_id": str, "study_id": str, "StudyInstanceUID": str}, keep_default_na=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse {what} CSV: {err}") from err


def score_files(solution_path: str | Path, submission_path: str | Path, *, task: str) -> float:
    """Score a submission CSV against a solution CSV (``spinelab score``).

    Args:
        solution_path: labels (train.csv format or melted Kaggle format).
        submission_path: Kaggle-format submission.
        task: a task of ``spinelab.tasks.catalog`` (its ``score`` is the metric).

    Returns:
        The competition loss.

    Raises:
        InputError: a file is missing, unreadable or malformed.
        ConfigError: unknown task.
    """
    from spinelab.tasks.catalog import task_function

    score = task_function(task, "score")
    solution_path, submission_path = Path(solution_path), Path(submission_path)
    solution = _read_csv(solution_path, "solution")
    submission = _read_csv(submission_path, "submission")
    return score(solution, submission, submission_name=submission_path, solution_name=solution_path)
