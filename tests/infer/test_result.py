"""``StudyResult``: the per-study JSON is its serialisation; bad results are refused before they are written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spinelab.infer.result import StudyResult


def test_the_json_keeps_the_given_keys_and_the_routes_own() -> None:
    r = StudyResult.model_validate({"schema_version": 1, "study": "s1", "probabilities": {"C1": 0.25},
                                    "crop_box": [0, 0, 4, 4], "warnings": []})
    assert r.to_json() == {"schema_version": 1, "study": "s1", "probabilities": {"C1": 0.25}, "warnings": [],
                           "crop_box": [0, 0, 4, 4]}
    assert r.status == "ok"


@pytest.mark.parametrize("bad", [
    {"schema_version": 1, "study": "s", "status": "fine", "probabilities": {"C1": 0.5}},
    {"schema_version": 1, "study": "s"},
    {"schema_version": 1, "study": "s", "probabilities": {"C1": 0.5}, "grades": {"a": {"normal_mild": 1.0}}},
    {"study": "s", "probabilities": {"C1": 0.5}},
])
def test_a_result_without_one_output_or_with_an_unknown_status_is_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        StudyResult.model_validate(bad)
