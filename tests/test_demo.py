"""The demo's final table (scores, the constant and how far from it), its options and its catalog dispatch, with
the pipelines replaced by stubs: the real runs take minutes and are measured in BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from spinelab import demo
from spinelab.config.load import load_config
from spinelab.configs import recipe_path
from spinelab.tasks import catalog
from spinelab.tasks.route import Demo, Task


@pytest.mark.parametrize(("score", "baseline", "text"), [
    (0.42, 0.51, "0.420 vs constant 0.510: 18 % better"),
    (0.607, 0.510, "0.607 vs constant 0.510: 19 % worse"),
    (0.51, 0.51, "0.510 vs constant 0.510: level with the constant"),
    (None, 0.51, "-"),
    (0.4, None, "-"),
    (0.4, 0.0, "-"),
])
def test_against_constant_says_how_much_better_or_worse(score: float | None, baseline: float | None,
                                                        text: str) -> None:
    assert demo.against_constant(score, baseline) == text


def _stub(scores: dict[str, float], calls: list[dict[str, Any]]):
    def run(task: str, out: Path, **kw: Any) -> dict[str, Any]:
        calls.append({"task": task, "out": out, **kw})
        return {"task": task, "run": out / "run", "submission": out / "sub.csv", "evaluation": out / "ev.json",
                "report": out / "index.html", "score": scores[task], "baseline": 0.5, "studies": 16}
    return run


def test_table_prints_the_relative_improvement_and_options_reach_every_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "run_task_demo", _stub({"cervical": 0.25, "lumbar": 0.55}, calls))
    monkeypatch.setattr(demo, "console", demo.Console(width=200, force_terminal=False))
    demo.main(task="all", out=tmp_path, studies=12, test_studies=6, seed=3)
    text = capsys.readouterr().out
    assert "0.250 vs constant 0.500: 50 % better" in text and "0.550 vs constant 0.500: 10 % worse" in text
    assert [(c["task"], c["out"], c["studies"], c["test_studies"], c["seed"]) for c in calls] == [
        ("cervical", tmp_path / "cervical", 12, 6, 3), ("lumbar", tmp_path / "lumbar", 12, 6, 3)]


def test_unknown_task_is_refused_before_any_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "run_task_demo", _stub({}, calls))
    with pytest.raises(typer.BadParameter, match="cervical, lumbar or all"):
        demo.main(task="spine", out=tmp_path)
    assert calls == []


def test_the_demo_runs_every_catalog_task_with_a_demo_and_only_those(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A task registered with a ``Demo`` joins ``--task all`` with no change to the demo; one without is left out."""
    toy = Demo("spinelab.data.synthetic.lumbar:generate_lumbar_dataset", size=32, recipe="lumbar/tiny.yaml",
               score="lumbar_score", baseline="weight_optimal_constant_score")
    monkeypatch.setitem(catalog._TASKS, "toy", Task("toy", "points", output=None, demo=toy))
    monkeypatch.setitem(catalog._TASKS, "nodemo", Task("nodemo", "points", output=None))
    assert demo.demo_tasks() == ["cervical", "lumbar", "toy"]
    with pytest.raises(typer.BadParameter, match="no demo"):
        demo.run_task_demo("nodemo", tmp_path)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "run_task_demo", _stub({"cervical": 0.4, "lumbar": 0.4, "toy": 0.4}, calls))
    demo.main(task="toy", out=tmp_path)
    assert [(c["task"], c["out"]) for c in calls] == [("toy", tmp_path)]


@pytest.mark.parametrize("task", ["cervical", "lumbar"])
def test_each_demo_recipe_loads_and_its_generator_resolves(task: str) -> None:
    spec = catalog.get_task(task).demo
    assert spec is not None
    cfg = load_config(task, [recipe_path(spec.recipe)], [])
    assert cfg.experiment == "demo"
    assert callable(demo.resolve(spec.synthetic))


def test_cervical_demo_recipe_fits_the_synthetic_crop() -> None:
    cfg = load_config("cervical", [recipe_path("cervical/demo.yaml")], [])
    assert cfg.stage2.image_size <= 64  # sized for 2 CPU cores: the 128 px study box is about 60 px wide


def test_a_task_demo_generates_its_own_numbers_of_studies_unless_told(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    class StopError(Exception):
        pass

    def generate(out: Path, **kw: Any) -> Path:
        seen.append(kw)
        raise StopError  # the rest of the pipeline is the real one, measured in BENCHMARKS.md

    spec = Demo(generate, size=32, recipe="lumbar/tiny.yaml", score="s", baseline="b", studies=7, test_studies=9)
    monkeypatch.setitem(catalog._TASKS, "toy", Task("toy", "points", output=None, demo=spec))
    monkeypatch.setattr(demo, "console", demo.Console(width=200, force_terminal=False))
    for studies, test_studies in ((None, 2), (3, 2), (None, None)):
        with pytest.raises(StopError):
            demo.run_task_demo("toy", tmp_path, studies=studies, test_studies=test_studies, seed=5)
    assert seen == [{"studies": 7, "test_studies": 2, "size": 32, "seed": 5},
                    {"studies": 3, "test_studies": 2, "size": 32, "seed": 5},
                    {"studies": 7, "test_studies": 9, "size": 32, "seed": 5}]
