"""Small synthetic heads and a tiny DareFuseNet for the pipeline, CLI and reliability tests (fast on 2 cores).

A "head" is an ellipsoid brain with a textured inside and an optional bright lesion; sizes are in mm so that
the brain-plausibility check sees a brain-sized object. Random weights: the tests check behaviour and
geometry, not accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
from DareFuseSlicerLib.network.store import save_model

TINY = NetConfig(encoder_channels=(4, 8, 16), decoder_full_channels=4, generator_channels=(4, 8, 8), attention_heads=2)


def tiny_model(seed: int = 0) -> DareFuseNet:
    torch.manual_seed(seed)
    return DareFuseNet(TINY).eval()


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    path = Path(folder) / "tiny.safetensors"
    save_model(tiny_model(seed), path, {"name": "tiny-test-model", "version": "0.0.1", "training_command": "none",
                                        "seed": seed, "data_recipe": {}, "metrics": {}})
    return path


def head(size: Sequence[int] = (40, 48, 36), spacing: Sequence[float] = (4.0, 4.0, 4.0),
         radii_mm: Sequence[float] = (65.0, 80.0, 60.0), lesion_mm: float = 0.0, scale: float = 800.0,
         seed: int = 0, direction: Optional[Sequence[float]] = None, pixel_type=sitk.sitkFloat32) -> sitk.Image:
    """An ellipsoid brain centred in the field of view (float32 unless pixel_type says otherwise)."""
    rng = np.random.default_rng(seed)
    size = tuple(int(s) for s in size)
    z, y, x = np.indices(size[::-1]).astype(np.float32)
    centre = (np.array(size[::-1], np.float32) - 1) / 2
    sp = np.array(spacing, np.float32)[::-1]
    rz, ry, rx = radii_mm[2], radii_mm[1], radii_mm[0]
    d = (((z - centre[0]) * sp[0] / rz) ** 2 + ((y - centre[1]) * sp[1] / ry) ** 2
         + ((x - centre[2]) * sp[2] / rx) ** 2)
    inside = d < 1.0
    texture = 0.6 + 0.25 * np.sin(x * sp[2] / 9.0) * np.cos(y * sp[1] / 11.0) + 0.05 * rng.standard_normal(d.shape)
    array = np.where(inside, scale * texture, 0.0)
    if lesion_mm > 0:
        r = np.sqrt(((z - centre[0]) * sp[0]) ** 2 + ((y - centre[1]) * sp[1]) ** 2
                    + ((x - centre[2] - 0.3 * rx / sp[2]) * sp[2]) ** 2)
        array = np.where(r < lesion_mm, scale * 1.6, array)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        image.SetDirection([float(v) for v in direction])
    image.SetOrigin((-10.0, 20.0, -30.0))
    if pixel_type != sitk.sitkFloat32:
        image = sitk.Cast(image, pixel_type)
    return image


def four_contrasts(**kwargs) -> Dict[str, sitk.Image]:
    return {name: head(seed=i, scale=400.0 + 200 * i, **kwargs)
            for i, name in enumerate(("t1", "t1ce", "t2", "flair"))}


def write(image: sitk.Image, path: Path) -> str:
    sitk.WriteImage(image, str(path), True)
    return str(path)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))
