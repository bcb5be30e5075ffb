"""Issue 20 §2: which of a model's labels `darefuse adapt` would keep as pseudo-labels, and how often they are
right. On labelled site cases (each with -seg), crops drawn as adapt draws them; per class: the voxels the model
labels so, the share kept by one threshold for all classes (--max-uncertainty), the precision in each
uncertainty bin, and the threshold `--pseudo-precision P` would calibrate; then where each true class's voxels
go under those thresholds (kept as which class, or not kept). With `--class-gate P ...`, per
candidate `--pseudo-class-gate`: the crops it would label background throughout, the true tumour on them, and
the share of the model's false tumour (on crops without tumour) they hold. With `--background-margin MM ...`,
per candidate adapt `--background-margin`: the thresholds calibrated without the labels it holds back, and
where each true class's voxels then go.

    .venv/bin/python benchmarks/pseudo_labels.py --model MODEL.safetensors --labelled DIR \
        [--cases 40] [--max-uncertainty 0.2] [--precision 0.95] [--cache DIR] [--class-gate P ...] \
        [--background-margin MM ...] [--background-precision P0] > docs/pseudo-labels.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))
from DareFuseSlicerLib.constants import LABELS, PSEUDO_LABEL_MAX_UNCERTAINTY, REGIONS  # noqa: E402
from DareFuseSlicerLib.training.adapt import AdaptOptions, labelled_crop, load_site, scan_site  # noqa: E402
from DareFuseSlicerLib.network.model import DareFuseNet  # noqa: E402
from DareFuseSlicerLib.training.dataset import SPACING_MM  # noqa: E402
from DareFuseSlicerLib.training.pseudo_labels import (BIN_WIDTH, TeacherVoxels, calibrate_voxels, class_threshold,  # noqa: E402
                                                      margin_voxels, teacher_voxels)
from DareFuseSlicerLib.training.train import stored_start  # noqa: E402

CLASS_NAMES = ("background",) + tuple(LABELS[k] for k in sorted(LABELS))  # BraTS 2023 labels 0-3
BINS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.01)


def site_crops(model_path: str, folder: str, n_cases: int, crops_per_case: int, cache: Optional[str]):
    """The number of cases, the model, and a function giving the crops again (as adapt draws them)."""
    options = AdaptOptions(init=model_path, labelled=folder, unlabelled=None, out="-", cache=cache)
    cases = scan_site(folder, labelled=True)[:n_cases]
    data = load_site(options, cases, [], None, None)
    model, _ = stored_start("darefuse", model_path)
    return len(cases), model, lambda: (labelled_crop(data.labelled_set, k) for k in range(crops_per_case * len(cases)))


def crop_tumour(model: torch.nn.Module, crops) -> np.ndarray:
    """Per crop: the model's P(no tumour), its tumour voxels and the true tumour voxels, (crops, 3)."""
    rows = []
    model.eval()
    for crop in crops:
        with torch.no_grad():
            out = model(crop["image"][None], crop["present"][None], use_prior=True)
        rows.append((float(DareFuseNet.class_probabilities(out)[0, 0]), int((out["evidence"][0].argmax(0) > 0).sum()),
                     int((crop["label"] > 0).sum())))
    return np.array(rows)


def print_truth_fates(v: TeacherVoxels, thresholds: List[float], precision: float) -> None:
    """Where each true class's voxels go under the per-class thresholds: kept as each class, or not kept (above
    its threshold, or held back by a background margin)."""
    keep = (v.u < np.asarray(thresholds)[v.labels]) & ~v.held_back
    print("\n| truth | voxels | " + " | ".join(f"kept as {name}" for name in CLASS_NAMES) + " | not kept |")
    print("|---|---|" + "---|" * (len(CLASS_NAMES) + 1))
    core = np.isin(v.truth, REGIONS["TC"])
    for name, mine in [(name, v.truth == c) for c, name in enumerate(CLASS_NAMES)] + [("tumour core (TC)", core)]:
        n = max(int(mine.sum()), 1)
        shares = [((v.labels == c) & keep & mine).sum() / n for c in range(len(CLASS_NAMES))]
        print(f"| {name} | {int(mine.sum())} | " + " | ".join(f"{x:.3f}" for x in shares)
              + f" | {(mine & ~keep).sum() / n:.3f} |")
    print(f"\nshare of each true class's voxels under the thresholds for precision {precision} above (what "
          "`--pseudo-precision` would keep on these crops)")


