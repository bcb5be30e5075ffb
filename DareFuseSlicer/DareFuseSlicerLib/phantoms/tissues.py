"""Tissue intensities of the whole head per contrast, and their per-case randomisation.

Relative units shared with contrasts.py (template T1: CSF ~0.28, GM ~0.65, WM ~0.87). Each tissue has a
plausible range per contrast (1.5-3 T spin-echo / gradient-echo imaging): fat bright on T1, T2 and FLAIR;
cortical bone and air dark everywhere; diploë and vertebral marrow fatty (bright on T1); CSF and vitreous
dark on T1 and FLAIR, bright on T2; muscle intermediate, darker than white matter on T1 and T2. The ranges
of tissues whose order matters do not overlap, so any draw keeps the radiological order (tested).

Domain randomisation (SynthSeg's idea, Billot et al. 2023): a case draws every tissue's mean inside its
range, its lesion values by +-12 %, a texture strength and, per contrast, a gamma curve applied to the
noise-free image. With randomise=False every mean is the middle of its range (figures, ordering tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Contrasts whose tissue values are drawn; T1ce is T1 plus enhancement.
BASE = ("t1", "t2", "flair")

# tissue -> {contrast: (low, high)}; "enhance" is added on T1ce (T1 units).
RANGES = {
    "csf":      {"t1": (0.16, 0.30), "t2": (0.95, 1.10), "flair": (0.04, 0.14), "enhance": (0.0, 0.0)},
    "gm":       {"t1": (0.58, 0.70), "t2": (0.46, 0.56), "flair": (0.53, 0.64), "enhance": (0.0, 0.0)},
    "wm":       {"t1": (0.82, 0.93), "t2": (0.33, 0.42), "flair": (0.40, 0.49), "enhance": (0.0, 0.0)},
    "fat":      {"t1": (1.05, 1.35), "t2": (0.70, 0.92), "flair": (0.68, 0.90), "enhance": (0.0, 0.0)},
    "muscle":   {"t1": (0.40, 0.54), "t2": (0.18, 0.29), "flair": (0.22, 0.34), "enhance": (0.02, 0.06)},
    "skin":     {"t1": (0.50, 0.64), "t2": (0.30, 0.44), "flair": (0.35, 0.50), "enhance": (0.03, 0.08)},
    "bone":     {"t1": (0.00, 0.05), "t2": (0.00, 0.05), "flair": (0.00, 0.05), "enhance": (0.0, 0.0)},
    "diploe":   {"t1": (0.74, 1.00), "t2": (0.45, 0.68), "flair": (0.45, 0.68), "enhance": (0.02, 0.06)},
    "dura":     {"t1": (0.20, 0.34), "t2": (0.10, 0.24), "flair": (0.15, 0.28), "enhance": (0.45, 0.80)},
    "vitreous": {"t1": (0.12, 0.24), "t2": (0.95, 1.10), "flair": (0.03, 0.12), "enhance": (0.0, 0.0)},
    "lens":     {"t1": (0.55, 0.75), "t2": (0.10, 0.24), "flair": (0.20, 0.34), "enhance": (0.0, 0.0)},
    "sclera":   {"t1": (0.15, 0.30), "t2": (0.05, 0.15), "flair": (0.10, 0.20), "enhance": (0.0, 0.03)},
    "nerve":    {"t1": (0.72, 0.88), "t2": (0.38, 0.50), "flair": (0.42, 0.55), "enhance": (0.0, 0.0)},
    "marrow":   {"t1": (0.55, 0.80), "t2": (0.40, 0.60), "flair": (0.40, 0.60), "enhance": (0.03, 0.08)},
    "disc":     {"t1": (0.35, 0.50), "t2": (0.60, 0.90), "flair": (0.40, 0.60), "enhance": (0.0, 0.0)},
    "mucosa":   {"t1": (0.35, 0.50), "t2": (0.75, 1.00), "flair": (0.50, 0.75), "enhance": (0.35, 0.70)},
    "vessel":   {"t1": (0.05, 0.25), "t2": (0.00, 0.10), "flair": (0.00, 0.10), "enhance": (0.50, 0.90)},
    "air":      {"t1": (0.0, 0.0), "t2": (0.0, 0.0), "flair": (0.0, 0.0), "enhance": (0.0, 0.0)},
}
TISSUES = tuple(RANGES)

# Strength of each tissue's own smooth texture (relative modulation at one standard deviation).
TEXTURE = {"fat": 0.05, "muscle": 0.07, "skin": 0.04, "diploe": 0.14, "marrow": 0.12, "mucosa": 0.06,
           "disc": 0.05, "dura": 0.03}
# How strongly each contrast shows the template's fine texture (signs as contrasts.TEXTURE_GAIN).
BRAIN_TEXTURE = {"t1": 1.0, "t1ce": 1.0, "t2": -0.55, "flair": -0.5}
# Normal enhancement of vessels, choroid plexus and cortical dura on T1ce (contrasts.NORMAL_ENHANCEMENT).
BRAIN_ENHANCEMENT = 0.55
# White-matter level per contrast: the pivot of the gamma curve and the noise/gain reference.
WM_LEVEL = {"t1": 0.87, "t1ce": 0.87, "t2": 0.38, "flair": 0.45}


@dataclass
class Intensities:
    values: dict        # tissue -> {contrast (t1, t1ce, t2, flair): value}
    texture_gain: dict  # contrast -> gain on the template's texture
    texture_scale: float  # multiplies TEXTURE
    enhancement: float  # strength of the brain's normal enhancement on T1ce
    gamma: dict         # contrast -> exponent of the noise-free curve
    lesion_scale: np.ndarray  # (n, 4) factors drawn for lesion tissues, used in order by scale_lesions


def draw_intensities(rng, randomise: bool = True) -> Intensities:
    """One case's tissue values (a draw inside each range, or the middles)."""
    values = {}
    for tissue, ranges in RANGES.items():
        u = rng.random(len(BASE) + 1) if randomise else np.full(len(BASE) + 1, 0.5)
        row = {c: float(lo + (hi - lo) * ui) for (c, (lo, hi)), ui in zip(ranges.items(), u)}
        row["t1ce"] = row["t1"] + row.pop("enhance")
        values[tissue] = row
    if not randomise:
        return Intensities(values, dict(BRAIN_TEXTURE), 1.0, BRAIN_ENHANCEMENT,
                           {c: 1.0 for c in WM_LEVEL}, np.ones((16, 4)))
    gain = {c: g * float(rng.uniform(0.75, 1.25)) for c, g in BRAIN_TEXTURE.items()}
    gamma = {c: float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))) for c in WM_LEVEL}
    return Intensities(values, gain, float(rng.uniform(0.6, 1.6)), BRAIN_ENHANCEMENT * float(rng.uniform(0.8, 1.2)),
                       gamma, rng.uniform(0.88, 1.12, (16, 4)))


