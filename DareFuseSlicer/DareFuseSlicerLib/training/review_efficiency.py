"""Review efficiency (issue 18): how much of a segmentation's error its top review regions hold, per voxel
reviewed, against two baselines; and the choice of the review settings on validation cases. numpy and SciPy only.

Per case and for the top k regions (k in KS):
- share of errors: wrongly labelled voxels (prediction != truth, any label, anywhere) inside the regions, over all
  wrongly labelled voxels of the case;
- coverage: the regions' volume over the predicted whole tumour's (every voxel of a region counts, also those
  outside the tumour: it is the volume a reviewer looks at);
- density: wrongly labelled voxels found per voxel reviewed.
Baselines, with the same number of regions: "size", the same candidate places ranked by volume alone; "random",
balls of the same volumes as the review's regions centred on voxels drawn at random (seeded) from the predicted
whole tumour's boundary. Means are over the cases where the ratio is defined (errors, a tumour, or regions).
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..pipeline.review import FULL_CONNECTIVITY, ReviewConfig, error_probability, find_places

KS = (1, 3, 5, 10)
METHODS = ("review", "size", "random")
#: Calibration bins of the top-two margin (their error rates become ReviewConfig.calibration_error).
CALIBRATION_EDGES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Settings searched by tune_review; the calibration is fitted first and shared by all.
TUNE_GRID = {
    "threshold": (0.1, 0.15, 0.2, 0.25, 0.3, 0.35),
    "max_extent_mm": (None, 20.0, 30.0, 45.0),
    "rank_by": ("expected_error", "error_density"),
}
#: The issue's goals for the top GOAL_K regions.
GOAL_K = 5
GOALS = {"share_of_errors_min": 0.5, "coverage_max": 0.25, "density_ratio_min": 1.5}


def _ball_offsets(volume_mm3: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """(n, 3) voxel offsets of a ball of `volume_mm3` around a centre voxel."""
    radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    reach = [int(np.floor(radius / s)) for s in spacing_zyx]
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    return grid[((grid * spacing_zyx) ** 2).sum(1) <= radius ** 2]


def random_boundary_balls(tumour: np.ndarray, volumes_mm3: Sequence[float], spacing_zyx: Sequence[float],
                          seed: int) -> List[np.ndarray]:
    """For each volume, the flat indices of a ball of that volume centred on a boundary voxel of `tumour` drawn at
    random (distinct centres, seeded). Empty when the tumour is."""
    boundary = tumour & ~ndimage.binary_erosion(tumour)
    centres = np.flatnonzero(boundary)
    if centres.size == 0:
        return []
    chosen = np.random.default_rng(seed).choice(centres, size=min(len(volumes_mm3), centres.size), replace=False)
    shape = np.array(tumour.shape)
    balls = []
    for centre, volume in zip(chosen, volumes_mm3):
        points = np.array(np.unravel_index(centre, tumour.shape)) + _ball_offsets(volume, spacing_zyx)
        points = points[np.all((points >= 0) & (points < shape), axis=1)]
        balls.append(np.ravel_multi_index(points.T, tumour.shape))
    return balls


def case_efficiency(label: np.ndarray, truth: np.ndarray, uncertainty: np.ndarray, margin: np.ndarray,
                    spacing_zyx: Sequence[float], config: ReviewConfig, seed: int = 0, ks: Sequence[int] = KS) -> dict:
    """Errors found and voxels reviewed by the top k regions of each method, for one case (see the module)."""
    wrong = label != truth
    tumour = label > 0
    result = {"errors": int(wrong.sum()), "tumour_voxels": int(tumour.sum()), "regions": 0,
              **{m: {k: (0, 0) for k in ks} for m in METHODS}}
    places = find_places(label, uncertainty, margin, spacing_zyx, config)
    if places is None or places.ids.size == 0:
        return result
    result["regions"] = int(places.ids.size)
    wrong_box = wrong[places.box]
    order = {"review": places.ranked(config.rank_by), "size": places.ranked("volume")}
    for method, positions in order.items():
        for k in ks:
            chosen = np.isin(places.components, places.ids[positions[:k]])
            result[method][k] = (int((wrong_box & chosen).sum()), int(chosen.sum()))
    voxel_mm3 = float(np.prod(spacing_zyx))
    volumes = places.stats["voxels"][order["review"][: max(ks)]] * voxel_mm3
    balls = random_boundary_balls(tumour, volumes, np.asarray(spacing_zyx, float), seed)
    flat_wrong = wrong.ravel()
    for k in ks:
        reviewed = np.unique(np.concatenate(balls[:k])) if balls else np.zeros(0, np.int64)
        result["random"][k] = (int(flat_wrong[reviewed].sum()), int(reviewed.size))
    return result


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def summarise(cases: Sequence[dict], ks: Sequence[int] = KS) -> dict:
    """Means over cases of share of errors, coverage and density per method and k; the review's density over each
    baseline's; and whether the goals are met at GOAL_K."""
    summary = {"cases": len(cases)}
    for k in ks:
        row = {}
        for method in METHODS:
            found = [(c[method][k], c["errors"], c["tumour_voxels"]) for c in cases]
            row[method] = {
                "share_of_errors": _mean([f / e for (f, _), e, _ in found if e > 0]),
                "coverage": _mean([r / t for (_, r), _, t in found if t > 0]),
                "density": _mean([f / r for (f, r), _, _ in found if r > 0]),
            }
        for baseline in ("size", "random"):
            ours, theirs = row["review"]["density"], row[baseline]["density"]
            row[f"density_ratio_vs_{baseline}"] = ours / theirs if ours is not None and theirs else None
        summary[f"top{k}"] = row
    top = summary.get(f"top{GOAL_K}")
    if top is not None:
        summary["goals"] = goals_met(top)
    return summary


