"""DareFuseLogic: the module's work without a GUI, on the input nodes' own MRML scene.

A run has three steps; the scene is touched only by the first and the last, on the caller's thread:

1. prepare(...)  validate the input nodes, copy them to SimpleITK images, take their names (scene read only);
2. compute       the pipeline, in the inference process (runner.py, workerpool.py -> worker.py: torch is never imported into
                 the process that holds the scene) or, for in_process=True, here (compute(...));
3. commit(...)   build every output node outside the scene, then add them all, replace this module's earlier
                 unedited outputs for the same reference input, set up the display; roll back on any failure.

start(...) does 1 and hands 2 to the inference process; it returns a run that is polled (fraction, stage,
time_left, done), cancelled (cancel()) and finished (finish(): step 3). process(...) does all three and waits.
A cancelled or failed run leaves the scene exactly as it was.
"""
from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import SimpleITK as sitk

import slicer

from .constants import CONTRAST_NAMES, CONTRASTS, OUTPUTS, class_text, display_contrast, reference_contrast
from .errors import InputError
from .inputs import check_input_node, node_geometry
from .pipeline import validate
from .pipeline.frontend import study_kind
from .progress import CancelFn, ProgressFn, check_cancel, format_time_left, scaled  # noqa: F401 (re-exported)
from .runner import LocalRun, Run
from .scene import display, nodes, segmentation, volumes
from .scene import review as scene_review
from .workerpool import POOL, WorkerPool

MODULE_DIR = Path(__file__).resolve().parents[1]
MODELS_DIR = MODULE_DIR / "Resources" / "Models"
#: The bundled model's file name in Resources/Models (its card is <stem>.card.json beside it).
BUNDLED_MODEL_NAME = "darefuse.safetensors"
#: The bundled model for raw (whole-head) studies, fine-tuned on them; preprocessed studies keep the one above.
BUNDLED_RAW_MODEL_NAME = "darefuse-raw.safetensors"

#: Share of the progress bar for the pipeline; the rest is building and adding the nodes.
PIPELINE_SHARE = 0.95


@dataclass
class PreparedInputs:
    """Validated inputs of one run: nodes and their SimpleITK copies (LPS, own pixel type)."""

    scene: slicer.vtkMRMLScene
    nodes: Dict[str, slicer.vtkMRMLScalarVolumeNode]  # contrast -> node, given contrasts only
    images: Dict[str, sitk.Image]  # contrast -> image
    reference: str  # t1 when given, else the first given of t1ce, t2, flair (as the pipeline decides)
    labels: Dict[str, str] = field(default_factory=dict)  # contrast -> "T1 ('name')", for messages

    @property
    def reference_node(self) -> slicer.vtkMRMLScalarVolumeNode:
        return self.nodes[self.reference]


@dataclass
class ProcessOutputs:
    """What a run added to the scene, and its report (JSON-ready)."""

    nodes: Dict[str, slicer.vtkMRMLNode]  # "segmentation", "uncertainty", "difference_prior", "gradcam",
    #                                      "tumour_free_<contrast>", "review_table", "review_points",
    #                                      "uncertainty_colours" (the uncertainty map's colour table)
    report: Dict[str, Any]
    result: Any = None  # the pipeline's PipelineResult (images on the reference grid), e.g. to write files
    replaced: List[str] = field(default_factory=list)  # names of earlier outputs this run replaced
    kept: List[str] = field(default_factory=list)  # names of earlier outputs kept because a user edited them

    @property
    def segmentation(self) -> Optional[slicer.vtkMRMLSegmentationNode]:
        return self.nodes.get("segmentation")


def bundled_model_path() -> Path:
    return MODELS_DIR / BUNDLED_MODEL_NAME


def model_path_for(images: Mapping[str, sitk.Image], labels: Mapping[str, str], model_path=None):
    """The model a run uses: the one given; else, for a raw (whole-head) study, the bundled raw-study model when
    it is installed; else None (the bundled model). The study's kind is the front end's own rule."""
    raw_model = MODELS_DIR / BUNDLED_RAW_MODEL_NAME
    if model_path is not None or not raw_model.is_file():
        return model_path
    return raw_model if study_kind(dict(images), dict(labels)) == "raw" else None


