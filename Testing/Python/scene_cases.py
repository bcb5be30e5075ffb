"""Drawn test cases for the scene and logic tests: real arrays, real geometry, a real (simple) pipeline.

The drawn pipeline stands in for the network where a test is about the scene, not the model: it recovers the
drawn tumour from the images by thresholds and computes maps from it, honouring pipeline.run's contract
(progress, cooperative cancel between steps, PipelineResult on the reference grid).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from DareFuseSlicerLib.constants import CLASSES, CONTRASTS
from DareFuseSlicerLib.errors import Cancelled
from DareFuseSlicerLib.pipeline.review import ReviewConfig, find_regions
from DareFuseSlicerLib.scene import files, volumes

SHAPE = (24, 30, 28)  # z, y, x: small, so a test takes milliseconds
SPACING = (1.1, 0.9, 1.6)
ORIGIN = (12.0, -30.5, 8.25)
# Oblique: the conversion must carry direction cosines, not only spacing and origin.
DIRECTION = sitk.VersorTransform((0.2, 0.1, 1.0), 0.35).GetMatrix()
#: Intensity per tissue (background, brain, SNFH, ET, NETC) for each contrast.
INTENSITY = {
    "t1": (0, 400, 330, 360, 250),
    "t1ce": (0, 420, 380, 900, 200),
    "t2": (0, 300, 600, 500, 700),
    "flair": (0, 350, 800, 650, 450),
}


#: Review settings for the drawn case: a plain threshold on the error probability, places cut at 8 mm.
DRAWN_REVIEW = ReviewConfig(threshold=0.2, near_mm=3.0, min_ml=0.0, max_extent_mm=8.0, island_max_ml=0.0,
                            calibration_margin=(0.0, 1.0), calibration_error=((0.5, 0.0),) * 4, overlay_threshold=0.25)


def drawn_label() -> np.ndarray:
    """Concentric tumour (NETC core, ET rim, SNFH shell) in an ellipsoid brain; 0/1/2/3 plus -1 for brain."""
    z, y, x = np.indices(SHAPE, dtype=float)
    centre = np.array(SHAPE) / 2.0
    brain = ((z - centre[0]) / 11) ** 2 + ((y - centre[1]) / 14) ** 2 + ((x - centre[2]) / 13) ** 2 <= 1
    radius = np.sqrt((z - 10) ** 2 + (y - 13) ** 2 + (x - 15) ** 2)
    label = np.where(brain, -1, 0).astype(np.int8)
    label[brain & (radius <= 6.5)] = 2
    label[brain & (radius <= 4.5)] = 3
    label[brain & (radius <= 2.5)] = 1
    return label


def geometry(image: sitk.Image) -> sitk.Image:
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def drawn_images(dtype=np.int16) -> Dict[str, sitk.Image]:
    label = drawn_label()
    tissue = np.select([label == 0, label == -1, label == 2, label == 3, label == 1], [0, 1, 2, 3, 4])
    images = {}
    rng = np.random.default_rng(0)
    for contrast in CONTRASTS:
        # Some noise inside the head, as in any MR image (a handful of exact values reads as a label map).
        values = np.array(INTENSITY[contrast])[tissue] + np.where(label != 0, rng.normal(0.0, 4.0, SHAPE), 0.0)
        images[contrast] = geometry(sitk.GetImageFromArray(np.round(values).astype(dtype)))
    return images


def truth_label() -> sitk.Image:
    return geometry(sitk.GetImageFromArray(np.clip(drawn_label(), 0, 3).astype(np.uint8)))


def add_case(scene, contrasts=CONTRASTS, prefix="CASE") -> Dict[str, object]:
    """The drawn contrasts as volume nodes in `scene`, named like BraTS files (CASE-t1n, CASE-t1c, ...)."""
    suffix = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    images = drawn_images()
    return {c: volumes.add_volume(scene, images[c], f"{prefix}-{suffix[c]}") for c in contrasts}


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


@dataclass
class DrawnResult:
    """pipeline.run.PipelineResult's fields (a test checks they match), without importing torch for every test."""

    label: Optional[sitk.Image]
    uncertainty: Optional[sitk.Image]
    difference_prior: Optional[sitk.Image]
    tumour_free: Dict[str, sitk.Image]
    gradcam: Optional[sitk.Image]
    predicted_class: str
    class_probabilities: Dict[str, float]
    volumes_ml: Dict[str, float]
    warnings: List[str]
    timings: Dict[str, float]
    inputs: Dict[str, dict]
    low_confidence: bool = False
    display_image: Optional[sitk.Image] = None
    settings: dict = field(default_factory=dict)
    gradcam_class: str = ""
    brain_mask: Optional[sitk.Image] = None
    registered: Dict[str, sitk.Image] = field(default_factory=dict)
    front_end: dict = field(default_factory=dict)
    review: Optional[object] = None
    margin: Optional[np.ndarray] = None
    tumour_probability: Optional[np.ndarray] = None
    unshown: List[dict] = field(default_factory=list)


