"""BrainMaskNet: a small 3-D U-Net (MONAI) that gives the brain mask of a whole-head image of any contrast.

It sees one contrast in a 64^3 cube of 4 mm voxels around the head (pipeline/brainmask.py builds the cube) and
outputs a logit per voxel whose sigmoid is the share of the voxel inside the brain; the pipeline maps that share
onto the native grid. Trained on whole-head phantoms with randomised contrasts (SynthStrip's idea, Hoopes et al.,
NeuroImage 2022), so it does not depend on which contrast is the reference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Tuple

import torch
from monai.networks.nets import UNet
from torch import nn


@dataclass
class BrainMaskConfig:
    channels: Tuple[int, ...] = (8, 16, 32, 64)
    strides: Tuple[int, ...] = (2, 2, 2)
    res_units: int = 1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "BrainMaskConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


class BrainMaskNet(nn.Module):
    """(B, 1, Z, Y, X) normalised image -> (B, 1, Z, Y, X) brain logits."""

    def __init__(self, config: BrainMaskConfig = BrainMaskConfig()):
        super().__init__()
        self.config = config
        self.unet = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(config.channels),
                         strides=tuple(config.strides), num_res_units=config.res_units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)
