"""Registered architectures: the seeds' designs and tiny ``test_*`` variants for CPU tests.

This module is the explicit import list of the registry: every builder is defined or imported here. Each
builder names the class its ``**kwargs`` go to (``takes=``), so config keys are checked against that class's
signature. Every backbone builder accepts ``pretrained_sha256`` (the config's ``model.pretrained_sha256``):
the weights file is checked against it before the model is built.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spinelab.models.backbones import verify_weights
from spinelab.models.cervical import FractureClassifier, FrameClassifier, SliceLocalizer
from spinelab.models.dynunet import FractureDynUNet
from spinelab.models.lumbar import PointHeatmapNet, RoiGrader
from spinelab.models.overall3d import fracture_overall3d, test_fracture_overall3d  # noqa: F401  (registered there)
from spinelab.models.registry import register_model
from spinelab.models.segmentation import SegResNet3d, SegUNet, TimmUNet3d
from spinelab.models.sequence import SliceWindowNet, StudyHead
from spinelab.models.vertebra_sequence import PatientSequenceNet, VertebraSequenceNet

__all__ = [
    "cervical_slice_localizer",
    "cervical_fracture_classifier",
    "test_cervical_slice_localizer",
    "test_cervical_fracture_classifier",
    "cervical_frame_classifier",
    "test_cervical_frame_classifier",
    "lumbar_point_heatmap",
    "lumbar_roi_grader",
    "test_lumbar_point_heatmap",
    "test_lumbar_roi_grader",
    "vertebra_seg3d_unet",
    "test_vertebra_seg3d_unet",
    "vertebra_seg3d_timm",
    "test_vertebra_seg3d_timm",
    "vertebra_seg3d_segresnet",
    "test_vertebra_seg3d_segresnet",
    "seg3d_vertebra_sequence",
    "test_seg3d_vertebra_sequence",
    "seg3d_patient_sequence",
    "test_seg3d_patient_sequence",
    "fracture_dynunet",
    "test_fracture_dynunet",
    "sequence_slice_model",
    "test_sequence_slice_model",
    "sequence_study_head",
    "test_sequence_study_head",
]


def _checked(kwargs: dict[str, Any], sha: str | None) -> dict[str, Any]:
    """``kwargs``, after checking ``pretrained_path`` against the expected SHA-256 ``sha``."""
    from spinelab.errors import ConfigError

    if sha is not None:
        if kwargs.get("pretrained_path") is None:
            raise ConfigError("model.pretrained_sha256 is set but model.pretrained_path is not")
        verify_weights(kwargs["pretrained_path"], sha)
    return kwargs


@register_model(takes=SliceLocalizer)
def cervical_slice_localizer(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Stage 1 of the RSNA 2022 recipe (default backbone resnet18; seeds used convnext_tiny/resnest50d)."""
    return SliceLocalizer(**_checked(kwargs, pretrained_sha256))


