"""The ``cervical/seg3d`` route's config (``route: seg3d``): the 3D vertebra segmentation stage ``seg``, the
per-vertebra crops (``crops``) and the 1st place's classifier stages ``vertebra`` (type 1) and ``patient`` (type 2).

The ``seg`` section holds the input grid (``SegInputConfig``: one definition for training and inference, read
by ``tasks.cervical.seg3d.inputs.seg_input``), the model, the loop, the label schemes and the external data.
The resolved config is stored in the run folder, so a ``Segmenter`` rebuilds the exact input grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from spinelab.config.schema import (
    CervicalFramesConfig,
    DataConfig,
    InferConfig,
    ModelConfig,
    StrictModel,
    TrainConfig,
    TrainerConfig,
)
from spinelab.tasks.cervical.seg3d.schemes import LabelScheme, check_scheme

__all__ = ["SegInputConfig", "ExternalSegData", "SegAugmentConfig", "Seg3dSegConfig", "Seg3dCropConfig",
           "Seg3dVertebraConfig", "Seg3dPatientConfig", "Seg3dConfig"]

Triple = tuple[int, int, int]


class SegInputConfig(StrictModel):
    """How a canonical CT (HU) becomes the network's input grid.

    ``grid: fixed`` (the 1st place): ``size`` = (D, H, W) voxels for the whole volume, ``size[0]`` slices picked
    at evenly spaced quantiles of the slice index (no interpolation across slices) and each resized in plane
    (area when shrinking). ``grid: isotropic`` (the 7th place): resampled to ``spacing_mm`` on every axis;
    training draws ``patch`` windows and inference slides ``patch`` windows over the whole volume.

    ``normalize: window`` maps each HU window ``(level, width)`` in ``windows`` to [0, 1] (one channel each);
    ``minmax`` scales each volume's own minimum..maximum to [0, 1] (the 1st place's raw-pixel scaling; one
    channel).
    """

    grid: Literal["fixed", "isotropic"] = "fixed"
    size: Triple = (128, 128, 128)
    spacing_mm: float = Field(default=1.5, gt=0.0)
    patch: Triple = (160, 128, 128)
    normalize: Literal["window", "minmax"] = "window"
    windows: list[tuple[float, float]] = Field(default_factory=lambda: [(400.0, 1800.0)])

    @model_validator(mode="after")
    def _sizes_positive(self) -> SegInputConfig:
        for name in ("size", "patch"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"seg.{name} must be positive voxel counts, got {list(getattr(self, name))}")
        if self.normalize == "window" and not self.windows:
            raise ValueError("seg.windows must name at least one (level, width) window when normalize is 'window'")
        if any(w <= 0 for _, w in self.windows):
            raise ValueError("seg.windows: every window width must be positive")
        return self

    @property
    def in_chans(self) -> int:
        """Input channels: one per HU window, or one for min-max scaling."""
        return len(self.windows) if self.normalize == "window" else 1

    @property
    def roi(self) -> Triple:
        """The window the network sees: the whole fixed grid, or one isotropic patch."""
        return self.size if self.grid == "fixed" else self.patch


class ExternalSegData(StrictModel):
    """Extra training pairs (NIfTI CT in HU + label map on the same grid) in another label scheme.

    Give one pair (``image`` and ``label``) or ``pairs``: a CSV with columns ``image,label`` (paths relative
    to the CSV's folder unless absolute). External pairs only ever train, they are never held out.
    ``crop_mm`` crops each pair to the box of its vertebrae (those of the scheme) plus this margin before it
    goes onto the grid: a whole-body scan (TotalSegmentator's) then gives a neck-sized volume like the RSNA
    studies instead of a spine a few voxels wide.
    """

    name: str = "external"
    image: Path | None = None
    label: Path | None = None
    pairs: Path | None = None
    label_scheme: LabelScheme = "total"
    crop_mm: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _one_form(self) -> ExternalSegData:
        single = self.image is not None or self.label is not None
        if single == (self.pairs is not None):
            raise ValueError(f"seg.external {self.name!r}: give either image and label, or pairs (a CSV)")
        if single and (self.image is None or self.label is None):
            raise ValueError(f"seg.external {self.name!r}: image and label go together")
        check_scheme(self.label_scheme, 9)
        return self


class SegAugmentConfig(StrictModel):
    """MONAI 3D dictionary augmentation (image and mask together); probabilities per sample."""

    flip_axes: list[int] = Field(default_factory=lambda: [2])  # 2 = left-right: no label swap for vertebrae
    flip_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    affine_prob: float = Field(default=0.3, ge=0.0, le=1.0)
    rotate_deg: float = 15.0
    scale: float = 0.1
    intensity_prob: float = Field(default=0.3, ge=0.0, le=1.0)
    noise_prob: float = Field(default=0.2, ge=0.0, le=1.0)
    dropout_prob: float = Field(default=0.2, ge=0.0, le=1.0)


class Seg3dSegConfig(SegInputConfig):
    """Stage ``seg``: 3D C1-C7 (optionally T1) segmentation, Dice + CE, validated by per-vertebra Dice on whole
    held-out volumes with sliding windows.

    ``label_scheme`` is the scheme of the dataset's own ``segmentations/`` (RSNA 2022: ``rsna``);
    ``external`` lists more training pairs, each with its own scheme. ``fg_ratio`` is the share of isotropic
    training patches centred on a vertebra voxel (nnU-Net's foreground oversampling).
    """

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="vertebra_seg3d_unet"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=100, batch_size=2, ema=None))
    include_t1: bool = False
    label_scheme: LabelScheme = "rsna"
    external: list[ExternalSegData] = Field(default_factory=list)
    augment: SegAugmentConfig = Field(default_factory=SegAugmentConfig)
    samples_per_volume: int = Field(default=1, ge=1)
    fg_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    dice_weight: float = Field(default=1.0, ge=0.0)
    ce_weight: float = Field(default=1.0, ge=0.0)
    # Dice over the whole batch per class (nnU-Net's batch Dice) rather than per sample: a patch without a
    # vertebra then costs nothing for that class, and small vertebrae are not drowned by empty patches.
    dice_batch: bool = True
    sw_overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _scheme_known(self) -> Seg3dSegConfig:
        check_scheme(self.label_scheme, self.n_classes)
        return self

    @property
    def n_classes(self) -> int:
        """Output classes: background, C1..C7 and, with ``include_t1``, T1."""
        return 9 if self.include_t1 else 8


class Seg3dCropConfig(StrictModel):
    """Per-vertebra crops of the classifier stages (``tasks.cervical.seg3d.crops``): per vertebra ``n_slices``
    slices evenly spaced over its extent, each ``span`` adjacent slices plus its mask, at ``image_size``."""

    n_slices: int = Field(default=15, ge=1)
    span: int = Field(default=5, ge=1)
    image_size: int = Field(default=224, ge=8)
    #: CT window (level, width) in HU of the slice channels
    window: tuple[float, float] = (400.0, 1800.0)
    #: added on every side of the vertebra's in-plane box, as a fraction of its larger side
    margin: float = Field(default=0.15, ge=0.0)
    #: training masks: out-of-fold segmentations (``oof``, as the seed) or the dataset's own (``truth``: only
    #: the segmented studies, to measure the classifiers without segmentation errors)
    masks: Literal["oof", "truth"] = "oof"

    @model_validator(mode="after")
    def _odd_span(self) -> Seg3dCropConfig:
        if self.span % 2 == 0:
            raise ValueError(f"crops.span must be odd (slices either side of the centre), got {self.span}")
        return self


class Seg3dVertebraConfig(StrictModel):
    """Type 1 of the 1st place (stage ``vertebra``): one vertebra's crops -> CNN -> BiGRU -> logits."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="seg3d_vertebra_sequence"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, batch_size=8))
    #: weight of the per-slice BCE
    slice_loss_weight: float = Field(default=0.5, ge=0.0)
    # What the per-slice BCE is taught: ``vertebra`` = every crop carries its vertebra's label (the seed);
    # ``boxes`` = a crop of a fractured vertebra is positive where a fracture box marks one of its slices
    # (the slice route's step targets), a fractured vertebra without boxes is left out of that term.
    slice_targets: Literal["vertebra", "boxes"] = "vertebra"
    augment: bool = True
    # Training only: each intact vertebra's crops get a painted cleft with this probability (the 7th place's
    # fake fractures; ``data.fake_fracture``). Its painted crops (all its crops with ``slice_targets:
    # vertebra``) become positives of the per-slice loss; the vertebra loss leaves it out, so the vertebra head
    # stays calibrated on real labels only.
    fake_fracture_prob: float = Field(default=0.0, ge=0.0, le=1.0)


class Seg3dPatientConfig(StrictModel):
    """Type 2 of the 1st place (stage ``patient``): a study's 7 x 15 crops -> vertebra and patient logits."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="seg3d_patient_sequence"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, batch_size=2))
    augment: bool = True
    # Training only: a painted cleft in each intact vertebra with this probability (as ``vertebra``); the
    # painted vertebra leaves the vertebra loss and the patient head's pooling, so both keep real labels.
    fake_fracture_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    # Without ImageNet weights (model.pretrained_path unset), the per-crop CNN and its GRU start from the same
    # fold's type-1 model when that has the same architecture (the slice route's stage 2 starts from its
    # stage 1 in the same way): type 1 sees 7 times more samples per epoch, so it learns the clefts first.
    init_from_vertebra: bool = True
    #: share of type 2 in the final ensemble (type 1 gets the rest; either alone when the other is not trained)
    ensemble_weight: float = Field(default=0.5, ge=0.0, le=1.0)


class Seg3dConfig(StrictModel):
    """RSNA 2022 cervical, the 3D route (the 1st place's shape): vertebra segmentation first."""

    task: Literal["cervical"] = "cervical"
    route: Literal["seg3d"] = "seg3d"
    experiment: str = "seg3d"
    data: DataConfig = Field(default_factory=DataConfig)
    seg: Seg3dSegConfig = Field(default_factory=Seg3dSegConfig)
    crops: Seg3dCropConfig = Field(default_factory=Seg3dCropConfig)
    # Optional pre-training of type 1's CNN on balanced single crops (``tasks.cervical.seg3d.frames_stage``).
    frames: CervicalFramesConfig = Field(default_factory=CervicalFramesConfig)
    vertebra: Seg3dVertebraConfig = Field(default_factory=Seg3dVertebraConfig)
    patient: Seg3dPatientConfig = Field(default_factory=Seg3dPatientConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
