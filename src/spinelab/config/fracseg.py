"""The ``cervical/fracseg`` route's config (``route: fracseg``): the 7th place's fracture segmentation.

``grid`` is the crop the fracture network sees (one definition for pseudo-masks, training and inference, read
by ``tasks.cervical.fracseg.crop.crop_grid``): the C1-C7 box of the vertebra mask plus ``margin_mm``, resampled
to ``spacing_mm`` (z, y, x). ``fracture_seg`` is the segmentation stage (round 1); ``rounds`` more than 1 adds
the pseudo-labelling rounds ``fracture_seg_r2`` ... (same section), each trained on the previous round's
out-of-fold probability above ``threshold``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from spinelab.config.fracseg_post import OverallConfig, PercentileFitConfig
from spinelab.config.schema import DataConfig, InferConfig, ModelConfig, StrictModel, TrainConfig, TrainerConfig
from spinelab.config.seg3d import Seg3dSegConfig, SegAugmentConfig

__all__ = ["MAX_ROUNDS", "round_name", "FracGridConfig", "PseudoMaskConfig", "FakeFracture3dConfig",
           "FractureSegConfig", "FracsegConfig"]

Triple = tuple[int, int, int]
#: The most pseudo-labelling rounds a recipe may ask for (each round is a stage of the route).
MAX_ROUNDS = 5


def round_name(k: int) -> str:
    """Stage name of pseudo-labelling round ``k`` (``fracture_seg``, ``fracture_seg_r2``, ...)."""
    return "fracture_seg" if k == 1 else f"fracture_seg_r{k}"


class FracGridConfig(StrictModel):
    """The crop grid: the C1-C7 box of the vertebra mask plus ``margin_mm`` on every side, resampled to
    ``spacing_mm`` = (z, y, x) mm in the canonical orientation (the seed: 5 mm, 0.8 mm z, 0.4 mm in plane),
    HU mapped to [0, 1] by each ``(level, width)`` window (one channel each)."""

    margin_mm: float = Field(default=5.0, ge=0.0)
    spacing_mm: tuple[float, float, float] = (0.8, 0.4, 0.4)
    windows: list[tuple[float, float]] = Field(default_factory=lambda: [(400.0, 1800.0)])

    @model_validator(mode="after")
    def _positive(self) -> FracGridConfig:
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"grid.spacing_mm must be positive, got {list(self.spacing_mm)}")
        if not self.windows or any(w <= 0 for _, w in self.windows):
            raise ValueError("grid.windows: give at least one (level, width) window, every width positive")
        return self

    @property
    def in_chans(self) -> int:
        return len(self.windows)


class PseudoMaskConfig(StrictModel):
    """Box pseudo-masks (``spinelab labels cervical --fracture-masks``): each box on its slice, intersected
    with the vertebra mask dilated by ``dilate_mm``, kept on the vertebrae labelled fractured.

    ``vertebra_masks`` are more folders of vertebra label maps (``<UID>.nii.gz`` or ``<UID>/vertebrae.nii.gz``,
    the output of ``spinelab segment``) for boxed studies without an RSNA segmentation; ``derived/masks`` (the
    RSNA segmentations on their CT grids) is read first. With ``segment_missing`` and a ``seg`` section, the
    route's step ``vertebra_masks`` segments the boxed studies that still have no vertebra mask with the run's
    ``seg`` stage (``derived/segmented_masks``), so they get pseudo-masks too.
    """

    dilate_mm: float = Field(default=2.0, ge=0.0)
    vertebra_masks: list[Path] = Field(default_factory=list)
    segment_missing: bool = True
    #: keep only voxels of vertebrae labelled fractured in train.csv (a box often grazes a neighbour)
    fractured_only: bool = True


class FakeFracture3dConfig(StrictModel):
    """The 3D fake fracture (``data.fake_fracture3d``): a thin lucent slab through the bone of a vertebra
    labelled intact, its voxels added to the target. ``prob`` per training patch."""

    prob: float = Field(default=0.3, ge=0.0, le=1.0)
    thickness_mm: tuple[float, float] = (0.8, 2.0)
    radius_mm: tuple[float, float] = (4.0, 10.0)
    bone_hu: float = 150.0
    fill_hu: tuple[float, float] = (30.0, 90.0)


class FractureSegConfig(StrictModel):
    """Stage ``fracture_seg`` (and its rounds): background / fracture segmentation on the crop grid, Dice + CE,
    ``patch`` windows (``fg_ratio`` of them centred on a fracture voxel), validated by the fracture Dice of
    whole held-out crops (sliding windows, Gaussian blending).

    ``use_negatives`` adds studies labelled without any fracture (empty target) that have a vertebra mask.
    """

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="fracture_dynunet"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=100, batch_size=2, ema=None))
    patch: Triple = (128, 128, 128)
    samples_per_volume: int = Field(default=1, ge=1)
    fg_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    use_negatives: bool = True
    #: crops kept in memory per dataset (least recently used dropped): one at the seed's grid is ~100 MB
    cache_studies: int = Field(default=64, ge=1)
    augment: SegAugmentConfig = Field(default_factory=SegAugmentConfig)
    fake_fracture: FakeFracture3dConfig = Field(default_factory=FakeFracture3dConfig)
    dice_weight: float = Field(default=1.0, ge=0.0)
    ce_weight: float = Field(default=1.0, ge=0.0)
    sw_overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _patch_positive(self) -> FractureSegConfig:
        if min(self.patch) < 1:
            raise ValueError(f"fracture_seg.patch must be positive voxel counts, got {list(self.patch)}")
        return self

    @property
    def n_classes(self) -> int:
        """Background and fracture."""
        return 2

    @property
    def roi(self) -> Triple:
        """The window the network sees (the augmentation sizes its dropout holes by it)."""
        return self.patch


class FracsegConfig(StrictModel):
    """RSNA 2022 cervical, the 7th place's shape: fracture segmentation on the vertebra crop.

    ``rounds``: 1 trains on the box pseudo-masks only; ``k`` adds the stages ``fracture_seg_r2`` ..
    ``fracture_seg_r<k>``, each on the previous round's out-of-fold probability above ``threshold``.

    ``seg`` (optional): the vertebra segmentation stage of ``cervical/seg3d``, trained first in the same run,
    so that the run segments the vertebrae it needs at inference (``Segmenter`` on this run folder) and
    ``spinelab segment`` writes both the vertebrae and the fracture probability.
    """

    task: Literal["cervical"] = "cervical"
    route: Literal["fracseg"] = "fracseg"
    experiment: str = "fracseg"
    data: DataConfig = Field(default_factory=DataConfig)
    seg: Seg3dSegConfig | None = None
    grid: FracGridConfig = Field(default_factory=FracGridConfig)
    pseudo: PseudoMaskConfig = Field(default_factory=PseudoMaskConfig)
    fracture_seg: FractureSegConfig = Field(default_factory=FractureSegConfig)
    rounds: int = Field(default=1, ge=1, le=MAX_ROUNDS)
    #: probability above which a voxel counts as fracture (the validation Dice, the next round's labels)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    percentile: PercentileFitConfig = Field(default_factory=PercentileFitConfig)
    overall: OverallConfig = Field(default_factory=OverallConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
