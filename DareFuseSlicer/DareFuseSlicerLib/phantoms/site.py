"""A simulated new site (issue 20 §3): a named acquisition style the bundled model never saw.

A site fixes its protocol: the brain's tissue contrast, the strength of the template's fine texture, normal
enhancement, the noise level and the slice thickness all lie OUTSIDE the ranges the engine draws for its
training cases (the comments below name the ranges each setting leaves). Its cases carry no tumour-free twins
(a hospital has none). Each case still draws a small per-case jitter (+-2 %) and its noise level from its own
seed, on a stream of its own, so the same seed gives the same case, and the tumour plan, pose and geometry are
those of the plain case with that seed.

A site's folders: `darefuse phantoms --site NAME` writes labelled cases (held-out sets, or a pool);
`split_site` makes a labelled folder of the first K cases of a pool and an unlabelled folder of the rest
(no seg, no brain mask, manifest without ground truth), by hard links, for `darefuse adapt`.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from .tissues import BRAIN_TEXTURE, WM_LEVEL, Intensities, draw_intensities

# Seed of a site case's own stream: [seed, _SITE_STREAM] (io.MIX_STREAM is 2, clinical 16, randomise 17).
_SITE_STREAM = (20261122, 20)
# Per-case jitter of each brain tissue value: the site's patients differ a little, its protocol does not.
SITE_JITTER = 0.02
# Manifest columns that hold ground truth: blank in an unlabelled folder (adapt reads tumour_class from a
# manifest: an unlabelled case must not give its class away).
GROUND_TRUTH_COLUMNS = ("tumour_class", "lesion_count", "netc_ml", "snfh_ml", "et_ml", "seg", "subtype", "brainmask")
SITE_COLUMN = "site"


@dataclass(frozen=True)
class SiteStyle:
    name: str
    note: str
    brain: dict              # tissue (csf, gm, wm) -> {t1, t2, flair: value}, relative units, WM at WM_LEVEL
    texture_gain: dict       # contrast -> gain on the template's fine texture (negative: T1-dark is bright)
    enhancement: float       # normal enhancement (vessels, dura, choroid) on T1ce, T1 units
    noise: tuple             # (low, high): Rician sd as a fraction of white matter, drawn per case
    grid: str                # the grid of BraTS-style cases (grids.GRIDS)
    stack_slice_mm: float    # slice thickness of the clinical T2/FLAIR stacks (T1/T1ce stay 3-D)


# What the engine draws for training cases, default BraTS-style (the bundled model's training set, seeds
# 1000-1159) and randomised clinical cases joined, whichever is wider (tissues.py RANGES with gamma 0.8-1.25;
# contrasts.py TISSUE +-5 %, template T1 with gamma 0.9-1.1). Tissue contrast as the ratio to white matter
# after the intensity curve; the site leaves every range (test_phantoms_site.py measures both sides).
TRAINING_RATIOS = {
    "t1": {"gm": (0.55, 0.88), "csf": (0.11, 0.45)},     # BraTS-style alone: GM 0.73-0.77, CSF 0.29-0.36
    "t2": {"gm": (1.07, 1.94), "csf": (1.92, 4.50)},     # BraTS-style alone: GM 1.19-1.45, CSF 2.38-2.91
    "flair": {"gm": (1.06, 1.80), "csf": (0.04, 0.43)},  # BraTS-style alone: GM 1.17-1.43, CSF 0.20-0.25
}
TRAINING_TEXTURE_GAIN = {"t1": (0.75, 1.25), "t2": (-0.69, -0.41), "flair": (-0.63, -0.37)}
TRAINING_ENHANCEMENT = (0.44, 0.66)   # BRAIN_ENHANCEMENT 0.55 x 0.8-1.2
TRAINING_NOISE = (0.012, 0.035)       # acquisition.draw_scanner: Rician sd / WM level
TRAINING_SLICE_MM = (0.9, 6.0)        # BraTS-style grids 0.94-5 mm, clinical 3-D 0.9-1.2 mm, 2-D stacks 3-6 mm

SITES = {
    # An older 1.5 T site: spin-echo T1 with weak grey/white contrast, short-TE T2 and FLAIR with little
    # grey/white contrast and incompletely suppressed CSF, a smooth reconstruction (weak fine texture: the
    # template's texture is partly tissue-correlated, so a strong one would restore grey/white contrast),
    # low SNR and 7 mm axial slices. Every ratio keeps a margin over the jitter (+-4 % on a ratio):
    # GM/WM T1 0.94 (> 0.88), T2 1.01 (< 1.07), FLAIR 1.01 (< 1.06); CSF/WM T1 0.53, T2 1.63, FLAIR 0.60.
    "lowfield": SiteStyle(
        name="lowfield",
        note="1.5 T spin-echo style: low grey/white contrast, bright CSF on FLAIR, weak texture, noisy, 7 mm slices",
        brain={
            "csf": {"t1": 0.46, "t2": 0.62, "flair": 0.27},
            "gm": {"t1": 0.82, "t2": 0.385, "flair": 0.455},
            "wm": {"t1": WM_LEVEL["t1"], "t2": WM_LEVEL["t2"], "flair": WM_LEVEL["flair"]},
        },
        texture_gain={c: 0.25 * g for c, g in BRAIN_TEXTURE.items()},  # T1 0.25, T2 -0.14, FLAIR -0.13
        enhancement=0.30,
        noise=(0.05, 0.06),
        grid="ax_7mm",        # 7 mm slices, all four contrasts
        stack_slice_mm=7.0,
    ),
}


def site_style(name) -> SiteStyle:
    if isinstance(name, SiteStyle):
        return name
    if name not in SITES:
        raise InputError(f"site: unknown site {name!r}; choose one of {', '.join(SITES)}")
    return SITES[name]


@dataclass(frozen=True)
class SiteDraw:
    intensities: Intensities
    noise_fraction: dict     # contrast -> Rician sd / WM level


def draw_site(style: SiteStyle, seed: int) -> SiteDraw:
    """One case's draws at the site: its tissue values (the site's brain, jittered; every other head tissue
    at the middle of its range), no intensity curve, lesion values as in training, and its noise level."""
    rng = np.random.default_rng([int(seed), *_SITE_STREAM])
    base = draw_intensities(rng, randomise=False)  # the middles: head tissues of clinical cases
    values = {t: dict(v) for t, v in base.values.items()}
    for tissue, row in style.brain.items():
        jitter = rng.uniform(1 - SITE_JITTER, 1 + SITE_JITTER, 3)
        values[tissue] = {c: float(row[c] * j) for c, j in zip(("t1", "t2", "flair"), jitter)}
        values[tissue]["t1ce"] = values[tissue]["t1"]
    noise = {c: float(rng.uniform(*style.noise)) for c in WM_LEVEL}
    intensities = replace(base, values=values, texture_gain=dict(style.texture_gain), enhancement=style.enhancement)
    return SiteDraw(intensities, noise)


def with_site_noise(scanner, draw: SiteDraw):
    """The drawn scanner (bias, gain, offset kept) with the site's noise level."""
    return replace(scanner, noise_sd={c: draw.noise_fraction[c] * WM_LEVEL[c] for c in scanner.noise_sd})


