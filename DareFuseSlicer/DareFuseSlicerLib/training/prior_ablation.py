"""The lesion-removal prior's ablation (issue 20 §1): one network, several priors, scored on held-out cases.

Variants: "twin-trained" (a model as trained by `darefuse train`, its generator fitted to the engine's
tumour-free twins), "inpainting" (the same network with the generator of `darefuse train-prior`), any number of
KLE residual priors (the same network with an expansion of `darefuse fit-kle`, named by the caller) and "zero
prior" (the twin-trained model fed a zero prior, evaluate.WithoutPrior). Per folder and variant: the
false-positive volume (mL) on tumour-free brains, and Dice WT/TC/ET as BraTS-convention means over all cases
(an empty truth and an empty prediction score 1) and over the tumour cases only.

Each case is loaded once (evaluate.load_case: a whole-head study's front end runs once) and every variant
scores the same prepared input (evaluate.direct_pass: one whole-brain window, as pipeline.run for an adult
head). Post-processing: each card's thresholds with the class gate off, which would hide the prior's effect
(as `darefuse evaluate` measures its "FP mL with / without prior").
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..constants import REGIONS
from ..metrics import region_dice
from ..network.store import load_model
from ..pipeline.postprocess import config_for_card, postprocess
from ..progress import CancelFn, check_cancel
from .dataset import read_rows
from .evaluate import Case, WithoutPrior, direct_pass, load_case
from .frontend_eval import check_held_out

#: The variants of load_variants(twin_trained, inpainting) in table order (KLE priors go before "zero prior").
VARIANTS = ("twin-trained", "inpainting", "zero prior")


def load_variants(twin_trained: str, inpainting: Optional[str] = None,
                  kle: Sequence[Tuple[str, str]] = ()) -> Dict[str, torch.nn.Module]:
    """The variants (each checked against its card's SHA256 by load_model); kle: (name, model path) pairs."""
    twin = load_model(twin_trained)
    variants = {"twin-trained": twin}
    if inpainting:
        variants["inpainting"] = load_model(inpainting)
    for name, path in kle:
        if name in variants or name == "zero prior":
            raise ValueError(f"variant name {name!r} is taken")
        variants[name] = load_model(path)
    variants["zero prior"] = WithoutPrior(twin)
    return variants


def score_case(model: torch.nn.Module, case: Case) -> dict:
    """One variant on one case: Dice per region (BraTS convention) and, on a tumour-free brain, the
    predicted tumour volume in mL after the card's post-processing without the class gate."""
    label, _, _ = direct_pass(model, case.prep)
    config = replace(config_for_card(getattr(model, "card", None))[0], no_tumour_gate=None)
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    label = postprocess(label, voxel_ml, config)
    row = {"case_id": case.case_id, "class": case.tumour_class,
           "dice": dict(zip(REGIONS, region_dice(label, case.truth)))}
    if case.tumour_class == "no_tumour":
        row["false_positive_ml"] = float(np.count_nonzero(label)) * voxel_ml
    return row


def summarise(rows: Sequence[dict]) -> dict:
    """Means over one variant's case rows: FP mL over the tumour-free cases, Dice over all and tumour cases."""
    tumour = [r for r in rows if r["class"] != "no_tumour"]
    fp = [r["false_positive_ml"] for r in rows if "false_positive_ml" in r]

    def means(subset):
        return {k: float(np.mean([r["dice"][k] for r in subset])) if subset else None for k in REGIONS}

    return {"cases": len(rows), "tumour_free_cases": len(fp), "false_positive_ml": float(np.mean(fp)) if fp else None,
            "dice_all": means(rows), "dice_tumour_cases": means(tumour)}


def ablate_folder(folder, variants: Dict[str, torch.nn.Module], max_cases: Optional[int] = None,
                  log: Callable[[str], None] = print, cancel: Optional[CancelFn] = None) -> dict:
    """Every variant on every case of `folder` (refused if a case's seed is among a model's training seeds)."""
    folder = Path(folder)
    rows = read_rows(folder)[: max_cases or None]
    check_held_out(rows, {name: model.card for name, model in variants.items()})
    per_variant: Dict[str, List[dict]] = {name: [] for name in variants}
    for i, row in enumerate(rows):
        check_cancel(cancel)
        case = load_case(folder, row)
        for name, model in variants.items():
            per_variant[name].append(score_case(model, case))
        del case
        log(f"{folder.name}: case {i + 1}/{len(rows)} {row['case_id']}")
    return {name: {**summarise(r), "per_case": r} for name, r in per_variant.items()}


def paired(base: Sequence[dict], other: Sequence[dict], value: Callable[[dict], Optional[float]],
           lower_is_better: bool = False) -> dict:
    """Per-case differences other - base over the cases where `value` is defined: their mean, a percentile
    bootstrap 95 % interval of the mean (scipy, 2000 resamples, seeded; None under 3 cases) and how many cases
    got better or worse. Few cases: a flip of one case under the BraTS convention moves a mean by 1/n."""
    from scipy.stats import bootstrap

    pairs = [(value(b), value(o)) for b, o in zip(base, other) if value(b) is not None]
    differences = np.array([o - b for b, o in pairs], dtype=float)
    sign = -1.0 if lower_is_better else 1.0
    interval = None
    if differences.size >= 3 and np.ptp(differences) > 0:
        ci = bootstrap((differences,), np.mean, n_resamples=2000, method="percentile", random_state=0).confidence_interval
        interval = [float(ci.low), float(ci.high)]
    return {"cases": int(differences.size), "mean_difference": float(differences.mean()) if differences.size else None,
            "ci95": interval, "better": int(np.sum(sign * differences > 1e-9)),
            "worse": int(np.sum(sign * differences < -1e-9))}


def compare_to(by_variant: Dict[str, dict], base: str = "twin-trained") -> Dict[str, dict]:
    """Each other variant against `base` on the same cases: FP mL on tumour-free brains, Dice per region on the
    tumour cases."""
    rows = {name: r["per_case"] for name, r in by_variant.items()}
    comparisons = {}
    for name in rows:
        if name == base:
            continue
        comparisons[name] = {"false_positive_ml": paired(rows[base], rows[name], lambda r: r.get("false_positive_ml"),
                                                         lower_is_better=True)}
        for region in REGIONS:
            comparisons[name][f"dice_{region}_tumour_cases"] = paired(
                rows[base], rows[name], lambda r, k=region: r["dice"][k] if r["class"] != "no_tumour" else None)
    return comparisons


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(results: Dict[str, dict]) -> str:
    """results: folder label -> ablate_folder's result. One row per folder and variant."""
    lines = ["| cases | prior | FP mL on tumour-free (n) | Dice WT | Dice TC | Dice ET | tumour cases: Dice WT | TC | ET |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, by_variant in results.items():
        for name, s in by_variant.items():
            lines.append(f"| {label} ({s['cases']}) | {name} | {_f(s['false_positive_ml'])} ({s['tumour_free_cases']}) | "
                         + " | ".join(_f(s["dice_all"][k]) for k in REGIONS) + " | "
                         + " | ".join(_f(s["dice_tumour_cases"][k]) for k in REGIONS) + " |")
    return "\n".join(lines) + "\n"


def _change(c: dict, digits: int = 3) -> str:
    interval = "" if c["ci95"] is None else f" [{_f(c['ci95'][0], digits)}, {_f(c['ci95'][1], digits)}]"
    return f"{_f(c['mean_difference'], digits)}{interval} ({c['better']}/{c['worse']})"


def comparison_table(results: Dict[str, dict], base: str = "twin-trained") -> str:
    """Per folder, each variant minus `base` on the same cases: mean [bootstrap 95 % interval] (cases better /
    worse)."""
    lines = [f"| cases | prior, minus {base} | FP mL on tumour-free | tumour cases: Dice WT | Dice TC | Dice ET |",
             "|---|---|---|---|---|---|"]
    for label, by_variant in results.items():
        for name, c in compare_to(by_variant, base).items():
            lines.append(f"| {label} | {name} | {_change(c['false_positive_ml'])} | "
                         + " | ".join(_change(c[f"dice_{k}_tumour_cases"]) for k in REGIONS) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: Dict[str, dict], models: Dict[str, str], out, data: Optional[Dict[str, str]] = None) -> Path:
    """OUT.json (per-case rows included; the models and folders scored) and OUT.md (the tables)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"models": models, "data": data or {}, "results": results}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("# Lesion-removal prior ablation\n\n" + markdown_table(results) + "\n"
                                      + comparison_table(results))
    return out.with_suffix(".md")
