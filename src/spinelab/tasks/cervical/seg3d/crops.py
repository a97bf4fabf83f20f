"""Per-vertebra crops of the 1st-place route: for each of C1-C7, ``n_slices`` (15) slices evenly spaced over the
vertebra's extent in z, each sample ``span`` (5) adjacent CT slices plus that vertebra's mask on the centre
slice as a last channel, cropped to the vertebra's box and resized to ``image_size`` (224).

``vertebra_crops`` is the one function that makes them, for training (from out-of-fold or ground-truth masks)
and at inference (from the segmentation); ``CropCache`` keeps them per study so that training reads them
instead of cropping every epoch. Everything is on the canonical grid (``studies.prepare_cervical_volume``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from spinelab.data.transforms import adjacent_indices, crop_resize_stack, window_stack
from spinelab.errors import InputError
from spinelab.io.atomic import atomic_save_npy, atomic_write_json
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE

__all__ = ["CropSettings", "VertebraCrops", "vertebra_extents", "vertebra_crops", "CropCache", "crop_key",
           "describe_crops"]


class CropSettings(Protocol):
    """What the crops read from the config's ``crops`` section (``config.seg3d.Seg3dCropConfig``)."""

    n_slices: int
    span: int
    image_size: int
    window: tuple[float, float]
    margin: float


class VertebraCrops(NamedTuple):
    """The crops of one study."""

    #: ``(7, n_slices, span + 1, S, S)`` float32 in [0, 1]; the last channel is the vertebra's mask.
    images: np.ndarray
    #: ``(7,)`` bool: the vertebra is in the mask (a missing one has all-zero images).
    found: np.ndarray
    #: ``(7, n_slices)`` centre slice indices on the canonical grid (-1 for a missing vertebra).
    slices: np.ndarray
    #: ``(7, 4)`` crop boxes ``[x0, y0, x1, y1]`` in canonical pixels (x0/y0 inclusive, x1/y1 exclusive).
    boxes: np.ndarray


def vertebra_extents(labels: np.ndarray) -> dict[str, tuple[slice, slice, slice]]:
    """Each vertebra's bounding box in the label map ``(D, H, W)`` (values 1..7 = C1..C7; others ignored):
    ``{"C1": (z, y, x) slices, ...}``, absent vertebrae left out. One pass over the volume."""
    from scipy.ndimage import find_objects

    objects = find_objects(np.asarray(labels).astype(np.int32, copy=False), max_label=len(VERTEBRAE))
    return {v: box for v, box in zip(VERTEBRAE, objects, strict=True) if box is not None}


def _square_box(ys: slice, xs: slice, margin: float) -> np.ndarray:
    """A square ``[x0, y0, x1, y1]`` around the vertebra's in-plane box, ``margin`` of its larger side added
    on every side (the crop keeps the anatomy's aspect ratio; it may reach outside the image: zero padded)."""
    cy, cx = (ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2
    half = max(ys.stop - ys.start, xs.stop - xs.start) * (0.5 + margin)
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float64)


def vertebra_crops(volume: Volume, labels: np.ndarray, cfg: CropSettings) -> VertebraCrops:
    """The route's input for one study.

    Args:
        volume: the CT in HU on the canonical grid ``(D, H, W)``.
        labels: the vertebra label map on the same grid (1..7 = C1..C7, 0 background; 8 = T1 is ignored).
        cfg: the ``crops`` section (n_slices, span, image_size, window, margin).

    Raises:
        ValueError: the label map is not on the volume's grid.
    """
    if tuple(labels.shape) != tuple(volume.shape):
        raise ValueError(f"label map {tuple(labels.shape)} is not on the CT grid {tuple(volume.shape)}")
    n, span, size = cfg.n_slices, cfg.span, cfg.image_size
    depth = volume.shape[0]
    images = np.zeros((len(VERTEBRAE), n, span + 1, size, size), dtype=np.float32)
    found = np.zeros(len(VERTEBRAE), dtype=bool)
    slices = np.full((len(VERTEBRAE), n), -1, dtype=np.int64)
    boxes = np.zeros((len(VERTEBRAE), 4), dtype=np.float64)
    extents = vertebra_extents(labels)
    for i, v in enumerate(VERTEBRAE):
        if v not in extents:
            continue
        zs, ys, xs = extents[v]
        centres = np.rint(np.linspace(zs.start, zs.stop - 1, n)).astype(np.int64)
        box = _square_box(ys, xs, cfg.margin)
        idx = adjacent_indices(centres, depth, span=span)  # (n, span)
        hu = np.asarray(volume.array[idx.ravel()])
        ct = window_stack(hu, [tuple(cfg.window)]).reshape(n, span, *volume.shape[1:])
        own = (np.asarray(labels[centres]) == i + 1).astype(np.float32)[:, None]
        stack = np.concatenate([ct, own], axis=1).reshape(n * (span + 1), *volume.shape[1:])
        images[i] = crop_resize_stack(stack, box, size).reshape(n, span + 1, size, size)
        found[i], slices[i], boxes[i] = True, centres, box
    np.clip(images, 0.0, 1.0, out=images)  # resizing can ring slightly past the ends
    return VertebraCrops(images, found, slices, boxes)


