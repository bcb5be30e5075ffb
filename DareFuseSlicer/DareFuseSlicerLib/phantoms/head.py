"""A procedural whole head around the MNI152 brain, in template space: extra-axial CSF and dura, skull
inner and outer tables with diploë, scalp (skin, fat, galea, temporalis), face with orbits, eyes and
sinuses, upper neck with the cervical spine (headparts.py holds the small structures).

Every structure is a soft-edged layer (alpha 0..1 over about 1 mm, so edges have partial volume) laid
over the ones before it. The cranial layers follow the distance from the brain computed once per process
(headspace.py), face and neck are analytic shapes joined by a smooth minimum, so a case needs no distance
transform of its own. Thicknesses are drawn per case and vary smoothly over the head.
Coordinates are MNI RAS millimetres (x right, y anterior, z superior).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from scipy import ndimage as ndi

from ..constants import CONTRASTS
from . import headparts
from .headspace import X_RANGE, Y_RANGE, Z_RANGE, MAX_CRANIAL_MM, Points, candidate_points, head_space
from .shapes import Layer, band, ellipsoid, inside, smooth_min
from .tissues import TEXTURE, Intensities

# Texture grid (mm) and the smoothing (grid units) of the tissue texture and of the deep fat planes.
_TEXTURE_MM = 3
_TEXTURE_SIGMA = 0.8
_BLOB_SIGMA = 2.0


@dataclass
class HeadPlan:
    csf: float          # extra-axial CSF (mm)
    inner: float        # inner table
    diploe: float
    outer: float        # outer table
    skin: float
    fat: float          # scalp fat
    galea: float        # galea and thin muscle under the scalp fat
    temporalis: float   # extra muscle over the temporal fossa
    face_fat: float     # subcutaneous fat of face and neck
    neck: tuple         # semi-axes (x, y) of the neck
    face: float         # size of the face shapes
    frontal_bone: float  # extra frontal bone thickness holding the frontal sinus
    curves: np.ndarray  # (3 fields, 3 axes, 320) smooth 1-D curves: csf, skull and scalp modulation
    parts: dict         # headparts.draw_parts: eyes, sinuses, spine


def _curves(rng) -> np.ndarray:
    n = 320  # longer than every head-grid axis
    raw = ndi.gaussian_filter1d(rng.standard_normal((3, 3, n)), 22.0, axis=-1)
    return (raw / raw.std(axis=-1, keepdims=True)).astype(np.float32)


def draw_head(rng) -> HeadPlan:
    return HeadPlan(
        csf=rng.uniform(1.5, 4.5), inner=rng.uniform(1.0, 2.0), diploe=rng.uniform(2.0, 5.0),
        outer=rng.uniform(1.0, 2.0), skin=rng.uniform(1.5, 2.5), fat=rng.uniform(2.0, 6.0),
        galea=rng.uniform(0.8, 1.6), temporalis=rng.uniform(4.0, 9.0), face_fat=rng.uniform(4.0, 10.0),
        neck=(rng.uniform(50.0, 62.0), rng.uniform(52.0, 62.0)), face=rng.uniform(0.93, 1.05),
        frontal_bone=rng.uniform(4.0, 10.0), curves=_curves(rng), parts=headparts.draw_parts(rng),
    )


def _field(plan: HeadPlan, k: int, pts: Points) -> np.ndarray:
    """Smooth modulation ~N(0, 1): a sum of three 1-D random curves along x, y and z."""
    c = plan.curves[k]
    xi = (pts.x - X_RANGE[0]).astype(np.intp)
    yi = (pts.y - Y_RANGE[0]).astype(np.intp)
    zi = (pts.z - Z_RANGE[0]).astype(np.intp)
    return (c[0][xi] + c[1][yi] + c[2][zi]) * np.float32(1 / np.sqrt(3))


def _thickness(plan: HeadPlan, pts: Points) -> dict:
    """Per-point layer boundaries, as distances from the brain (mm)."""
    x, y, z = pts.x, pts.y, pts.z
    temporal = (np.clip((np.abs(x) - 40) / 20, 0, 1) * np.exp(-((z - 5) / 30) ** 2) * np.exp(-((y + 10) / 40) ** 2))
    frontal = np.exp(-(x / 16) ** 2 - ((z - 2) / 13) ** 2) * (y > 30)
    csf = plan.csf * np.clip(1 + 0.25 * _field(plan, 0, pts), 0.5, 1.6)
    skull_mod = np.clip(1 + 0.25 * _field(plan, 1, pts), 0.5, 1.6)
    inner = plan.inner * (1 - 0.3 * temporal)
    outer = plan.outer * (1 - 0.3 * temporal)
    diploe = plan.diploe * skull_mod * (1 - 0.8 * temporal) + plan.frontal_bone * frontal
    scalp = (plan.skin + plan.fat * np.clip(1 + 0.3 * _field(plan, 2, pts), 0.4, 1.8) + plan.galea
             + plan.temporalis * temporal)
    bone_in = csf
    diploe_in = bone_in + inner
    diploe_out = diploe_in + diploe
    bone_out = diploe_out + outer
    surface = np.minimum(bone_out + scalp, np.float32(MAX_CRANIAL_MM - 3))
    return {"csf": csf, "diploe_in": diploe_in, "diploe_out": diploe_out, "bone_out": bone_out, "surface": surface}


def head_surface(plan: HeadPlan, pts: Points, th: dict) -> np.ndarray:
    """Signed distance to the skin: cranium (brain offset), face, nose and neck, smoothly joined."""
    x, y, z = pts.x, pts.y, pts.z
    f = plan.face
    s = pts.d_out - th["surface"]
    s = smooth_min(s, ellipsoid(x, y, z, (0, 38, -58), (62 * f, 48 * f, 50 * f)), 10.0)
    s = smooth_min(s, ellipsoid(x, y, z, (0, 82, -54), (10 * f, 20 * f, 22 * f)), 6.0)
    s = smooth_min(s, ellipsoid(x, y, z, (0, 20, -90), (54 * f, 52 * f, 30)), 10.0)  # jaw and chin
    rx, ry = plan.neck
    neck = (np.sqrt((x / rx) ** 2 + ((y + 20) / ry) ** 2) - 1) * np.float32(min(rx, ry))
    return smooth_min(s, np.maximum(neck, z + 55), 14.0)


def _soft_tissue_layers(plan: HeadPlan, pts: Points, s: np.ndarray, blobs: np.ndarray) -> List[Layer]:
    """Muscle everywhere inside the skin, deep fat planes in face and neck, subcutaneous fat, skin."""
    depth = -s
    below = np.clip((-20 - pts.z) / 25, 0, 1)
    fat_depth = plan.fat + (plan.face_fat - plan.fat) * below
    body = inside(s)
    return [
        Layer("muscle", None, body),
        Layer("fat", None, body * below * np.clip((blobs - 0.7) * 2.5, 0, 1)),
        Layer("fat", None, band(depth, plan.skin, plan.skin + fat_depth)),
        Layer("skin", None, body * inside(depth - plan.skin)),
    ]


def _cranial_layers(pts: Points, th: dict) -> List[Layer]:
    """Skull (tables and diploë), then dura and CSF, following the distance from the brain."""
    d = pts.d_out
    return [
        Layer("bone", None, band(d, th["csf"], th["bone_out"])),
        Layer("diploe", None, band(d, th["diploe_in"], th["diploe_out"])),
    ]


def _meningeal_layers(pts: Points, th: dict) -> List[Layer]:
    d = pts.d_out
    supratentorial = np.clip((pts.z + 70) / 5, 0, 1)  # no dura layer around the cord
    return [
        Layer("dura", None, band(d, th["csf"] - 0.8, th["csf"] + 0.3) * supratentorial),
        Layer("csf", None, inside(d - th["csf"])),
    ]


def _noise(rng, sigma: float, pts: Points) -> np.ndarray:
    """A smooth ~N(0, 1) field at the points, drawn on a coarse grid and interpolated."""
    shape = [int(np.ceil(n / _TEXTURE_MM)) + 2 for n in head_space().shape]
    coarse = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    coarse /= coarse.std() + 1e-8
    at = np.stack([(pts.z - Z_RANGE[0]), (pts.y - Y_RANGE[0]), (pts.x - X_RANGE[0])]) / np.float32(_TEXTURE_MM)
    return ndi.map_coordinates(coarse, at, order=1).astype(np.float32)


def compose(layers: List[Layer], n: int, intensities: Intensities, texture: np.ndarray) -> dict:
    """'Over' compositing of the layers, per contrast: value = value * (1 - alpha) + alpha * tissue."""
    out = {c: np.zeros(n, np.float32) for c in CONTRASTS}
    scale = np.float32(intensities.texture_scale)
    for tissue, idx, alpha in layers:
        amp = TEXTURE.get(tissue, 0.0) * scale
        modulation = None
        if amp:
            modulation = 1 + np.float32(amp) * (texture if idx is None else texture[idx])
        for c in CONTRASTS:
            v = np.float32(intensities.values[tissue][c])
            value = v if modulation is None else v * modulation
            if idx is None:
                out[c] += alpha * (value - out[c])
            else:
                out[c][idx] += alpha * (value - out[c][idx])
    return out


def build_head(plan: HeadPlan, rng, intensities: Intensities) -> dict:
    """The head outside the brain: contrast -> full head-grid float32 array (zero in air and brain)."""
    space = head_space()
    pts = candidate_points()
    th = _thickness(plan, pts)
    s = head_surface(plan, pts, th)
    keep = s < 1.0
    pts = pts.subset(keep)
    s = s[keep]
    th = {k: v[keep] for k, v in th.items()}
    texture = _noise(rng, _TEXTURE_SIGMA, pts)
    blobs = _noise(rng, _BLOB_SIGMA, pts)
    layers = _soft_tissue_layers(plan, pts, s, blobs)
    layers += headparts.neck_layers(plan.parts, pts, th)
    layers += _cranial_layers(pts, th)
    layers += headparts.face_layers(plan.parts, pts, th)
    layers += _meningeal_layers(pts, th)
    layers += headparts.cord_layers(plan.parts, pts)
    values = compose(layers, len(pts.flat), intensities, texture)
    out = {}
    for c in CONTRASTS:
        full = np.zeros(space.shape, np.float32)
        full.ravel()[pts.flat] = values[c]
        out[c] = full
    return out
