"""Issue 16: the brain-extraction candidates measured on the data engine's whole-head cases.

    .venv/bin/python benchmarks/brainmask_candidates.py --data CLINICAL_FOLDER [--max-cases N]
        [--deepbet-path DIR] [--model Resources/Models/brainmask.safetensors]

For each clinical case: the bundled brain-mask network on every contrast as the reference (Dice against the
engine's mask brought onto that contrast's grid, tumour voxels of the engine's label brought there left outside
the mask and outside the mask grown by the card's margin (`mask_settings.margin_mm`: beyond the segmentation
network's reach, so never put back into the mask given out), the image's coefficient of variation inside the mask (brainmask.tissue_variation: what the run's
uniform-intensity doubt reads), wall and CPU seconds; a summary per reference contrast at the end) and, when --deepbet-path holds
deepbet 1.0.2 (MIT;
`pip install --no-deps --target DIR deepbet==1.0.2 connected-components-3d fill_voids`), deepbet on the T1
(T1 only). deepbet's weights are TorchScript archives: their SHA256 is checked against the values recorded
below, but TorchScript cannot be loaded with torch.load(weights_only=True) (the archive carries the code it
runs), which is one reason it is measured here and not made a dependency. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS  # noqa: E402
from DareFuseSlicerLib.metrics import mask_dice  # noqa: E402
from DareFuseSlicerLib.pipeline import brainmask, frontend  # noqa: E402
from DareFuseSlicerLib.training.brainmask import clinical_rows  # noqa: E402
from DareFuseSlicerLib.training.frontend_eval import truth_on  # noqa: E402

#: SHA256 of deepbet 1.0.2's weight files (the wheel on PyPI, measured 2026-12).
DEEPBET_SHA256 = {
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deepbet_mask(folder: Path, path: Path, deepbet_path: Path):
    sys.path.insert(0, str(deepbet_path))
    for name, digest in DEEPBET_SHA256.items():
        actual = _sha256(deepbet_path / "data" / "models" / name)
        if actual != digest:
            raise SystemExit(f"deepbet weights {name}: SHA256 {actual}, expected {digest}; not loading them.")
    import nibabel as nib
    from deepbet.bet import BrainExtraction

    bet = BrainExtraction(no_gpu=True)
    _, mask, _ = bet.run(nib.load(str(path)))
    out = folder / "_deepbet_mask.nii.gz"
    nib.save(mask, str(out))
    image = sitk.ReadImage(str(out))
    out.unlink()
    return sitk.GetArrayFromImage(image) > 0


def print_summary(results) -> None:
    """Per reference contrast: mean and worst Dice, tumour (and meningioma) voxels outside the mask and beyond
    the margin, tissue variation, mean seconds."""
    print("\n| reference | cases | brain-mask Dice mean | worst | tumour voxels outside (meningioma) | "
          "beyond the margin (meningioma) | tissue variation min-max | mean wall / CPU seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for contrast in CONTRASTS:
        mine = [r for r in results if r["contrast"] == contrast]
        if not mine:
            continue
        dice = [r["dice"] for r in mine]
        meningioma = {key: sum(r[key] for r in mine if r["tumour_class"] == "meningioma")
                      for key in ("outside", "beyond")}
        print(f"| {contrast} | {len(mine)} | {np.mean(dice):.4f} | {np.min(dice):.4f} | "
              f"{sum(r['outside'] for r in mine)} ({meningioma['outside']}) | "
              f"{sum(r['beyond'] for r in mine)} ({meningioma['beyond']}) | "
              f"{min(r['variation'] for r in mine):.2f}-{max(r['variation'] for r in mine):.2f} | "
              f"{np.mean([r['wall'] for r in mine]):.1f} / {np.mean([r['cpu'] for r in mine]):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--model", default=str(frontend.BRAINMASK_MODEL))
    parser.add_argument("--deepbet-path")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(args.data)
    model = frontend.load_brainmask_model(Path(args.model))
    margin = brainmask.MaskSettings.of(model).margin_mm
    rows = clinical_rows(folder)[: args.max_cases or None]
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    print(f"| case | class | reference | method | brain-mask Dice | tumour voxels outside | beyond the {margin:g} mm "
          "margin | wall / CPU seconds |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for row in rows:
        mask_ref = sitk.ReadImage(str(folder / row["brainmask"]))
        seg_ref = sitk.ReadImage(str(folder / row["seg"]))
        for contrast in CONTRASTS:
            path = folder / row[BRATS_SUFFIX[contrast]]
            image = sitk.ReadImage(str(path), sitk.sitkFloat32)
            truth = truth_on(image, mask_ref, row, contrast) > 0
            seg = truth_on(image, seg_ref, row, contrast) > 0
            wall, cpu = time.perf_counter(), time.process_time()
            mask_image = brainmask.extract_brain(model, image)[0]
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            mask = sitk.GetArrayFromImage(mask_image) > 0
            result = {"contrast": contrast, "tumour_class": row["tumour_class"], "dice": mask_dice(mask, truth),
                      "outside": int(np.count_nonzero(seg & ~mask)), "wall": wall, "cpu": cpu,
                      "beyond": int(np.count_nonzero(seg[brainmask.distance_mm(mask_image) > margin])),
                      "variation": brainmask.tissue_variation(image, mask_image)}
            results.append(result)
            print(f"| {row['case_id']} | {row['tumour_class']} | {contrast} | DareFuse brain mask | "
                  f"{result['dice']:.4f} | {result['outside']} | {result['beyond']} | {wall:.1f} / {cpu:.1f} |",
                  flush=True)
            if contrast == "t1" and args.deepbet_path:
                started = time.perf_counter()
                mask = deepbet_mask(folder, path, Path(args.deepbet_path))
                seconds = time.perf_counter() - started
                print(f"| {row['case_id']} | {row['tumour_class']} | t1 | deepbet 1.0.2 | "
                      f"{mask_dice(mask, truth):.4f} | {int(np.count_nonzero(seg & ~mask))} | | {seconds:.1f} |",
                      flush=True)
    print_summary(results)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
