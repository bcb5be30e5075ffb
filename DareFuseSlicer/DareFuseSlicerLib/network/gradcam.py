"""Multi-scale Grad-CAM++ of the class decision, with pytorch-grad-cam (3-D since grad-cam 1.5.7).

pytorch-grad-cam calls `model(input_tensor)` and expects class scores, so a small wrapper binds the
availability vector and maps the network's output dict to class logits. The maps of the target layers
(1/2, 1/4, 1/8 resolution) are each up-sampled to the input size, normalised and averaged by the library.
"""
from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

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
        with torch.enable_grad(), GradCAMPlusPlus(model=wrapper, target_layers=model.gradcam_target_layers()) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target_class))])
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    heat = np.nan_to_num(np.asarray(heat[0], dtype=np.float32))
    peak = float(heat.max())
    return np.clip(heat / peak, 0.0, 1.0) if peak > 0 else heat
