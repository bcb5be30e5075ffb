"""Whole-head test studies made from a skull-stripped brain: scalp, skull and CSF shells around the brain mask,
Rician noise in the air, and a known rigid motion with thick-slice resampling for a moving contrast.

Small and independent of the data engine, so that the front end's tests run in seconds; the front end is
measured on the engine's clinical phantoms (benchmarks/frontend_clinical.py).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

#: (outer distance from the brain surface in mm, relative intensity per contrast) for each shell, inside out:
#: CSF rim, inner table, diploe (marrow fat), outer table, scalp (fat and muscle).
SHELLS = (
    (2.0, {"t1": 0.25, "t1ce": 0.25, "t2": 1.4, "flair": 0.15}),
    (4.0, {"t1": 0.04, "t1ce": 0.04, "t2": 0.04, "flair": 0.04}),
    (7.0, {"t1": 1.1, "t1ce": 1.1, "t2": 0.7, "flair": 0.8}),
    (9.0, {"t1": 0.04, "t1ce": 0.04, "t2": 0.04, "flair": 0.04}),
    (15.0, {"t1": 1.0, "t1ce": 1.0, "t2": 0.6, "flair": 0.7}),
)


def brain_mask_of(image: sitk.Image) -> sitk.Image:
    """The non-zero voxels of a skull-stripped image, as uint8."""
    return sitk.Cast(image != 0, sitk.sitkUInt8)


def pad_for_head(image: sitk.Image, mm: float = 20.0) -> sitk.Image:
    """The image with `mm` of zeros added on every side, so that a head fits around the brain."""
    pad = [int(np.ceil(mm / s)) for s in image.GetSpacing()]
    return sitk.ConstantPad(image, pad, pad, 0.0)


def whole_head(brain: sitk.Image, mask: sitk.Image, contrast: str, noise: float = 0.03,
               seed: int = 0) -> sitk.Image:
    """`brain` (skull-stripped, zero outside `mask`) inside CSF, skull and scalp shells, Rician noise in the air."""
    rng = np.random.default_rng(seed)
    values = sitk.GetArrayFromImage(brain).astype(np.float32)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    scale = float(np.median(values[inside]))
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False,
                                                                   squaredDistance=False, useImageSpacing=True))
    head = np.where(inside, values, 0.0).astype(np.float32)
    inner = 0.0
    for outer, intensity in SHELLS:
        shell = (~inside) & (distance > inner) & (distance <= outer)
        head[shell] = intensity[contrast] * scale
        inner = outer
    sd = noise * scale
    real = head + sd * rng.standard_normal(head.shape).astype(np.float32)
    imaginary = sd * rng.standard_normal(head.shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.sqrt(real * real + imaginary * imaginary).astype(np.float32))
    image.CopyInformation(brain)
    return image


def rigid(rotation_deg: Sequence[float], translation_mm: Sequence[float], centre: Sequence[float]) -> sitk.Euler3DTransform:
    """A rigid transform from angles about x, y, z (degrees) and a translation, rotating about `centre`."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in centre])
    transform.SetRotation(*[float(np.deg2rad(a)) for a in rotation_deg])
    transform.SetTranslation([float(t) for t in translation_mm])
    return transform


def thick_slice_grid(image: sitk.Image, in_plane_mm: float = 0.9, slice_mm: float = 5.0,
                     direction: Optional[Sequence[float]] = None) -> sitk.Image:
    """A 2-D multi-slice grid covering the image's field of view (axial unless `direction` says otherwise)."""
    direction = np.array(direction if direction is not None else np.eye(3).ravel(), float).reshape(3, 3)
    size = np.array(image.GetSize())
    corners = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in np.array(c) * (size - 1)])
                        for c in np.ndindex(2, 2, 2)])
    centre = corners.mean(0)
    local = (corners - centre) @ direction  # the corners in the new grid's axes
    extent = local.max(0) - local.min(0)
    spacing = np.array([in_plane_mm, in_plane_mm, slice_mm])
    new_size = np.ceil(extent / spacing).astype(int) + 1
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((centre - direction @ ((new_size - 1) * spacing / 2)).tolist())
    return grid


def acquire(head: sitk.Image, grid: sitk.Image, motion: sitk.Transform) -> sitk.Image:
    """The head seen through `motion` on `grid`, with a Gaussian slice profile across thick slices.

    The result at physical point x shows the head at motion(x) (SimpleITK's resampling convention), so the
    registration of this image to the head should recover motion's inverse."""
    slice_mm = grid.GetSpacing()[2]
    sigma = [0.0, 0.0, 0.0]
    if abs(np.array(grid.GetDirection()).reshape(3, 3)[2, 2]) > 0.99:  # axial slices: blur along z only
        sigma[2] = float(np.sqrt(max(slice_mm ** 2 - head.GetSpacing()[2] ** 2, 0.0)) / 2.355)
    blurred = sitk.DiscreteGaussian(head, [s * s for s in sigma], 32, 0.01, True) if max(sigma) > 0 else head
    return sitk.Resample(blurred, grid, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def study(brains: Dict[str, sitk.Image], mask: sitk.Image, motions: Dict[str, sitk.Transform],
          thick: Tuple[str, ...] = ("t2", "flair"), seed: int = 0) -> Dict[str, sitk.Image]:
    """A whole-head study: the reference contrast on the brain's grid, the others moved and, for `thick`,
    on 5 mm axial slices."""
    out = {}
    for i, (name, brain) in enumerate(brains.items()):
        head_image = whole_head(brain, mask, name, seed=seed + i)
        motion = motions.get(name)
        if motion is None:
            out[name] = head_image
            continue
        grid = thick_slice_grid(head_image) if name in thick else head_image
        out[name] = acquire(head_image, grid, motion)
    return out
