"""Every config field of every pipeline, with its default, in one place (pydantic, ``extra="forbid"``).

Recipe files in ``spinelab/configs/`` hold only what differs from these defaults. The resolved config is
written into each run folder and is the input contract at inference time (window, sizes, slices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from spinelab.precision import inference_precision, training_precision

__all__ = [
    "StrictModel",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "DataConfig",
    "InferConfig",
    "CervicalStage1Config",
    "CervicalStage2Config",
    "CervicalConfig",
    "LumbarStage1Config",
    "LumbarStage2Config",
    "LumbarConfig",
    "ExperimentConfig",
]


class StrictModel(BaseModel):
    """Base: unknown keys are errors, assignments are validated.

    A section given in part (``frames.train.epochs=2`` on the command line, or ``train: {epochs: 2}`` in a
    recipe) keeps the other values of the field's own default: ``frames.train`` defaults to batches of 32
    without EMA, and a partial mapping must not fall back to ``TrainConfig``'s class defaults instead.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_field_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            value = merged.get(name)
            if not isinstance(value, dict) or field.default_factory is None:
                continue
            default = field.default_factory()  # type: ignore[call-arg]
            if isinstance(default, BaseModel):
                merged[name] = _merged_onto(default.model_dump(exclude_unset=True), value)
        return merged


