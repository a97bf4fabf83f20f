"""Inputs of the sequence route, one definition for training and inference: which slices, their 2.5D images,
the windows over them, the per-slice embeddings of a whole study and how a study becomes ``max_steps`` steps.

No training import here: the predictor uses every function of this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spinelab.io.volume import Volume
from spinelab.tasks.cervical.slices import stack_images

__all__ = ["study_positions", "slice_images", "window_starts", "study_embeddings", "fit_steps",
           "windowed_outputs", "head_steps", "CURVE_FEATURES"]

#: slice-model values per step that ``head_steps`` appends: 7 fracture logits, then 7 ratio logits
CURVE_FEATURES = 14


def study_positions(z_range: tuple[int, int] | np.ndarray, step: int) -> np.ndarray:
    """Array indices of the slices the route reads: every ``step``-th slice of the inclusive z-range."""
    z0, z1 = int(z_range[0]), int(z_range[1])
    return np.arange(z0, max(z0, z1) + 1, max(1, int(step)), dtype=np.int64)


def slice_images(volume: Volume, centres: np.ndarray, box: Any, cfg: Any) -> np.ndarray:
    """``(T, span * n_windows, S, S)`` float32 2.5D images around ``centres``, cropped to the stage-1 box."""
    s = cfg.slices
    return stack_images(volume, centres, windows=s.windows, size=s.image_size, box=box, span=s.span)


def window_starts(n: int, length: int, stride: int) -> list[int]:
    """Starts of windows of ``length`` steps covering ``n`` steps with ``stride`` between starts (the last window
    ends on the last step; one window when the study is not longer than a window)."""
    if n <= length:
        return [0]
    starts = list(range(0, n - length + 1, max(1, stride)))
    if starts[-1] != n - length:
        starts.append(n - length)
    return starts


@torch.inference_mode()
def study_embeddings(model: torch.nn.Module, images: np.ndarray, *, batch: int = 32, runtime: Any = None
                     ) -> np.ndarray:
    """The slice CNN's features of every image of a study, ``(T, F)`` float32 (chunks of ``batch`` slices).

    Args:
        model: a ``SliceWindowNet`` (its ``embed``).
        images: ``(T, C, S, S)`` from ``slice_images``.
        runtime: a ``spinelab.infer.runtime.Runtime`` (device, precision); plain CPU float32 without one.
    """
    import contextlib

    prepared = runtime.prepare(model) if runtime is not None else model.eval()
    device = next(model.parameters()).device
    autocast = runtime.autocast if runtime is not None else contextlib.nullcontext
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))[None].to(device)
        with autocast():
            feats = prepared.embed(x)
        out.append(feats[0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "num_features", 0)), np.float32)


def fit_steps(emb: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A study's ``(T, F)`` embeddings as exactly ``max_steps`` steps and the mask of the real ones.

    Longer studies are resampled (linear interpolation between neighbouring slices at ``max_steps`` evenly
    spaced positions, first and last slice kept); shorter ones keep every slice first and are padded with zeros,
    masked out of the study head's attention and GRU.
    """
    emb = np.asarray(emb, dtype=np.float32)
    t = emb.shape[0]
    mask = np.zeros(max_steps, dtype=bool)
    if t > max_steps:
        pos = np.linspace(0, t - 1, max_steps)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, t - 1)
        w = (pos - lo)[:, None].astype(np.float32)
        mask[:] = True
        return emb[lo] * (1 - w) + emb[hi] * w, mask
    out = np.zeros((max_steps, emb.shape[1]), dtype=np.float32)
    out[:t] = emb
    mask[:t] = True
    return out, mask


@torch.inference_mode()
def windowed_outputs(model: torch.nn.Module, feats: np.ndarray, length: int, stride: int) -> dict[str, np.ndarray]:
    """Sliding windows of the slice model's GRU and heads over a study's CNN features, overlaps averaged.

    Returns:
        ``ratio`` and ``fracture`` probabilities ``(T, 7)``.
    """
    t = feats.shape[0]
    acc = {"ratio": np.zeros((t, 7)), "fracture": np.zeros((t, 7))}
    count = np.zeros(t)
    x = torch.from_numpy(np.asarray(feats, dtype=np.float32))
    device = next(model.parameters()).device
    for s in window_starts(t, length, stride):
        out = model.forward_head(x[None, s:s + length].to(device))
        for k in acc:
            acc[k][s:s + length] += torch.sigmoid(out[k][0].float()).cpu().numpy()
        count[s:s + length] += 1
    return {k: (v / np.maximum(count, 1)[:, None]).astype(np.float32) for k, v in acc.items()}


def head_steps(feats: np.ndarray, curves: dict[str, np.ndarray] | None) -> np.ndarray:
    """What the study head reads per slice: the CNN features ``(T, F)``, then, with ``curves`` (from
    ``windowed_outputs``), the slice model's fracture and ratio logits ``(T, F + 14)``.

    Logits rather than probabilities: the head takes the highest fracture logit of each vertebra as its starting
    evidence, and a logit keeps the ranking among the many near-zero probabilities of intact vertebrae.
    """
    feats = np.asarray(feats, dtype=np.float32)
    if curves is None:
        return feats

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p)).astype(np.float32)

    return np.concatenate([feats, logit(curves["fracture"]), logit(curves["ratio"])], axis=1)
