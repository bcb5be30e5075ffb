"""make_case: one synthetic four-contrast case, its exact tumour-free twin and its BraTS label."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..constants import CLASSES, CONTRASTS
from ..errors import InputError
from .acquisition import Warp, bias_field, draw_pose, draw_scanner, grid_by_name, rician, slice_blur
from .anatomy import load_anatomy
from .contrasts import healthy_contrasts
from .site import draw_site, site_brain, site_style, with_site_noise
from .tissues import apply_gamma, draw_intensities, reweight_brain, scale_lesions
from .tumours import paint, plan_tumours

# Largest value an int16 file can hold: images are rounded to whole scanner units and clipped to it.
_INT16_MAX = 32767


@dataclass
class Case:
    case_id: str
    images: dict              # contrast -> sitk.Image float32, scanner units (whole numbers); clinical: own grids
    tumour_free: dict         # contrast -> sitk.Image float32, same anatomy, pose and acquisition
    label: sitk.Image         # uint8: 0 bg, 1 NETC, 2 SNFH, 3 ET (clinical: on the reference's grid)
    tumour_class: str
    meta: dict = field(default_factory=dict)
    brain_mask: sitk.Image = None   # uint8, skull-stripping mask: without the lesions (BraTS-style), with them (clinical)
    lesion_zone: sitk.Image = None  # uint8, every voxel the lesion can change (images == tumour_free elsewhere)
    warp: object = None             # acquisition.Warp (BraTS-style) or sampling.SubjectMap (clinical): diagnostics
    acquisition: str = "brats"      # "brats" or "clinical"


def case_id_for(seed: int) -> str:
    return f"DareFuse-{int(seed):06d}"


def _to_image(array: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(ref)
    return img


def _template_image(array: np.ndarray, anatomy) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(anatomy.reference)
    return img


def _bounding_box(mask: np.ndarray) -> tuple:
    where = np.argwhere(mask)
    if len(where) == 0:
        return tuple(slice(0, 0) for _ in mask.shape)
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(where.min(0), where.max(0)))


def _lesion_zone(lesioned: list, healthy: list, anatomy, warp) -> np.ndarray:
    """Output voxels whose linear interpolation touches a template voxel the lesion changed.

    A changed voxel dilated by one (3x3x3) contains the nearest corner of every interpolation cell that
    uses it, so a nearest-neighbour warp of the dilated set covers every output voxel that can differ.
    """
    changed = np.zeros(anatomy.shape, bool)
    for a, b in zip(lesioned, healthy):
        changed |= a != b
    where = np.argwhere(changed)
    if len(where) == 0:
        return np.zeros(warp.crop.GetSize()[::-1], np.uint8)
    box = tuple(slice(max(int(lo) - 2, 0), int(hi) + 3) for lo, hi in zip(where.min(0), where.max(0)))
    zone = np.zeros(anatomy.shape, np.uint8)
    zone[box] = ndi.binary_dilation(changed[box], structure=np.ones((3, 3, 3), bool))
    return sitk.GetArrayFromImage(warp.apply(_template_image(zone, anatomy), nearest=True))


def _warp_label(label_t: np.ndarray, anatomy, warp, ref: sitk.Image, pose) -> np.ndarray:
    """Label on the output grid: nearest neighbour at ~1 mm; on coarser grids the label that covers
    most of each voxel (warped, slice-blurred indicators), so thin structures follow the intensities."""
    if max(ref.GetSpacing()) <= 1.2 or not label_t.any():
        return sitk.GetArrayFromImage(warp.apply(_template_image(label_t, anatomy), nearest=True))
    zs, ys, xs = [np.nonzero(label_t.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
    box = tuple(slice(max(int(a[0]) - 8, 0), int(a[-1]) + 9) for a in (zs, ys, xs))
    indicators = []
    for value in (1, 2, 3):
        full = np.zeros(anatomy.shape, np.float32)
        full[box] = label_t[box] == value
        indicators.append(full)
    indicators = slice_blur(indicators, ref, pose)
    shares = np.stack([sitk.GetArrayFromImage(warp.apply(_template_image(a, anatomy))) for a in indicators])
    lesion = shares.sum(axis=0) >= 0.5
    return np.where(lesion, np.argmax(shares, axis=0) + 1, 0).astype(np.uint8)


ACQUISITIONS = ("brats", "clinical")
# Seed of the stream of BraTS-style intensity randomisation (apart, so the default cases keep their bytes).
_RANDOMISE_STREAM = (20261122, 17)


def label_volumes(label: sitk.Image) -> dict:
    """mL of NETC, SNFH, ET and of the regions WT and TC, rounded to 0.001 mL."""
    label_arr = sitk.GetArrayViewFromImage(label)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    vol = {name: float((label_arr == v).sum()) * voxel_ml for v, name in ((1, "NETC"), (2, "SNFH"), (3, "ET"))}
    vol["WT"] = vol["NETC"] + vol["SNFH"] + vol["ET"]
    vol["TC"] = vol["NETC"] + vol["ET"]
    return {k: round(v, 3) for k, v in vol.items()}


def make_case(seed: int, tumour_class: str = None, grid: str = None, acquisition: str = "brats",
              randomise: bool = None, site: str = None):
    """One case; the same arguments always give the same voxels.

    acquisition: "brats" (skull-stripped, co-registered, every contrast on `grid`, default the BraTS grid)
    or "clinical" (whole head, each contrast on its own grid with its own motion: clinical.py; no grid).
    randomise: domain-randomised tissue intensities (tissues.py); default on for clinical cases and off
    for BraTS-style ones, whose default output never changes.
    site: a named site style (site.SITES): its fixed contrast, texture, noise and slice thickness instead of
    the engine's draws (BraTS-style cases on the site's grid unless `grid` is given); not with randomise.
    """
    if tumour_class is not None and tumour_class not in CLASSES:
        raise InputError(f"tumour_class: unknown class {tumour_class!r}; choose one of {', '.join(CLASSES)}")
    if acquisition not in ACQUISITIONS:
        raise InputError(f"acquisition: unknown acquisition {acquisition!r}; choose one of {', '.join(ACQUISITIONS)}")
    if int(seed) < 0:
        raise InputError(f"seed: must be >= 0, got {seed}")
    style = site_style(site) if site is not None else None
    if style is not None and randomise:
        raise InputError("randomise: a site keeps its own intensities; give no randomise with a site")
    if acquisition == "clinical":
        if grid is not None:
            raise InputError("grid: clinical cases draw each contrast's own grid; give no grid")
        from .clinical import make_clinical_case

        return make_clinical_case(seed, tumour_class, randomise is not False and style is None, style)
    return _brats_case(int(seed), tumour_class, grid or (style.grid if style else "brats"), bool(randomise), style)


def _brats_template(anatomy, rng, tumour_class: str, intensities, site: bool = False):
    """Template space: healthy contrasts, then the lesions painted into a copy. A site's brain is built from
    its own tissue values (the plain brain's draws are still taken: the same tumour plan)."""
    healthy = healthy_contrasts(anatomy, rng)
    plan = plan_tumours(rng, anatomy, tumour_class)
    if site:
        healthy = site_brain(anatomy, intensities)
        scale_lesions(plan, intensities)
    elif intensities is not None:
        healthy = reweight_brain(healthy, anatomy, intensities)
        scale_lesions(plan, intensities)
    label_t = np.zeros(anatomy.shape, np.uint8)
    lesioned = {c: a.copy() for c, a in healthy.items()} if plan.lesions else healthy
    paint(lesioned, label_t, plan)
    return healthy, lesioned, label_t, plan


def _brats_crops(anatomy, warp, ref, pose, plan, healthy, lesioned, label_t):
    """Case, twin, mask and label on the output crop; thick slices get their partial volume first."""
    channels = [lesioned[c] for c in CONTRASTS] + ([healthy[c] for c in CONTRASTS] if plan.lesions else [])
    channels = slice_blur(channels + [anatomy.mask], ref, pose)
    warped = [sitk.GetArrayFromImage(warp.apply(_template_image(a, anatomy))) for a in channels[:4] + channels[-1:]]
    mask_crop = warped.pop() > 0.5
    label_crop = _warp_label(label_t, anatomy, warp, ref, pose)
    case_crop = warped
    free_crop = case_crop
    zone_crop = None
    if plan.lesions:
        # The tumour-free twin differs only inside the lesion zone: warp the healthy channels over the
        # zone's bounding box only and take the case's own voxels everywhere else (exactly equal there).
        zone_crop = _lesion_zone(channels[:4], channels[4:8], anatomy, warp)
        box = _bounding_box(zone_crop)
        inside = zone_crop[box] > 0
        free_crop = []
        for case_channel, healthy_channel in zip(case_crop, channels[4:8]):
            sub = sitk.GetArrayFromImage(warp.apply(_template_image(healthy_channel, anatomy), box=box))
            twin = case_channel.copy()
            twin[box][inside] = sub[inside]
            free_crop.append(twin)
    return case_crop, free_crop, mask_crop, label_crop, zone_crop


def _brats_acquire(rng, ref, warp, crops, intensities, site_draw=None):
    """Bias, noise, scanner units: identical for the case and its tumour-free twin (same draws)."""
    case_crop, free_crop, mask_crop, label_crop, _ = crops
    scanner = draw_scanner(rng, CONTRASTS)
    if site_draw is not None:
        scanner = with_site_noise(scanner, site_draw)
    crop_shape = label_crop.shape
    head_case = mask_crop | (label_crop > 0)  # skull-stripped like BraTS: the lesion stays in the mask
    images, free = {}, {}
    for i, contrast in enumerate(CONTRASTS):
        bias = bias_field(scanner.bias_log[i], ref, warp.crop_start, crop_shape)
        noise = rng.standard_normal((2,) + crop_shape, dtype=np.float32)
        outs = []
        for signal, head in ((case_crop[i], head_case), (free_crop[i], mask_crop)):
            if intensities is not None:
                signal = apply_gamma(signal, contrast, intensities)
            value = rician(signal * bias, scanner.noise_sd[contrast], noise)
            value = value * np.float32(scanner.gain[contrast]) + np.float32(scanner.offset[contrast])
            value = np.clip(np.rint(value), 0, _INT16_MAX) * head
            outs.append(_to_image(warp.paste(value.astype(np.float32)), ref))
        images[contrast], free[contrast] = outs
    return images, free


def _brats_case(seed: int, tumour_class: str, grid: str, randomise: bool, style=None) -> Case:
    spec = grid_by_name(grid)
    rng = np.random.default_rng([seed, 20261122])
    if tumour_class is None:
        tumour_class = CLASSES[int(rng.integers(len(CLASSES)))]
    anatomy = load_anatomy()
    intensities = draw_intensities(np.random.default_rng([seed, *_RANDOMISE_STREAM])) if randomise else None
    site_draw = draw_site(style, seed) if style is not None else None
    if site_draw is not None:
        intensities = site_draw.intensities
    healthy, lesioned, label_t, plan = _brats_template(anatomy, rng, tumour_class, intensities, style is not None)
    # Geometry: pose, scale, deformation, mass effect.
    ref = spec.reference()
    pose = draw_pose(rng)
    warp = Warp(rng, anatomy, ref, pose, plan.lesions)
    crops = _brats_crops(anatomy, warp, ref, pose, plan, healthy, lesioned, label_t)
    images, free = _brats_acquire(rng, ref, warp, crops, intensities, site_draw)
    _, _, mask_crop, label_crop, zone_crop = crops
    label = _to_image(warp.paste(label_crop, np.uint8), ref)
    brain = _to_image(warp.paste(mask_crop.astype(np.uint8), np.uint8), ref)
    zone = zone_crop if zone_crop is not None else np.zeros(label_crop.shape, np.uint8)
    meta = {
        "seed": seed,
        "grid": grid,
        "spacing": tuple(float(s) for s in ref.GetSpacing()),
        "size": tuple(int(s) for s in ref.GetSize()),
        "lesion_count": sum(1 for lesion in plan.lesions if lesion.counts),
        "subtype": plan.subtype,
        "volumes_ml": label_volumes(label),
        "acquisition": "brats",
        "randomised": randomise,
    }
    if style is not None:
        meta["site"] = style.name
    return Case(case_id_for(seed), images, free, label, tumour_class, meta, brain,
                _to_image(warp.paste(zone, np.uint8), ref), warp)
