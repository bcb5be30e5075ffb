"""BrainMaskNet: two small 3-D U-Nets (MONAI) that give the brain mask of a whole-head image of any contrast.

A cascade (pipeline/brainmask.py builds the inputs):

- `coarse`: the whole head in a 64^3 cube of 4 mm voxels; its brain share only places the fine stage's box.
- `fine`: the box around the coarse brain (plus a margin) at 2 mm; its brain share, interpolated linearly onto
  the native grid and thresholded at 0.5, is the mask.

Both output a logit per voxel whose sigmoid is the share of the voxel inside the brain. Trained on whole-head
phantoms with randomised contrast, resolution and pose (SynthStrip's idea, Hoopes et al., NeuroImage 2022),
so it does not depend on which contrast is the reference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

import torch
from monai.networks.nets import UNet
from torch import nn


@dataclass
class BrainMaskConfig:
    coarse_channels: Tuple[int, ...] = (8, 16, 32, 64)
    fine_channels: Tuple[int, ...] = (16, 32, 64, 128, 256)
    res_units: int = 1
    #: brainmask-v1's one-stage layout (a card's "channels"): one U-Net on the 4 mm cube, no fine stage.
    channels: Optional[Tuple[int, ...]] = None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "BrainMaskConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)

    @property
    def fine_multiple(self) -> int:
        """The fine stage's input sides must be multiples of this (one halving per level)."""
        return 2 ** (len(self.fine_channels) - 1)


def _unet(channels: Tuple[int, ...], res_units: int) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=res_units)


class BrainMaskNet(nn.Module):
    """(B, 1, Z, Y, X) normalised image -> (B, 1, Z, Y, X) brain logits, by the stage named."""

    def __init__(self, config: BrainMaskConfig = BrainMaskConfig()):
        super().__init__()
        self.config = config
        if config.channels:  # one stage (brainmask-v1's weights load into `unet`)
            self.unet = _unet(config.channels, config.res_units)
            return
        self.coarse = _unet(config.coarse_channels, config.res_units)
        self.fine = _unet(config.fine_channels, config.res_units)

    @property
    def one_stage(self) -> bool:
        return bool(self.config.channels)

    def forward(self, x: torch.Tensor, stage: str = "fine") -> torch.Tensor:
        if self.one_stage:
            return self.unet(x)
        return self.coarse(x) if stage == "coarse" else self.fine(x)
