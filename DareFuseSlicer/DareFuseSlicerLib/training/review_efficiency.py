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
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..constants import LABELS
from ..pipeline.review import CaseMaps, ReviewConfig, case_maps, find_places

KS = (1, 3, 5, 10)
METHODS = ("review", "size", "random")
#: Calibration bins of the top-two margin (their error rates become ReviewConfig.calibration_error).
CALIBRATION_EDGES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Settings searched by tune_review; the calibration is fitted first and shared by all.
TUNE_GRID = {
    "threshold": (0.2, 0.25, 0.275, 0.3, 0.325, 0.35, 0.4),
    "max_extent_mm": (None, 30.0, 45.0),
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


@dataclass
class EfficiencyCase:
    """One case's errors and maps, computed once for every review setting scored on it."""

    shape: Tuple[int, int, int]
    spacing_zyx: Tuple[float, float, float]
    wrong: np.ndarray  # sorted flat indices of the wrongly labelled voxels
    tumour_voxels: int
    tumour_case: bool  # the truth has a tumour
    maps: Optional[CaseMaps]  # None when nothing is segmented
    centres: np.ndarray  # flat indices of boundary voxels of the predicted tumour, in a seeded random order


def efficiency_case(label: np.ndarray, truth: np.ndarray, uncertainty: np.ndarray, margin: np.ndarray,
                    spacing_zyx: Sequence[float], config: ReviewConfig, seed: int = 0) -> EfficiencyCase:
    """(z, y, x) arrays of one case on one grid; config gives the map settings (calibration, near_mm, ...)."""
    tumour = label > 0
    boundary = np.flatnonzero(tumour & ~ndimage.binary_erosion(tumour))
    return EfficiencyCase(
        shape=tuple(label.shape), spacing_zyx=tuple(float(s) for s in spacing_zyx),
        wrong=np.flatnonzero(label != truth), tumour_voxels=int(tumour.sum()), tumour_case=bool(truth.any()),
        maps=case_maps(label, uncertainty, margin, spacing_zyx, config),
        centres=np.random.default_rng(seed).permutation(boundary),
    )


def random_boundary_balls(case: EfficiencyCase, volumes_mm3: Sequence[float]) -> List[np.ndarray]:
    """Flat indices of balls of the given volumes centred on the case's random boundary voxels, in order."""
    shape = np.array(case.shape)
    balls = []
    for centre, volume in zip(case.centres, volumes_mm3):
        points = np.array(np.unravel_index(centre, case.shape)) + _ball_offsets(volume, case.spacing_zyx)
        points = points[np.all((points >= 0) & (points < shape), axis=1)]
        balls.append(np.ravel_multi_index(points.T, case.shape))
    return balls


def _found(case: EfficiencyCase, reviewed: np.ndarray) -> Tuple[int, int]:
    """(wrong voxels among `reviewed` flat indices (unique), how many were reviewed)."""
    return int(np.isin(reviewed, case.wrong, assume_unique=True).sum()), int(reviewed.size)


def case_efficiency(case: EfficiencyCase, config: ReviewConfig, ks: Sequence[int] = KS) -> dict:
    """Errors found and voxels reviewed by the top k regions of each method, for one case (see the module)."""
    result = {"errors": int(case.wrong.size), "tumour_voxels": case.tumour_voxels, "regions": 0,
              "tumour_case": case.tumour_case,
              **{m: {k: (0, 0) for k in ks} for m in METHODS}}
    if case.maps is None:
        return result
    places = find_places(case.maps, config)
    if places.ids.size == 0:
        return result
    result["regions"] = int(places.ids.size)
    # Flat indices on the whole grid of each kept component's voxels, grouped by component.
    local = np.flatnonzero(places.components)
    owner = places.components.ravel()[local]
    grid = np.ravel_multi_index(tuple(i + b.start for i, b in zip(np.unravel_index(local, places.components.shape),
                                                                   places.box)), case.shape)
    order = {"review": places.ranked(config.rank_by), "size": places.ranked("volume")}
    for method, positions in order.items():
        for k in ks:
            result[method][k] = _found(case, grid[np.isin(owner, places.ids[positions[:k]])])
    volumes = places.stats["voxels"][order["review"][: max(ks)]] * float(np.prod(case.spacing_zyx))
    balls = random_boundary_balls(case, volumes)
    for k in ks:
        result["random"][k] = _found(case, np.unique(np.concatenate(balls[:k])) if balls else np.zeros(0, np.int64))
    return result


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def _means(cases: Sequence[dict], ks: Sequence[int]) -> dict:
    means = {}
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
        means[f"top{k}"] = row
    if f"top{GOAL_K}" in means:
        means["goals_met"] = goals_met(means[f"top{GOAL_K}"])
    return means


def summarise(cases: Sequence[dict], ks: Sequence[int] = KS) -> dict:
    """Means over all cases, and over the cases with a tumour in the truth, of share of errors, coverage and
    density per method and k; the review's density over each baseline's; whether the goals are met at GOAL_K.
    (A tumour-free case with a small false positive has a coverage of several times its tiny predicted tumour.)"""
    tumour_cases = [c for c in cases if c["tumour_case"]]
    return {"cases": len(cases), "tumour_cases": len(tumour_cases), "ks": list(ks),
            "all_cases": _means(cases, ks), "tumour_cases_only": _means(tumour_cases, ks)}


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
                    near_mm: float) -> Tuple[Tuple[float, ...], Tuple[Tuple[float, ...], ...]]:
    """Error rate per predicted label and margin bin (CALIBRATION_EDGES) over the voxels within `near_mm` of the
    predicted tumour, over (label, truth, margin, spacing (z, y, x)) cases; each curve non-increasing in the
    margin. Returns the points (margins, one row of rates per label) for ReviewConfig's calibration."""
    edges = np.asarray(CALIBRATION_EDGES)
    n_bins, n_labels = len(edges) - 1, 1 + len(LABELS)
    counts = np.zeros((n_labels, n_bins))
    errors = np.zeros((n_labels, n_bins))
    for label, truth, margin, spacing in cases:
        tumour = label > 0
        if not tumour.any():
            continue
        near = ndimage.distance_transform_edt(~tumour, sampling=spacing) <= near_mm
        cell = label[near].astype(np.int64) * n_bins + np.clip(np.searchsorted(edges, margin[near], "right") - 1,
                                                               0, n_bins - 1)
        counts += np.bincount(cell, minlength=counts.size).reshape(counts.shape)
        errors += np.bincount(cell, (label != truth)[near].astype(np.float64), counts.size).reshape(counts.shape)
    if counts.sum() == 0:
        config = ReviewConfig()
        return config.calibration_margin, config.calibration_error
    centres = ((edges[:-1] + edges[1:]) / 2.0).round(4)
    # A bin's rate, shrunk towards 1/2 by one pseudo-voxel; then the non-increasing fit of each curve.
    rates = [_decreasing((errors[k] + 0.5) / (counts[k] + 1.0), counts[k]) for k in range(n_labels)]
    return (tuple([0.0] + centres.tolist() + [1.0]),
            tuple(tuple([round(r[0], 4)] + np.round(r, 4).tolist() + [round(r[-1], 4)]) for r in rates))


