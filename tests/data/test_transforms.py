"""Windowing, stack resizing and sequence-consistent augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.data.transforms import (
    SequenceAugment,
    adjacent_indices,
    crop_resize_stack,
    evenly_spaced,
    resize_stack,
    window_stack,
)


def test_window_stack_maps_hu_to_unit_range_per_window() -> None:
    hu = np.array([[[-1000, -500, 400, 1300, 3000]]], dtype=np.int16)
    out = window_stack(hu, [(400, 1800), (40, 400)])
    assert out.shape == (2, 1, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0, 0, 0.5, 1, 1])  # bone window: -500..1300
    np.testing.assert_allclose(out[1, 0], [0, 0, 1, 1, 1])  # soft tissue: -160..240


def test_resize_and_crop_keep_values_and_shapes() -> None:
    stack = np.zeros((7, 40, 60), np.float32)
    stack[:, 10:20, 30:40] = 1.0
    assert resize_stack(stack, 20).shape == (7, 20, 20)
    up = resize_stack(stack, (80, 120))
    assert up.shape == (7, 80, 120) and up[:, 30, 70].min() > 0.9
    crop = crop_resize_stack(stack, (30, 10, 40, 20), 16)
    assert crop.shape == (7, 16, 16) and crop.min() > 0.99  # the crop is exactly the bright square
    padded = crop_resize_stack(stack, (-10, -10, 10, 10), 20)
    assert padded.shape == (7, 20, 20) and padded.max() == 0  # outside the image is zero


def test_sampling_helpers() -> None:
    np.testing.assert_array_equal(evenly_spaced(0, 9, 4), [0, 3, 6, 9])
    jittered = evenly_spaced(0, 90, 10, jitter=0.5, rng=np.random.default_rng(1))
    assert jittered.min() >= 0 and jittered.max() <= 90 and len(jittered) == 10
    np.testing.assert_array_equal(adjacent_indices(np.array([0, 5, 9]), 10), [[0, 0, 1], [4, 5, 6], [8, 9, 9]])


def test_sequence_augment_applies_one_flip_to_all_slices_and_boxes() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((6, 3, 32, 32)).astype(np.float32)
    boxes = np.tile(np.array([[0.1, 0.2, 0.3, 0.6]], np.float32), (6, 1))
    mask = np.array([True, True, False, True, True, True])
    aug = SequenceAugment(hflip=1.0, affine=0.0, intensity=0.0, seed=3)
    out, new_boxes, new_mask = aug(images, boxes, mask)
    np.testing.assert_allclose(out, images[..., ::-1], atol=1e-6)  # every slice flipped the same way
    np.testing.assert_array_equal(new_mask, mask)
    np.testing.assert_allclose(new_boxes[0], [0.7, 0.2, 0.9, 0.6], atol=1e-5)
    assert not new_boxes[2].any()


def test_sequence_augment_random_params_shared_across_sequence() -> None:
    images = np.repeat(np.random.default_rng(1).random((1, 3, 32, 32)).astype(np.float32), 5, axis=0)
    out, _, _ = SequenceAugment(hflip=0.5, affine=1.0, intensity=1.0, seed=7)(images)
    for t in range(1, 5):  # identical inputs stay identical: one parameter draw for the whole sequence
        np.testing.assert_allclose(out[t], out[0], atol=1e-6)
    assert not np.allclose(out[0], images[0])


@pytest.mark.parametrize("size", [16, 48])
def test_resize_many_channels(size: int) -> None:
    assert resize_stack(np.ones((300, 32, 32), np.float32), size).shape == (300, size, size)


def test_sequence_augment_draws_from_the_given_generator() -> None:
    images = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    aug = SequenceAugment(hflip=0.5, affine=1.0, intensity=1.0)
    first = aug(images, rng=np.random.default_rng(4))[0]
    again = SequenceAugment(hflip=0.5, affine=1.0, intensity=1.0)(images, rng=np.random.default_rng(4))[0]
    other = aug(images, rng=np.random.default_rng(5))[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
