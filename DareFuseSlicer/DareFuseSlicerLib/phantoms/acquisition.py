"""From template space to a scanner's image: grids, pose, deformation, mass effect, bias, noise, units.

One transform maps each output point (LPS mm) to the template: a small rigid pose change and a global
scale, a smooth random deformation, then the lesions' mass effect. SimpleITK warps every channel with
the same dense displacement field, only over the part of the grid that can hold brain (the rest is zero,
skull-stripped like BraTS).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .contrasts import WM_LEVEL
from .grids import GRIDS, Grid, grid_by_name  # noqa: F401 (re-exported: engine, io and tests use them)

_LATTICE_MM = 3.0       # spacing of the coarse displacement lattice
_DEFORM_MM = 20.0       # control spacing of the random deformation
_DEFORM_SD = 2.5        # mm, per component


@dataclass
class Pose:
    rotation: np.ndarray    # 3x3, output LPS -> template LPS
    scale: np.ndarray       # subject size / template size, per axis
    shift: np.ndarray       # mm, where the brain centre sits relative to the grid centre


def draw_pose(rng) -> Pose:
    angles = np.deg2rad(rng.uniform(-7, 7, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    scale = rng.uniform(0.9, 1.04) * rng.uniform(0.97, 1.03, 3)  # MNI152 is larger than most brains
    return Pose(rz @ ry @ rx, scale, rng.uniform(-6, 6, 3))


def _grid_points(ref: sitk.Image) -> np.ndarray:
    """LPS coordinates of all voxels of a (small) image, (z, y, x, 3)."""
    size = ref.GetSize()
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in size], indexing="ij"), -1)
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    pts = (ijk * np.array(ref.GetSpacing())) @ direction.T + np.array(ref.GetOrigin())
    return pts.transpose(2, 1, 0, 3)


def _centre(ref: sitk.Image) -> np.ndarray:
    return np.array(ref.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ref.GetSize()]))


def _lattice(ref: sitk.Image) -> sitk.Image:
    """Coarse image over the output field of view (plus one cell), same direction."""
    extent = np.array(ref.GetSize()) * np.array(ref.GetSpacing())
    size = [int(np.ceil(e / _LATTICE_MM)) + 3 for e in extent]
    lat = sitk.Image(size, sitk.sitkUInt8)
    lat.SetSpacing([_LATTICE_MM] * 3)
    lat.SetDirection(ref.GetDirection())
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    lat.SetOrigin(tuple(np.array(ref.GetOrigin()) - direction @ np.full(3, _LATTICE_MM)))
    return lat


class Warp:
    """The case's output->template mapping, as a dense field over the cropped output region."""

    def __init__(self, rng, anatomy, ref: sitk.Image, pose: Pose, lesions):
        self.ref = ref
        lat = _lattice(ref)
        p = _grid_points(lat)
        y = anatomy.centre + (p - _centre(ref) - pose.shift) @ (pose.rotation / pose.scale[None, :]).T
        # Smooth random deformation, defined over the template (cubic spline through random controls).
        shape = anatomy.shape
        controls = [int(np.ceil(s / _DEFORM_MM)) + 1 for s in shape]
        coeffs = rng.normal(0.0, _DEFORM_SD, (3,) + tuple(controls))
        at = (anatomy.physical_to_index(y.reshape(-1, 3)) / _DEFORM_MM).T
        y = y + np.stack([ndi.map_coordinates(c, at, order=3, mode="nearest") for c in coeffs], -1).reshape(y.shape)
        # Mass effect: pull sampling points towards each lesion centre, so the lesion and the tissue it
        # displaced are inflated in the output (tissue pushed outwards, smoothly and invertibly: k < 1).
        for lesion in lesions:
            if lesion.mass_k <= 0:
                continue
            c = anatomy.index_to_physical(np.asarray(lesion.centre)[None])[0]
            d = c - y
            y = y + lesion.mass_k * d * np.exp(-(d ** 2).sum(-1, keepdims=True) / (2 * lesion.mass_sigma ** 2))
        field = sitk.GetImageFromArray((y - p).astype(np.float64), isVector=True)
        field.CopyInformation(lat)
        transform = sitk.DisplacementFieldTransform(field)
        self.crop_start = (0, 0, 0)
        self.crop = self._crop(anatomy, lat, y, lesions)
        c = self.crop
        self.dense = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, c.GetSize(), c.GetOrigin(),
                                                       c.GetSpacing(), c.GetDirection())
        self.template_points = y  # on the lattice, for tests and diagnostics

    def _crop(self, anatomy, lat, y, lesions) -> sitk.Image:
        """Sub-grid of the output holding every point that maps into the brain or a lesion."""
        support = anatomy.depth > 0
        for lesion in lesions:
            support[lesion.box] |= lesion.label > 0
        idx = np.round(anatomy.physical_to_index(y.reshape(-1, 3))).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(anatomy.shape)), axis=1)
        hit = np.zeros(len(idx), bool)
        hit[inside] = support[tuple(idx[inside].T)]
        if not hit.any():
            return self.ref
        # Lattice voxels are (z, y, x); physical -> output continuous index.
        lat_zyx = np.argwhere(hit.reshape(y.shape[:3]))
        pts = _grid_points_at(lat, lat_zyx)
        ref = self.ref
        direction = np.array(ref.GetDirection()).reshape(3, 3)
        ijk = ((pts - np.array(ref.GetOrigin())) @ direction) / np.array(ref.GetSpacing())
        margin = 2 * _LATTICE_MM / np.array(ref.GetSpacing())
        lo = np.clip(np.floor(ijk.min(0) - margin), 0, None).astype(int)
        hi = np.minimum(np.ceil(ijk.max(0) + margin).astype(int) + 1, ref.GetSize())
        crop = sitk.Image([int(h - l) for l, h in zip(lo, hi)], sitk.sitkUInt8)
        crop.SetSpacing(ref.GetSpacing())
        crop.SetDirection(ref.GetDirection())
        crop.SetOrigin(ref.TransformIndexToPhysicalPoint([int(v) for v in lo]))
        self.crop_start = tuple(int(v) for v in lo)
        return crop

    def apply(self, image: sitk.Image, nearest: bool = False, box=None) -> sitk.Image:
        """Warp a template-space image onto the crop, or onto a (z, y, x) box of it.

        A box reuses the same field voxels (and, on these dyadic grids, the same physical points), so
        its values equal the full crop's there.
        """
        field = self.dense
        if box is not None:
            zs, ys, xs = box
            field = field[xs.start:xs.stop, ys.start:ys.stop, zs.start:zs.stop]
        interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        return sitk.Warp(image, field, interp, field.GetSize(), field.GetOrigin(), field.GetSpacing(),
                         field.GetDirection(), 0.0)

    def paste(self, crop_array: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Crop array (z, y, x) -> full output array, zeros elsewhere."""
        size = self.ref.GetSize()
        full = np.zeros(size[::-1], dtype)
        x0, y0, z0 = self.crop_start
        nz, ny, nx = crop_array.shape
        full[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] = crop_array
        return full


def _grid_points_at(ref: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    return (zyx[:, ::-1] * np.array(ref.GetSpacing())) @ direction.T + np.array(ref.GetOrigin())


def slice_blur(arrays: list, ref: sitk.Image, pose: Pose) -> list:
    """Partial volume of thick slices: blur along the template axis nearest to each coarse output axis.

    Finite Gaussian support (scipy, truncate=3) so the tumour-free image still differs only near the
    lesion; recursive Gaussians would leak tiny differences everywhere.
    """
    direction = pose.rotation @ np.array(ref.GetDirection()).reshape(3, 3)
    out = arrays
    for axis, spacing in enumerate(ref.GetSpacing()):
        if spacing <= 1.5:
            continue
        lps_dim = int(np.argmax(np.abs(direction[:, axis])))
        sigma = np.sqrt(spacing ** 2 - 1.0) / 2.355
        array_axis = 2 - lps_dim  # LPS x, y, z -> template array axes 2, 1, 0
        out = [ndi.gaussian_filter1d(a, sigma, axis=array_axis, truncate=3.0) for a in out]
    return out


@dataclass
class Scanner:
    bias_log: np.ndarray   # (4 contrasts, 4, 4, 4) cosine coefficients of the log bias (x, y, z)
    noise_sd: dict         # contrast -> sd in relative units
    gain: dict             # contrast -> relative unit -> scanner unit
    offset: dict           # contrast -> scanner units added inside the head


def draw_scanner(rng, contrasts) -> Scanner:
    # Cosine-series coefficients (x, y, z frequencies 0..3), falling with frequency; mostly shared by the
    # contrasts (same coil), a little of their own. Gives about +-10-20 % over the head.
    k = np.arange(4)
    falloff = 1.0 / (1.0 + k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    falloff[0, 0, 0] = 0.0  # the mean level belongs to the gain
    shared = rng.normal(0.0, 0.25, (4, 4, 4)) * falloff
    bias = np.stack([shared + rng.normal(0.0, 0.06, (4, 4, 4)) * falloff for _ in contrasts])
    noise = {c: rng.uniform(0.012, 0.035) * WM_LEVEL[c] for c in contrasts}
    gain = {c: float(np.exp(rng.uniform(np.log(300), np.log(2500)))) / WM_LEVEL[c] for c in contrasts}
    offset = {c: float(rng.uniform(0, 40)) for c in contrasts}
    return Scanner(bias, noise, gain, offset)


def bias_field(coeffs: np.ndarray, ref: sitk.Image, start, shape) -> np.ndarray:
    """Smooth multiplicative field over the field of view: exp of a low-order cosine series.

    Hand-written because SimpleITK's B-spline resampling of a 5^3 lattice took seconds per contrast;
    the separable series is evaluated as three small tensor contractions.
    """
    axes = []
    for axis, (n_full, s0, n) in enumerate(zip(ref.GetSize(), start, shape[::-1])):
        u = (np.arange(s0, s0 + n, dtype=np.float32) + 0.5) / n_full
        axes.append(np.cos(np.pi * np.arange(coeffs.shape[axis], dtype=np.float32)[:, None] * u[None, :]))
    log = np.einsum("abc,ax,by,cz->zyx", coeffs.astype(np.float32), *axes, optimize=True)
    return np.exp(log).astype(np.float32)


def rician(signal: np.ndarray, sd: float, noise: np.ndarray) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels (noise: (2, ...) ~ N(0, 1))."""
    real = signal + np.float32(sd) * noise[0]
    imag = np.float32(sd) * noise[1]
    return np.sqrt(real * real + imag * imag)
