"""Tissue and lesion intensities of the four contrasts, before acquisition.

Relative units per contrast; the template T1 sets the scale (CSF ~0.28, GM ~0.65, WM ~0.87). Relations
follow clinical 1.5-3 T imaging: T1 CSF < GM < WM; T2 CSF > GM > WM; FLAIR CSF suppressed, GM a little
above WM; T1ce = T1 plus enhancement of vessels, dura, falx and choroid plexus.
"""
from __future__ import annotations

import numpy as np

from ..constants import CONTRASTS

# Healthy tissue (csf, gm, wm) for the contrasts synthesised from fractions (T1 comes from the template).
TISSUE = {
    "t2": (1.00, 0.50, 0.38),
    "flair": (0.10, 0.58, 0.45),
}
# How strongly each contrast inherits the template's fine texture (negative: T1-dark is bright there).
TEXTURE_GAIN = {"t1": 1.0, "t1ce": 1.0, "t2": -0.55, "flair": -0.5}
# Typical white-matter level per contrast in these units: sets the noise and the scanner gain.
WM_LEVEL = {"t1": 0.87, "t1ce": 0.87, "t2": 0.38, "flair": 0.45}
# Strength of normal enhancement on T1ce (in T1 units at full enhancement map).
NORMAL_ENHANCEMENT = 0.55

# Lesion tissues, same units. Oedema: bright T2/FLAIR, a little dark on T1, not enhancing. Enhancing
# tumour: very bright on T1ce. Necrosis: dark on T1/T1ce, near-CSF on T2, partly suppressed on FLAIR.
LESION_TISSUE = {
    "oedema":            {"t1": 0.66, "t1ce": 0.66, "t2": 0.80, "flair": 0.82},
    "glioma_et":         {"t1": 0.60, "t1ce": 1.55, "t2": 0.62, "flair": 0.70},
    "necrosis":          {"t1": 0.32, "t1ce": 0.34, "t2": 0.92, "flair": 0.50},
    "low_grade_core":    {"t1": 0.52, "t1ce": 0.53, "t2": 0.86, "flair": 0.80},
    "meningioma_et":     {"t1": 0.62, "t1ce": 1.40, "t2": 0.58, "flair": 0.60},
    "meningioma_core":   {"t1": 0.45, "t1ce": 0.50, "t2": 0.45, "flair": 0.42},
    "metastasis_et":     {"t1": 0.58, "t1ce": 1.45, "t2": 0.64, "flair": 0.72},
}
# Share of the underlying anatomy that still shows through oedema (infiltrated, not replaced).
OEDEMA_TRANSPARENCY = 0.25


def draw_healthy(rng) -> dict:
    """The random draws of healthy_contrasts, in their order (the clinical engine draws them too, so that
    a seed gives the same tumour plan in both acquisitions)."""
    gamma = rng.uniform(0.9, 1.1)  # keeps T1 order while varying GM/WM contrast
    enhancement = rng.uniform(0.8, 1.2)
    jitter = {contrast: rng.uniform(0.95, 1.05, size=3).astype(np.float32) for contrast in TISSUE}
    return {"gamma": gamma, "enhancement": enhancement, "jitter": jitter}


def healthy_contrasts(anatomy, rng) -> dict:
    """Four healthy contrasts in template space, with a per-case tissue-contrast jitter (+-5 %)."""
    mask = anatomy.mask
    draws = draw_healthy(rng)
    gamma = draws["gamma"]
    t1 = np.power(anatomy.t1, gamma, dtype=np.float32) * np.float32(0.87 / 0.87 ** gamma)
    out = {"t1": t1 * mask}
    out["t1ce"] = (t1 + np.float32(NORMAL_ENHANCEMENT * draws["enhancement"]) * anatomy.enhancement) * mask
    for contrast, (v_csf, v_gm, v_wm) in TISSUE.items():
        j = draws["jitter"][contrast]
        img = anatomy.csf * (v_csf * j[0]) + anatomy.gm * (v_gm * j[1]) + anatomy.wm * (v_wm * j[2])
        img += np.float32(TEXTURE_GAIN[contrast]) * anatomy.texture
        out[contrast] = np.clip(img, 0, None) * mask
    return {c: out[c].astype(np.float32, copy=False) for c in CONTRASTS}


def lesion_values(kind: str, rng) -> dict:
    """One lesion tissue with a small per-lesion variation (+-6 %)."""
    return {c: float(v * rng.uniform(0.94, 1.06)) for c, v in LESION_TISSUE[kind].items()}
