"""Vertebra label schemes: the numbers each source uses for C1-C7 (and T1), mapped onto the model's classes.

The model's classes are 0 background, 1..7 = C1..C7 and, with ``include_t1``, 8 = T1. A source's label map
is remapped through a lookup table; every value the scheme does not name becomes background. Named schemes
(values from ``../shared/realdata/PROVENANCE.md``):

* ``rsna``: the RSNA 2022 ``segmentations/*.nii`` (1..7 = C1..C7, 8..19 = T1..T12);
* ``total``: TotalSegmentator v2 ``total`` (C1 = 50 ... C7 = 44, T1 = 43: caudal numbers are smaller);
* ``verse``: VerSe / SPINEPS (1..7 = C1..C7, 8 = T1).

``NAME:LEVEL`` (e.g. ``total:T11``, ``verse:L2``) reads the scheme's own numbering of the whole spine and lets
seven consecutive levels from ``LEVEL`` on stand in for C1..C7 (and the next one for T1): real non-cervical
scans with public labels then exercise the whole path (the real-data tests). A scheme may also be an explicit
mapping ``{source value: class}``; its classes must lie in ``1..n_classes-1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import numpy as np

from spinelab.errors import ConfigError

__all__ = ["SCHEMES", "LEVELS", "LabelScheme", "scheme_table", "remap_labels", "check_scheme", "class_names",
           "level_values"]

#: source value -> class (1..7 = C1..C7, 8 = T1) for each named scheme
SCHEMES: dict[str, dict[int, int]] = {
    "rsna": {**{k: k for k in range(1, 8)}, 8: 8},
    "total": {**{50 - k: k + 1 for k in range(7)}, 43: 8},
    "verse": {**{k: k for k in range(1, 8)}, 8: 8},
}
#: every level, head to feet
LEVELS: tuple[str, ...] = (*(f"C{k}" for k in range(1, 8)), *(f"T{k}" for k in range(1, 13)),
                           *(f"L{k}" for k in range(1, 6)))
#: each scheme's number of each level of ``LEVELS``
_LEVEL_VALUES: dict[str, tuple[int, ...]] = {
    "rsna": tuple(range(1, 20)),  # C1..T12 only
    "total": tuple(range(50, 26, -1)),  # C1 = 50 ... L5 = 27
    "verse": tuple(range(1, 25)),  # C1 = 1 ... L5 = 24
}
#: a named scheme or an explicit ``{source value: class}`` mapping
LabelScheme = Union[str, dict[int, int]]  # noqa: UP007 - pydantic reads this alias at runtime


def class_names(n_classes: int) -> list[str]:
    """Names of the foreground classes: ``C1`` .. ``C7`` (and ``T1`` with 9 classes)."""
    return [f"C{k}" for k in range(1, 8)] + (["T1"] if n_classes > 8 else [])


def level_values(scheme: str) -> dict[str, int]:
    """``{level: source value}`` of a named scheme (``C1`` .. as far as the scheme numbers levels)."""
    return dict(zip(LEVELS, _LEVEL_VALUES[scheme], strict=False))


def _stand_in(spec: str) -> dict[int, int]:
    """``NAME:LEVEL``: levels from ``LEVEL`` on, in scheme ``NAME``'s numbering, as classes 1..8."""
    name, _, first = spec.partition(":")
    if name not in _LEVEL_VALUES:
        raise ConfigError(f"unknown label_scheme {spec!r}: {name!r} is not one of {sorted(_LEVEL_VALUES)}")
    values = level_values(name)
    if first not in values:
        raise ConfigError(f"label_scheme {spec!r}: {first!r} is not a level the {name} scheme numbers "
                          f"({', '.join(values)})")
    start = LEVELS.index(first)
    return {values[v]: k + 1 for k, v in enumerate(LEVELS[start:start + 8]) if v in values}


def check_scheme(scheme: LabelScheme, n_classes: int = 8) -> dict[int, int]:
    """The ``{source value: class}`` mapping of ``scheme`` for a model with ``n_classes`` outputs.

    T1 (class 8) is dropped from a named scheme when the model has no T1 class.

    Raises:
        ConfigError: an unknown scheme name, or an explicit mapping with a class outside ``1..n_classes-1``
            or a negative source value.
    """
    if isinstance(scheme, str) and ":" in scheme:
        return {v: c for v, c in _stand_in(scheme).items() if c < n_classes}
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown label_scheme {scheme!r}; choose from {sorted(SCHEMES)}, NAME:LEVEL "
                              "(e.g. verse:L2) or a mapping {source value: class}")
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
