"""A clinical acquisition of one case: the whole head, each contrast on its own grid with its own motion,
Rician noise in the air, bias, and domain-randomised intensities; ground truth on the reference (T1) grid.

Template space first (head.py around the brain, lesions painted over both), then each contrast is sampled
through the subject map and its motion (sampling.py), then the scanner (bias, gamma curve, noise, gain).
The tumour plan is the one the BraTS-style engine draws for the same seed (meningiomas moved inside the
skull, see intracranial); every later draw comes from the clinical engine's own stream.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..constants import CLASSES, CONTRASTS
from .acquisition import bias_field, draw_scanner, rician
from .anatomy import load_anatomy
from .contrasts import draw_healthy
from .head import build_head, draw_head
from .headspace import head_space
from .protocol import REFERENCE, draw_protocol
from .sampling import StackGrid, SubjectMap, index_box, warp
from .site import draw_site, with_site_noise
from .tissues import LESION_CODE, apply_gamma, draw_intensities, probe_intensities, scale_lesions
from .tumours import paint, plan_tumours

_INT16_MAX = 32767
# Seed of the clinical engine's own stream: [seed, _STREAM] (the BraTS-style engine uses [seed, 20261122]).
_STREAM = (20261122, 16)


def brain_contrasts(anatomy, intensities) -> dict:
    """The brain's four contrasts from its tissue fractions, the template's texture and normal enhancement."""
    out = {}
    for c in CONTRASTS:
        v = intensities.values
        img = anatomy.csf * np.float32(v["csf"][c]) + anatomy.gm * np.float32(v["gm"][c]) + anatomy.wm * np.float32(v["wm"][c])
        img += np.float32(intensities.texture_gain[c]) * anatomy.texture
        if c == "t1ce":
            img += np.float32(intensities.enhancement) * anatomy.enhancement
        out[c] = np.clip(img, 0, None)
    return out


def intracranial(plan, anatomy) -> None:
    """Move meningiomas inwards (towards the brain centre) until at most 1 mm of tumour lies outside the
    brain, so that they sit under the skull and not in it; oedema left outside the brain is dropped."""
    if plan.subtype != "meningioma":
        return
    d_out = head_space().d_out[head_space().mni]
    for lesion in plan.lesions:
        start = np.array([s.start for s in lesion.box])
        tumour = np.argwhere(np.isin(lesion.label, (1, 3))) + start
        inward = anatomy.physical_to_index(anatomy.centre[None])[0] - tumour.mean(0)
        inward /= np.linalg.norm(inward)
        shift = np.zeros(3, int)
        for _ in range(4):
            protrusion = float(d_out[tuple((tumour + shift).T)].max())
            if protrusion <= 1.0:
                break
            shift = np.round(shift + inward * (protrusion - 0.5)).astype(int)
        lo = np.array([s.start for s in lesion.box]) + shift
        hi = np.array([s.stop for s in lesion.box]) + shift
        shift = shift - np.minimum(lo, 0) - np.maximum(hi - np.array(anatomy.shape), 0)  # stay in the template
        lesion.box = tuple(slice(int(s.start + k), int(s.stop + k)) for s, k in zip(lesion.box, shift))
        lesion.centre = np.asarray(lesion.centre) + shift
        outside = anatomy.mask[lesion.box] == 0
        lesion.label[(lesion.label == 2) & outside] = 0


def _union_box(plan):
    if not plan.lesions:
        return None
    lo = np.min([[s.start for s in lesion.box] for lesion in plan.lesions], axis=0)
    hi = np.max([[s.stop for s in lesion.box] for lesion in plan.lesions], axis=0)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def template_channels(plan, intensities, head_plan, rng, anatomy):
    """Lesioned contrasts over the whole head grid, the healthy values in the lesions' box, the label."""
    space = head_space()
    channels = build_head(head_plan, rng, intensities)
    brain = brain_contrasts(anatomy, intensities)
    for c in CONTRASTS:
        np.copyto(channels[c][space.mni], brain[c], where=anatomy.mask > 0)
    box = _union_box(plan)
    healthy = {c: channels[c][space.mni][box].copy() for c in CONTRASTS} if box else None
    label_t = np.zeros(anatomy.shape, np.uint8)
    paint({c: channels[c][space.mni] for c in CONTRASTS}, label_t, plan)
    return channels, healthy, box, label_t


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _box_lps(anatomy, box) -> tuple:
    corners = np.array([[s.start, s.stop - 1] for s in box])
    points = anatomy.index_to_physical(np.array([[a, b, c] for a in corners[0] for b in corners[1] for c in corners[2]]))
    return points.min(0), points.max(0)


