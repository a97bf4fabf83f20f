"""The ``cervical/sequence`` route's config (``route: sequence``): the 3rd place of RSNA 2022 (darraghdog/RSNA22).

Stage ``stage1`` is the slice route's localisation (same section, same stage); then the slice-level pseudo-labels
(``labels``), stage ``slices`` (a windowed slice model: CNN per slice, BiGRU over a window of consecutive slices,
per-slice vertebra and fracture heads; one model per entry of ``slices.seeds``) and stage ``study`` (the frozen
CNN's cached per-slice embeddings, a BiGRU with attention over the whole study, 7 vertebrae + patient_overall).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from spinelab.config.schema import (
    CervicalFramesConfig,
    CervicalStage1Config,
    DataConfig,
    InferConfig,
    ModelConfig,
    StrictModel,
    TrainConfig,
    TrainerConfig,
)

__all__ = ["SequenceLabelConfig", "SequenceSlicesConfig", "SequenceStudyConfig", "SequenceConfig"]


class SequenceLabelConfig(StrictModel):
    """Slice-level fracture pseudo-labels: stage-1 ratio x the study's label of that vertebra; boxes where given."""

    #: slices kept above the first and below the last slice with a vertebra (stage-1 ranges), in millimetres
    z_margin_mm: float = Field(default=10.0, ge=0.0)
    #: a slice with a fracture box of a vertebra is a positive (1) of that vertebra
    use_boxes: bool = True


class SequenceSlicesConfig(StrictModel):
    """Stage ``slices`` (defaults: the seed's): windows of ``window_len`` consecutive slices (every
    ``slice_step``-th inside the z-range) as 2.5D images (``span`` adjacent slices per HU window) cropped to the
    stage-1 box; CNN per slice, BiGRU over the window, heads for the 7 vertebra ratios and the 7 fracture
    pseudo-labels per slice."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="sequence_slice_model"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, batch_size=4))
    #: one model per seed, trained into the same run folder (``slices_s<seed>/``) and averaged at prediction
    seeds: list[int] = Field(default_factory=lambda: [0])
    #: backbone per seed (cycled; empty = ``model.backbone``): the seed ensembled resnest50d and seresnext50_32x4d
    backbones: list[str] = Field(default_factory=list)
    windows: list[tuple[float, float]] = Field(default_factory=lambda: [(400.0, 1800.0)])
    image_size: int = Field(default=256, ge=8)
    span: int = Field(default=3, ge=1)
    slice_step: int = Field(default=1, ge=1)
    #: the seed's windows of 96 slices
    window_len: int = Field(default=96, ge=2)
    #: step between window starts at inference (and over the validation studies); overlaps are averaged
    window_stride: int = Field(default=48, ge=1)
    #: training windows drawn per study and epoch (random starts inside the z-range)
    windows_per_study: int = Field(default=4, ge=1)
    #: BCE up-weighting of positive fracture slices (the seed weighted positives x2)
    pos_weight: float = Field(default=2.0, gt=0.0)
    ratio_weight: float = Field(default=1.0, ge=0.0)
    fracture_weight: float = Field(default=1.0, ge=0.0)
    augment: bool = True

    @model_validator(mode="after")
    def _odd_span(self) -> SequenceSlicesConfig:
        if self.span % 2 == 0:
            raise ValueError(f"slices.span must be odd (slices either side of the centre), got {self.span}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"slices.seeds must be distinct seeds, at least one, got {self.seeds}")
        return self

    def backbone_of(self, index: int) -> str | None:
        """The backbone of the ``index``-th seed (``None``: the model's default)."""
        return self.backbones[index % len(self.backbones)] if self.backbones else self.model.backbone


class SequenceStudyConfig(StrictModel):
    """Stage ``study``: the frozen slice CNN's embeddings of every slice of the z-range (cached, fp16), with the
    slice model's per-slice logits (``slice_curves``), resampled to ``max_steps`` when longer and padded + masked
    when shorter; BiGRU + attention -> 7 vertebrae + patient."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="sequence_study_head"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=20, batch_size=8, ema=None))
    max_steps: int = Field(default=192, ge=2)
    #: read the cached embeddings (``false`` re-runs the frozen CNN for every item: the benchmark's baseline)
    cache: bool = True
    #: append the slice model's windowed per-slice fracture and ratio logits to each step and start each target
    #: from its vertebra's highest fracture logit (``models.sequence.StudyHead``); ``false``: embeddings alone,
    #: as the seed's study model
    slice_curves: bool = True


class SequenceConfig(StrictModel):
    """RSNA 2022 cervical, the 3rd-place route: localisation, slice-level labels, slice model, study model."""

    task: Literal["cervical"] = "cervical"
    route: Literal["sequence"] = "sequence"
    experiment: str = "sequence"
    data: DataConfig = Field(default_factory=DataConfig)
    stage1: CervicalStage1Config = Field(default_factory=CervicalStage1Config)
    labels: SequenceLabelConfig = Field(default_factory=SequenceLabelConfig)
    # Optional pre-training of the slice CNN on balanced single slices (``tasks.cervical.sequence.frames_stage``).
    frames: CervicalFramesConfig = Field(default_factory=CervicalFramesConfig)
    slices: SequenceSlicesConfig = Field(default_factory=SequenceSlicesConfig)
    study: SequenceStudyConfig = Field(default_factory=SequenceStudyConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
