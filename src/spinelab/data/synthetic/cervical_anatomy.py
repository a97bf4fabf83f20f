"""Vectorised neck-CT phantom: skull base, C1-C7, upper thoracic vertebrae, soft tissue and fractures.

The phantom is described in patient (LPS) millimetres and rasterised onto an axial grid whose slices run
caudal to cranial (index ``k`` = 0 is the most caudal slice). Every structure is an implicit shape that
returns an approximate *inside distance* in mm (positive inside), so unions are ``max``, cuts are ``min``
with the negated hole, and a bone's cortical shell is simply ``0 < distance < thickness``. A vertebra is
evaluated in its own rigid frame (centred on the body, tilted with the lordotic curve) inside a crop of the
grid, which keeps a 256-pixel study to about a second of numpy work.

Fractures are planes through a vertebra: voxels within half the gap of the plane lose their bone, and the
fragment on the plane's positive side is displaced (the vertebra is re-evaluated at shifted coordinates).
The fracture mask (gap voxels that were bone) gives the per-slice bounding boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "LEVELS",
    "FractureSpec",
    "VertebraSpec",
    "PhantomSpec",
    "PhantomResult",
    "sample_phantom",
    "render_phantom",
]

#: Vertebral levels the phantom can hold, in cranio-caudal order; index + 1 is the RSNA 2022 label value.
LEVELS: tuple[str, ...] = ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4")

# Nominal adult dimensions in mm (half-widths unless noted), scaled per study. h = body height (full),
# a/b = body lateral/AP half-axes, ca/cb = canal half-axes, spin = spinous length, tilt = spinous droop
# (tangent), disc = height of the disc below the body.
_NOMINAL: dict[str, dict[str, float]] = {
    "C1": {"h": 12.0, "a": 0.0, "b": 0.0, "ca": 0.0, "cb": 0.0, "spin": 4.0, "tilt": 0.0, "disc": 2.0},
    "C2": {"h": 16.0, "a": 8.5, "b": 7.5, "ca": 11.0, "cb": 8.0, "spin": 20.0, "tilt": 0.25, "disc": 4.5},
    "C3": {"h": 13.5, "a": 8.0, "b": 7.5, "ca": 12.0, "cb": 7.0, "spin": 13.0, "tilt": 0.30, "disc": 5.0},
    "C4": {"h": 13.5, "a": 8.5, "b": 7.8, "ca": 12.5, "cb": 7.0, "spin": 14.0, "tilt": 0.35, "disc": 5.5},
    "C5": {"h": 13.5, "a": 9.0, "b": 8.0, "ca": 12.5, "cb": 7.0, "spin": 16.0, "tilt": 0.40, "disc": 5.5},
    "C6": {"h": 14.0, "a": 10.0, "b": 8.2, "ca": 12.5, "cb": 7.0, "spin": 19.0, "tilt": 0.45, "disc": 5.5},
    "C7": {"h": 15.0, "a": 11.0, "b": 8.5, "ca": 12.0, "cb": 7.0, "spin": 26.0, "tilt": 0.50, "disc": 5.0},
    "T1": {"h": 16.5, "a": 12.0, "b": 9.0, "ca": 9.5, "cb": 7.0, "spin": 30.0, "tilt": 0.75, "disc": 4.5},
    "T2": {"h": 17.5, "a": 12.5, "b": 10.0, "ca": 8.5, "cb": 7.0, "spin": 32.0, "tilt": 0.9, "disc": 4.5},
    "T3": {"h": 18.5, "a": 13.0, "b": 11.0, "ca": 8.0, "cb": 7.0, "spin": 32.0, "tilt": 1.0, "disc": 4.5},
    "T4": {"h": 19.0, "a": 13.5, "b": 12.0, "ca": 8.0, "cb": 7.0, "spin": 32.0, "tilt": 1.0, "disc": 4.5},
}


@dataclass
class FractureSpec:
    """A planar fracture in a vertebra's local frame (u lateral, v posterior, s cranial; mm).

    Args:
        kind: descriptive name (``body_split``, ``teardrop``, ``posterior_arch``, ``dens``, ``ring``).
        point: a point on the fracture plane, local mm ``(u, v, s)``.
        normal: unit normal of the plane; the fragment on the positive side is displaced.
        gap: width of the lucent fracture cleft in mm.
        shift: displacement of the fragment in local mm ``(u, v, s)``.
        radius: the plane is cut (and the fragment moved) only within this distance of ``point``.
    """

    kind: str
    point: tuple[float, float, float]
    normal: tuple[float, float, float]
    gap: float
    shift: tuple[float, float, float]
    radius: float


@dataclass
class VertebraSpec:
    """One vertebra: level, rigid frame and (scaled) dimensions."""

    level: str
    label: int
    center: tuple[float, float, float]  # body centre (C1: centre of the lateral masses), LPS mm
    frame: tuple[tuple[float, ...], ...]  # rows u, v, s: unit vectors in LPS
    dims: dict[str, float]
    disc_above: float
    fractures: list[FractureSpec] = field(default_factory=list)


@dataclass
class PhantomSpec:
    """Everything needed to render one study deterministically (no randomness left in rendering).

    Grid: ``shape = (K, H, W)`` with slices caudal to cranial; world LPS of voxel ``(k, h, w)`` is
    ``(x0 + w * pixel, y0 + h * pixel, z0 + k * dz)``.
    """

    shape: tuple[int, int, int]
    pixel: float
    dz: float
    origin: tuple[float, float, float]
    vertebrae: list[VertebraSpec]
    curve_z: list[float]  # spine centre line samples (cranio-caudal knots), for tubes
    curve_x: list[float]
    curve_y: list[float]
    skull_bottom: float
    neck: dict[str, float]
    tissue: dict[str, float]
    noise_seed: int

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from ``(k, h, w, 1)`` (caudal-to-cranial order) to LPS mm."""
        aff = np.eye(4)
        aff[:3, 0] = [0.0, 0.0, self.dz]
        aff[:3, 1] = [0.0, self.pixel, 0.0]
        aff[:3, 2] = [self.pixel, 0.0, 0.0]
        aff[:3, 3] = self.origin
        return aff


