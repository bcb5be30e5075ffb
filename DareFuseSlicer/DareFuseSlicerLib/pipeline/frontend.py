"""The front end: a raw whole-head study in, skull-stripped co-registered contrasts on the reference grid out.

Two kinds of input are told apart from the images themselves (`study_kind`):

- preprocessed (BraTS-style: skull-stripped, every voxel outside the brain one background value): nothing
  here runs; the pipeline's own path takes the images as they are.
- raw (whole head, noise in the air, each contrast on its own grid, the patient moved between sequences):
  the brain mask of the reference contrast (pipeline/brainmask.py), then a rigid registration of every other
  contrast to it over the brain region (pipeline/register.py). A contrast whose registration is not believed
  is left out with a warning naming it; the model handles missing contrasts. When the brain-mask card says
  `fuse`, the brain mask given out is then made again from the mean brain share of the reference and every
  registered contrast (the networks' errors differ with the contrast and the slice thickness); the network's
  intensities stay normalised over the reference's own mask (`network_mask`), on which the segmentation
  models were tuned: fed the fused mask instead, darefuse-raw-v1's Dice fell (BRAINMASK_CARD.md). The network
  then sees the contrasts inside both masks grown by the brain-mask card's margin (a tumour a mask cut at the
  brain's surface lies there), on the reference's own grid, and every output stays on that grid; the brain
  mask given out holds the segmented tumour, grown by the card's tumour margin (`FrontEnd.with_tumour`).

`prepare_study` is the same path as one call, for training on the front end's output.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..constants import CONTRASTS, contrast_name, reference_contrast
from ..errors import InputError
from ..progress import CancelFn, check_cancel
from . import brainmask, preprocess, register
from .validate import check_image

#: The bundled brain-mask network (its card beside it): Resources/Models of the module.
BRAINMASK_MODEL = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "brainmask.safetensors"
#: Skull-stripped input: at most this many mL differ from the background value. BraTS-style phantoms reach
#: 2.2 L (brains scaled up, tumours included); a whole head with skull and scalp has 3.5 L or more even where
#: the scanner zeroed the air, and with noise in the air the whole field of view differs (7-11 L in the
#: engine's clinical cases).
STRIPPED_MAX_ML = 3000.0
#: A mask smaller than this finds no brain at all: the image is not a head (an error, not a doubt).
NO_BRAIN_ML = 300.0


@dataclass
class FrontEnd:
    """What the front end did to one study (everything on the reference grid)."""

    kind: str  # "preprocessed" or "raw"
    images: Dict[str, sitk.Image]  # the contrasts to use: on the reference grid for raw studies
    brain_mask: Optional[sitk.Image] = None  # uint8 on the reference grid (raw studies)
    registrations: Dict[str, register.Registration] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    doubts: List[str] = field(default_factory=list)  # reasons for low confidence
    region: Optional[sitk.Image] = None  # where the network looks: both masks grown by the card's margin
    margin_mm: float = 0.0  # that margin
    network_mask: Optional[sitk.Image] = None  # the reference's own mask: what the network's z-scores are over
    tumour_margin_mm: float = 0.0  # how far the segmented tumour is grown into the mask given out
    #: The brain share the mask given out was made from (its 2 mm box grid, the share) and the settings it was
    #: made with, so that an evaluation can remake it at other thresholds.
    share: Optional[Tuple[sitk.Image, np.ndarray]] = None
    mask_settings: Optional[brainmask.MaskSettings] = None

    def with_tumour(self, label) -> "FrontEnd":
        """The same, its brain mask holding the segmented tumour (label: array on the reference grid), grown by
        the card's tumour margin inside the region (brainmask.with_tumour)."""
        if self.brain_mask is None:
            return self
        return replace(self, brain_mask=brainmask.with_tumour(self.brain_mask, label, self.region,
                                                              self.tumour_margin_mm))

    def outside_brain(self, label: np.ndarray) -> np.ndarray:
        """Tumour voxels (label > 0, on the reference grid) in parts that are not in the brain mask given out with
        that tumour (`with_tumour`, which keeps the part connected to the brain): none for preprocessed studies.
        An intracranial tumour, extra-axial ones included, touches the brain; a part that does not, even grown by
        the tumour margin, lies in the face, the neck or the scalp (734016, a tumour-free study: 17.5 mL segmented
        in the nasal cavity and the orbits where the field of view cut the face)."""
        tumour = np.asarray(label) > 0
        if self.brain_mask is None or not tumour.any():
            return np.zeros(tumour.shape, bool)
        given = sitk.GetArrayFromImage(self.with_tumour(label).brain_mask) > 0  # a copy: the image is a temporary
        parts = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(tumour.astype(np.uint8)), True))
        return tumour & ~np.isin(parts, np.unique(parts[given]))

    def report(self) -> dict:
        """For report.json."""
        out = {"input_kind": self.kind}
        if self.brain_mask is not None:
            out["brain_mask_ml"] = round(brainmask.mask_volume_ml(self.brain_mask), 1)
            out["registration"] = {name: r.as_dict() for name, r in self.registrations.items()}
            out["left_out"] = sorted(n for n, r in self.registrations.items() if not r.accepted)
        return out


