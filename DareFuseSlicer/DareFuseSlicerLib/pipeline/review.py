"""Review regions: the places a reviewer should check first, ranked (issue 18). numpy and SciPy only.

A voxel's error probability is read from the margin between its two most probable labels (expected Dirichlet
probabilities) and its predicted label, through calibration curves measured on validation cases (one per label).
On the bundled model's validation cases (its card's review.config.calibration_error, written by `darefuse
evaluate --tune data/val --record`), background voxels within 5 mm of a tumour with a margin under 0.1 were
wrong 57-62 % of the time, tumour voxels with the same margin 32-49 %, and voxels with a margin over 0.8 almost
never. The predicted label matters because the model tends to
stop short of the tumour's edge: a doubtful background voxel beside it is more often tumour than a doubtful tumour
voxel is background. The uncertainty K / sum(alpha) predicts errors far less well here: it is high through whole
tumours, not only where the labels are in doubt.

Three kinds of place, merged where they touch, within `near_mm` of the tumour segments:
- doubtful: voxels whose error probability reaches `threshold`;
- island: a component of a segment, apart from that segment's largest, of at most `island_max_ml`;
- gap: a thin cleft (narrower than about `gap_mm`) in the whole tumour, the tumour core or the enhancing tumour,
  filled by a morphological closing.
Each connected component of their union is a region, ranked by `rank_by` (RANK_KEYS). The settings live in the
model card's "review" entry, chosen on validation data (`darefuse evaluate --tune`); ReviewConfig's defaults,
for a model whose card has none, are the bundled model's choice with its curves rounded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..constants import LABELS, REGIONS

#: Where a model card keeps its review settings.
CARD_KEY = "review"
#: How regions may be ranked (larger first): name -> description.
RANK_KEYS = {
    "expected_error": "expected wrong volume (sum of the error probability), largest first",
    "error_density": "mean error probability, highest first",
    "volume": "volume, largest first (the size baseline)",
}
#: Kinds of place, in the order they are reported.
KINDS = ("doubtful", "island", "gap")
FULL_CONNECTIVITY = np.ones((3, 3, 3), bool)


@dataclass
class ReviewConfig:
    threshold: float = 0.3  # error probability at or above which a voxel is doubtful
    near_mm: float = 5.0  # doubtful voxels count up to this distance from the tumour segments
    min_ml: float = 0.02  # regions smaller than this are dropped (noise at the voxel scale)
    island_max_ml: float = 0.5  # largest segment component still called an island
    gap_mm: float = 2.0  # clefts narrower than about this are gaps
    max_extent_mm: Optional[float] = None  # a place longer than this along an axis is cut into equal parts
    rank_by: str = "expected_error"
    max_regions: int = 20  # regions listed and drawn in review_regions.nii.gz (uint8: at most 255)
    #: Error probability as a function of the top-two margin, one curve per predicted label (0 background, 1 NETC,
    #: 2 SNFH, 3 ET), piecewise linear through these points. The defaults are a rounded version of the bundled
    #: model's validation curves, for a model whose card has none.
    calibration_margin: Tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    calibration_error: Tuple[Tuple[float, ...], ...] = (
        (0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0.0),
        (0.45, 0.3, 0.2, 0.1, 0.02, 0.0, 0.0, 0.0, 0.0),
        (0.35, 0.25, 0.15, 0.1, 0.05, 0.01, 0.0, 0.0, 0.0),
        (0.35, 0.25, 0.15, 0.1, 0.05, 0.01, 0.0, 0.0, 0.0),
    )
    #: Uncertainty below this is drawn transparent in the slice views. On the bundled model's validation cases
    #: 96 % of the brain's voxels lie below 0.3 and they hold 11 % of the wrong ones (at 0.1, the earlier
    #: display threshold, 46 % of the brain was coloured): benchmarks/review_tuning.py --bands.
    overlay_threshold: float = 0.3

    def __post_init__(self):
        if self.rank_by not in RANK_KEYS:
            raise ValueError(f"unknown review ranking {self.rank_by!r}; known: {sorted(RANK_KEYS)}")
        rows = [list(row) for row in self.calibration_error]
        if len(rows) != 1 + len(LABELS) or any(len(row) != len(self.calibration_margin) for row in rows) \
                or len(self.calibration_margin) < 2:
            raise ValueError("the review calibration needs one curve per label (background, NETC, SNFH, ET), each "
                             "with an error rate for every margin, at least two")
        if np.any(np.diff(self.calibration_margin) <= 0):
            raise ValueError("the review calibration's margins must increase")
        if not 1 <= self.max_regions <= 255:
            raise ValueError(f"max_regions {self.max_regions}: the region map holds 1 to 255 regions")
        self.calibration_margin = tuple(float(v) for v in self.calibration_margin)
        self.calibration_error = tuple(tuple(float(v) for v in row) for row in rows)

    def as_dict(self) -> dict:
        values = asdict(self)
        values["calibration_margin"] = list(self.calibration_margin)
        values["calibration_error"] = [list(row) for row in self.calibration_error]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ReviewConfig":
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown review settings {unknown}")
        return cls(**values)


def config_for_card(card: Optional[dict]) -> Tuple[ReviewConfig, str]:
    """The review settings of a model and where they come from (its card's tuned ones, else the defaults)."""
    tuned = (card or {}).get(CARD_KEY)
    if not tuned:
        return ReviewConfig(), "defaults"
    return ReviewConfig.from_dict(tuned["config"]), f"tuned on {tuned.get('tuned_on') or 'validation data'}"


@dataclass
class ReviewRegion:
    rank: int
    centre_ras: Tuple[float, float, float]  # a voxel of the region nearest its centre of mass, in RAS mm
    volume_ml: float
    mean_uncertainty: float
    peak_uncertainty: float
    segments: List[str]  # segments in or next to the region, most voxels first (the first is the one to edit)
    expected_error_ml: float  # sum of the error probability over the region, in mL
    kinds: List[str]  # among KINDS
    mean_error_probability: float = 0.0

    def as_dict(self) -> dict:
        values = asdict(self)
        values["centre_ras"] = [round(v, 2) for v in self.centre_ras]
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}


