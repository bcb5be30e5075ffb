"""Randomised views of brain-mask training samples (torch): pose, contrast and resolution (SynthStrip's idea).

Pose and window: one `grid_sample` takes a window of a cached volume (image and target together) through a
random rotation (up to 15 degrees about each axis), scale (0.9-1.1) and left-right flip. Contrast: a random
smooth intensity curve (half the time not monotonic), gamma and a multiplicative bias field; then the
resolution: half the time a Gaussian blur along one random axis (a 2-D stack's thick slices, up to 7 mm FWHM
at 2 mm voxels), a fifth of the time over all three; then noise, and the inference's normalisation (the
99.5th percentile of the volume the window came from, through the same curve).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 15.0
SCALE = (0.9, 1.1)


def _uniform(generator: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    """A random rotation, scale and left-right flip, acting on (z, y, x) voxel offsets."""
    angles = _uniform(generator, -1.0, 1.0, 3) * math.radians(MAX_ROTATION_DEG)
    c, s = torch.cos(angles), torch.sin(angles)
    about_z = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])  # the (y, x) plane
    about_y = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    about_x = torch.tensor([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    matrix = about_z @ about_y @ about_x * float(_uniform(generator, *SCALE))
    if float(torch.rand(1, generator=generator)) < 0.5:  # x is the last (left-right) axis
        matrix = matrix @ torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    return matrix


def window(volume: torch.Tensor, centre: torch.Tensor, size: int, matrix: torch.Tensor) -> torch.Tensor:
    """A size^3 window of volume (C, Z, Y, X) around `centre` (voxels, z y x) seen through `matrix` (linear,
    zeros outside)."""
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    offsets = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (S, S, S, 3) z y x
    points = offsets @ matrix.T + centre
    extent = torch.tensor(volume.shape[1:], dtype=torch.float32) - 1
    normalised = points / extent.clamp_min(1) * 2 - 1
    grid = normalised.flip(-1)[None]  # grid_sample wants x y z
    return F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def random_centre(shape: Tuple[int, ...], size: int, generator: torch.Generator) -> torch.Tensor:
    """A window centre (voxels) with the window inside the volume where it fits, else the volume's middle."""
    centre = []
    for n in shape:
        low, high = min(size / 2.0, n / 2.0), max(n - size / 2.0, n / 2.0)
        centre.append(float(_uniform(generator, low, high)) - 0.5)
    return torch.tensor(centre)


def _curve(values: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    positions = (values.clamp(0, 1.5) / 1.5) * (len(knots) - 1)
    low = positions.floor().clamp(0, len(knots) - 2).long()
    weight = positions - low
    return knots[low] * (1 - weight) + knots[low + 1] * weight


def new_contrast(image: torch.Tensor, levels: torch.Tensor, generator: torch.Generator
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """A random contrast for one window (1, Z, Y, X) of 0..1.5: (the window, the value that normalisation
    will divide by: the 99.5th percentile of `levels`, voxels of the whole volume, through the same curve, as
    the inference normalises the whole cube)."""
    knots = torch.rand(9, generator=generator)
    if float(torch.rand(1, generator=generator)) < 0.5:  # half the time keep the true order of intensities
        knots = torch.sort(knots).values
    knots[0] = float(torch.rand(1, generator=generator)) * 0.1  # air stays dark: it is dark in every MR contrast
    gamma = math.exp(float(_uniform(generator, -0.4, 0.4)))
    bias = F.interpolate(torch.randn(1, 1, 4, 4, 4, generator=generator) * 0.2, size=image.shape[1:],
                         mode="trilinear", align_corners=False)[0].exp()
    top = torch.quantile(_curve(levels, knots).clamp_min(0) ** gamma, 0.995).clamp_min(1e-3)
    return _curve(image, knots).clamp_min(0) ** gamma * bias, top


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(int(math.ceil(3 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur(image: torch.Tensor, sigmas: Tuple[float, float, float]) -> torch.Tensor:
    """A separable Gaussian blur of (1, Z, Y, X) with sigma per axis in voxels (0: none)."""
    out = image[None]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.05:
            continue
        kernel = _gaussian_kernel(sigma)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        padding = [0, 0, 0]
        padding[axis] = len(kernel) // 2
        out = F.conv3d(out, kernel.reshape(shape), padding=tuple(padding))
    return out[0]


def new_resolution(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the time: thick slices along a random axis (sigma 0.4-1.5 voxels); a fifth: a little blur overall."""
    draw = float(torch.rand(1, generator=generator))
    if draw < 0.5:
        sigmas = [0.0, 0.0, 0.0]
        sigmas[int(torch.randint(0, 3, (1,), generator=generator))] = float(_uniform(generator, 0.4, 1.5))
        return blur(image, tuple(sigmas))
    if draw < 0.7:
        return blur(image, (float(_uniform(generator, 0.3, 0.8)),) * 3)
    return image


def augmented(image: torch.Tensor, target: torch.Tensor, levels: torch.Tensor, size: int,
              generator: torch.Generator, centre=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One randomised (image, target) window, (1, S, S, S) and (C, S, S, S), from a cached image (Z, Y, X) and
    its target (Z, Y, X) or (C, Z, Y, X): every channel of the target goes through the same pose."""
    if centre is None:
        centre = random_centre(tuple(image.shape), size, generator)
    stacked = torch.cat([image[None].float(), target.reshape((-1,) + tuple(image.shape)).float()])
    both = window(stacked, centre, size, random_rotation(generator))
    x, top = new_contrast(both[:1], levels.float(), generator)
    x = new_resolution(x, generator)  # tissue contrast, then the slice profile, then noise: as a scanner does
    x = x + torch.randn(x.shape, generator=generator) * float(torch.rand(1, generator=generator)) * 0.04 * top
    return (x / top).clamp(0, 1.5), both[1:].clamp(0, 1)
