"""The baseline: MONAI's SegResNet on the same inputs, with the same evidential head and loss, so that the
comparison isolates the architecture (dual encoders, bridge, refiner, prior) at the same training budget."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from torch import nn


@dataclass
class BaselineConfig:
    n_contrasts: int = 4
    n_labels: int = 4
    init_filters: int = 8  # ~1.2 M parameters: the size of DareFuseNet
    blocks_down: Tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: Tuple[int, ...] = (1, 1, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BaselineConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("blocks_down", "blocks_up"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class SegResNetBaseline(nn.Module):
    """SegResNet taking the four contrasts (missing ones zero) and returning Dirichlet evidence like
    DareFuseNet; it has no classifier, no prior and no reconstruction."""

    stride = 8

    def __init__(self, config: BaselineConfig = None):
        super().__init__()
        self.config = config = config or BaselineConfig()
        self.net = SegResNet(
            spatial_dims=3, in_channels=config.n_contrasts, out_channels=config.n_labels,
            init_filters=config.init_filters, blocks_down=config.blocks_down, blocks_up=config.blocks_up,
        )

    def forward(self, x: torch.Tensor, present: torch.Tensor, use_prior: bool = True) -> Dict[str, torch.Tensor]:
        size = x.shape[2:]
        pad = [(-s) % self.stride for s in size]
        if any(pad):
            x = F.pad(x, [p for s in reversed(pad) for p in (0, s)])
        x = x * present.to(x.dtype)[:, :, None, None, None]
        crop = (...,) + tuple(slice(0, s) for s in size)
        logits = self.net(x)[crop]
        out = {"evidence": F.softplus(logits)}
        if self.training:  # as DareFuseNet: Dice and cross-entropy on the logits
            out["evidence_logits"] = logits
        return out
