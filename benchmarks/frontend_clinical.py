"""Issue 16: the whole-head front end alone on the data engine's clinical cases (no segmentation network).

    .venv/bin/python benchmarks/frontend_clinical.py --data CLINICAL_FOLDER [--max-cases N] [--cases ID ...] \
        [--contrasts t1,t2]

Per case: the front end (brain mask of the reference, rigid registration of the others, the mask from every
registered contrast where the brain-mask card says so) and what the network is fed, then the same scores
`darefuse evaluate` reports (training/frontend_eval.py): registration error in mm against the manifest's
motion, brain-mask Dice against the engine's mask, tumour voxels outside the mask; how the mask errs (mL beyond
the engine's mask, mL of it missed); and the stage times (wall and CPU). Prints a markdown table and the summary;
with --registrations also one row per registration: its error beside what the front end itself sees of it (the
Mattes metric before and after, its relative gain, the rotation and shift, which of register.py's two searches
was kept), to look for a check that could tell a registration that converged off from one that did not.
The mask scored is the front end's, before the segmented tumour is added to it (no network runs here): `darefuse
evaluate` scores the mask a run gives out.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import BRATS_SUFFIX  # noqa: E402
from DareFuseSlicerLib.pipeline import frontend, preprocess  # noqa: E402
from DareFuseSlicerLib.training import frontend_eval  # noqa: E402
from DareFuseSlicerLib.training.brainmask import clinical_rows  # noqa: E402
from DareFuseSlicerLib.training.evaluate import parse_contrasts  # noqa: E402


def mask_errors_ml(mask: sitk.Image, engine: sitk.Image) -> tuple:
    """mL of `mask` beyond the engine's brain mask, and mL of the engine's mask it misses (same grid)."""
    given, truth = sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(engine) > 0
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return np.count_nonzero(given & ~truth) * voxel_ml, np.count_nonzero(truth & ~given) * voxel_ml


def registration_rows(case_id: str, front, case: dict) -> list:
    """Each registration's error (mm, against the engine's motion) beside the front end's own view of it."""
    return [{"case": case_id, "contrast": name, "error_mm": case["registration_error_mm"].get(name),
             "initial": r.initial_metric, "final": r.final_metric, "gain": r.final_metric / r.initial_metric - 1.0,
             "rotation_deg": r.rotation_deg, "shift_mm": r.shift_mm, "accepted": r.accepted, "kept": r.kept}
            for name, r in front.registrations.items()]


def print_registrations(rows: list) -> None:
    """Worst error first."""
    print("\n| case | contrast | error (mm) | metric before | after | relative gain | rotation (deg) | shift (mm) | "
          "accepted | search kept |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -(r["error_mm"] or 0.0)):
        error = "n/a" if r["error_mm"] is None else f"{r['error_mm']:.2f}"
        print(f"| {r['case']} | {r['contrast']} | {error} | {r['initial']:.4f} | {r['final']:.4f} | "
              f"{r['gain']:.3f} | {r['rotation_deg']:.1f} | {r['shift_mm']:.1f} | {r['accepted']} | "
              f"{r['kept'] or '-'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--cases", nargs="+", help="only these case ids")
    parser.add_argument("--contrasts", help="comma-separated subset (default: all four)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--registrations", action="store_true", help="also a row per registration")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    contrasts = parse_contrasts(args.contrasts)
    folder = Path(args.data)
    model = frontend.load_brainmask_model()
    rows = [r for r in clinical_rows(folder) if not args.cases or r["case_id"] in args.cases][: args.max_cases or None]
    scores, times, registrations = [], [], []

    def stage_timer(record):
        @contextmanager
        def stage(name, message):
            wall, cpu = time.perf_counter(), time.process_time()
            yield None
            record[name] = (round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2))
        return stage

    print("| case | class | brain-mask Dice | mL beyond / missed | registration error (mm) | left out | tumour voxels "
          "outside | brain mask wall/CPU (s) | registration wall/CPU (s) | mask from every contrast wall/CPU (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        images = {c: sitk.ReadImage(str(folder / row[BRATS_SUFFIX[c]])) for c in contrasts}
        record = {}
        front = frontend.run_front_end(images, model=model, stage=stage_timer(record))
        preprocess.prepare(front.images, brain_mask=front.network_mask, region=front.region)  # what the network is fed
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / row["seg"])))
        case = frontend_eval.case_scores(folder, row, front, truth, np.zeros_like(truth))  # no segmented tumour
        beyond, missed = mask_errors_ml(front.brain_mask, sitk.ReadImage(str(folder / row["brainmask"])))
        scores.append(case)
        times.append(record)
        registrations += registration_rows(row["case_id"], front, case)
        errors = ", ".join(f"{c} {e:.2f}" for c, e in case["registration_error_mm"].items())
        print(f"| {row['case_id']} | {row['tumour_class']} | {case['brain_mask_dice']:.4f} | {beyond:.1f} / "
              f"{missed:.1f} | {errors} | "
              f"{', '.join(case['left_out']) or '-'} | {case['tumour_voxels_outside_mask']} | "
              f"{record['brain_mask'][0]}/{record['brain_mask'][1]} | "
              f"{record['registration'][0]}/{record['registration'][1]} | "
              f"{record['brain_mask_fusion'][0]}/{record['brain_mask_fusion'][1]} |", flush=True)
    if args.registrations:
        print_registrations(registrations)
    summary = frontend_eval.summary(scores)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    summary["contrasts"] = list(contrasts)
    print("\n" + json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "per_case": scores, "times": times}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