def goals_met(top: dict) -> Dict[str, Optional[bool]]:
    review = top["review"]

    def check(value, test):
        return None if value is None else bool(test(value))

    return {
        "share_of_errors": check(review["share_of_errors"], lambda v: v >= GOALS["share_of_errors_min"]),
        "coverage": check(review["coverage"], lambda v: v <= GOALS["coverage_max"]),
        "vs_size": check(top["density_ratio_vs_size"], lambda v: v >= GOALS["density_ratio_min"]),
        "vs_random": check(top["density_ratio_vs_random"], lambda v: v >= GOALS["density_ratio_min"]),
    }


# -- tuning ----------------------------------------------------------------------------------------------------
def _decreasing(rates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-increasing fit of `rates` (pool adjacent violators; a dozen bins, so
    written out rather than adding scikit-learn for IsotonicRegression)."""
    blocks = []  # [value, weight, length]
    for rate, weight in zip(rates, weights):
        blocks.append([float(rate), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            value, weight_, length = blocks.pop()
            last = blocks[-1]
            total = last[1] + weight_
            last[0] = (last[0] * last[1] + value * weight_) / total if total > 0 else max(last[0], value)
            last[1], last[2] = total, last[2] + length
    return np.concatenate([np.full(length, value) for value, _, length in blocks])


def fit_calibration(cases: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[float]]],
                    near_mm: float) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Error rate per margin bin (CALIBRATION_EDGES) over voxels within `near_mm` of the predicted tumour, over
    (label, truth, margin, spacing (z, y, x)) cases; non-increasing in the margin. Returns the points
    (bin centres, rates) for ReviewConfig.calibration_margin / calibration_error."""
    edges = np.asarray(CALIBRATION_EDGES)
    counts = np.zeros(len(edges) - 1)
    errors = np.zeros(len(edges) - 1)
    for label, truth, margin, spacing in cases:
        tumour = label > 0
        if not tumour.any():
            continue
        near = ndimage.distance_transform_edt(~tumour, sampling=spacing) <= near_mm
        bins = np.clip(np.searchsorted(edges, margin[near], side="right") - 1, 0, len(counts) - 1)
        counts += np.bincount(bins, minlength=len(counts))
        errors += np.bincount(bins, (label != truth)[near].astype(np.float64), minlength=len(counts))
    if counts.sum() == 0:
        config = ReviewConfig()
        return config.calibration_margin, config.calibration_error
    rates = _decreasing((errors + 0.5) / (counts + 1.0), counts)
    centres = (edges[:-1] + edges[1:]) / 2.0
    return (tuple([0.0] + centres.round(4).tolist() + [1.0]),
            tuple([rates[0]] + np.round(rates, 4).tolist() + [rates[-1]]))


def _score(summary: dict) -> Tuple[int, float]:
    """Larger is better: the goals' constraints met first (share of errors and coverage at GOAL_K), then the
    error found per voxel reviewed; with the coverage alone met, the share; else the density."""
    top = summary[f"top{GOAL_K}"]["review"]
    share, coverage, density = (top[key] or 0.0 for key in ("share_of_errors", "coverage", "density"))
    coverage_ok = coverage <= GOALS["coverage_max"]
    if coverage_ok and share >= GOALS["share_of_errors_min"]:
        return 2, density
    return (1, share) if coverage_ok else (0, density)


def tune_review(cases: Sequence[dict], base: Optional[ReviewConfig] = None, grid: Optional[dict] = None,
                log=None) -> Tuple[ReviewConfig, dict, List[dict]]:
    """The review settings maximising _score over `cases` (dicts with label, truth, uncertainty, margin,
    spacing_zyx), the calibration fitted on the same cases. Returns (config, its summary, every setting's row)."""
    base = base or ReviewConfig()
    grid = grid or TUNE_GRID
    points = fit_calibration([(c["label"], c["truth"], c["margin"], c["spacing_zyx"]) for c in cases], base.near_mm)
    base = replace(base, calibration_margin=points[0], calibration_error=points[1])
    best, best_summary, best_score, rows = base, None, None, []
    names = list(grid)
    for values in itertools.product(*(grid[name] for name in names)):
        config = replace(base, **dict(zip(names, values)))
        results = [case_efficiency(c["label"], c["truth"], c["uncertainty"], c["margin"], c["spacing_zyx"], config,
                                   seed=index, ks=(GOAL_K,)) for index, c in enumerate(cases)]
        summary = summarise(results, ks=(GOAL_K,))
        score = _score(summary)
        rows.append({**dict(zip(names, values)), **summary[f"top{GOAL_K}"]["review"],
                     "density_ratio_vs_size": summary[f"top{GOAL_K}"]["density_ratio_vs_size"]})
        if log is not None:
            log(" ".join(f"{k}={v}" for k, v in rows[-1].items()))
        if best_score is None or score > best_score:
            best, best_summary, best_score = config, summary, score
    return best, best_summary, rows
