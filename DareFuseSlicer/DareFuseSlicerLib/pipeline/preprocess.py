"""Pre-processing shared by training and inference, so the network always sees the same kind of input.

Given contrasts are resampled onto the reference grid, the brain's bounding box is resampled to an isotropic
low-resolution grid (2 mm by default, after Gaussian anti-aliasing), and each contrast is z-scored inside the
brain. `to_reference` maps network outputs back onto the reference grid and affine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..constants import CONTRASTS, reference_contrast
from ..errors import InputError

#: Brain bounding-box margin, in mm, so that the network sees some background around the brain.
MARGIN_MM = 6.0
#: z-scores are clipped to this range: a few very bright voxels (vessels, artefacts) must not dominate.
CLIP_Z = 6.0
#: Widest anti-aliasing kernel, in voxels (DiscreteGaussian's maximum kernel width).
KERNEL_WIDTH = 16


@dataclass
class Prepared:
    """One case ready for the network, with what is needed to map outputs back."""

    array: np.ndarray  # float32 (4, Z, Y, X), z-scored, zeros for missing contrasts and outside the brain
    present: np.ndarray  # float32 (4,), 1 where the contrast was given
    reference: sitk.Image  # the grid every output is returned on
    grid: sitk.Image  # the low-resolution isotropic grid (geometry only)
    foreground: np.ndarray  # uint8 (Z, Y, X) on the low-resolution grid
    foreground_reference: sitk.Image  # uint8 on the reference grid
    mean: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # per-contrast, input units
    std: np.ndarray = field(default_factory=lambda: np.ones(4, np.float32))
    reference_name: str = "t1"
    resampled: Dict[str, sitk.Image] = field(default_factory=dict)  # given contrasts on the reference grid

    @property
    def given(self) -> List[str]:
        """The contrasts the network was given (`present`), in CONTRASTS order."""
        return [name for name, flag in zip(CONTRASTS, self.present) if flag]


def _background_value(array: np.ndarray) -> float:
    """The value of the volume's faces (0 for skull-stripped BraTS-style images, whatever the offset)."""
    faces = np.concatenate([array[[0, -1]].ravel(), array[:, [0, -1]].ravel(), array[:, :, [0, -1]].ravel()])
    return float(np.median(faces))


def differs_from_background(array: np.ndarray) -> np.ndarray:
    """Voxels that differ from the background value (the brain, in a skull-stripped image)."""
    background = _background_value(array)
    low, high = np.percentile(array, [0.5, 99.5])  # one partial sort for both
    spread = float(high - low)
    return np.abs(array - background) > max(spread, 1e-6) * 1e-3