def site_brain(anatomy, intensities: Intensities) -> dict:
    """BraTS-style (skull-stripped) healthy contrasts built from tissue fractions with the site's values and
    texture gain (the plain engine's T1 is the template itself, whose contrast a site must leave)."""
    from .clinical import brain_contrasts  # the clinical engine's brain model, shared

    return {c: (a * anatomy.mask).astype(np.float32) for c, a in brain_contrasts(anatomy, intensities).items()}


# -- a site's folders -----------------------------------------------------------------------------------
def _link(source: Path, target: Path) -> None:
    """Hard link (no copy of a pool's voxels); a copy where the folders are on different file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _read_pool(pool: Path):
    manifest = pool / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"Pool folder {pool} has no manifest.csv; make one with `darefuse phantoms --site NAME`.")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), list(reader.fieldnames or [])
    if SITE_COLUMN not in fields or not rows or any(not r[SITE_COLUMN] for r in rows):
        raise InputError(f"Pool folder {pool}: its manifest.csv lists no site cases; make them with "
                         "`darefuse phantoms --site NAME`.")
    if any(not r["seg"] for r in rows):
        raise InputError(f"Pool folder {pool}: not every case has its segmentation (an unlabelled folder?).")
    return rows, fields


def _image_keys(fields) -> list:
    return [k for k in ("t1n", "t1c", "t2w", "t2f") if k in fields]


def _write_folder(pool: Path, folder: Path, rows, fields, labels: bool) -> None:
    folder.mkdir(parents=True)
    keys = _image_keys(fields) + (["seg", "brainmask"] if labels else [])
    out_rows = []
    for row in rows:
        for key in keys:
            if row.get(key):
                _link(pool / row[key], folder / row[key])
        out_rows.append(dict(row) if labels else {**row, **{c: "" for c in GROUND_TRUTH_COLUMNS}})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out_rows)


def split_site(pool, out, labelled: int) -> dict:
    """From a labelled site pool: OUT/labelled (its first `labelled` cases, with seg) and OUT/unlabelled (the
    others: images only, ground-truth columns blank). Returns role -> folder (a role with no case is left out).
    The folders are written into a staging folder beside OUT and moved into place when complete."""
    pool, out = Path(pool), Path(out)
    rows, fields = _read_pool(pool)
    if not 0 <= int(labelled) <= len(rows):
        raise InputError(f"labelled: must be between 0 and the pool's {len(rows)} cases, got {labelled}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"out: {out} exists and is not an empty folder; choose a new one")
    parts = {"labelled": (rows[:int(labelled)], True), "unlabelled": (rows[int(labelled):], False)}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        folders = {}
        for role, (part, labels) in parts.items():
            if part:
                _write_folder(pool, staging / role, part, fields, labels)
                folders[role] = out / role
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folders
