"""Cache a model's per-voxel outputs on engine cases for the review-region experiments (issue 18).

For each case of an engine folder: the raw label (post-processing off, as `darefuse evaluate` scores it), the
uncertainty, the expected probabilities of the three tumour labels, all on the case's reference grid, and the
truth, cropped to the brain's bounding box. pipeline.run's own steps (prepare, sliding windows, probabilities to
the reference grid, arg-max in the brain), so that a tuning experiment can try many region rules on a pass each.

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/review_cache.py --data /work/data/shared/val \
        --out /work/data/review/cache/val
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.pipeline import preprocess  # noqa: E402
from DareFuseSlicerLib.pipeline.inference import infer  # noqa: E402
from DareFuseSlicerLib.training.dataset import read_rows  # noqa: E402
from DareFuseSlicerLib.training.evaluate import load_case  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "DareFuseSlicer" / "Resources" / "Models" / "darefuse.safetensors"


def cache_case(model, folder: Path, row: dict, out: Path) -> float:
    started = time.perf_counter()
    case = load_case(folder, row)
    prep = case.prep
    result, _, _ = infer(model, prep.array, prep.present)
    class_probabilities = model.class_probabilities(result)[0].double().numpy()
    tumour = preprocess.to_reference(model.probabilities(result)[0, 1:].numpy(), prep)
    background = 1.0 - tumour.sum(0)
    label = np.argmax(np.concatenate([background[None], tumour]), axis=0).astype(np.uint8)
    inside = sitk.GetArrayViewFromImage(prep.foreground_reference).astype(bool)
    label[~inside] = 0
    uncertainty = sitk.GetArrayFromImage(preprocess.to_reference(model.uncertainty(result)[0, 0].numpy(), prep))
    uncertainty = np.where(inside, np.clip(uncertainty, 0.0, 1.0), 0.0).astype(np.float32)
    box = np.argwhere(inside)
    lo, hi = box.min(0), box.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    reference = prep.reference
    np.savez_compressed(
        out / f"{row['case_id']}.npz", label=label[crop], truth=case.truth[crop], uncertainty=uncertainty[crop],
        tumour=tumour[(slice(None),) + crop].astype(np.float16), inside=inside[crop], offset=lo,
        spacing=np.array(reference.GetSpacing()), origin=np.array(reference.GetOrigin()),
        direction=np.array(reference.GetDirection()), size=np.array(reference.GetSize()),
        class_probabilities=class_probabilities, tumour_class=row["tumour_class"],
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=str(BUNDLED))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    for row in read_rows(folder):
        if (out / f"{row['case_id']}.npz").is_file():
            continue
        seconds = cache_case(model, folder, row, out)
        print(f"{row['case_id']} {row['tumour_class']} {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