def _low_resolution_grid(reference: sitk.Image, mask: np.ndarray, spacing_mm: float) -> sitk.Image:
    """An isotropic grid in the reference's orientation covering the mask's bounding box plus a margin."""
    index = np.argwhere(mask)
    if index.size == 0:
        raise InputError("The input images are empty: every voxel has the background value.")
    lo_zyx, hi_zyx = index.min(0), index.max(0)
    spacing = np.array(reference.GetSpacing())
    lo = lo_zyx[::-1] - 0.5  # continuous index (x, y, z) of the box's outer faces
    hi = hi_zyx[::-1] + 0.5
    margin = MARGIN_MM / spacing
    lo, hi = lo - margin, hi + margin
    extent_mm = (hi - lo) * spacing
    size = np.maximum(np.ceil(extent_mm / spacing_mm).astype(int), 1)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    # Centre of the new grid's first voxel, in physical space.
    corner = np.array(reference.TransformContinuousIndexToPhysicalPoint(lo.tolist()))
    origin = corner + direction @ (np.full(3, spacing_mm) / 2.0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(origin.tolist())
    return grid


def _anti_alias(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Gaussian smoothing so that down-sampling to spacing_mm does not alias (sigma per axis, in mm)."""
    sigma = [float(np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.355) for s in image.GetSpacing()]
    if max(sigma) <= 0.0:
        return image
    # Discrete rather than recursive Gaussian: it accepts a zero sigma on axes already coarser than spacing_mm.
    return sitk.DiscreteGaussian(image, [v * v for v in sigma], KERNEL_WIDTH, 0.01, True)


def _around(image: sitk.Image, grid: sitk.Image, margin: int) -> sitk.Image:
    """The part of `image` that resampling onto `grid` reads, plus `margin` voxels on each side (the whole
    image when that is all of it, or when the grid misses the image)."""
    size = np.array(grid.GetSize())
    corners = [grid.TransformIndexToPhysicalPoint([int(v) for v in np.array(corner) * (size - 1)])
               for corner in np.ndindex(2, 2, 2)]
    index = np.array([image.TransformPhysicalPointToContinuousIndex(point) for point in corners])
    lo = np.maximum(np.floor(index.min(0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(index.max(0)).astype(int) + margin, np.array(image.GetSize()) - 1)
    if np.any(hi < lo) or (np.all(lo == 0) and np.all(hi == np.array(image.GetSize()) - 1)):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo + 1], [int(v) for v in lo])


def _same_grid(image: sitk.Image, other: sitk.Image) -> bool:
    """Exactly the same voxel grid (size, spacing, origin, direction)."""
    return (image.GetSize() == other.GetSize() and image.GetSpacing() == other.GetSpacing()
            and image.GetOrigin() == other.GetOrigin() and image.GetDirection() == other.GetDirection())


def grids_match(image: sitk.Image, other: sitk.Image, direction_atol: float = 1e-4) -> bool:
    """The same voxel grid up to float noise in the header (size equal; spacing within 1e-4 mm, origin within
    1e-3 mm, direction cosines within direction_atol)."""
    return (image.GetSize() == other.GetSize()
            and np.allclose(image.GetSpacing(), other.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetOrigin(), other.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetDirection(), other.GetDirection(), atol=direction_atol))


def resample(image: sitk.Image, like: sitk.Image, interpolator=sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    """`image` on the grid of `like`, as float32 (`default` outside `image`)."""
    return sitk.Resample(image, like, sitk.Transform(), interpolator, default, sitk.sitkFloat32)


def down_sample(image: sitk.Image, grid: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An image on the reference grid onto the low-resolution grid, anti-aliased: how every contrast (and, in
    training, every tumour-free image) reaches the network.

    Only the part of the image around the grid is smoothed (the brain's box: 60 % of the bundled BraTS-grid
    sample), with a margin wider than the kernel and the interpolation, so the values read are those of
    smoothing the whole image (to float rounding)."""
    return resample(_anti_alias(_around(image, grid, KERNEL_WIDTH // 2 + 2), spacing_mm), grid)


def prepare(images: Dict[str, Optional[sitk.Image]], spacing_mm: float = 2.0,
            brain_mask: Optional[sitk.Image] = None, region: Optional[sitk.Image] = None) -> Prepared:
    """Resample, crop, down-sample and normalise the given contrasts (see the module docstring).

    brain_mask: the brain on the reference grid (the front end's, for whole-head studies); without it the
    brain is the voxels that differ from the background value in any contrast (skull-stripped input).
    region: where the network looks, on the reference grid, when wider than the brain (the front end's margin
    for tumour at the brain's surface); the intensities are still normalised over the brain alone, since
    skull and scalp in the statistics would shift every brain voxel's value."""
    unknown = set(images) - set(CONTRASTS)
    if unknown:
        raise InputError(f"Unknown contrast name(s) {sorted(unknown)}; expected some of {list(CONTRASTS)}.")
    reference_name = reference_contrast(images)
    reference = sitk.Cast(images[reference_name], sitk.sitkFloat32)

    resampled: Dict[str, sitk.Image] = {}
    mask = None
    for name in CONTRASTS:
        image = images.get(name)
        if image is None:
            continue
        if name == reference_name:
            on_reference = reference
        elif _same_grid(image, reference):  # BraTS-style co-registered contrasts: nothing to interpolate
            on_reference = sitk.Cast(image, sitk.sitkFloat32)
        else:
            on_reference = resample(sitk.Cast(image, sitk.sitkFloat32), reference)
        resampled[name] = on_reference
        if brain_mask is None:
            fg = differs_from_background(sitk.GetArrayViewFromImage(on_reference))
            mask = fg if mask is None else (mask | fg)
    if brain_mask is not None:
        mask = sitk.GetArrayFromImage(brain_mask) > 0
    brain = mask
    if region is not None:
        mask = sitk.GetArrayFromImage(region) > 0

    foreground_reference = sitk.GetImageFromArray(mask.astype(np.uint8))
    foreground_reference.CopyInformation(reference)
    grid = _low_resolution_grid(reference, mask, spacing_mm)
    foreground = _on_grid(mask, reference, grid).astype(np.uint8)
    inside = foreground.astype(bool)
    if not inside.any():
        raise InputError("The brain region is too small to analyse at the network's resolution.")
    counted = inside if region is None else _on_grid(brain, reference, grid) & inside

    array = np.zeros((len(CONTRASTS),) + foreground.shape, np.float32)
    present = np.zeros(len(CONTRASTS), np.float32)
    mean = np.zeros(len(CONTRASTS), np.float32)
    std = np.ones(len(CONTRASTS), np.float32)
    for channel, name in enumerate(CONTRASTS):
        if name not in resampled:
            continue
        low = sitk.GetArrayFromImage(down_sample(resampled[name], grid, spacing_mm))
        values = low[counted]
        # z-score inside the brain mask, not over non-zero voxels (MONAI's NormalizeIntensity(nonzero=True)):
        # scanner offsets make background non-zero and brain voxels can be zero.
        mean[channel] = float(values.mean())
        std[channel] = float(values.std()) or 1.0
        array[channel] = np.where(inside, np.clip((low - mean[channel]) / std[channel], -CLIP_Z, CLIP_Z), 0.0)
        present[channel] = 1.0

    return Prepared(
        array=array,
        present=present,
        reference=reference,
        grid=grid,
        foreground=foreground,
        foreground_reference=foreground_reference,
        mean=mean,
        std=std,
        reference_name=reference_name,
        resampled=resampled,
    )


def _on_grid(mask: np.ndarray, reference: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A boolean mask on the reference grid brought onto the low-resolution grid (nearest voxel)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                sitk.sitkUInt8)) > 0


def _image_on_grid(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.CopyInformation(grid)
    return image


def resample_label_to_grid(label: sitk.Image, prep: Prepared, n_labels: int = 4) -> np.ndarray:
    """A label image (any grid) on the low-resolution grid: one-hot, linear resampling, arg-max (uint8)."""
    label_array = sitk.GetArrayFromImage(label)
    scores = []
    for value in range(n_labels):
        one_hot = sitk.GetImageFromArray((label_array == value).astype(np.float32))
        one_hot.CopyInformation(label)
        default = 1.0 if value == 0 else 0.0
        scores.append(sitk.GetArrayFromImage(resample(one_hot, prep.grid, sitk.sitkLinear, default)))
    return np.argmax(np.stack(scores), axis=0).astype(np.uint8)


def to_reference(array_low: np.ndarray, prep: Prepared, interpolation: str = "linear"):
    """Map an output on the low-resolution grid back onto the reference grid (zero outside the box).

    (Z, Y, X) gives a float32 sitk.Image; (C, Z, Y, X) gives a float32 array (C, z, y, x) on the reference grid.
    """
    interpolator = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolation]
    if array_low.ndim == 3:
        return resample(_image_on_grid(array_low, prep.grid), prep.reference, interpolator)
    return np.stack(
        [sitk.GetArrayFromImage(resample(_image_on_grid(c, prep.grid), prep.reference, interpolator)) for c in array_low]
    )


def to_input_units(array_low: np.ndarray, prep: Prepared, contrast: str) -> sitk.Image:
    """A normalised single-contrast output (e.g. the tumour-free reconstruction) in the input's units on the
    reference grid; outside the brain it keeps the input's own values."""
    channel = CONTRASTS.index(contrast)
    restored = sitk.GetArrayFromImage(to_reference(array_low, prep)) * prep.std[channel] + prep.mean[channel]
    original = sitk.GetArrayFromImage(prep.resampled[contrast])
    inside = sitk.GetArrayViewFromImage(prep.foreground_reference).astype(bool)
    image = sitk.GetImageFromArray(np.where(inside, restored, original).astype(np.float32))
    image.CopyInformation(prep.reference)
    return image