@dataclass
class PhantomResult:
    """A rendered study, slices caudal to cranial.

    Args:
        hu: CT in Hounsfield units, ``(K, H, W)`` int16.
        labels: vertebra labels 1-7 = C1-C7, 8.. = T1.., ``(K, H, W)`` uint8.
        fracture_mask: per fractured label, a ``(K, H, W)`` bool mask of the fracture cleft (bone removed).
    """

    hu: np.ndarray
    labels: np.ndarray
    fracture_mask: dict[int, np.ndarray]


# --- sampling ---------------------------------------------------------------------------------------------
def sample_phantom(
    rng: np.random.Generator,
    *,
    fractured: dict[str, bool],
    size: int,
    slices: tuple[int, int] | None = None,
) -> PhantomSpec:
    """Draw the anatomy, grid and fractures of one study.

    Args:
        rng: the study's random generator.
        fractured: ``{"C1": bool, ..., "C7": bool}``; every True level gets one visible fracture.
        size: in-plane pixels (H = W = size).
        slices: ``(min, max)`` slice count; default follows the slice spacing (0.6-1.25 mm scaled by
            ``512 / size``), about 60-160 slices at 256 px.

    Returns:
        A fully determined ``PhantomSpec``.
    """
    scale = 512.0 / size
    f = float(rng.uniform(0.9, 1.1))  # patient size
    dims = {lv: {k: v * f for k, v in _NOMINAL[lv].items() if k != "tilt"} | {"tilt": _NOMINAL[lv]["tilt"]}
            for lv in LEVELS}
    # Stack the levels from C1 downwards along z (arc length ~ z for these mild curves).
    z_c1 = float(rng.uniform(-60.0, 60.0))
    centers_z = {"C1": z_c1}
    bottom = z_c1 - dims["C1"]["h"] / 2 - dims["C1"]["disc"]  # top of C2 body
    centers_z["C2"] = bottom - dims["C2"]["h"] / 2
    prev = "C2"
    for lv in LEVELS[2:]:
        top = centers_z[prev] - dims[prev]["h"] / 2 - dims[prev]["disc"]
        centers_z[lv] = top - dims[lv]["h"] / 2
        prev = lv
    # Lordosis: mid-cervical spine anterior (-y); thoracic kyphosis drifts posterior; slight lateral lean.
    lordosis = float(rng.uniform(3.0, 10.0))
    kyphosis = float(rng.uniform(0.05, 0.2))
    lean = float(rng.uniform(-4.0, 4.0))
    x_base, y_base = float(rng.uniform(-15, 15)), float(rng.uniform(-25, 5))
    z_c7 = centers_z["C7"]
    knots_z, knots_x, knots_y = [], [], []
    for lv in LEVELS:
        z = centers_z[lv]
        t = np.clip((z_c1 - z) / (z_c1 - z_c7), 0.0, 1.0)
        y = y_base - lordosis * np.sin(np.pi * t) + (kyphosis * (z_c7 - z) ** 1.2 / 10 if z < z_c7 else 0.0)
        x = x_base + lean * np.sin(np.pi * t)
        knots_z.append(z)
        knots_x.append(float(x))
        knots_y.append(float(y))
    kz, kx, ky = np.array(knots_z), np.array(knots_x), np.array(knots_y)
    dxdz, dydz = np.gradient(kx, kz), np.gradient(ky, kz)
    vertebrae = []
    for i, lv in enumerate(LEVELS):
        tangent = np.array([dxdz[i], dydz[i], 1.0])
        s_ax = tangent / np.linalg.norm(tangent)
        u_ax = np.array([1.0, 0.0, 0.0]) - s_ax[0] * s_ax
        u_ax /= np.linalg.norm(u_ax)
        v_ax = np.cross(s_ax, u_ax)
        disc_above = dims[LEVELS[i - 1]]["disc"] if i > 0 else 2.0
        vertebrae.append(VertebraSpec(level=lv, label=i + 1, center=(kx[i], ky[i], kz[i]),
                                      frame=(tuple(u_ax), tuple(v_ax), tuple(s_ax)), dims=dims[lv],
                                      disc_above=disc_above))
    # Field of view and slices: top a little above C1 (skull base), bottom between T1 and T4.
    pixel = float(rng.uniform(0.32, 0.55)) * scale
    top = z_c1 + dims["C1"]["h"] / 2 + float(rng.uniform(8.0, 25.0))
    low_level = LEVELS[int(rng.integers(7, 11))]
    low = centers_z[low_level] - float(rng.uniform(0.0, 0.5)) * dims[low_level]["h"]
    coverage = top - low
    if slices is None:
        dz = float(rng.uniform(0.6, 1.25)) * scale
        n = int(round(coverage / dz)) + 1
    else:
        n = int(rng.integers(slices[0], slices[1] + 1))
        dz = coverage / (n - 1)
    fov_center = (x_base + float(rng.uniform(-12, 12)), y_base + 12.0 + float(rng.uniform(-15, 15)))
    half = pixel * (size - 1) / 2
    origin = (fov_center[0] - half, fov_center[1] - half, low)
    neck = {
        "cx": x_base + float(rng.uniform(-3, 3)), "dy": 12.0 * f,
        "rx": float(rng.uniform(52, 66)) * f, "ry_ant": float(rng.uniform(45, 55)) * f,
        "ry_post": float(rng.uniform(62, 78)) * f, "fat": float(rng.uniform(3.0, 12.0)),
        "shoulder": float(rng.uniform(1.6, 2.4)),
    }
    tissue = {
        "muscle": float(rng.uniform(38, 55)), "fat": float(rng.uniform(-115, -85)),
        "cortical": float(rng.uniform(750, 1150)), "cancellous": float(rng.uniform(200, 300)),
        "disc": float(rng.uniform(70, 95)), "noise": float(rng.uniform(10, 20)),
        "blur": float(rng.uniform(0.45, 0.75)), "cortex": max(1.3, 1.2 * pixel),
    }
    spec = PhantomSpec(shape=(n, size, size), pixel=pixel, dz=dz, origin=origin, vertebrae=vertebrae,
                       curve_z=knots_z, curve_x=knots_x, curve_y=knots_y,
                       skull_bottom=z_c1 + dims["C1"]["h"] / 2 + 2.5, neck=neck, tissue=tissue,
                       noise_seed=int(rng.integers(0, 2**31 - 1)))
    for vert in vertebrae:
        if fractured.get(vert.level, False):
            vert.fractures.append(_sample_fracture(rng, vert, pixel))
    return spec


