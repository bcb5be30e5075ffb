"""`darefuse evaluate`: models scored on held-out engine cases at their acquisition grid (BraTS grid).

Per model: Dice and HD95 (mm) for WT/TC/ET before and after post-processing (thresholds and the class gate
tuned on a validation folder when given), classification accuracy / macro-F1 / AUROC, uncertainty error-AUROC,
correlation with error and ECE, the false-positive volume on tumour-free cases with and without the
lesion-removal prior, and the review regions' efficiency against two baselines (training/review_efficiency.py;
their settings tuned on the validation folder too). Writes OUT.json and OUT.md.

DareFuseNet goes through the real inference path, `pipeline.run`, with post-processing switched off so that
both the raw and the post-processed label can be scored from one pass. Models without a class head (the
SegResNet baseline) cannot go through `pipeline.run`; `predict_direct` repeats its steps (prepare, one
whole-volume window, probabilities to the reference grid, arg-max in the brain).
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from ..constants import BRATS_SUFFIX, CLASSES, CONTRASTS, REGIONS, reference_contrast
from ..errors import InputError, OptionError
from ..metrics import region_dice
from ..pipeline import frontend, preprocess
from ..pipeline.postprocess import (CARD_KEY, PostprocessConfig, class_in_doubt, config_for_card, gate_closes,
                                    oedema_in_doubt, postprocess, reported_class, shown_enhancement_ml, volumes_ml)
from ..pipeline import review
from . import class_doubt_eval, class_gate_eval, frontend_eval, lesions, review_efficiency, unshown_eval
from .dataset import read_rows

#: BraTS convention for HD95 when exactly one of prediction and truth is empty (the image diagonal, mm).
HD95_EMPTY_PENALTY = 373.13
#: Post-processing off: every threshold 0 (pipeline.run then returns the raw arg-max label).
NO_POSTPROCESS = PostprocessConfig(wt_min_ml=0.0, tc_min_ml=0.0, et_min_ml=0.0, et_to_netc_ml=0.0)
#: Candidate thresholds (mL) searched on the tuning folder; the literature's defaults are among them.
#: None first: on a tie the gate stays off.
TUNE_GRID = {"wt_min_ml": (0.0, 0.25, 1.0, 2.0), "tc_min_ml": (0.0, 0.15, 0.5), "et_min_ml": (0.0, 0.1, 0.3),
             "et_to_netc_ml": (0.0, 0.1, 0.5), "no_tumour_gate": (None, 0.5, 0.8, 0.95)}
VOXELS_PER_CASE_FOR_UNCERTAINTY = 200_000  # brain voxels sampled per case for the pooled uncertainty scores


@dataclass
class Prediction:
    label: np.ndarray  # uint8 (z, y, x) raw arg-max on the case's grid, zero outside the brain
    uncertainty: np.ndarray  # float32 (z, y, x)
    class_probabilities: Optional[np.ndarray]  # (4,) or None (no class head)
    confidence_low: np.ndarray  # max expected label probability on the 2 mm grid (brain voxels)
    correct_low: np.ndarray  # whether the 2 mm arg-max equals the 2 mm truth (same voxels)
    seconds: float = 0.0
    margin: Optional[np.ndarray] = None  # float32 (z, y, x): top-two label probability margin (review regions)
    tumour_probability: Optional[np.ndarray] = None  # float32 (z, y, x): 1 - p(background) (unshown tumour)


@dataclass
class Case:
    case_id: str
    tumour_class: str
    images: Dict[str, sitk.Image]
    truth: np.ndarray  # uint8 on the case's grid
    spacing: Tuple[float, float, float]  # (z, y, x) mm
    prep: preprocess.Prepared
    truth_low: np.ndarray
    front: object = None  # pipeline.frontend.FrontEnd: what the front end did (brain mask, registrations)


def parse_contrasts(text) -> Tuple[str, ...]:
    """--contrasts "t1ce,flair" (or a sequence of names) -> ("t1ce", "flair") in CONTRASTS order; None -> all four."""
    if text is None:
        return tuple(CONTRASTS)
    if not isinstance(text, str):
        text = ",".join(text)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTRASTS]
    if unknown or not names:
        raise OptionError(f"{{contrasts}} {text!r}: give a comma-separated, non-empty subset of "
                          f"{', '.join(CONTRASTS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else "") + ".",
                          "contrasts")
    return tuple(c for c in CONTRASTS if c in names)


def parse_class_gate(text) -> Optional[float]:
    """--class-gate "0.8" -> 0.8, "none" -> None (no gate): a gate chosen on development sets, given instead of
    the card's or the tuned one."""
    if isinstance(text, str) and text.strip().lower() == "none":
        return None
    try:
        gate = float(text)
    except (TypeError, ValueError):
        gate = float("nan")
    if not 0.0 < gate <= 1.0:
        raise OptionError(f"{{class_gate}} {text!r}: give a probability in (0, 1], e.g. 0.8, or none.", "class_gate")
    return gate


