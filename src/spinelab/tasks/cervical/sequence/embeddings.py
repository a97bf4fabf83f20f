"""The embedding cache of stage ``study``: the frozen slice CNN's per-slice features, once per study, on disk.

``RUN/embeddings/<slices stage>/<fold>/<key>/<uid>.npy``: fp16 ``(T, F)`` (``(T, F + 14)`` with the slice model's
per-slice logits, ``study.slice_curves``) for the route slices of the study's
z-range (``inputs.study_positions``), read back memory-mapped (``np.load(..., mmap_mode="r")``), so an epoch of
the study head reads a few kilobytes per study instead of running a CNN over hundreds of slices. ``key`` is
made of the CNN weights' SHA-256 (``model.pt`` of that fold of the slices stage), the input settings and the
slice labels' key (z-ranges and boxes): a retrained CNN or other inputs get a new folder and the old ones are
removed. ``meta.json`` beside the files records the key's parts and how long the build took; a killed build
keeps the studies it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.io.atomic import atomic_path, atomic_write_json
from spinelab.io.files import file_sha256

__all__ = ["EmbeddingCache", "cache_key"]

log = logging.getLogger("spinelab")


def cache_key(weights: str | Path, cfg: Any, labels_key: str | None) -> tuple[str, dict[str, Any]]:
    """The cache folder name and what it is made of: CNN weights, input settings, slice-label key."""
    s = cfg.slices
    inputs: dict[str, Any] = {"windows": [list(w) for w in s.windows], "image_size": s.image_size, "span": s.span,
                              "slice_step": s.slice_step}
    if cfg.study.slice_curves:  # the appended curves depend on how the slice model's windows tile the study
        inputs["curves"] = {"window_len": s.window_len, "window_stride": s.window_stride}
    parts = {"weights_sha256": file_sha256(weights), "labels_key": labels_key, "inputs": inputs}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], parts


class EmbeddingCache:
    """The cached embeddings of one fold of one slice stage.

    Args:
        run_dir: the run folder.
        stage: the slice stage's name (``slices_s0``).
        fold: its fold (``None``: the model trained on all data).
        weights: that fold's ``model.pt``.
        cfg: the route config (input settings).
        labels_key: ``slice_labels/index.json``'s key (z-ranges, boxes).
    """

    def __init__(self, run_dir: str | Path, stage: str, fold: int | None, weights: str | Path, cfg: Any,
                 labels_key: str | None) -> None:
        self.key, self.parts = cache_key(weights, cfg, labels_key)
        self.root = Path(run_dir) / "embeddings" / stage / ("full" if fold is None else f"fold_{fold}")
        self.dir = self.root / self.key

    def path(self, uid: str) -> Path:
        return self.dir / f"{uid}.npy"

    def has(self, uid: str) -> bool:
        return self.path(uid).is_file()

    def load(self, uid: str) -> np.ndarray:
        """``(T, F)`` fp16, memory-mapped."""
        return np.load(self.path(uid), mmap_mode="r")

    def build(self, uids: Iterable[str], embed: Callable[[str], np.ndarray], *,
              progress: bool = True) -> dict[str, Any]:
        """Compute and write the studies not cached yet under this key; remove caches of other keys.

        Args:
            embed: ``uid -> (T, F)`` features (the frozen CNN over the study's route slices).

        Returns:
            ``{"built": n, "kept": n, "seconds": build time}`` (also recorded in ``meta.json``).
        """
        from spinelab.infer.batch import progress_bar

        uids = list(uids)
        if self.root.is_dir():
            for old in self.root.iterdir():
                if old.is_dir() and old.name != self.key:
                    log.info("embedding cache %s: the CNN or its inputs changed; removed", old)
                    shutil.rmtree(old, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        todo = [u for u in uids if not self.has(u)]
        start = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task(f"embeddings {self.root.parent.name}/{self.root.name}", total=len(todo),
                                visible=progress and bool(todo))
            for uid in todo:
                feats = np.asarray(embed(uid), dtype=np.float16)
                with atomic_path(self.path(uid), suffix=".npy") as tmp:
                    np.save(tmp, feats)
                bar.advance(task)
        seconds = time.perf_counter() - start
        meta_path = self.dir / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"build_seconds": 0.0, "built": 0}
        meta.update({"key": self.key, **self.parts, "studies": len(uids)})
        if todo:  # the time spent building, summed over the (killed and resumed) builds
            meta["build_seconds"] = round(float(meta.get("build_seconds", 0.0)) + seconds, 3)
        meta["built"] = int(meta.get("built", 0)) + len(todo)
        atomic_write_json(meta_path, meta)
        return {"built": len(todo), "kept": len(uids) - len(todo), "seconds": seconds}
