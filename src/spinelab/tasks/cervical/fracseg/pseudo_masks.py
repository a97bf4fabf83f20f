"""Box pseudo-masks of the fracture segmentation (``derived/fracture_masks``); filled in after the skeleton."""

from __future__ import annotations

from typing import Any

from spinelab.config.fracseg import FracsegConfig

__all__ = ["write_fracture_masks"]


def write_fracture_masks(cfg: FracsegConfig, *, progress: bool = True) -> dict[str, Any]:
    """Write the box pseudo-masks of every boxed study (not yet implemented)."""
    raise NotImplementedError("fracture pseudo-masks: coming in the next commit")
