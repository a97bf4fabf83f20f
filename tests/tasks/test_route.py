"""The route contract: a toy third route (a 3D and a 2D stage and a between-stage step), registered in the catalog
from this test alone, trains, predicts and scores through the CLI; stage selection of ``Step``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.config.schema import DataConfig, InferConfig, StrictModel, TrainConfig, TrainerConfig
from spinelab.infer.result import SCHEMA_VERSION, StudyResult
from spinelab.registry import CERVICAL_TARGETS
from spinelab.tasks.catalog import get_route, register_route, unregister_route
from spinelab.tasks.route import Route, Step, Training
from spinelab.train.stage import Stage

SIDE = 16  # every study is resampled to SIDE^3 voxels


def _toy_train() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=2, ema=None)


class ToySection(StrictModel):
    train: TrainConfig = Field(default_factory=_toy_train)


class ToyConfig(StrictModel):
    """A cervical route of its own: two stage sections, and the shared data, trainer and infer sections."""

    task: Literal["cervical"] = "cervical"
    route: Literal["toy3d"] = "toy3d"
    experiment: str = "toy"
    data: DataConfig = Field(default_factory=DataConfig)
    coarse: ToySection = Field(default_factory=ToySection)
    head: ToySection = Field(default_factory=ToySection)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    infer: InferConfig = Field(default_factory=InferConfig)


def _cube(volume: Any) -> torch.Tensor:
    """A study as a ``(1, SIDE, SIDE, SIDE)`` tensor of HU / 1000."""
    x = torch.from_numpy(np.asarray(volume.array, dtype=np.float32))[None, None] / 1000.0
    return torch.nn.functional.interpolate(x, size=(SIDE,) * 3, mode="trilinear", align_corners=False)[0]


class _Studies(Dataset):
    def __init__(self, studies: Any, ids: list[str]) -> None:
        self.studies, self.ids = studies, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uid = self.ids[i]
        return {"x": _cube(self.studies.volume(uid)), "y": torch.from_numpy(self.studies.targets(uid)), "id": uid}


class ToyStage(Stage):
    """Eight logits from the study cube; ``coarse`` is a Conv3d net, ``head`` a Conv2d net on the axial mean."""

    monitor = "val/loss"

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.studies import CervicalStudies

        studies = CervicalStudies(self.cfg)
        train, val = studies.split(list(studies.labels.index), fold)
        return _Studies(studies, train), (_Studies(studies, val) if val else None)

    def build_model(self) -> nn.Module:
        return toy_model(self.name)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"logits": model(batch["x"])}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.binary_cross_entropy_with_logits(outputs["logits"], batch["y"])}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        p = torch.sigmoid(outputs["logits"]).detach().cpu().numpy()
        return pd.DataFrame(p, columns=list(CERVICAL_TARGETS)).assign(StudyInstanceUID=list(batch["id"]))


class CoarseStage(ToyStage):
    name = "coarse"


class HeadStage(ToyStage):
    name = "head"


def toy_model(name: str) -> nn.Module:
    if name == "coarse":
        return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                             nn.Linear(4, len(CERVICAL_TARGETS)))
    return nn.Sequential(_AxialMean(), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, len(CERVICAL_TARGETS)))


class _AxialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)  # (B, 1, D, H, W) -> (B, 1, H, W)


def _setup(cfg: ToyConfig, run_dir: Path, progress: bool) -> tuple[ToyConfig, None]:
    from spinelab.data.prepare import prepare_dataset
    from spinelab.io.atomic import atomic_write_json
    from spinelab.tasks.cervical.studies import CervicalStudies

    cfg = prepare_dataset(cfg, run_dir, progress=progress)
    labels = CervicalStudies(cfg).labels
    atomic_write_json(run_dir / "prior.json", labels[list(CERVICAL_TARGETS)].mean().to_dict())
    return cfg, None


def _between(cfg: ToyConfig, run_dir: Path, context: Any, progress: bool) -> None:
    """What a real route hands from one stage to the next (here: a note that stage 1 is done)."""
    (run_dir / "handover.json").write_text(json.dumps({"after": "coarse"}))


TRAINING = Training(setup=_setup, steps=(
    Step("coarse", stages=lambda cfg, run_dir, _: [CoarseStage(cfg, run_dir)]),
    Step("handover", run=_between, needed_by=("head",)),
    Step("head", stages=lambda cfg, run_dir, _: [HeadStage(cfg, run_dir)]),
))


class ToyPredictor:
    """The toy route's predictor: both stages' models, averaged."""

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None, runtime: Any = None,
                 tta: bool = True, strict: bool = False) -> None:
        from spinelab.train.run_folder import load_stage_models, read_run_config, select_folds

        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        stages = [CoarseStage(self.cfg, self.run_dir), HeadStage(self.cfg, self.run_dir)]
        self.models = [m for s in stages for m in load_stage_models(s, select_folds(self.run_dir, s.name, folds))]
        self.prior = json.loads((self.run_dir / "prior.json").read_text())

    @property
    def model_info(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "route": self.cfg.route}

    def predict_study(self, study: str | Path, study_id: str | None = None, **options: Any) -> StudyResult:
        from spinelab.infer.studies import read_study_volume
        from spinelab.tasks.cervical.studies import prepare_cervical_volume

        x = _cube(prepare_cervical_volume(read_study_volume(study)))[None]
        with torch.no_grad():
            p = np.mean([torch.sigmoid(m(x))[0].numpy() for m in self.models], axis=0)
        return StudyResult(schema_version=SCHEMA_VERSION, study=study_id,
                           probabilities=dict(zip(CERVICAL_TARGETS, map(float, p), strict=True)),
                           box=[0, 0, SIDE, SIDE], model=self.model_info)

    def fallback(self, study_id: str, error: str) -> StudyResult:
        return StudyResult(schema_version=SCHEMA_VERSION, study=study_id, probabilities=self.prior, status="failed",
                           error=error, warnings=[error])


@pytest.fixture
def toy_route() -> Iterator[Route]:
    route = register_route(Route("cervical", "toy3d", config=ToyConfig, training=TRAINING,
                                 predictor=ToyPredictor))
    yield route
    unregister_route("cervical", "toy3d")


@pytest.mark.slow
def test_a_toy_third_route_trains_predicts_and_scores_through_the_cli(
        toy_route: Route, tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("task: cervical\nroute: toy3d\ntrainer: {accelerator: cpu}\n")
    run, out = tmp_path / "run", tmp_path / "pred"
    cli = CliRunner()
    trained = cli.invoke(app, ["train", "cervical", "-c", str(recipe), "-o", str(run), "--fold", "0",
                               f"data.dataset_dir={tiny_cervical_dataset}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert trained.exit_code == 0, trained.output
    assert (run / "coarse/fold_0/model.pt").is_file() and (run / "head/fold_0/model.pt").is_file()
    assert json.loads((run / "handover.json").read_text()) == {"after": "coarse"}
    assert json.loads((run / "format.json").read_text())["format"] >= 2
    assert "route: toy3d" in (run / "config.yaml").read_text()

    predicted = cli.invoke(app, ["predict", "cervical", "--model", str(run), "-i", str(tiny_cervical_dataset),
                                 "-o", str(out), "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    study = json.loads(next((out / "studies").glob("*.json")).read_text())
    assert study["schema_version"] == 1 and study["box"] == [0, 0, SIDE, SIDE]  # the route's own key rides along
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["studies"] == 2 and np.isfinite(evaluation["competition_score"])

    labels = tiny_cervical_dataset / "test_labels.csv"
    scored = cli.invoke(app, ["score", "cervical", str(labels), str(out / "submission.csv")])
    assert scored.exit_code == 0, scored.output
    assert float(scored.stdout.strip()) == pytest.approx(evaluation["competition_score"], abs=1e-6)


def test_an_unknown_stage_of_a_route_is_refused_before_any_work(toy_route: Route, tmp_path: Path) -> None:
    from spinelab.config.load import load_config
    from spinelab.errors import ConfigError
    from spinelab.tasks.route import train_route

    cfg = load_config("cervical", overrides=["route=toy3d", f"data.dataset_dir={tmp_path / 'absent'}"])
    assert isinstance(cfg, ToyConfig)
    with pytest.raises(ConfigError, match="unknown cervical stage 'stage2'; choose all, coarse or head"):
        train_route(toy_route, cfg, tmp_path / "run", stage="stage2")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("stage", "expected"), [
    ("all", ["stage1", "localize", "stage2"]),
    ("stage1", ["stage1"]),
    ("frames", ["localize", "frames"]),
    ("stage2", ["localize", "stage2"]),
])
def test_the_cervical_steps_a_stage_option_runs(stage: str, expected: list[str]) -> None:
    from spinelab.config.load import load_config
    from spinelab.tasks.route import resolve

    cfg = load_config("cervical")
    steps = resolve(get_route("cervical").training).steps
    assert [s.name for s in steps if s.selected(stage, cfg)] == expected
    cfg.frames.enabled = True
    assert ("frames" in [s.name for s in steps if s.selected("all", cfg)]) is True


@pytest.mark.parametrize(("route", "stage", "expected"), [
    ("seg3d", "all", ["seg", "masks", "vertebra", "patient"]),
    ("seg3d", "frames", ["masks", "frames"]),
    ("seg3d", "vertebra", ["masks", "vertebra"]),
    ("sequence", "all", ["stage1", "labels", "slices", "study"]),
    ("sequence", "frames", ["labels", "frames"]),
    ("sequence", "slices", ["labels", "slices"]),
])
def test_the_frame_step_of_the_seg3d_and_sequence_routes(route: str, stage: str, expected: list[str]) -> None:
    from spinelab.config.load import load_config
    from spinelab.tasks.route import resolve

    cfg = load_config("cervical", overrides=[f"route={route}"])
    steps = resolve(get_route("cervical", route).training).steps
    assert [s.name for s in steps if s.selected(stage, cfg)] == expected
    cfg.frames.enabled = True  # the optional pre-training then runs with the others, before the classifiers
    with_frames = {"seg3d": ["seg", "masks", "frames", "vertebra", "patient"],
                   "sequence": ["stage1", "labels", "frames", "slices", "study"]}[route]
    assert [s.name for s in steps if s.selected("all", cfg)] == with_frames
