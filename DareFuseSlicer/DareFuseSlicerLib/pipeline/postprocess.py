"""BraTS-style post-processing of a label map (0 background, 1 NETC, 2 SNFH, 3 ET) on the reference grid.

Per nested region, connected components smaller than a volume are removed, from the outside in, so that the
nesting WT > TC > ET is kept: a small WT component becomes background, a small TC component becomes SNFH
(it stays in WT), a small ET component becomes NETC (it stays in TC). Then, when the total ET is tiny, all ET is
relabelled as NETC, as nnU-Net does for BraTS: a few false-positive ET voxels cost a whole case's ET Dice.

The class gate (off unless tuned): when the class head gives "no tumour" a probability of at least
`no_tumour_gate`, the label map is cleared. On tumour-free brains a few millilitres of false positives cost the
whole case (Dice 0 where an empty map scores 1), and the class head separates tumour-free brains far better
than the segmentation's volume does; the prior alone did not remove them (README, Model card).

The class rule (off unless tuned): when post-processing leaves no tumour, the reported class is no_tumour
(`reported_class`). A class head can call a tumour-free brain a tumour with no voxel segmented; a class that
contradicts the segments shown beside it confuses a reader. `darefuse evaluate --tune` turns the rule on only
when it raises the class accuracy on the validation cases.

Thresholds are in mL, so that they mean the same on any voxel size. Defaults from the literature
(shared/notes/anchors.md): the BraTS 2023 winner drops components under WT 250 / TC 150 / ET 100 voxels of
1 mm^3; nnU-Net (BraTS 2020) chose its ET-to-NETC threshold by cross-validation, of the order of 500 voxels.
These are starting points: `darefuse evaluate --tune VAL --record` chooses them on validation data and writes
them into the model's card, and the pipeline then uses the card's thresholds (`config_for_card`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..constants import CLASSES, LABELS, REGIONS

NETC, SNFH, ET = 1, 2, 3
#: Tumour classes that enhance (ET): every meningioma, every metastasis' core; only gliomas present without.
ENHANCING_CLASSES = ("meningioma", "metastasis")
#: The contrast enhancement is seen on: without it, no ET in the map says nothing about enhancement.
ENHANCEMENT_CONTRAST = "t1ce"
#: The class the oedema doubt questions, and the class its disproportionate oedema suggests.
OEDEMA_DOUBTED_CLASS, OEDEMA_SUGGESTED_CLASS = "glioma", "metastasis"


@dataclass
class PostprocessConfig:
    wt_min_ml: float = 0.25  # 250 voxels of 1 mm^3
    tc_min_ml: float = 0.15  # 150 voxels
    et_min_ml: float = 0.10  # 100 voxels
    et_to_netc_ml: float = 0.5  # total ET below this is relabelled NETC
    fully_connected: bool = True  # 26-connectivity: voxels touching at a corner are one component
    no_tumour_gate: Optional[float] = None  # clear the map when P(no tumour) >= this; None: no gate
    empty_means_no_tumour: bool = False  # report no_tumour when the post-processed map holds no tumour
    non_enhancing_glioma_ml: Optional[float] = None  # the enhancement rule: see reported_class; None: off
    class_doubt_below: Optional[float] = None  # the class doubt: see class_in_doubt; None: off
    oedema_doubt_above: Optional[float] = None  # the oedema doubt: see oedema_in_doubt; None: off

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, float]) -> "PostprocessConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown post-processing settings {unknown}")
        return cls(**values)


#: Where a model card keeps the thresholds chosen for it on validation data.
CARD_KEY = "postprocess"


def config_for_card(card: Optional[dict]) -> Tuple[PostprocessConfig, str]:
    """The thresholds to use with a model and where they come from: the card's tuned ones when it has them,
    else the literature defaults (a user model whose card was never tuned)."""
    tuned = (card or {}).get(CARD_KEY)
    if not tuned:
        return PostprocessConfig(), "literature defaults"
    return PostprocessConfig.from_dict(tuned["config"]), f"tuned on {tuned.get('tuned_on') or 'validation data'}"


def _small_components(mask: np.ndarray, min_voxels: int, fully_connected: bool) -> np.ndarray:
    """Voxels of `mask` in connected components of fewer than `min_voxels` voxels."""
    if min_voxels <= 1 or not mask.any():
        return np.zeros_like(mask, dtype=bool)
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), fully_connected)
    kept = sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels), sortByObjectSize=False)
    return mask & (sitk.GetArrayViewFromImage(kept) == 0)


def _voxels(ml: float, voxel_ml: float) -> int:
    return int(math.ceil(ml / voxel_ml - 1e-9)) if ml > 0 else 0


def gate_closes(config: PostprocessConfig, no_tumour_probability: Optional[float]) -> bool:
    """Whether the class gate clears the label map (never without a class probability: segmentation-only
    models have none)."""
    return (config.no_tumour_gate is not None and no_tumour_probability is not None
            and no_tumour_probability >= config.no_tumour_gate)


def shown_enhancement_ml(volumes: Dict[str, float], given: Iterable[str]) -> Optional[float]:
    """The map's ET volume (mL) as evidence of enhancement for reported_class: None when ENHANCEMENT_CONTRAST
    was not given (or was left out), since then no ET shown says nothing about enhancement."""
    return volumes["ET"] if ENHANCEMENT_CONTRAST in set(given) else None


def reported_class(config: PostprocessConfig, class_probabilities: Sequence[float], tumour_found: bool,
                   et_ml: Optional[float] = None) -> int:
    """Index (into CLASSES) of the class to report: the class head's arg-max, or no_tumour when the class
    rule is on and the post-processed map holds no tumour, or glioma when the enhancement rule is on and the
    class head calls an enhancing class (ENHANCING_CLASSES) while the map shows tumour with at most
    `non_enhancing_glioma_ml` mL of ET (et_ml, shown_enhancement_ml; None: enhancement unseen, no rule)."""
    if config.empty_means_no_tumour and not tumour_found:
        return CLASSES.index("no_tumour")
    head = int(np.argmax(class_probabilities))
    if (config.non_enhancing_glioma_ml is not None and tumour_found and CLASSES[head] in ENHANCING_CLASSES
            and et_ml is not None and et_ml <= config.non_enhancing_glioma_ml):
        return CLASSES.index("glioma")
    return head


def class_in_doubt(config: PostprocessConfig, class_probabilities: Sequence[float]) -> bool:
    """Whether the class head is too unsure for its answer to stand unflagged: its top probability is below
    `class_doubt_below` (chosen on development sets: training/class_doubt_eval.py). Off when None."""
    return config.class_doubt_below is not None and float(np.max(class_probabilities)) < config.class_doubt_below


def oedema_ratio(volumes: Dict[str, float]) -> Optional[float]:
    """Oedema (SNFH) over tumour core (TC) in the map, in mL; inf for oedema around no core, None for no oedema."""
    if volumes["SNFH"] <= 0.0:
        return None
    return volumes["SNFH"] / volumes["TC"] if volumes["TC"] > 0.0 else math.inf


def oedema_in_doubt(config: PostprocessConfig, reported: str, volumes: Dict[str, float]) -> bool:
    """Whether a glioma call stands against its own map: oedema more than `oedema_doubt_above` times the tumour
    core, disproportionate as around metastases (chosen on development sets, where every metastasis called glioma
    had it, at up to 1.00: training/class_doubt_eval.py; the held-out set after did not confirm it,
    docs/oedema-doubt-dev.md). Off when None."""
    ratio = oedema_ratio(volumes)
    return (config.oedema_doubt_above is not None and reported == OEDEMA_DOUBTED_CLASS and ratio is not None
            and ratio > config.oedema_doubt_above)


def postprocess(label: np.ndarray, voxel_ml: float, config: PostprocessConfig = PostprocessConfig(),
                no_tumour_probability: Optional[float] = None) -> np.ndarray:
    """The post-processed copy of `label` (uint8, any shape, voxels of `voxel_ml` mL each);
    no_tumour_probability: the class head's P(no tumour) for the class gate."""
    if voxel_ml <= 0:
        raise ValueError("voxel_ml must be positive")
    if gate_closes(config, no_tumour_probability):
        return np.zeros(np.shape(label), np.uint8)
    out = np.array(label, dtype=np.uint8, copy=True)
    c = config
    out[_small_components(out > 0, _voxels(c.wt_min_ml, voxel_ml), c.fully_connected)] = 0
    out[_small_components((out == NETC) | (out == ET), _voxels(c.tc_min_ml, voxel_ml), c.fully_connected)] = SNFH
    out[_small_components(out == ET, _voxels(c.et_min_ml, voxel_ml), c.fully_connected)] = NETC
    if np.count_nonzero(out == ET) * voxel_ml < c.et_to_netc_ml:
        out[out == ET] = NETC
    return out


