"""The whole pipeline on SimpleITK images: check, pre-process, one network pass, outputs on the reference grid.

One forward pass (sliding windows) gives the segmentation, the uncertainty, the class and the lesion-removal
prior; when the brain fits one window (any adult head at 2 mm) it gives Grad-CAM++ too, which then costs one
backward pass through the class head only (see inference.py). Every output is mapped back onto the
reference grid and affine with preprocess.to_reference.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..constants import CLASSES, CONTRASTS, OUTPUTS, contrast_name, display_contrast
from ..progress import CancelFn, ProgressFn, check_cancel
from . import frontend, preprocess, unshown
from .inference import WindowPlan, WindowPredictor, infer, resolve_device
from .postprocess import (ENHANCING_CLASSES, OEDEMA_SUGGESTED_CLASS, PostprocessConfig, class_in_doubt,
                          config_for_card, gate_closes, oedema_in_doubt, postprocess, removed_parts, reported_class,
                          shown_enhancement_ml, volumes_ml)
from .review import ReviewConfig, ReviewResult, find_regions, index_to_ras, ras_places, top_two_margin
from .review import config_for_card as review_config_for_card
from .validate import brain_plausibility, check_images, check_outputs

#: Share of the run's progress bar per stage: measured stage times of `darefuse demo` (BraTS-size sample
#: case, one window, 2 CPU threads), rounded; "review" 2.1 s of a 43.9 s demo run on a busy 2-core machine. The
#: front end's two stages (whole-head input only) in the same units, from their times against preprocess's in one
#: clinical run (benchmarks/bench_segment.py --clinical, case DareFuse-005001: brain mask 2.9 s, registration
#: 26.6 s, preprocess 3.9 s); the brain mask from every contrast against registration in a later run of the
#: same case (2.0 s against 4.5 s).
STAGE_WEIGHTS = {
    "validate": 0.01, "brain_mask": 0.29, "registration": 2.6, "brain_mask_fusion": 1.2, "preprocess": 0.38,
    "network": 0.22, "segmentation": 0.12, "uncertainty": 0.02, "review": 0.04, "prior": 0.10, "gradcam": 0.15,
}


@dataclass
class PipelineResult:
    """Everything a run produces; images are on the reference grid and affine (sitk, LPS)."""

    label: Optional[sitk.Image]  # uint8: 0 background, 1 NETC, 2 SNFH, 3 ET
    uncertainty: Optional[sitk.Image]  # float32 in [0, 1], 0 outside the brain
    difference_prior: Optional[sitk.Image]  # float32 >= 0: RMS over given contrasts of image - reconstruction
    tumour_free: Dict[str, sitk.Image]  # contrast -> float32 reconstruction in the input's units
    gradcam: Optional[sitk.Image]  # float32 in [0, 1], for gradcam_class, 0 outside the head
    predicted_class: str  # the class head's, or no_tumour by the class rule (postprocess.reported_class)
    class_probabilities: Dict[str, float]
    volumes_ml: Dict[str, float]  # NETC, SNFH, ET, WT, TC
    warnings: List[str]
    timings: Dict[str, float]  # seconds per stage, plus "total" and "first_window_s" (process start to window 1)
    inputs: Dict[str, dict]  # contrast -> what was given (geometry, type, resampled or not); "reference"
    low_confidence: bool = False  # implausible input, a doubted front end, or a kind of study the model never saw
    display_image: Optional[sitk.Image] = None  # the contrast shown beneath overlays, on the reference grid
    settings: dict = field(default_factory=dict)  # spacing, windows, device, post-processing thresholds
    gradcam_class: str = ""  # the class the Grad-CAM++ map explains: the class head's decision
    brain_mask: Optional[sitk.Image] = None  # uint8 on the reference grid: the front end's with the tumour (whole head)
    registered: Dict[str, sitk.Image] = field(default_factory=dict)  # co-registered contrasts (whole-head input)
    front_end: dict = field(default_factory=dict)  # input kind, brain-mask volume, registrations (report.json)
    review: Optional[ReviewResult] = None  # ranked places to check (with the segmentation layer)
    margin: Optional[np.ndarray] = None  # top-two label probability margin (z, y, x), when keep_margin
    tumour_probability: Optional[np.ndarray] = None  # 1 - p(background) (z, y, x), 0 outside, when keep_margin
    unshown: List[dict] = field(default_factory=list)  # likely tumour the map does not show (pipeline/unshown.py)

    @property
    def reference(self) -> str:
        return self.inputs["reference"]


class _Stages:
    """Times the stages, maps each stage's own 0..1 progress onto the run's, checks cancel between stages."""

    def __init__(self, names: Iterable[str], progress: Optional[ProgressFn], cancel: Optional[CancelFn]):
        self.names = list(names)
        self._share()
        self.progress, self.cancel = progress, cancel
        self.timings: Dict[str, float] = {}
        self.done = 0.0

    def _share(self) -> None:
        total = sum(STAGE_WEIGHTS[n] for n in self.names)
        self.share = {n: STAGE_WEIGHTS[n] / total for n in self.names}

    def add(self, names: Iterable[str]) -> None:
        """Stages known only once the input is seen (the front end's, for whole-head studies)."""
        self.names += list(names)
        self._share()

    def check_cancel(self) -> None:
        check_cancel(self.cancel)

    def report(self, name: str) -> Optional[ProgressFn]:
        if self.progress is None:
            return None
        start, share = self.done, self.share[name]
        return lambda fraction, message: self.progress(min(start + share * fraction, 1.0), message)

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[Optional[ProgressFn]]:
        self.check_cancel()
        if self.progress is not None:
            self.progress(self.done, message)
        start = time.perf_counter()
        yield self.report(name)
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.done += self.share[name]


def _labels(images: Dict[str, sitk.Image], labels: Optional[Dict[str, str]]) -> Dict[str, str]:
    return {name: (labels or {}).get(name, contrast_name(name)) for name in images}


def _describe_inputs(images: Dict[str, sitk.Image], reference: str) -> Dict[str, dict]:
    ref = images[reference]
    described: Dict[str, dict] = {"reference": reference}
    for name in CONTRASTS:
        image = images.get(name)
        if image is None:
            described[name] = {"given": False}
            continue
        same_grid = preprocess.grids_match(image, ref)
        described[name] = {
            "given": True,
            "size": list(image.GetSize()),
            "spacing_mm": [round(s, 5) for s in image.GetSpacing()],
            "pixel_type": image.GetPixelIDTypeAsString(),
            "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()),
            "resampled_to_reference": not same_grid,
        }
    return described


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _argmax(probabilities: List[np.ndarray]) -> np.ndarray:
    """Index of the largest of the given same-shape arrays, as uint8, channel by channel: 4x faster than
    np.argmax(axis=0) on a (4, Z, Y, X) stack, whose reduction runs across the slowest axis."""
    label = np.zeros(probabilities[0].shape, np.uint8)
    best = probabilities[0].copy()
    for channel in range(1, len(probabilities)):
        better = probabilities[channel] > best
        label[better] = channel
        np.copyto(best, probabilities[channel], where=better)
    return label


@dataclass
class RunSettings:
    """What a run computes and with which post-processing (from the caller's arguments and the model's card)."""

    wanted: frozenset  # the optional layers asked for (OUTPUTS)
    torch_device: torch.device
    postprocess: PostprocessConfig
    postprocess_source: str  # where the thresholds come from, for the report and the warnings
    review: ReviewConfig
    review_source: str
    unshown: unshown.UnshownConfig = field(default_factory=unshown.UnshownConfig)
    unshown_source: str = "defaults (no alarm)"


@dataclass
class NetworkPass:
    """The network's one pass over the 2 mm array (stitched outputs) and what it measured."""

    out: Dict[str, torch.Tensor]  # the model's outputs, (1, C, Z, Y, X) on the 2 mm grid
    plan: WindowPlan
    predictor: WindowPredictor
    class_probabilities: np.ndarray  # float64 (4,), the class head's
    shared_gradcam: Optional[torch.Tensor]  # Grad-CAM++ computed within the pass (one window), else None

    @property
    def head_index(self) -> int:
        """The class head's own decision, which Grad-CAM++ explains."""
        return int(np.argmax(self.class_probabilities))


@dataclass
class Segmentation:
    """The post-processed label and what it says about the case."""

    label: Optional[sitk.Image]  # on the reference grid; None when the segmentation layer is not wanted
    volumes_ml: Dict[str, float]
    predicted_index: int  # the reported class (postprocess.reported_class)
    label_array: np.ndarray  # the post-processed label (z, y, x)
    margin: np.ndarray  # float32 (z, y, x): the two most probable labels' probability difference, 1 outside
    cleared_ml: float = 0.0  # tumour the class gate cleared that post-processing had kept
    tumour_probability: Optional[np.ndarray] = None  # float32 (z, y, x): 1 - p(background), 0 outside
    unshown: List[unshown.UnshownPart] = field(default_factory=list)  # likely tumour not in `label_array`


@dataclass
class Grid:
    """Where the case is: the brain on the 2 mm grid and on the reference grid, and a voxel's volume."""

    inside_low: np.ndarray  # bool (Z, Y, X) on the 2 mm grid
    inside: np.ndarray  # bool on the reference grid
    voxel_ml: float  # one reference voxel, mL

    @classmethod
    def of(cls, prep: preprocess.Prepared) -> "Grid":
        return cls(prep.foreground.astype(bool), sitk.GetArrayViewFromImage(prep.foreground_reference).astype(bool),
                   float(np.prod(prep.reference.GetSpacing())) / 1000.0)


def run(images: Dict[str, Optional[sitk.Image]], model: torch.nn.Module, outputs: Iterable[str] = OUTPUTS,
        device: str = "cpu", progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
        spacing_mm: float = 2.0, postprocess_config: Optional[PostprocessConfig] = None,
        plan: Optional[WindowPlan] = None, labels: Optional[Dict[str, str]] = None,
        class_gate: bool = True, brainmask_model: Optional[torch.nn.Module] = None,
        review_config: Optional[ReviewConfig] = None, keep_margin: bool = False,
        front_end: Optional[frontend.FrontEnd] = None) -> PipelineResult:
    """Segment, measure and explain one case.

    images: contrast name -> image or None (any non-empty subset of constants.CONTRASTS, any grids).
    model: a DareFuseNet (or any module honouring its output dict and helpers).
    outputs: which optional layers to compute, among OUTPUTS. The class and volumes are always computed.
    progress(fraction, message), cancel() -> bool: cancel raises errors.Cancelled between stages and between
    sliding windows. labels: how to name each input in messages (e.g. a file name); defaults to "T1", ...
    postprocess_config: None uses the thresholds in the model's card (tuned on validation data), else defaults.
    class_gate: False keeps the segmentation even when the class gate of those settings would clear it.
    brainmask_model: the brain-mask network for whole-head studies (default: the bundled one, loaded when needed).
    review_config: the review regions' settings; None takes the card's (pipeline/review.py). keep_margin: also
    return the top-two margin and the tumour probability maps (for `darefuse evaluate`'s own review scores).
    front_end: the front end already run on these very images (`darefuse evaluate` scores it, then segments with
    it): not run again.
    Raises InputError for unusable inputs (validate.py lists them), Cancelled when cancelled.

    The stages, each a function from one value to the next: settings -> checked images -> (whole-head studies:
    brain mask -> registered contrasts, pipeline/frontend.py) -> Prepared -> NetworkPass -> Segmentation, then
    the optional layers (uncertainty, review regions, prior, Grad-CAM++) -> PipelineResult.
    """
    settings = run_settings(model, outputs, device, postprocess_config, class_gate, review_config)
    stage_names = ["validate", "preprocess", "network", "segmentation"]
    stage_names += [n for n in ("uncertainty", "prior", "gradcam") if n in settings.wanted]
    stage_names += ["review"] if "segmentation" in settings.wanted else []
    stages = _Stages(stage_names, progress, cancel)
    started = time.perf_counter()

    with stages.stage("validate", "checking the inputs"):
        checked, warnings = check_images(images, labels)
        kind = frontend.study_kind(checked, _labels(checked, labels))
    front = front_end_stages(stages, checked, labels, kind, brainmask_model, cancel, front_end)
    warnings += front.warnings
    with stages.stage("preprocess", "resampling and normalising"):
        prep = preprocess.prepare(front.images, spacing_mm=spacing_mm, brain_mask=front.network_mask,
                                  region=front.region)
        inputs = _describe_inputs(checked, prep.reference_name)
        del checked  # prep.resampled holds what is needed from here on
    model = model.to(settings.torch_device).eval()
    network = network_stage(stages, model, prep, device, plan, settings, cancel)
    grid = Grid.of(prep)
    with stages.stage("segmentation", "segmentation and post-processing"):
        segmentation = segmentation_stage(model, network, prep, grid, settings, warnings, front, keep_margin)
        front = front.with_tumour(segmentation.label_array)
    layers = _Layers()
    mean_uncertainty = layers.uncertainty_stage(stages, model, network, prep, grid, settings)
    review = review_stage(stages, model, network, prep, grid, settings, segmentation, layers.uncertainty)
    layers.prior_stage(stages, network, prep, grid, settings)
    network.out = {}  # the stitched outputs are no longer needed: free them before Grad-CAM++
    layers.gradcam_stage(stages, model, network, prep, grid, settings)
    stages.check_cancel()

    doubts = low_confidence_warnings(grid, prep, mean_uncertainty, front, getattr(model, "card", None),
                                     result_doubts(segmentation, network, settings, prep.reference))
    warnings += doubts
    display = display_contrast(prep.resampled)
    stages.timings["total"] = round(time.perf_counter() - started, 3)
    if progress is not None:
        progress(1.0, "done")
    return PipelineResult(
        label=segmentation.label, uncertainty=layers.uncertainty, difference_prior=layers.prior,
        tumour_free=layers.tumour_free, gradcam=layers.gradcam,
        predicted_class=CLASSES[segmentation.predicted_index], gradcam_class=CLASSES[network.head_index],
        class_probabilities={c: round(float(p), 6) for c, p in zip(CLASSES, network.class_probabilities)},
        volumes_ml={k: round(v, 4) for k, v in segmentation.volumes_ml.items()},
        warnings=warnings, timings=stages.timings, inputs=inputs, low_confidence=bool(doubts),
        display_image=prep.resampled[display],
        settings=_settings_report(settings, spacing_mm, network, display, mean_uncertainty),
        brain_mask=front.brain_mask, front_end=front.report(),
        registered={n: prep.resampled[n] for n, r in front.registrations.items() if r.accepted},
        review=review, margin=segmentation.margin if keep_margin else None,
        tumour_probability=segmentation.tumour_probability if keep_margin else None,
        unshown=[part.as_dict(prep.reference) for part in segmentation.unshown[:unshown.REPORTED]],
    )


def front_end_stages(stages: _Stages, checked: Dict[str, sitk.Image], labels: Optional[Dict[str, str]], kind: str,
                     brainmask_model, cancel: Optional[CancelFn], given: Optional[frontend.FrontEnd] = None
                     ) -> frontend.FrontEnd:
    """The front end (pipeline/frontend.py), its stages timed and reported; `given`, one already run on these
    images, is taken as it is."""
    if given is not None:
        if given.kind != kind:
            raise ValueError(f"the front end given was run on a {given.kind} study, these images are a {kind} one")
        return given
    if kind == "raw":
        stages.add(["brain_mask", "registration", "brain_mask_fusion"])
    return frontend.run_front_end(checked, _labels(checked, labels), brainmask_model, stage=stages.stage,
                                  cancel=cancel, kind=kind)


def low_confidence_warnings(grid: Grid, prep: preprocess.Prepared, mean_uncertainty: float, front: frontend.FrontEnd,
                            card: Optional[dict], model_doubts: Sequence[str] = ()) -> List[str]:
    """Why the result is in doubt, a warning each: an image that may not be a brain MR image, a whole-head front
    end in doubt, a raw study given to a model never trained on one, the model's own outputs contradicting each
    other (`class_disagreement`). Empty when none."""
    warnings = [f"Low confidence: {doubt}." for doubt in model_doubts]
    doubts = plausibility(grid, prep, mean_uncertainty)
    if doubts:
        warnings.append("Low confidence: this may not be a brain MR image (" + "; ".join(doubts) + ").")
    front_doubts = front.doubts + [f"{contrast_name(n)} was left out" for n, r in front.registrations.items()
                                   if not r.accepted]
    if front_doubts:
        warnings.append("Low confidence: the whole-head front end is in doubt (" + "; ".join(front_doubts) + ").")
    return warnings + [f"Low confidence: {doubt}." for doubt in frontend.model_doubts(card, front.kind)]


def result_doubts(segmentation: Segmentation, network: NetworkPass, settings: RunSettings,
                  reference: sitk.Image) -> List[str]:
    """The model's own outputs in doubt: class and segmentation disagreeing, the class head unsure, a glioma call
    against its map's oedema, and the unshown-tumour alarm."""
    return (class_disagreement(segmentation, network.class_probabilities)
            + enhancement_doubt(segmentation, network, settings.postprocess)
            + class_doubt(network.class_probabilities, settings.postprocess)
            + oedema_doubt(segmentation, settings.postprocess)
            + unshown.alarm(segmentation.unshown, settings.unshown, reference))


def enhancement_doubt(segmentation: Segmentation, network: NetworkPass, config: PostprocessConfig) -> List[str]:
    """The enhancement rule acted (postprocess.reported_class): the class head called a class that enhances, the
    map shows no enhancing tumour, and the class is reported as glioma. The two disagreed, so the run is in doubt."""
    head = CLASSES[network.head_index]
    if CLASSES[segmentation.predicted_index] != "glioma" or head not in ENHANCING_CLASSES:
        return []
    return [f"the class head gives {head} ({network.class_probabilities[network.head_index]:.0%}), but the map "
            f"shows {segmentation.volumes_ml['ET']:.1f} mL of enhancing tumour, which meningiomas and metastases "
            f"show; by the enhancement rule (non_enhancing_glioma_ml {config.non_enhancing_glioma_ml} mL) the class "
            "is reported as glioma, the class that presents without enhancement; review the class"]


def class_doubt(class_probabilities: np.ndarray, config: PostprocessConfig) -> List[str]:
    """The class head unsure (postprocess.class_in_doubt): its two likeliest classes, so the reader sees between
    what; on the development sets most wrong classes were such calls, glioma against metastasis above all."""
    if not class_in_doubt(config, class_probabilities):
        return []
    first, second = np.argsort(class_probabilities)[::-1][:2]
    return [f"the class head is unsure: {CLASSES[first]} {class_probabilities[first]:.0%}, {CLASSES[second]} "
            f"{class_probabilities[second]:.0%} (below {config.class_doubt_below:.0%}, the model card's class "
            "doubt); review the class"]


def oedema_doubt(segmentation: Segmentation, config: PostprocessConfig) -> List[str]:
    """A glioma call whose map shows oedema out of proportion to its core (postprocess.oedema_in_doubt): as around
    metastases, which the class head confused with gliomas at up to 1.00 on the development sets."""
    reported, volumes = CLASSES[segmentation.predicted_index], segmentation.volumes_ml
    if not oedema_in_doubt(config, reported, volumes):
        return []
    return [f"{reported} is reported, but the map shows {volumes['SNFH']:.1f} mL of oedema around "
            f"{volumes['TC']:.1f} mL of tumour core (more than {config.oedema_doubt_above:g} times, the model card's "
            f"oedema doubt), out of proportion as around a {OEDEMA_SUGGESTED_CLASS}; review the class"]


def class_disagreement(segmentation: Segmentation, class_probabilities: np.ndarray) -> List[str]:
    """The class head says no tumour while the segmentation keeps tumour, shown or cleared by the class gate:
    the two disagree, and one of them is wrong (on raw engine studies both happen: a meningioma called
    tumour-free, a tumour-free brain with a false part)."""
    no_tumour = float(class_probabilities[CLASSES.index("no_tumour")])
    if segmentation.cleared_ml > 0.0:
        return [f"the class head gives no tumour ({no_tumour:.0%}) and its gate cleared {segmentation.cleared_ml:.1f} "
                "mL the segmentation kept: one of the two is wrong; to see that tumour, run again without the "
                "class gate (--no-class-gate; in Slicer, untick Advanced > Class gate)"]
    wt_ml = segmentation.volumes_ml.get("WT", 0.0)
    if CLASSES[segmentation.predicted_index] != "no_tumour" or wt_ml <= 0.0:
        return []
    return [f"the class head gives no tumour ({no_tumour:.0%}) while {wt_ml:.1f} mL are segmented as tumour: "
            "one of the two is wrong; review the segments and the class"]


def run_settings(model: torch.nn.Module, outputs: Iterable[str], device: str,
                 postprocess_config: Optional[PostprocessConfig], class_gate: bool,
                 review_config: Optional[ReviewConfig] = None) -> RunSettings:
    """The layers asked for, the device, the post-processing thresholds and the review settings (the card's
    unless given)."""
    wanted = check_outputs(outputs)
    torch_device = resolve_device(device)
    if postprocess_config is None:
        postprocess_config, postprocess_source = config_for_card(getattr(model, "card", None))
    else:
        postprocess_source = "given by the caller"
    if not class_gate and postprocess_config.no_tumour_gate is not None:
        postprocess_config = replace(postprocess_config, no_tumour_gate=None)
        postprocess_source += "; class gate turned off"
    if review_config is None:
        review_config, review_source = review_config_for_card(getattr(model, "card", None))
    else:
        review_source = "given by the caller"
    return RunSettings(wanted, torch_device, postprocess_config, postprocess_source, review_config, review_source,
                       *unshown.config_for_card(getattr(model, "card", None)))


def network_stage(stages: _Stages, model: torch.nn.Module, prep: preprocess.Prepared, device: str,
                  plan: Optional[WindowPlan], settings: RunSettings, cancel: Optional[CancelFn]) -> NetworkPass:
    """The sliding-window pass (with Grad-CAM++ inside it when the brain fits one window)."""
    with stages.stage("network", "network") as report:
        out, plan, predictor = infer(model, prep.array, prep.present, device, plan=plan,
                                     gradcam="gradcam" in settings.wanted, progress=report, cancel=cancel)
        class_probabilities = model.class_probabilities(out)[0].double().numpy()
    # Grad-CAM++ computed within the network's pass is booked as Grad-CAM++, not as network time.
    stages.timings["network"] = round(stages.timings["network"] - predictor.gradcam_seconds, 3)
    if predictor.first_window_s is not None:  # start-up: process start to the first window (not a stage)
        stages.timings["first_window_s"] = round(predictor.first_window_s, 3)
    shared_gradcam = out.pop("gradcam", None)
    return NetworkPass(out, plan, predictor, class_probabilities, shared_gradcam)


def segmentation_stage(model: torch.nn.Module, network: NetworkPass, prep: preprocess.Prepared, grid: Grid,
                       settings: RunSettings, warnings: List[str], front: frontend.FrontEnd,
                       keep_probability: bool = False) -> Segmentation:
    """The label on the reference grid, post-processed (whole-head studies: parts outside the brain removed),
    and the reported class; warnings for what was removed and for the class rules. keep_probability: keep the
    tumour probability map (for `darefuse evaluate`; 4 bytes a voxel on the run's peak otherwise)."""
    config, source = settings.postprocess, settings.postprocess_source
    probabilities = network.class_probabilities
    # Label probabilities are interpolated onto the reference grid before the arg-max, so that the
    # segmentation follows the reference's finer grid rather than the 2 mm blocks. Linear interpolation
    # keeps their sum at 1, so the background is 1 - the rest: three resamplings instead of four.
    tumour = preprocess.to_reference(model.probabilities(network.out)[0, 1:].numpy(), prep)
    tumour_probability = tumour.sum(0)
    label_probabilities = [1.0 - tumour_probability] + list(tumour)
    label = _argmax(label_probabilities)
    margin = top_two_margin(label_probabilities)  # where the review regions look
    del tumour, label_probabilities
    label[~grid.inside] = 0
    margin[~grid.inside] = 1.0
    tumour_probability[~grid.inside] = 0.0
    no_tumour = float(probabilities[CLASSES.index("no_tumour")])
    processed = postprocess(label, grid.voxel_ml, replace(config, no_tumour_gate=None))
    # Named even when the class gate then clears the map: a small part the segmentation found is where to look.
    warnings.extend(removed_parts_warning(label, processed, grid.voxel_ml, prep.reference, config, source))
    outside = front.outside_brain(processed)
    if outside.any():
        warnings.extend(outside_brain_warning(outside, grid.voxel_ml, prep.reference))
        processed[outside] = 0
    cleared_ml = 0.0
    if gate_closes(config, no_tumour):
        cleared_ml = float(np.count_nonzero(processed)) * grid.voxel_ml
        cleared = (f"{cleared_ml:.1f} mL that post-processing kept were cleared" if cleared_ml > 0.0
                   else "post-processing had kept none")
        warnings.append(
            f"No tumour segments: the class head gives no tumour a probability of {no_tumour:.2f}, at least "
            f"the class gate's {config.no_tumour_gate} ({source}); {cleared}."
        )
        processed = np.zeros_like(processed)
    label = processed
    volumes = volumes_ml(label, grid.voxel_ml)
    predicted_index = reported_class(config, probabilities, bool(label.any()),
                                     shown_enhancement_ml(volumes, prep.given))
    head_index = network.head_index
    # The class rule's change is a warning; the enhancement rule's, a doubt (enhancement_doubt).
    if CLASSES[predicted_index] == "no_tumour" != CLASSES[head_index]:
        warnings.append(
            f"Class no tumour: no tumour is segmented, and the class rule ({source}) then reports "
            f"no tumour; the class head alone gives {CLASSES[head_index]} "
            f"{probabilities[head_index]:.0%}."
        )
    label_image = _image_like(label, prep.reference) if "segmentation" in settings.wanted else None
    parts = unshown.unshown_parts(tumour_probability, label, grid.voxel_ml, settings.unshown.probability)
    return Segmentation(label_image, volumes, predicted_index, label, margin, cleared_ml,
                        tumour_probability if keep_probability else None, parts)


def removed_parts_warning(before: np.ndarray, after: np.ndarray, voxel_ml: float, reference: sitk.Image,
                          config: PostprocessConfig, source: str) -> List[str]:
    """A warning naming where post-processing removed whole-tumour parts (none when it removed none): a
    removed part is not shown, so the reader is told where to look."""
    parts = removed_parts(before, after, voxel_ml, config.fully_connected)
    if not parts:
        return []
    places = ras_places([index_to_ras(reference, zyx) for _, zyx in parts])
    return [f"Post-processing removed {len(parts)} tumour part(s) smaller than {config.wt_min_ml:g} mL "
            f"({sum(ml for ml, _ in parts):.2f} mL in all; {source}): a lesion that small is not shown. "
            f"Largest first, at RAS {places} mm."]


def outside_brain_warning(outside: np.ndarray, voxel_ml: float, reference: sitk.Image) -> List[str]:
    """A warning naming the tumour parts removed because they lie outside the brain (FrontEnd.outside_brain)."""
    parts = removed_parts(outside, np.zeros_like(outside), voxel_ml)
    places = ras_places([index_to_ras(reference, zyx) for _, zyx in parts])
    return [f"Removed {len(parts)} tumour part(s) outside the brain ({sum(ml for ml, _ in parts):.1f} mL in all): "
            f"an intracranial tumour touches the brain, so these lie in the face, the neck or the scalp. Largest "
            f"first, at RAS {places} mm."]


def review_stage(stages: _Stages, model: torch.nn.Module, network: NetworkPass, prep: preprocess.Prepared,
                 grid: Grid, settings: RunSettings, segmentation: Segmentation,
                 uncertainty: Optional[sitk.Image]) -> Optional[ReviewResult]:
    """The ranked review regions of the segmentation (pipeline/review.py), when the segmentation is wanted."""
    if "segmentation" not in settings.wanted:
        return None
    with stages.stage("review", "review regions"):
        if uncertainty is not None:
            values = sitk.GetArrayViewFromImage(uncertainty)
        else:  # the map is not an output of this run, but the regions report their uncertainty
            values = sitk.GetArrayFromImage(preprocess.to_reference(model.uncertainty(network.out)[0, 0].numpy(),
                                                                    prep))
            values = np.where(grid.inside, np.clip(values, 0.0, 1.0), 0.0).astype(np.float32)
        return find_regions(segmentation.label_array, values, segmentation.margin, prep.reference, settings.review)


class _Layers:
    """The optional layers on the reference grid, each made by its own stage (None / empty when not asked)."""

    def __init__(self):
        self.uncertainty: Optional[sitk.Image] = None
        self.prior: Optional[sitk.Image] = None
        self.tumour_free: Dict[str, sitk.Image] = {}
        self.gradcam: Optional[sitk.Image] = None

    def uncertainty_stage(self, stages: _Stages, model: torch.nn.Module, network: NetworkPass,
                          prep: preprocess.Prepared, grid: Grid, settings: RunSettings) -> float:
        """The uncertainty map (when asked for); returns the mean uncertainty in the brain (always)."""
        uncertainty_low = model.uncertainty(network.out)[0, 0].numpy()
        mean_uncertainty = float(uncertainty_low[grid.inside_low].mean())
        if "uncertainty" in settings.wanted:
            with stages.stage("uncertainty", "uncertainty"):
                values = sitk.GetArrayFromImage(preprocess.to_reference(uncertainty_low, prep))
                self.uncertainty = _image_like(
                    np.where(grid.inside, np.clip(values, 0.0, 1.0), 0.0).astype(np.float32), prep.reference)
        return mean_uncertainty

    def prior_stage(self, stages: _Stages, network: NetworkPass, prep: preprocess.Prepared, grid: Grid,
                    settings: RunSettings) -> None:
        """The difference prior (RMS over given contrasts) and one tumour-free reconstruction per contrast."""
        if "prior" not in settings.wanted:
            return
        with stages.stage("prior", "difference prior and tumour-free reconstruction"):
            difference = network.out["difference"][0].numpy()
            n_given = max(float(prep.present.sum()), 1.0)
            rms = np.sqrt((difference ** 2 * prep.present[:, None, None, None]).sum(0) / n_given)
            values = sitk.GetArrayFromImage(preprocess.to_reference(np.where(grid.inside_low, rms, 0.0), prep))
            self.prior = _image_like(np.where(grid.inside, np.maximum(values, 0.0), 0.0).astype(np.float32),
                                     prep.reference)
            reconstruction = network.out["tumour_free"][0].numpy()
            for channel, name in enumerate(CONTRASTS):
                if prep.present[channel]:
                    self.tumour_free[name] = preprocess.to_input_units(reconstruction[channel], prep, name)

    def gradcam_stage(self, stages: _Stages, model: torch.nn.Module, network: NetworkPass,
                      prep: preprocess.Prepared, grid: Grid, settings: RunSettings) -> None:
        """Grad-CAM++ for the class head's class: from the network's pass, or a pass of its own."""
        if "gradcam" not in settings.wanted:
            return
        head_index = network.head_index
        with stages.stage("gradcam", f"Grad-CAM++ for {CLASSES[head_index]}"):
            if network.shared_gradcam is not None:
                heat = network.shared_gradcam[0, 0].numpy()
            else:  # several windows: a pass over the whole array for the class head's class
                from ..network.gradcam import gradcam_pp  # imports pytorch-grad-cam: only when asked for

                heat = gradcam_pp(model, torch.from_numpy(prep.array), torch.from_numpy(prep.present),
                                  head_index)
            values = sitk.GetArrayFromImage(preprocess.to_reference(heat, prep))
            # Evidence inside the head only: outside it the map is noise that would cover the slice views.
            self.gradcam = _image_like(np.where(grid.inside, np.clip(values, 0.0, 1.0), 0.0).astype(np.float32),
                                       prep.reference)
        stages.timings["gradcam"] = round(stages.timings["gradcam"] + network.predictor.gradcam_seconds, 3)


def plausibility(grid: Grid, prep: preprocess.Prepared, mean_uncertainty: float) -> List[str]:
    """Reasons to doubt that the input is a brain MR image (validate.brain_plausibility)."""
    foreground_ml = float(np.count_nonzero(grid.inside)) * grid.voxel_ml
    box = np.argwhere(grid.inside)
    extent_mm = (box.max(0) - box.min(0) + 1)[::-1] * np.array(prep.reference.GetSpacing())
    return brain_plausibility(foreground_ml, extent_mm.tolist(), mean_uncertainty)


def _settings_report(settings: RunSettings, spacing_mm: float, network: NetworkPass, display: str,
                     mean_uncertainty: float) -> dict:
    plan, predictor = network.plan, network.predictor
    return {
        "spacing_mm": spacing_mm,
        "window_roi": list(plan.roi),
        "windows": plan.n_windows,
        "overlap": plan.overlap,
        "network_seconds_per_window": round(float(np.mean(predictor.seconds_per_window)), 3),
        "device": str(settings.torch_device),
        "outputs": sorted(settings.wanted),
        "display_contrast": display,
        "mean_uncertainty_in_brain": round(mean_uncertainty, 4),
        "postprocess": {**settings.postprocess.as_dict(), "source": settings.postprocess_source},
        "review": {**{key: value for key, value in settings.review.as_dict().items()
                      if not key.startswith("calibration")}, "source": settings.review_source},
        "unshown": {**settings.unshown.as_dict(), "source": settings.unshown_source},
    }
