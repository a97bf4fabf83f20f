"""The small cervical solution / submission pair that several metrics test modules score."""

from __future__ import annotations

import pandas as pd
import pytest

from spinelab.metrics import cervical_submission_frame
from spinelab.registry import CERVICAL_TARGETS
from tests.metrics._helpers import cervical_train


@pytest.fixture
def small_cervical() -> tuple[pd.DataFrame, pd.DataFrame]:
    sol = cervical_train({f"1.2.{i}": [i % 2, 0, 0, 0, 0, 0, 0] for i in range(12)})
    sub = cervical_submission_frame(
        pd.DataFrame(0.3, index=sol["StudyInstanceUID"], columns=list(CERVICAL_TARGETS))
    )
    return sol, sub
