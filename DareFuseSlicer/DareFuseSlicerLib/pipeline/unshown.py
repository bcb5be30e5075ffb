"""Unshown tumour: parts the network finds likely tumour that the map shown does not hold (numpy, SimpleITK).

Post-processing removes small parts and the class gate can clear the whole map; either can hide a real lesion
(a raw engine study's 6.7 mL meningioma, 733014, was shown as an empty map with the class head at 0.994 for no
tumour: a confident wrong answer). The network's own probability still marks such a place, so a run reports the
parts of P(tumour) = 1 - p(background) >= `probability` that share no voxel with the shown map, largest expected
volume (the sum of P(tumour), mL) first; with the model card's `alarm_ml` set, one at least that large makes the
run low confidence, and the warning says where. The card's setting is chosen by a rule on development sets
(README, Model card); without it parts are reported, never an alarm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .review import index_to_ras, ras_places

#: Where a model card keeps the setting.
CARD_KEY = "unshown"
#: How many parts a report lists.
REPORTED = 5


@dataclass
class UnshownConfig:
    probability: float = 0.5  # P(tumour) at or above which a voxel belongs to a part
    alarm_ml: Optional[float] = None  # a part of at least this expected volume makes the run low confidence

    def __post_init__(self):
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"unshown probability {self.probability}: it must lie between 0 and 1")
        if self.alarm_ml is not None and self.alarm_ml <= 0.0:
            raise ValueError(f"unshown alarm_ml {self.alarm_ml}: it must be positive (or None: no alarm)")

    def as_dict(self) -> dict:
        return asdict(self)


def config_for_card(card: Optional[dict]) -> Tuple[UnshownConfig, str]:
    """The setting of a model and where it comes from (its card's, else reported parts and no alarm)."""
    chosen = (card or {}).get(CARD_KEY)
    if not chosen:
        return UnshownConfig(), "defaults (no alarm)"
    return UnshownConfig(**chosen["config"]), chosen.get("chosen_on") or "the model card"


@dataclass
class UnshownPart:
    expected_ml: float  # sum of P(tumour) over the part
    volume_ml: float
    peak_probability: float
    centre_zyx: Tuple[int, int, int]  # the voxel index at its centroid (which may lie outside a curved part)
    label: int = 0  # its value in `label_parts`' map

    def as_dict(self, reference: sitk.Image) -> dict:
        return {"expected_ml": round(self.expected_ml, 3), "volume_ml": round(self.volume_ml, 3),
                "peak_probability": round(self.peak_probability, 3),
                "centre_ras": [round(v, 1) for v in index_to_ras(reference, self.centre_zyx)]}


def label_parts(tumour_probability: np.ndarray, probability: float) -> sitk.Image:
    """The 26-connected parts of tumour_probability >= probability, labelled 1..n (0 elsewhere), on a unit grid."""
    candidate = np.asarray(tumour_probability) >= probability
    return sitk.ConnectedComponent(sitk.GetImageFromArray(candidate.astype(np.uint8)), True)


def unshown_parts(tumour_probability: np.ndarray, shown: np.ndarray, voxel_ml: float, probability: float,
                  parts: Optional[sitk.Image] = None) -> List[UnshownPart]:
    """The parts of tumour_probability >= probability (`label_parts`, given or made) sharing no voxel with
    `shown` (the label map given out), largest expected volume first. Both are (z, y, x) arrays on one grid."""
    values = np.asarray(tumour_probability, np.float32)
    parts = label_parts(values, probability) if parts is None else parts
    flat = sitk.GetArrayViewFromImage(parts).ravel()
    count = int(flat.max()) if flat.size else 0
    if count == 0:
        return []
    sums = np.bincount(flat, values.ravel().astype(np.float64), count + 1)
    keep = np.ones(count + 1, bool)
    keep[0] = False
    keep[np.unique(flat[np.asarray(shown).ravel() > 0])] = False
    shapes, intensities = sitk.LabelShapeStatisticsImageFilter(), sitk.LabelStatisticsImageFilter()
    shapes.Execute(parts)  # unit spacing, no origin: centroids are (x, y, z) indices
    intensities.Execute(sitk.GetImageFromArray(values), parts)
    found = [UnshownPart(float(sums[c]) * voxel_ml, shapes.GetNumberOfPixels(int(c)) * float(voxel_ml),
                         float(intensities.GetMaximum(int(c))),
                         tuple(int(round(v)) for v in shapes.GetCentroid(int(c))[::-1]), int(c))
             for c in np.flatnonzero(keep)]
    return sorted(found, key=lambda part: -part.expected_ml)


def alarm(parts: List[UnshownPart], config: UnshownConfig, reference: sitk.Image) -> List[str]:
    """The doubt a part at least config.alarm_ml large raises (none without an alarm setting)."""
    if config.alarm_ml is None or not parts or parts[0].expected_ml < config.alarm_ml:
        return []
    large = [part for part in parts if part.expected_ml >= config.alarm_ml]
    places = ras_places([index_to_ras(reference, part.centre_zyx) for part in large])
    return [f"the network finds {len(large)} place(s) more likely tumour than not (P >= {config.probability:g}, "
            f"{large[0].expected_ml:.1f} mL expected in the largest) that the segmentation does not show, at RAS "
            f"{places} mm: look there, and run again without the class gate if it cleared the map"]
