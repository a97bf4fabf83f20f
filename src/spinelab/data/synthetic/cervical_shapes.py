"""Implicit bone shapes of the cervical phantom, in a vertebra's local frame (u lateral, v posterior, s cranial).

Every shape returns an approximate *inside distance* in mm (positive inside), so unions are ``max``, cuts
are ``min`` with the negated hole, and a bone's cortical shell is simply ``0 < distance < thickness``.
Arrays broadcast together, so a shape can be evaluated on a crop of the grid.
"""

from __future__ import annotations

import numpy as np

from spinelab.data.synthetic.cervical_anatomy import VertebraSpec

__all__ = ["ellipse", "slab", "cylinder", "ellipsoid", "vertebra_distance"]


def ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Elliptic cross-section centred at ``(cu, cv)`` with half-axes ``a, b``, unbounded along ``s``."""
    return (1.0 - np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)) * min(a, b)


def slab(s: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The layer ``s0 < s < s1``."""
    return np.minimum(s - s0, s1 - s)


def cylinder(u: np.ndarray, v: np.ndarray, s: np.ndarray, cu: float, cv: float, a: float, b: float,
             s0: float, s1: float) -> np.ndarray:
    """Elliptic cylinder: ``ellipse`` cut to the slab ``s0 < s < s1``."""
    return np.minimum(ellipse(u, v, cu, cv, a, b), slab(s, s0, s1))


def ellipsoid(u: np.ndarray, v: np.ndarray, s: np.ndarray, c: tuple[float, float, float],
               r: tuple[float, float, float]) -> np.ndarray:
    """Ellipsoid centred at ``c`` with semi-axes ``r``."""
    q = np.sqrt(((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((s - c[2]) / r[2]) ** 2)
    return (1.0 - q) * min(r)


def vertebra_distance(u: np.ndarray, v: np.ndarray, s: np.ndarray, vert: VertebraSpec) -> np.ndarray:
    """Inside distance (mm) of one whole vertebra in its local frame; arrays broadcast together."""
    d = vert.dims
    if vert.level == "C1":
        return _atlas_distance(u, v, s, d)
    h, a, b, ca, cb = d["h"], d["a"], d["b"], d["ca"], d["cb"]
    disc_below, disc_above = d["disc"], vert.disc_above
    body = np.minimum(cylinder(u, v, s, 0.0, 0.0, a, b, -h / 2, h / 2),
                      ellipsoid(u, v, s, (0.0, 0.0, 0.0), (1.15 * a, 1.15 * b, 0.8 * h)))
    vc = b + cb - 0.5
    ped_u = (0.7 * a + ca + 3.0) / 2
    parts = [body,
             np.maximum(cylinder(u, v, s, ped_u, b + 1.5, ped_u - 0.7 * a + 1.5, 3.0, -0.3 * h, 0.3 * h),
                        cylinder(u, v, s, -ped_u, b + 1.5, ped_u - 0.7 * a + 1.5, 3.0, -0.3 * h, 0.3 * h))]
    pil_top = h / 2 + disc_above / 2 - 0.8
    pil_bot = -h / 2 - disc_below / 2 + 0.8
    lamina = np.minimum(np.minimum(ellipse(u, v, 0.0, vc, ca + 3.5, cb + 3.5), v - vc + 1.0),
                        slab(s, -0.4 * h - 1.0, 0.35 * h - 1.0))
    v0 = vc + cb + 1.0
    s_spin = s + d["tilt"] * np.maximum(v - v0, 0.0)
    spinous = np.minimum(ellipse(u, v, 0.0, v0 + d["spin"] / 2, 2.8, d["spin"] / 2 + 2.0),
                         slab(s_spin, -0.32 * h - 1.0, 0.28 * h - 1.0))
    parts += [lamina, spinous]
    if vert.level == "C2":
        dens = np.minimum(ellipsoid(u, v, s, (0.0, -1.5, h / 2 + 5.0), (5.2, 5.5, 11.0)), s - 2.0)
        facets_sup = np.maximum(cylinder(u, v, s, 15.0, 1.0, 6.5, 8.0, 2.0, h / 2 + 1.0),
                                cylinder(u, v, s, -15.0, 1.0, 6.5, 8.0, 2.0, h / 2 + 1.0))
        pillars = np.maximum(cylinder(u, v, s, ca + 3.0, vc, 5.5, 6.5, pil_bot, 1.0),
                             cylinder(u, v, s, -ca - 3.0, vc, 5.5, 6.5, pil_bot, 1.0))
        parts += [dens, facets_sup, pillars]
    else:
        pillars = np.maximum(cylinder(u, v, s, ca + 3.0, vc, 5.5, 6.5, pil_bot, pil_top),
                             cylinder(u, v, s, -ca - 3.0, vc, 5.5, 6.5, pil_bot, pil_top))
        parts.append(pillars)
    if vert.level.startswith("C"):
        tp = np.maximum(cylinder(u, v, s, a + 5.0, 0.5 * b, 7.5, 3.8, -0.3 * h, 0.3 * h),
                        cylinder(u, v, s, -a - 5.0, 0.5 * b, 7.5, 3.8, -0.3 * h, 0.3 * h))
        foramen = np.maximum(ellipse(u, v, a + 3.5, 0.5 * b, 2.6, 2.6), ellipse(u, v, -a - 3.5, 0.5 * b, 2.6, 2.6))
        parts.append(np.minimum(tp, -foramen))
    else:
        # Thoracic transverse processes point postero-laterally and carry the rib heads.
        tp = np.maximum(cylinder(u, v, s, ca + 13.0, vc + 3.0, 13.0, 4.5, -0.3 * h, 0.25 * h),
                        cylinder(u, v, s, -ca - 13.0, vc + 3.0, 13.0, 4.5, -0.3 * h, 0.25 * h))
        parts.append(tp)
    dist = parts[0]
    for p in parts[1:]:
        dist = np.maximum(dist, p)
    # The canal is free of bone at every level.
    return np.minimum(dist, -ellipse(u, v, 0.0, vc, ca, cb))


def _atlas_distance(u: np.ndarray, v: np.ndarray, s: np.ndarray, d: dict[str, float]) -> np.ndarray:
    """C1: a ring with two lateral masses and transverse processes, no body (the dens of C2 sits inside)."""
    hh = d["h"] / 2
    masses = np.maximum(cylinder(u, v, s, 14.0, 1.0, 7.5, 9.0, -hh, hh),
                        cylinder(u, v, s, -14.0, 1.0, 7.5, 9.0, -hh, hh))
    ring = np.minimum(np.minimum(ellipse(u, v, 0.0, 5.0, 23.0, 18.5), -ellipse(u, v, 0.0, 5.0, 19.5, 15.0)),
                      slab(s, -0.3 * d["h"], 0.3 * d["h"]))
    tp = np.maximum(cylinder(u, v, s, 27.0, 3.0, 7.0, 4.5, -0.25 * d["h"], 0.25 * d["h"]),
                    cylinder(u, v, s, -27.0, 3.0, 7.0, 4.5, -0.25 * d["h"], 0.25 * d["h"]))
    foramen = np.maximum(ellipse(u, v, 22.5, 3.0, 2.5, 2.5), ellipse(u, v, -22.5, 3.0, 2.5, 2.5))
    return np.maximum(np.maximum(masses, ring), np.minimum(tp, -foramen))