def load_case(folder: Path, row: dict, contrasts: Sequence[str] = CONTRASTS, brainmask_model=None) -> Case:
    """One engine case; only `contrasts` are given to the models (the others are missing, as in use).
    brainmask_model: the front end's brain-mask network for whole-head cases (None: the bundled one)."""
    images = {c: sitk.ReadImage(str(folder / row[BRATS_SUFFIX[c]])) if c in contrasts else None for c in CONTRASTS}
    seg = sitk.ReadImage(str(folder / row["seg"]))
    reference = reference_contrast(images)
    if not preprocess.grids_match(images[reference], seg, direction_atol=1e-5):
        # Outputs come on the reference contrast's grid; scoring needs the segmentation's.
        raise InputError(f"Case {row['case_id']}: its {reference} image (the reference for contrasts "
                         f"{', '.join(c for c in CONTRASTS if images[c] is not None)}) is not on the segmentation's grid; "
                         "evaluate on BraTS-grid cases (phantoms made on the grid 'brats') or give a T1.")
    prep, front = frontend.prepare_study(images, model=brainmask_model)  # whole-head cases: mask, registration
    return Case(
        case_id=row["case_id"], tumour_class=row["tumour_class"], images=images,
        truth=sitk.GetArrayFromImage(seg).astype(np.uint8), spacing=tuple(seg.GetSpacing()[::-1]), prep=prep,
        truth_low=preprocess.resample_label_to_grid(seg, prep), front=front,
    )


# -- predictions ----------------------------------------------------------------------------------------
class WithoutPrior(torch.nn.Module):
    """The same network with a zero prior fed to its encoders (trained for with prior dropout)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.stride = getattr(model, "stride", 8)

    def forward(self, x, present, use_prior: bool = True):
        return self.model(x, present, use_prior=False)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def _low_res_calibration(model, case: Case) -> Tuple[np.ndarray, np.ndarray]:
    """Expected label probabilities on the 2 mm grid: the confidence of the arg-max and whether it is right."""
    with torch.no_grad():
        out = model(torch.from_numpy(case.prep.array)[None], torch.from_numpy(case.prep.present)[None])
        alpha = out["evidence"][0].double() + 1.0
        prob = (alpha / alpha.sum(0, keepdim=True)).numpy()
    inside = case.prep.foreground.astype(bool)
    return prob.max(0)[inside].astype(np.float32), (prob.argmax(0) == case.truth_low)[inside]


def predict_pipeline(model, case: Case) -> Prediction:
    """DareFuseNet through pipeline.run (post-processing off) on the case's own front end (scored as it is, and
    not run twice), plus the 2 mm calibration pass."""
    from ..pipeline.run import run

    started = time.perf_counter()
    result = run(case.images, model, outputs=("segmentation", "uncertainty"), postprocess_config=NO_POSTPROCESS,
                 keep_margin=True, front_end=case.front)
    seconds = time.perf_counter() - started
    probabilities = np.array([result.class_probabilities[c] for c in CLASSES])
    confidence, correct = _low_res_calibration(model, case)
    return Prediction(sitk.GetArrayFromImage(result.label), sitk.GetArrayFromImage(result.uncertainty),
                      probabilities, confidence, correct, seconds, result.margin, result.tumour_probability)


def predict_direct(model, case: Case) -> Prediction:
    """pipeline.run's steps for a segmentation-only model (direct_pass), plus the 2 mm calibration pass."""
    started = time.perf_counter()
    label, uncertainty, margin = direct_pass(model, case.prep)
    confidence, correct = _low_res_calibration(model, case)
    return Prediction(label, uncertainty, None, confidence, correct, time.perf_counter() - started, margin)


def direct_pass(model, prep: preprocess.Prepared) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One whole-volume window on the 2 mm grid, label probabilities to the reference grid (linear), arg-max,
    zero outside the brain: (label, uncertainty, top-two margin) on the reference grid. It starts from the
    prepared case, so a whole-head study's front end runs once however many models score it."""
    with torch.no_grad():
        out = model(torch.from_numpy(prep.array)[None], torch.from_numpy(prep.present)[None])
    alpha = out["evidence"][0] + 1.0
    strength = alpha.sum(0, keepdim=True)
    tumour = preprocess.to_reference((alpha / strength)[1:].numpy(), prep)
    label = np.argmax(np.concatenate([1.0 - tumour.sum(0, keepdims=True), tumour]), axis=0).astype(np.uint8)
    margin = review.top_two_margin([1.0 - tumour.sum(0)] + list(tumour))
    inside = sitk.GetArrayViewFromImage(prep.foreground_reference).astype(bool)
    label[~inside] = 0
    margin[~inside] = 1.0
    uncertainty = sitk.GetArrayFromImage(preprocess.to_reference((alpha.shape[0] / strength)[0].numpy(), prep))
    uncertainty = np.where(inside, np.clip(uncertainty, 0, 1), 0).astype(np.float32)
    return label, uncertainty, margin


def predictor_for(model) -> Callable[[object, Case], Prediction]:
    return predict_pipeline if hasattr(model, "class_probabilities") else predict_direct


# -- metrics --------------------------------------------------------------------------------------------
def region_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> Dict[str, Dict[str, float]]:
    """Dice (MONAI compute_dice) and HD95 in mm (MONAI compute_hausdorff_distance, percentile 95) per
    region, with the BraTS conventions for empty regions (both empty: Dice 1, HD95 0; one empty: 0 and
    the penalty). Computed in the bounding box of prediction and truth: distances do not change."""
    scores = {}
    for name, labels in REGIONS.items():
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        if not p.any() and not t.any():
            scores[name] = {"dice": 1.0, "hd95": 0.0}
            continue
        if not p.any() or not t.any():
            scores[name] = {"dice": 0.0, "hd95": HD95_EMPTY_PENALTY}
            continue
        box = np.argwhere(p | t)
        lo, hi = np.maximum(box.min(0) - 2, 0), box.max(0) + 3
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        pt = torch.from_numpy(p[crop])[None, None].float()
        tt = torch.from_numpy(t[crop])[None, None].float()
        dice = float(compute_dice(pt, tt, include_background=True)[0, 0])
        hd95 = float(compute_hausdorff_distance(pt, tt, include_background=True, percentile=95, spacing=list(spacing))[0, 0])
        scores[name] = {"dice": dice, "hd95": hd95}
    return scores


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged. Hand-written: the
    project has no scikit-learn, and MONAI's ROCAUCMetric sorts in Python loops (too slow for 10^6 voxels)."""
    from scipy.stats import rankdata

    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(float(correct[members].mean()) - float(confidence[members].mean()))
    return float(error)


