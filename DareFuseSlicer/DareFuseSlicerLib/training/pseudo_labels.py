"""The mean teacher's pseudo-labels for `darefuse adapt`: which voxels of an unlabelled crop the student is
trained towards, and how.

A voxel's label is kept where the teacher's one-pass uncertainty K / sum(alpha) is below a threshold. One
threshold for every class (`--max-uncertainty`, 0.2) keeps almost no tumour voxel: the network's tumour
evidence is far lower than its background evidence. On the simulated site it kept 0.1 % of the voxels the
bundled model called enhancing tumour and none of those it called necrosis or oedema, though the ones with
uncertainty 0.3-0.4 were right 98-100 % of the time (docs/pseudo-labels.md). The unlabelled cases then taught
background only.

With `--pseudo-precision P` each class gets its own threshold, calibrated before the first step on the
site's labelled cases, which the starting model has not seen: walking up the uncertainty in bins, a class's
threshold is the top of the last bin in which the starting model's labels of that class were right at least
P of the time. A class whose labels never reach P (say necrosis at a site) gets no pseudo-labels at all.
`--background-precision P0` asks more of background alone: a wrong background label is always tumour, and with
millions of background labels even a few per cent wrong cover much of the tumour (docs/pseudo-labels.md).

With `--perturb-student` the student sees a strongly perturbed copy of each unlabelled crop and the teacher the
crop itself (the mean teacher's different noise for each; FixMatch's weak/strong pair): otherwise both see the
same input and the pseudo-label loss only sharpens what the student already says. The perturbation is
intensity-only, so the teacher's labels stay aligned with the student's voxels.

With `--pseudo-class-gate P`, an unlabelled crop on which the teacher's class head gives "no tumour" at least P
is labelled background throughout, every voxel kept. Without it the pseudo-labels keep the false tumour the
starting model puts on tumour-free brains, where its class head already says no tumour (issue 20, note 22).

With `--background-margin MM`, no background pseudo-label is kept within MM of a voxel the teacher labels tumour:
the tumour a teacher misses is mostly at the rim of what it finds, and a background label there trains the
student to shrink the tumour (docs/pseudo-labels.md). Calibration then counts only the labels that can be kept.

With `--balance-pseudo-classes`, each class present among a step's kept labels weighs the same in the loss:
background is about 99 % of them, so otherwise the unlabelled loss mostly says "background".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from monai.data import get_track_meta, set_track_meta
from monai.transforms import (Compose, RandBiasField, RandGaussianNoise, RandGaussianSmooth, RandScaleIntensity,
                              RandShiftIntensity)
from monai.transforms.utils_morphological_ops import dilate

from ..network.model import DareFuseNet

BIN_WIDTH = 0.05
MIN_BIN_VOXELS = 50  # a bin with fewer labels says too little about its precision
CALIBRATION_CROPS_PER_CASE = 4


# Fixed before any run with them (docs/label-curve-perturb-rule.txt), not tuned. Inputs are z-scored in the brain;
# the train augmentation's scale and shift are +-0.1. The first spatial axis is the slice axis: thick slices blur it.
STUDENT_PERTURBATION = {"scale": 0.25, "shift": 0.25, "bias_field_coeff": (0.0, 0.2), "bias_field_prob": 0.5,
                        "blur_sigma_slice": (0.5, 1.5), "blur_sigma_in_plane": (0.25, 0.75), "blur_prob": 0.5,
                        "noise_std": 0.1}


def _student_transforms() -> Compose:
    p = STUDENT_PERTURBATION
    return Compose([
        RandScaleIntensity(factors=p["scale"], prob=1.0, channel_wise=True),
        RandShiftIntensity(offsets=p["shift"], prob=1.0, channel_wise=True),
        RandBiasField(coeff_range=p["bias_field_coeff"], prob=p["bias_field_prob"]),
        RandGaussianSmooth(sigma_x=p["blur_sigma_slice"], sigma_y=p["blur_sigma_in_plane"],
                           sigma_z=p["blur_sigma_in_plane"], prob=p["blur_prob"]),
        RandGaussianNoise(prob=1.0, std=p["noise_std"]),
    ])


def perturb_student(x: torch.Tensor, foreground: torch.Tensor, present: torch.Tensor, seed: int) -> torch.Tensor:
    """The student's view of crops x (B, C, ...): each perturbed by its own seeded draw of STUDENT_PERTURBATION,
    then zero outside the brain (foreground (B, 1, ...)) and in missing contrasts (present (B, C)), as inputs are."""
    transforms = _student_transforms()
    tracking = get_track_meta()
    set_track_meta(False)
    try:
        views = []
        for b in range(x.shape[0]):
            transforms.set_random_state(seed=(seed + b) % 2 ** 32)
            views.append(torch.as_tensor(transforms(x[b].detach().cpu())).float())
    finally:
        set_track_meta(tracking)
    view = torch.stack(views).to(x.device)
    return view * foreground * present[(...,) + (None,) * (x.ndim - 2)]


def uncertainty(evidence: torch.Tensor) -> torch.Tensor:
    """The network's one-pass uncertainty K / sum(alpha) of evidence (B, K, ...), as (B, ...)."""
    return DareFuseNet.uncertainty({"evidence": evidence})[:, 0]


