"""The embedding cache: fp16 and memory-mapped, reused while the CNN is unchanged, rebuilt when it changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinelab.config.load import load_config
from spinelab.tasks.cervical.sequence.embeddings import EmbeddingCache


def _embedder(calls: list[str], value: float):  # noqa: ANN202
    def embed(uid: str) -> np.ndarray:
        calls.append(uid)
        return np.full((3 + len(calls), 5), value, np.float32)

    return embed


def test_the_cache_is_reused_for_the_same_cnn_and_rebuilt_for_another(tmp_path: Path) -> None:
    cfg = load_config("cervical", overrides=["route=sequence"])
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights of the first CNN")
    calls: list[str] = []
    first = EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels")
    assert first.build(["a", "b"], _embedder(calls, 1.0), progress=False)["built"] == 2
    arr = first.load("a")
    assert isinstance(arr, np.memmap) and arr.dtype == np.float16 and arr.shape == (4, 5)
    # the same CNN: nothing is computed again, a new study is added
    again = EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels")
    assert again.dir == first.dir
    done = again.build(["a", "b", "c"], _embedder(calls, 2.0), progress=False)
    assert (done["built"], done["kept"]) == (1, 2)
    assert calls == ["a", "b", "c"] and float(again.load("a")[0, 0]) == 1.0
    # another CNN (retrained weights): a new key, every study computed again, the old cache removed
    weights.write_bytes(b"weights of a retrained CNN")
    retrained = EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels")
    assert retrained.dir != first.dir
    calls.clear()
    assert retrained.build(["a", "b"], _embedder(calls, 3.0), progress=False)["built"] == 2
    assert calls == ["a", "b"] and float(retrained.load("a")[0, 0]) == 3.0
    assert not first.dir.exists()
    # other slice labels (z-ranges) or input settings are another key too
    assert EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "other labels").dir != retrained.dir
    cfg.slices.image_size = 64
    assert EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels").dir != retrained.dir


def test_the_slice_curves_and_their_windows_are_part_of_the_key(tmp_path: Path) -> None:
    cfg = load_config("cervical", overrides=["route=sequence"])
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    with_curves = EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels")
    assert with_curves.parts["inputs"]["curves"] == {"window_len": cfg.slices.window_len,
                                                     "window_stride": cfg.slices.window_stride}
    cfg.slices.window_stride = 7
    assert EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels").dir != with_curves.dir
    cfg.study.slice_curves = False
    plain = EmbeddingCache(tmp_path, "slices_s0", 0, weights, cfg, "labels")
    assert "curves" not in plain.parts["inputs"] and plain.dir != with_curves.dir
