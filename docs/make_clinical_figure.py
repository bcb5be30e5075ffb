"""Write docs/images/clinical_case.png: one clinical phantom case, each contrast on its own grid.

    .venv/bin/python docs/make_clinical_figure.py [--seed 5001] [--tumour-class glioma] [--out docs/images/clinical_case.png]

Rows: T1, T1ce, T2, FLAIR as acquired (whole head, own grid, own motion, noise in the air). Columns: the
axial, coronal and sagittal slices of that grid (its voxels, only reordered to the nearest LPS axes by
sitk.DICOMOrient) through the tumour centre. Outlines: the brain mask (cyan) and the tumour (label > 0,
yellow), both from the reference (T1) grid, carried into each contrast's grid by the manifest's
to_reference transform: where they fit the anatomy, the recorded motion is the one applied.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import CONTRASTS  # noqa: E402
from DareFuseSlicerLib.phantoms import make_case  # noqa: E402

TITLES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


def _on_grid(truth: sitk.Image, image: sitk.Image, to_reference: np.ndarray) -> np.ndarray:
    """A reference-grid map sampled on a contrast's grid through to_reference (nearest neighbour)."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(to_reference[:, :3].ravel().tolist())
    tx.SetTranslation(to_reference[:, 3].tolist())
    return sitk.GetArrayFromImage(sitk.Resample(truth, image, tx, sitk.sitkNearestNeighbor, 0))


def _views(array: np.ndarray, index, spacing):
    """(slice, aspect, name) for the axial, coronal and sagittal planes of an LPS-ordered (z, y, x) array,
    superior up, patient's right on the image's left."""
    k, j, i = index
    sx, sy, sz = spacing
    return [(array[k], sy / sx, "axial"), (array[::-1, j, :], sz / sx, "coronal"), (array[::-1, :, i], sz / sy, "sagittal")]


def _centre(case) -> np.ndarray:
    """The tumour's centre (or the brain's) in the reference's physical space."""
    label = sitk.GetArrayFromImage(case.label)
    region = label > 0 if label.any() else sitk.GetArrayFromImage(case.brain_mask) > 0
    zyx = np.argwhere(region).mean(0)
    return np.array(case.label.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))


def _row_title(contrast: str, info: dict) -> str:
    sx, sy, sz = info["spacing"]
    kind = f"3-D {info['plane']}" if info["dims"] == "3d" else f"2-D {info['plane']}, {info['slice_mm']:.1f} mm slices"
    return (f"{TITLES[contrast]}: {kind}, tilt {info['tilt_deg']:+.1f}°, pixels {sx:.2f}×{sy:.2f} mm; "
            f"motion {info['rot_deg']:.1f}° / {info['shift_mm']:.1f} mm")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5001)
    parser.add_argument("--tumour-class", default="glioma")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "clinical_case.png")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = make_case(args.seed, args.tumour_class, acquisition="clinical")
    centre = _centre(case)
    fig, axes = plt.subplots(len(CONTRASTS), 3, figsize=(13.5, 4.6 * len(CONTRASTS)), facecolor="black")
    for row, contrast in enumerate(CONTRASTS):
        info = case.meta["contrasts"][contrast]
        to_ref = np.asarray(info["to_reference"])
        image = sitk.DICOMOrient(case.images[contrast], "LPS")
        array = sitk.GetArrayFromImage(image)
        mask, label = (_on_grid(t, image, to_ref) for t in (case.brain_mask, case.label))
        a, b = to_ref[:, :3], to_ref[:, 3]
        point = np.linalg.solve(a, centre - b)  # the tumour centre in this contrast's space
        index = image.TransformPhysicalPointToIndex(point.tolist())[::-1]
        index = tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(index, array.shape))
        hi = np.percentile(array, 99.7)
        for col, ((img, aspect, plane), (m, _, _), (lab, _, _)) in enumerate(zip(
                _views(array, index, image.GetSpacing()), _views(mask, index, image.GetSpacing()),
                _views(label, index, image.GetSpacing()))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=hi, aspect=aspect, interpolation="nearest")
            if m.any():
                ax.contour(m, levels=[0.5], colors=["cyan"], linewidths=0.9)
            if lab.any():
                ax.contour(lab > 0, levels=[0.5], colors=["yellow"], linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(plane, color="white", fontsize=9)
        axes[row, 0].set_title(_row_title(contrast, info), color="white", fontsize=10, loc="left")
    fig.suptitle(f"Clinical phantom {case.case_id} ({case.meta['subtype'].replace('_', ' ')}): each contrast on its own "
                 "grid; brain mask (cyan) and tumour (yellow) carried from the T1 grid by to_reference",
                 color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72, facecolor="black")
    # Noise in the air compresses badly: a 128-colour palette keeps the figure small in the repository.
    from PIL import Image

    Image.open(args.out).convert("RGB").quantize(colors=128).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