def removed_parts(before: np.ndarray, after: np.ndarray, voxel_ml: float,
                  fully_connected: bool = True) -> List[Tuple[float, Tuple[int, int, int]]]:
    """The whole-tumour parts post-processing removed (labelled in `before`, background in `after`), largest
    first: (volume in mL, the (z, y, x) index nearest its centroid; the parts are small, so it lies in or by
    them). A run reports them, because a real lesion can be smaller than a threshold tuned on the data engine,
    whose lesions are all several mL."""
    removed = (np.asarray(before) > 0) & (np.asarray(after) == 0)
    if not removed.any():
        return []
    parts = sitk.ConnectedComponent(sitk.GetImageFromArray(removed.astype(np.uint8)), fully_connected)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(parts)  # the image has unit spacing and no origin: centroids are (x, y, z) indices
    found = [(shapes.GetNumberOfPixels(part) * float(voxel_ml),
              tuple(int(round(v)) for v in shapes.GetCentroid(part)[::-1])) for part in shapes.GetLabels()]
    return sorted(found, key=lambda part: -part[0])


def volumes_ml(label: np.ndarray, voxel_ml: float) -> Dict[str, float]:
    """Volumes of NETC, SNFH, ET and of the regions WT and TC, in mL."""
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=4)
    volumes = {name: float(counts[value] * voxel_ml) for value, name in LABELS.items()}
    for region in ("WT", "TC"):
        volumes[region] = float(sum(counts[v] for v in REGIONS[region]) * voxel_ml)
    return volumes