def _score(summary: dict) -> Tuple[int, float]:
    """Larger is better, over the tumour cases: with the goals' share of errors and coverage at GOAL_K met, the
    error found per voxel reviewed; with the coverage alone met, the share; else the density."""
    top = summary["tumour_cases_only"][f"top{GOAL_K}"]["review"]
    share, coverage, density = (top[key] or 0.0 for key in ("share_of_errors", "coverage", "density"))
    coverage_ok = coverage <= GOALS["coverage_max"]
    if coverage_ok and share >= GOALS["share_of_errors_min"]:
        return 2, density
    return (1, share) if coverage_ok else (0, density)


def tune_review(cases: Sequence[dict], base: Optional[ReviewConfig] = None, grid: Optional[dict] = None,
                log=None) -> Tuple[ReviewConfig, dict, List[dict]]:
    """The review settings maximising _score over `cases` (dicts with label, truth, uncertainty, margin,
    spacing_zyx), the calibration fitted on the same cases first. Returns (config, its summary at KS, every
    setting's row at GOAL_K)."""
    base = base or ReviewConfig()
    grid = grid or TUNE_GRID
    points = fit_calibration([(c["label"], c["truth"], c["margin"], c["spacing_zyx"]) for c in cases], base.near_mm)
    base = replace(base, calibration_margin=points[0], calibration_error=points[1])
    prepared = [efficiency_case(c["label"], c["truth"], c["uncertainty"], c["margin"], c["spacing_zyx"], base,
                                seed=index) for index, c in enumerate(cases)]
    return choose(prepared, base, grid, log)


def choose(prepared: Sequence[EfficiencyCase], base: ReviewConfig, grid: dict,
           log=None) -> Tuple[ReviewConfig, dict, List[dict]]:
    """The setting of `grid` (over `base`) with the best _score on the prepared cases."""
    best, best_score, rows = base, None, []
    names = list(grid)
    for values in itertools.product(*(grid[name] for name in names)):
        config = replace(base, **dict(zip(names, values)))
        summary = summarise([case_efficiency(case, config, ks=(GOAL_K,)) for case in prepared], ks=(GOAL_K,))
        score = _score(summary)
        top = summary["tumour_cases_only"][f"top{GOAL_K}"]
        rows.append({**dict(zip(names, values)), **top["review"], "density_ratio_vs_size": top["density_ratio_vs_size"],
                     "density_ratio_vs_random": top["density_ratio_vs_random"]})
        if log is not None:
            log(" ".join(f"{k}={_short(v)}" for k, v in rows[-1].items()))
        if best_score is None or score > best_score:
            best, best_score = config, score
    return best, summarise([case_efficiency(case, best) for case in prepared]), rows


def _short(value):
    return f"{value:.3f}" if isinstance(value, float) else value