def _forward(motion, world: np.ndarray) -> np.ndarray:
    """World (reference) points -> where the moved head puts them in this sequence's space."""
    return (world - motion.centre) @ motion.rotation.T + motion.centre + motion.translation


def signals(acq, subject, lesioned: sitk.Image, healthy: sitk.Image, zone_world: np.ndarray):
    """Noise-free case and tumour-free twin on the contrast's grid. The twin equals the case outside the
    lesion's reach: both are sampled again, from the same field voxels, over a box that holds it."""
    grid = acq.grid.reference()
    stack = StackGrid(grid, acq.slice_mm) if acq.dims == "2d" else None
    fine = stack.fine if stack else grid
    field = subject.field(fine, acq.motion)
    case = warp(lesioned, field)
    if stack:
        case = stack.profile(case)
    twin = case
    if healthy is not None:
        margin = 3.0 / np.array(fine.GetSpacing()) + 2
        pad = stack.pad if stack else 0
        margin[2] += 2 * pad
        box = index_box(fine, _forward(acq.motion, zone_world), margin)
        if box is not None:
            near = [warp(image, field, box=box) for image in (lesioned, healthy)]
            if stack:
                near = [stack.profile(a) for a in near]
            k0 = pad if box[0].start > 0 else 0
            k1 = near[0].shape[0] - (pad if box[0].stop < case.shape[0] else 0)
            inner = (slice(box[0].start + k0, box[0].start + k1),) + box[1:]
            case = case.copy()
            case[inner] = near[0][k0:k1]
            twin = case.copy()
            twin[inner] = near[1][k0:k1]
    if stack:
        same = twin is case
        case = stack.to_grid(case)
        twin = case if same else stack.to_grid(twin)
    return case, twin, field


def scanner_values(signal_pair, contrast, index, acq, scanner, intensities, rng):
    """Bias, the contrast's gamma curve, Rician noise (the same draws for case and twin), scanner units."""
    grid = acq.grid.reference()
    shape = signal_pair[0].shape
    bias = bias_field(scanner.bias_log[index], grid, (0, 0, 0), shape)
    noise = rng.standard_normal((2,) + shape, dtype=np.float32)
    out = []
    for signal in signal_pair:
        if out and signal is signal_pair[0]:
            out.append(out[0])
            continue
        value = rician(apply_gamma(signal, contrast, intensities) * bias, scanner.noise_sd[contrast], noise)
        value = np.clip(np.rint(value * np.float32(scanner.gain[contrast])), 0, _INT16_MAX)
        out.append(_image(value.astype(np.float32), grid))
    return out


def reference_truth(acq, subject, field: sitk.Image, label_t: np.ndarray, anatomy):
    """Label (nearest neighbour, as the BraTS-style engine on ~1 mm grids) and brain mask (the warped
    template mask, > 0.5, joined with the label: what a BraTS-style case keeps) on the reference grid."""
    grid = acq.grid.reference()
    where = np.argwhere(anatomy.mask > 0)
    box_lps = _box_lps(anatomy, tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0))))
    box = index_box(grid, _forward(acq.motion, subject.world_points_in(box_lps, 8.0)),
                    3.0 / np.array(grid.GetSpacing()) + 2)
    label = np.zeros(grid.GetSize()[::-1], np.uint8)
    mask = np.zeros_like(label)
    if box is not None:
        label[box] = warp(_image(label_t, anatomy.reference), field, nearest=True, box=box)
        mask[box] = warp(_image(anatomy.mask, anatomy.reference), field, box=box) > 0.5
    mask |= (label > 0).astype(np.uint8)
    return _image(label, grid), _image(mask, grid)


def acquisition_meta(acq) -> dict:
    g = acq.grid
    return {"dims": acq.dims, "plane": acq.plane, "tilt_deg": round(acq.tilt_deg, 3), "size": tuple(g.size),
            "spacing": tuple(g.spacing), "slice_mm": acq.slice_mm, "rot_deg": acq.motion.angle_deg,
            "shift_mm": acq.motion.shift_mm, "to_reference": acq.motion.to_reference()}


