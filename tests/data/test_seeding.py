"""Seeded dataset generators: the same seed repeats, another seed or another worker differs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spinelab.data.seeding import SeededDataset, stage_seed


class _Draws(SeededDataset, Dataset):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> float:
        return float(self.rng().random())


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    a, b, c = _Draws(5), _Draws(5), _Draws(6)
    first = [a[i] for i in range(6)]
    assert first == [b[i] for i in range(6)]
    assert first != [c[i] for i in range(6)]
    assert len(set(first)) == 6  # the generator moves on from item to item (and epoch to epoch)


def test_reseed_starts_over() -> None:
    ds = _Draws(1)
    first = [ds[i] for i in range(3)]
    ds.reseed(1)
    assert [ds[i] for i in range(3)] == first


def test_workers_draw_their_own_streams_and_repeat_with_the_loader_seed() -> None:
    def run() -> list[float]:
        loader = DataLoader(_Draws(3), batch_size=1, num_workers=2,
                            generator=torch.Generator().manual_seed(11))
        return [float(x) for x in loader]

    first = run()
    assert first == run()
    assert first[0] != first[1]  # worker 0 and worker 1 do not share one stream


def test_stage_seed_adds_the_fold() -> None:
    assert stage_seed(42, None) == 42 and stage_seed(42, 3) == 45
    assert np.random.default_rng(stage_seed(42, 0)).random() == np.random.default_rng(42).random()
