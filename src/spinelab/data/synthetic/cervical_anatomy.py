"""Seeded draw of one synthetic neck CT: levels, vertebra frames and sizes, field of view, tissue, fractures.

The phantom is described in patient (LPS) millimetres for an axial grid whose slices run caudal to cranial
(index ``k`` = 0 is the most caudal slice). ``sample_phantom`` makes every random choice of a study and
returns a ``PhantomSpec``; ``cervical_render.render_phantom`` turns it into voxels with no randomness of its
own beyond the spec's noise seed. Each vertebra gets its own rigid frame (centred on the body, tilted with
the lordotic curve) in which ``cervical_shapes`` describes its bone.

Fractures are planes through a vertebra (``FractureSpec``), sized to stay visible at the study's pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LEVELS",
    "FractureSpec",
    "VertebraSpec",
    "PhantomSpec",
    "sample_phantom",
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
