"""Tumour segments outside the brain (whole-head studies): for each case, run once by the pipeline as a user runs
it, the post-processed whole-tumour components that share no voxel with the brain mask given out (which keeps
only the part connected to the brain), their volume and whether they touch the truth. The rule that decided
whether the pipeline removes them is in the README (Reliability) and the raw model's card.

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/outside_brain.py run --data SET --out ROWS.json [--threads 1]
    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/outside_brain.py summary ROWS.json [ROWS.json ...]

`run` writes each case's row as soon as it is made (a stopped run keeps what it did and resumes there).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from case_runs import add_run_command, run_cases  # noqa: E402
from DareFuseSlicerLib.training.lesions import components  # noqa: E402


def outside_parts(label: np.ndarray, mask: np.ndarray, truth: np.ndarray, voxel_ml: float) -> list:
    """[mL, touches the truth] for each component of label > 0 with no voxel in `mask`."""
    labels, sizes = components(label > 0)
    inside = set(np.unique(labels[mask > 0]).tolist())
    on_truth = set(np.unique(labels[truth > 0]).tolist())
    return [[round(float(sizes[c]) * voxel_ml, 3), c in on_truth] for c in range(1, sizes.size) if c not in inside]


def case_row(result, truth: np.ndarray, voxel_ml: float) -> dict:
    return {"outside": outside_parts(sitk.GetArrayViewFromImage(result.label),
                                     sitk.GetArrayViewFromImage(result.brain_mask), truth, voxel_ml)}


def summary(paths) -> None:
    rows = [row for path in paths for row in json.loads(Path(path).read_text())]
    parts = [(row, ml, on_truth) for row in rows for ml, on_truth in row["outside"]]
    print(f"{len(rows)} cases ({sum(r['class'] == 'no_tumour' for r in rows)} tumour-free); components outside the "
          f"brain mask given out: {len(parts)} in {len({r['case_id'] for r, _, _ in parts})} cases; touching the "
          f"truth: {sum(t for _, _, t in parts)}; false: {sum(not t for _, _, t in parts)} "
          f"({sum(ml for _, ml, t in parts if not t):.2f} mL)")
    for row, ml, on_truth in parts:
        print(f"  {row['case_id']} {row['class']}: {ml} mL, {'touches the truth' if on_truth else 'false'}; "
              f"shown WT {row['shown_wt_ml']:.2f} mL; low confidence {row['low_confidence']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_command(sub)
    pick = sub.add_parser("summary")
    pick.add_argument("rows", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "run":
        run_cases(args.data, args.out, case_row, args.model, args.threads)
    else:
        summary(args.rows)


if __name__ == "__main__":
    main()
