"""From the head in template space to each contrast's own grid.

The subject map sends a point of the world (the reference scan's LPS space) into the template: pose and
size of the head, a smooth random deformation, the lesions' mass effect. A contrast is sampled through a
displacement field on its own grid: its points -> the reference's (the sequence's motion, recorded in the
manifest) -> the template, evaluated exactly every ~3 mm and interpolated between (affine parts exactly).
2-D stacks are sampled on a fine grid aligned with the stack, blurred along the slice normal by the slice
profile (Gaussian, FWHM = slice thickness), then the slice centres are taken and the pixels interpolated.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .acquisition import draw_pose
from .anatomy import load_anatomy
from .headspace import head_space

_LATTICE_MM = 3.0       # world lattice over the head (where lesions and the brain land)
_FIELD_MM = 4.0         # lattice step of each grid's displacement field (the mass effect's sd is >= 7.8 mm)
_DEFORM_MM = 20.0       # control spacing of the random deformation (as acquisition.Warp)
_DEFORM_SD = 2.5        # mm, per component
_TABLE_MM = 4           # tabulation step of the deformation
_MASS_FADE_MM = 6.0     # mass effect fades out over this distance outside the brain: the skull stays put
_FINE_MM = 1.6          # largest sub-slice spacing of the slice-profile grid (the profile's sd is >= 1.27 mm)
_FINE_PIXEL_MM = 0.9    # finer pixels are interpolated from this (acquired matrices are coarser than shown)
_TRUNCATE = 3.0         # Gaussian support, in standard deviations


def _points(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """(N, 3) array indices (z, y, x) of an image -> (N, 3) LPS points."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return (zyx[:, ::-1] * np.array(image.GetSpacing())) @ direction.T + np.array(image.GetOrigin())


def _axis_points(image: sitk.Image, indices) -> np.ndarray:
    """LPS points of the index lattice indices[0] x indices[1] x indices[2] (x, y, z), as (z, y, x, 3)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    steps = [np.outer(np.asarray(i, float) * s, direction[:, a]) for a, (i, s) in enumerate(zip(indices, image.GetSpacing()))]
    return (np.array(image.GetOrigin()) + steps[2][:, None, None, :] + steps[1][None, :, None, :]
            + steps[0][None, None, :, :])


def _to_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """(N, 3) LPS points -> (N, 3) continuous indices (x, y, z) of an image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return ((points - np.array(image.GetOrigin())) @ direction) / np.array(image.GetSpacing())


