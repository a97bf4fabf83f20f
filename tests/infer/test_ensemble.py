"""``EnsemblePredictor`` with stub members: weighted means, members named, a failing member, weights parsing and
the simplex fit (the two-run tests with trained runs are in tests/tasks/test_ensemble_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from spinelab.errors import ConfigError, InputError
from spinelab.infer.batch import predict_studies
from spinelab.infer.checks import StudyRefusedError
from spinelab.infer.ensemble import EnsemblePredictor, _simplex_fit, parse_weights
from spinelab.infer.result import StudyResult


class Stub:
    """A predictor of the cervical slice route that answers fixed probabilities (or raises for some studies)."""

    def __init__(self, name: str, p: float, *, fails: dict[str, Exception] | None = None,
                 warnings: list[str] | None = None, grades: bool = False) -> None:
        self.name, self.p, self.fails, self.extra_warnings, self.grades = name, p, fails or {}, warnings or [], grades
        self.cfg = SimpleNamespace(task="lumbar" if grades else "cervical", route=None)

    @property
    def model_info(self) -> dict[str, Any]:
        return {"run_dir": f"/runs/{self.name}", "weights_sha256": {"stage2/fold_0/model.pt": self.name * 4},
                "folds": {"stage2": [0]}, "precision": "fp32", "strict": False, "spinelab": "x"}

    def _output(self, p: float) -> dict[str, Any]:
        if self.grades:
            return {"grades": {"a": {"normal_mild": p, "moderate": 1 - p, "severe": 0.0}}}
        return {"probabilities": {"C1": p, "patient_overall": p / 2}}

    def predict_study(self, study: str | Path, study_id: str | None = None, **options: Any) -> StudyResult:
        if study_id in self.fails:
            raise self.fails[study_id]
        return StudyResult(schema_version=1, study=study_id, status="warning" if self.extra_warnings else "ok",
                           warnings=self.extra_warnings, crop_box=[self.name], input={"by": self.name},
                           **self._output(self.p))

    def fallback(self, study_id: str, error: str) -> StudyResult:
        return StudyResult(schema_version=1, study=study_id, status="failed", error=error, **self._output(0.1))


def test_probabilities_are_the_weighted_mean_and_every_member_is_named() -> None:
    ens = EnsemblePredictor([Stub("a", 0.2, warnings=["thick slices"]), Stub("b", 0.6, warnings=["thick slices"])],
                            [1, 3])
    r = ens.predict_study("s", "s")
    assert r.probabilities == pytest.approx({"C1": 0.25 * 0.2 + 0.75 * 0.6, "patient_overall": 0.25 * 0.1 + 0.75 * 0.3})
    assert r.status == "warning" and r.warnings == ["thick slices"]  # carried once
    assert [m["run_dir"] for m in r.model["ensemble"]] == ["/runs/a", "/runs/b"]
    assert [m["weight"] for m in r.model["ensemble"]] == [0.25, 0.75]
    assert [m["route"] for m in r.model["ensemble"]] == ["cervical/slices"] * 2
    assert r.model["ensemble"][1]["weights_sha256"] == {"stage2/fold_0/model.pt": "bbbb"}
    assert [m["probabilities"]["C1"] for m in r.members] == [0.2, 0.6]
    assert r.crop_box == ["a"] and r.input == {"by": "a"}  # the first member's localisation rides along


def test_grades_are_averaged_per_target_and_stay_a_distribution() -> None:
    r = EnsemblePredictor([Stub("a", 0.2, grades=True), Stub("b", 0.8, grades=True)]).predict_study("s", "s")
    assert r.grades["a"] == pytest.approx({"normal_mild": 0.5, "moderate": 0.5, "severe": 0.0})


def test_a_member_that_fails_is_named_in_the_status_and_the_others_are_used(tmp_path: Path) -> None:
    ens = EnsemblePredictor([Stub("a", 0.2, fails={"s": InputError("x.dcm", "no pixels")}), Stub("b", 0.6)],
                            [0.5, 0.5])
    results = predict_studies([("s", tmp_path)], lambda sid, p: ens.predict_study(p, sid), ens.fallback,
                              out_dir=tmp_path, progress=False, model=ens.model_info)
    r = results[0]
    assert r["status"] == "warning" and r["probabilities"]["C1"] == pytest.approx(0.6)
    assert r["warnings"] == ["ensemble member cervical/slices (a) failed: x.dcm: no pixels; the other members' "
                             "mean is used"]
    assert [m["status"] for m in r["members"]] == ["failed", "ok"] and r["members"][0]["error"] == "x.dcm: no pixels"
    assert json.loads((tmp_path / "studies" / "s.json").read_text()) == r


def test_every_member_refusing_refuses_the_study_with_the_weighted_prior(tmp_path: Path) -> None:
    refusal = StudyRefusedError(["a single slice"], [], {})
    ens = EnsemblePredictor([Stub("a", 0.2, fails={"s": refusal}), Stub("b", 0.6, fails={"s": refusal}),
                             Stub("c", 0.9, fails={"s": ZeroDivisionError("bug")})])
    with pytest.raises(ZeroDivisionError):  # not all refused: the first error
        ens.predict_study("s", "s")
    ens = EnsemblePredictor(ens.members[:2])
    r = predict_studies([("s", tmp_path)], lambda sid, p: ens.predict_study(p, sid), ens.fallback,
                        out_dir=tmp_path, progress=False)[0]
    assert r["status"] == "refused" and r["reasons"] == ["a single slice"]
    assert r["probabilities"]["C1"] == pytest.approx(0.1) and len(r["model"]["ensemble"]) == 2


def test_an_ensemble_needs_two_members_of_one_task() -> None:
    with pytest.raises(ConfigError, match="two or more"):
        EnsemblePredictor([Stub("a", 0.2)])
    with pytest.raises(ConfigError, match="of one task"):
        EnsemblePredictor([Stub("a", 0.2), Stub("b", 0.2, grades=True)])


def test_weights_from_numbers_or_a_fitted_file(tmp_path: Path) -> None:
    models = [tmp_path / "run_a", tmp_path / "run_b"]
    assert parse_weights(None, models) is None
    assert parse_weights("1,3", models) == [0.25, 0.75]
    assert parse_weights([2.0, 2.0], models) == [0.5, 0.5]
    for bad, message in [("0.5", "1 weights for 2 models"), ("a,b", "comma-separated numbers"),
                         ("-1,2", "non-negative"), ("0,0", "positive sum")]:
        with pytest.raises(ConfigError, match=message):
            parse_weights(bad, models)
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"members": [{"run_dir": "/x/run_a", "weight": 0.9},
                                            {"run_dir": "/x/run_b", "weight": 0.1}]}))
    assert parse_weights(path, models) == pytest.approx([0.9, 0.1])
    with pytest.raises(ConfigError, match="fitted for the runs run_a, run_b; --model gives run_b, run_a"):
        parse_weights(str(path), models[::-1])
    path.write_text("{}")
    with pytest.raises(InputError, match="not a spinelab weights file"):
        parse_weights(path, models)
    with pytest.raises(InputError, match="weights file not found"):
        parse_weights(tmp_path / "nope.json", models)


def test_the_simplex_fit_finds_the_best_mixture() -> None:
    target = np.array([0.2, 0.5, 0.3])
    w = _simplex_fit(lambda w: float(((w - target) ** 2).sum()), 3)
    assert w == pytest.approx(target, abs=1e-4) and w.sum() == pytest.approx(1)
    corner = _simplex_fit(lambda w: float(-w[1]), 3)  # a linear score: the best single member
    assert corner == pytest.approx([0, 1, 0], abs=1e-6)
