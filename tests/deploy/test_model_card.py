"""The model card: filled from the run folder, every heading there."""

from __future__ import annotations

import json
from pathlib import Path

from spinelab.config.load import read_run_config
from spinelab.deploy.model_card import model_card


def test_the_card_names_task_route_scores_use_limits_and_licence(cervical_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for f in cervical_run.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    (run / "cv_scores.json").write_text(json.dumps({"schema_version": 1, "studies": 12,
                                                    "competition_score": 0.4321, "auc_vertebra": 0.8765}))
    text = model_card(run, read_run_config(cervical_run),
                      {"task": "cervical", "route": "cervical/slices", "experiment": "tiny", "licence": "MIT",
                       "folds": {"stage1": [0]}, "source_run": str(run)})
    for heading in ("## Model", "## Training data", "## Cross-validated scores", "## Intended use", "## Limits",
                    "## Licence"):
        assert heading in text
    assert "competition_score: 0.4321" in text and "over 12 studies" in text
    assert "cervical/slices" in text and "\nMIT\n" in text and "never a diagnosis" in text


def test_a_run_without_scores_says_so(cervical_run: Path) -> None:
    text = model_card(cervical_run, read_run_config(cervical_run),
                      {"task": "lumbar", "route": "lumbar/points", "licence": "x"})
    assert "No cross-validated scores" in text and "Sagittal T1" in text
