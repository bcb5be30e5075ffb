"""Run every case of a data-engine folder once through the pipeline, as a user runs it (the model card's
settings), and keep one row per case in a JSON file written as each row is made: a stopped run keeps what it
did and resumes there. Shared by the development-set scripts (unshown_alarm.py, outside_brain.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS  # noqa: E402
from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.pipeline.run import run  # noqa: E402
from DareFuseSlicerLib.training.dataset import read_rows  # noqa: E402

RAW_MODEL = Path(__file__).resolve().parents[1] / "DareFuseSlicer/Resources/Models/darefuse-raw.safetensors"


def run_cases(data: Path, out: Path, make_row: Callable, model_path: Path = RAW_MODEL, threads: int = 1,
              keep_margin: bool = False) -> None:
    """make_row(result, truth array, voxel mL) -> the row's own fields (set, case, class and what was shown
    are added)."""
    torch.set_num_threads(threads)
    model = load_model(model_path)
    rows = json.loads(out.read_text()) if out.exists() else []
    done = {row["case_id"] for row in rows}
    for case in read_rows(data):
        if case["case_id"] in done:
            continue
        images = {c: sitk.ReadImage(str(data / case[BRATS_SUFFIX[c]])) for c in CONTRASTS}
        result = run(images, model, outputs=("segmentation",), keep_margin=keep_margin)
        truth = sitk.ReadImage(str(data / case["seg"]))
        voxel_ml = float(np.prod(truth.GetSpacing())) / 1000.0
        row = {"set": data.name, "case_id": case["case_id"], "class": case["tumour_class"],
               "shown_wt_ml": result.volumes_ml["WT"], "low_confidence": result.low_confidence,
               **make_row(result, sitk.GetArrayViewFromImage(truth), voxel_ml)}
        rows.append(row)
        out.write_text(json.dumps(rows, indent=1))
        print(case["case_id"], case["tumour_class"], {k: v for k, v in row.items() if k not in ("set", "case_id")},
              flush=True)


def add_run_command(commands) -> None:
    """The `run` subcommand every such script has (argparse subparsers)."""
    one = commands.add_parser("run", help="run each case of a folder once; one row per case")
    one.add_argument("--data", type=Path, required=True)
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--model", type=Path, default=RAW_MODEL)
    one.add_argument("--threads", type=int, default=1)


def run_or_choose(argv, description: str, make_row: Callable, choose: Callable, keep_margin: bool = False) -> None:
    """The command line of a rule's development script: `run` (one row per case, run_cases) and `choose ROWS.json
    ... [--record MODEL]` (choose(row files, model or None) applies the rule and may record it in the card)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    add_run_command(commands)
    pick = commands.add_parser("choose")
    pick.add_argument("rows", nargs="+")
    pick.add_argument("--record", type=Path, help="write the choice into this model's card")
    args = parser.parse_args(argv)
    if args.command == "run":
        run_cases(args.data, args.out, make_row, args.model, args.threads, keep_margin=keep_margin)
    else:
        choose(args.rows, args.record)