def looks_skull_stripped(image: sitk.Image) -> bool:
    """Skull-stripped: at most STRIPPED_MAX_ML differ from the background value (preprocess's own rule for
    the brain of a skull-stripped image)."""
    inside = preprocess.differs_from_background(sitk.GetArrayViewFromImage(image))
    return float(np.count_nonzero(inside)) * float(np.prod(image.GetSpacing())) / 1000.0 <= STRIPPED_MAX_ML


def study_kind(images: Dict[str, sitk.Image], labels: Dict[str, str]) -> str:
    """'preprocessed' when every given contrast is skull-stripped, 'raw' when none is; InputError for a mix."""
    stripped = {name: looks_skull_stripped(image) for name, image in images.items()}
    if all(stripped.values()):
        return "preprocessed"
    if not any(stripped.values()):
        return "raw"
    yes = ", ".join(labels[n] for n, s in stripped.items() if s)
    no = ", ".join(labels[n] for n, s in stripped.items() if not s)
    raise InputError(f"{yes} skull-stripped but {no} whole-head: give every contrast skull-stripped and "
                     "co-registered (BraTS-style), or every contrast as acquired.")


def trained_on_raw(card: Optional[dict]) -> bool:
    """Whether a model's card records whole-head (clinical) cases in its training (`train --clinical`)."""
    return bool(((card or {}).get("data_recipe") or {}).get("clinical"))


def model_doubts(card: Optional[dict], kind: str) -> List[str]:
    """A raw study is doubted unless the model was trained on raw studies: otherwise its segmentation of one
    is not validated (the bundled darefuse-v7's is measured poor: README, "Supported inputs")."""
    if kind != "raw" or trained_on_raw(card):
        return []
    name = (card or {}).get("version") or (card or {}).get("name") or "the model"  # a version names one model
    return [f"{name} was trained on preprocessed (BraTS-style) studies only, not on raw whole-head ones: "
            "its segmentation of this raw study is not validated; check it, or give the contrasts "
            "skull-stripped and co-registered"]


def load_brainmask_model(path: Optional[Path] = None):
    """The brain-mask network from the model store (SHA256 checked against its card)."""
    from ..network.store import load_model

    return load_model(path or BRAINMASK_MODEL)


def checked_mask(mask: sitk.Image, reference: sitk.Image, label: str) -> Tuple[sitk.Image, List[str]]:
    """A brain mask and the doubts about it; InputError when no brain is found at all."""
    volume = brainmask.mask_volume_ml(mask)
    if volume < NO_BRAIN_ML:
        raise InputError(f"{label}: no brain found in this image (brain mask {volume:.0f} mL); is it a head MR "
                         "image? A skull-stripped study must have one background value outside the brain.")
    return mask, brainmask.mask_problems(mask, label, reference)


def brain_mask_stage(reference: sitk.Image, label: str, model) -> Tuple[sitk.Image, List[str], Tuple]:
    """The reference's brain mask, the doubts about it and its share (grid, share) for `fused_mask_stage`."""
    grid, share = brainmask.brain_share(model, reference)
    mask, doubts = checked_mask(brainmask.refine(share, grid, reference, brainmask.MaskSettings.of(model)),
                                reference, label)
    return mask, doubts, (grid, share)


def fused_share(images: Dict[str, sitk.Image], reference_share: Tuple,
                registrations: Dict[str, register.Registration], model) -> np.ndarray:
    """The mean brain share (on the reference's share grid) of the reference and every contrast whose
    registration is believed (brainmask.fused_share)."""
    others = []
    for name, result in registrations.items():
        if result.accepted:
            grid, share = brainmask.brain_share(model, images[name])
            others.append((grid, share, images[name], result.transform))
    return brainmask.fused_share(*reference_share, others)


def fused_mask_stage(images: Dict[str, sitk.Image], reference_name: str, reference_share: Tuple,
                     registrations: Dict[str, register.Registration], labels: Dict[str, str], model
                     ) -> Tuple[sitk.Image, List[str], np.ndarray]:
    """The brain mask from every registered contrast's share (`fused_share`), the doubts about it, which
    name the contrasts it was made from, and that share."""
    reference = images[reference_name]
    share = fused_share(images, reference_share, registrations, model)
    mask = brainmask.refine(share, reference_share[0], reference, brainmask.MaskSettings.of(model))
    used = [n for n in CONTRASTS if n == reference_name or n in registrations and registrations[n].accepted]
    return (*checked_mask(mask, reference, ", ".join(labels[n] for n in used)), share)


