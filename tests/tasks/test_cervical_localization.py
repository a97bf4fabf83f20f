"""Stage-1 glue: per-vertebra slice ranges and the study crop box from per-slice predictions."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.config.load import load_config
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.localization import summarize_localization
from spinelab.tasks.cervical.studies import head_first


def _volume(depth: int, *, head_at_index_0: bool, spacing: float = 1.0) -> Volume:
    aff = np.diag([spacing, 0.5, 0.5, 1.0])
    if head_at_index_0:
        aff[2, 0] = -spacing  # D runs towards the feet
    return Volume(np.zeros((depth, 100, 80), np.int16), aff)


def _profiles(depth: int, centres: list[int], width: float, height: float) -> np.ndarray:
    idx = np.arange(depth)[:, None]
    return height * np.exp(-0.5 * ((idx - np.array(centres)[None]) / width) ** 2)


@pytest.fixture
def cfg():
    return load_config("cervical")


def _pred(ratio: np.ndarray, box=(0.2, 0.3, 0.6, 0.7), has=None) -> dict:
    depth = len(ratio)
    return {"ratio": ratio, "box": np.tile(np.array(box), (depth, 1)),
            "has_box": np.ones(depth) if has is None else has}


def test_confident_peaks_give_tight_ordered_ranges(cfg) -> None:
    vol = _volume(80, head_at_index_0=True)
    centres = [8, 18, 28, 38, 48, 58, 68]
    out = summarize_localization(_pred(_profiles(80, centres, 2.0, 1.0)), vol, cfg)
    assert out["missing"] == [] and out["warnings"] == []
    for c, v in zip(centres, VERTEBRAE, strict=True):
        start, end = out["ranges"][v]
        assert start <= c <= end and end - start <= 8


def test_blurred_model_still_finds_vertebrae_around_their_peaks(cfg) -> None:
    vol = _volume(80, head_at_index_0=True)
    centres = [8, 18, 28, 38, 48, 58, 68]
    out = summarize_localization(_pred(_profiles(80, centres, 4.0, 0.25)), vol, cfg)  # peaks below 0.3
    assert out["missing"] == []
    for c, v in zip(centres, VERTEBRAE, strict=True):
        assert out["ranges"][v][0] <= c <= out["ranges"][v][1]


def test_nothing_found_splits_study_in_anatomical_order(cfg) -> None:
    for head0 in (True, False):
        vol = _volume(70, head_at_index_0=head0)
        assert head_first(vol) is head0
        out = summarize_localization(_pred(np.zeros((70, 7)), has=np.zeros(70)), vol, cfg)
        assert out["missing"] == list(VERTEBRAE) and any("not found" in w for w in out["warnings"])
        starts = [out["ranges"][v][0] for v in VERTEBRAE]
        # C1 is cranial: first in array order when the head is at index 0, last otherwise
        assert starts == sorted(starts) if head0 else starts == sorted(starts, reverse=True)
        assert any("whole image" in w for w in out["warnings"])
        assert out["box"] == [0.0, 0.0, 80.0, 100.0]  # the whole image (squaring is clipped to its edges)


def test_one_missing_vertebra_is_placed_next_to_its_neighbour(cfg) -> None:
    vol = _volume(80, head_at_index_0=True)
    ratio = _profiles(80, [8, 18, 28, 38, 48, 58, 68], 2.0, 1.0)
    ratio[:, 3] = 0  # C4 not seen
    out = summarize_localization(_pred(ratio), vol, cfg)
    assert out["missing"] == ["C4"]
    c3_end = out["ranges"]["C3"][1]
    assert out["ranges"]["C4"][0] == c3_end + 1  # directly caudal to C3


def test_box_is_square_with_margin_and_inside_the_image(cfg) -> None:
    vol = _volume(40, head_at_index_0=True)
    out = summarize_localization(_pred(_profiles(40, [5, 10, 15, 20, 25, 30, 35], 1.5, 1.0),
                                       box=(0.25, 0.2, 0.5, 0.4)), vol, cfg)
    x0, y0, x1, y1 = out["box"]
    assert x1 - x0 == pytest.approx(y1 - y0)  # square
    assert x1 - x0 == pytest.approx(max(0.25 * 80, 0.2 * 100) * (1 + 2 * cfg.stage1.crop_margin))
    assert x0 >= 0 and x1 <= 80 and y0 >= 0 and y1 <= 100
