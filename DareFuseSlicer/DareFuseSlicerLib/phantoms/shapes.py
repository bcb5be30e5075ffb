"""Soft-edged shapes for the head model: signed distances (mm, negative inside) and the alpha they give."""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class Layer(NamedTuple):
    """One structure of the head: a tissue, where it is (indices into the case's points, or None for all
    of them) and how much of each point it fills (alpha 0..1), laid over the layers before it."""
    tissue: str
    idx: Optional[np.ndarray]
    alpha: np.ndarray


def inside(s) -> np.ndarray:
    """Alpha of a shape from its signed distance, soft over 1 mm (partial volume at the edge)."""
    return np.clip(np.float32(0.5) - s, 0, 1).astype(np.float32, copy=False)


def band(d, lo, hi) -> np.ndarray:
    """Alpha of lo <= d <= hi, soft over 1 mm at both ends."""
    return inside(lo - d) * inside(d - hi)


def smooth_min(a, b, k: float) -> np.ndarray:
    """Polynomial smooth minimum (Quilez): the union of two shapes with a fillet of about k mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - np.float32(k) * h * (1 - h)


def ellipsoid(x, y, z, centre, semi) -> np.ndarray:
    """Approximate signed distance to an ellipsoid: exact on its axes, close for mild eccentricity."""
    r = np.sqrt(((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2)
    return (r - 1) * np.float32(min(semi))


def segment(x, y, z, a, b):
    """Distance to the segment a-b, and the position t (0 at a, 1 at b) of its nearest point."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / np.float32(ab @ ab), 0, 1)
    d = np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
    return d, t