def scale_lesions(plan, intensities: Intensities) -> None:
    """Lesion tissue values (contrasts.LESION_TISSUE) times the case's factors, in place."""
    k = 0
    for lesion in plan.lesions:
        for label in sorted(lesion.tissue):
            factors = intensities.lesion_scale[k % len(intensities.lesion_scale)]
            lesion.tissue[label] = {c: v * float(f) for (c, v), f in zip(sorted(lesion.tissue[label].items()), factors)}
            k += 1


def apply_gamma(signal: np.ndarray, contrast: str, intensities: Intensities) -> np.ndarray:
    """The contrast's monotone curve on a noise-free image: level * (x / level) ** gamma, WM fixed."""
    gamma = intensities.gamma[contrast]
    if gamma == 1.0:
        return signal
    level = np.float32(WM_LEVEL[contrast])
    out = np.power(np.maximum(signal, 0) / level, np.float32(gamma), dtype=np.float32)
    return out * level


def reweight_brain(channels: dict, anatomy, intensities: Intensities) -> dict:
    """BraTS-style template contrasts with each brain tissue's mean moved to the case's draw: every voxel
    scaled by its tissue fractions' relative changes (drawn value / middle of the range)."""
    out = {}
    for c, image in channels.items():
        base = "t1" if c == "t1ce" else c
        change = [intensities.values[t][base] / (sum(RANGES[t][base]) / 2) - 1 for t in ("csf", "gm", "wm")]
        factor = 1 + anatomy.csf * np.float32(change[0]) + anatomy.gm * np.float32(change[1]) + anatomy.wm * np.float32(change[2])
        out[c] = (image * factor).astype(np.float32)
    return out