def macro_f1(truth: Sequence[int], predicted: Sequence[int], n_classes: int) -> float:
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    f1 = []
    for k in range(n_classes):
        tp = np.sum((predicted == k) & (truth == k))
        fp = np.sum((predicted == k) & (truth != k))
        fn = np.sum((predicted != k) & (truth == k))
        f1.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan"))
    return float(np.nanmean(f1))


def _mean_scores(per_case: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    return {r: {m: float(np.mean([c[r][m] for c in per_case])) for m in ("dice", "hd95")} for r in REGIONS}


def tumour_case_means(model_report: dict) -> Optional[Dict[str, Dict[str, float]]]:
    """Post-processed Dice and HD95 means over the cases with a tumour in the truth (beside the BraTS convention's
    means over all cases, where an empty truth predicted empty scores 1); None without such cases."""
    rows = [row["post"] for row in model_report["per_case"] if row["class"] != "no_tumour"]
    return _mean_scores(rows) if rows else None


def _labelled_box(label: np.ndarray, truth: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """label and truth inside the box of their labelled voxels plus one voxel: post-processing acts on
    labelled components only and none touches the border, so it gives the same result ~100x faster."""
    box = np.argwhere((label > 0) | (truth > 0))
    if box.size == 0:
        return label[:1, :1, :1].copy(), truth[:1, :1, :1].copy()
    lo, hi = np.maximum(box.min(0) - 1, 0), box.max(0) + 2
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    return label[crop].copy(), truth[crop].copy()


def _no_tumour_probability(prediction: Prediction) -> Optional[float]:
    probabilities = prediction.class_probabilities
    return None if probabilities is None else float(probabilities[CLASSES.index("no_tumour")])


def tune_postprocessing(raw: List[Tuple[np.ndarray, np.ndarray, float, Optional[float]]]) -> Tuple[PostprocessConfig, float]:
    """The settings of TUNE_GRID maximising mean Dice (WT, TC, ET) over (raw label, truth, voxel mL,
    P(no tumour) or None), label and truth cropped by _labelled_box."""
    best, best_score = PostprocessConfig(), -1.0
    keys = [k for k in TUNE_GRID if k != "no_tumour_gate"]
    cleared = [region_dice(np.zeros_like(truth), truth) for _, truth, _, _ in raw]
    for values in itertools.product(*(TUNE_GRID[k] for k in keys)):
        config = replace(PostprocessConfig(), **dict(zip(keys, values)))
        # The gate only chooses, case by case, between this map and an empty one: post-process each case once.
        kept = [region_dice(postprocess(label, voxel_ml, config), truth) for label, truth, voxel_ml, _ in raw]
        for gate in TUNE_GRID["no_tumour_gate"]:
            gated = replace(config, no_tumour_gate=gate)
            dice = [c if gate_closes(gated, case[3]) else k for k, c, case in zip(kept, cleared, raw)]
            score = float(np.mean(dice))
            if score > best_score + 1e-9:
                best, best_score = gated, score
    return best, best_score


def tune_class_rule(config: PostprocessConfig,
                    cases: List[Tuple[np.ndarray, float, Optional[float], np.ndarray, int]]) -> PostprocessConfig:
    """`config` with the class rule (empty_means_no_tumour) on when it raises the class accuracy over
    (raw label, voxel mL, P(no tumour), class probabilities, true class index) with `config`'s post-processing;
    off on a tie: the class head's own answer is the default."""
    if not cases:
        return replace(config, empty_means_no_tumour=False)
    # The rule does not change the map: post-process each case once for both candidates.
    found = [bool(postprocess(label, voxel_ml, config, p_no_tumour).any()) for label, voxel_ml, p_no_tumour, _, _ in cases]

    def accuracy(candidate: PostprocessConfig) -> float:
        return float(np.mean([reported_class(candidate, probabilities, tumour_found) == truth
                              for tumour_found, (_, _, _, probabilities, truth) in zip(found, cases)]))

    with_rule = replace(config, empty_means_no_tumour=True)
    without = replace(config, empty_means_no_tumour=False)
    return with_rule if accuracy(with_rule) > accuracy(without) + 1e-9 else without


# -- the run --------------------------------------------------------------------------------------------
def _parse_models(specs: Sequence[str]) -> List[Tuple[str, Path]]:
    parsed = []
    for spec in specs:
        name, _, path = spec.rpartition("=")
        path = Path(path)
        parsed.append((name or path.parent.name + "/" + path.stem, path))
    return parsed


def _in_brain(label: np.ndarray, case: Case) -> np.ndarray:
    """Removes from a post-processed label, in place, the parts a whole-head run removes as outside the brain
    (pipeline.run); returns where they were."""
    outside = case.front.outside_brain(label) if case.front is not None else np.zeros(label.shape, bool)
    label[outside] = 0
    return outside


class ModelScores:
    """Scores of one model, accumulated case by case (a BraTS-grid case with its pre-processing holds about
    300 MB: cases are loaded one at a time and dropped)."""

    def __init__(self, model, config: PostprocessConfig, with_prior_ablation: bool,
                 review_config: Optional[review.ReviewConfig] = None):
        self.model, self.config, self.with_prior_ablation = model, config, with_prior_ablation
        self.review_config = review_config or review.config_for_card(getattr(model, "card", None))[0]
        self.review_cases: List[dict] = []
        self.predict = predictor_for(model)
        self.per_case, self.per_case_post, self.rows = [], [], []
        self.uncertainty, self.error, self.confidence, self.correct = [], [], [], []
        self.true_class, self.predicted_class, self.head_class, self.class_probabilities = [], [], [], []
        self.fp_with, self.fp_without, self.fp_gated, self.seconds = [], [], [], []
        self.rng = np.random.RandomState(0)

    def add(self, case: Case) -> np.ndarray:
        """Score one case; returns the post-processed label (on the case's grid)."""
        model, config = self.model, self.config
        prediction = self.predict(model, case)
        self.seconds.append(prediction.seconds)
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        no_tumour = _no_tumour_probability(prediction)
        processed = postprocess(prediction.label, voxel_ml, config, no_tumour)
        outside_ml = float(np.count_nonzero(_in_brain(processed, case))) * voxel_ml
        tumour_found = bool(processed.any())
        raw_scores = region_scores(prediction.label, case.truth, case.spacing)
        post_scores = region_scores(processed, case.truth, case.spacing)
        self.per_case.append(raw_scores)
        self.per_case_post.append(post_scores)
        inside = sitk.GetArrayViewFromImage(case.prep.foreground_reference).astype(bool)
        u, wrong = prediction.uncertainty[inside], (prediction.label != case.truth)[inside]
        take = self.rng.choice(u.size, min(u.size, VOXELS_PER_CASE_FOR_UNCERTAINTY), replace=False)
        self.uncertainty.append(u[take])
        self.error.append(wrong[take])
        self.confidence.append(prediction.confidence_low)
        self.correct.append(prediction.correct_low)
        row = {"case_id": case.case_id, "class": case.tumour_class, "seconds": round(prediction.seconds, 2),
               "truth_ml": {r: round(float(np.count_nonzero(np.isin(case.truth, labels))) * voxel_ml, 4)
                            for r, labels in REGIONS.items()},
               "raw": raw_scores, "post": post_scores, "review": self._review(case, prediction, processed),
               "lesions": lesions.lesion_row(processed, case.truth, voxel_ml),
               "outside_brain_ml": round(outside_ml, 3),
               "shown_ml": {k: round(v, 4) for k, v in volumes_ml(processed, voxel_ml).items()}}
        if prediction.tumour_probability is not None:  # what the unshown-tumour alarm would say of the map shown
            row["unshown"] = unshown_eval.case_row(prediction.tumour_probability, processed, case.truth, voxel_ml)
        if prediction.class_probabilities is not None:
            self.true_class.append(CLASSES.index(case.tumour_class))
            self.head_class.append(int(np.argmax(prediction.class_probabilities)))
            self.predicted_class.append(reported_class(config, prediction.class_probabilities, tumour_found,
                                                       shown_enhancement_ml(row["shown_ml"], case.prep.given)))
            self.class_probabilities.append(prediction.class_probabilities)
            row["predicted_class"] = CLASSES[self.predicted_class[-1]]
            row["class_head"] = CLASSES[self.head_class[-1]]
            row["class_probabilities"] = {c: round(float(p), 4) for c, p in zip(CLASSES, prediction.class_probabilities)}
            row["class_in_doubt"] = class_in_doubt(config, prediction.class_probabilities)
            row["oedema_in_doubt"] = oedema_in_doubt(config, row["predicted_class"], row["shown_ml"])
        row["class_gate_closed"] = gate_closes(config, no_tumour)
        ungated = replace(config, no_tumour_gate=None)
        kept = processed
        if row["class_gate_closed"]:  # what the other gates would do is scored from these (class_gate_eval)
            kept = postprocess(prediction.label, voxel_ml, ungated)
            _in_brain(kept, case)
            row["post_without_class_gate"] = region_scores(kept, case.truth, case.spacing)
        if case.tumour_class == "no_tumour":
            # The prior's effect is measured without the class gate, which would hide it.
            self.fp_gated.append(float(np.count_nonzero(processed)) * voxel_ml)
            self.fp_with.append(float(np.count_nonzero(kept)) * voxel_ml)
            row["false_positive_ml"] = self.fp_with[-1]
            row["false_positive_ml_after_class_gate"] = self.fp_gated[-1]
            if self.with_prior_ablation:
                ablated = self.predict(WithoutPrior(model), case)
                self.fp_without.append(float(np.count_nonzero(postprocess(ablated.label, voxel_ml, ungated))) * voxel_ml)
                row["false_positive_ml_without_prior"] = self.fp_without[-1]
        self.rows.append(row)
        return processed

    def _review(self, case: Case, prediction: Prediction, processed: np.ndarray) -> dict:
        """The review regions' efficiency on this case (the post-processed label's regions), kept for the means;
        returns the case's top-GOAL_K figures."""
        if prediction.margin is None:
            return {}
        prepared = review_efficiency.efficiency_case(processed, case.truth, prediction.uncertainty, prediction.margin,
                                                     case.spacing, self.review_config, seed=len(self.review_cases))
        self.review_cases.append(review_efficiency.case_efficiency(prepared, self.review_config))
        return review_efficiency.case_row(self.review_cases[-1])

    def report(self) -> dict:
        u, e = np.concatenate(self.uncertainty), np.concatenate(self.error)
        report = {
            "cases": len(self.rows),
            "seconds_per_case": float(np.mean(self.seconds)),
            "raw": _mean_scores(self.per_case),
            "post": _mean_scores(self.per_case_post),
            "uncertainty": {
                "error_auroc": roc_auc(u, e),
                "correlation_with_error": float(np.corrcoef(u, e.astype(np.float64))[0, 1]) if e.any() and (~e).any() else float("nan"),
                "ece_2mm": expected_calibration_error(np.concatenate(self.confidence), np.concatenate(self.correct)),
                "voxel_error_rate": float(e.mean()),
            },
            "per_case": self.rows,
        }
        report["post_tumour_cases"] = tumour_case_means(report)
        report["lesions"] = lesions.summary(self.rows)
        if self.review_cases:
            report["review_efficiency"] = review_efficiency.summarise(self.review_cases)
        if any("unshown" in row for row in self.rows):
            report["unshown_alarm"] = unshown_eval.summary(self.rows, getattr(self.model, "card", None))
        if self.class_probabilities:
            probs = np.stack(self.class_probabilities)
            truth = np.asarray(self.true_class)
            aurocs = [roc_auc(probs[:, k], truth == k) for k in range(len(CLASSES))]
            report["classification"] = {
                "accuracy": float(np.mean(truth == np.asarray(self.predicted_class))),
                "accuracy_class_head": float(np.mean(truth == np.asarray(self.head_class))),
                "macro_f1": macro_f1(self.true_class, self.predicted_class, len(CLASSES)),
                "auroc_macro_ovr": float(np.nanmean(aurocs)),
                "auroc_per_class": dict(zip(CLASSES, aurocs)),
            }
        if self.fp_with:
            report["false_positive_ml_tumour_free"] = {
                "with_prior": float(np.mean(self.fp_with)),
                "without_prior": float(np.mean(self.fp_without)) if self.fp_without else None,
                "after_class_gate": float(np.mean(self.fp_gated)),
                "cases": len(self.fp_with),
            }
        return report


def _card_postprocess(card: dict) -> Tuple[PostprocessConfig, Optional[float], Optional[str]]:
    config, _ = config_for_card(card)
    tuned = card.get(CARD_KEY) or {}
    return config, tuned.get("tuning_mean_dice"), tuned.get("tuned_on")


#: One model to score: its name in the report, its file, the loaded model.
LoadedModel = Tuple[str, Path, torch.nn.Module]
#: A model's post-processing: (config, mean Dice on the tuning folder or None, the tuning folder or None).
ChosenPostprocess = Tuple[PostprocessConfig, Optional[float], Optional[str]]
#: A model's review settings: (config, their efficiency on the tuning folder or None, the tuning folder or None).
ChosenReview = Tuple[review.ReviewConfig, Optional[dict], Optional[str]]


def run_evaluation(data, models: Sequence[str], out, tune: Optional[str] = None, max_cases: Optional[int] = None,
                   device: Optional[str] = None, threads: int = 2, log=print, record: bool = False,
                   contrasts=None, class_gate: Optional[str] = None,
                   brainmask: Optional[str] = None) -> Tuple[Path, Path]:
    """Score every model (NAME=PATH or PATH) on `data`; writes OUT.json and OUT.md. Post-processing: thresholds
    tuned on `tune` when given, else those of each model's card. record: also write the summary into each
    model's card (metrics["held_out"], and the tuned thresholds, which the pipeline then uses). contrasts: the
    ones given to the models (parse_contrasts: None for all four), on the held-out and the tuning cases alike
    (the others are missing). class_gate: parse_class_gate's text, the class gate used (and recorded) instead of
    the card's or the tuned one; None: not given. brainmask: the front end's brain-mask network (.safetensors
    with its card) for whole-head cases instead of the bundled one, to judge a candidate with the segmentation
    in the loop; not with `record` (a card's held-out figures are the pipeline's, with the bundled mask).

    The stages: models loaded -> post-processing chosen per model -> scores per model -> summary -> reports
    (and the cards when recording)."""
    from ..network.store import load_model

    contrasts = parse_contrasts(contrasts)
    given_gate = None if class_gate is None else parse_class_gate(class_gate)
    if record and contrasts != tuple(CONTRASTS):
        raise OptionError("{record} is for all four contrasts: a card's held-out figures and thresholds are the "
                          "ones the pipeline uses by default.", "record")
    if record and brainmask is not None:
        raise OptionError("{record} is for the bundled brain-mask network: a card's held-out figures are the ones "
                          "the pipeline gives; leave out {brainmask}.", "record", "brainmask")
    torch.set_num_threads(threads)
    folder = Path(data)
    rows = read_rows(folder)[: max_cases or None]
    loaded = [(name, path, load_model(path, device or "cpu")) for name, path in _parse_models(models)]
    mask_model = frontend.load_brainmask_model(Path(brainmask) if brainmask else None)
    frontend_eval.check_held_out(rows, {**{name: model.card for name, _, model in loaded},
                                        f"brain mask {mask_model.card.get('version')}": mask_model.card})
    frontend_eval.check_tuning_folder(folder, Path(tune) if tune else None, rows, read_rows(tune) if tune else [])
    started = time.perf_counter()
    log(f"evaluate: {len(rows)} cases of {folder}, {len(loaded)} model(s), contrasts {', '.join(contrasts)}")
    configs, tuning_cases = choose_postprocessing(loaded, tune, contrasts, log, mask_model)
    if class_gate is not None:
        configs = {name: (replace(c, no_tumour_gate=given_gate), score, on) for name, (c, score, on) in configs.items()}
        log(f"class gate given: {given_gate}")
    reviews = choose_review(loaded, configs, tuning_cases, tune, log)
    del tuning_cases
    results = score_models(loaded, configs, reviews, folder, rows, contrasts, log, mask_model)
    if class_gate is not None:
        for report in results.values():
            report["postprocess"]["class_gate_given"] = given_gate
    summary = {
        "data": {"folder": str(folder), "cases": len(rows),
                 "classes": {c: sum(1 for r in rows if r["tumour_class"] == c) for c in CLASSES},
                 "grids": sorted({r["grid"] for r in rows}), "seeds": [int(r["seed"]) for r in rows],
                 "contrasts": list(contrasts)},
        "brainmask": {"path": str(brainmask or frontend.BRAINMASK_MODEL), "version": mask_model.card.get("version"),
                      "sha256": mask_model.card.get("sha256"), "bundled": brainmask is None},
        "seconds": round(time.perf_counter() - started, 1),
        "models": results,
    }
    json_path, md_path = write_reports(summary, out)
    if record:
        record_in_cards(loaded, summary, json_path)
    return json_path, md_path


def choose_postprocessing(loaded: List[LoadedModel], tune: Optional[str], contrasts: Sequence[str],
                          log, mask_model=None) -> Tuple[Dict[str, ChosenPostprocess], Dict[str, list]]:
    """Each model's post-processing: tuned on the `tune` folder when given (cases loaded one at a time), else
    the thresholds the pipeline would use with it (its card's). Also returns, per model, the tuning cases'
    predictions as review_efficiency.tuning_crop keeps them (empty without `tune`), for choose_review."""
    crops: Dict[str, list] = {name: [] for name, _, _ in loaded}
    if not tune:
        return {name: _card_postprocess(model.card) for name, _, model in loaded}, crops
    raw: Dict[str, list] = {name: [] for name, _, _ in loaded}
    classed: Dict[str, list] = {name: [] for name, _, _ in loaded}  # for the class rule
    for row in read_rows(tune):
        case = load_case(Path(tune), row, contrasts, mask_model)
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        for name, _, model in loaded:
            prediction = predictor_for(model)(model, case)
            label, truth = _labelled_box(prediction.label, case.truth)
            no_tumour = _no_tumour_probability(prediction)
            raw[name].append((label, truth, voxel_ml, no_tumour))
            if prediction.margin is not None:
                crops[name].append(review_efficiency.tuning_crop(prediction.label, case.truth, prediction.uncertainty,
                                                                 prediction.margin, case.spacing, no_tumour))
            if prediction.class_probabilities is not None:
                classed[name].append((label, voxel_ml, no_tumour, prediction.class_probabilities,
                                      CLASSES.index(case.tumour_class)))
        del case
    log(f"tuned post-processing on {tune}")
    configs = {}
    for name, _, model in loaded:
        config, score = tune_postprocessing(raw[name])
        # The enhancement rule and the doubts are chosen on development sets (benchmarks/class_enhancement.py,
        # benchmarks/class_doubt.py), not here: kept.
        card = config_for_card(model.card)[0]
        config = replace(config, non_enhancing_glioma_ml=card.non_enhancing_glioma_ml,
                         class_doubt_below=card.class_doubt_below, oedema_doubt_above=card.oedema_doubt_above)
        configs[name] = (tune_class_rule(config, classed[name]), score, str(tune))
    return configs, crops


def choose_review(loaded: List[LoadedModel], configs: Dict[str, ChosenPostprocess], crops: Dict[str, list],
                  tune: Optional[str], log) -> Dict[str, ChosenReview]:
    """Each model's review settings: tuned on the `tune` folder's cases, post-processed with the model's chosen
    thresholds (review_efficiency.tune_review), when given; else its card's."""
    chosen = {}
    for name, _, model in loaded:
        if not tune or not crops[name]:
            config, _ = review.config_for_card(model.card)
            tuned = model.card.get(review.CARD_KEY) or {}
            chosen[name] = (config, tuned.get("tuning"), tuned.get("tuned_on"))
            continue
        cases = [review_efficiency.post_processed(crop, configs[name][0]) for crop in crops[name]]
        config, summary, _ = review_efficiency.tune_review(cases)
        chosen[name] = (config, review_efficiency.tuning_summary(summary), str(tune))
        log(f"{name}: review regions tuned on {tune}: threshold {config.threshold}, "
            f"largest extent {config.max_extent_mm} mm, ranked by {config.rank_by}")
    return chosen


def score_models(loaded: List[LoadedModel], configs: Dict[str, ChosenPostprocess], reviews: Dict[str, ChosenReview],
                 folder: Path, rows: List[dict], contrasts: Sequence[str], log, mask_model=None) -> Dict[str, dict]:
    """Every model's report on the held-out cases (loaded one at a time), with its model, post-processing and
    review settings."""
    scorers = {name: ModelScores(model, configs[name][0], hasattr(model, "generator"), reviews[name][0])
               for name, _, model in loaded}
    front_scores: Dict[str, list] = {name: [] for name in scorers}
    for i, row in enumerate(rows):
        case = load_case(folder, row, contrasts, mask_model)
        for name, scorer in scorers.items():
            label = scorer.add(case)  # the brain mask given out holds the model's segmented tumour
            front_scores[name].append(frontend_eval.case_scores(folder, row, case.front, case.truth, label))
        del case
        log(f"case {i + 1}/{len(rows)} {row['case_id']}")
    results = {}
    for name, path, model in loaded:
        report = scorers[name].report()
        report["model"] = {"path": str(path), "architecture": model.card["architecture"],
                           "sha256": model.card["sha256"], "training_command": model.card.get("training_command"),
                           "labelled_fraction": model.card.get("training", {}).get("labelled_fraction")}
        report["postprocess"] = {"config": configs[name][0].as_dict(), "tuned_on": configs[name][2],
                                 "tuning_mean_dice": configs[name][1]}
        report["review"] = {"config": reviews[name][0].as_dict(), "tuned_on": reviews[name][2],
                            "tuning": reviews[name][1]}
        results[name] = report
        front = frontend_eval.summary(front_scores[name])
        if front is not None:
            report["front_end"] = {**front, "per_case": [c for c in front_scores[name] if c is not None]}
        log(f"{name}: post Dice WT/TC/ET " + "/".join(f"{report['post'][r]['dice']:.3f}" for r in REGIONS))
    return results


def write_reports(summary: dict, out) -> Tuple[Path, Path]:
    """OUT.json and OUT.md."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown_report(summary))
    return json_path, md_path


def record_in_cards(loaded: List[LoadedModel], summary: dict, json_path: Path) -> None:
    """Each model's held-out summary into its card (and its tuned thresholds, which the pipeline then uses)."""
    from ..network.store import record_metrics

    for name, path, _ in loaded:
        r = summary["models"][name]
        record_metrics(path, "held_out", {
            "data": summary["data"], "report": str(json_path),
            **{k: r[k] for k in ("raw", "post", "uncertainty", "postprocess", "cases")},
            **{k: r[k] for k in ("classification", "false_positive_ml_tumour_free", "review_efficiency") if k in r},
        }, postprocess=r["postprocess"] if r["postprocess"]["tuned_on"] or "class_gate_given" in r["postprocess"]
            else None,
            review=r["review"] if r["review"]["tuned_on"] else None)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))


