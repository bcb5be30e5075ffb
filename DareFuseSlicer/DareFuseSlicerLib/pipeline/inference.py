"""Sliding-window inference (MONAI) over the 2 mm pre-processed array, with progress and cancel per window.

The window is fitted to the brain: each axis of the ROI is the array's size rounded up to the network's
stride, capped at `max_roi`. At 2 mm a whole adult brain box (about 80x96x80 voxels) is then one window:
no voxel is computed twice, and the padding is under one stride per axis. Larger inputs (children of the
cap) are tiled with `overlap`; the cap bounds the network's memory whatever the input's size.

When the whole brain is one window, Grad-CAM++ shares that window's forward pass: the pass runs with
gradients recorded only downstream of the Grad-CAM target layers (every other parameter is frozen for it),
and pytorch-grad-cam back-propagates the predicted class's score from it. Segmentation, uncertainty, class,
prior and Grad-CAM++ then all come from one forward pass; with several windows, Grad-CAM++ is a separate
pass over the whole array (network.gradcam.gradcam_pp), as the class decision is global.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from ..errors import InputError
from ..progress import CancelFn, ProgressFn, check_cancel
from .process_stats import process_age_s


#: Largest window along each axis, in 2 mm voxels (256 mm: every adult head fits in one window).
#: A multiple of 32 so that, with overlap 0.25, window steps stay whole voxels of the 1/8 class-evidence map.
MAX_ROI = (128, 128, 128)
OVERLAP = 0.25


@dataclass
class WindowPlan:
    roi: Tuple[int, int, int]
    overlap: float
    n_windows: int


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding_window_inference runs over `shape` (after its padding to the ROI)."""
    padded = [max(s, r) for s, r in zip(shape, roi)]
    # MONAI's own scan interval rule: a full window step where the ROI covers the axis, else roi * (1 - overlap).
    interval = [r if r == p else max(int(r * (1.0 - overlap)), 1) for r, p in zip(roi, padded)]
    return len(dense_patch_slices(padded, roi, interval))


def plan_windows(shape: Sequence[int], stride: int = 8, max_roi: Sequence[int] = MAX_ROI,
                 overlap: float = OVERLAP) -> WindowPlan:
    """The ROI for an array of spatial `shape` (see the module docstring). At least two strides per axis:
    the bottleneck's instance normalisation needs more than one voxel (MONAI pads smaller inputs)."""
    roi = tuple(min(max(_round_up(int(s), stride), 2 * stride), int(m)) for s, m in zip(shape, max_roi))
    return WindowPlan(roi, overlap, count_windows(shape, roi, overlap))


