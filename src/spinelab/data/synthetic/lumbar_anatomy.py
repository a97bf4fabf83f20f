"""One synthetic lumbar spine as implicit shapes in world (LPS mm) space, and its MR rendering.

Every series of a synthetic study is *sampled* from the same model on its own grid, so a point in one series
maps to the others by world coordinates, as in a real study. The model lives in a curved local frame that
follows a circular lordosis arc:

* ``x``: towards patient left (LPS +x), 0 on the midline;
* ``v``: towards posterior, 0 at the posterior margin of the vertebral bodies (the canal's front wall);
* ``s``: arc length towards the head, 0 at the centre of the L5/S1 disc.

Shapes (bodies T11..S1 with a fused sacrum, discs with nucleus and annulus, thecal sac with CSF, cord and
cauda equina roots, pedicles, laminae, spinous processes, facet joints, neural foramina with fat and an
exiting root, lateral recesses with a traversing root, muscle, subcutaneous fat) are painted in order with
soft edges. Grades act on geometry: canal stenosis shortens the canal's AP diameter at its disc (disc bulge
from the front, ligamentum flavum from the back), foraminal narrowing replaces foraminal fat by dark tissue,
subarticular stenosis fills the lateral recess on its side and pushes the canal wall in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_LEVELS

__all__ = [
    "VERTEBRA_NAMES",
    "DISC_NAMES",
    "CONTRASTS",
    "LumbarAnatomy",
    "sample_anatomy",
    "local_to_world",
    "world_to_local",
    "render_lumbar",
    "anatomy_landmarks",
]

#: Vertebrae modelled, caudal to cranial (index 0 = S1, carrying the fused sacrum below it).
VERTEBRA_NAMES: tuple[str, ...] = ("S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11")
#: Discs modelled, caudal to cranial: disc ``j`` lies between vertebra ``j`` and ``j + 1``.
DISC_NAMES: tuple[str, ...] = ("L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2", "T12/L1", "T11/T12")
#: Contrasts the renderer knows.
CONTRASTS: tuple[str, ...] = ("T1", "T2", "STIR")

# Tissue signal per contrast (arbitrary MR units; 12-bit range after the per-series gain).
_TISSUES: dict[str, dict[str, float]] = {
    "T1": {"fat": 950, "muscle": 380, "marrow": 700, "cortex": 80, "nucleus": 330, "annulus": 250, "csf": 170,
           "nerve": 390, "ligament": 140, "viscera": 430, "dark": 210},
    "T2": {"fat": 760, "muscle": 260, "marrow": 430, "cortex": 60, "nucleus": 1300, "annulus": 220,
           "csf": 1650, "nerve": 380, "ligament": 130, "viscera": 520, "dark": 170},
    "STIR": {"fat": 90, "muscle": 210, "marrow": 170, "cortex": 50, "nucleus": 1150, "annulus": 200,
             "csf": 1550, "nerve": 330, "ligament": 110, "viscera": 380, "dark": 140},
}

# Effect sizes per grade (normal/mild, moderate, severe): uniform ranges, kept apart so grades are learnable.
_SCS_REDUCTION = ((0.0, 0.15), (0.36, 0.48), (0.64, 0.76))  # fraction of canal AP diameter lost
_NFN_OPEN = ((0.85, 1.05), (0.45, 0.58), (0.12, 0.24))  # foraminal fat axes left
_SS_OPEN = ((0.85, 1.05), (0.40, 0.55), (0.05, 0.17))  # lateral recess axes left


@dataclass
class LumbarAnatomy:
    """Parameters of one synthetic lumbar spine (all lengths in mm).

    Per-vertebra arrays have 8 entries (``VERTEBRA_NAMES`` order), per-disc arrays 7 (``DISC_NAMES``);
    per-side arrays are ``(7, 2)`` with column 0 = left (+x), 1 = right.
    """

    offset: np.ndarray  # (3,) world position of the local origin's arc frame
    radius: float  # lordosis arc radius
    s_apex: float  # arc length of the most anterior point of the curve
    vert_center: np.ndarray  # (8,) s of each body centre
    vert_height: np.ndarray
    vert_width: np.ndarray
    vert_depth: np.ndarray
    disc_center: np.ndarray  # (7,) s of each disc centre
    disc_height: np.ndarray
    disc_hydration: np.ndarray  # nucleus brightness factor on T2, falls with degeneration
    disc_bulge: np.ndarray  # posterior bulge into the canal
    canal_ap: float  # normal AP diameter of the thecal sac
    canal_width: float  # normal transverse diameter
    pedicle_x: float  # |x| of the pedicle centres (and of the foramina)
    conus_s: float  # s where the conus medullaris ends
    scs_reduction: np.ndarray  # (7,)
    nfn_open: np.ndarray  # (7, 2)
    ss_open: np.ndarray  # (7, 2)
    roots: np.ndarray  # (n, 2) cauda equina positions in normalised canal coordinates (x, v)
    texture: np.ndarray  # (n, 5) plane waves (kx, ky, kz, phase, amplitude) of the tissue texture
    skin_depth: float = 80.0  # skin behind the canal's front wall
    fat_thickness: float = 16.0  # subcutaneous fat
    gain: dict[str, float] = field(default_factory=dict)  # per-tissue multiplicative jitter
    grades: np.ndarray | None = None  # (5 conditions, 5 levels) that produced the effects


def _level_to_disc(level_index: int) -> int:
    """Registry level index (0 = l1_l2) to disc index (0 = L5/S1)."""
    return len(LUMBAR_LEVELS) - 1 - level_index


def sample_anatomy(rng: np.random.Generator, grades: np.ndarray) -> LumbarAnatomy:
    """Draw a spine whose degenerative findings follow ``grades``.

    Args:
        rng: random generator (one per study).
        grades: int ``(5 conditions, 5 levels)`` in registry order, values 0/1/2.

    Returns:
        The anatomy parameters.
    """
    grades = np.asarray(grades, dtype=np.int64)
    n_v, n_d = len(VERTEBRA_NAMES), len(DISC_NAMES)
    size = rng.uniform(0.92, 1.08)  # patient size scales everything together
    vert_height = (size * np.array([28.0, 27.0, 27.5, 27.0, 26.5, 25.5, 24.0, 23.0])
                   * rng.uniform(0.95, 1.05, n_v))
    vert_width = size * np.linspace(50.0, 42.0, n_v) * rng.uniform(0.96, 1.04, n_v)
    vert_depth = size * np.linspace(35.0, 30.0, n_v) * rng.uniform(0.96, 1.04, n_v)
    disc_height = size * np.array([10.0, 11.0, 10.5, 10.0, 9.0, 8.0, 7.0]) * rng.uniform(0.9, 1.1, n_d)
    ci = {c: i for i, c in enumerate(LUMBAR_CONDITIONS)}
    scs = np.zeros(n_d)
    nfn = np.ones((n_d, 2))
    ss = np.ones((n_d, 2))
    worst = np.zeros(n_d)
    for li in range(len(LUMBAR_LEVELS)):
        j = _level_to_disc(li)
        g = grades[:, li]
        scs[j] = rng.uniform(*_SCS_REDUCTION[g[ci["spinal_canal_stenosis"]]])
        for side, prefix in enumerate(("left", "right")):
            nfn[j, side] = rng.uniform(*_NFN_OPEN[g[ci[f"{prefix}_neural_foraminal_narrowing"]]])
            ss[j, side] = rng.uniform(*_SS_OPEN[g[ci[f"{prefix}_subarticular_stenosis"]]])
        worst[j] = g.max()
    # Degenerated discs lose height and water (dark on T2) and bulge backwards.
    disc_height = disc_height * (1.0 - 0.12 * worst * rng.uniform(0.5, 1.0, n_d))
    hydration = np.clip(1.0 - 0.25 * worst - rng.uniform(0.0, 0.2, n_d), 0.25, 1.0)
    bulge = 0.6 + 0.5 * worst + rng.uniform(0.0, 0.5, n_d)

    vert_center = np.zeros(n_v)
    disc_center = np.zeros(n_d)
    vert_center[0] = -(disc_height[0] / 2 + vert_height[0] / 2)
    for j in range(n_d):
        if j > 0:
            disc_center[j] = vert_center[j] + vert_height[j] / 2 + disc_height[j] / 2
        vert_center[j + 1] = disc_center[j] + disc_height[j] / 2 + vert_height[j + 1] / 2
    canal_ap = size * rng.uniform(14.0, 17.0)
    canal_width = size * rng.uniform(20.0, 24.0)
    n_roots = int(rng.integers(7, 11))
    roots = np.stack([rng.uniform(-0.6, 0.6, n_roots), rng.uniform(-0.1, 0.65, n_roots)], axis=1)
    gain = {name: float(rng.uniform(0.9, 1.1)) for name in _TISSUES["T1"]}
    n_waves = 4
    direction = rng.standard_normal((n_waves, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavenumber = 2 * np.pi / rng.uniform(8.0, 40.0, (n_waves, 1))
    texture = np.concatenate([direction * wavenumber, rng.uniform(0, 2 * np.pi, (n_waves, 1)),
                              rng.uniform(0.005, 0.02, (n_waves, 1))], axis=1)
    offset = np.array([rng.uniform(-30, 30), rng.uniform(-40, 40), rng.uniform(-60, 60)])
    return LumbarAnatomy(
        offset=offset, radius=float(rng.uniform(330.0, 560.0)),
        s_apex=float(vert_center[2] + rng.uniform(-12.0, 12.0)),
        vert_center=vert_center, vert_height=vert_height, vert_width=vert_width, vert_depth=vert_depth,
        disc_center=disc_center, disc_height=disc_height, disc_hydration=hydration, disc_bulge=bulge,
        canal_ap=float(canal_ap), canal_width=float(canal_width),
        pedicle_x=float(canal_width / 2 + size * rng.uniform(4.5, 6.0)),
        conus_s=float(vert_center[5] + rng.uniform(-10.0, 15.0)),
        scs_reduction=scs, nfn_open=nfn, ss_open=ss, roots=roots, texture=texture, gain=gain,
        grades=grades.copy(), skin_depth=float(canal_ap + rng.uniform(50.0, 80.0)),
        fat_thickness=float(rng.uniform(8.0, 30.0)),
    )


def local_to_world(anat: LumbarAnatomy, local: np.ndarray) -> np.ndarray:
    """Map ``(..., 3)`` local ``(x, v, s)`` points to world LPS mm."""
    local = np.asarray(local, dtype=np.float64)
    x, v, s = local[..., 0], local[..., 1], local[..., 2]
    r = anat.radius - v
    phi = (s - anat.s_apex) / anat.radius
    out = np.stack([x, anat.radius - r * np.cos(phi), r * np.sin(phi)], axis=-1)
    return out + anat.offset


def world_to_local(anat: LumbarAnatomy, world: np.ndarray) -> np.ndarray:
    """Map ``(..., 3)`` world LPS mm points to local ``(x, v, s)``."""
    world = np.asarray(world)
    dtype = world.dtype if world.dtype in (np.float32, np.float64) else np.float64
    q = world.astype(dtype, copy=False) - anat.offset.astype(dtype)
    dy = anat.radius - q[..., 1]
    r = np.hypot(dy, q[..., 2])
    phi = np.arctan2(q[..., 2], dy)
    return np.stack([q[..., 0], anat.radius - r, anat.s_apex + anat.radius * phi], axis=-1)


def anatomy_landmarks(anat: LumbarAnatomy) -> dict[str, object]:
    """World positions of the 25 graded findings and of every disc and body.

    Returns:
        ``{"points": {(condition, level): (3,) world}, "discs": {name: (3,)}, "vertebrae": {name: (3,)}}``.
        Spinal canal points sit mid-canal at the disc, foraminal points in the centre of the foraminal fat,
        subarticular points in the lateral recess.
    """
    points: dict[tuple[str, str], np.ndarray] = {}
    for li, level in enumerate(LUMBAR_LEVELS):
        j = _level_to_disc(li)
        sd = anat.disc_center[j]
        r = anat.scs_reduction[j]
        v_ant = 0.5 + anat.disc_bulge[j] + 0.35 * anat.canal_ap * r
        ap = anat.canal_ap * (1.0 - r)
        for cond in LUMBAR_CONDITIONS:
            side = 1.0 if cond.startswith("left") else -1.0
            if cond == "spinal_canal_stenosis":
                loc = (0.0, v_ant + ap / 2, sd)
            elif "foraminal" in cond:
                loc = (side * anat.pedicle_x, *_foramen_center(anat, j))
            else:
                loc = (side * _recess_x(anat), _RECESS_V, sd)
            points[(cond, level)] = local_to_world(anat, np.array(loc))
    discs = {name: local_to_world(anat, np.array([0.0, -anat.vert_depth[j] / 2, anat.disc_center[j]]))
             for j, name in enumerate(DISC_NAMES)}
    verts = {name: local_to_world(anat, np.array([0.0, -anat.vert_depth[k] / 2, anat.vert_center[k]]))
             for k, name in enumerate(VERTEBRA_NAMES)}
    return {"points": points, "discs": discs, "vertebrae": verts}


_RECESS_V = 3.5  # v of the lateral recess centre (just behind the disc)


def _recess_x(anat: LumbarAnatomy) -> float:
    return anat.canal_width / 2 - 1.5


def _foramen_center(anat: LumbarAnatomy, j: int) -> tuple[float, float]:
    """(v, s) of the centre of the foraminal fat at disc ``j`` (upper half of the disc space)."""
    return 4.5, float(anat.disc_center[j] + 0.25 * anat.vert_height[j + 1])


# --- rendering -----------------------------------------------------------------------------------------
def _ramp(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-ness from a signed distance (mm, positive inside): 0..1 over ``edge`` mm."""
    return np.clip(0.5 + d / edge, 0.0, 1.0)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _paint(img: np.ndarray, weight: np.ndarray, value: float) -> None:
    img += weight * (value - img)


