"""Rigid co-registration of a contrast to the reference with SimpleITK's registration framework.

Mattes mutual information (works across contrasts), a versor rigid 3-D transform, the metric sampled inside
the reference's brain region only (the neck and jaw move on their own). The transform starts as the identity
centred on the brain: contrasts of one study share the scanner's coordinates, so what is left is the patient's
motion between sequences (a few mm and degrees); a moments-based initialisation would move the image by the
difference of the two fields of view.

A two-level pyramid with gradient steps searches from that start (a wide capture range). For a contrast whose
voxels are coarser than the reference's (a 2-D stack of thick slices), Powell's direction-set search at the
working resolution alone runs from the same start too, and the one whose metric ends better is kept: the
pyramid's coarse level sees a 5 mm stack as 10 mm slices and can prefer a pose several mm off (742012's T2
ended 6.2 mm off, its metric at the working resolution no better than at the start, where the true pose's was
clearly better); gradient steps at that resolution stop in the metric's ripples, Powell's line searches reached
1.2 mm there. On 3-D contrasts the pyramid alone erred by at most 0.45 mm on the development cases
(docs/registration-two-searches.md).

A registration is checked before it is used: a motion too large to be head motion, a metric that did not
improve, or too little overlap of the two images over the brain make it "failed", and the caller leaves that
contrast out with a warning rather than use it misaligned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .brainmask import anti_aliased

#: Head motion between sequences of one study beyond this is not believed (rotation in degrees, shift in mm
#: of the brain's centre): clinical motion is a few degrees and millimetres.
MAX_ROTATION_DEG = 15.0
MAX_SHIFT_MM = 20.0
#: The moved image must cover at least this share of the brain region.
MIN_OVERLAP = 0.6
#: Mattes MI of a registration that found shared structure is clearly negative; above this, it did not.
MAX_FINAL_METRIC = -0.05
#: The metric's region: the brain mask grown by this much, so that the CSF rim and the inner skull table, the
#: sharpest edges every contrast shows, take part (with the brain alone, T1-T2 pairs went several mm wrong;
#: with brainmask-v2's tight masks, 8 mm left a T2 2.0 mm off on the clinical development cases, 16 mm 0.5).
REGION_MARGIN_MM = 16.0
#: Both images are first brought to voxels of at least this size (anti-aliased).
WORK_SPACING_MM = 2.0
#: Resolution levels: shrink factors of those 2 mm images and smoothing sigmas in mm.
SHRINK_FACTORS = (2, 1)
SMOOTHING_MM = (2.0, 0.0)
#: Share of the brain region's voxels sampled by the metric at each level: the cost is set by the samples.
SAMPLING = (0.5, 0.2)
ITERATIONS = 100
#: The second search (Powell): at most this many sweeps, each a line search along every parameter of at
#: most POWELL_LINE_STEPS steps, stopping when a sweep moves less than POWELL_STEP_TOLERANCE (scaled units,
#: about voxels) or gains less than POWELL_VALUE_TOLERANCE; its metric sampled at POWELL_SAMPLING. Chosen among
#: four settings on the development cases and the test heads (docs/registration-two-searches.md): sampling 5 %
#: of the region lost a test head's motion.
POWELL_SWEEPS = 100
POWELL_LINE_STEPS = 10
POWELL_STEP_TOLERANCE = 0.01
POWELL_VALUE_TOLERANCE = 1e-4
POWELL_SAMPLING = 0.1
HISTOGRAM_BINS = 32
#: Fixed seed of the metric's random sampling, so a run repeats exactly.
SAMPLING_SEED = 20261205


@dataclass
class Registration:
    """One contrast's rigid registration to the reference."""

    contrast: str
    transform: sitk.Transform  # reference physical point -> the same anatomy's point in the contrast (LPS mm)
    initial_metric: float  # Mattes MI at the start (negative; lower is better)
    final_metric: float
    rotation_deg: float  # angle of the recovered rotation
    shift_mm: float  # displacement of the brain's centre
    overlap: float  # share of the brain region that the moved contrast covers
    iterations: int
    stop: str
    seconds: float = 0.0
    problems: List[str] = field(default_factory=list)  # empty when the registration is accepted
    searches: Dict[str, float] = field(default_factory=dict)  # each search's final metric
    kept: str = ""  # the search whose transform this is
    found: Dict[str, sitk.Transform] = field(default_factory=dict)  # each search's transform, as `transform`

    @property
    def accepted(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        """For report.json: the transform as a 4x4 matrix (LPS, reference -> contrast) and its parameters."""
        return {
            "accepted": self.accepted,
            "problems": list(self.problems),
            "matrix_lps": np.round(transform_matrix(self.transform), 6).tolist(),
            "rotation_deg": round(self.rotation_deg, 3),
            "shift_mm": round(self.shift_mm, 3),
            "initial_metric": round(self.initial_metric, 5),
            "final_metric": round(self.final_metric, 5),
            "overlap": round(self.overlap, 4),
            "iterations": self.iterations,
            "stop": self.stop,
            "searches": {name: round(value, 5) for name, value in self.searches.items()},
            "kept": self.kept,
            "seconds": round(self.seconds, 3),
        }


def transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix of a rigid or affine transform (x' = A x + t, LPS mm)."""
    dim = 3
    origin = transform.TransformPoint((0.0, 0.0, 0.0))
    matrix = np.eye(4)
    for axis in range(dim):
        unit = [0.0] * dim
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(unit)) - np.array(origin)
    matrix[:3, 3] = origin
    return matrix


def brain_region(mask: sitk.Image) -> sitk.Image:
    """The region the metric is sampled in: the brain mask grown by REGION_MARGIN_MM (uint8)."""
    radius = [max(int(round(REGION_MARGIN_MM / s)), 1) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(sitk.Cast(mask > 0, sitk.sitkUInt8), radius)


def brain_centre(mask: sitk.Image) -> np.ndarray:
    """Centroid of a mask in physical space (LPS mm)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return np.array(stats.GetCentroid(1))


def mask_points(mask: sitk.Image, step: int = 4) -> np.ndarray:
    """Physical points (N, 3) of every `step`-th voxel of a mask along each axis."""
    array = sitk.GetArrayViewFromImage(mask)[::step, ::step, ::step] > 0
    zyx = np.argwhere(array) * step
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    return (zyx[:, ::-1] * np.array(mask.GetSpacing())) @ direction.T + np.array(mask.GetOrigin())


def mean_displacement_mm(a: sitk.Transform, b: sitk.Transform, points: np.ndarray) -> float:
    """Mean distance between where two transforms take the same points: a registration's error against the
    true motion when `points` are the brain's."""
    ma, mb = transform_matrix(a), transform_matrix(b)
    homogeneous = np.c_[points, np.ones(len(points))]
    return float(np.linalg.norm(homogeneous @ (ma - mb).T[:, :3], axis=1).mean())


def overlap_fraction(transform: sitk.Transform, points: np.ndarray, moving: sitk.Image) -> float:
    """Share of the points that `transform` takes inside the moving image's field of view."""
    if len(points) == 0:
        return 0.0
    moved = np.c_[points, np.ones(len(points))] @ transform_matrix(transform).T[:, :3]
    direction = np.array(moving.GetDirection()).reshape(3, 3)
    index = ((moved - np.array(moving.GetOrigin())) @ direction) / np.array(moving.GetSpacing())
    size = np.array(moving.GetSize())
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=1)
    return float(inside.mean())


def crop_to_points(image: sitk.Image, points: np.ndarray, margin_mm: float) -> sitk.Image:
    """The part of `image` around physical `points`, plus `margin_mm`: registering on the brain's box instead of
    the whole head's field of view makes the resolution pyramid several times cheaper."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index = ((points - np.array(image.GetOrigin())) @ direction) / np.array(image.GetSpacing())
    margin = margin_mm / np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(index.min(0) - margin).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(index.max(0) + margin).astype(int), 0, size - 1)
    if np.any(hi <= lo):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo + 1], [int(v) for v in lo])


def _method(mask: sitk.Image, shrink: Tuple[int, ...], smoothing_mm: Tuple[float, ...],
            sampling: Tuple[float, ...]) -> sitk.ImageRegistrationMethod:
    """The metric and the resolution levels both searches share; each search sets its own optimiser."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(list(sampling), SAMPLING_SEED)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _metric_at(method_mask: sitk.Image, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes MI of the two images under `transform`, sampled as the last level samples it."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING[-1], SAMPLING_SEED)
    method.SetMetricFixedMask(method_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too few samples inside the moving image: no shared information at all
        return 0.0


def _rotation_deg(transform: sitk.VersorRigid3DTransform) -> float:
    vector = np.array(transform.GetVersor()[:3])  # the unit quaternion (x, y, z, w)'s vector part
    return float(math.degrees(2.0 * math.asin(min(float(np.linalg.norm(vector)), 1.0))))


def _coarse_copy(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The image with voxels at least `spacing_mm` along each axis (anti-aliased), thicker axes kept: the
    registration works at 2 mm, where its error is already well under a millimetre and its cost is small."""
    spacing = np.array(image.GetSpacing())
    target = np.maximum(spacing, spacing_mm)
    if np.allclose(target, spacing):
        return image
    smooth = anti_aliased(image, spacing_mm)  # block averages first: a 0.4 mm T2 stack is 14 M voxels
    size = np.maximum(np.round(np.array(image.GetSize()) * spacing / target).astype(int), 1)
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing(target.tolist())
    grid.SetDirection(image.GetDirection())
    # Keep the outer corner of the field of view in place.
    corner = np.array(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    grid.SetOrigin((corner + direction @ (target / 2.0)).tolist())
    return sitk.Resample(smooth, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _with_cancel(method: sitk.ImageRegistrationMethod, event, cancel: Optional[Callable[[], bool]]) -> None:
    if cancel is None:
        return
    from ..errors import Cancelled

    def check() -> None:
        if cancel():
            method.StopRegistration()
            raise Cancelled()
    method.AddCommand(event, check)


def _execute(method: sitk.ImageRegistrationMethod, sampled: sitk.Image, interpolated: sitk.Image,
             centre: np.ndarray) -> sitk.VersorRigid3DTransform:
    initial = sitk.VersorRigid3DTransform()
    initial.SetCenter(centre.tolist())
    method.SetInitialTransform(initial, inPlace=False)
    found = method.Execute(sampled, interpolated)
    if isinstance(found, sitk.CompositeTransform):
        found = found.GetNthTransform(0)
    return sitk.VersorRigid3DTransform(found)


def _pyramid(sampled: sitk.Image, interpolated: sitk.Image, sampled_mask: sitk.Image, centre: np.ndarray,
             iterations: int, cancel: Optional[Callable[[], bool]]) -> Tuple[sitk.VersorRigid3DTransform, int, str]:
    """The first search: gradient steps over two resolution levels."""
    method = _method(sampled_mask, SHRINK_FACTORS, SMOOTHING_MM, SAMPLING)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.01, numberOfIterations=iterations,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    _with_cancel(method, sitk.sitkMultiResolutionIterationEvent, cancel)
    found = _execute(method, sampled, interpolated, centre)
    return found, method.GetOptimizerIteration(), method.GetOptimizerStopConditionDescription()


def _powell(sampled: sitk.Image, interpolated: sitk.Image, sampled_mask: sitk.Image, centre: np.ndarray,
            cancel: Optional[Callable[[], bool]]) -> Tuple[sitk.VersorRigid3DTransform, int, str]:
    """The second search: Powell's line searches at the working resolution alone."""
    method = _method(sampled_mask, (1,), (0.0,), (POWELL_SAMPLING,))
    method.SetOptimizerAsPowell(POWELL_SWEEPS, POWELL_LINE_STEPS, 0.1, POWELL_STEP_TOLERANCE, POWELL_VALUE_TOLERANCE)
    method.SetOptimizerScalesFromPhysicalShift()
    _with_cancel(method, sitk.sitkIterationEvent, cancel)
    found = _execute(method, sampled, interpolated, centre)
    return found, method.GetOptimizerIteration(), method.GetOptimizerStopConditionDescription()


def _optimise(sampled: sitk.Image, interpolated: sitk.Image, sampled_mask: sitk.Image, centre: np.ndarray,
              iterations: int, cancel: Optional[Callable[[], bool]], stack: bool
              ) -> Tuple[Dict[str, tuple], Dict[str, float], str]:
    """The rigid transform taking `sampled` points to `interpolated` points that maximises their MI: each
    search's result (transform, iterations, stop), the metric each ended at, and which of them ends better.
    stack: `sampled` is a contrast's thick slices, where the second search runs too (the module docstring)."""
    results = {"pyramid": _pyramid(sampled, interpolated, sampled_mask, centre, iterations, cancel)}
    if stack:
        results["powell"] = _powell(sampled, interpolated, sampled_mask, centre, cancel)
    metrics = {name: _metric_at(sampled_mask, sampled, interpolated, found[0]) for name, found in results.items()}
    return results, metrics, min(metrics, key=metrics.get)


def register(fixed: sitk.Image, moving: sitk.Image, region: sitk.Image, contrast: str = "moving",
             iterations: int = ITERATIONS, cancel: Optional[Callable[[], bool]] = None) -> Registration:
    """Rigidly register `moving` to `fixed` (the reference) over `region` (uint8 mask on the fixed grid).

    Returns the transform from reference points to moving points, the metric before and after, the motion
    and the problems found (see the module docstring); it never raises for a poor registration.

    The metric is sampled on the coarser image's voxels and the finer one is interpolated: a thick-slice T2
    sampled at 1 mm reference points is mostly interpolation between slices 5 mm apart, which misled the
    optimiser on T1-T2 pairs (errors of several mm on the engine-like test heads), sampled on its own slices
    it did not.
    """
    import time

    started = time.perf_counter()
    region = sitk.Cast(region > 0, sitk.sitkUInt8)
    centre = brain_centre(region)
    points = mask_points(region, step=4)
    identity = sitk.VersorRigid3DTransform()
    identity.SetCenter(centre.tolist())
    start_overlap = overlap_fraction(identity, points, moving)
    box = mask_points(region, step=2)
    fixed = _coarse_copy(crop_to_points(sitk.Cast(fixed, sitk.sitkFloat32), box, 4.0), WORK_SPACING_MM)
    moving = _coarse_copy(crop_to_points(sitk.Cast(moving, sitk.sitkFloat32), box, MAX_SHIFT_MM), WORK_SPACING_MM)
    region = sitk.Resample(region, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    moving_coarser = np.prod(moving.GetSpacing()) > np.prod(fixed.GetSpacing()) * 1.5
    if moving_coarser:  # sample on the contrast's voxels: the brain region there, for the small motion allowed
        sampled, interpolated = moving, fixed
        sampled_mask = sitk.Resample(region, moving, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    else:
        sampled, interpolated, sampled_mask = fixed, moving, region
    initial_metric = _metric_at(sampled_mask, sampled, interpolated, identity)
    if start_overlap < MIN_OVERLAP:
        return Registration(contrast, identity, initial_metric, initial_metric, 0.0, 0.0, start_overlap, 0,
                            "not run", time.perf_counter() - started,
                            [f"it covers only {start_overlap:.0%} of the reference's brain region: the two images "
                             "do not overlap"])
    results, searches, kept = _optimise(sampled, interpolated, sampled_mask, centre, iterations, cancel,
                                        stack=moving_coarser)
    found = {name: sitk.VersorRigid3DTransform(r[0].GetInverse()) if moving_coarser else r[0]
             for name, r in results.items()}  # each search's, reference -> contrast
    transform, (_, iterations_done, stop), final_metric = found[kept], results[kept], searches[kept]
    rotation = _rotation_deg(transform)
    shift = float(np.linalg.norm(np.array(transform.TransformPoint(centre.tolist())) - centre))
    result = Registration(contrast, transform, initial_metric, final_metric, rotation, shift,
                          overlap_fraction(transform, points, moving), iterations_done, stop,
                          time.perf_counter() - started, searches=searches, kept=kept, found=found)
    result.problems = registration_problems(result)
    return result


def registration_problems(result: Registration) -> List[str]:
    """Why a registration is not believed (empty if it is)."""
    problems = []
    if result.rotation_deg > MAX_ROTATION_DEG:
        problems.append(f"it needed a rotation of {result.rotation_deg:.1f} degrees (at most {MAX_ROTATION_DEG:g} "
                        "is believed as head motion)")
    if result.shift_mm > MAX_SHIFT_MM:
        problems.append(f"it needed a shift of {result.shift_mm:.1f} mm (at most {MAX_SHIFT_MM:g} is believed as "
                        "head motion)")
    if result.overlap < MIN_OVERLAP:
        problems.append(f"once aligned it covers only {result.overlap:.0%} of the reference's brain region")
    if result.final_metric > MAX_FINAL_METRIC:
        problems.append(f"the images share too little structure (mutual information {-result.final_metric:.3f}, "
                        f"at least {-MAX_FINAL_METRIC:g} expected)")
    elif result.final_metric > result.initial_metric + 1e-3:
        problems.append(f"the registration made the match worse (mutual information {-result.initial_metric:.3f} "
                        f"-> {-result.final_metric:.3f})")
    return problems


def apply(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
          interpolator=sitk.sitkLinear) -> sitk.Image:
    """The moving contrast on the reference grid through the registration's transform (float32, 0 outside)."""
    return sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), reference, transform, interpolator, 0.0,
                         sitk.sitkFloat32)
