"""Brain extraction for whole-head images: the head's cube, the two stages' inputs, the mask on the native grid.

The head's cube: 256 mm on a side, LPS-aligned, centred on the head left-right and front-back, its top 16 mm
above the top of the head (the brain sits at the top of the head; a field of view reaching down the neck would
otherwise push the vertex out of the cube). The image is brought into it once, at 2 mm (128^3, anti-aliased,
normalised); the coarse stage sees that cube's 2x2x2 means (64^3 of 4 mm), and the box around its largest
brain part, with a margin, is where the fine stage (network/brainmask_net.py) predicts the share of each 2 mm
voxel inside the brain. That share, opened (a bridge of tissue thinner than the opening, to the face or the
neck, is cut), its largest part kept and its holes filled, interpolated linearly onto the native grid and
thresholded, is the mask: sub-voxel boundaries (a perfect 2 mm share map gives Dice 0.998 against the engine's
1 mm masks this way). The threshold and the opening are the model card's `mask_settings` (tuned on development
cases; 0.5 and none without them), and so is the margin around the mask in which the segmentation network
looks for tumour that the mask cut (`grown`; the mask given out then holds that tumour: `with_tumour`), and
whether the share is the mean over every registered contrast of the study (`fused_share`, the front end's).

Everything here but `predict_share` is torch-free: training builds its inputs with the same functions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

#: The fine stage's grid: the head's cube in FINE_CUBE^3 voxels of FINE_MM (256 mm: any adult head).
FINE_MM = 2.0
FINE_CUBE = 128
#: The coarse stage's grid: the same cube in 2x2x2 blocks.
SPACING_MM = 4.0
CUBE = 64
#: Space left above the top of the head, in mm.
TOP_MARGIN_MM = 16.0
#: The fine stage's box: the coarse brain's bounding box grown by this much on every side.
BOX_MARGIN_MM = 16.0
#: Adult intracranial volume, mL (about 1100-1900; a tumour can add some): a mask outside is not believed.
MIN_BRAIN_ML = 800.0
MAX_BRAIN_ML = 2300.0
#: A mask reaching this close to the field of view's edge, in mm, may be cut off by it.
BORDER_MM = 2.0
#: Brain tissue is not uniform (grey and white matter, CSF, vessels): inside brainmask-v2's masks of the engine's
#: 8 clinical development cases the image's coefficient of variation was 0.22-0.40, each contrast the reference
#: (benchmarks/brainmask_candidates.py); a water bottle, in which brainmask-v2 finds a "brain" of adult size
#: (Testing/Python/test_frontend.py), shows only its noise. Below this the mask holds no brain.
MIN_TISSUE_VARIATION = 0.1

Box = Tuple[slice, slice, slice]


@dataclass(frozen=True)
class MaskSettings:
    """How a brain share becomes a mask: the share's threshold, the opening's radius in mm (0: none), and how
    far beyond the mask the segmentation network looks (`margin_mm`): a tight mask scores best against the
    brain but cuts tumour at the brain's surface, meningiomas above all; the network finds that tumour in the
    margin, and the mask given out is the mask with the segmented tumour (`with_tumour`)."""

    threshold: float = 0.5
    opening_mm: float = 0.0
    margin_mm: float = 0.0
    fuse: bool = False  # the mask from the mean share of every registered contrast (`fused_share`)
    #: How far the segmented tumour is grown (inside the network's region) into the mask given out; None: the
    #: margin. Chosen with the segmentation in the loop (`darefuse evaluate` scores TUMOUR_MARGINS_MM): the
    #: network needs room to find a cut tumour, the mask given out only the tumour's edge.
    tumour_margin_mm: Optional[float] = None
    #: The share's threshold for the mask given out; None: `threshold`. The network's region and intensities
    #: keep `threshold` (what the segmentation model was trained on): a tighter mask given out scores closer to
    #: the brain, and the segmented tumour (grown by the tumour margin) keeps the tumour in it.
    given_threshold: Optional[float] = None

    @classmethod
    def of(cls, model) -> "MaskSettings":
        """The settings on a model's card (`mask_settings`), the defaults without them."""
        values = (getattr(model, "card", None) or {}).get("mask_settings", {})
        tumour, given = values.get("tumour_margin_mm"), values.get("given_threshold")
        return cls(float(values.get("threshold", 0.5)), float(values.get("opening_mm", 0.0)),
                   float(values.get("margin_mm", 0.0)), bool(values.get("fuse", False)),
                   None if tumour is None else float(tumour), None if given is None else float(given))

    @property
    def given_margin_mm(self) -> float:
        """The tumour's margin in the mask given out."""
        return self.margin_mm if self.tumour_margin_mm is None else self.tumour_margin_mm

    def given_out(self, threshold: Optional[float] = None) -> "MaskSettings":
        """These settings with the mask given out's threshold (or `threshold`) as the threshold, for `refine`."""
        chosen = threshold if threshold is not None else self.given_threshold
        return replace(self, threshold=self.threshold if chosen is None else float(chosen))


