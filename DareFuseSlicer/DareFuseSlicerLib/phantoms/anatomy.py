"""The shared anatomy: MNI152 2009a T1, tissue maps and fixed enhancing structures, in template space.

Everything here is computed once per process (cached) and never changed by a case. Arrays are in
SimpleITK order (z, y, x) on the template's 1 mm grid; physical points are LPS millimetres, as in ITK.
Cite: Fonov et al., NeuroImage 2011 (MNI ICBM152 2009a nonlinear symmetric), shipped by nilearn.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

# Fixed seed of the anatomy-level random structures (vessels): part of the template, not of a case.
_VESSEL_SEED = 152
# Choroid plexus of the lateral-ventricle atria, MNI RAS millimetres (both hemispheres).
_CHOROID_RAS = ((-27.0, -42.0, 14.0), (27.0, -42.0, 14.0))


@dataclass(frozen=True)
class Anatomy:
    t1: np.ndarray          # template T1, 0..1 (CSF ~0.28, GM ~0.65, WM ~0.87)
    gm: np.ndarray          # grey-matter fraction 0..1
    wm: np.ndarray          # white-matter fraction 0..1
    csf: np.ndarray         # CSF fraction: brain mask minus GM and WM
    mask: np.ndarray        # brain mask, float32 0/1
    texture: np.ndarray     # T1 minus its tissue-fraction fit: the template's real fine structure
    enhancement: np.ndarray  # 0..1 normally enhancing structures on T1ce (vessels, dura, falx, choroid)
    depth: np.ndarray       # mm from the outer brain surface (0 outside)
    reference: sitk.Image   # 1-voxel-per-mm geometry of the template (LPS)
    centre: np.ndarray      # centre of the brain's bounding box, LPS mm

    @property
    def shape(self):
        return self.t1.shape

    def index_to_physical(self, zyx: np.ndarray) -> np.ndarray:
        """(N, 3) array indices (z, y, x) -> (N, 3) LPS points."""
        return _index_to_lps(self.reference, zyx)

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points -> (N, 3) continuous array indices (z, y, x)."""
        ref = self.reference
        direction = np.array(ref.GetDirection()).reshape(3, 3)
        ijk = (np.asarray(points, dtype=float) - np.array(ref.GetOrigin())) @ direction
        return (ijk / np.array(ref.GetSpacing()))[..., ::-1]


def _as_zyx(img) -> np.ndarray:
    # nibabel arrays are (x, y, z); SimpleITK arrays are (z, y, x).
    return np.ascontiguousarray(np.asarray(img.get_fdata(dtype=np.float32)).transpose(2, 1, 0))