def registration_stage(images: Dict[str, sitk.Image], reference_name: str, mask: sitk.Image,
                       labels: Dict[str, str], cancel: Optional[CancelFn] = None,
                       progress: Optional[Callable[[float, str], None]] = None
                       ) -> Tuple[Dict[str, sitk.Image], Dict[str, register.Registration], List[str]]:
    """Every other contrast registered to the reference and resampled onto its grid; failures left out."""
    reference = images[reference_name]
    region = register.brain_region(mask)
    on_reference = {reference_name: sitk.Cast(reference, sitk.sitkFloat32)}
    results: Dict[str, register.Registration] = {}
    warnings: List[str] = []
    others = [n for n in CONTRASTS if n in images and n != reference_name]
    for i, name in enumerate(others):
        check_cancel(cancel)
        if progress is not None:
            progress(i / max(len(others), 1), f"registering {labels[name]} to {labels[reference_name]}")
        result = register.register(reference, images[name], region, contrast=name, cancel=cancel)
        results[name] = result
        if result.accepted:
            on_reference[name] = register.apply(images[name], reference, result.transform)
        else:
            warnings.append(f"{labels[name]} left out: its registration to {labels[reference_name]} (the reference) "
                            f"is not believed ({'; '.join(result.problems)}).")
    return on_reference, results, warnings


def run_front_end(images: Dict[str, sitk.Image], labels: Optional[Dict[str, str]] = None, model=None,
                  stage=None, cancel: Optional[CancelFn] = None, kind: Optional[str] = None) -> FrontEnd:
    """Detect the kind of study (unless `kind` says it) and, for a raw one, mask and register it (see the
    module docstring). stage(name, message): a context manager that times and reports a stage (run.py's);
    None runs untimed."""
    from contextlib import nullcontext

    labels = {name: (labels or {}).get(name, contrast_name(name)) for name in images}
    kind = kind or study_kind(images, labels)
    if kind == "preprocessed":
        return FrontEnd(kind, dict(images))
    stage = stage or (lambda name, message: nullcontext())
    reference_name = reference_contrast(images)
    with stage("brain_mask", f"brain mask of {labels[reference_name]}"):
        model = model if model is not None else load_brainmask_model()
        mask, doubts, share = brain_mask_stage(images[reference_name], labels[reference_name], model)
    with stage("registration", "co-registering the contrasts") as report:
        on_reference, results, warnings = registration_stage(images, reference_name, mask, labels, cancel, report)
    settings = brainmask.MaskSettings.of(model)
    fused, given_share = mask, share
    with stage("brain_mask_fusion", "brain mask from every registered contrast"):
        if settings.fuse and any(r.accepted for r in results.values()):  # the card's choice (tune-brainmask --fuse)
            fused, fused_doubts, fused_array = fused_mask_stage(images, reference_name, share, results, labels, model)
            doubts += fused_doubts
            given_share = (share[0], fused_array)
        # The network looks around both masks: where the fused mask reaches beyond the reference's (a surface
        # meningioma the reference's network cut), a tumour there is still segmented.
        reach = mask if fused is mask else sitk.Or(sitk.Cast(mask, sitk.sitkUInt8), sitk.Cast(fused, sitk.sitkUInt8))
        region = brainmask.grown(reach, settings.margin_mm)
        given = fused
        if settings.given_threshold is not None:
            given = brainmask.refine(given_share[1], given_share[0], images[reference_name], settings.given_out())
    return FrontEnd(kind, on_reference, given, results, warnings, doubts, region, settings.margin_mm, mask,
                    settings.given_margin_mm, given_share, settings)


def prepare_study(images: Dict[str, Optional[sitk.Image]], spacing_mm: float = 2.0, model=None,
                  cancel: Optional[CancelFn] = None) -> Tuple[preprocess.Prepared, FrontEnd]:
    """What the pipeline feeds the network for this study (raw or preprocessed), and the front end's report:
    the same path as `darefuse segment` (each image as its checks pass it on, the front end, prepare), for
    training and evaluating on the front end's output."""
    given = {name: check_image(contrast_name(name), image)[0] for name, image in images.items() if image is not None}
    front = run_front_end(given, model=model, cancel=cancel)
    prep = preprocess.prepare(front.images, spacing_mm=spacing_mm, brain_mask=front.network_mask, region=front.region)
    return prep, front
