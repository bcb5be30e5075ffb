"""Region Dice by voxel counts: numpy only (no torch), so that the Slicer module's self-test, the docs scripts
and training share one definition. `training/evaluate.py` scores reports with MONAI (Dice and HD95) on top."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .constants import REGIONS


def region_dice(label: np.ndarray, truth: np.ndarray, empty: Optional[float] = 1.0) -> List[Optional[float]]:
    """Dice of the BraTS regions WT, TC, ET (constants.REGIONS order) between two label arrays.
    A region empty in both gets `empty` (1.0 by the BraTS convention; None to leave it out of means)."""
    dice: List[Optional[float]] = []
    for labels in REGIONS.values():
        p, t = np.isin(label, labels), np.isin(truth, labels)
        dice.append(empty if not p.any() and not t.any() else 2.0 * (p & t).sum() / (p.sum() + t.sum()))
    return dice


def mask_dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty), e.g. a brain mask against the engine's."""
    p, t = np.asarray(mask) > 0, np.asarray(truth) > 0
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * float(np.count_nonzero(p & t)) / total