def _reference_from_affine(affine: np.ndarray, shape_zyx) -> sitk.Image:
    # NIfTI affines are RAS; ITK physical space is LPS: flip the first two rows.
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    ref = sitk.Image([int(s) for s in shape_zyx[::-1]], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
    ref.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return ref


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def _vessels(rng, shape, depth, csf) -> np.ndarray:
    """Thin tubes where two smooth random fields both cross zero (curves, not sheets).

    Built at 2 mm and upsampled: cheap, and vessels of 1-2 mm calibre are what survives on T1ce.
    """
    coarse = tuple(int(np.ceil(s / 2)) for s in shape)
    a = _smooth_noise(rng, coarse, 3.0)
    b = _smooth_noise(rng, coarse, 3.0)
    tubes = np.exp(-(a * a + b * b) / (2 * 0.12 ** 2)).astype(np.float32)
    tubes = ndi.zoom(tubes, [s / c for s, c in zip(shape, coarse)], order=1)[: shape[0], : shape[1], : shape[2]]
    # Cortical vessels run in the sulcal CSF near the surface; keep few deep ones.
    where = np.clip(csf * 2.0, 0, 1) * np.where(depth < 20, 1.0, 0.15)
    return (tubes * where).astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    from nilearn import datasets  # local import: nilearn is slow to import and only needed here

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = _as_zyx(t1_img)
    gm = _as_zyx(datasets.load_mni152_gm_template(resolution=1))
    wm = _as_zyx(datasets.load_mni152_wm_template(resolution=1))
    mask = (_as_zyx(datasets.load_mni152_brain_mask(resolution=1)) > 0.5).astype(np.float32)
    gm *= mask
    wm *= mask
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    reference = _reference_from_affine(t1_img.affine, t1.shape)

    # Least-squares T1 from tissue fractions; the residual is the template's texture (nuclei, vessels,
    # fine cortex) that the other contrasts inherit with their own sign.
    inside = mask > 0
    design = np.stack([gm[inside], wm[inside], csf[inside]], axis=1)
    coef, *_ = np.linalg.lstsq(design, t1[inside], rcond=None)
    fit = gm * coef[0] + wm * coef[1] + csf * coef[2]
    texture = np.clip(t1 - fit, -0.15, 0.15) * mask

    filled = ndi.binary_fill_holes(mask > 0)
    depth = ndi.distance_transform_edt(filled).astype(np.float32)

    rng = np.random.default_rng(_VESSEL_SEED)
    vessels = _vessels(rng, t1.shape, depth, csf)
    dura = np.exp(-np.maximum(depth - 1.0, 0.0) / 1.0) * filled
    lps = _grid_physical(reference, t1.shape)
    ras_x = -lps[0]
    falx = (np.abs(ras_x) < 1.5) & (csf > 0.4) & (depth < 45)
    choroid = np.zeros(t1.shape, bool)
    for ras in _CHOROID_RAS:
        lps_c = np.array([-ras[0], -ras[1], ras[2]])
        dist2 = sum((lps[d] - lps_c[d]) ** 2 for d in range(3))
        choroid |= (dist2 < 8.0 ** 2) & (csf > 0.5)
    enhancement = np.clip(0.6 * vessels + 0.45 * dura + 0.5 * falx + 1.0 * choroid, 0, 1).astype(np.float32)

    where = np.argwhere(inside)
    centre = _index_to_lps(reference, ((where.min(axis=0) + where.max(axis=0)) / 2.0)[None])[0]
    return Anatomy(t1=t1, gm=gm, wm=wm, csf=csf.astype(np.float32), mask=mask, texture=texture.astype(np.float32),
                   enhancement=enhancement, depth=depth, reference=reference, centre=centre)


def _index_to_lps(reference: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    ijk = np.asarray(zyx, float)[..., ::-1] * np.array(reference.GetSpacing())
    return ijk @ direction.T + np.array(reference.GetOrigin())


def _grid_physical(reference: sitk.Image, shape) -> list:
    """LPS coordinates of every voxel as three broadcastable (z, y, x) arrays (direction is diagonal here)."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    if not np.allclose(direction, np.diag(np.diag(direction))):
        raise ValueError("template direction is expected to be diagonal")
    out = []
    for d, axis in zip(range(3), (2, 1, 0)):
        idx = np.arange(shape[axis], dtype=np.float32)
        coord = reference.GetOrigin()[d] + direction[d, d] * reference.GetSpacing()[d] * idx
        view = [1, 1, 1]
        view[axis] = -1
        out.append(coord.reshape(view).astype(np.float32))
    return out


@functools.lru_cache(maxsize=None)
def candidates(kind: str) -> np.ndarray:
    """Array indices (N, 3) where a tumour of one kind may be centred."""
    a = load_anatomy()
    supratentorial = np.arange(a.shape[0])[:, None, None] > 72 - 5  # RAS z > -5 mm (index 72 is z = 0)
    if kind == "deep_wm":      # gliomas: deep supratentorial white matter
        where = (a.wm > 0.85) & (a.depth > 18) & supratentorial
    elif kind == "junction":   # metastases: grey-white junction
        where = (a.gm > 0.3) & (a.gm < 0.7) & (a.wm > 0.3) & (a.wm < 0.7) & (a.depth > 8)
    elif kind == "surface":    # meningiomas: the convexity, above the skull base
        where = (a.depth >= 1) & (a.depth < 2) & (np.arange(a.shape[0])[:, None, None] > 72 + 5)
    else:
        raise ValueError(kind)
    return np.argwhere(where).astype(np.int32)


def outward_normal(point_zyx: np.ndarray) -> np.ndarray:
    """Unit vector (z, y, x) pointing out of the brain at a surface point (from the smoothed mask)."""
    a = load_anatomy()
    p = np.round(point_zyx).astype(int)
    lo = np.maximum(p - 8, 0)
    hi = np.minimum(p + 9, a.shape)
    local = ndi.gaussian_filter((a.depth[tuple(slice(l, h) for l, h in zip(lo, hi))] > 0).astype(np.float32), 3.0)
    grad = np.array([g[tuple(p - lo)] for g in np.gradient(local)])
    return -grad / (np.linalg.norm(grad) + 1e-8)
