"""The ``cervical/fracseg`` route's sections from voxels to probabilities (``percentile`` and ``overall``).

``percentile``: how the percentile rule (``tasks.cervical.fracseg.percentile``) is fitted on the last round's
out-of-fold maps. ``overall``: stage ``overall``, the 7th place's post-processing 3D CNN on two channels (the
fracture probability and the vertebra labels / 7 on the crop) resized to ``size``, trained with BCE on the study
labels (the patient label, and the 7 vertebrae with ``vertebrae``). Where it predicts a target, the route gives
the classifier's probability; elsewhere the rule's.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from spinelab.config.schema import ModelConfig, StrictModel, TrainConfig

__all__ = ["PercentileFitConfig", "OverallConfig"]

Triple = tuple[int, int, int]


class PercentileFitConfig(StrictModel):
    """The rule's seeded search (see ``fit_percentile_rule``)."""

    seed: int = 0
    refine: int = Field(default=100, ge=0)
    max_voxels: int = Field(default=2048, ge=16)
    #: one rule for C1..C7 fitted on all their (study, vertebra) pairs (the seed tuned one per vertebra; with a
    #: few fractured examples per vertebra, 28 fitted numbers follow the noise)
    shared_vertebrae: bool = False


class OverallConfig(StrictModel):
    """Stage ``overall`` (``enabled: false`` leaves the route at the percentile rule alone)."""

    enabled: bool = True
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="fracture_overall3d"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=30, batch_size=4, ema=None))
    size: Triple = (96, 96, 96)
    #: also predict C1..C7 (the seed's classifier predicts the patient only; the rule gives the vertebrae)
    vertebrae: bool = False
    #: weight of the 7 vertebra terms against the patient term in the loss (the metric weighs the patient 7:1)
    vertebra_weight: float = Field(default=1.0, ge=0.0)
    flip_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    #: chance of a random rotation and scaling per training item (the seed's 0.3)
    affine_prob: float = Field(default=0.3, ge=0.0, le=1.0)
    #: rotation range about each axis, degrees (the seed's ±30)
    rotate_deg: float = Field(default=30.0, ge=0.0, le=180.0)
    #: scaling by 1 ± this (the seed's 0.6..1.4)
    scale: float = Field(default=0.4, ge=0.0, lt=1.0)
    #: random shift up to this fraction of ``size`` along each axis: pad by it on every side, then crop ``size``
    #: at random (the seed pads 96 to 128 and crops 96 back, 1/6)
    shift_frac: float = Field(default=1 / 6, ge=0.0, le=0.5)

    @model_validator(mode="after")
    def _size_positive(self) -> OverallConfig:
        if min(self.size) < 4:
            raise ValueError(f"overall.size must be at least 4 voxels on every axis, got {list(self.size)}")
        return self
