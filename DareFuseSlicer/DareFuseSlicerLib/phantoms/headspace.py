"""The head's template space: a 1 mm grid around the MNI152 template, large enough for scalp, face and
upper neck, with the distance from the brain that the skull layers follow. Computed once per process.

Coordinates are MNI RAS millimetres (x right, y anterior, z superior): head-model shapes are written in
them. Arrays are (z, y, x) like SimpleITK's; the grid's ITK geometry (LPS) is `reference`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .anatomy import load_anatomy

# RAS extent of the head grid (mm, inclusive); it contains the MNI152 grid (x -98..98, y -134..98, z -72..116).
X_RANGE = (-98, 98)
Y_RANGE = (-136, 121)
Z_RANGE = (-152, 116)
# Spinal cord below the template's cut brainstem: RAS centre line y(z), semi-axes (x, y) in mm.
CORD_TOP_Z = -64.0
CORD_SEMI_AXES = (6.5, 5.5)


def cord_centre_y(z):
    """Centre of the cervical cord (RAS y) at height z: it runs down and a little forwards (lordosis)."""
    return -46.0 + 0.12 * (-72.0 - np.asarray(z, dtype=np.float32))


@dataclass(frozen=True)
class HeadSpace:
    x: np.ndarray            # RAS x of each column, shaped (1, 1, nx); y: (1, ny, 1); z: (nz, 1, 1)
    y: np.ndarray
    z: np.ndarray
    mni: tuple               # slices of the head grid holding the MNI152 grid
    brain: np.ndarray        # bool, MNI152 brain mask on the head grid (the brain contrasts go there)
    d_out: np.ndarray        # float32 mm outside the neural hull (brain and cord canal); 0 inside
    reference: sitk.Image    # ITK geometry of the head grid (LPS, 1 mm)

    @property
    def shape(self):
        return self.d_out.shape

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points -> (N, 3) continuous array indices (z, y, x)."""
        p = np.asarray(points, dtype=float)
        ras = np.stack([-p[:, 0], -p[:, 1], p[:, 2]], axis=1)
        return (ras - np.array([X_RANGE[0], Y_RANGE[0], Z_RANGE[0]], float))[:, ::-1]


def _axis(lo: int, hi: int, view: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[view] = hi - lo + 1
    return np.arange(lo, hi + 1, dtype=np.float32).reshape(shape)


@functools.lru_cache(maxsize=1)
def head_space() -> HeadSpace:
    anatomy = load_anatomy()
    x, y, z = _axis(*X_RANGE, 2), _axis(*Y_RANGE, 1), _axis(*Z_RANGE, 0)
    shape = (z.size, y.size, x.size)
    # The template's array index 0 is RAS (-98, -134, -72) (load_anatomy's affine); check, then place it.
    origin = np.array(anatomy.reference.GetOrigin())
    if not np.allclose(origin, (98.0, 134.0, -72.0)) or anatomy.reference.GetSpacing() != (1.0, 1.0, 1.0):
        raise ValueError("unexpected MNI152 template geometry")
    start = (-72 - Z_RANGE[0], -134 - Y_RANGE[0], -98 - X_RANGE[0])
    mni = tuple(slice(s, s + n) for s, n in zip(start, anatomy.shape))
    brain = np.zeros(shape, bool)
    brain[mni] = anatomy.mask > 0
    # The neural hull: brain (holes filled) plus the cord below the cut brainstem; the skull and the
    # vertebral canal are shells around it.
    ax, ay = CORD_SEMI_AXES
    cord = (x / ax) ** 2 + ((y - cord_centre_y(z)) / ay) ** 2 <= 1.0
    hull = ndi.binary_fill_holes(brain) | (cord & (z <= CORD_TOP_Z))
    d_out = ndi.distance_transform_edt(~hull).astype(np.float32)
    reference = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    reference.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    reference.SetOrigin((-float(X_RANGE[0]), -float(Y_RANGE[0]), float(Z_RANGE[0])))
    return HeadSpace(x, y, z, mni, brain, d_out, reference)


@dataclass(frozen=True)
class Points:
    """Voxels of the head grid as flat arrays (sorted by flat index, hence by z): where the head model
    is evaluated, cheaper than full-grid arrays since most of the grid is air or brain."""
    flat: np.ndarray   # int64 flat indices into the head grid
    x: np.ndarray      # float32 RAS mm
    y: np.ndarray
    z: np.ndarray
    d_out: np.ndarray  # float32 mm outside the neural hull

    def subset(self, keep: np.ndarray) -> "Points":
        return Points(self.flat[keep], self.x[keep], self.y[keep], self.z[keep], self.d_out[keep])

    def box(self, lo, hi) -> np.ndarray:
        """Indices of the points inside the RAS box [lo, hi] (x, y, z); the z range is found by bisection."""
        a, b = np.searchsorted(self.z, [lo[2], hi[2] + 1e-3])
        keep = ((self.x[a:b] >= lo[0]) & (self.x[a:b] <= hi[0]) & (self.y[a:b] >= lo[1]) & (self.y[a:b] <= hi[1]))
        return a + np.flatnonzero(keep)


# Largest head any case draws (head.py keeps its shapes inside): skull and scalp within this distance of
# the brain, face and neck inside this ellipse below NECK_TOP_Z.
MAX_CRANIAL_MM = 36.0
MAX_BELOW = {"top_z": -20.0, "centre_y": 5.0, "semi_x": 80.0, "semi_y": 112.0}


@functools.lru_cache(maxsize=1)
def candidate_points() -> Points:
    """Every voxel outside the brain that any case's head can reach."""
    space = head_space()
    m = MAX_BELOW
    below = (space.z <= m["top_z"]) & (
        (space.x / m["semi_x"]) ** 2 + ((space.y - m["centre_y"]) / m["semi_y"]) ** 2 <= 1.0)
    keep = ~space.brain & ((space.d_out <= MAX_CRANIAL_MM) | below)
    flat = np.flatnonzero(keep)
    zi, yi, xi = np.unravel_index(flat, space.shape)
    return Points(flat, space.x.ravel()[xi], space.y.ravel()[yi], space.z.ravel()[zi], space.d_out.ravel()[flat])