def pseudo_labels(evidence: torch.Tensor,
                  thresholds: Union[float, Sequence[float]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels (B, ...) and where they are kept (B, ...): uncertainty below the threshold, one
    for all classes (a float) or one per class (a sequence of K). evidence (B, K, ...) >= 0."""
    labels = evidence.argmax(1)
    limit = torch.as_tensor(thresholds, dtype=evidence.dtype, device=evidence.device)
    return labels, uncertainty(evidence) < (limit[labels] if limit.ndim else limit)


def margin_voxels(margin_mm: float, spacing_mm: float) -> int:
    """A margin in mm as whole voxels of the training grid (rounded; at least one voxel for any margin > 0)."""
    return max(1, round(margin_mm / spacing_mm)) if margin_mm > 0 else 0


def background_near_tumour(labels: torch.Tensor, margin: int) -> torch.Tensor:
    """Where labels (B, ...) say background within `margin` voxels (a cube: MONAI's square structuring element)
    of a voxel labelled tumour; none where margin is 0."""
    if margin <= 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    near = dilate((labels > 0).float()[:, None], filter_size=2 * margin + 1)[:, 0] > 0
    return near & (labels == 0)


def hold_back_background(labels: torch.Tensor, keep: torch.Tensor, margin: int) -> torch.Tensor:
    """keep (B, ...) without the background labels within `margin` voxels of the teacher's tumour."""
    return keep & ~background_near_tumour(labels, margin)


def gate_by_class(labels: torch.Tensor, keep: torch.Tensor, p_no_tumour: torch.Tensor,
                  gate: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels and keep (B, ...) with every crop whose P(no tumour) (B,) is at least `gate` set to background and
    kept throughout; and which crops were gated (B,). `gate` None: unchanged, none gated."""
    gated = torch.zeros_like(p_no_tumour, dtype=torch.bool) if gate is None else p_no_tumour >= gate
    where = gated[(...,) + (None,) * (labels.ndim - 1)]
    return labels.masked_fill(where, 0), keep | where, gated


def ramp_weight(step: int, ramp_up: int) -> float:
    """The pseudo-label loss's share at a step: exp(-5 (1 - step/ramp_up)^2) until ramp_up, then 1 (the
    mean teacher's sigmoid ramp-up, Laine & Aila 2017): early on the teacher is still the starting model."""
    if ramp_up <= 0 or step >= ramp_up:
        return 1.0
    return float(np.exp(-5.0 * (1.0 - step / ramp_up) ** 2))


def pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                      balanced: bool = False) -> torch.Tensor:
    """Cross-entropy of the student's logits against the kept pseudo-labels (0 with a gradient when none is kept):
    the mean over kept voxels, or `balanced`, the mean over the classes present among them of each one's mean."""
    per_voxel = F.cross_entropy(logits, labels, reduction="none")
    if not keep.any():
        return per_voxel.sum() * 0.0
    if not balanced:
        return per_voxel[keep].mean()
    kept, classes = per_voxel[keep], labels[keep]
    return torch.stack([kept[classes == c].mean() for c in classes.unique()]).mean()


@dataclass
class Calibration:
    thresholds: List[float]  # per class; 0: never kept
    precision: float
    voxels: List[int]  # labels of each class seen on the labelled crops
    background_precision: Optional[float] = None  # background's own target (None: `precision`)

    def as_card(self) -> dict:
        return {"target_precision": self.precision, "background_precision": self.background_precision,
                "thresholds": [round(t, 3) for t in self.thresholds],
                "calibration_voxels": self.voxels, "bin_width": BIN_WIDTH, "min_bin_voxels": MIN_BIN_VOXELS}


def class_threshold(u: np.ndarray, right: np.ndarray, precision: float) -> float:
    """The top of the last uncertainty bin, walking up from 0, in which a class's labels were right at least
    `precision` of the time. Sparse bins before the first full one are passed over; after it, a sparse bin or
    one below `precision` ends the walk. 0.0 when the first full bin already falls short (or none is full)."""
    threshold = 0.0
    for low in np.arange(0.0, 1.0, BIN_WIDTH):
        in_bin = (u >= low) & (u < low + BIN_WIDTH)
        n = int(in_bin.sum())
        if n < MIN_BIN_VOXELS:
            if threshold > 0.0:
                break
            continue
        if right[in_bin].mean() < precision:
            break
        threshold = float(low + BIN_WIDTH)
    return round(threshold, 6)


@dataclass
class TeacherVoxels:
    """The teacher's uncertainty and label, the truth, and whether --background-margin holds the label back, of
    every voxel of labelled crops, flattened; and the number of classes."""
    u: np.ndarray
    labels: np.ndarray
    truth: np.ndarray
    held_back: np.ndarray
    n_classes: int


def teacher_voxels(teacher: torch.nn.Module, crops: Iterable[dict], device: torch.device,
                   check: Optional[Callable[[], None]] = None, margin: int = 0) -> TeacherVoxels:
    """The teacher on labelled crops (each {"image", "present", "label"}); `margin` in voxels as in
    background_near_tumour. `check` runs before each crop (cancellation)."""
    us, predicted, truth, held_back = [], [], [], []
    teacher.eval()
    for crop in crops:
        if check is not None:
            check()
        with torch.no_grad():
            evidence = teacher(crop["image"][None].to(device), crop["present"][None].to(device),
                               use_prior=True)["evidence"]
        labels = evidence.argmax(1)
        us.append(uncertainty(evidence)[0].cpu().numpy().ravel())
        predicted.append(labels[0].cpu().numpy().ravel())
        truth.append(crop["label"].numpy().ravel())
        held_back.append(background_near_tumour(labels, margin)[0].cpu().numpy().ravel())
    return TeacherVoxels(np.concatenate(us), np.concatenate(predicted), np.concatenate(truth),
                         np.concatenate(held_back), int(evidence.shape[1]))


def calibrate(teacher: torch.nn.Module, crops: Iterable[dict], precision: float, device: torch.device,
              check: Optional[Callable[[], None]] = None, background_precision: Optional[float] = None,
              margin: int = 0) -> Calibration:
    """Per-class thresholds from the teacher's labels on labelled crops: see calibrate_voxels."""
    return calibrate_voxels(teacher_voxels(teacher, crops, device, check, margin), precision, background_precision)


def calibrate_voxels(v: TeacherVoxels, precision: float, background_precision: Optional[float] = None) -> Calibration:
    """Per-class thresholds (class_threshold) from the teacher's voxels. Background (class 0) is held to
    `background_precision` where given; labels the margin holds back are not counted."""
    thresholds, voxels = [], []
    for c in range(v.n_classes):
        mine = (v.labels == c) & ~v.held_back
        voxels.append(int(mine.sum()))
        target = background_precision if c == 0 and background_precision is not None else precision
        thresholds.append(class_threshold(v.u[mine], v.truth[mine] == c, target))
    return Calibration(thresholds, precision, voxels, background_precision)
