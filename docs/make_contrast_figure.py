"""Write docs/images/missing_contrasts.png: the bundled model on the bundled sample glioma given all four
contrasts, then fewer, beside the ground truth; each panel's title has the class and the Dice of WT/TC/ET.

    .venv/bin/python docs/make_contrast_figure.py [--out docs/images/missing_contrasts.png]

Runs the real pipeline (`pipeline.run`, the card's post-processing) once per subset. Axial slice through the
true tumour core, 110 mm around the tumour, radiological convention (patient's right on the image's left),
labels filled over FLAIR (or the first given contrast when FLAIR is missing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRAST_NAMES, CONTRASTS, LABEL_COLOURS, LABELS  # noqa: E402
from DareFuseSlicerLib.metrics import region_dice  # noqa: E402
from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.pipeline.run import run  # noqa: E402
from make_phantom_figure import _lps, save_with_legend  # noqa: E402  (docs/ is this script's folder)

SAMPLE = ROOT / "DareFuseSlicer" / "Resources" / "SampleData" / "DareFuseSample-glioma"
MODEL = ROOT / "DareFuseSlicer" / "Resources" / "Models" / "darefuse.safetensors"
SUBSETS = (("t1", "t1ce", "t2", "flair"), ("t1ce", "t2", "flair"), ("t1ce", "flair"), ("t1", "t2", "flair"), ("flair",), ("t1ce",))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "missing_contrasts.png")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    images = {c: sitk.ReadImage(f"{SAMPLE}-{BRATS_SUFFIX[c]}.nii.gz") for c in CONTRASTS}
    truth_image = sitk.ReadImage(f"{SAMPLE}-seg.nii.gz")
    truth = _lps(truth_image)
    z = int(np.argmax(np.isin(truth, (1, 3)).sum(axis=(1, 2))))
    sx, sy = sitk.DICOMOrient(truth_image, "LPS").GetSpacing()[:2]
    model = load_model(MODEL)

    panels = [("ground truth\n(FLAIR beneath)\n", truth, "flair")]
    for subset in SUBSETS:
        result = run({c: images[c] if c in subset else None for c in CONTRASTS}, model, outputs=("segmentation",))
        label = _lps(result.label)
        wt, tc, et = region_dice(label, truth)
        title = (" + ".join(CONTRAST_NAMES[c] for c in subset) + f"\n{result.predicted_class.replace('_', ' ')}\n"
                 f"Dice WT {wt:.2f}, TC {tc:.2f}, ET {et:.2f}")
        panels.append((title, label, "flair" if "flair" in subset else subset[0]))
        print(title.replace("\n", ": "), flush=True)

    colours = [LABEL_COLOURS[LABELS[v]] + (0.6,) for v in (1, 2, 3)]
    fill = ListedColormap([(0, 0, 0, 0)] + colours)
    backgrounds = {c: _lps(images[c]) for c in CONTRASTS}
    # A square window of 110 mm around the true tumour on this slice: the lesion, not the whole head.
    ys, xs = np.nonzero(truth[z] > 0)
    half_y, half_x = int(55 / sy), int(55 / sx)
    cy, cx = int(ys.mean()), int(xs.mean())
    y0 = min(max(cy - half_y, 0), truth.shape[1] - 2 * half_y)
    x0 = min(max(cx - half_x, 0), truth.shape[2] - 2 * half_x)
    window = (slice(y0, y0 + 2 * half_y), slice(x0, x0 + 2 * half_x))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 3.4), facecolor="black")
    for ax, (title, label, background) in zip(axes, panels):
        img = backgrounds[background][z][window]
        ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img[img > 0], 99.5), aspect=sy / sx, interpolation="nearest")
        ax.imshow(label[z][window], cmap=fill, vmin=0, vmax=3, aspect=sy / sx, interpolation="nearest")
        ax.set_title(title, color="white", fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.005, right=0.995, top=0.8, bottom=0.1, wspace=0.04)
    return save_with_legend(fig, args.out, fontsize=9)


if __name__ == "__main__":
    main()
