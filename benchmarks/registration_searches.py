"""Issue 16: register.py's searches on the data engine's clinical cases, each scored against the engine's motion.

    .venv/bin/python benchmarks/registration_searches.py --data DIR [DIR ...] [--powell NAME ...] [--max-cases N]

Per case, the front end's brain mask of the reference, then every other contrast registered as the front end
registers it (register.register over the mask's region, as frontend.registration_stage calls it, without
resampling the contrast afterwards). For each registration: the error in mm (the mean distance between
where the registration and the engine's motion take the engine's brain) of each search's transform and of the
one kept, and the seconds it took. A contrast registered on its own thick slices gets both searches (the
pyramid and Powell's); a 3-D one the pyramid alone. With --powell, the second search's settings are set in turn
to each named candidate of CANDIDATES; the first named is the module's own. Prints one summary row per candidate
and kind of contrast (median, mean, worst error; registrations over 1 and 2 mm; mean seconds), then the worst
registrations.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS, contrast_name, reference_contrast  # noqa: E402
from DareFuseSlicerLib.pipeline import frontend, register  # noqa: E402
from DareFuseSlicerLib.training.brainmask import clinical_rows  # noqa: E402
from DareFuseSlicerLib.training.frontend_eval import registration_error  # noqa: E402

#: Powell's settings tried (docs/registration-two-searches.md): line steps, step and value tolerance, sampling.
CANDIDATES = {
    "tight-0.2": (10, 0.01, 1e-4, 0.2),
    "tight-0.1": (10, 0.01, 1e-4, 0.1),
    "loose-0.1": (5, 0.05, 1e-3, 0.1),
    "loose-0.05": (5, 0.05, 1e-3, 0.05),
}


def use_candidate(name: str) -> None:
    register.POWELL_LINE_STEPS, register.POWELL_STEP_TOLERANCE, register.POWELL_VALUE_TOLERANCE, \
        register.POWELL_SAMPLING = CANDIDATES[name]


def module_candidate() -> str:
    own = (register.POWELL_LINE_STEPS, register.POWELL_STEP_TOLERANCE, register.POWELL_VALUE_TOLERANCE,
           register.POWELL_SAMPLING)
    return next((name for name, values in CANDIDATES.items() if values == own), "module")


def case_rows(folder: Path, row: dict, model, candidates: list) -> list:
    """One row per registration and candidate: each search's error, the kept one's, seconds."""
    images = {c: sitk.ReadImage(str(folder / row[BRATS_SUFFIX[c]])) for c in CONTRASTS}
    reference = reference_contrast(images)
    mask, _, _ = frontend.brain_mask_stage(images[reference], contrast_name(reference), model)
    points = register.mask_points(sitk.ReadImage(str(folder / row["brainmask"])), step=4)
    region = register.brain_region(mask)
    out = []
    for candidate in candidates:
        if candidate in CANDIDATES:
            use_candidate(candidate)
        for name in (c for c in CONTRASTS if c != reference):
            result = register.register(images[reference], images[name], region, contrast=name)
            errors = {search: registration_error(row, name, t, points) for search, t in result.found.items()}
            out.append({"case": row["case_id"], "contrast": name, "candidate": candidate,
                        "stack": "powell" in result.found, "errors": errors, "kept": result.kept,
                        "error": registration_error(row, name, result.transform, points),
                        "seconds": result.seconds})
    return out


def summary_lines(rows: list) -> list:
    lines = ["| candidate | contrasts | registrations | search | median (mm) | mean | worst | > 1 mm | > 2 mm | "
             "mean seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for candidate in dict.fromkeys(r["candidate"] for r in rows):
        for stack in (True, False):
            group = [r for r in rows if r["candidate"] == candidate and r["stack"] == stack]
            if not group:
                continue
            seconds = np.mean([r["seconds"] for r in group])
            searches = ["pyramid", "powell", "kept"] if stack else ["kept"]
            for search in searches:
                e = np.array([r["error"] if search == "kept" else r["errors"][search] for r in group])
                lines.append(f"| {candidate} | {'thick stacks' if stack else '3-D'} | {len(group)} | {search} | "
                             f"{np.median(e):.3f} | {e.mean():.3f} | {e.max():.2f} | {int((e > 1).sum())} | "
                             f"{int((e > 2).sum())} | {seconds:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--powell", nargs="+", choices=sorted(CANDIDATES), help="candidates for the second search")
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    candidates = args.powell or [module_candidate()]
    model = frontend.load_brainmask_model()
    rows = []
    for data in args.data:
        folder = Path(data)
        for row in clinical_rows(folder)[: args.max_cases or None]:
            rows += case_rows(folder, row, model, candidates)
            done = [r for r in rows if r["case"] == row["case_id"]]
            print(f"{row['case_id']}: " + ", ".join(f"{r['candidate']} {r['contrast']} {r['error']:.2f} mm "
                                                   f"({r['kept']})" for r in done), flush=True)
    print("\n".join(["", *summary_lines(rows), "", "Worst registrations (kept):"]))
    for r in sorted(rows, key=lambda r: -r["error"])[:8]:
        errors = ", ".join(f"{s} {e:.2f}" for s, e in r["errors"].items())
        print(f"- {r['case']} {r['contrast']} ({r['candidate']}): {r['error']:.2f} mm, kept {r['kept']}; {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
