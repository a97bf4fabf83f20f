"""Rasterise a cervical ``PhantomSpec`` into HU, vertebra labels and fracture masks (slices caudal to cranial).

Soft tissue, airway, lungs and the spinal canal are painted slice by slice along the spine's centre line;
bone comes from the implicit shapes of ``cervical_shapes``. A vertebra is evaluated in its own rigid frame
inside a crop of the grid, which keeps a 256-pixel study to about a second of numpy work.

Fractures: voxels within half the gap of the fracture plane lose their bone, and the fragment on the plane's
positive side is displaced (the vertebra is re-evaluated at shifted coordinates). The fracture mask (gap
voxels that were bone) gives the per-slice bounding boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinelab.data.synthetic.cervical_anatomy import PhantomSpec, VertebraSpec
from spinelab.data.synthetic.cervical_shapes import cylinder, ellipse, ellipsoid, slab, vertebra_distance

__all__ = ["PhantomResult", "render_phantom"]


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
    dist = vertebra_distance(u, v, s, vert)
    cleft = None
    for frac in vert.fractures:
        p, n = np.array(frac.point, dtype=np.float32), np.array(frac.normal, dtype=np.float32)
        sd = (u - p[0]) * n[0] + (v - p[1]) * n[1] + (s - p[2]) * n[2]
        radial = np.sqrt(np.maximum((u - p[0]) ** 2 + (v - p[1]) ** 2 + (s - p[2]) ** 2 - sd**2, 0.0))
        near = radial < frac.radius
        moved = near & (sd > 0)
        t = frac.shift
        dist_moved = vertebra_distance(u - t[0], v - t[1], s - t[2], vert)
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
        inside = cylinder(u, v, s, 0.0, 0.0, a, b, -d["h"] / 2 - d["disc"] - 1.0, -d["h"] / 2 + 1.0) > 0
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
        condyles = np.maximum(cylinder(U, V, Z3, 14.0, 1.0, 7.0, 8.5, zc + c1.dims["h"] / 2 + 1.5, zb + 6.0),
                              cylinder(U, V, Z3, -14.0, 1.0, 7.0, 8.5, zc + c1.dims["h"] / 2 + 1.5, zb + 6.0))
        mastoids = np.maximum(ellipsoid(U, V, S, (48.0, 15.0, 8.0), (8.0, 10.0, 14.0)),
                              ellipsoid(U, V, S, (-48.0, 15.0, 8.0), (8.0, 10.0, 14.0)))
        part = np.maximum(np.maximum(shell, clivus), np.maximum(condyles, mastoids))
        np.maximum(bone[sz], part, out=bone[sz])
    # Mandible: a U around the front of the neck at C2-C3 with rami rising towards the skull base.
    got = block(z_c2 - 17.0, zb + 31.0)
    if got is not None:
        sz, Z3, V, U = got
        mv = V + 8.0
        u_shape = np.minimum(np.minimum(ellipse(U, mv, 0.0, 0.0, 50.0, 50.0),
                                        -ellipse(U, mv, 0.0, 0.0, 43.0, 43.0)),
                             np.minimum(-mv, slab(Z3, z_c2 - 16.0, z_c2 + 4.0)))
        rami = np.maximum(cylinder(U, V, Z3, 45.0, -12.0, 4.0, 12.0, z_c2 - 10.0, zb + 30.0),
                          cylinder(U, V, Z3, -45.0, -12.0, 4.0, 12.0, z_c2 - 10.0, zb + 30.0))
        np.maximum(bone[sz], np.maximum(u_shape, rami), out=bone[sz])
    # Hyoid: a small U in front of the C3 inferior endplate.
    h3 = c3.dims["h"]
    got = block(z_c3 - h3 / 2 - 4.0, z_c3 - h3 / 2 + 1.0)
    if got is not None:
        sz, Z3, V, U = got
        hv = V + 28.0
        hyoid = np.minimum(np.minimum(ellipse(U, hv, 0.0, 0.0, 19.0, 12.0), -ellipse(U, hv, 0.0, 0.0, 15.5, 9.0)),
                           np.minimum(-hv + 2.0, slab(Z3, z_c3 - h3 / 2 - 4.0, z_c3 - h3 / 2 + 1.0)))
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