def case_row(result: dict, k: int = GOAL_K) -> dict:
    """One case's top-k figures for the per-case report."""
    errors, tumour = result["errors"], result["tumour_voxels"]
    row = {"regions": result["regions"], "errors": errors}
    for method in METHODS:
        found, reviewed = result[method][k]
        row[method] = {"share_of_errors": found / errors if errors else None,
                       "coverage": reviewed / tumour if tumour else None,
                       "density": found / reviewed if reviewed else None}
    return row


# -- inside `darefuse evaluate --tune` ---------------------------------------------------------------------------
#: How far around the predicted and true tumour a tuning case is kept: review regions lie within near_mm of the
#: tumour, and the random baseline's balls (radius about 20 mm for a 30 mL region) mostly within this.
TUNING_CROP_MM = 30.0


def tuning_crop(label: np.ndarray, truth: np.ndarray, uncertainty: np.ndarray, margin: np.ndarray,
                spacing_zyx: Sequence[float], no_tumour: Optional[float]) -> dict:
    """What tune_review needs of one tuning case's raw prediction, cropped around the predicted and true tumour
    (nothing is wrong outside: both are background there); maps as float16 to halve the memory."""
    reach = [int(np.ceil(TUNING_CROP_MM / s)) for s in spacing_zyx]
    box = _box_of((label > 0) | (truth > 0), reach) or tuple(slice(0, 1) for _ in label.shape)
    return {"label": label[box].copy(), "truth": truth[box].copy(), "uncertainty": uncertainty[box].astype(np.float16),
            "margin": margin[box].astype(np.float16), "spacing_zyx": tuple(float(s) for s in spacing_zyx),
            "no_tumour": no_tumour}


def _box_of(mask: np.ndarray, reach: Sequence[int]) -> Optional[Tuple[slice, ...]]:
    if not mask.any():
        return None
    where = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)]
    return tuple(slice(max(int(w[0]) - r, 0), min(int(w[-1]) + 1 + r, n))
                 for w, r, n in zip(where, reach, mask.shape))


def post_processed(crop: dict, config) -> dict:
    """A tuning_crop with its label post-processed as the pipeline would (pipeline.postprocess)."""
    from ..pipeline.postprocess import postprocess

    voxel_ml = float(np.prod(crop["spacing_zyx"])) / 1000.0
    return {**crop, "label": postprocess(crop["label"], voxel_ml, config, crop["no_tumour"])}


def tuning_summary(summary: dict) -> dict:
    """The chosen setting's top-GOAL_K figures on the tuning cases, for the model card."""
    return {subset: summary[subset][f"top{GOAL_K}"] for subset in ("all_cases", "tumour_cases_only")}


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_lines(models: Dict[str, dict]) -> List[str]:
    """The evaluation report's review section, for each model's report (review_efficiency and review entries)."""
    lines = ["", "## Review efficiency", "",
             "Top k review regions: share of the wrongly labelled voxels (any label) they hold, their volume over "
             "the predicted whole tumour's (coverage) and wrong voxels found per voxel reviewed (density). "
             "Baselines with as many regions: size = the same candidate places ranked by volume alone; random = "
             "balls of the same volumes centred on random voxels of the predicted tumour's boundary (seeded). "
             "Means over the cases where each ratio is defined; the density ratios are of those means.", "",
             "| model | cases | k | share | coverage | density | size: share | coverage | density | random: share "
             "| coverage | density | density / size | density / random |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    goals = []
    for name, report in models.items():
        efficiency = report.get("review_efficiency")
        if not efficiency:
            continue
        for subset, label in (("all_cases", f"all {efficiency['cases']}"),
                              ("tumour_cases_only", f"tumour {efficiency['tumour_cases']}")):
            for k in efficiency["ks"]:
                row = efficiency[subset][f"top{k}"]
                cells = [_f(row[m][key]) for m in METHODS for key in ("share_of_errors", "coverage", "density")]
                lines.append(f"| {name} | {label} | {k} | " + " | ".join(cells) + f" | "
                             f"{_f(row['density_ratio_vs_size'], 2)} | {_f(row['density_ratio_vs_random'], 2)} |")
            met = efficiency[subset].get("goals_met", {})
            goals.append(f"- {name}, {label} cases: " + ", ".join(f"{goal} {'met' if ok else 'not met'}"
                                                                  for goal, ok in met.items() if ok is not None))
        settings = report["review"]
        config = settings["config"]
        goals.append(f"- {name} review settings: threshold {config['threshold']}, largest extent "
                     f"{config['max_extent_mm']} mm, ranked by {config['rank_by']} "
                     + (f"(tuned on `{settings['tuned_on']}`)" if settings["tuned_on"] else "(defaults, not tuned)"))
    lines += ["", f"Goals at k = {GOAL_K} (issue 18): share of errors at least {GOALS['share_of_errors_min']}, "
              f"coverage at most {GOALS['coverage_max']}, density at least {GOALS['density_ratio_min']}x each "
              "baseline's.", ""] + goals + [""]
    return lines
