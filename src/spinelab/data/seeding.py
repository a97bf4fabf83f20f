"""Seeded randomness for training datasets: reruns with the same seed draw the same batches.

Each copy of a dataset (the main process's, or one per DataLoader worker) owns one numpy ``Generator``, made on
first use from the dataset's base seed and, inside a worker, that worker's torch seed. The torch seed of a
worker comes from the loader's generator, which ``lightning.seed_everything`` seeds, so it is the same on a
rerun; the generator then advances item after item, so later epochs draw new augmentations.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SeededDataset", "stage_seed"]


def stage_seed(seed: int, fold: int | None) -> int:
    """Base seed of a stage's datasets for one fold (the trainer's ``train.seed + fold`` rule)."""
    return int(seed) + (0 if fold is None else int(fold))


class SeededDataset:
    """Mixin of the training datasets: ``self.rng()`` is this copy's seeded generator.

    Subclasses set ``self.seed`` (an int) in ``__init__``.
    """

    seed: int = 0
    _rng: np.random.Generator | None = None
    _rng_owner: tuple[int, int | None] | None = None

    def rng(self) -> np.random.Generator:
        """This dataset copy's generator (a fresh one in each DataLoader worker)."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        owner = (int(self.seed), None if info is None else int(info.seed))
        if self._rng is None or self._rng_owner != owner:
            entropy = [owner[0]] if owner[1] is None else [owner[0], owner[1] % 2**63]
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._rng_owner = owner
        return self._rng

    def reseed(self, seed: int) -> None:
        """Start over from ``seed`` (the next ``rng()`` call makes a new generator)."""
        self.seed, self._rng, self._rng_owner = int(seed), None, None