def drawn_pipeline(images, model, outputs=("segmentation", "uncertainty", "prior", "gradcam"), device="cpu",
                   progress=None, cancel=None, labels=None, class_gate=True, fail_at: Optional[str] = None):
    """Recovers the drawn tumour by thresholds; returns a DrawnResult on the reference grid."""
    steps = ["validate", "segmentation", "maps", "gradcam"]
    given = [c for c in CONTRASTS if images.get(c) is not None]
    reference = images[given[0]]

    def step(name: str, index: int) -> None:
        if cancel is not None and cancel():
            raise Cancelled()
        if fail_at == name:
            raise RuntimeError(f"injected failure at {name}")
        if progress is not None:
            progress(index / len(steps), name)

    step("validate", 0)
    arrays = {c: sitk.GetArrayFromImage(images[c]).astype(np.float32) for c in given}
    step("segmentation", 1)
    # Each tissue has its own intensity in every contrast: the nearest tissue in intensity space is exact.
    tissues = np.array([[INTENSITY[c][k] for c in given] for k in range(5)], np.float32)
    stacked = np.stack([arrays[c] for c in given], -1)
    nearest = np.argmin(((stacked[..., None, :] - tissues) ** 2).sum(-1), -1)
    label = np.choose(nearest, [0, 0, 2, 3, 1]).astype(np.uint8)
    tumour = (label > 0).astype(np.float32)
    step("maps", 2)
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(_like(tumour, reference), 1.5))
    uncertainty = np.clip(4.0 * blurred * (1.0 - blurred), 0.0, 1.0).astype(np.float32)
    brain = nearest > 0
    median = {c: float(np.median(arrays[c][brain & (label == 0)])) for c in given}
    tumour_free = {c: _like(np.where(label > 0, median[c], arrays[c]).astype(np.float32), reference) for c in given}
    difference = np.sqrt(np.mean([(arrays[c] - sitk.GetArrayFromImage(tumour_free[c])) ** 2 for c in given], 0))
    step("gradcam", 3)
    gradcam = (blurred / max(float(blurred.max()), 1e-6)).astype(np.float32)
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    counts = {v: int((label == v).sum()) for v in (1, 2, 3)}
    volumes_ml = {"NETC": counts[1] * voxel_ml, "SNFH": counts[2] * voxel_ml, "ET": counts[3] * voxel_ml,
                  "WT": sum(counts.values()) * voxel_ml, "TC": (counts[1] + counts[3]) * voxel_ml}
    probabilities = np.array([0.05, 0.8, 0.1, 0.05])
    # Review regions where the drawn edge is blurred: the real region finder on a margin of 1 - uncertainty.
    review = find_regions(label, uncertainty, 1.0 - uncertainty, reference, DRAWN_REVIEW)
    if progress is not None:
        progress(1.0, "done")
    wanted = set(outputs)
    return DrawnResult(
        label=_like(label, reference) if "segmentation" in wanted else None,
        uncertainty=_like(uncertainty, reference) if "uncertainty" in wanted else None,
        difference_prior=_like(difference.astype(np.float32), reference) if "prior" in wanted else None,
        tumour_free=tumour_free if "prior" in wanted else {},
        gradcam=_like(gradcam, reference) if "gradcam" in wanted else None,
        predicted_class=CLASSES[int(np.argmax(probabilities))],
        gradcam_class=CLASSES[int(np.argmax(probabilities))],
        class_probabilities={c: float(p) for c, p in zip(CLASSES, probabilities)},
        volumes_ml={k: round(v, 4) for k, v in volumes_ml.items()},
        warnings=[],
        timings={"total": 0.0},
        inputs={"reference": given[0], **{c: {"given": c in given} for c in CONTRASTS}},
        review=review if "segmentation" in wanted else None,
        settings={"review": {"overlay_threshold": DRAWN_REVIEW.overlay_threshold}},
    )


class DrawnModel:
    """Stands in for a loaded model: the drawn pipeline ignores it; the card is what the report reads."""

    card = {"name": "drawn", "version": "test", "architecture": "DrawnModel", "sha256": "0" * 64}


def drawn_loader(path, device="cpu"):
    return DrawnModel()


def scene_state(scene) -> list:
    """Every node's ID and class, in order: equal before and after means the scene was left as it was."""
    return [(scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName()) for i in range(scene.GetNumberOfNodes())]


def new_scene():
    return files.new_scene()
