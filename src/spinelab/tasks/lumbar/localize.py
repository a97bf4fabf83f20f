"""Stage-1 inference on one study: level points in every series, in pixels (per series) and world mm.

Sagittal T2 gives the spinal-canal points, sagittal T1 the foraminal points of each side; the completed
spinal points are projected into the axial series to pick the slice of each level, where the axial model
finds the subarticular points. A missing series is reported and its points are filled from the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spinelab.config.schema import LumbarConfig
from spinelab.errors import InputError
from spinelab.infer.runtime import Runtime
from spinelab.infer.tta import flip_outputs, swap_channels
from spinelab.io.volume import Volume
from spinelab.registry import LUMBAR_LEVELS
from spinelab.tasks.lumbar.grading import complete_anchors
from spinelab.tasks.lumbar.points import (
    SIDES,
    axial_slice_for,
    decode_heatmaps,
    image_points_to_world,
    point_inputs,
    side_centre,
)
from spinelab.tasks.lumbar.studies import LumbarStudy

__all__ = ["heatmap_probs", "localize_study", "point_record"]


def heatmap_probs(models: list[torch.nn.Module], images: np.ndarray, runtime: Runtime, *,
                  flip_pairs: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Mean spatial-softmax maps ``(N, K, h, w)`` over models (and the mirrored input when ``flip_pairs``)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))

    def forward(model: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor:
        hm = runtime.run(model, inp)["heatmap"]
        return torch.softmax(hm.flatten(2), -1).view_as(hm)

    probs = flip_outputs(models, x, forward, tta=flip_pairs is not None,
                         unmirror=lambda p: swap_channels(p.flip(-1), flip_pairs or []))
    return np.mean([p.cpu().numpy() for p in probs], axis=0)


def point_record(volume: Volume, series_id: str, world: np.ndarray, *, confidence: float | None = None
                 ) -> dict[str, Any] | None:
    """JSON record of a world point in one series: nearest instance, pixel (x = column, y = row), world."""
    if not np.all(np.isfinite(world)):
        return None
    d, h, w = volume.world_to_voxel(world)
    k = int(np.clip(np.rint(d), 0, volume.shape[0] - 1))
    numbers = volume.meta.get("instance_numbers")
    instance = int(numbers[k]) if numbers else (volume.slice_ids[k] if volume.slice_ids else k)
    rec = {"series_id": series_id, "slice_index": k, "instance_number": instance, "x": round(float(w), 2),
           "y": round(float(h), 2), "world": [round(float(v), 2) for v in world]}
    if confidence is not None:
        rec["confidence"] = round(float(confidence), 4)
    return rec


def localize_study(study: LumbarStudy, models: dict[str, list[torch.nn.Module]], cfg: LumbarConfig,
                   geometry: dict[str, Any], *, runtime: Runtime, tta: bool = True) -> dict[str, Any]:
    """Stage-1 points of one study.

    Args:
        study: oriented volumes.
        models: ``{"stage1_sag_t2": [...], "stage1_sag_t1": [...], "stage1_axial": [...]}``.
        cfg: run config (stage1 sizes).
        geometry: ``geometry.json`` of the run (T1 side offsets).
        runtime: device / precision.
        tta: mirror the axial input too.

    Returns:
        ``{"anchors": {condition: (5, 3) world, completed}, "points": JSON records per condition and level,
        "axial_slices": per level, "warnings": [...]}``.

    Raises:
        InputError: the study has no sagittal series, so no level can be found.
    """
    s1 = cfg.stage1
    size, stride = s1.image_size, s1.heatmap_stride
    nan = np.full((len(LUMBAR_LEVELS), 3), np.nan)
    anchors: dict[str, np.ndarray] = {}
    conf: dict[str, np.ndarray] = {}
    warnings = list(study.warnings)
    t2, t1 = study.first("sag_t2"), study.first("sag_t1")
    if t2 is None and t1 is None:
        raise InputError(study.study_id, "no sagittal series (T1 or T2/STIR): the levels cannot be located")
    if t2 is not None:
        centre = t2.shape[0] // 2
        img = point_inputs(study, t2, [centre], cfg)
        xy, mass = decode_heatmaps(heatmap_probs(models["stage1_sag_t2"], img, runtime), stride)
        anchors["spinal_canal_stenosis"] = image_points_to_world(t2, centre, xy[0], size)
        conf["spinal_canal_stenosis"] = mass[0]
    if t1 is not None:
        centres = [side_centre(t1, geometry["t1_offsets_mm"][side]) for side in SIDES]
        imgs = point_inputs(study, t1, centres, cfg)
        xy, mass = decode_heatmaps(heatmap_probs(models["stage1_sag_t1"], imgs, runtime), stride)
        for i, side in enumerate(SIDES):
            anchors[f"{side}_neural_foraminal_narrowing"] = image_points_to_world(t1, centres[i], xy[i], size)
            conf[f"{side}_neural_foraminal_narrowing"] = mass[i]
    levels_world = complete_anchors(anchors)["spinal_canal_stenosis"]
    axial_slices: dict[str, Any] = {}
    sub = {side: nan.copy() for side in SIDES}
    sub_conf = {side: np.full(len(LUMBAR_LEVELS), np.nan) for side in SIDES}
    if study.series.get("axial"):
        found = [axial_slice_for(study, p) for p in levels_world]
        todo = [(li, f) for li, f in enumerate(found) if f is not None]
        for li, f in enumerate(found):
            if f is None:
                warnings.append(f"level {LUMBAR_LEVELS[li]} is not covered by any axial series")
        if todo:
            imgs = np.concatenate([point_inputs(study, study.series["axial"][f[0]], [f[1]], cfg) for _, f in todo])
            probs = heatmap_probs(models["stage1_axial"], imgs, runtime, flip_pairs=[(0, 1)] if tta else None)
            xy, mass = decode_heatmaps(probs, stride)
            for k, (li, (si, d)) in enumerate(todo):
                vol = study.series["axial"][si]
                world = image_points_to_world(vol, d, xy[k], size)
                for j, side in enumerate(SIDES):
                    sub[side][li] = world[j]
                    sub_conf[side][li] = mass[k, j]
                axial_slices[LUMBAR_LEVELS[li]] = point_record(vol, study.series_ids["axial"][si],
                                                               levels_world[li])
    for side in SIDES:
        anchors[f"{side}_subarticular_stenosis"] = sub[side]
        conf[f"{side}_subarticular_stenosis"] = sub_conf[side]
    completed = complete_anchors(anchors)
    points: dict[str, dict[str, Any]] = {}
    for cond, pts in anchors.items():
        kind = "sag_t1" if "foraminal" in cond else ("axial" if "subarticular" in cond else "sag_t2")
        rec: dict[str, Any] = {}
        for li, level in enumerate(LUMBAR_LEVELS):
            if kind == "axial":
                f = axial_slice_for(study, pts[li])
                vol = study.series["axial"][f[0]] if f else None
                sid = study.series_ids["axial"][f[0]] if f else None
            else:
                vol, sid = study.first(kind), (study.series_ids[kind] or [None])[0]
            rec[level] = (point_record(vol, sid, pts[li], confidence=conf[cond][li])
                          if vol is not None else None)
        points[cond] = rec
    return {"anchors": completed, "raw": anchors, "points": points, "axial_slices": axial_slices,
            "warnings": warnings}
