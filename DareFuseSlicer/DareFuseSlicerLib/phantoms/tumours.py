"""Tumours in template space: irregular shapes, BraTS labels, soft tissue fractions, mass-effect centres.

Each lesion lives in its own box of the template grid (cheap), with hard labels (1 NETC, 2 SNFH, 3 ET)
and soft fractions (labels blurred by ~0.6 mm) used to paint intensities with partial volume.
Shapes are deformed ellipsoids: a normalised ellipsoidal radius plus smooth noise, thresholded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .anatomy import candidates, outward_normal
from .contrasts import OEDEMA_TRANSPARENCY, lesion_values

NETC, SNFH, ET = 1, 2, 3
# Later-painted lesions never downgrade a voxel: ET and NETC win over SNFH.
_RANK = np.array([0, 2, 1, 3], np.uint8)  # label -> priority


@dataclass
class Lesion:
    box: tuple                 # slices into the template array (z, y, x)
    label: np.ndarray          # uint8 in the box
    tissue: dict               # label value -> {contrast: value}
    texture: np.ndarray        # float32 in the box, ~N(0, 1), smooth: heterogeneity inside the lesion
    centre: np.ndarray         # array index (z, y, x) of the mass-effect centre
    mass_k: float = 0.0        # 0: no mass effect; fraction by which the centre is inflated
    mass_sigma: float = 1.0    # mm
    counts: bool = True        # a tumour core (lesion_count)
    transparency: dict = field(default_factory=dict)  # label -> share of anatomy showing through


@dataclass
class TumourPlan:
    lesions: list
    subtype: str


def _box(centre, half, shape):
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _rotation(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a*a+b*b-c*c-d*d, 2*(b*c-a*d), 2*(b*d+a*c)],
                     [2*(b*c+a*d), a*a-b*b+c*c-d*d, 2*(c*d-a*b)],
                     [2*(b*d-a*c), 2*(c*d+a*b), a*a-b*b-c*c+d*d]])


def _ellipsoid_radius(box, centre, radii, rotation) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) over a box."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) - c for s, c in zip(box, centre)],
                        indexing="ij")
    offsets = np.stack(grids, axis=-1) @ rotation.astype(np.float32)
    return np.sqrt(((offsets / np.asarray(radii, np.float32)) ** 2).sum(-1))


def _noise(rng, shape, sigma) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _pick(rng, pool: np.ndarray, ok=None, tries=400):
    for _ in range(tries):
        point = pool[rng.integers(len(pool))].astype(float)
        if ok is None or ok(point):
            return point
    raise RuntimeError("no valid tumour position found")  # a bug in the sampling ranges, not a user error


def _oedema(rng, anatomy, box, centre, radius, core, wm_bias, amplitude, rim_mm) -> np.ndarray:
    """Oedema spreading along white matter (finger-like), sparing CSF, always surrounding the core."""
    s = _ellipsoid_radius(box, centre, [radius] * 3, np.eye(3))
    s = s + amplitude * _noise(rng, s.shape, max(radius / 4.0, 1.5)) - wm_bias * (anatomy.wm[box] - 0.5)
    inside = (anatomy.mask[box] > 0) & (anatomy.csf[box] < 0.5)
    rim = ndi.distance_transform_edt(~core) <= rim_mm
    return ((s < 1.0) & inside) | (rim & (anatomy.mask[box] > 0))


def _glioma(rng, anatomy) -> TumourPlan:
    high_grade = rng.random() < 0.7
    r_core = rng.uniform(10.0, 19.0)
    r_oed = r_core * (rng.uniform(1.5, 2.2) if high_grade else rng.uniform(1.15, 1.5))
    cand = candidates("deep_wm")
    centre = _pick(rng, cand, lambda p: anatomy.depth[tuple(p.astype(int))] > r_core + 8)
    box = _box(centre, r_oed * 1.5 + 6, anatomy.shape)
    radii = r_core * rng.uniform(0.75, 1.25, 3)
    s = _ellipsoid_radius(box, centre, radii, _rotation(rng)) + 0.25 * _noise(rng, _shape(box), r_core / 4)
    core = (s < 1.0) & (anatomy.depth[box] > 3) & (anatomy.csf[box] < 0.7)
    core = _largest_component(core)
    label = np.zeros(core.shape, np.uint8)
    label[_oedema(rng, anatomy, box, centre, r_oed, core, 0.4, 0.35, rng.uniform(1.5, 3.0))] = SNFH
    if high_grade:
        depth_in_core = ndi.distance_transform_edt(core)
        rim = rng.uniform(2.0, 4.5)
        necrosis = (depth_in_core > rim + 1.2 * _noise(rng, core.shape, 2.0)) & (depth_in_core > 1.5)
        label[core] = ET
        label[necrosis & core] = NETC
        tissue = {NETC: lesion_values("necrosis", rng), ET: lesion_values("glioma_et", rng)}
    else:
        label[core] = NETC
        tissue = {NETC: lesion_values("low_grade_core", rng)}
    tissue[SNFH] = lesion_values("oedema", rng)
    lesion = Lesion(box, label, tissue, _noise(rng, core.shape, 1.5), centre,
                    mass_k=rng.uniform(0.2, 0.35), mass_sigma=r_core * 1.2,
                    transparency={SNFH: OEDEMA_TRANSPARENCY})
    return TumourPlan([lesion], "high_grade" if high_grade else "low_grade")


def _meningioma(rng, anatomy) -> TumourPlan:
    radius = rng.uniform(11.0, 21.0)
    flat = rng.uniform(0.6, 0.8)  # short axis along the surface normal: broad dural base
    cand = candidates("surface")
    surface = _pick(rng, cand)
    normal = outward_normal(surface)
    centre = surface + normal * (0.45 * flat * radius)
    box = _box(centre, radius * 1.6 + 6, anatomy.shape)
    # Rotation whose third column is the normal: the flat axis points into the brain.
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    rotation = np.stack([u, np.cross(normal, u), normal], axis=1)
    radii = [radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.85, 1.15), radius * flat]
    s = _ellipsoid_radius(box, centre, radii, rotation) + 0.1 * _noise(rng, _shape(box), radius / 3)
    tumour = _largest_component(s < 1.0)
    label = np.zeros(tumour.shape, np.uint8)
    oedema = _oedema(rng, anatomy, box, centre, radius * rng.uniform(1.05, 1.25), tumour, 0.5, 0.3,
                     rng.uniform(1.0, 2.5))
    label[oedema & (anatomy.mask[box] > 0)] = SNFH
    label[tumour] = ET
    tissue = {ET: lesion_values("meningioma_et", rng), SNFH: lesion_values("oedema", rng)}
    if rng.random() < 0.4:  # a small cystic / calcified focus: little necrosis
        depth_in = ndi.distance_transform_edt(tumour)
        focus = depth_in > 0.8 * depth_in.max()
        label[focus] = NETC
        tissue[NETC] = lesion_values("meningioma_core", rng)
    lesion = Lesion(box, label, tissue, _noise(rng, tumour.shape, 2.0), centre,
                    mass_k=rng.uniform(0.25, 0.4), mass_sigma=radius, transparency={SNFH: OEDEMA_TRANSPARENCY})
    return TumourPlan([lesion], "meningioma")


def _metastasis(rng, anatomy) -> TumourPlan:
    count = int(rng.integers(1, 5))
    cand = candidates("junction")
    lesions, placed = [], []
    for _ in range(count):
        radius = rng.uniform(4.0, 11.0)

        def ok(p, radius=radius):
            if anatomy.depth[tuple(p.astype(int))] < radius + 4:
                return False
            return all(np.linalg.norm(p - q) > radius + r + 14 for q, r in placed)

        centre = _pick(rng, cand, ok)
        placed.append((centre, radius))
        r_oed = radius * rng.uniform(2.2, 3.4)  # disproportionate oedema
        box = _box(centre, r_oed * 1.5 + 5, anatomy.shape)
        s = _ellipsoid_radius(box, centre, radius * rng.uniform(0.85, 1.15, 3), _rotation(rng))
        s = s + 0.08 * _noise(rng, _shape(box), max(radius / 3, 1.5))
        core = _largest_component((s < 1.0) & (anatomy.mask[box] > 0))
        label = np.zeros(core.shape, np.uint8)
        label[_oedema(rng, anatomy, box, centre, r_oed, core, 0.7, 0.4, rng.uniform(1.5, 3.0))] = SNFH
        label[core] = ET
        tissue = {ET: lesion_values("metastasis_et", rng), SNFH: lesion_values("oedema", rng)}
        if radius > 6.5:  # ring-enhancing when larger, solid when small
            necrosis = ndi.distance_transform_edt(core) > rng.uniform(1.8, 3.0)
            label[necrosis & core] = NETC
            tissue[NETC] = lesion_values("necrosis", rng)
        lesions.append(Lesion(box, label, tissue, _noise(rng, core.shape, 1.2), centre,
                              mass_k=rng.uniform(0.1, 0.25) if radius > 6.5 else 0.0, mass_sigma=radius * 1.2,
                              transparency={SNFH: OEDEMA_TRANSPARENCY}))
    return TumourPlan(lesions, "metastasis")


def _shape(box):
    return tuple(s.stop - s.start for s in box)


PLANNERS = {"glioma": _glioma, "meningioma": _meningioma, "metastasis": _metastasis}


def plan_tumours(rng, anatomy, tumour_class: str) -> TumourPlan:
    if tumour_class == "no_tumour":
        return TumourPlan([], "no_tumour")
    return PLANNERS[tumour_class](rng, anatomy)


def paint(images: dict, label: np.ndarray, plan: TumourPlan) -> None:
    """Paint the lesions into template-space images (in place) and into the template label.

    Partial volume: each label's share is its indicator blurred by 0.6 mm, so edges are soft like a
    real acquisition, while the label stays hard.
    """
    for lesion in plan.lesions:
        box = lesion.box
        rank = np.maximum(_RANK[label[box]], _RANK[lesion.label])
        label[box] = np.argsort(_RANK)[rank]
        present = [v for v in (NETC, SNFH, ET) if (lesion.label == v).any()]
        shares = {v: ndi.gaussian_filter((lesion.label == v).astype(np.float32), 0.6) for v in present}
        total = sum(shares.values()) if shares else 0.0
        modulation = 1.0 + 0.08 * lesion.texture
        for contrast, img in images.items():
            healthy = img[box]
            painted = healthy * (1.0 - total)
            for v in present:
                value = np.float32(lesion.tissue[v][contrast]) * modulation
                seen = lesion.transparency.get(v, 0.0)
                if seen:
                    value = (1.0 - seen) * value + seen * healthy
                painted += shares[v] * value
            img[box] = painted.astype(np.float32)