def _draw_case(seed: int, tumour_class, randomise: bool, probe: int = 0, site_draw=None):
    """Class, tumour plan (the BraTS-style engine's draws for this seed), then the clinical stream's
    intensities and the template channels. probe=k: tissue codes to the power k instead of intensities
    (the same draws are taken, so the geometry is the case's). site_draw: a site's intensities instead of
    the clinical stream's (whose draws are still taken)."""
    rng = np.random.default_rng([int(seed), 20261122])
    if tumour_class is None:
        tumour_class = CLASSES[int(rng.integers(len(CLASSES)))]
    anatomy = load_anatomy()
    draw_healthy(rng)
    plan = plan_tumours(rng, anatomy, tumour_class)
    rng = np.random.default_rng([int(seed), *_STREAM])
    intensities = draw_intensities(rng, randomise)
    if site_draw is not None:
        intensities = site_draw.intensities
    intracranial(plan, anatomy)
    if probe:
        intensities = probe_intensities(probe)
        for lesion in plan.lesions:
            lesion.tissue = {v: {c: float(LESION_CODE + v) ** probe for c in CONTRASTS} for v in lesion.tissue}
            lesion.texture = np.zeros_like(lesion.texture)
    else:
        scale_lesions(plan, intensities)
    template = template_channels(plan, intensities, draw_head(rng), rng, anatomy)
    return tumour_class, plan, rng, intensities, anatomy, template


def make_clinical_case(seed: int, tumour_class=None, randomise: bool = True, style=None):
    """One clinical case (engine.make_case checks the arguments); style: a site.SiteStyle or None."""
    from .engine import Case, case_id_for, label_volumes  # engine imports this module lazily

    site_draw = draw_site(style, seed) if style is not None else None
    tumour_class, plan, rng, intensities, anatomy, template = _draw_case(seed, tumour_class, randomise, False, site_draw)
    channels, healthy, box, label_t = template
    subject = SubjectMap(rng, plan.lesions)
    protocol = draw_protocol(rng, subject.brain_centre, subject.scale, style.stack_slice_mm if style else None)
    scanner = draw_scanner(rng, CONTRASTS)
    if site_draw is not None:
        scanner = with_site_noise(scanner, site_draw)
    zone_world = subject.world_points_in(_box_lps(anatomy, box), 8.0) if box else None
    images, free = {}, {}
    space = head_space()
    for i, c in enumerate(CONTRASTS):
        lesioned = _image(channels[c], space.reference)
        healthy_image = None
        if box is not None:
            restored = channels[c].copy()
            restored[space.mni][box] = healthy[c]
            healthy_image = _image(restored, space.reference)
        case, twin, field = signals(protocol[c], subject, lesioned, healthy_image, zone_world)
        images[c], free[c] = scanner_values((case, twin), c, i, protocol[c], scanner, intensities, rng)
        del channels[c]  # frees the template channel once sampled
        if c == REFERENCE:
            label, brain = reference_truth(protocol[c], subject, field, label_t, anatomy)
    ref = protocol[REFERENCE].grid
    meta = {
        "seed": int(seed), "grid": "clinical", "spacing": tuple(ref.spacing), "size": tuple(ref.size),
        "lesion_count": sum(1 for lesion in plan.lesions if lesion.counts), "subtype": plan.subtype,
        "volumes_ml": label_volumes(label), "acquisition": "clinical", "reference": REFERENCE,
        "randomised": bool(randomise), "contrasts": {c: acquisition_meta(protocol[c]) for c in CONTRASTS},
    }
    if style is not None:
        meta["site"] = style.name
    return Case(case_id_for(seed), images, free, label, tumour_class, meta, brain, None, subject, "clinical")


def tissue_maps(seed: int, tumour_class=None):
    """What each voxel of the case's grids holds, sampled exactly like the case (same geometry, motion
    and slice profile, no noise): (codes, spread), each contrast -> float32 image. codes: the mean tissue
    code (tissues.TISSUE_CODES; lesion label v: LESION_CODE + v; 0 air outside the head); spread: the
    standard deviation of the codes mixed in the voxel, 0 where it holds one tissue only."""
    maps = []
    for power in (1, 2):
        _, plan, rng, _, _, template = _draw_case(seed, tumour_class, False, power)
        subject = SubjectMap(rng, plan.lesions)
        protocol = draw_protocol(rng, subject.brain_centre, subject.scale)
        maps.append({c: signals(protocol[c], subject, _image(template[0][c], head_space().reference), None, None)[0]
                     for c in CONTRASTS})
    codes, spread = {}, {}
    for c in CONTRASTS:
        grid = protocol[c].grid.reference()
        codes[c] = _image(maps[0][c].astype(np.float32), grid)
        variance = maps[1][c].astype(np.float64) - maps[0][c].astype(np.float64) ** 2
        spread[c] = _image(np.sqrt(np.maximum(variance, 0)).astype(np.float32), grid)
    return codes, spread