def crop_key(cfg: CropSettings, source: str) -> str:
    """What a cached file was made with (the crop settings and where the masks came from), as a short hash."""
    fields = {k: getattr(cfg, k) for k in ("n_slices", "span", "image_size", "window", "margin")}
    text = json.dumps({"crops": fields, "source": source}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CropCache:
    """Crops per study: ``folder/<uid>.npy`` (images as uint8 in 1/255 steps, memory-mapped when read, so that
    a type-1 item reads one vertebra, not seven) and ``folder/<uid>.json`` (the key, found, slices, boxes),
    written after the ``.npy``: a JSON present means a complete file. A study made with another ``crop_key``
    (other settings or masks) is made again.

    Args:
        folder: where the files live (the run folder's ``crops/``).
        key: ``crop_key(cfg.crops, source)``.
    """

    def __init__(self, folder: str | Path, key: str) -> None:
        self.folder, self.key = Path(folder), key

    def _paths(self, uid: str) -> tuple[Path, Path]:
        return self.folder / f"{uid}.npy", self.folder / f"{uid}.json"

    def _meta(self, uid: str) -> dict[str, Any] | None:
        js = self._paths(uid)[1]
        try:
            meta = json.loads(js.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("key") == self.key else None

    def has(self, uid: str) -> bool:
        """Whether complete crops made with this key exist for ``uid``."""
        return self._meta(uid) is not None and self._paths(uid)[0].is_file()

    def put(self, uid: str, crops: VertebraCrops) -> Path:
        """Store ``crops`` (atomically, the JSON last); returns the ``.npy`` path."""
        npy, js = self._paths(uid)
        atomic_save_npy(npy, np.rint(crops.images * 255).astype(np.uint8))
        atomic_write_json(js, {"key": self.key, "found": crops.found.tolist(), "slices": crops.slices.tolist(),
                               "boxes": crops.boxes.tolist()})
        return npy

    def centre_slices(self, uid: str) -> np.ndarray:
        """``(7, n_slices)`` centre slices of ``uid``'s stored crops (``VertebraCrops.slices``), without reading
        their images.

        Raises:
            InputError: no crops made with these settings.
        """
        meta = self._meta(uid)
        if meta is None or "slices" not in meta:
            raise InputError(self._paths(uid)[1], "crops not found or made with other settings; run the masks "
                                                  "step (spinelab train cervical --stage vertebra)")
        return np.asarray(meta["slices"], np.int64)

    def get(self, uid: str, vertebra: int | None = None) -> VertebraCrops:
        """The stored crops of ``uid`` as float32 in [0, 1]; with ``vertebra`` (0..6) only that one's images
        ``(1, n_slices, span + 1, S, S)`` are read (the other fields stay whole).

        Raises:
            InputError: no complete file made with these settings, or one that cannot be read.
        """
        npy, js = self._paths(uid)
        meta = self._meta(uid)
        if meta is None:
            raise InputError(js, "crops not found or made with other settings; run the masks step "
                                 "(spinelab train cervical --stage vertebra)")
        try:
            images = np.load(npy, mmap_mode="r")
            part = images if vertebra is None else images[vertebra:vertebra + 1]
            return VertebraCrops(np.asarray(part, dtype=np.float32) / 255.0, np.asarray(meta["found"], bool),
                                 np.asarray(meta["slices"], np.int64), np.asarray(meta["boxes"], np.float64))
        except (OSError, ValueError, KeyError) as err:
            raise InputError(npy, f"crops cannot be read ({type(err).__name__}: {err})") from None

    def ensure(self, uid: str, build: Callable[[], VertebraCrops]) -> VertebraCrops:
        """The cached crops of ``uid``, made with ``build`` (and stored) when absent or stale."""
        if self.has(uid):
            return self.get(uid)
        crops = build()
        self.put(uid, crops)
        return crops


def describe_crops(crops: VertebraCrops, volume: Volume) -> dict[str, Any]:
    """What was localised, for the study result: per found vertebra its crop box and centre-slice range
    (canonical indices and, when the volume has them, slice file names)."""
    ids = volume.slice_ids
    out: dict[str, Any] = {}
    for i, v in enumerate(VERTEBRAE):
        if not crops.found[i]:
            continue
        a, b = int(crops.slices[i].min()), int(crops.slices[i].max())
        out[v] = {"start_index": a, "end_index": b, "slice_numbers": [ids[a], ids[b]] if ids else None,
                  "box": [round(float(x), 1) for x in crops.boxes[i]]}
    return out