def _ellipse_d(a: np.ndarray, b: np.ndarray, ra: np.ndarray | float, rb: np.ndarray | float,
               power: int = 2) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to a (super)ellipse with semi-axes ``ra``, ``rb``."""
    if power == 2:
        rho = np.sqrt((a / ra) ** 2 + (b / rb) ** 2)
    else:
        a2, b2 = (a / ra) ** 2, (b / rb) ** 2
        rho = np.sqrt(np.sqrt(a2 * a2 + b2 * b2))
    return (1.0 - rho) * np.minimum(ra, rb)


def render_lumbar(anat: LumbarAnatomy, points: np.ndarray, *, contrast: str, edge: float = 0.6) -> np.ndarray:
    """Noise-free MR signal of the anatomy at world points.

    Args:
        anat: the spine.
        points: ``(N, 3)`` world LPS mm.
        contrast: one of ``CONTRASTS``.
        edge: width of the soft edges in mm (about half a pixel avoids aliasing).

    Returns:
        ``(N,)`` float32 signal.
    """
    tissue = {k: v * anat.gain.get(k, 1.0) for k, v in _TISSUES[contrast].items()}
    q = np.asarray(points, dtype=np.float32) - anat.offset.astype(np.float32)
    local = world_to_local(anat, np.asarray(points, dtype=np.float32))
    x, v, s = (np.ascontiguousarray(local[:, i]) for i in range(3))
    img = np.zeros(len(local), dtype=np.float32)
    p = _Params(anat)

    # Body outline in world space (a straight back): subcutaneous fat shell, muscle behind, viscera in front.
    skin_y = anat.skin_depth
    half_y, mid_y = (skin_y + 190.0) / 2, (skin_y - 190.0) / 2
    d_body = _ellipse_d(q[:, 0], q[:, 1] - mid_y, 165.0, half_y)
    _paint(img, _ramp(d_body, edge), tissue["fat"])
    inner = _ramp(d_body - anat.fat_thickness, edge)
    _paint(img, inner, tissue["viscera"])
    _paint(img, inner * _ramp(v + 45.0 - 0.004 * x**2, 3.0), tissue["muscle"])

    # Each group of shapes is evaluated only where it can be non-zero (the spine fills a small part of a
    # slice); groups are painted in anatomical order, so later ones win where they overlap.
    ax = np.abs(x)
    in_s = (s > p.vert_center[0] - 110.0) & (s < p.vert_center[-1] + 40.0)
    below = np.clip(p.vert_center[0] - s, 0.0, None)
    groups = (
        (_paint_psoas, (ax > 12) & (ax < 75) & (v > -75) & (v < 12)),
        (_paint_anterior, (ax < 36) & (v > -52) & (v < 8.0 + 0.5 * below)),
        (_paint_posterior, (ax < p.pedicle_x + 16.0) & (v > -10.0) & (v < p.ap0 + 46.0 + 0.5 * below)),
    )
    for painter, mask in groups:
        idx = np.nonzero(mask & in_s)[0]
        if len(idx):
            sub = img[idx]
            painter(p, x[idx], v[idx], s[idx], sub, tissue, edge)
            img[idx] = sub
    # Low-frequency tissue texture (marrow, muscle heterogeneity), fixed per study.
    tex = np.ones(len(img), dtype=np.float32)
    for kx, ky, kz, phase, amp in p.texture:
        tex += amp * np.cos(kx * q[:, 0] + ky * q[:, 1] + kz * q[:, 2] + phase)
    return img * tex


class _Params:
    """The anatomy's arrays as float32 (float64 parameters would silently promote every temporary)."""

    def __init__(self, anat: LumbarAnatomy) -> None:
        self.vert_center, self.vert_height = _f32(anat.vert_center), _f32(anat.vert_height)
        self.vert_width, self.vert_depth = _f32(anat.vert_width), _f32(anat.vert_depth)
        self.disc_center, self.disc_height = _f32(anat.disc_center), _f32(anat.disc_height)
        self.disc_hydration, self.disc_bulge = _f32(anat.disc_hydration), _f32(anat.disc_bulge)
        self.scs, self.nfn, self.ss = _f32(anat.scs_reduction), _f32(anat.nfn_open), _f32(anat.ss_open)
        self.ap0, self.wc0 = float(anat.canal_ap), float(anat.canal_width)
        self.pedicle_x, self.conus_s = float(anat.pedicle_x), float(anat.conus_s)
        self.recess_x = _recess_x(anat)
        self.roots = anat.roots.tolist()
        self.texture = anat.texture.tolist()

    def indices(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest vertebra (0..7) and nearest disc (0..6) of each point."""
        k = np.searchsorted(self.disc_center, s)
        j = np.clip(np.searchsorted(self.vert_center[1:], s), 0, len(DISC_NAMES) - 1)
        return k, j


def _paint_psoas(p: _Params, x: np.ndarray, v: np.ndarray, s: np.ndarray, img: np.ndarray,
                 tissue: dict[str, float], edge: float) -> None:
    """Psoas muscles beside the bodies, growing from T12 down to L5, with a fat plane around them."""
    grow = np.clip((p.vert_center[6] - s) / 90.0, 0.0, 1.0)
    px = p.vert_width[3] / 2 + 4.0 + 12.0 * grow
    d = _ellipse_d(np.abs(x) - px, v + 14.0 + 6.0 * grow, 4.0 + 11.0 * grow, 6.0 + 9.0 * grow)
    d = np.where(s > p.disc_center[0] - 10.0, d, -10.0)
    _paint(img, _ramp(d + 0.8, edge) * (0.6 * (grow > 0.05)), tissue["fat"])
    _paint(img, _ramp(d, edge), tissue["muscle"])


def _paint_anterior(p: _Params, x: np.ndarray, v: np.ndarray, s: np.ndarray, img: np.ndarray,
                    tissue: dict[str, float], edge: float) -> None:
    """Vertebral bodies (the S1 body carries the fused sacrum) and the discs between them."""
    k, j = p.indices(s)
    vc, vh = p.vert_center[k], p.vert_height[k]
    dc, dh = p.disc_center[j], p.disc_height[j]
    # Below the S1 centre the fused sacrum curves backwards and tapers.
    below = np.clip(p.vert_center[0] - s, 0.0, None) * (k == 0)
    taper = np.clip(1.0 - below / 110.0, 0.2, 1.0)
    shift = 0.45 * below
    depth = p.vert_depth[k] * taper
    width = p.vert_width[k] * taper
    top = vc + vh / 2
    bottom = np.where(k == 0, vc - 105.0, vc - vh / 2)
    d_s = np.minimum(top - s, s - bottom)
    d_xy = _ellipse_d(x, v + depth / 2 - shift, width / 2, depth / 2, power=4)
    d_vb = np.minimum(d_s, d_xy)
    _paint(img, _ramp(d_vb, edge), tissue["cortex"])
    _paint(img, _ramp(d_vb - 1.6, edge), tissue["marrow"])
    # Sacral segments keep faint dark remnants of their discs.
    remnant = np.minimum(1.2 - np.abs(np.mod(below, 22.0) - 11.0 - 5.0), d_vb - 2.0)
    _paint(img, _ramp(np.where(below > 20.0, remnant, -10.0), edge) * 0.6, tissue["annulus"])

    # Discs: annulus, then a nucleus whose T2 signal falls with degeneration; bulge backwards.
    bulge = p.disc_bulge[j]
    vd, vw = p.vert_depth[j], p.vert_width[j]
    d_disc = np.minimum(dh / 2 + 0.8 - np.abs(s - dc),
                        _ellipse_d(x, v + vd / 2 - bulge / 2, vw / 2 + 1.0, (vd + bulge) / 2, power=4))
    _paint(img, _ramp(d_disc, edge), tissue["annulus"])
    d_nuc = np.minimum(dh * 0.32 - np.abs(s - dc), _ellipse_d(x, v + vd * 0.55, vw * 0.3, vd * 0.3))
    _paint(img, _ramp(d_nuc, 2.0) * p.disc_hydration[j], tissue["nucleus"])


def _paint_posterior(p: _Params, x: np.ndarray, v: np.ndarray, s: np.ndarray, img: np.ndarray,
                     tissue: dict[str, float], edge: float) -> None:
    """Posterior elements, neural foramina, the canal with its contents and the lateral recesses."""
    ap0, wc0 = p.ap0, p.wc0
    ax = np.abs(x)
    side = (x < 0).astype(np.int64)  # 0 = left (+x), 1 = right
    k, j = p.indices(s)
    vc, vh = p.vert_center[k], p.vert_height[k]
    dc = p.disc_center[j]
    below = np.clip(p.vert_center[0] - s, 0.0, None)
    sacral_shift = 0.45 * below
    vs = v - sacral_shift  # the sacral canal follows the sacrum backwards
    canal_mid = 0.5 + ap0 / 2

    # Epidural fat around the sac.
    _paint(img, _ramp(_ellipse_d(x, vs - canal_mid, wc0 / 2 + 2.5, ap0 / 2 + 2.0), edge), tissue["fat"])

    # Pedicles (upper half of each vertebra), laminar arch behind the canal, spinous process.
    lumbar = k > 0
    d_ped = np.minimum(_ellipse_d(ax - p.pedicle_x, v - 4.0, 5.0, 8.0),
                       np.minimum(s - (vc - 0.05 * vh), vc + 0.45 * vh - s))
    in_arch_s = np.minimum(s - (vc - 0.55 * vh), vc + 0.25 * vh - s)
    outer = _ellipse_d(x, vs - canal_mid, wc0 / 2 + 9.0, ap0 / 2 + 8.5)
    inner = _ellipse_d(x, vs - canal_mid, wc0 / 2 + 2.5, ap0 / 2 + 2.2)
    d_lam = np.minimum(np.minimum(outer, -inner), np.minimum(vs - (canal_mid + 1.0), in_arch_s))
    sp_v = vs - (ap0 + 8.0)
    sp_s = s + 0.25 * sp_v - (vc - 0.1 * vh)
    d_spin = np.minimum(np.minimum(3.5 - ax, np.minimum(sp_v + 3.0, 36.0 - sp_v)), 8.5 - np.abs(sp_s))
    d_post = np.where(lumbar, np.maximum(np.maximum(d_ped, d_lam), d_spin), np.maximum(d_lam, -10.0))
    _paint(img, _ramp(d_post, edge), tissue["cortex"])
    _paint(img, _ramp(d_post - 1.3, edge), tissue["marrow"])

    # Neural foramina at each disc: dark bed, fat ellipse scaled by its opening, exiting root in the top.
    o_n = p.nfn[j, side]
    fv, fs = 4.5, dc + 0.25 * p.vert_height[np.minimum(j + 1, len(VERTEBRA_NAMES) - 1)]
    lateral = np.minimum(ax - (p.pedicle_x - 6.0), p.pedicle_x + 12.0 - ax)
    bed = np.minimum(lateral, np.minimum(_ellipse_d(v - fv, s - fs, 6.5, 12.5), 1.0))
    _paint(img, _ramp(bed, edge), tissue["dark"])
    a_v, a_s = 4.8 * o_n, 10.5 * (0.45 + 0.55 * o_n)
    fat = np.minimum(lateral, _ellipse_d(v - (fv - 4.8 + a_v), s - fs, a_v, a_s))
    _paint(img, _ramp(fat, edge), tissue["fat"])
    root = np.minimum(lateral, _ellipse_d(v - (fv - 0.5), s - (fs + 0.35 * a_s), 2.3, 2.3))
    _paint(img, _ramp(root, edge), tissue["nerve"])

    # Facet joints behind the foramen: bony mass with a thin fluid line.
    d_facet = np.minimum(np.minimum(ax - (p.pedicle_x - 5.5), p.pedicle_x + 8.5 - ax),
                         np.minimum(_ellipse_d(v - (ap0 + 4.0), s - dc, 7.0, 11.0), 20.0))
    d_facet = np.where(j < len(DISC_NAMES), d_facet, -10.0)
    _paint(img, _ramp(d_facet, edge), tissue["cortex"])
    _paint(img, _ramp(d_facet - 1.3, edge), tissue["marrow"])
    _paint(img, _ramp(np.minimum(d_facet - 1.0, 0.6 - np.abs(v - (ap0 + 4.0))), edge) * 0.8, tissue["csf"])

    # Canal: the normal sac envelope is epidural fat; stenosis fills it with disc and ligament (dark), the
    # CSF ellipse shrinks, and the lateral recess on a stenotic side closes and pushes the wall in.
    r = p.scs[j] * np.exp(-0.5 * ((s - dc) / 5.5) ** 2)
    w_ss = np.exp(-0.5 * ((s - dc) / 6.5) ** 2)
    o_s = p.ss[j, side]
    sacral = np.clip((p.disc_center[0] - 15.0 - s) / 60.0, 0.0, 0.7)
    v_ant = 0.5 + p.disc_bulge[j] * np.exp(-0.5 * ((s - dc) / 4.0) ** 2) + 0.35 * ap0 * r
    ap = ap0 * (1.0 - r) * (1.0 - sacral)
    half_w = wc0 / 2 * (1.0 - 0.25 * r) * (1.0 - 0.35 * (1.0 - o_s) * w_ss) * (1.0 - sacral)
    v_mid = v_ant + ap / 2
    envelope = _ellipse_d(x, vs - canal_mid, wc0 / 2 + 1.0, ap0 / 2 + 1.0)
    _paint(img, _ramp(envelope, edge) * np.clip(3.0 * r + 1.2 * (1.0 - o_s) * w_ss, 0.0, 1.0),
           tissue["ligament"])
    d_csf = _ellipse_d(x, vs - v_mid, half_w, ap / 2)
    _paint(img, _ramp(d_csf, edge), tissue["csf"])

    # Lateral recesses (subarticular zone): CSF/fat lobe at the disc, closing with subarticular stenosis.
    rx = p.recess_x
    d_rec = np.minimum(_ellipse_d(ax - rx, v - _RECESS_V, 4.2 * o_s, 3.4 * o_s + 0.3), 8.0 - np.abs(s - dc))
    _paint(img, _ramp(d_rec, edge), 0.5 * (tissue["csf"] + tissue["fat"]))
    d_root = np.minimum(_ellipse_d(ax - rx, v - _RECESS_V, 1.6, 1.6), 9.0 - np.abs(s - dc))
    _paint(img, _ramp(np.minimum(d_root, d_rec + 1.0), edge), tissue["nerve"])

    # Cord above the conus, cauda equina roots below (bunching together where the sac narrows).
    idx = np.nonzero(d_csf > -1.0)[0]
    if len(idx):
        xs, vv, ss = x[idx], vs[idx] - v_mid[idx], s[idx]
        hw, hap = half_w[idx], ap[idx] / 2
        sub = img[idx]
        taper_c = np.clip((ss - p.conus_s) / 15.0, 0.0, 1.0)
        d_cord = _ellipse_d(xs, vv + 0.15 * hap, 4.5 * taper_c + 0.5, 3.8 * taper_c + 0.5)
        _paint(sub, _ramp(np.where(ss > p.conus_s - 5.0, d_cord, -10.0), edge), tissue["nerve"])
        for nx, nv in p.roots:
            d = 1.1 - np.hypot(xs - nx * hw, vv - nv * hap)
            _paint(sub, _ramp(np.where(ss < p.conus_s, d, -10.0), edge) * 0.85, tissue["nerve"])
        img[idx] = sub