def _merged_onto(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` deep-merged onto ``base`` (both plain mappings; ``new`` wins)."""
    out = dict(base)
    for key, value in new.items():
        out[key] = _merged_onto(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


class ModelConfig(StrictModel):
    """Which registered architecture to build and how.

    ``pretrained_path`` points at a local backbone checkpoint (timm state dict); nothing is downloaded.
    Fields left unset (``None``) fall back to the registered builder's defaults, so a ``test_*`` model
    stays tiny unless a recipe says otherwise. ``kwargs`` carries any other builder argument (a 3D
    network's ``spatial_dims``, ``channels``, ``strides``, ...); when the model is built every key is
    checked against the builder's signature, and one it does not take is a ``ConfigError``.
    """

    name: str
    backbone: str | None = None
    pretrained_path: Path | None = None
    #: expected SHA-256 (hex) of ``pretrained_path``; a different file is refused
    pretrained_sha256: str | None = None
    hidden: int | None = None
    drop_rate: float | None = None
    #: more builder arguments, e.g. ``{spatial_dims: 3, channels: [16, 32, 64], strides: [2, 2]}``
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kwargs_do_not_repeat_fields(self) -> ModelConfig:
        twice = sorted(set(self.kwargs) & (set(type(self).model_fields) - {"kwargs"}))
        if twice:
            raise ValueError(f"model {self.name!r}: set model.{twice[0]} itself, not model.kwargs.{twice[0]}")
        return self

    def builder_args(self) -> dict[str, Any]:
        """Every builder argument this section sets (unset fields left out), ``kwargs`` included."""
        named = {k: getattr(self, k) for k in type(self).model_fields if k not in ("name", "kwargs")}
        return {**{k: v for k, v in named.items() if v is not None}, **self.kwargs}


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay (the seeds' schedule)."""

    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1
    min_lr_frac: float = 0.01


class TrainConfig(StrictModel):
    """Loop settings for one stage."""

    epochs: int = 10
    batch_size: int = 4
    accumulate: int = 1
    ema: float | None = 0.99
    grad_clip: float | None = 5.0
    num_workers: int = 0
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    # "last_epoch" validates once, after the last epoch: for a stage whose checkpoint is not picked by its
    # validation score (keep: last), the other validations only cost time (a sixth of the demo's frames).
    validation: Literal["every_epoch", "last_epoch"] = "every_epoch"
    seed: int = 42
    optim: OptimConfig = Field(default_factory=OptimConfig)
    # Lightning checkpoints left in a finished fold folder (model.pt always stays): "last" keeps
    # checkpoint_last.ckpt (training can be continued), "best" checkpoint_best.ckpt, "all" both, "model"
    # neither. One resnet18 demo fold holds about 600 MB of checkpoints.
    keep: Literal["all", "last", "best", "model"] = "last"


class TrainerConfig(StrictModel):
    """Passed to ``lightning.Trainer``: devices, strategy and precision are the Trainer's business."""

    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    # bf16 / fp16 / fp32 accepted as well as Lightning's spellings; stored as Lightning's (bf16-mixed).
    precision: Annotated[str, BeforeValidator(training_precision)] = "32-true"
    log_every_n_steps: int = 10
    deterministic: bool = False


class DataConfig(StrictModel):
    """Where the dataset, its volume cache, folds and derived labels live.

    Nothing is written into ``dataset_dir`` (it may be read-only, as Kaggle's ``/kaggle/input``). Left unset,
    ``cache_dir`` is ``<dataset>_cache`` beside the dataset when that exists, else ``RUN_DIR/cache``;
    ``folds_file`` is ``DATASET/folds.csv`` when that exists, else the folds are made and written to
    ``RUN_DIR/folds.csv``; ``derived_dir`` is ``DATASET/derived`` when it holds the labels, else
    ``RUN_DIR/derived``.
    """

    dataset_dir: Path = Path("data/cervical")
    cache_dir: Path | None = None
    derived_dir: Path | None = None
    folds_file: Path | None = None
    folds: int = 5
    fold_seed: int = 42
    drop_studies: list[str] = Field(default_factory=list)


class InferConfig(StrictModel):
    """Inference defaults stored with the run; ``spinelab predict`` options override each one."""

    device: str = "auto"
    # bf16 pays only on CPUs with bf16 units (AMX / AVX512-BF16) or on a GPU; see BENCHMARKS.md.
    # fp16 needs a GPU; Lightning's spellings (bf16-mixed) are accepted and stored as bf16.
    precision: Annotated[Literal["fp32", "bf16", "fp16"], BeforeValidator(inference_precision)] = "fp32"
    channels_last: bool = True
    compile: bool = False
    # Flip TTA; None = on a GPU, off on a CPU (it doubles stage-2 time there: bench/predict.py).
    tta: bool | None = None


class CervicalStage1Config(StrictModel):
    """Slice-level vertebra localisation: 2.5D CNN + BiGRU over slices -> C1-C7 ratios and the C1-C7 box."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="cervical_slice_localizer"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=12, batch_size=2))
    windows: list[tuple[float, float]] = Field(default_factory=lambda: [(400.0, 1800.0)])
    image_size: int = 256
    seq_len: int = 32
    samples_per_study: int = 1
    # Inference: the study is read as ``infer_offsets`` interleaved sequences of ``seq_len`` slices. Flip
    # TTA (``--tta``) reaches stage 1 only with ``infer_flip``: ranges are coarse, and on a CPU the extra
    # stage-1 passes cost more than stage 2 (bench/predict.py).
    infer_offsets: int = 2
    infer_flip: bool = False
    ratio_threshold: float = 0.3
    relative_threshold: float = 0.5
    min_peak: float = 0.1
    smooth_mm: float = 5.0
    box_threshold: float = 0.5
    crop_margin: float = 0.1
    ratio_weight: float = 1.0
    box_weight: float = 0.5


class CervicalStage2Config(StrictModel):
    """Per-vertebra fracture classifier: N slices per vertebra as 2.5D triplets, CNN + BiGRU + attention."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="cervical_fracture_classifier"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=15, batch_size=2))
    windows: list[tuple[float, float]] = Field(default_factory=lambda: [(400.0, 1800.0)])
    image_size: int = 256
    n_slices: int = 24
    overall: Literal["learned", "noisy_or"] = "learned"
    range_jitter: float = 0.1
    # Weight of the per-step fracture loss (targets from the fracture boxes; 0 turns it off). The study
    # labels give ~one positive per fractured vertebra; the boxes say which slices show it (3rd place).
    step_loss_weight: float = Field(default=1.0, ge=0.0)
    # Training only: each intact vertebra gets a painted cleft with this probability (7th place's fake
    # fractures). Its steps become per-step positives; the study-level loss and the patient head's pooling
    # leave it out, so the vertebra and patient heads stay calibrated on real labels only.
    fake_fracture_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    # Where the CNN starts: the same fold's frame pre-training when ``frames.enabled``; otherwise, without
    # ImageNet weights (model.pretrained_path unset), the same fold's stage-1 backbone when architecture and
    # input channels match. Stage 1 already knows the anatomy; a held-out check learned fractures about
    # twice as fast from it as from random weights (BENCHMARKS.md). The frame pre-training uses it too.
    init_from_stage1: bool = True
    # Start each vertebra output and patient_overall at the training folds' rate of that target: a small
    # demo-sized stage 2 otherwise spends its few hundred steps learning the per-level base rates.
    init_prior: bool = True


class CervicalFramesConfig(StrictModel):
    """Optional 2D pre-training of a sequence classifier's CNN (2nd place's first stage): in the slice route
    between stage 1 and stage 2, in the seg3d route between the crops and type 1 (``vertebra``).

    Items are single images exactly as the sequence model sees them (a stage-2 step image, a slice triplet of
    one vertebra; or one per-vertebra crop of the seg3d route) drawn balanced: ``positive_share`` images that a
    fracture box marks, ``fake_share`` intact images with a painted cleft, the rest intact images. Balanced
    single images teach the CNN what a fracture looks like far sooner than whole sequences, where a few percent
    of the images show one; the sequence stage then starts from it.
    """

    enabled: bool = False
    # backbone unset = the sequence stage's (stage 2, type 1), so the weights carry over; windows, size and
    # slices are that stage's.
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="cervical_frame_classifier"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=4, batch_size=32, ema=None))
    frames_per_epoch: int = Field(default=4096, ge=1)
    positive_share: float = Field(default=0.25, ge=0.0, le=1.0)
    fake_share: float = Field(default=0.25, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _shares_fit(self) -> CervicalFramesConfig:
        if self.positive_share + self.fake_share > 1.0:
            raise ValueError("frames.positive_share + frames.fake_share must be at most 1")
        return self


class CervicalConfig(StrictModel):
    """RSNA 2022 cervical fracture detection: the two-stage slice recipe."""

    task: Literal["cervical"] = "cervical"
    route: Literal["slices"] = "slices"  # the recipe (spinelab.tasks.catalog); every route has its own class
    experiment: str = "default"
    data: DataConfig = Field(default_factory=DataConfig)
    stage1: CervicalStage1Config = Field(default_factory=CervicalStage1Config)
    frames: CervicalFramesConfig = Field(default_factory=CervicalFramesConfig)
    stage2: CervicalStage2Config = Field(default_factory=CervicalStage2Config)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    infer: InferConfig = Field(default_factory=InferConfig)


class LumbarStage1Config(StrictModel):
    """Level localisation: sagittal heatmaps for the level points, axial slice-to-level assignment."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="lumbar_point_heatmap"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=15, batch_size=4))
    image_size: int = 256
    in_slices: int = 3
    heatmap_stride: int = 4
    sigma: float = 2.0
    slice_jitter: int = 1
    max_axial_samples: int | None = None


class LumbarStage2Config(StrictModel):
    """Grading: crops around the points, condition/level embeddings, sagittal + axial fusion."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="lumbar_roi_grader"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=15, batch_size=8))
    crop_size: int = 64
    crop_mm: float = 40.0
    in_slices: int = 3
    point_jitter_mm: float = 2.0
    series_policy: Literal["first", "all"] = "first"
    any_severe_weight: float = 1.0
    group_heads: bool = True


class LumbarConfig(StrictModel):
    """RSNA 2024 lumbar degenerative grading: level points then ROI grading."""

    task: Literal["lumbar"] = "lumbar"
    route: Literal["points"] = "points"
    experiment: str = "default"
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset_dir=Path("data/lumbar")))
    stage1: LumbarStage1Config = Field(default_factory=LumbarStage1Config)
    stage2: LumbarStage2Config = Field(default_factory=LumbarStage2Config)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    infer: InferConfig = Field(default_factory=InferConfig)


ExperimentConfig = Annotated[CervicalConfig | LumbarConfig, Field(discriminator="task")]
