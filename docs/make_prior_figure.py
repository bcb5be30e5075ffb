"""Write docs/images/priors.png: the lesion-removal priors side by side on cases of one folder. Per case (a
row): FLAIR with the true tumour's outline, then each model's difference prior on FLAIR (image minus its
tumour-free image, z-units): red where the image is brighter than the prior expects.

    .venv/bin/python docs/make_prior_figure.py --data FOLDER --case DareFuse-002001 [--case ...] \\
        --model "twin-trained=MODEL" --model "KLE=RUN/darefuse.safetensors" [--out docs/images/priors.png]

Each model sees the same prepared case (training/evaluate.load_case); the panels show its "difference" output
on the network's 2 mm grid, axial slice through the largest extent of the true tumour core (of the whole tumour
if it has no core; the brain's upper part if it has none), radiological convention (patient's right on the
left).
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

from DareFuseSlicerLib.constants import CONTRASTS  # noqa: E402
from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.pipeline.preprocess import _image_on_grid  # noqa: E402
from DareFuseSlicerLib.training.dataset import read_rows  # noqa: E402
from DareFuseSlicerLib.training.evaluate import load_case  # noqa: E402
from make_phantom_figure import _lps, _slice_index  # noqa: E402  (docs/ is this script's folder)

FLAIR = CONTRASTS.index("flair")
LIMIT = 3.0  # z-units at the colour scale's ends


def on_grid(array: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """A (Z, Y, X) array on the 2 mm grid, in LPS order."""
    return _lps(_image_on_grid(array, grid))


def case_panels(folder: Path, row: dict, models: dict) -> tuple:
    """(FLAIR slice, truth slice, {name: difference slice}) for one case."""
    case = load_case(folder, row)
    x, present = torch.from_numpy(case.prep.array)[None], torch.from_numpy(case.prep.present)[None]
    flair = on_grid(case.prep.array[FLAIR], case.prep.grid)
    truth = on_grid(case.truth_low, case.prep.grid)
    z = _slice_index(truth, {"t1": flair != 0})
    differences = {}
    with torch.no_grad():
        for name, model in models.items():
            differences[name] = on_grid(model(x, present)["difference"][0, FLAIR].numpy(), case.prep.grid)[z]
    return flair[z], truth[z], differences


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder written by `darefuse phantoms`")
    parser.add_argument("--case", action="append", required=True, help="case id (repeatable: one row each)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL", help="repeatable")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "priors.png")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {spec.partition("=")[0]: load_model(spec.partition("=")[2]) for spec in args.model}
    rows = {r["case_id"]: r for r in read_rows(args.data)}
    fig, axes = plt.subplots(len(args.case), 1 + len(models), figsize=(2.4 * (1 + len(models)), 2.7 * len(args.case)),
                             squeeze=False)
    for i, case_id in enumerate(args.case):
        flair, truth, differences = case_panels(args.data, rows[case_id], models)
        axes[i, 0].imshow(flair, cmap="gray", vmin=-2.5, vmax=3.5)
        axes[i, 0].contour(truth > 0, levels=[0.5], colors="yellow", linewidths=0.8)
        axes[i, 0].set_title(f"{case_id}\n{rows[case_id]['tumour_class'].replace('_', ' ')}: FLAIR", color="white",
                             fontsize=8)
        for j, (name, difference) in enumerate(differences.items(), start=1):
            shown = axes[i, j].imshow(difference, cmap="RdBu_r", vmin=-LIMIT, vmax=LIMIT)
            axes[i, j].contour(truth > 0, levels=[0.5], colors="black", linewidths=0.5)
            axes[i, j].set_title(f"{name}\nprior on FLAIR", color="white", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.colorbar(shown, ax=axes, shrink=0.6, label="image minus tumour-free image (z-units)").ax.yaxis.label.set_color("white")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, facecolor="black")
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