class DareFuseLogic:
    """Runs DARE-FUSE on volume nodes and adds the results to the nodes' scene.

    By default the pipeline runs in the inference process (workerpool.POOL: one warm worker shared by every logic
    of this process), so this process never imports torch: what the Slicer module, its self-test and scripts
    inside Slicer use. in_process=True runs it here instead: the headless command line does (no GUI to keep
    responsive, no file round trip, no second interpreter; `darefuse batch` keeps its model loaded itself).
    pipeline_run and model_loader (defaults DareFuseSlicerLib.pipeline.run.run and network.store.load_model,
    imported on first use) can be replaced, e.g. by a pre-loaded model or a test pipeline; they are callables of
    this process, so giving either means in_process=True. pool: the workers to use (workerpool.POOL by default).
    """

    def __init__(self, pipeline_run: Optional[Callable] = None, model_loader: Optional[Callable] = None,
                 in_process: bool = False, pool: Optional[WorkerPool] = None):
        self._pipeline_run = pipeline_run
        self._model_loader = model_loader
        self._models: Dict[str, Any] = {}
        self.in_process = bool(in_process or pipeline_run is not None or model_loader is not None)
        self.pool = pool or POOL

    # ----------------------------------------------------------------------------------------------------------
    def process(self, t1=None, t1ce=None, t2=None, flair=None, outputs: Iterable[str] = OUTPUTS,
                device: str = "cpu", progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                model_path=None, class_gate: bool = True) -> ProcessOutputs:
        """Segment, measure and explain the case given by up to four scalar volume nodes of one scene.

        t1, t1ce, t2, flair: vtkMRMLScalarVolumeNode or None; any non-empty subset. Outputs are on the grid of
            the reference input (T1 when given, else the first given of T1ce, T2, FLAIR).
        outputs: which layers to add, among OUTPUTS ("prior" adds the difference prior and one tumour-free
            reconstruction per given contrast). The class prediction and volumes are always in the report.
        device: "cpu" or "cuda" (a CUDA device index such as "cuda:1" also works).
        progress(fraction, message) and cancel() -> bool: called during the run; a cancel raises
            errors.Cancelled and nothing is added.
        model_path: a .safetensors model with its card; the bundled model when None.
        class_gate: False keeps the tumour segments even where the class head says no tumour with at least
            the card's gate probability (which otherwise leaves them empty, with a warning).
        Returns ProcessOutputs (the new nodes and the report). Raises errors.InputError naming the input at fault,
        errors.Cancelled, or errors.WorkerError if the inference process died.
        """
        if self.in_process:
            prepared = self.prepare(t1=t1, t1ce=t1ce, t2=t2, flair=flair)
            wanted = validate.check_outputs(outputs)
            result, model_info = self.compute(prepared, wanted, device=device, progress=scaled(
                progress, 0.0, PIPELINE_SHARE), cancel=cancel, model_path=model_path, class_gate=class_gate)
            return self.commit(prepared, result, wanted, model_info=model_info, device=device,
                               progress=scaled(progress, PIPELINE_SHARE, 1.0), cancel=cancel)
        run = self.start(t1=t1, t1ce=t1ce, t2=t2, flair=flair, outputs=outputs, device=device,
                         model_path=model_path, class_gate=class_gate)
        run.wait(progress=progress, cancel=cancel)
        return run.finish(progress=scaled(progress, PIPELINE_SHARE, 1.0))

    def start(self, t1=None, t1ce=None, t2=None, flair=None, outputs: Iterable[str] = OUTPUTS,
              device: str = "cpu", model_path=None, class_gate: bool = True):
        """Check the inputs and start the run in the inference process; returns at once (an in-process logic
        computes here first, and returns a run that is already done).

        Same arguments as process(). Returns a run: `fraction`, `stage`, `time_left`, `done` for polling from
        the main thread (a QTimer in Slicer), cancel() (the inference process is ended within 2 s; the scene is
        untouched), wait(...), and finish() (main thread, once done): adds the outputs and returns
        ProcessOutputs, or raises the run's error. Input errors are raised here, before anything starts.
        """
        prepared = self.prepare(t1=t1, t1ce=t1ce, t2=t2, flair=flair)
        wanted = validate.check_outputs(outputs)
        commit = functools.partial(self._commit_run, prepared, wanted, device)
        if self.in_process:
            result, model_info = self.compute(prepared, wanted, device=device, model_path=model_path,
                                              class_gate=class_gate)
            return LocalRun(result, model_info, commit, share=PIPELINE_SHARE)
        model_path = model_path_for(prepared.images, prepared.labels, model_path)
        path = Path(model_path) if model_path else bundled_model_path()
        if model_path is None and not path.is_file():
            raise InputError(f"The bundled model '{path}' is missing; reinstall the extension or give a model file.")
        job = {"model_path": str(path), "run_options": run_options(prepared, wanted, device, class_gate)}
        # exchange.load rebuilds a dataclass as its own class only where its module is imported: this torch-free
        # one, so that the result's review regions come back with their methods (table(), as_dict()).
        from .pipeline import review  # noqa: F401
        return Run(prepared.images, job, commit, pool=self.pool, share=PIPELINE_SHARE)

    def _commit_run(self, prepared: PreparedInputs, wanted: frozenset, device: str, result: Any,
                    model_info: dict, progress: Optional[ProgressFn]) -> "ProcessOutputs":
        return self.commit(prepared, result, wanted, model_info=model_info, device=device, progress=progress)

    def end_worker(self) -> None:
        """End the inference processes of this logic's pool (the module is closed); the next run starts one."""
        self.pool.shutdown()

    # ----------------------------------------------------------------------------------------------------------
    def prepare(self, t1=None, t1ce=None, t2=None, flair=None) -> PreparedInputs:
        """Validate the input nodes and copy them to SimpleITK images. Reads the scene, changes nothing."""
        given = {name: node for name, node in zip(CONTRASTS, (t1, t1ce, t2, flair)) if node is not None}
        if not given:
            raise InputError("No input volume: select at least one of T1, T1ce, T2 or FLAIR.")
        scene = None
        first_label = ""
        seen: Dict[str, str] = {}
        for name, node in given.items():
            label = CONTRAST_NAMES[name]
            check_input_node(node, label)
            if scene is None:
                scene, first_label = node.GetScene(), label
            elif node.GetScene() is not scene:
                raise InputError(f"{label}: volume '{node.GetName()}' is in a different scene from the "
                                 f"{first_label} volume; all inputs must be in one scene.")
            if node.GetID() in seen:
                raise InputError(f"{label}: volume '{node.GetName()}' is already the {seen[node.GetID()]} input; "
                                 "give each contrast its own volume.")
            seen[node.GetID()] = label
        reference = reference_contrast(given)
        # The memory guard before any voxel is copied.
        validate.check_memory({name: node_geometry(node) for name, node in given.items()}, reference,
                              {name: f"{CONTRAST_NAMES[name]} ('{node.GetName()}')" for name, node in given.items()})
        images = {name: volumes.volume_node_to_image(node, CONTRAST_NAMES[name]) for name, node in given.items()}
        labels = {name: f"{CONTRAST_NAMES[name]} ('{node.GetName()}')" for name, node in given.items()}
        return PreparedInputs(scene=scene, nodes=given, images=images, reference=reference, labels=labels)

    # ----------------------------------------------------------------------------------------------------------
    def model(self, model_path=None):
        """The model at `model_path` (the bundled one when None), loaded once per logic (on the CPU: the
        pipeline moves it to the run's device)."""
        path = Path(model_path) if model_path else bundled_model_path()
        key = str(path)
        if key not in self._models:
            loader = self._model_loader
            if loader is None:
                if model_path is None and not path.is_file():
                    raise InputError(f"The bundled model '{path}' is missing; reinstall the extension or give a "
                                     "model file.")
                from .network.store import load_model as loader
            self._models[key] = loader(path, device="cpu")
        return self._models[key]

    def compute(self, prepared: PreparedInputs, outputs: Iterable[str] = OUTPUTS, device: str = "cpu",
                progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                model_path=None, class_gate: bool = True) -> Tuple[Any, dict]:
        """Run the pipeline on the prepared images, in this process. Touches no node.

        Returns (the pipeline's result, a description of the model: name, version, sha256, ...).
        """
        wanted = validate.check_outputs(outputs)
        check_cancel(cancel)
        if progress is not None:
            progress(0.0, "loading the model")
        model = self.model(model_path_for(prepared.images, prepared.labels, model_path))
        run = self._pipeline_run
        if run is None:
            from .pipeline.run import run
        from .pipeline.outputs import describe_model
        result = run(dict(prepared.images), model, progress=progress, cancel=cancel,
                     **run_options(prepared, wanted, device, class_gate))
        check_cancel(cancel)
        return result, describe_model(model)

    # ----------------------------------------------------------------------------------------------------------
    def commit(self, prepared: PreparedInputs, result: Any, outputs: Iterable[str] = OUTPUTS,
               model_info: Optional[dict] = None, device: str = "cpu", progress: Optional[ProgressFn] = None,
               cancel: Optional[CancelFn] = None) -> ProcessOutputs:
        """Add the result to the scene as nodes; all or nothing. Main thread only."""
        wanted = validate.check_outputs(outputs)
        scene = prepared.scene
        reference_node = prepared.reference_node
        for name, node in prepared.nodes.items():  # the GUI stays usable during a run: inputs may be gone
            if node.GetScene() is not scene:
                raise InputError(f"{CONTRAST_NAMES[name]}: volume '{node.GetName()}' was removed from the scene "
                                 "during the run; nothing was added.")
        reference_image = prepared.images[prepared.reference]
        run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        warnings = list(getattr(result, "warnings", None) or [])

        # 1. Every node is built before the scene is touched: a failure here changes nothing.
        if progress is not None:
            progress(0.0, "building the output layers")
        built = self._build_nodes(prepared, result, wanted, warnings)
        for kind, node in built.items():
            image_data = node.GetImageData() if node.IsA("vtkMRMLVolumeNode") else None
            if image_data is not None and tuple(image_data.GetDimensions()) != tuple(reference_image.GetSize()):
                raise RuntimeError(f"pipeline output {kind} is not on the reference grid")
        check_cancel(cancel)  # last point where a cancel is honoured: from here the commit is short

        report = build_report(result, prepared, model_info, device, warnings, run_id)

        # 2. Earlier outputs for this reference: replace those nobody has edited, keep the rest.
        inputs = {node.GetID() for node in prepared.nodes.values()}
        replaceable, kept = [], []
        for old in nodes.outputs_of(scene, reference_node):
            if old.GetID() in inputs:
                continue  # an output used as an input is the user's now
            (replaceable if nodes.is_unchanged_output(old) else kept).append(old)
        taken = {old.GetName() for old in kept}
        taken |= {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())
                  if not nodes.is_output(scene.GetNthNode(i))}

        # 3. Add everything, then remove what is replaced; undo the additions if anything fails.
        added: List[slicer.vtkMRMLNode] = []
        views = display.views_state(scene)
        scene.StartState(scene.BatchProcessState)
        try:
            for kind, node in built.items():
                if node.GetName() in taken:
                    node.SetName(scene.GenerateUniqueName(node.GetName()))
                scene.AddNode(node)
                added.append(node)
                nodes.tag_output(node, kind, reference_node, run_id)
                nodes.place_in_study(node, reference_node)
                self._style(kind, node, prepared, built, result)
            report["outputs"] = {kind: node.GetName() for kind, node in built.items()}
            report_holder = built.get("segmentation") or next(iter(built.values()), None)
            if report_holder is not None:
                report_holder.SetAttribute(nodes.REPORT_ATTRIBUTE, json.dumps(report, default=str))
            for old in replaceable:
                nodes.remove_node(old)
            self._set_up_views(prepared, result, built)
        except BaseException:
            display.restore_views(scene, views)
            for node in reversed(added):
                nodes.remove_node(node)
            raise
        finally:
            scene.EndState(scene.BatchProcessState)
        if progress is not None:
            progress(1.0, "done")
        return ProcessOutputs(nodes=dict(built), report=report, result=result,
                              replaced=[old.GetName() for old in replaceable], kept=[old.GetName() for old in kept])

    # ----------------------------------------------------------------------------------------------------------
    # Review (issue 18): what the panel's Review section calls
    @staticmethod
    def run_outputs(node: slicer.vtkMRMLNode) -> Dict[str, slicer.vtkMRMLNode]:
        """The outputs of the run that made `node` (kind -> node), found by the run's tag in node's scene."""
        run_id, scene = node.GetAttribute(nodes.RUN_ATTRIBUTE), node.GetScene()
        if not run_id or scene is None:
            return {}
        found = {}
        for index in range(scene.GetNumberOfNodes()):
            other = scene.GetNthNode(index)
            if nodes.is_output(other) and other.GetAttribute(nodes.RUN_ATTRIBUTE) == run_id:
                found[other.GetAttribute(nodes.OUTPUT_ATTRIBUTE)] = other
        return found

    def start_review(self, segmentation_node: slicer.vtkMRMLSegmentationNode, clock=None):
        """A ReviewSession over the regions of the run that made `segmentation_node` (review_session.py)."""
        from .review_session import ReviewSession

        made = self.run_outputs(segmentation_node)
        if "review_table" not in made:
            raise InputError(f"Segmentation '{segmentation_node.GetName()}' has no review regions in the scene; "
                             "run DareFuse again to make them.")
        extra = {"clock": clock} if clock is not None else {}
        return ReviewSession(segmentation_node, made["review_table"], made.get("review_points"), **extra)

    @staticmethod
    def latest_reviewable(scene: slicer.vtkMRMLScene) -> Optional[slicer.vtkMRMLSegmentationNode]:
        """The most recently added segmentation of ours whose run left review regions in `scene` (e.g. in a
        loaded scene, to resume its review), or None."""
        for index in reversed(range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
            if nodes.is_output(node) and "review_table" in DareFuseLogic.run_outputs(node):
                return node
        return None

    @staticmethod
    def set_uncertainty_threshold(uncertainty_node: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
        """Uncertainty below `threshold` (0..1) drawn transparent over the image (the panel's slider)."""
        scene_review.set_overlay_threshold(uncertainty_node, threshold)

    @staticmethod
    def uncertainty_threshold(uncertainty_node: slicer.vtkMRMLScalarVolumeNode) -> Optional[float]:
        """The threshold an uncertainty map is shown with (None when it shows every value)."""
        return scene_review.overlay_threshold(uncertainty_node)

    @staticmethod
    def _style(kind: str, node: slicer.vtkMRMLNode, prepared: PreparedInputs, built: Mapping[str, slicer.vtkMRMLNode],
               result: Any) -> None:
        """How an added output looks (the node is in the scene)."""
        if kind == "segmentation":
            node.CreateDefaultDisplayNodes()
            segmentation.set_reference_geometry(node, prepared.reference_node)
            display.style_segmentation(node)
        elif kind == "review_points":
            scene_review.style_markups(node)
        elif kind in ("review_table", "uncertainty_colours"):
            return
        else:
            style_kind = "tumour_free" if kind.startswith("tumour_free") else kind
            like = prepared.nodes.get(kind[len("tumour_free_"):]) if style_kind == "tumour_free" else None
            display.style_volume(node, style_kind, like=like)
            if kind == "uncertainty" and "uncertainty_colours" in built:
                scene_review.use_colours(node, built["uncertainty_colours"], overlay_threshold(result))

    def _build_nodes(self, prepared: PreparedInputs, result: Any, wanted: frozenset,
                     warnings: List[str]) -> Dict[str, slicer.vtkMRMLNode]:
        base = prepared.reference_node.GetName()
        built: Dict[str, slicer.vtkMRMLNode] = {}

        def missing(what: str) -> None:
            warnings.append(f"The pipeline returned no {what}; that layer was not added.")

        if "segmentation" in wanted:
            if getattr(result, "label", None) is None:
                missing("segmentation")
            else:
                built["segmentation"] = segmentation.label_to_segmentation_node(
                    result.label, f"{base} DareFuse segmentation", prepared.reference_node)
        if "uncertainty" in wanted:
            if getattr(result, "uncertainty", None) is None:
                missing("uncertainty map")
            else:  # its colour table first: added before the map that uses it
                built["uncertainty_colours"] = scene_review.uncertainty_colour_node(
                    overlay_threshold(result), f"{base} uncertainty colours")
                built["uncertainty"] = volumes.image_to_volume_node(result.uncertainty, f"{base} uncertainty")
        if "prior" in wanted:
            if getattr(result, "difference_prior", None) is None:
                missing("difference prior")
            else:
                built["difference_prior"] = volumes.image_to_volume_node(result.difference_prior,
                                                                         f"{base} difference prior")
            for contrast, image in (getattr(result, "tumour_free", None) or {}).items():
                built[f"tumour_free_{contrast}"] = volumes.image_to_volume_node(
                    image, f"{base} tumour-free {CONTRAST_NAMES.get(contrast, contrast)}")
        if getattr(result, "brain_mask", None) is not None:  # whole-head input: the front end's brain mask
            built["brain_mask"] = volumes.image_to_volume_node(result.brain_mask, f"{base} brain mask")
        review = getattr(result, "review", None)
        if "segmentation" in wanted and review is not None:
            built["review_table"] = scene_review.regions_table_node(review.table(), f"{base} review regions")
            built["review_points"] = scene_review.regions_markups_node(review.table(), f"{base} review points")
        if "gradcam" in wanted:
            if getattr(result, "gradcam", None) is None:
                missing("Grad-CAM++ map")
            else:
                explained = getattr(result, "gradcam_class", "") or ""
                built["gradcam"] = volumes.image_to_volume_node(
                    result.gradcam, f"{base} Grad-CAM++ {explained}".rstrip())
        return built

    @staticmethod
    def _set_up_views(prepared: PreparedInputs, result: Any, built: Mapping[str, slicer.vtkMRMLNode]) -> None:
        seg = built.get("segmentation")
        centre = None
        if seg is not None:
            centre = display.label_centre_ras(sitk.GetArrayViewFromImage(result.label), prepared.reference_node)
        display.setup_slice_views(prepared.scene, background=display_background(prepared),
                                  foreground=display.choose_foreground(built), segmentation=seg,
                                  centre_ras=centre)


# --------------------------------------------------------------------------------------------------------------
# Report
def build_report(result: Any, prepared: PreparedInputs, model_info: Optional[dict], device: str,
                 warnings: Sequence[str], run_id: str) -> Dict[str, Any]:
    """The command line's report (pipeline.outputs.build_report) plus what the scene adds: input node names,
    the device, the run's time; "outputs" (kind -> node name) is added once the nodes are named."""
    from .pipeline.outputs import build_report as pipeline_report

    report = pipeline_report(result, model_info, files=[])
    report.pop("files", None)
    report["warnings"] = list(warnings)
    report["input_nodes"] = {name: node.GetName() for name, node in prepared.nodes.items()}
    report["device"] = device
    report["run"] = run_id
    return report


def run_options(prepared: PreparedInputs, wanted: Iterable[str], device: str, class_gate: bool) -> Dict[str, Any]:
    """The keyword arguments of pipeline.run.run besides the images, the model, progress and cancel: the same
    in this process (compute) and in the inference process (start; JSON-ready), so a new option goes here."""
    return {"outputs": sorted(wanted), "device": device, "labels": dict(prepared.labels), "class_gate": class_gate}


def report_of(node: slicer.vtkMRMLNode) -> Optional[dict]:
    """The report a run stored on its segmentation (or first output), e.g. to show it after a scene is loaded."""
    text = node.GetAttribute(nodes.REPORT_ATTRIBUTE) if node is not None else None
    return json.loads(text) if text else None


def overlay_threshold(result: Any) -> float:
    """The uncertainty below which the map is transparent: the run's review settings (the model card's), else
    the defaults (pipeline/review.py)."""
    from .pipeline.review import ReviewConfig

    settings = (getattr(result, "settings", None) or {}).get("review") or {}
    return float(settings.get("overlay_threshold", ReviewConfig().overlay_threshold))


def display_background(prepared: PreparedInputs) -> slicer.vtkMRMLScalarVolumeNode:
    """The image shown beneath the overlays: where tumours show best (FLAIR, then T1ce, T2, T1)."""
    return prepared.nodes[display_contrast(prepared.nodes)]


# --------------------------------------------------------------------------------------------------------------
# Presentation helpers for the widget (kept here so they are tested without Qt)
def report_rows(report: Mapping[str, Any]) -> Dict[str, Any]:
    """The report as display rows: class probabilities (predicted first) and volumes NETC, SNFH, ET, WT, TC, and
    the predicted class as shown (with the class head's own answer when a rule replaced it)."""
    probabilities = report.get("class_probabilities") or {}
    predicted = report.get("predicted_class")
    order = sorted(probabilities, key=lambda name: (name != predicted, -probabilities[name]))
    classes = [(name.replace("_", " "), f"{100.0 * probabilities[name]:.1f} %") for name in order]
    volumes_ml = report.get("volumes_ml") or {}
    regions = [(name, f"{volumes_ml[name]:.1f} mL") for name in ("NETC", "SNFH", "ET", "WT", "TC")
               if name in volumes_ml]
    shown = class_text(predicted, probabilities, report.get("gradcam_class")).replace("_", " ") if predicted else ""
    return {"classes": classes, "volumes": regions, "predicted": shown}