def _f(value, digits=3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _brainmask_lines(summary: dict) -> List[str]:
    """Which brain-mask network the front end used, for reports with whole-head cases."""
    mask = summary.get("brainmask")
    if not mask or "clinical" not in summary["data"]["grids"]:
        return []
    where = "the bundled one" if mask["bundled"] else f"a candidate, not the bundled one: `{mask['path']}`"
    return [f"Brain-mask network of the front end: {mask['version']} ({where}; sha256 {mask['sha256'][:8]}...).", ""]


def markdown_report(summary: dict) -> str:
    d = summary["data"]
    given = list(d.get("contrasts", CONTRASTS))
    lines = [
        "# DareFuseSlicer evaluation",
        "",
        f"{d['cases']} held-out synthetic cases from `{d['folder']}` (grids: {', '.join(d['grids'])}; classes: "
        + ", ".join(f"{k} {v}" for k, v in d["classes"].items()) + "), scored at the cases' own grid.",
        "Synthetic data-engine cases, not BraTS: the figures are not comparable with BraTS leaderboards.",
        "",
        f"Contrasts given to the models: {', '.join(given)}"
        + ("" if given == list(CONTRASTS) else " (the others missing)") + ".",
        "",
        *_brainmask_lines(summary),
        "## Segmentation (mean over cases; HD95 in mm)",
        "",
        "| model | post-processing | Dice WT | Dice TC | Dice ET | HD95 WT | HD95 TC | HD95 ET |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def scores_row(name: str, label: str, s: Dict[str, Dict[str, float]]) -> str:
        return (f"| {name} | {label} | " + " | ".join(_f(s[k]["dice"]) for k in REGIONS) + " | "
                + " | ".join(_f(s[k]["hd95"], 1) for k in REGIONS) + " |")

    for name, r in summary["models"].items():
        post_label = "tuned" if r["postprocess"]["tuned_on"] else "defaults"
        lines += [scores_row(name, "none", r["raw"]), scores_row(name, post_label, r["post"])]
        tumour = tumour_case_means(r)
        if tumour is not None:
            n = sum(row["class"] != "no_tumour" for row in r["per_case"])
            lines.append(scores_row(name, f"{post_label}, tumour cases only ({n})", tumour))
    lines += ["", "## Classification, uncertainty and the prior", "",
              "| model | accuracy | accuracy (class head alone) | macro-F1 | AUROC | unc. error-AUROC | unc.-error corr. | ECE (2 mm) | FP mL with prior | FP mL without prior | FP mL after class gate | s/case |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["models"].items():
        c = r.get("classification", {})
        u = r["uncertainty"]
        fp = r.get("false_positive_ml_tumour_free", {})
        lines.append(f"| {name} | {_f(c.get('accuracy'))} | {_f(c.get('accuracy_class_head'))} | "
                     f"{_f(c.get('macro_f1'))} | {_f(c.get('auroc_macro_ovr'))} | "
                     f"{_f(u['error_auroc'])} | {_f(u['correlation_with_error'])} | {_f(u['ece_2mm'])} | "
                     f"{_f(fp.get('with_prior'), 2)} | {_f(fp.get('without_prior'), 2)} | "
                     f"{_f(fp.get('after_class_gate'), 2)} | {_f(r['seconds_per_case'], 1)} |")
    lines += ["", "Post-processing settings (thresholds in mL; no_tumour_gate: the map is cleared when the class "
              "head's P(no tumour) reaches it, None: no gate; empty_means_no_tumour: the class rule, no_tumour is "
              "reported when post-processing leaves no tumour; non_enhancing_glioma_ml: the enhancement rule, "
              "glioma is reported when the class head says meningioma or metastasis and the map shows tumour with at "
              "most this much ET, None: off; class_doubt_below: the class doubt, low confidence when the class "
              "head's top probability is below it, None: off; oedema_doubt_above: the oedema doubt, low confidence "
              "when glioma is reported and the map's oedema is more than this many times its tumour core, None: "
              "off; accuracy and macro-F1 are of the reported class, "
              "AUROC of the class head's probabilities):", ""]
    for name, r in summary["models"].items():
        p = r["postprocess"]
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in p["config"].items())
                     + (f" (tuned on `{p['tuned_on']}`)" if p["tuned_on"] else " (literature defaults, not tuned)")
                     + (f"; class gate {p['class_gate_given']} given by --class-gate" if "class_gate_given" in p else ""))
    lines += ["", "Uncertainty: SEGU K/sum(alpha), one pass; error-AUROC and correlation over brain voxels "
              "(point-biserial); ECE of the expected label probability on the 2 mm grid, 15 bins. "
              "FP: tumour volume predicted on tumour-free cases after post-processing without the class gate; "
              "without prior = the encoders fed a zero prior (the network is trained with prior dropout); after "
              "class gate = with every tuned setting, the gate included.", ""]
    lines += _class_gate_lines(summary)
    lines += class_doubt_eval.markdown_lines(summary["models"])
    lines += lesions.markdown_lines(summary["models"])
    lines += unshown_eval.markdown_lines(summary["models"])
    lines += _front_end_lines(summary)
    lines += review_efficiency.markdown_lines(summary["models"])
    return "\n".join(lines)


def _class_gate_lines(summary: dict) -> List[str]:
    """What each candidate class gate (the tuning grid's) would do on these cases, the card's marked *."""
    tables = {name: class_gate_eval.gate_table(r["per_case"], TUNE_GRID["no_tumour_gate"])
              for name, r in summary["models"].items()}
    if not any(tables.values()):
        return []
    lines = ["## The class gate at each candidate (post-processed Dice, the rest of the card's settings)", "",
             "| model | gate | Dice WT | TC | ET | tumour cases: WT | TC | ET | FP mL, tumour-free | tumour cases "
             "cleared | tumour-free cases cleared |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, table in tables.items():
        card_gate = summary["models"][name]["postprocess"]["config"].get("no_tumour_gate")
        for row in table:
            gate = row["no_tumour_gate"]
            mark = "*" if gate == card_gate else ""
            all_cases, tumour = row["dice"] or {}, row["dice_tumour_cases"] or {}
            lines.append(f"| {name} | {'none' if gate is None else gate}{mark} | "
                         + " | ".join(_f(all_cases.get(r)) for r in REGIONS) + " | "
                         + " | ".join(_f(tumour.get(r)) for r in REGIONS) + f" | {_f(row['false_positive_ml'], 2)} | "
                         f"{row['tumour_cases_cleared']} | {row['tumour_free_cases_cleared']} |")
    return lines + ["", "The gate clears the map when the class head's P(no tumour) reaches it; a cleared "
                    "tumour-free case scores 1, a cleared tumour case 0 on each region its truth holds (n/a: a "
                    "report older than its truth volumes, where such a case would be cleared).", ""]


def _front_end_lines(summary: dict) -> List[str]:
    """The whole-head front end's section: registration and the mask given out, at the card's tumour margin
    and at every margin scored."""
    fronts = {name: r["front_end"] for name, r in summary["models"].items() if r.get("front_end")}
    if not fronts:
        return []
    lines = ["## Whole-head front end (clinical cases)", "",
             "| model | clinical cases | registrations | registration error median (mm) | worst (mm) | contrasts "
             "left out | brain-mask Dice mean | worst | tumour voxels outside the mask | of them meningioma |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, front in fronts.items():
        reg, dice = front["registration_error_mm"], front["brain_mask_dice"]
        lines.append(f"| {name} | {front['cases']} | {reg['registrations']} | {_f(reg['median'], 2)} | "
                     f"{_f(reg['worst'], 2)} | {front['contrasts_left_out']} | {_f(dice['mean'], 4)} | "
                     f"{_f(dice['worst'], 4)} | {front['tumour_voxels_outside_mask']} | "
                     f"{front['meningioma_voxels_outside_mask']} |")
    lines += ["", "Registration error: mean distance over the engine's brain mask between the recovered rigid "
              "transform and the engine's recorded motion; brain-mask Dice against the engine's mask (brain "
              "and every tumour voxel) on the reference grid, of the mask given out (the brain mask with the "
              "model's segmented tumour grown by the brain-mask card's tumour margin: it depends on the model).",
              ""]
    for name in fronts:
        removed = [row["outside_brain_ml"] for row in summary["models"][name].get("per_case", [])
                   if row.get("outside_brain_ml")]
        lines += [f"- {name}: tumour parts removed as outside the brain (not in the mask given out) in "
                  f"{len(removed)} case(s), {sum(removed):.2f} mL in all.", ""]
    lines += _mask_variant_lines(fronts, "by_tumour_margin", "tumour_margin_mm", "tumour margin",
                                 "The mask given out at each tumour margin (mm; * the card's), on the same segmentations:")
    lines += _mask_variant_lines(fronts, "by_given_threshold", "given_threshold", "threshold",
                                 "The mask given out at each share threshold (the network's region and intensities "
                                 "unchanged; at the card's tumour margin; * the card's), on the same segmentations:")
    return lines


def _mask_variant_lines(fronts: Dict[str, dict], listed: str, key: str, column: str, title: str) -> List[str]:
    """A table of the mask given out at each value of `key` scored (the rows front_end[listed]), the card's
    value (front_end[key]) marked *."""
    if not any(front.get(listed) for front in fronts.values()):
        return []
    lines = [title, "", f"| model | {column} | brain-mask Dice mean | worst | tumour voxels outside | of them meningioma |",
             "|---|---|---|---|---|---|"]
    for name, front in fronts.items():
        for row in front.get(listed, []):
            mark = "*" if row[key] == front.get(key) else ""
            lines.append(f"| {name} | {row[key]:g}{mark} | {_f(row['brain_mask_dice']['mean'], 4)} | "
                         f"{_f(row['brain_mask_dice']['worst'], 4)} | {row['tumour_voxels_outside_mask']} | "
                         f"{row['meningioma_voxels_outside_mask']} |")
    return lines + [""]