class SubjectMap:
    """World (reference LPS mm) -> template (MNI152 LPS mm): pose, size, smooth deformation, mass effect."""

    def __init__(self, rng, lesions):
        anatomy, space = load_anatomy(), head_space()
        pose = draw_pose(rng)
        self.scale = float(np.mean(pose.scale))
        self.brain_centre = np.asarray(pose.shift, float)  # the brain centre in the world
        self._linear = pose.rotation / pose.scale[None, :]  # world offset -> template offset (acquisition.Warp)
        self._template_centre = anatomy.centre
        controls = [int(np.ceil(s / _DEFORM_MM)) + 1 for s in space.shape]
        coeffs = rng.normal(0.0, _DEFORM_SD, (3,) + tuple(controls))
        # The cubic spline through the controls, tabulated every _TABLE_MM over the head grid; points are
        # then interpolated linearly (8 neighbours instead of 64).
        at = np.stack(np.meshgrid(*[np.arange(0, n + _TABLE_MM, _TABLE_MM, dtype=float) / _DEFORM_MM
                                    for n in space.shape], indexing="ij"))
        self._table = np.stack([ndi.map_coordinates(c, at.reshape(3, -1), order=3, mode="nearest").reshape(at.shape[1:])
                                for c in coeffs]).astype(np.float32)
        self._lesions = [(anatomy.index_to_physical(np.asarray(les.centre)[None])[0], les.mass_k, les.mass_sigma)
                         for les in lesions if les.mass_k > 0]
        lattice = self._lattice(space.reference)
        self.lattice_world = _axis_points(lattice, [np.arange(n) for n in lattice.GetSize()]).reshape(-1, 3)
        self.lattice_template = self.template_points(self.lattice_world)

    def template_points(self, world: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) template points."""
        space = head_space()
        y = self._template_centre + (world - self.brain_centre) @ self._linear.T
        at = (space.physical_to_index(y) / _TABLE_MM).T
        y = y + np.stack([ndi.map_coordinates(c, at, order=1, mode="nearest") for c in self._table], -1)
        if not self._lesions:
            return y
        # Mass effect: sampling points pulled towards each lesion centre (acquisition.Warp's), fading out
        # outside the brain so that the skull and scalp keep their shape.
        fade = np.clip(1 - ndi.map_coordinates(space.d_out, space.physical_to_index(y).T, order=1, mode="nearest")
                       / _MASS_FADE_MM, 0, 1)[:, None]
        for centre, k, sigma in self._lesions:
            d = centre - y
            y = y + fade * k * d * np.exp(-(d ** 2).sum(-1, keepdims=True) / (2 * sigma ** 2))
        return y

    def _lattice(self, head_ref: sitk.Image) -> sitk.Image:
        """Axis-aligned 3 mm world lattice covering the world image of the whole head grid (plus 12 mm)."""
        size = np.array(head_ref.GetSize())
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (size - 1)
        template = _points(head_ref, corners[:, ::-1].astype(float))
        world = self.brain_centre + (template - self._template_centre) @ np.linalg.inv(self._linear).T
        lo, hi = world.min(0) - 12.0, world.max(0) + 12.0
        lattice = sitk.Image([int(n) for n in np.ceil((hi - lo) / _LATTICE_MM) + 1], sitk.sitkUInt8)
        lattice.SetSpacing([_LATTICE_MM] * 3)
        lattice.SetOrigin(tuple(lo))
        return lattice

    def world_points_in(self, box_lps, margin: float = 4.0) -> np.ndarray:
        """Lattice points (world) whose template point lies in an LPS box (lo, hi) widened by margin."""
        lo, hi = np.asarray(box_lps[0]) - margin, np.asarray(box_lps[1]) + margin
        hit = np.all((self.lattice_template >= lo) & (self.lattice_template <= hi), axis=1)
        return self.lattice_world[hit]

    def field(self, grid: sitk.Image, motion) -> sitk.Image:
        """Displacement field (float32 vectors) on a grid: its points -> template points, through the motion.

        Exact at lattice points (every ~3 mm of the grid), trilinear between them: the motion is affine, so
        only the smooth deformation and mass effect are interpolated (as acquisition.Warp's lattice).
        """
        size = np.array(grid.GetSize())
        step = np.maximum(1, np.round(_FIELD_MM / np.array(grid.GetSpacing()))).astype(int)
        count = (size - 1) // step + 2
        x = _axis_points(grid, [np.arange(n) * s for n, s in zip(count, step)]).reshape(-1, 3)
        to_ref = motion.to_reference()
        y = self.template_points(x @ to_ref[:, :3].T + to_ref[:, 3])
        coarse = (y - x).astype(np.float32).reshape(tuple(count[::-1]) + (3,))
        for axis in (2, 1, 0):  # x first: the smallest intermediate arrays
            coarse = _upsample(coarse, axis, int(step[2 - axis]), int(size[2 - axis]))
        field = sitk.GetImageFromArray(coarse, isVector=True)
        field.CopyInformation(grid)
        return field


def _upsample(values: np.ndarray, axis: int, step: int, n: int) -> np.ndarray:
    """Linear interpolation along one axis from points every `step` voxels to all n voxels; one strided
    pass per phase (8x faster than gathering both neighbours)."""
    shape = list(values.shape)
    shape[axis] = n
    out = np.empty(shape, np.float32)
    src, dst = np.moveaxis(values, axis, 0), np.moveaxis(out, axis, 0)
    for r in range(step):
        m = len(range(r, n, step))
        if r == 0:
            dst[0::step] = src[:m]
        else:
            f = np.float32(r / step)
            np.add(src[:m] * (1 - f), src[1:m + 1] * f, out=dst[r::step])
    return out


def warp(image: sitk.Image, field: sitk.Image, nearest: bool = False, box=None) -> np.ndarray:
    """Sample a template image on a field's grid, or on a (z, y, x) box of it (the field's own voxels)."""
    if box is not None:
        zs, ys, xs = box
        field = field[xs.start:xs.stop, ys.start:ys.stop, zs.start:zs.stop]
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Warp(image, field, interp, field.GetSize(), field.GetOrigin(), field.GetSpacing(),
                    field.GetDirection(), 0.0)
    return sitk.GetArrayFromImage(out)


def resample(image: sitk.Image, grid: sitk.Image, transform, nearest: bool = False) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, grid, transform, interp, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def index_box(grid: sitk.Image, points: np.ndarray, margin_xyz) -> tuple:
    """(z, y, x) slices of the grid around LPS points, widened by margin (voxels, x y z); None if outside."""
    if len(points) == 0:
        return None
    ijk = _to_index(grid, points)
    size = np.array(grid.GetSize())
    lo = np.maximum(np.floor(ijk.min(0) - margin_xyz), 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(0) + margin_xyz).astype(int) + 1, size)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1]))


class StackGrid:
    """The fine grid a 2-D stack is sampled on: same direction and origin, sub-slices along the normal
    (spanning the profile's support beyond the first and last slice), pixels of at least 0.9 mm."""

    def __init__(self, grid: sitk.Image, slice_mm: float):
        self.grid = grid
        pixel = grid.GetSpacing()[0]
        self.pixel = max(pixel, _FINE_PIXEL_MM)
        self.sub = int(np.ceil(slice_mm / _FINE_MM))
        self.step = slice_mm / self.sub
        self.sigma = slice_mm / 2.355 / self.step        # slice profile, in sub-slices
        self.pad = int(np.ceil(_TRUNCATE * self.sigma))
        nx, ny, nz = grid.GetSize()
        # Same pixels: the same count (the quotient below can round up past n - 1 and the stack would not
        # fit its grid; seed 3001 failed so).
        n_in = [n if self.pixel == pixel else int(np.ceil((n - 1) * pixel / self.pixel)) + 1 for n in (nx, ny)]
        fine = sitk.Image(n_in + [(nz - 1) * self.sub + 1 + 2 * self.pad], sitk.sitkUInt8)
        fine.SetSpacing((self.pixel, self.pixel, self.step))
        fine.SetDirection(grid.GetDirection())
        fine.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, -self.pad * self.step / slice_mm)))
        self.fine = fine

    def profile(self, array: np.ndarray) -> np.ndarray:
        """Slice-profile blur along the normal (array axis 0); finite support, so a box blurs like the whole."""
        return ndi.gaussian_filter1d(array, self.sigma, axis=0, truncate=_TRUNCATE, mode="nearest")

    def to_grid(self, fine_array: np.ndarray) -> np.ndarray:
        """Blurred fine array -> the stack: slice centres, then pixels interpolated in plane."""
        slices = np.ascontiguousarray(fine_array[self.pad::self.sub][: self.grid.GetSize()[2]])
        if self.pixel == self.grid.GetSpacing()[0]:
            return slices
        image = sitk.GetImageFromArray(slices)
        image.SetSpacing((self.pixel, self.pixel, self.grid.GetSpacing()[2]))
        image.SetDirection(self.grid.GetDirection())
        image.SetOrigin(self.grid.GetOrigin())
        return resample(image, self.grid, sitk.Transform())
