"""``Volume``: the one in-memory image type, an array with the affine that places it in the patient.

Axis convention (chosen once for the whole package): ``array`` is ``(D, H, W)`` = (slice, row, column).
For a DICOM series the slices are sorted along the slice normal; for a NIfTI file the axes are the file's
``(k, j, i)``. ``affine`` maps the index vector ``(d, h, w, 1)`` to patient coordinates in **LPS** millimetres
(the DICOM convention). Nothing in spinelab interprets an array without its affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from spinelab.errors import GeometryError

__all__ = ["Volume", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """An image or label map with its geometry.

    Args:
        array: voxel values, shape ``(D, H, W)``. CT in Hounsfield units (int16 when exact).
        affine: 4x4 matrix mapping ``(d, h, w, 1)`` to LPS millimetres.
        slice_ids: for DICOM, the file stem of each slice in array order (RSNA's ``slice_number`` /
            ``instance_number``), so a CSV row maps to an array index.
        meta: modality, series description, UIDs, transfer syntaxes, warnings, source path, ...
        is_label: a label map: resampled nearest-neighbour, values and dtype kept.
    """

    array: np.ndarray
    affine: np.ndarray
    slice_ids: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    is_label: bool = False

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise GeometryError(f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim != 3:
            raise GeometryError(f"Volume array must be 3-D (D, H, W), got shape {self.array.shape}")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise GeometryError("affine is singular: voxel axes are degenerate")
        if self.slice_ids is not None and len(self.slice_ids) != self.array.shape[0]:
            raise GeometryError(f"{len(self.slice_ids)} slice ids for {self.array.shape[0]} slices")

    # --- geometry ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (D, H, W)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def ras_affine(self) -> np.ndarray:
        """The affine in RAS+ (nibabel's convention)."""
        return LPS_TO_RAS @ self.affine

    @property
    def orientation(self) -> str:
        """Axis codes of (D, H, W), e.g. ``'SPL'``: the direction each index increases towards (the letter
        convention of ``io.orientation``, where the canonical ``'IPL'`` is defined)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.ras_affine))

    def voxel_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` voxel indices ``(d, h, w)`` to LPS mm."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` LPS mm points to (fractional) voxel indices ``(d, h, w)``."""
        points = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return points @ inv[:3, :3].T + inv[:3, 3]

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy with another array on the same grid (and optional field changes)."""
        if array.shape[:3] != self.array.shape:
            raise GeometryError(f"array shape {array.shape} does not match grid {self.array.shape}")
        return replace(self, array=array, **changes)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        kind = "label" if self.is_label else "image"
        return f"Volume({kind}, shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}), {self.orientation})"