def _sample_fracture(rng: np.random.Generator, vert: VertebraSpec, pixel: float) -> FractureSpec:
    """One fracture wide enough to see at this pixel size: a 2-4 px cleft and a 2-4 px fragment offset."""
    d = vert.dims
    gap = float(rng.uniform(2.0, 3.5)) * pixel
    amount = float(rng.uniform(2.0, 3.5)) * pixel

    def unit(vec: np.ndarray) -> tuple[float, float, float]:
        vec = vec / np.linalg.norm(vec)
        return (float(vec[0]), float(vec[1]), float(vec[2]))

    if vert.level == "C1":
        # Jefferson-style break of the ring: a near-sagittal plane through the anterior or posterior arch.
        side = float(rng.choice([-1.0, 1.0]))
        anterior = bool(rng.random() < 0.5)
        point = (side * float(rng.uniform(4, 9)), -12.0 if anterior else 20.0, 0.0)
        normal = unit(np.array([side, rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)]))
        shift = tuple(amount * np.array([side, 0.0, 0.0]))
        return FractureSpec("ring", point, normal, gap, shift, radius=12.0)
    kind = "dens" if vert.level == "C2" and rng.random() < 0.5 else str(
        rng.choice(["body_split", "body_split", "teardrop", "posterior_arch"]))
    if kind == "dens":
        # Type II odontoid fracture: a near-axial plane across the dens base, tip displaced AP.
        point = (0.0, -1.5, d["h"] / 2 + float(rng.uniform(0.5, 2.5)))
        normal = unit(np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.5, 0.5), 1.0]))
        shift = (0.0, float(rng.choice([-1.0, 1.0])) * amount * 1.2, 0.0)
        return FractureSpec(kind, point, normal, gap * 1.2, shift, radius=7.0)
    if kind == "body_split":
        phi = float(rng.uniform(0, np.pi))
        normal = unit(np.array([np.cos(phi), np.sin(phi), rng.uniform(-0.35, 0.35)]))
        point = (float(rng.uniform(-0.4, 0.4)) * d["a"], float(rng.uniform(-0.4, 0.4)) * d["b"], 0.0)
        n = np.array(normal)
        tang = np.cross(n, [0.0, 0.0, 1.0])
        tang = tang / max(np.linalg.norm(tang), 1e-6)
        shift = tuple(amount * (0.6 * n + 0.8 * tang * rng.choice([-1.0, 1.0])))
        return FractureSpec(kind, point, normal, gap, shift, radius=d["a"] + d["b"])
    if kind == "teardrop":
        # Antero-inferior corner fragment pushed forward and down.
        point = (0.0, -0.35 * d["b"], -0.15 * d["h"])
        normal = unit(np.array([rng.uniform(-0.15, 0.15), -1.0, -rng.uniform(0.8, 1.4)]))
        shift = (0.0, -amount, -0.5 * amount)
        return FractureSpec(kind, point, normal, gap, shift, radius=2.5 * d["a"])
    # Lamina / pedicle break on one side: a near-sagittal plane through the posterior arch.
    side = float(rng.choice([-1.0, 1.0]))
    vc = d["b"] + d["cb"] - 0.5
    point = (side * (d["ca"] + float(rng.uniform(-1.0, 2.0))), vc + float(rng.uniform(0, 3)), 0.0)
    normal = unit(np.array([side, rng.uniform(-0.5, 0.5), rng.uniform(-0.25, 0.25)]))
    shift = tuple(amount * np.array([side * 0.7, 0.7, 0.0]))
    return FractureSpec("posterior_arch", point, normal, gap, shift, radius=10.0)


