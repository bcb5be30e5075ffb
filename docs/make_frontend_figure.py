"""Write docs/images/frontend.png: a raw whole-head study through the front end and the bundled raw-study model.

    .venv/bin/python docs/make_frontend_figure.py [--data CLINICAL_FOLDER --case CASE_ID | --seed 5001]
                                                  [--out docs/images/frontend.png]

Row 1: the four contrasts as acquired (each on its own grid: whole head, noise in the air, thick T2/FLAIR
slices, motion between sequences), the slice nearest the tumour's centre in its own plane. Row 2: the
reference (T1) with the brain mask given out (made from every registered contrast), and the other contrasts
co-registered onto the reference grid (what `--save-registered` writes), the mask's outline on each. Row 3:
the segmentation on the reference grid beside the engine's ground truth, over the registered FLAIR. Runs the
real pipeline (`pipeline.run`); without --data the case is made with the data engine (`make_case(seed,
acquisition="clinical")`, seed 5001 from the engine's development range by default).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRAST_NAMES, CONTRASTS, LABEL_COLOURS, LABELS  # noqa: E402
from DareFuseSlicerLib.metrics import mask_dice, region_dice  # noqa: E402
from DareFuseSlicerLib.logic import bundled_model_path, model_path_for  # noqa: E402
from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.pipeline.run import run  # noqa: E402


def _case(args):
    """(images, seg, brain mask, case id) from a folder or made by the engine."""
    if args.data:
        from DareFuseSlicerLib.phantoms import read_manifest

        folder = Path(args.data)
        row = next(r for r in read_manifest(folder / "manifest.csv") if r["case_id"] == args.case)
        images = {c: sitk.ReadImage(str(folder / row[BRATS_SUFFIX[c]])) for c in CONTRASTS}
        return images, sitk.ReadImage(str(folder / row["seg"])), sitk.ReadImage(str(folder / row["brainmask"])), args.case
    from DareFuseSlicerLib.phantoms import make_case, write_case

    case = make_case(args.seed, acquisition="clinical")
    with tempfile.TemporaryDirectory() as tmp:  # through files, as a user's study arrives (int16 on disk)
        paths = write_case(case, tmp, tumour_free=False)
        images = {c: sitk.ReadImage(str(paths[BRATS_SUFFIX[c]])) for c in CONTRASTS}
    return images, case.label, case.brain_mask, case.case_id


def _axial(image: sitk.Image, z_world: float) -> np.ndarray:
    """The LPS-oriented axial slice nearest the physical height z_world (radiological: R on the left)."""
    oriented = sitk.DICOMOrient(image, "LPS")
    k = oriented.TransformPhysicalPointToIndex(list(oriented.GetOrigin()[:2]) + [z_world])[2]
    k = int(np.clip(k, 0, oriented.GetSize()[2] - 1))
    return np.flipud(sitk.GetArrayFromImage(oriented)[k]), oriented.GetSpacing()


def _show(ax, array, spacing, title, overlay=None, contour=None):
    low, high = np.percentile(array, [1, 99.5])
    ax.imshow(array, cmap="gray", vmin=low, vmax=high, aspect=spacing[1] / spacing[0], interpolation="nearest")
    if overlay is not None:
        ax.imshow(overlay, aspect=spacing[1] / spacing[0], interpolation="nearest")
    if contour is not None:
        ax.contour(contour, [0.5], colors="cyan", linewidths=0.6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--case")
    parser.add_argument("--seed", type=int, default=5001)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "frontend.png")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, seg, engine_mask, case_id = _case(args)
    model = load_model(model_path_for(images, {n: n for n in images}) or bundled_model_path())  # as one click would
    result = run(images, model, outputs=("segmentation",))
    truth = sitk.GetArrayViewFromImage(seg)
    centre = np.argwhere(truth > 0).mean(0) if truth.any() else np.array(truth.shape) / 2
    z_world = seg.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre[::-1]])[2]
    colours = np.zeros((4, 4), np.float32)
    for value, name in LABELS.items():
        colours[value] = LABEL_COLOURS[name] + (0.6,)

    figure, axes = plt.subplots(3, 4, figsize=(12, 9.5))
    for ax, contrast in zip(axes[0], CONTRASTS):
        image = images[contrast]
        array, spacing = _axial(image, z_world)
        _show(ax, array, spacing, f"{CONTRAST_NAMES[contrast]} as acquired\n"
              + " x ".join(f"{s:.2f}" for s in image.GetSpacing()) + " mm")
    mask_slice, _ = _axial(result.brain_mask, z_world)
    dice = mask_dice(sitk.GetArrayViewFromImage(result.brain_mask), sitk.GetArrayViewFromImage(engine_mask))
    shown = {"t1": sitk.Cast(images["t1"], sitk.sitkFloat32), **result.registered}
    for ax, contrast in zip(axes[1], CONTRASTS):
        if contrast not in shown:
            ax.set_axis_off()
            ax.set_title(f"{CONTRAST_NAMES[contrast]} left out", fontsize=8)
            continue
        array, spacing = _axial(shown[contrast], z_world)
        reg = result.front_end.get("registration", {}).get(contrast)
        title = (f"T1 (reference), the brain mask given out\nDice {dice:.3f} against the engine's" if contrast == "t1" else
                 f"{CONTRAST_NAMES[contrast]} registered to T1\n{reg['rotation_deg']:.1f} deg, "
                 f"{reg['shift_mm']:.1f} mm")
        _show(ax, array, spacing, title, contour=mask_slice)
    flair, spacing = _axial(shown.get("flair", shown["t1"]), z_world)
    label, _ = _axial(result.label, z_world)
    truth_slice, _ = _axial(seg, z_world)
    wt, tc, et = region_dice(sitk.GetArrayViewFromImage(result.label), truth)
    _show(axes[2, 0], flair, spacing, f"segmentation: {result.predicted_class.replace('_', ' ')}\n"
          f"Dice WT {wt:.2f}, TC {tc:.2f}, ET {et:.2f}", overlay=colours[np.clip(label, 0, 3)])
    _show(axes[2, 1], flair, spacing, "ground truth (data engine)", overlay=colours[np.clip(truth_slice, 0, 3)])
    for ax in axes[2, 2:]:
        ax.set_axis_off()
    axes[2, 2].text(0.0, 0.5, "NETC red, SNFH green, ET yellow\nbrain mask outline cyan\n"
                    "axial, radiological convention", fontsize=8, va="center")
    if result.low_confidence:
        axes[2, 3].text(0.0, 0.5, "LOW CONFIDENCE\n(see report.json's warnings)", fontsize=8, va="center",
                        color="darkred")
    figure.suptitle(f"{case_id}: a raw whole-head study through the front end and {model.card['version']}", fontsize=10)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.02, wspace=0.08, hspace=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(args.out), dpi=90)
    print(f"wrote {args.out}; brain-mask Dice {dice:.4f}; Dice WT/TC/ET {wt:.3f}/{tc:.3f}/{et:.3f}; "
          f"class {result.predicted_class}; timings {result.timings}")
    return args.out


if __name__ == "__main__":
    main()
