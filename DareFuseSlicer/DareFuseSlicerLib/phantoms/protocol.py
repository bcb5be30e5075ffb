"""A clinical scan protocol: each contrast's grid (field of view, spacing, orientation) and the head's
rigid motion between sequences.

T1 and T1ce are 3-D acquisitions at about 1 mm (sagittal or axial slabs); T2 and FLAIR are 2-D stacks
with 0.4-1 mm pixels and 3-6 mm slices, usually axial, sometimes coronal or sagittal, often tilted
(oblique, up to 15 degrees). Grids are stored with the orientations scanners write: DICOM-like (LPS
rows and columns) or flipped to RAS, slices ordered up or down.

Motion convention: the reference (T1) fixes the patient's position. During another sequence the head
sits at M(p) = R (p - c) + c + t (c: brain centre, |angle(R)| <= 4 degrees, |t| <= 4 mm), so a point x
of that contrast's image shows the head point M^-1(x) of the reference: `to_reference` is M^-1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import CONTRASTS
from .grids import Grid

# Base orientations: direction columns (row, column, slice normal) in LPS, right-handed.
PLANES = {
    "axial": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
}
# Storage variants (column sign flips with determinant +1): DICOM-like, RAS-like, slices reversed.
_FLIPS = (np.diag([1.0, 1, 1]), np.diag([-1.0, -1, 1]), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]))
# Half-extents (mm, LPS axes) of the MNI152 brain, which the slabs must cover.
BRAIN_HALF = np.array([73.0, 90.0, 77.0])
MAX_ROTATION_DEG = 4.0
MAX_SHIFT_MM = 4.0
REFERENCE = CONTRASTS[0]  # T1: the contrast every other is mapped to (the project's reference rule)


@dataclass
class Motion:
    rotation: np.ndarray     # 3x3, head pose during this sequence relative to the reference
    translation: np.ndarray  # mm: displacement of the brain centre
    centre: np.ndarray       # LPS mm: the brain centre in the reference's space

    @property
    def angle_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip((np.trace(self.rotation) - 1) / 2, -1, 1))))

    @property
    def shift_mm(self) -> float:
        return float(np.linalg.norm(self.translation))

    def to_reference(self) -> np.ndarray:
        """3x4 [A | b]: x (this contrast's LPS mm) -> A x + b (the reference's LPS mm); M^-1."""
        a = self.rotation.T
        b = self.centre - a @ (self.centre + self.translation)
        return np.concatenate([a, b[:, None]], axis=1)


@dataclass
class Acquisition:
    contrast: str
    dims: str          # "3d" or "2d"
    plane: str         # axial, coronal or sagittal (before the tilt)
    tilt_deg: float    # obliquity
    grid: Grid
    slice_mm: float    # slice thickness: the spacing along the slice normal, and the 2-D profile's FWHM
    motion: Motion


def rotation(axis, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation about a unit axis."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1 - np.cos(angle_rad)) * kx @ kx


def _unit(rng) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def draw_motion(rng, centre: np.ndarray, still: bool) -> Motion:
    if still:
        return Motion(np.eye(3), np.zeros(3), centre.copy())
    angle = np.radians(rng.uniform(0.0, MAX_ROTATION_DEG))
    return Motion(rotation(_unit(rng), angle), _unit(rng) * rng.uniform(0.0, MAX_SHIFT_MM), centre.copy())


def _direction(rng, plane: str, tilt_deg: float) -> np.ndarray:
    base = PLANES[plane] @ _FLIPS[int(rng.integers(len(_FLIPS)))]
    axis = base[:, int(rng.integers(2))]  # tilt about an in-plane axis
    return rotation(axis, np.radians(tilt_deg)) @ base


def _grid(direction: np.ndarray, size, spacing, centre: np.ndarray) -> Grid:
    size = tuple(int(n) for n in size)
    spacing = tuple(float(s) for s in spacing)
    origin = centre - direction @ ((np.array(size) - 1) * np.array(spacing) / 2)
    return Grid(size, spacing, tuple(float(v) for v in direction.ravel()), tuple(float(v) for v in origin))


def _volume(rng, contrast: str, centre: np.ndarray, motion: Motion) -> Acquisition:
    """3-D T1-weighted slab at about 1 mm (sagittal MPRAGE-like or axial)."""
    plane = "sagittal" if rng.random() < 0.6 else "axial"
    tilt = rng.uniform(-3.0, 3.0)
    pixel, thickness = rng.uniform(0.9, 1.05), rng.uniform(0.9, 1.2)
    fov = rng.uniform(240.0, 256.0, 2)
    slab = rng.uniform(165.0, 192.0) if plane == "sagittal" else rng.uniform(160.0, 185.0)
    size = (np.round(fov[0] / pixel), np.round(fov[1] / pixel), np.round(slab / thickness))
    offset = np.array([rng.uniform(-4, 4), rng.uniform(-8, 4), rng.uniform(-16, -6) if plane == "sagittal" else rng.uniform(-6, 4)])
    grid = _grid(_direction(rng, plane, tilt), size, (pixel, pixel, thickness), centre + offset)
    return Acquisition(contrast, "3d", plane, float(tilt), grid, float(thickness), motion)


def _stack(rng, contrast: str, centre: np.ndarray, scale: float, motion: Motion, slice_mm: float = None) -> Acquisition:
    """2-D multi-slice stack: thick slices, fine pixels, often oblique; slice_mm: a site's fixed thickness
    (the draw is still taken, so the rest of the protocol stays the plain case's)."""
    u = rng.random()
    plane = "axial" if u < 0.7 else ("coronal" if u < 0.85 else "sagittal")
    tilt = rng.choice([-1, 1]) * rng.uniform(3.0, 15.0) if rng.random() < 0.5 else rng.uniform(-2.0, 2.0)
    pixel = rng.uniform(0.40, 0.50) if rng.random() < 0.5 else rng.uniform(0.70, 1.0)
    thickness = rng.uniform(3.0, 6.0)
    if slice_mm is not None:
        thickness = float(slice_mm)
    direction = _direction(rng, plane, tilt)
    normal = direction[:, 2]
    cover = 2 * float(np.abs(normal) @ (BRAIN_HALF * scale)) + rng.uniform(5.0, 25.0)
    fov = rng.uniform(215.0, 250.0, 2)
    size = (np.round(fov[0] / pixel), np.round(fov[1] / pixel), np.ceil(cover / thickness))
    offset = np.array([rng.uniform(-4, 4), rng.uniform(-6, 6), rng.uniform(-2, 8)])
    grid = _grid(direction, size, (pixel, pixel, thickness), centre + offset)
    return Acquisition(contrast, "2d", plane, float(tilt), grid, float(thickness), motion)


def draw_protocol(rng, centre: np.ndarray, scale: float, stack_slice_mm: float = None) -> dict:
    """contrast -> Acquisition; centre: the brain centre (LPS mm), scale: the brain's size / MNI152's;
    stack_slice_mm: the 2-D stacks' slice thickness (a site's), else drawn (3-6 mm)."""
    out = {}
    for contrast in CONTRASTS:
        motion = draw_motion(rng, centre, still=contrast == REFERENCE)
        if contrast in ("t1", "t1ce"):
            out[contrast] = _volume(rng, contrast, centre, motion)
        else:
            out[contrast] = _stack(rng, contrast, centre, scale, motion, stack_slice_mm)
    return out
