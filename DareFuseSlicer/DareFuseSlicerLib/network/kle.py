"""Seed 001's Karhunen-Loève (KLE) residual prior: a lesion-removal prior that needs neither tumour-free twins
nor labels (issue 20 §1).

A whole-brain window is cropped to its brain (the voxels that are not zero in some contrast: the prepared input
is zero outside the brain), resized to size^3 per contrast and expanded in the first `components` principal
directions of a set of studies (PCA over cases, the seed's KLE with 32 coefficients at 48^3). The expansion is
brought back to the brain's box; image minus expansion is the prior. What every study shares, the anatomy, is in
the expansion; a tumour, which sits elsewhere in each study, mostly is not, and stays in the residual.

A missing contrast neither pulls the fit nor gets an expansion: the coefficients are a least-squares fit over
the given contrasts' voxels only (with all four given and an orthonormal basis, the plain projection).
Limit: the expansion is of whole brains. The pipeline's one window covers the whole brain up to 256 mm a side
(pipeline/inference.py MAX_ROI: every adult brain); a window holding part of a brain (sliding windows over a
larger volume, training crops) is not what it was fitted on, and its prior means little.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Ridge on the coefficients' normal equations, relative to their mean diagonal: keeps the fit defined when
#: missing contrasts leave the basis nearly degenerate.
RIDGE = 1e-3


def brain_box(image: torch.Tensor) -> Optional[Tuple[slice, slice, slice]]:
    """(C, Z, Y, X) -> the bounding box of the voxels non-zero in some contrast; None for an empty image."""
    inside = (image != 0).any(0)
    if not bool(inside.any()):
        return None
    box = []
    for axis in range(3):
        hit = inside.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()[:, 0]
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def to_kle_grid(crop: torch.Tensor, size: int) -> torch.Tensor:
    """(C, z, y, x) brain box -> (C, size, size, size) by averaging (PyTorch's adaptive pooling)."""
    return F.adaptive_avg_pool3d(crop[None].float(), size)[0]


class KLEPrior(nn.Module):
    """The expansion: `mean` (C, s, s, s) and an orthonormal `basis` (K, C, s, s, s), fitted by fit_kle and
    stored with the model's weights. forward(x, present) -> the tumour-free estimate, x's shape, zero outside
    the brain and on missing contrasts."""

    def __init__(self, n_contrasts: int = 4, size: int = 48, components: int = 32):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.zeros(n_contrasts, size, size, size))
        self.register_buffer("basis", torch.zeros(components, n_contrasts, size, size, size))

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for b in range(x.shape[0]):
            box = brain_box(x[b])
            if box is None:
                continue
            crop = x[b][(slice(None),) + box]
            small = self.expand(to_kle_grid(crop, self.size), present[b])
            estimate = F.interpolate(small[None], size=crop.shape[1:], mode="trilinear", align_corners=False)[0]
            inside = (crop != 0).any(0, keepdim=True).to(x.dtype)
            out[b][(slice(None),) + box] = estimate.to(x.dtype) * inside * present[b, :, None, None, None]
        return out

    def expand(self, small: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(C, s, s, s) -> its expansion in the basis, the coefficients fitted over the given contrasts."""
        given = present > 0
        if not bool(given.any()):
            return torch.zeros_like(small)
        basis = self.basis[:, given].reshape(self.basis.shape[0], -1).double()
        centred = (small - self.mean)[given].reshape(-1).double()
        gram = basis @ basis.T
        gram += RIDGE * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        coefficients = torch.linalg.solve(gram, basis @ centred)
        return self.mean + torch.einsum("k,kczyx->czyx", coefficients.float(), self.basis)


def fit_kle(images: Iterable[np.ndarray], size: int = 48, components: int = 32) -> Tuple[np.ndarray, np.ndarray, float]:
    """Prepared whole-brain windows (C, Z, Y, X), all contrasts given -> (mean, basis, the share of the
    cases' variance the basis holds). PCA by torch's SVD of the centred (cases, voxels) matrix."""
    rows = []
    for image in images:
        image = torch.from_numpy(np.asarray(image, np.float32))
        box = brain_box(image)
        if box is None:
            raise ValueError("an empty image cannot be fitted")
        rows.append(to_kle_grid(image[(slice(None),) + box], size).reshape(-1))
    if len(rows) <= components:
        raise ValueError(f"{components} components need more than {components} cases, got {len(rows)}")
    data = torch.stack(rows)
    mean = data.mean(0)
    _, singular, vh = torch.linalg.svd(data - mean, full_matrices=False)
    # A component's sign is arbitrary (LAPACK's differs between runs): fix it, largest entry positive, so that one
    # fit gives the same file every time. The expansion itself does not depend on the signs.
    vh = vh * torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    variance = singular.double() ** 2
    explained = float(variance[:components].sum() / variance.sum())
    grid = (data.shape[1] // size ** 3,) + (size,) * 3
    return mean.reshape(grid).numpy(), vh[:components].reshape((-1,) + grid).numpy(), explained