# --- implicit shapes (inside distance in mm, positive inside) --------------------------------------------
def _ell(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    return (1.0 - np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)) * min(a, b)


def _slab(s: np.ndarray, s0: float, s1: float) -> np.ndarray:
    return np.minimum(s - s0, s1 - s)


def _cyl(u: np.ndarray, v: np.ndarray, s: np.ndarray, cu: float, cv: float, a: float, b: float,
         s0: float, s1: float) -> np.ndarray:
    return np.minimum(_ell(u, v, cu, cv, a, b), _slab(s, s0, s1))


def _ellipsoid(u: np.ndarray, v: np.ndarray, s: np.ndarray, c: tuple[float, float, float],
               r: tuple[float, float, float]) -> np.ndarray:
    q = np.sqrt(((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((s - c[2]) / r[2]) ** 2)
    return (1.0 - q) * min(r)


def _vertebra_distance(u: np.ndarray, v: np.ndarray, s: np.ndarray, vert: VertebraSpec) -> np.ndarray:
    """Inside distance (mm) of one whole vertebra in its local frame; arrays broadcast together."""
    d = vert.dims
    if vert.level == "C1":
        return _atlas_distance(u, v, s, d)
    h, a, b, ca, cb = d["h"], d["a"], d["b"], d["ca"], d["cb"]
    disc_below, disc_above = d["disc"], vert.disc_above
    body = np.minimum(_cyl(u, v, s, 0.0, 0.0, a, b, -h / 2, h / 2),
                      _ellipsoid(u, v, s, (0.0, 0.0, 0.0), (1.15 * a, 1.15 * b, 0.8 * h)))
    vc = b + cb - 0.5
    ped_u = (0.7 * a + ca + 3.0) / 2
    parts = [body,
             np.maximum(_cyl(u, v, s, ped_u, b + 1.5, ped_u - 0.7 * a + 1.5, 3.0, -0.3 * h, 0.3 * h),
                        _cyl(u, v, s, -ped_u, b + 1.5, ped_u - 0.7 * a + 1.5, 3.0, -0.3 * h, 0.3 * h))]
    pil_top = h / 2 + disc_above / 2 - 0.8
    pil_bot = -h / 2 - disc_below / 2 + 0.8
    lamina = np.minimum(np.minimum(_ell(u, v, 0.0, vc, ca + 3.5, cb + 3.5), v - vc + 1.0),
                        _slab(s, -0.4 * h - 1.0, 0.35 * h - 1.0))
    v0 = vc + cb + 1.0
    s_spin = s + d["tilt"] * np.maximum(v - v0, 0.0)
    spinous = np.minimum(_ell(u, v, 0.0, v0 + d["spin"] / 2, 2.8, d["spin"] / 2 + 2.0),
                         _slab(s_spin, -0.32 * h - 1.0, 0.28 * h - 1.0))
    parts += [lamina, spinous]
    if vert.level == "C2":
        dens = np.minimum(_ellipsoid(u, v, s, (0.0, -1.5, h / 2 + 5.0), (5.2, 5.5, 11.0)), s - 2.0)
        facets_sup = np.maximum(_cyl(u, v, s, 15.0, 1.0, 6.5, 8.0, 2.0, h / 2 + 1.0),
                                _cyl(u, v, s, -15.0, 1.0, 6.5, 8.0, 2.0, h / 2 + 1.0))
        pillars = np.maximum(_cyl(u, v, s, ca + 3.0, vc, 5.5, 6.5, pil_bot, 1.0),
                             _cyl(u, v, s, -ca - 3.0, vc, 5.5, 6.5, pil_bot, 1.0))
        parts += [dens, facets_sup, pillars]
    else:
        pillars = np.maximum(_cyl(u, v, s, ca + 3.0, vc, 5.5, 6.5, pil_bot, pil_top),
                             _cyl(u, v, s, -ca - 3.0, vc, 5.5, 6.5, pil_bot, pil_top))
        parts.append(pillars)
    if vert.level.startswith("C"):
        tp = np.maximum(_cyl(u, v, s, a + 5.0, 0.5 * b, 7.5, 3.8, -0.3 * h, 0.3 * h),
                        _cyl(u, v, s, -a - 5.0, 0.5 * b, 7.5, 3.8, -0.3 * h, 0.3 * h))
        foramen = np.maximum(_ell(u, v, a + 3.5, 0.5 * b, 2.6, 2.6), _ell(u, v, -a - 3.5, 0.5 * b, 2.6, 2.6))
        parts.append(np.minimum(tp, -foramen))
    else:
        # Thoracic transverse processes point postero-laterally and carry the rib heads.
        tp = np.maximum(_cyl(u, v, s, ca + 13.0, vc + 3.0, 13.0, 4.5, -0.3 * h, 0.25 * h),
                        _cyl(u, v, s, -ca - 13.0, vc + 3.0, 13.0, 4.5, -0.3 * h, 0.25 * h))
        parts.append(tp)
    dist = parts[0]
    for p in parts[1:]:
        dist = np.maximum(dist, p)
    # The canal is free of bone at every level.
    return np.minimum(dist, -_ell(u, v, 0.0, vc, ca, cb))


def _atlas_distance(u: np.ndarray, v: np.ndarray, s: np.ndarray, d: dict[str, float]) -> np.ndarray:
    """C1: a ring with two lateral masses and transverse processes, no body (the dens of C2 sits inside)."""
    hh = d["h"] / 2
    masses = np.maximum(_cyl(u, v, s, 14.0, 1.0, 7.5, 9.0, -hh, hh),
                        _cyl(u, v, s, -14.0, 1.0, 7.5, 9.0, -hh, hh))
    ring = np.minimum(np.minimum(_ell(u, v, 0.0, 5.0, 23.0, 18.5), -_ell(u, v, 0.0, 5.0, 19.5, 15.0)),
                      _slab(s, -0.3 * d["h"], 0.3 * d["h"]))
    tp = np.maximum(_cyl(u, v, s, 27.0, 3.0, 7.0, 4.5, -0.25 * d["h"], 0.25 * d["h"]),
                    _cyl(u, v, s, -27.0, 3.0, 7.0, 4.5, -0.25 * d["h"], 0.25 * d["h"]))
    foramen = np.maximum(_ell(u, v, 22.5, 3.0, 2.5, 2.5), _ell(u, v, -22.5, 3.0, 2.5, 2.5))
    return np.maximum(np.maximum(masses, ring), np.minimum(tp, -foramen))


# --- rendering --------------------------------------------------------------------------------------------
def _grid_axes(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k, h, w = spec.shape
    x = (spec.origin[0] + np.arange(w) * spec.pixel).astype(np.float32)
    y = (spec.origin[1] + np.arange(h) * spec.pixel).astype(np.float32)
    z = (spec.origin[2] + np.arange(k) * spec.dz).astype(np.float32)
    return z, y, x


def _crop(axis: np.ndarray, lo: float, hi: float) -> slice:
    i0 = int(np.searchsorted(axis, lo, side="left"))
    i1 = int(np.searchsorted(axis, hi, side="right"))
    return slice(max(i0, 0), min(i1, len(axis)))


def _render_vertebra(spec: PhantomSpec, vert: VertebraSpec, axes: tuple[np.ndarray, np.ndarray, np.ndarray],
                     bone: np.ndarray, labels: np.ndarray, fracture_mask: dict[int, np.ndarray]) -> None:
    """Union one vertebra into ``bone`` (inside distance) and ``labels``, in place, inside its crop."""
    z, y, x = axes
    c = [float(v) for v in vert.center]
    reach = 38.0
    h = vert.dims["h"]
    up = h / 2 + vert.disc_above + (18.0 if vert.level == "C2" else 2.0)
    down = h / 2 + vert.dims["disc"] + 2.0 + vert.dims["tilt"] * (vert.dims["spin"] + 4.0)
    lean = 60.0 * abs(vert.frame[1][2])  # tilted frame: posterior elements sit higher or lower in z
    up, down = up + lean, down + lean
    sz, sy, sx = (_crop(z, c[2] - down, c[2] + up), _crop(y, c[1] - reach, c[1] + reach + 25.0),
                  _crop(x, c[0] - reach, c[0] + reach))
    if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
        return
    dzv = z[sz][:, None, None] - c[2]
    dyv = y[sy][None, :, None] - c[1]
    dxv = x[sx][None, None, :] - c[0]
    fu, fv, fs = (np.array(r, dtype=np.float32) for r in vert.frame)
    u = dxv * fu[0] + dyv * fu[1] + dzv * fu[2]
    v = dxv * fv[0] + dyv * fv[1] + dzv * fv[2]
    s = dxv * fs[0] + dyv * fs[1] + dzv * fs[2]
    dist = _vertebra_distance(u, v, s, vert)
    cleft = None
    for frac in vert.fractures:
        p, n = np.array(frac.point, dtype=np.float32), np.array(frac.normal, dtype=np.float32)
        sd = (u - p[0]) * n[0] + (v - p[1]) * n[1] + (s - p[2]) * n[2]
        radial = np.sqrt(np.maximum((u - p[0]) ** 2 + (v - p[1]) ** 2 + (s - p[2]) ** 2 - sd**2, 0.0))
        near = radial < frac.radius
        moved = near & (sd > 0)
        t = frac.shift
        dist_moved = _vertebra_distance(u - t[0], v - t[1], s - t[2], vert)
        cut = near & (np.abs(sd) < frac.gap / 2)
        was_bone = (dist > 0) | (dist_moved > 0)
        dist = np.where(moved, dist_moved, dist)
        dist = np.where(cut, np.minimum(dist, -0.5), dist)
        cleft = cut & was_bone if cleft is None else cleft | (cut & was_bone)
    block = bone[sz, sy, sx]
    better = dist > block
    labels[sz, sy, sx] = np.where(better & (dist > 0), np.uint8(vert.label), labels[sz, sy, sx])
    bone[sz, sy, sx] = np.where(better, dist, block)
    if cleft is not None:
        full = np.zeros(spec.shape, dtype=bool)
        full[sz, sy, sx] = np.broadcast_to(cleft, dist.shape)
        fracture_mask[vert.label] = full


def _render_discs(spec: PhantomSpec, axes: tuple[np.ndarray, np.ndarray, np.ndarray],
                  disc: np.ndarray) -> None:
    """Intervertebral discs (C2/3 downwards) as elliptic cylinders in the upper vertebra's frame."""
    z, y, x = axes
    for upper, lower in zip(spec.vertebrae[1:-1], spec.vertebrae[2:], strict=True):
        d, dl = upper.dims, lower.dims
        c = [float(v) for v in upper.center]
        sz = _crop(z, c[2] - d["h"] / 2 - d["disc"] - 5.0, c[2] - d["h"] / 2 + 5.0)
        sy, sx = _crop(y, c[1] - 25.0, c[1] + 25.0), _crop(x, c[0] - 25.0, c[0] + 25.0)
        if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
            continue
        dzv, dyv, dxv = z[sz][:, None, None] - c[2], y[sy][None, :, None] - c[1], x[sx][None, None, :] - c[0]
        fu, fv, fs = (np.array(r, dtype=np.float32) for r in upper.frame)
        u = dxv * fu[0] + dyv * fu[1] + dzv * fu[2]
        v = dxv * fv[0] + dyv * fv[1] + dzv * fv[2]
        s = dxv * fs[0] + dyv * fs[1] + dzv * fs[2]
        a, b = (d["a"] + dl["a"]) / 2 + 0.5, (d["b"] + dl["b"]) / 2 + 0.5
        inside = _cyl(u, v, s, 0.0, 0.0, a, b, -d["h"] / 2 - d["disc"] - 1.0, -d["h"] / 2 + 1.0) > 0
        disc[sz, sy, sx] |= inside


def _curve(spec: PhantomSpec, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Spine centre line and interpolated level dimensions at each slice height ``z`` (cranial last)."""
    kz = np.array(spec.curve_z)[::-1]
    cx = np.interp(z, kz, np.array(spec.curve_x)[::-1])
    cy = np.interp(z, kz, np.array(spec.curve_y)[::-1])
    dims = {}
    for key in ("a", "b", "ca", "cb"):
        vals = np.array([vt.dims[key] for vt in spec.vertebrae])
        vals[0] = vals[1]  # C1 has no body: use C2's values for the tubes
        dims[key] = np.interp(z, kz, vals[::-1])
    return cx, cy, dims


def render_phantom(spec: PhantomSpec) -> PhantomResult:
    """Rasterise a ``PhantomSpec`` into HU, vertebra labels and fracture masks (slices caudal to cranial).

    Args:
        spec: from ``sample_phantom``.

    Returns:
        ``PhantomResult`` with arrays of shape ``(K, H, W)``.
    """
    K, H, W = spec.shape
    axes = _grid_axes(spec)
    z, y, x = axes
    t = spec.tissue
    nk = spec.neck
    rng = np.random.default_rng(spec.noise_seed)
    cx, cy, dims = _curve(spec, z)
    Y3, X3 = y[None, :, None], x[None, None, :]
    z_c1 = spec.vertebrae[0].center[2]
    z_c3 = spec.vertebrae[2].center[2]
    z_c7 = spec.vertebrae[6].center[2]
    c1 = spec.vertebrae[0]

    # Soft-tissue outline: an egg-shaped neck that widens into the jaw above C3 and the shoulders below C7.
    below = np.clip((z_c7 - z) / 45.0, 0.0, 1.0)
    above = np.clip((z - z_c3) / 25.0, 0.0, 1.0)
    rx = nk["rx"] * (1 + (nk["shoulder"] - 1) * below ** 1.5 + 0.12 * above)
    ry_ant = nk["ry_ant"] * (1 + 0.4 * above + 0.25 * below)
    ry_post = nk["ry_post"] * (1 + 0.25 * below)
    ncy = cy + nk["dy"]
    dyn = Y3 - ncy[:, None, None]
    ry = np.where(dyn < 0, ry_ant[:, None, None], ry_post[:, None, None])
    rho = np.sqrt(((X3 - nk["cx"]) / rx[:, None, None]) ** 2 + (dyn / ry) ** 2)
    body_depth = (1.0 - rho) * np.minimum(rx, np.minimum(ry_ant, ry_post))[:, None, None]
    hu = np.full(spec.shape, -1000.0, dtype=np.float32)
    texture = _smooth_noise(rng, spec.shape, sigma_mm=3.0, pixel=spec.pixel, dz=spec.dz)
    inside = body_depth > 0
    hu[inside] = t["fat"] + 10.0 * texture[inside]
    muscle = body_depth > nk["fat"]
    hu[muscle] = t["muscle"] + 12.0 * texture[muscle]
    del body_depth, rho, dyn, ry, inside
    # Fat planes between the posterior muscles and around the vessels: thin tubes along the neck.
    below_c1 = z[:, None, None] < z_c1
    for du, dv, r in ((-9.0, 38.0, 2.2), (9.0, 38.0, 2.2), (-25.0, 28.0, 2.5), (25.0, 28.0, 2.5),
                      (-24.0, -6.0, 5.5), (24.0, -6.0, 5.5)):
        ell = ((X3 - cx[:, None, None] - du) / r) ** 2 + ((Y3 - cy[:, None, None] - dv) / r) ** 2 < 1.0
        hu[ell & muscle & below_c1] = t["fat"] + 15.0
    for du, dv, r in ((-24.0, -6.0, 3.5), (24.0, -6.0, 3.5), (-19.0, -10.0, 2.8), (19.0, -10.0, 2.8)):
        ell = ((X3 - cx[:, None, None] - du) / r) ** 2 + ((Y3 - cy[:, None, None] - dv) / r) ** 2 < 1.0
        hu[ell & muscle & below_c1] = 40.0

    # Airway: pharynx (wide, close to the spine) above C4, larynx/trachea (round, anterior) below.
    low = np.clip((spec.vertebrae[3].center[2] - z) / 30.0, 0.0, 1.0)
    prevert = 3.5 + 9.0 * low
    ar_x = 13.0 * (1 - low) + 8.0 * low
    ar_y = 6.5 * (1 - low) + 8.0 * low
    ay = cy - dims["b"] - prevert - ar_y
    air = ((X3 - cx[:, None, None]) / ar_x[:, None, None]) ** 2 + \
          ((Y3 - ay[:, None, None]) / ar_y[:, None, None]) ** 2 < 1.0
    hu[air & muscle] = -1000.0
    # Lung apices below T1 level.
    z_t1 = spec.vertebrae[7].center[2]
    lung_r = np.clip((z_t1 + 10.0 - z) * 1.2, 0.0, 60.0)
    for side in (-1.0, 1.0):
        lx = cx + side * (rx * 0.45)
        lung = ((X3 - lx[:, None, None]) / np.maximum(lung_r, 1e-3)[:, None, None]) ** 2 + \
               ((Y3 - cy[:, None, None] - 5.0) / np.maximum(lung_r * 0.9, 1e-3)[:, None, None]) ** 2 < 1.0
        lung &= muscle
        hu[lung] = -850.0 + 30.0 * texture[lung]

    # Spinal canal: CSF with the cord inside, a continuous tube along the curve.
    vc = cy + dims["b"] + dims["cb"] - 0.5
    canal = ((X3 - cx[:, None, None]) / dims["ca"][:, None, None]) ** 2 + \
            ((Y3 - vc[:, None, None]) / dims["cb"][:, None, None]) ** 2 < 1.0
    cord = ((X3 - cx[:, None, None]) / 5.5) ** 2 + ((Y3 - vc[:, None, None]) / 4.0) ** 2 < 1.0
    hu[canal] = 8.0
    hu[cord] = 35.0

    # Bone: skull base, mandible and hyoid (label 0) then the vertebrae (labelled).
    bone = np.full(spec.shape, -100.0, dtype=np.float32)
    labels = np.zeros(spec.shape, dtype=np.uint8)
    _render_skull(spec, axes, bone, hu, c1, t)
    disc = np.zeros(spec.shape, dtype=bool)
    _render_discs(spec, axes, disc)
    hu[disc] = t["disc"]
    fracture_mask: dict[int, np.ndarray] = {}
    for vert in spec.vertebrae:
        _render_vertebra(spec, vert, axes, bone, labels, fracture_mask)
    for m in fracture_mask.values():
        hu[m] = 45.0  # haematoma / soft tissue in the cleft
    cortical = (bone > 0) & (bone < t["cortex"])
    cancellous = bone >= t["cortex"]
    # Trabecular mottle: white noise here, correlated by the scanner blur below.
    hu[cancellous] = t["cancellous"] + 45.0 * rng.standard_normal(int(cancellous.sum()), dtype=np.float32)
    hu[cortical] = t["cortical"]

    # Scanner: partial-volume blur, quantum noise, reconstruction circle.
    hu = ndimage.gaussian_filter(hu, sigma=(0.3, t["blur"], t["blur"]), mode="nearest")
    hu += t["noise"] * rng.standard_normal(spec.shape, dtype=np.float32)
    hh, ww = np.mgrid[0:H, 0:W]
    circle = (hh - (H - 1) / 2) ** 2 + (ww - (W - 1) / 2) ** 2 > (min(H, W) / 2) ** 2
    hu[:, circle] = -1024.0
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return PhantomResult(hu=hu, labels=labels, fracture_mask=fracture_mask)


def _render_skull(spec: PhantomSpec, axes: tuple[np.ndarray, np.ndarray, np.ndarray], bone: np.ndarray,
                  hu: np.ndarray, c1: VertebraSpec, t: dict[str, float]) -> None:
    """Occipital bone with the foramen magnum, clivus, condyles, mastoids, mandible and hyoid (no label).

    Each part is evaluated only on the slices it can reach, and unioned into ``bone`` in place.
    """
    z, y, x = axes
    cxx, cyy, zc = (float(c) for c in c1.center)
    zb = spec.skull_bottom
    c2, c3 = spec.vertebrae[1], spec.vertebrae[2]
    z_c2, z_c3 = float(c2.center[2]), float(c3.center[2])

    def block(z0: float, z1: float) -> tuple[slice, np.ndarray, np.ndarray, np.ndarray] | None:
        sz = _crop(z, z0, z1)
        if sz.start >= sz.stop:
            return None
        return sz, z[sz][:, None, None], y[None, :, None] - cyy, x[None, None, :] - cxx

    # Posterior fossa: a thick-walled half ellipsoid behind the clivus; its floor is the skull base plate.
    got = block(zb - 8.0, z[-1] + 1.0)
    if got is not None:
        sz, Z3, V, U = got
        S = Z3 - zb
        q = np.sqrt((U / 60.0) ** 2 + ((V - 30.0) / 50.0) ** 2 + ((S - 48.0) / 50.0) ** 2)
        outer = (1.0 - q) * 50.0
        inner = outer - 7.0
        front = V + 4.0  # the fossa ends at the clivus
        brain = (inner > 0) & (front > 0)
        hu[sz][brain] = 35.0
        shell = np.minimum(np.minimum(outer, -inner), front + 7.0)
        foramen = ((U / 15.0) ** 2 + ((V - 14.0) / 18.0) ** 2 < 1.0) & (S < 25.0)
        shell = np.where(foramen, -1.0, shell)
        # Clivus: a bar of bone rising forwards from the front of the foramen magnum.
        clivus = np.minimum(np.minimum(14.0 - np.abs(U), 5.0 - np.abs(V + 2.0 + 0.6 * S)), S + 1.0)
        condyles = np.maximum(_cyl(U, V, Z3, 14.0, 1.0, 7.0, 8.5, zc + c1.dims["h"] / 2 + 1.5, zb + 6.0),
                              _cyl(U, V, Z3, -14.0, 1.0, 7.0, 8.5, zc + c1.dims["h"] / 2 + 1.5, zb + 6.0))
        mastoids = np.maximum(_ellipsoid(U, V, S, (48.0, 15.0, 8.0), (8.0, 10.0, 14.0)),
                              _ellipsoid(U, V, S, (-48.0, 15.0, 8.0), (8.0, 10.0, 14.0)))
        part = np.maximum(np.maximum(shell, clivus), np.maximum(condyles, mastoids))
        np.maximum(bone[sz], part, out=bone[sz])
    # Mandible: a U around the front of the neck at C2-C3 with rami rising towards the skull base.
    got = block(z_c2 - 17.0, zb + 31.0)
    if got is not None:
        sz, Z3, V, U = got
        mv = V + 8.0
        u_shape = np.minimum(np.minimum(_ell(U, mv, 0.0, 0.0, 50.0, 50.0),
                                        -_ell(U, mv, 0.0, 0.0, 43.0, 43.0)),
                             np.minimum(-mv, _slab(Z3, z_c2 - 16.0, z_c2 + 4.0)))
        rami = np.maximum(_cyl(U, V, Z3, 45.0, -12.0, 4.0, 12.0, z_c2 - 10.0, zb + 30.0),
                          _cyl(U, V, Z3, -45.0, -12.0, 4.0, 12.0, z_c2 - 10.0, zb + 30.0))
        np.maximum(bone[sz], np.maximum(u_shape, rami), out=bone[sz])
    # Hyoid: a small U in front of the C3 inferior endplate.
    h3 = c3.dims["h"]
    got = block(z_c3 - h3 / 2 - 4.0, z_c3 - h3 / 2 + 1.0)
    if got is not None:
        sz, Z3, V, U = got
        hv = V + 28.0
        hyoid = np.minimum(np.minimum(_ell(U, hv, 0.0, 0.0, 19.0, 12.0), -_ell(U, hv, 0.0, 0.0, 15.5, 9.0)),
                           np.minimum(-hv + 2.0, _slab(Z3, z_c3 - h3 / 2 - 4.0, z_c3 - h3 / 2 + 1.0)))
        np.maximum(bone[sz], hyoid, out=bone[sz])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], *, sigma_mm: float, pixel: float,
                  dz: float) -> np.ndarray:
    """Unit-variance smooth texture ``(K, H, W)``: 2-D blurred noise on a few key slices, lerped along z.

    Blurring a full 3-D noise volume costs seconds at 256 px; a handful of 2-D fields blended linearly
    between key slices looks the same for soft-tissue mottle and costs two multiply-adds per voxel.
    """
    K, H, W = shape
    step = max(int(round(2.0 * sigma_mm / dz)), 1)
    keys = np.arange(0, K + step, step)
    fields = rng.standard_normal((len(keys), H, W), dtype=np.float32)
    fields = ndimage.gaussian_filter(fields, sigma=(0, sigma_mm / pixel, sigma_mm / pixel), mode="wrap")
    fields /= max(float(fields.std()), 1e-6)
    pos = np.arange(K) / step
    i0 = np.minimum(pos.astype(np.int64), len(keys) - 2)
    frac = (pos - i0).astype(np.float32)[:, None, None]
    # Linear blends of unit-variance fields lose variance mid-way; rescale so the amplitude stays even.
    norm = 1.0 / np.sqrt((1 - frac) ** 2 + frac**2)
    return (fields[i0] * (1 - frac) + fields[i0 + 1] * frac) * norm