def print_margins(model: torch.nn.Module, crops, margins: List[float], precision: float,
                  background_precision: Optional[float]) -> None:
    """Per candidate --background-margin: the calibrated thresholds and where each true class's voxels go."""
    for mm in margins:
        v = teacher_voxels(model, crops(), torch.device("cpu"), margin=margin_voxels(mm, SPACING_MM))
        calibration = calibrate_voxels(v, precision, background_precision)
        print(f"\n### --background-margin {mm} ({margin_voxels(mm, SPACING_MM)} voxels of {SPACING_MM} mm), "
              f"--pseudo-precision {precision}"
              + ("" if background_precision is None else f", --background-precision {background_precision}"))
        print(f"\nthresholds per class {calibration.thresholds}; background labels held back: "
              f"{int((v.held_back & (v.labels == 0)).sum())} of {int((v.labels == 0).sum())}")
        print_truth_fates(v, calibration.thresholds, precision)


def print_gates(rows: np.ndarray, gates: List[float]) -> None:
    p, predicted, truth = rows.T
    false_tumour = predicted[truth == 0].sum()
    print(f"\n| --pseudo-class-gate | crops gated (of {len(rows)}) | gated crops with true tumour | true tumour voxels "
          f"on them (of {int(truth.sum())}) | false tumour voxels on gated crops (of {int(false_tumour)} on crops "
          "without tumour) |")
    print("|---|---|---|---|---|")
    for gate in gates:
        gated = p >= gate
        print(f"| {gate} | {int(gated.sum())} | {int((gated & (truth > 0)).sum())} | {int(truth[gated].sum())} | "
              f"{int(predicted[gated & (truth == 0)].sum())} |")
    print("\nfalse tumour: voxels the model labels tumour on crops whose truth holds none (training/pseudo_labels.py "
          "gate_by_class)")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--labelled", required=True, help="site cases with -seg files")
    parser.add_argument("--cases", type=int, default=40, help="the folder's first N cases")
    parser.add_argument("--crops-per-case", type=int, default=1)
    parser.add_argument("--max-uncertainty", type=float, default=PSEUDO_LABEL_MAX_UNCERTAINTY)
    parser.add_argument("--precision", type=float, default=0.95)
    parser.add_argument("--cache")
    parser.add_argument("--class-gate", type=float, nargs="+", metavar="P", help="candidate --pseudo-class-gate values")
    parser.add_argument("--background-margin", type=float, nargs="+", metavar="MM",
                        help="candidate adapt --background-margin values, in mm")
    parser.add_argument("--background-precision", type=float, metavar="P0", help="with --background-margin")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, model, crops = site_crops(args.model, args.labelled, args.cases, args.crops_per_case, args.cache)
    v = teacher_voxels(model, crops(), torch.device("cpu"))
    u, labels, truth = v.u, v.labels, v.truth
    print(f"`{args.model}` on {args.crops_per_case} crop(s) of each of {n} labelled cases of `{args.labelled}`\n")
    bins = [f"u {lo:.1f}-{min(hi, 1.0):.1f}" for lo, hi in zip(BINS, BINS[1:])]
    print(f"| class | labelled so | kept at u < {args.max_uncertainty} | precision of the kept | "
          + " | ".join(bins) + f" | threshold for precision {args.precision} |")
    print("|---|---|---|---|" + "---|" * len(bins) + "---|")
    thresholds = []
    for c, name in enumerate(CLASS_NAMES):
        mine = labels == c
        kept = mine & (u < args.max_uncertainty)
        right = truth == c
        cells = []
        for lo, hi in zip(BINS, BINS[1:]):
            in_bin = mine & (u >= lo) & (u < hi)
            cells.append(f"{right[in_bin].mean():.3f} ({in_bin.sum()})" if in_bin.any() else "- (0)")
        share = kept.sum() / max(mine.sum(), 1)
        precision = f"{right[kept].mean():.3f}" if kept.any() else "-"
        threshold = class_threshold(u[mine], right[mine], args.precision)
        thresholds.append(threshold)
        print(f"| {name} | {mine.sum()} | {share:.3f} | {precision} | " + " | ".join(cells) + f" | {threshold:.2f} |")
    print(f"\nprecision in each uncertainty bin (voxels in brackets); the threshold walks bins of {BIN_WIDTH} "
          "(training/pseudo_labels.py)")
    print_truth_fates(v, thresholds, args.precision)
    if args.class_gate:
        print_gates(crop_tumour(model, crops()), args.class_gate)
    if args.background_margin:
        print_margins(model, crops, args.background_margin, args.precision, args.background_precision)


if __name__ == "__main__":
    main()