def anti_aliased(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Smoothing so that sampling at spacing_mm does not alias: block averages down to about half of it first
    (a 0.4 mm T2 stack is 14 M voxels; smoothing it whole took most of the stage), then a Gaussian for the
    rest (sigma per axis, from the FWHM)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    shrink = [max(int(spacing_mm / 2.0 / s), 1) for s in image.GetSpacing()]
    if max(shrink) > 1:
        image = sitk.BinShrink(image, shrink)
    sigma = [float(np.sqrt(max(spacing_mm ** 2 - s ** 2, 0.0)) / 2.355) for s in image.GetSpacing()]
    if max(sigma) <= 0.0:
        return image
    return sitk.DiscreteGaussian(sitk.Cast(image, sitk.sitkFloat32), [v * v for v in sigma], 32, 0.01, True)


def _head_voxels(image: sitk.Image) -> np.ndarray:
    """Physical points of the head (Otsu's threshold on a coarse copy: the air is the dark class)."""
    coarse = sitk.Resample(anti_aliased(image, 8.0), _coarse_grid(image, 8.0), sitk.Transform(), sitk.sitkLinear,
                           0.0, sitk.sitkFloat32)
    head = sitk.OtsuThreshold(coarse, 0, 1)
    array = sitk.GetArrayViewFromImage(head) > 0
    if not array.any():
        array = np.ones(array.shape, bool)
    zyx = np.argwhere(array)
    return np.array([coarse.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in zyx])


def _coarse_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    spacing = np.maximum(np.array(image.GetSpacing()), spacing_mm)
    size = np.maximum(np.round(np.array(image.GetSize()) * np.array(image.GetSpacing()) / spacing), 1).astype(int)
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(image.GetDirection())
    corner = np.array(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    grid.SetOrigin((corner + np.array(image.GetDirection()).reshape(3, 3) @ (spacing / 2)).tolist())
    return grid


def head_cube(image: sitk.Image) -> sitk.Image:
    """The fine grid of the head's cube for this image (geometry only): see the module docstring."""
    points = _head_voxels(image)
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2.0
    side = FINE_CUBE * FINE_MM
    # LPS: z grows superior, so the top of the head is hi[2].
    centre[2] = min(centre[2], hi[2] + TOP_MARGIN_MM - side / 2.0)
    cube = sitk.Image([FINE_CUBE] * 3, sitk.sitkUInt8)
    cube.SetSpacing([FINE_MM] * 3)
    cube.SetOrigin((centre - (FINE_CUBE - 1) * FINE_MM / 2.0).tolist())
    return cube


def normalise(array: np.ndarray) -> np.ndarray:
    """Intensities to about 0..1: divided by the 99.5th percentile of the non-air voxels (scanner units vary)."""
    values = array[array > np.percentile(array, 50)]
    top = float(np.percentile(values, 99.5)) if values.size else float(array.max())
    return np.clip(array / max(top, 1e-6), 0.0, 1.5).astype(np.float32)


def cube_input(image: sitk.Image, cube: sitk.Image, transform: Optional[sitk.Transform] = None) -> np.ndarray:
    """The image on the cube's grid (2 mm, or the coarse grid), anti-aliased and normalised, float32 (Z, Y, X)."""
    moved = sitk.Resample(anti_aliased(image, cube.GetSpacing()[0]), cube, transform or sitk.Transform(), sitk.sitkLinear,
                          0.0, sitk.sitkFloat32)
    return normalise(sitk.GetArrayFromImage(moved))


def coarse_input(fine: np.ndarray) -> np.ndarray:
    """The coarse stage's 4 mm cube: means of the fine cube's 2x2x2 blocks (float32)."""
    z, y, x = (n // 2 for n in fine.shape)
    return fine[:2 * z, :2 * y, :2 * x].reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5), dtype=np.float32)


def largest_part(inside: np.ndarray) -> np.ndarray:
    """The largest connected part of a boolean array, holes filled (all False when there is none)."""
    if not inside.any():
        return np.zeros(inside.shape, bool)
    parts = sitk.ConnectedComponent(sitk.GetImageFromArray(inside.astype(np.uint8)))
    largest = sitk.Cast(sitk.RelabelComponent(parts, sortByObjectSize=True) == 1, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(largest)) > 0


def brain_box(coarse_share: np.ndarray, multiple: int) -> Box:
    """The fine stage's box (slices of the fine cube): the coarse brain's bounding box, BOX_MARGIN_MM wider on
    every side, each side a multiple of `multiple` voxels, inside the cube (the whole cube when the coarse
    stage finds no brain)."""
    inside = np.argwhere(largest_part(coarse_share > 0.5))
    if not len(inside):
        return (slice(0, FINE_CUBE),) * 3
    margin = int(round(BOX_MARGIN_MM / FINE_MM))
    lo = inside.min(0) * 2 - margin
    hi = inside.max(0) * 2 + 2 + margin
    size = np.minimum(np.ceil((hi - lo) / multiple).astype(int) * multiple, FINE_CUBE)
    start = np.clip((lo + hi) // 2 - size // 2, 0, FINE_CUBE - size)
    return tuple(slice(int(s), int(s + n)) for s, n in zip(start, size))


def box_grid(cube: sitk.Image, box: Box) -> sitk.Image:
    """The box's own grid (geometry only): the cube's voxels the box holds."""
    grid = sitk.Image([b.stop - b.start for b in box[::-1]], sitk.sitkUInt8)
    grid.SetSpacing(cube.GetSpacing())
    grid.SetOrigin(cube.TransformIndexToPhysicalPoint([b.start for b in box[::-1]]))
    return grid


def opened(inside: np.ndarray, radius: int) -> np.ndarray:
    """The voxels of `inside` that the largest part of its erosion (by `radius` voxels) reaches again when
    dilated back: thin bridges to other parts, and the parts beyond them, are gone."""
    if radius <= 0 or not inside.any():
        return inside
    eroded = sitk.BinaryErode(sitk.GetImageFromArray(inside.astype(np.uint8)), [radius] * 3)
    core = largest_part(sitk.GetArrayFromImage(eroded) > 0)
    back = sitk.BinaryDilate(sitk.GetImageFromArray(core.astype(np.uint8)), [radius] * 3)
    return (sitk.GetArrayFromImage(back) > 0) & inside


def clean_share(share: np.ndarray, threshold: float = 0.5, opening: int = 0) -> np.ndarray:
    """The share with everything but the largest connected brain part (above `threshold`, opened by `opening`
    voxels) set to 0 and that part's holes to 1, done on the 2 mm box (on a 1 mm grid of 12 M voxels, hole
    filling alone took seconds); the share is kept one voxel either side of the part's surface, so that the
    boundary stays sub-voxel."""
    filled = largest_part(opened(share > threshold, opening))
    if not filled.any():
        return np.zeros_like(share)
    image = sitk.GetImageFromArray(filled.astype(np.uint8))
    near = sitk.GetArrayFromImage(sitk.BinaryDilate(image, [1, 1, 1])) > 0
    core = sitk.GetArrayFromImage(sitk.BinaryErode(image, [1, 1, 1])) > 0
    return np.where(core, 1.0, np.where(near, share, 0.0)).astype(np.float32)


def share_on_grid(share: np.ndarray, source: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A brain share on `source`'s grid (cube or box) brought onto another grid, linear; float32 (Z, Y, X)."""
    return sitk.GetArrayFromImage(sitk.Resample(share_image(share, source), grid, sitk.Transform(), sitk.sitkLinear,
                                                0.0, sitk.sitkFloat32))


def share_image(share: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A share array (Z, Y, X) as an image with its grid's geometry (float32)."""
    image = sitk.GetImageFromArray(share.astype(np.float32))
    image.CopyInformation(grid)
    return image


def fused_share(grid: sitk.Image, share: np.ndarray,
                others: Sequence[Tuple[sitk.Image, np.ndarray, sitk.Image, sitk.Transform]]) -> np.ndarray:
    """The reference's share (on `grid`) averaged with other contrasts' shares, each (its share's grid, its share,
    its image, its registration: reference point -> its point) brought onto `grid` linearly. Each contrast
    counts only inside its own field of view (a 2-D stack that stops short of the vertex says nothing there).
    The networks' errors differ between contrasts and resolutions, so the mean is closer to the brain than any
    one of them (SynthStrip's any-contrast idea, used on every contrast of the study at once)."""
    total = share.astype(np.float64)
    weight = np.ones(share.shape, np.float64)
    for other_grid, other_share, image, transform in others:
        seen = sitk.Image(image.GetSize(), sitk.sitkFloat32) + 1.0
        seen.CopyInformation(image)
        inside = sitk.GetArrayFromImage(sitk.Resample(seen, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        moved = sitk.Resample(share_image(other_share, other_grid), grid, transform, sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
        total += inside * sitk.GetArrayFromImage(moved)
        weight += inside
    return (total / weight).astype(np.float32)


def refine(share: np.ndarray, box: sitk.Image, reference: sitk.Image,
           settings: MaskSettings = MaskSettings()) -> sitk.Image:
    """The mask on the reference grid: the cleaned share (box grid) interpolated linearly, above the
    threshold (uint8)."""
    opening = int(round(settings.opening_mm / box.GetSpacing()[0]))
    inside = share_on_grid(clean_share(share, settings.threshold, opening), box, reference) > settings.threshold
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


def distance_mm(mask: sitk.Image) -> np.ndarray:
    """Each voxel's distance to the mask in mm (0 or less inside), float32 (Z, Y, X)."""
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(sitk.Cast(mask, sitk.sitkUInt8), insideIsPositive=False,
                                                               squaredDistance=False, useImageSpacing=True))


def grown(mask: sitk.Image, margin_mm: float) -> sitk.Image:
    """The mask grown by margin_mm (every voxel within that distance of it), uint8."""
    if margin_mm <= 0:
        return sitk.Cast(mask, sitk.sitkUInt8)
    out = sitk.GetImageFromArray((distance_mm(mask) <= margin_mm).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def with_tumour(mask: sitk.Image, label: np.ndarray, region: Optional[sitk.Image] = None,
                margin_mm: float = 0.0) -> sitk.Image:
    """The brain mask with the segmented tumour (label > 0, same grid) in it, as the largest part with its holes
    filled: BraTS-style brain masks hold the whole tumour, extra-axial ones included. Given the network's region
    and a margin, the tumour is first grown by the margin inside the region: where a segmentation stops short
    of a tumour's edge, the mask given out still holds that edge."""
    return with_tumour_margins(mask, label, region, [margin_mm])[margin_mm]


def with_tumour_margins(mask: sitk.Image, label: np.ndarray, region: Optional[sitk.Image],
                        margins_mm: Sequence[float]) -> Dict[float, sitk.Image]:
    """`with_tumour` at each of several margins (the tumour's distance map made once)."""
    tumour = label > 0
    distance = in_region = None
    if region is not None and tumour.any() and max(margins_mm) > 0:
        image = sitk.GetImageFromArray(tumour.astype(np.uint8))
        image.CopyInformation(mask)
        distance = distance_mm(image)
        in_region = sitk.GetArrayViewFromImage(region) > 0
    inside = sitk.GetArrayViewFromImage(mask) > 0
    out = {}
    for margin in margins_mm:
        grown_tumour = tumour
        if distance is not None and margin > 0:
            grown_tumour = (distance <= margin) & in_region
        image = sitk.GetImageFromArray(largest_part(inside | grown_tumour).astype(np.uint8))
        image.CopyInformation(mask)
        out[margin] = image
    return out


def mask_volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def touches_border(mask: sitk.Image) -> List[str]:
    """Which faces of the field of view the mask reaches (within BORDER_MM)."""
    array = sitk.GetArrayViewFromImage(mask) > 0
    faces = []
    names = (("inferior/superior", 0), ("anterior/posterior", 1), ("left/right", 2))
    for name, axis in names:
        depth = max(int(np.ceil(BORDER_MM / mask.GetSpacing()[2 - axis])), 1)
        first = np.take(array, range(depth), axis=axis).any()
        last = np.take(array, range(array.shape[axis] - depth, array.shape[axis]), axis=axis).any()
        if first or last:
            faces.append(name)
    return faces


def tissue_variation(image: sitk.Image, mask: sitk.Image) -> float:
    """The coefficient of variation (standard deviation over mean) of the image inside the mask."""
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0].astype(np.float64)
    if not values.size:
        return 0.0
    return float(values.std() / max(abs(values.mean()), 1e-6))


def mask_problems(mask: sitk.Image, label: str = "the reference", image: Optional[sitk.Image] = None) -> List[str]:
    """Why a brain mask is not believed (empty if it is): adult brain volume, cut off by the field of view, and
    (given the image) nearly uniform intensity inside it."""
    problems = []
    if image is not None:
        variation = tissue_variation(image, mask)
        if variation < MIN_TISSUE_VARIATION:
            problems.append(f"the image inside the brain mask of {label} is nearly uniform (variation "
                            f"{variation:.0%}, brain tissue shows {MIN_TISSUE_VARIATION:.0%} or more): it may not be "
                            "a brain")
    volume = mask_volume_ml(mask)
    if volume < MIN_BRAIN_ML or volume > MAX_BRAIN_ML:
        problems.append(f"the brain mask of {label} holds {volume:.0f} mL, outside the adult range "
                        f"{MIN_BRAIN_ML:.0f}-{MAX_BRAIN_ML:.0f} mL")
    faces = touches_border(mask)
    if faces:
        problems.append(f"the brain mask of {label} reaches the edge of the field of view ({', '.join(faces)}): "
                        "part of the brain may lie outside the image")
    return problems


def predict_share(model, array: np.ndarray, stage: str) -> np.ndarray:
    """One stage's brain share for one array (Z, Y, X) float32 -> float32 in [0, 1]."""
    import torch  # only where the network runs

    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None], stage)
    return torch.sigmoid(logits)[0, 0].numpy().astype(np.float32)


def coarse_grid(cube: sitk.Image) -> sitk.Image:
    """The coarse stage's 4 mm grid of the cube (geometry only): each voxel the centre of a 2x2x2 block."""
    grid = sitk.Image([CUBE] * 3, sitk.sitkUInt8)
    grid.SetSpacing([SPACING_MM] * 3)
    grid.SetOrigin([o + (SPACING_MM - FINE_MM) / 2.0 for o in cube.GetOrigin()])
    return grid


def brain_share(model, image: sitk.Image) -> Tuple[sitk.Image, np.ndarray]:
    """(the share's grid, the brain share) of one whole-head image: the fine stage's box, or the coarse grid of a
    one-stage model (brainmask-v1)."""
    cube = head_cube(image)
    if getattr(model, "one_stage", False):  # as brainmask-v1 was trained: its input sampled at 4 mm
        grid = coarse_grid(cube)
        return grid, predict_share(model, cube_input(image, grid), "coarse")
    fine = cube_input(image, cube)
    box = brain_box(predict_share(model, coarse_input(fine), "coarse"), model.config.fine_multiple)
    return box_grid(cube, box), predict_share(model, fine[box], "fine")


def extract_brain(model, image: sitk.Image) -> Tuple[sitk.Image, sitk.Image, np.ndarray]:
    """(mask on the image's grid with the card's settings, the share's grid, the share) for one whole-head
    image."""
    grid, share = brain_share(model, image)
    return refine(share, grid, image, MaskSettings.of(model)), grid, share
