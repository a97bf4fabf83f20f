"""The demo's final table (scores, the constant and how far below it) and its options, with the pipelines
replaced by stubs: the real runs take minutes and are measured in BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from spinelab import demo
from spinelab.config.load import load_config
from spinelab.configs import recipe_path


@pytest.mark.parametrize(("score", "baseline", "text"), [
    (0.35, 0.51, "31 % below the constant"),
    (0.607, 0.510, "19 % above the constant"),
    (0.51, 0.51, "level with the constant"),
    (None, 0.51, "-"),
    (0.4, None, "-"),
    (0.4, 0.0, "-"),
])
def test_against_constant_says_how_far_below_or_above(score: float | None, baseline: float | None,
                                                      text: str) -> None:
    assert demo.against_constant(score, baseline) == text


def _stub(task: str, score: float, calls: list[dict[str, Any]]):
    def run(out: Path, **kw: Any) -> dict[str, Any]:
        calls.append({"task": task, "out": out, **kw})
        return {"task": task, "run": out / "run", "submission": out / "sub.csv", "evaluation": out / "ev.json",
                "report": out / "index.html", "score": score, "baseline": 0.5}
    return run


def test_table_prints_the_relative_improvement_and_seed_reaches_the_generators(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "run_cervical_demo", _stub("cervical", 0.25, calls))
    monkeypatch.setattr(demo, "run_lumbar_demo", _stub("lumbar", 0.55, calls))
    monkeypatch.setattr(demo, "console", demo.Console(width=200, force_terminal=False))
    demo.main(task="all", out=tmp_path, studies=12, seed=3)
    text = capsys.readouterr().out
    assert "50 % below the constant" in text and "10 % above the constant" in text
    assert [(c["task"], c["out"], c["studies"], c["seed"]) for c in calls] == [
        ("cervical", tmp_path / "cervical", 12, 3), ("lumbar", tmp_path / "lumbar", 12, 3)]


def test_unknown_task_is_refused_before_any_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "run_cervical_demo", _stub("cervical", 0.25, calls))
    with pytest.raises(typer.BadParameter, match="cervical, lumbar or all"):
        demo.main(task="spine", out=tmp_path)
    assert calls == []


def test_cervical_demo_recipe_loads() -> None:
    cfg = load_config("cervical", [recipe_path("cervical/demo.yaml")], [])
    assert cfg.experiment == "demo"
    assert cfg.stage2.image_size <= 64  # sized for 2 CPU cores: the 128 px study box is about 60 px wide