@register_model(takes=FractureClassifier)
def cervical_fracture_classifier(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Stage 2 of the RSNA 2022 recipe (default backbone resnet18; seeds used convnext_tiny/effnetv2_s)."""
    return FractureClassifier(**_checked(kwargs, pretrained_sha256))


@register_model(takes=SliceLocalizer)
def test_cervical_slice_localizer(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny stage-1 variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return SliceLocalizer(**_checked(kwargs, pretrained_sha256))


@register_model(takes=FractureClassifier)
def test_cervical_fracture_classifier(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny stage-2 variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return FractureClassifier(**_checked(kwargs, pretrained_sha256))


@register_model(takes=FrameClassifier)
def cervical_frame_classifier(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Optional 2D pre-training of the stage-2 CNN on single step images (2nd place's first stage)."""
    return FrameClassifier(**_checked(kwargs, pretrained_sha256))


@register_model(takes=FrameClassifier)
def test_cervical_frame_classifier(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny frame-classifier variant for CPU tests (the same backbone as the tiny stage 2)."""
    kwargs = {"backbone": "test_resnet", **kwargs}
    return FrameClassifier(**_checked(kwargs, pretrained_sha256))


@register_model(takes=PointHeatmapNet)
def lumbar_point_heatmap(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Lumbar stage 1: level-point heatmaps on a 2.5D slice stack (default backbone resnet18)."""
    return PointHeatmapNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=RoiGrader)
def lumbar_roi_grader(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Lumbar stage 2: grades from sagittal + axial crops with condition/level embeddings."""
    return RoiGrader(**_checked(kwargs, pretrained_sha256))


@register_model(takes=PointHeatmapNet)
def test_lumbar_point_heatmap(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny stage-1 variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return PointHeatmapNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=RoiGrader)
def test_lumbar_roi_grader(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny stage-2 variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return RoiGrader(**_checked(kwargs, pretrained_sha256))


@register_model(takes=SegUNet)
def vertebra_seg3d_unet(**kwargs: Any) -> nn.Module:
    """3D vertebra segmentation (background + C1-C7): a MONAI U-Net, 16-256 channels over 5 levels."""
    return SegUNet(**kwargs)


@register_model(takes=SegUNet)
def test_vertebra_seg3d_unet(**kwargs: Any) -> nn.Module:
    """Tiny 3D segmentation variant for CPU tests (2 levels, 4 and 8 channels)."""
    kwargs = {"channels": (4, 8), "strides": (2,), "num_res_units": 0, **kwargs}
    return SegUNet(**kwargs)


@register_model(takes=TimmUNet3d)
def vertebra_seg3d_timm(**kwargs: Any) -> nn.Module:
    """3D vertebra segmentation, the 1st place's shape: timm ``resnet18d`` inflated to 3D + 4-block U-Net decoder."""
    return TimmUNet3d(**kwargs)


@register_model(takes=TimmUNet3d)
def test_vertebra_seg3d_timm(**kwargs: Any) -> nn.Module:
    """Tiny inflated-timm variant for CPU tests (timm's ``test_resnet``, 16-8 decoder channels)."""
    kwargs = {"backbone": "test_resnet", "decoder_channels": (16, 16, 8, 8), **kwargs}
    return TimmUNet3d(**kwargs)


@register_model(takes=SegResNet3d)
def vertebra_seg3d_segresnet(**kwargs: Any) -> nn.Module:
    """3D vertebra segmentation: MONAI ``SegResNet`` (16 filters, 4 levels)."""
    return SegResNet3d(**kwargs)


@register_model(takes=SegResNet3d)
def test_vertebra_seg3d_segresnet(**kwargs: Any) -> nn.Module:
    """Tiny SegResNet variant for CPU tests (8 filters, 3 levels)."""
    kwargs = {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1), **kwargs}
    return SegResNet3d(**kwargs)

@register_model(takes=VertebraSequenceNet)
def seg3d_vertebra_sequence(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """1st-place type 1: one vertebra's 15 crops (5 slices + mask) -> CNN -> BiGRU -> slice and vertebra logits."""
    return VertebraSequenceNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=VertebraSequenceNet)
def test_seg3d_vertebra_sequence(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny type-1 variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return VertebraSequenceNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=PatientSequenceNet)
def seg3d_patient_sequence(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """1st-place type 2: a study's 7 x 15 crops -> CNN -> BiGRU -> vertebra logits and patient_overall."""
    return PatientSequenceNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=PatientSequenceNet)
def test_seg3d_patient_sequence(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny type-2 variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return PatientSequenceNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=FractureDynUNet)
def fracture_dynunet(**kwargs: Any) -> nn.Module:
    """3D fracture segmentation (the 7th place): MONAI ``DynUNet``, 5 pools, 32-320 features."""
    return FractureDynUNet(**kwargs)


@register_model(takes=FractureDynUNet)
def test_fracture_dynunet(**kwargs: Any) -> nn.Module:
    """Tiny DynUNet for CPU tests (2 pools, 8-32 features, one deep-supervision head)."""
    kwargs = {"pools": 2, "features": 8, "deep_levels": 1, **kwargs}
    return FractureDynUNet(**kwargs)


@register_model(takes=SliceWindowNet)
def sequence_slice_model(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """3rd-place stage ``slices``: CNN per slice + BiGRU over a window -> per-slice ratios and fractures."""
    return SliceWindowNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=SliceWindowNet)
def test_sequence_slice_model(pretrained_sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """Tiny stage-``slices`` variant for CPU tests."""
    kwargs = {"backbone": "test_resnet", "hidden": 16, **kwargs}
    return SliceWindowNet(**_checked(kwargs, pretrained_sha256))


@register_model(takes=StudyHead)
def sequence_study_head(**kwargs: Any) -> nn.Module:
    """3rd-place stage ``study``: BiGRU + attention over a study's cached slice embeddings."""
    return StudyHead(**kwargs)


@register_model(takes=StudyHead)
def test_sequence_study_head(**kwargs: Any) -> nn.Module:
    """Tiny study head for CPU tests."""
    kwargs = {"hidden": 16, **kwargs}
    return StudyHead(**kwargs)