@contextmanager
def gradients_only_for(model: torch.nn.Module, layers: List[torch.nn.Module]) -> Iterator[None]:
    """Freeze every parameter but those of `layers` for the duration: autograd then records (and Grad-CAM
    back-propagates through) only what lies downstream of the target layers, not the whole network."""
    keep = {id(p) for layer in layers for p in layer.parameters()}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class WindowPredictor:
    """MONAI's predictor: runs the network on a batch of windows, reports progress and honours cancel.

    The availability vector is the same for every window of a case, so it is bound here and expanded to the
    batch of windows MONAI passes. With `gradcam`, each window's pass also yields its Grad-CAM++ map of its
    predicted class as an extra output "gradcam" (1 channel, in [0, 1]); used only when there is one window,
    whose prediction is then the case's.
    """

    def __init__(self, model: torch.nn.Module, present: torch.Tensor, n_windows: int,
                 progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                 autocast_device: Optional[str] = None, autocast_dtype: Optional[torch.dtype] = None,
                 gradcam: bool = False):
        self.model = model
        self.present = present
        self.n_windows = n_windows
        self.progress = progress
        self.cancel = cancel
        self.autocast_device = autocast_device
        self.autocast_dtype = autocast_dtype
        self.gradcam = gradcam
        self.done = 0
        self.seconds_per_window: List[float] = []
        self.gradcam_seconds = 0.0  # Grad-CAM++'s own share (backward and maps), beyond the forward pass
        self.first_window_s: Optional[float] = None  # process_age_s() when the first window started

    def _forward(self, windows: torch.Tensor, present: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.autocast_dtype is None:
            return self.model(windows, present)
        with torch.autocast(self.autocast_device, dtype=self.autocast_dtype):
            out = self.model(windows, present)
        return {k: v.float() for k, v in out.items()}

    def _forward_with_gradcam(self, windows: torch.Tensor, present: torch.Tensor) -> Dict[str, torch.Tensor]:
        from ..network.gradcam import ClassScoreModel, MultiScaleGradCAMPlusPlus  # imports pytorch-grad-cam

        predictor = self

        class Recorder(ClassScoreModel):
            """Class scores for pytorch-grad-cam; keeps the whole output dict of the same pass."""

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                start = time.perf_counter()
                out = predictor._forward(x, self.present)
                self.outputs = {k: v.detach() for k, v in out.items()}
                self.seconds = time.perf_counter() - start
                return self.model.class_logits(out)

        layers = self.model.gradcam_target_layers()
        recorder = Recorder(self.model, present)
        start = time.perf_counter()
        with torch.enable_grad(), gradients_only_for(self.model, layers), \
                MultiScaleGradCAMPlusPlus(model=recorder, target_layers=layers) as cam:
            heat = cam.maps(windows, None)  # None: each window's predicted class
        self.model.zero_grad(set_to_none=True)
        self.gradcam_seconds += time.perf_counter() - start - recorder.seconds
        out = dict(recorder.outputs)
        out["gradcam"] = torch.from_numpy(heat)[:, None].to(windows.device)
        return out

    def __call__(self, windows: torch.Tensor) -> Dict[str, torch.Tensor]:
        check_cancel(self.cancel)
        if self.first_window_s is None:
            self.first_window_s = process_age_s()
        start = time.perf_counter()
        present = self.present.to(windows.device).expand(windows.shape[0], -1)
        if self.gradcam:
            out = self._forward_with_gradcam(windows, present)
        else:
            out = self._forward(windows, present)  # under infer()'s no_grad
        self.done += windows.shape[0]
        self.seconds_per_window.append((time.perf_counter() - start) / windows.shape[0])
        if self.progress is not None:
            self.progress(self.done / self.n_windows, f"network: window {self.done} of {self.n_windows}")
        return out


def resolve_device(device: str) -> torch.device:
    """A torch device from the user's choice, or an InputError saying why it cannot be used."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"Unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N').") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {device!r} was asked for, but no CUDA GPU is available here; use 'cpu'.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"Device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found.")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"Device {device!r} is not supported; use 'cpu' or 'cuda'.")
    return resolved


def infer(model: torch.nn.Module, array: np.ndarray, present: np.ndarray, device: str = "cpu",
          plan: Optional[WindowPlan] = None, sw_batch_size: int = 1, mixed_precision: bool = False,
          gradcam: bool = False, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None
          ) -> Tuple[Dict[str, torch.Tensor], WindowPlan, WindowPredictor]:
    """Run the network over `array` (4, Z, Y, X) with availability `present` (4,).

    Returns the stitched output dict (tensors (1, C, ...) on the CPU, all at the input's size, the class-evidence
    map piecewise constant on 8x8x8 blocks, plus "gradcam" (1, 1, ...) when `gradcam` was asked for and the
    plan has a single window), the window plan and the predictor (for its timings). fp32 by default: float16
    autocast (`mixed_precision`, a GPU only) made one window slower on an H200 (0.115 against 0.094 s, and
    0.62 against 0.25 s with Grad-CAM++; benchmarks/bench_network_device.py), and on the CPU bfloat16
    autocast and channels-last were slower too (3.5-4.1 s fp32 against 5.6-7.2 s bf16 for one 88x104x96
    window, 2 threads, a CPU with AMX). Raises errors.Cancelled between windows.
    """
    torch_device = resolve_device(device)
    plan = plan or plan_windows(array.shape[1:], getattr(model, "stride", 8))
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None].to(torch_device)
    present_t = torch.from_numpy(np.asarray(present, dtype=np.float32))[None]
    use_amp = mixed_precision and torch_device.type == "cuda"
    predictor = WindowPredictor(model, present_t, plan.n_windows, progress, cancel,
                                autocast_device=torch_device.type if use_amp else None,
                                autocast_dtype=torch.float16 if use_amp else None,
                                gradcam=gradcam and plan.n_windows == 1)
    if progress is not None:
        progress(0.0, f"network: {plan.n_windows} window(s) of {'x'.join(map(str, plan.roi))}")
    model.eval()
    # no_grad rather than inference_mode: the Grad-CAM++ window turns gradients back on for its pass.
    with torch.no_grad():
        out = sliding_window_inference(
            x, roi_size=plan.roi, sw_batch_size=sw_batch_size, predictor=predictor, overlap=plan.overlap,
            mode="gaussian" if plan.n_windows > 1 else "constant", device=torch.device("cpu"),
        )
    return {k: v.float() for k, v in out.items()}, plan, predictor
