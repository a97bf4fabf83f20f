"""Vertebra label schemes: the numbers each source uses for C1-C7 (and T1), mapped onto the model's classes.

The model's classes are 0 background, 1..7 = C1..C7 and, with ``include_t1``, 8 = T1. A source's label map
is remapped through a lookup table; every value the scheme does not name becomes background. Named schemes
(values from ``../shared/realdata/PROVENANCE.md``):

* ``rsna``: the RSNA 2022 ``segmentations/*.nii`` (1..7 = C1..C7, 8..19 = T1..T12);
* ``total``: TotalSegmentator v2 ``total`` (C1 = 50 ... C7 = 44, T1 = 43: caudal numbers are smaller);
* ``verse``: VerSe / SPINEPS (1..7 = C1..C7, 8 = T1).

A scheme may also be an explicit mapping ``{source value: class}`` (e.g. lumbar levels standing in for C1-C7
in a test on a real abdominal CT); its classes must lie in ``1..n_classes-1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import numpy as np

from spinelab.errors import ConfigError

__all__ = ["SCHEMES", "LabelScheme", "scheme_table", "remap_labels", "check_scheme", "class_names"]

#: source value -> class (1..7 = C1..C7, 8 = T1) for each named scheme
SCHEMES: dict[str, dict[int, int]] = {
    "rsna": {**{k: k for k in range(1, 8)}, 8: 8},
    "total": {**{50 - k: k + 1 for k in range(7)}, 43: 8},
    "verse": {**{k: k for k in range(1, 8)}, 8: 8},
}
#: a named scheme or an explicit ``{source value: class}`` mapping
LabelScheme = Union[str, dict[int, int]]  # noqa: UP007 - pydantic reads this alias at runtime


def class_names(n_classes: int) -> list[str]:
    """Names of the foreground classes: ``C1`` .. ``C7`` (and ``T1`` with 9 classes)."""
    return [f"C{k}" for k in range(1, 8)] + (["T1"] if n_classes > 8 else [])


def check_scheme(scheme: LabelScheme, n_classes: int = 8) -> dict[int, int]:
    """The ``{source value: class}`` mapping of ``scheme`` for a model with ``n_classes`` outputs.

    T1 (class 8) is dropped from a named scheme when the model has no T1 class.

    Raises:
        ConfigError: an unknown scheme name, or an explicit mapping with a class outside ``1..n_classes-1``
            or a negative source value.
    """
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown label_scheme {scheme!r}; choose from {sorted(SCHEMES)} or give a mapping "
                              "{source value: class}")
        return {v: c for v, c in SCHEMES[scheme].items() if c < n_classes}
    if not isinstance(scheme, Mapping) or not scheme:
        raise ConfigError(f"label_scheme must be a scheme name or a non-empty mapping, got {scheme!r}")
    out = {int(v): int(c) for v, c in scheme.items()}
    bad = sorted(c for c in out.values() if not 1 <= c < n_classes)
    if bad:
        raise ConfigError(f"label_scheme maps to class {bad[0]}, outside 1..{n_classes - 1}")
    if min(out) < 0:
        raise ConfigError(f"label_scheme has a negative source value {min(out)}")
    return out


def scheme_table(scheme: LabelScheme, n_classes: int = 8, max_value: int = 0) -> np.ndarray:
    """A ``uint8`` lookup table, ``table[source value] = class`` (0 for values the scheme does not name),
    long enough for ``max_value``."""
    mapping = check_scheme(scheme, n_classes)
    table = np.zeros(max(max(mapping), int(max_value)) + 1, dtype=np.uint8)
    for value, cls in mapping.items():
        table[value] = cls
    return table


def remap_labels(labels: np.ndarray, scheme: LabelScheme, n_classes: int = 8) -> np.ndarray:
    """A source label map as model classes (``uint8``, same shape); values outside the scheme become 0.

    Raises:
        ConfigError: a bad scheme (see ``check_scheme``).
    """
    arr = np.asarray(labels)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    if arr.dtype.kind == "f":
        arr = np.rint(arr)
    arr = arr.astype(np.int64, copy=False)
    arr = np.where(arr < 0, 0, arr)
    table = scheme_table(scheme, n_classes, int(arr.max()))
    return table[arr]
