"""Write docs/images/phantom_classes.png: one row per tumour class, the four contrasts with the label.

    .venv/bin/python docs/make_phantom_figure.py [--seed 7] [--grid brats] [--out docs/images/phantom_classes.png]

Axial slice through the tumour core (or the brain centre), radiological convention (patient's right on
the image's left). Label contours on the four contrasts (NETC red, SNFH green, ET yellow, as BraTS), and
a fifth panel with the filled label over T1ce.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import CLASSES, CONTRAST_NAMES, CONTRASTS, LABEL_COLOURS, LABELS  # noqa: E402
from DareFuseSlicerLib.phantoms import make_case  # noqa: E402



def _lps(image: sitk.Image) -> np.ndarray:
    """Array (z, y, x) in LPS order whatever the grid's direction: rows anterior->posterior, columns R->L."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def _slice_index(label: np.ndarray, images: dict) -> int:
    core = np.isin(label, (1, 3))
    region = core if core.any() else label > 0
    if region.any():
        return int(np.argmax(region.sum(axis=(1, 2))))
    brain = images["t1"] > 0
    zs = np.nonzero(brain.any(axis=(1, 2)))[0]
    return int(zs[0] + 0.6 * (zs[-1] - zs[0]))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--grid", default="brats")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "phantom_classes.png")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = [LABEL_COLOURS[LABELS[v]] for v in (1, 2, 3)]
    fill_cmap = ListedColormap([(0, 0, 0, 0)] + [c + (0.55,) for c in colours])
    fig, axes = plt.subplots(len(CLASSES), 5, figsize=(12.5, 2.75 * len(CLASSES)), facecolor="black")
    for row, tumour_class in enumerate(CLASSES):
        case = make_case(args.seed + row, tumour_class, args.grid)
        images = {c: _lps(case.images[c]) for c in CONTRASTS}
        label = _lps(case.label)
        z = _slice_index(label, images)
        # Display in mm: pixel aspect from the spacing (thick-slice grids stay undistorted in-plane).
        sx, sy = sitk.DICOMOrient(case.label, "LPS").GetSpacing()[:2]
        for col, contrast in enumerate(CONTRASTS + ("t1ce",)):
            ax = axes[row, col]
            img = images[contrast][z]
            hi = np.percentile(img[img > 0], 99.5) if (img > 0).any() else 1.0
            ax.imshow(img, cmap="gray", vmin=0, vmax=hi, aspect=sy / sx, interpolation="nearest")
            lab = label[z]
            if col < 4:
                for value, colour in zip((1, 2, 3), colours):
                    if (lab == value).any():
                        ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=0.7)
            else:
                ax.imshow(lab, cmap=fill_cmap, vmin=0, vmax=3, aspect=sy / sx, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(CONTRAST_NAMES[contrast] + (" + label" if col == 4 else ""), color="white", fontsize=11)
            if col == 0:
                subtype = case.meta["subtype"].replace("_", " ")
                name = tumour_class.replace("_", " ") + ("" if subtype == tumour_class.replace("_", " ") else f"\n({subtype})")
                ax.set_ylabel(name, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_with_legend(fig, args.out, fontsize=10)


def save_with_legend(fig, out: Path, fontsize: float) -> Path:
    """The BraTS label legend along the bottom, then the figure written on black (shared by docs' figures)."""
    import matplotlib.pyplot as plt

    handles = [plt.Line2D([], [], color=LABEL_COLOURS[LABELS[v]], lw=3, label=LABELS[v]) for v in (1, 2, 3)]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white", fontsize=fontsize)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor="black")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
