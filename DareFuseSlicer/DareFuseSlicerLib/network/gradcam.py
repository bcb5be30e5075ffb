"""Multi-scale Grad-CAM++ of the class decision, with pytorch-grad-cam (3-D since grad-cam 1.5.7).

pytorch-grad-cam calls `model(input_tensor)` and expects class scores, so a small wrapper binds the
availability vector and maps the network's output dict to class logits. The maps of the target layers
(1/2, 1/4, 1/8 resolution) are each brought to the finest layer's size, normalised and averaged by the
library, then up-sampled to the input size here (`MultiScaleGradCAMPlusPlus`).
"""
from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from ..constants import CLASSES
from ..errors import InputError


class ClassScoreModel(nn.Module):
    """(x) -> class logits of `model` for a fixed availability vector `present` (B, 4)."""

    def __init__(self, model: nn.Module, present: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("present", present)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.class_logits(self.model(x, self.present))


class MultiScaleGradCAMPlusPlus(GradCAMPlusPlus):
    """pytorch-grad-cam's Grad-CAM++ whose per-layer maps meet at the finest target layer's size instead of
    the input's. The library resizes each map with SciPy's cubic-spline zoom on the CPU: at the input's size
    one window's pass with Grad-CAM++ took 1.20 s on an H200, at the finest layer's 0.25 s (docs/speed/).
    `maps` then brings the mean map to the input's size by trilinear interpolation."""

    def get_target_width_height(self, input_tensor: torch.Tensor):
        finest = max((a.shape[2:] for a in self.activations_and_grads.activations), key=lambda s: int(np.prod(s)))
        return tuple(int(v) for v in reversed(finest))  # the library's order: (x, y, z)

    def maps(self, input_tensor: torch.Tensor, targets) -> np.ndarray:
        """float32 (B, Z, Y, X) at the input's size: NaN-free (before interpolation, so that none spreads),
        each scaled so that its peak is 1 (all zeros where there is no evidence)."""
        heat = np.nan_to_num(np.asarray(self(input_tensor=input_tensor, targets=targets), dtype=np.float32))
        heat = F.interpolate(torch.from_numpy(heat)[:, None], size=tuple(input_tensor.shape[2:]), mode="trilinear",
                             align_corners=False)[:, 0].numpy()
        peak = heat.reshape(len(heat), -1).max(1).reshape(-1, 1, 1, 1)
        return np.clip(np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0), 0.0, 1.0)


def gradcam_pp(model: nn.Module, x: torch.Tensor, present: torch.Tensor, target_class) -> np.ndarray:
    """Grad-CAM++ heat map of `target_class` (index or name in constants.CLASSES) for one case.

    x (1, 4, Z, Y, X) or (4, Z, Y, X), present (1, 4) or (4,). Returns float32 (Z, Y, X) in [0, 1].
    """
    if isinstance(target_class, str):
        if target_class not in CLASSES:
            raise InputError(f"Unknown class {target_class!r} for Grad-CAM++; expected one of {list(CLASSES)}.")
        target_class = CLASSES.index(target_class)
    if not 0 <= int(target_class) < len(CLASSES):
        raise InputError(f"Class index {target_class} for Grad-CAM++ is out of range 0..{len(CLASSES) - 1}.")
    x = x if x.dim() == 5 else x[None]
    present = present if present.dim() == 2 else present[None]
    parameter = next(model.parameters())
    x = x.to(device=parameter.device, dtype=parameter.dtype)
    present = present.to(device=parameter.device, dtype=parameter.dtype)

    was_training = model.training
    model.eval()
    wrapper = ClassScoreModel(model, present)
    try:
        with torch.enable_grad(), MultiScaleGradCAMPlusPlus(model=wrapper,
                                                            target_layers=model.gradcam_target_layers()) as cam:
            return cam.maps(x, [ClassifierOutputTarget(int(target_class))])[0]
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