@dataclass
class ReviewResult:
    regions: List[ReviewRegion]  # ranked, at most config.max_regions
    label_map: np.ndarray  # uint8 (z, y, x) on the reference grid: region of rank k labelled k, 0 elsewhere
    message: str  # what was found, or why nothing was
    settings: dict = field(default_factory=dict)

    def table(self) -> List[dict]:
        return [region.as_dict() for region in self.regions]


def top_two_margin(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """p(first) - p(second) of same-shape label probability maps, channel by channel (no (K, ...) stack)."""
    best = np.array(probabilities[0], np.float32, copy=True)
    second = np.zeros_like(best)
    for channel in probabilities[1:]:
        channel = np.asarray(channel, np.float32)
        np.copyto(second, np.maximum(second, np.minimum(best, channel)))
        np.maximum(best, channel, out=best)
    return best - second


def error_probability(margin: np.ndarray, label: np.ndarray, config: ReviewConfig) -> np.ndarray:
    """The calibrated probability that a voxel's label is wrong, from its top-two margin and its label."""
    probability = np.zeros(np.shape(margin), np.float32)
    for value, curve in enumerate(config.calibration_error):
        where = label == value
        probability[where] = np.interp(margin[where], config.calibration_margin, curve)
    return probability


# -- where to look ---------------------------------------------------------------------------------------------
def _box(mask: np.ndarray, margin: Sequence[int]) -> Optional[Tuple[slice, ...]]:
    """The bounding box of `mask` grown by `margin` voxels per axis (clipped), or None when it is empty."""
    low, high = [], []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        low.append(max(int(present[0]) - margin[axis], 0))
        high.append(min(int(present[-1]) + 1 + margin[axis], mask.shape[axis]))
    return tuple(slice(a, b) for a, b in zip(low, high))


def _ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """A ball of `radius_mm` as a boolean structuring element on voxels of `spacing` (z, y, x) mm."""
    reach = [max(int(np.floor(radius_mm / s)), 0) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    return sum((g * s / max(radius_mm, 1e-9)) ** 2 for g, s in zip(grids, spacing)) <= 1.0


def islands(label: np.ndarray, max_voxels: int) -> np.ndarray:
    """Voxels of segment components, other than each segment's largest, of at most `max_voxels` voxels."""
    found = np.zeros(label.shape, bool)
    for value in LABELS:
        components, count = ndimage.label(label == value, FULL_CONNECTIVITY)
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        small = (sizes <= max_voxels) & (np.arange(sizes.size) != int(np.argmax(sizes)))
        small[0] = False
        found |= small[components]
    return found


def gaps(label: np.ndarray, spacing: Sequence[float], gap_mm: float) -> np.ndarray:
    """Clefts narrower than about `gap_mm` in each BraTS region (WT, TC, ET): what a closing with a ball of half
    that width fills. A gap in the whole tumour is background; one in the enhancing rim is another label."""
    ball = _ball(gap_mm / 2.0, spacing)
    if ball.sum() <= 1:
        return np.zeros(label.shape, bool)
    found = np.zeros(label.shape, bool)
    for values in REGIONS.values():
        region = np.isin(label, values)
        if region.any():
            # Padded so that the closing does not treat the box's edge as tumour.
            pad = max(ball.shape) // 2 + 1
            closed = ndimage.binary_closing(np.pad(region, pad), ball)[(slice(pad, -pad),) * 3]
            found |= closed & ~region
    return found


@dataclass
class CaseMaps:
    """What a case's places are cut from, on a box around the tumour: computed once for any threshold, extent
    limit or ranking (the settings tuned together), from the calibration, near_mm, island_max_ml and gap_mm."""

    box: Tuple[slice, ...]  # where the maps lie on the reference grid
    spacing_zyx: Tuple[float, float, float]
    probability: np.ndarray  # calibrated error probability
    uncertainty: np.ndarray
    near: np.ndarray  # within near_mm of the tumour segments
    island: np.ndarray
    gap: np.ndarray
    beside: Dict[str, np.ndarray]  # segment name -> voxels in that segment or next to it


def case_maps(label: np.ndarray, uncertainty: np.ndarray, margin: np.ndarray, spacing_zyx: Sequence[float],
              config: ReviewConfig) -> Optional[CaseMaps]:
    """The maps of one case ((z, y, x) arrays on one grid); None when nothing is segmented."""
    spacing_zyx = tuple(float(s) for s in spacing_zyx)
    reach = [int(np.ceil(max(config.near_mm, config.gap_mm) / s)) + 1 for s in spacing_zyx]
    box = _box(label > 0, reach)
    if box is None:
        return None
    label_box = label[box]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    return CaseMaps(
        box=box, spacing_zyx=spacing_zyx,
        probability=error_probability(margin[box], label_box, config),
        uncertainty=np.asarray(uncertainty[box], np.float32),
        near=ndimage.distance_transform_edt(label_box == 0, sampling=spacing_zyx) <= config.near_mm,
        island=islands(label_box, int(np.floor(config.island_max_ml / voxel_ml + 1e-9))),
        gap=gaps(label_box, spacing_zyx, config.gap_mm),
        beside={name: ndimage.binary_dilation(label_box == value, FULL_CONNECTIVITY) for value, name in LABELS.items()},
    )


def split_places(components: np.ndarray, spacing_zyx: Sequence[float], max_extent_mm: float) -> Tuple[np.ndarray, int]:
    """Components longer than `max_extent_mm` along an axis cut into equal slabs along it, each piece then a
    component of its own: a shell around a whole tumour becomes places a reviewer can look at one at a time."""
    out = np.zeros(components.shape, np.int32)
    count = 0
    for component, extent in enumerate(ndimage.find_objects(components), start=1):
        if extent is None:
            continue
        mask = components[extent] == component
        lengths = [(s.stop - s.start) * step for s, step in zip(extent, spacing_zyx)]
        parts = [max(int(np.ceil(length / max_extent_mm - 1e-9)), 1) for length in lengths]
        cell = np.zeros(mask.shape, np.int32)
        for axis, n in enumerate(parts):  # slab index along each axis, combined into one cell index
            edges = np.linspace(0, mask.shape[axis], n + 1).round().astype(int)[1:-1]
            index = np.searchsorted(edges, np.arange(mask.shape[axis]), side="right")
            cell = cell * n + np.expand_dims(index, tuple(a for a in range(3) if a != axis))
        target = out[extent]
        for value in np.unique(cell[mask]):
            pieces, found = ndimage.label(mask & (cell == value), FULL_CONNECTIVITY)
            target[pieces > 0] = pieces[pieces > 0] + count
            count += found
    return out, count


@dataclass
class Places:
    """Every candidate region of a case, before ranking: components of the union of the three kinds of place."""

    box: Tuple[slice, ...]  # where `components` lies on the reference grid
    components: np.ndarray  # int32 on the box: component id (1..n), 0 elsewhere
    ids: np.ndarray  # ids of the components kept (at least config.min_ml), ascending
    stats: Dict[str, np.ndarray]  # per kept id: voxels, expected_error, error_density, uncertainty_mean/peak, ...
    touched: Dict[str, np.ndarray]  # segment name -> voxels of that segment in or next to each kept component
    kinds: Dict[str, np.ndarray]  # kind -> whether each kept component holds a place of that kind

    def ranked(self, key: str) -> np.ndarray:
        """Positions (into ids) in ranking order for a RANK_KEYS key; ties go to the lower id (stable)."""
        if key not in RANK_KEYS:
            raise ValueError(f"unknown review ranking {key!r}")
        values = self.stats["voxels"] if key == "volume" else self.stats[key]
        return np.argsort(-values, kind="stable")


def find_places(maps: CaseMaps, config: ReviewConfig) -> Places:
    """Every candidate region of a case (see the module docstring), with the statistics the ranking needs."""
    kinds = {"doubtful": maps.near & (maps.probability >= config.threshold), "island": maps.island, "gap": maps.gap}
    components, count = ndimage.label(kinds["doubtful"] | kinds["island"] | kinds["gap"], FULL_CONNECTIVITY)
    if config.max_extent_mm:
        components, count = split_places(components, maps.spacing_zyx, config.max_extent_mm)
    flat = components.ravel()
    voxels = np.bincount(flat, minlength=count + 1).astype(np.float64)
    voxel_ml = float(np.prod(maps.spacing_zyx)) / 1000.0
    ids = np.flatnonzero(voxels >= max(config.min_ml / voxel_ml, 1.0))
    ids = ids[ids > 0]
    expected = np.bincount(flat, maps.probability.ravel(), count + 1)
    u = maps.uncertainty
    stats = {
        "voxels": voxels[ids],
        "expected_error": expected[ids] * voxel_ml,
        "error_density": expected[ids] / voxels[ids],
        "uncertainty_mean": np.bincount(flat, u.ravel().astype(np.float64), count + 1)[ids] / voxels[ids],
        "uncertainty_peak": np.asarray(ndimage.maximum(u, components, ids), np.float64).reshape(-1),
    }
    touched = {name: np.bincount(components[beside & (components > 0)], minlength=count + 1)[ids]
               for name, beside in maps.beside.items()}
    has_kind = {kind: np.bincount(flat[kinds[kind].ravel()], minlength=count + 1)[ids] > 0 for kind in KINDS}
    return Places(maps.box, components.astype(np.int32), ids, stats, touched, has_kind)


def _centre_index(places: Places, position: int, extent: Tuple[slice, ...], spacing_zyx: np.ndarray) -> np.ndarray:
    """(z, y, x) index on the reference grid of the region's voxel nearest its centre of mass, so that a jump to
    it lands on the region even when the region is curved (a shell around a tumour)."""
    component = places.ids[position]
    inside = np.argwhere(places.components[extent] == component) + [s.start for s in extent]
    mm = inside * spacing_zyx
    nearest = int(np.argmin(((mm - mm.mean(0)) ** 2).sum(1)))
    return inside[nearest] + [s.start for s in places.box]


def index_to_ras(reference: sitk.Image, zyx: Sequence[int]) -> Tuple[float, float, float]:
    """The RAS point (mm, Slicer's world) of a (z, y, x) voxel index of `reference`."""
    x, y, z = reference.TransformIndexToPhysicalPoint([int(zyx[2]), int(zyx[1]), int(zyx[0])])  # LPS
    return (-float(x), -float(y), float(z))


def ras_places(points: Sequence[Sequence[float]], listed: int = 3) -> str:
    """RAS points for a warning, to the millimetre: the first `listed`, then how many more."""
    places = ", ".join("({:.0f}, {:.0f}, {:.0f})".format(*point) for point in points[:listed])
    return places + (f" and {len(points) - listed} more" if len(points) > listed else "")


def regions_of(places: Places, reference: sitk.Image, config: ReviewConfig) -> Tuple[List[ReviewRegion], np.ndarray]:
    """The top config.max_regions places as ranked regions, and their label map on the reference grid."""
    spacing_zyx = np.array(reference.GetSpacing()[::-1], np.float64)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    label_map = np.zeros(reference.GetSize()[::-1], np.uint8)
    extents = ndimage.find_objects(places.components)
    regions = []
    for rank, position in enumerate(places.ranked(config.rank_by)[: config.max_regions], start=1):
        component = places.ids[position]
        extent = extents[component - 1]
        stats = {key: float(values[position]) for key, values in places.stats.items()}
        touched = [(int(places.touched[name][position]), name) for name in LABELS.values()]
        regions.append(ReviewRegion(
            rank=rank,
            centre_ras=index_to_ras(reference, _centre_index(places, position, extent, spacing_zyx)),
            volume_ml=stats["voxels"] * voxel_ml,
            mean_uncertainty=stats["uncertainty_mean"],
            peak_uncertainty=stats["uncertainty_peak"],
            segments=[name for count, name in sorted(touched, key=lambda item: -item[0]) if count > 0],
            expected_error_ml=stats["expected_error"],
            kinds=[kind for kind in KINDS if places.kinds[kind][position]],
            mean_error_probability=stats["error_density"],
        ))
        target = tuple(slice(b.start + e.start, b.start + e.stop) for b, e in zip(places.box, extent))
        label_map[target][places.components[extent] == component] = rank
    return regions, label_map


def find_regions(label: np.ndarray, uncertainty: np.ndarray, margin: np.ndarray, reference: sitk.Image,
                 config: Optional[ReviewConfig] = None) -> ReviewResult:
    """Ranked review regions of a case. label, uncertainty and margin (top_two_margin of the label
    probabilities) are (z, y, x) arrays on `reference`'s grid. A case with no tumour, or no doubtful place,
    gives no region and a message saying so."""
    config = config or ReviewConfig()
    shape = tuple(reference.GetSize()[::-1])
    for name, array in (("label", label), ("uncertainty", uncertainty), ("margin", margin)):
        if np.shape(array) != shape:
            raise ValueError(f"review: the {name} array has shape {np.shape(array)}, not the reference's {shape}")
    settings = {"threshold": config.threshold, "rank_by": config.rank_by, "max_regions": config.max_regions}
    maps = case_maps(label, uncertainty, margin, reference.GetSpacing()[::-1], config)
    if maps is None:
        return ReviewResult([], np.zeros(shape, np.uint8), "No review regions: no tumour is segmented.", settings)
    places = find_places(maps, config)
    if places.ids.size == 0:
        return ReviewResult([], np.zeros(shape, np.uint8),
                            "No review regions: no place in or around the tumour has an estimated error probability "
                            f"of {config.threshold:g} or more, and no segment has islands or thin gaps.", settings)
    regions, label_map = regions_of(places, reference, config)
    total = len(places.ids)
    message = (f"{len(regions)} review region(s)" + (f" (the top {len(regions)} of {total})" if total > len(regions)
                                                      else "") + f", ranked by {RANK_KEYS[config.rank_by]}.")
    return ReviewResult(regions, label_map, message, settings)


#: review.csv's columns, one row per region (lists joined with spaces, the centre split into R, A, S).
CSV_COLUMNS = ("rank", "centre_r", "centre_a", "centre_s", "volume_ml", "expected_error_ml", "mean_error_probability",
               "mean_uncertainty", "peak_uncertainty", "segments", "kinds")


def regions_csv(regions: Sequence[dict]) -> str:
    """review.csv's text for ReviewResult.table() rows (a header alone when there is none)."""
    lines = [",".join(CSV_COLUMNS)]
    for region in regions:
        values = dict(region)
        values.update(zip(("centre_r", "centre_a", "centre_s"), region["centre_ras"]))
        values["segments"], values["kinds"] = " ".join(region["segments"]), " ".join(region["kinds"])
        lines.append(",".join(str(values[column]) for column in CSV_COLUMNS))
    return "\n".join(lines) + "\n"
