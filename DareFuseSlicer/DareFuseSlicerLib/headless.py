"""One case from files to an output folder, headless: the module's logic on a fresh slicer-core MRML scene.

The files are read into volume nodes through Slicer's storage nodes (DICOM series through dicom/series.py),
the same DareFuseLogic as in the module panel processes them, and the result is written, all or nothing, as
NIfTI layers, report.json, overview.png, the .seg.nrrd and the scene bundle, and/or as DICOM SEG and
Parametric Maps (pipeline/outputs.py, dicom/export.py). The command line (`darefuse segment`, `demo`,
`batch`) drives this module.

Every check that needs only the file headers (missing or unreadable files, truncated NIfTI, 2-D or 4-D
volumes, DICOM series that cannot be stacked, the memory guard, an output folder that already holds results)
runs before torch or Slicer is imported, so a bad call fails within a second.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

from .constants import CONTRASTS, OUTPUTS, contrast_name, reference_contrast
from .dicom.case import CaseInputs, gather
from .errors import InputError, OptionError
from .pipeline import validate
from .pipeline.diskspace import DiskFull
from .pipeline.outputs import OUTPUT_FORMATS, ExtraWriter, check_output_dir
from .progress import CancelFn, ProgressFn


@contextlib.contextmanager
def native_stderr_held(drop_on: Tuple[Type[BaseException], ...] = ()) -> Iterator[None]:
    """What C++ code prints on the process's stderr (ITK's exceptions inside MRML's writers print themselves) is
    held back while the block runs and replayed afterwards, unless the block raised one of `drop_on`, whose own
    message says it all."""
    sys.stderr.flush()
    saved = os.dup(2)
    replay = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except drop_on:
            replay = False
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                held.seek(0)
                text = memoryview(held.read())
                while text:
                    text = text[os.write(2, text):]


def set_threads(threads: Optional[int]) -> None:
    """CPU threads for the network (torch.set_num_threads); None leaves torch's setting."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def input_labels(paths: Dict[str, str]) -> Dict[str, str]:
    """How each input file is named in messages by default: 't1 PATH'."""
    return {contrast: f"{contrast} {path}" for contrast, path in paths.items()}


def check_inputs(paths: Dict[str, Optional[str]], labels: Optional[Dict[str, str]] = None,
                 series: Sequence[str] = (), dicom: Optional[str] = None) -> CaseInputs:
    """The given inputs, checked from their headers (existence, format, shape, completeness, memory): image
    files, DICOM series folders (one series each, or the one of `series`), and a DICOM study folder `dicom`
    whose series are assigned to the contrasts not given otherwise by their descriptions.
    labels: contrast (and "dicom") -> how to name each input in messages."""
    given = {c: str(paths[c]) for c in CONTRASTS if paths.get(c)}
    if not given and not dicom:
        raise OptionError("No input image: give at least one of {t1}, {t1ce}, {t2}, {flair}, or a DICOM study "
                          "folder ({dicom}).", *CONTRASTS, "dicom")
    labels = labels or input_labels(given)
    inputs = gather(given, labels, series, dicom, labels.get("dicom") or f"dicom {dicom}")
    validate.check_input_files(inputs.files, inputs.labels, inputs.geometries())
    return inputs


def check_output_format(output_format: str, inputs: CaseInputs) -> None:
    """DICOM results reference the reference contrast's source series: that contrast must come from DICOM."""
    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"{{output_format}} must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}.",
                          "output_format")
    reference = reference_contrast(inputs.given)
    if output_format == "nifti":
        return
    if reference not in inputs.stacks:
        raise OptionError(f"{{output_format}} {output_format}: the DICOM results reference the source series of "
                          f"the reference contrast ({contrast_name(reference)}), which was given as a file, not a "
                          "DICOM series.", "output_format")
    from .dicom.export import check_source

    check_source(inputs.stacks[reference])


def _load(scene, inputs: CaseInputs) -> dict:
    """contrast -> volume node: files through Slicer's storage nodes, DICOM stacks through dicom.series."""
    from .dicom import series as dicom_series
    from .scene import files, volumes

    nodes = {}
    with files.vtk_messages_kept_off_stderr():
        for contrast in inputs.given:
            if contrast in inputs.stacks:
                stack = inputs.stacks[contrast]
                name = stack.series.description or contrast_name(contrast)
                nodes[contrast] = volumes.add_volume(scene, dicom_series.read(stack), name)
                continue
            try:
                nodes[contrast] = files.load_volume(scene, inputs.files[contrast])
            except InputError:
                raise InputError(f"{inputs.labels[contrast]} could not be read as a volume (damaged or "
                                 "unsupported file).") from None
    return nodes


def _writers(processed, scene, inputs: CaseInputs, output_format: str) -> List[ExtraWriter]:
    """The writers of the Slicer files (.seg.nrrd, scene.mrb) and of the DICOM objects, as the format asks."""
    from .scene import files

    writers: List[ExtraWriter] = []
    if output_format != "dicom":
        if processed.segmentation is not None:
            writers.append(lambda staging: [files.save_segmentation(
                processed.segmentation, staging / "segmentation.seg.nrrd").name])
        writers.append(lambda staging: [files.save_scene_bundle(scene, staging / "scene.mrb").name])
    if output_format != "nifti":
        from .dicom import export

        stack = inputs.stacks[reference_contrast(inputs.given)]
        model = processed.report.get("model")
        writers.append(lambda staging: export.write_results(processed.result, stack, model, staging))
    return writers


def _record_inputs(result, inputs: CaseInputs) -> None:
    """Where each input came from in report.json: the file, or the DICOM series (UIDs and descriptions)."""
    for contrast in inputs.given:
        if contrast in inputs.stacks:
            result.inputs[contrast]["dicom"] = inputs.report(contrast)
        else:
            result.inputs[contrast]["path"] = str(Path(inputs.files[contrast]).absolute())
    result.warnings[:0] = inputs.warnings


def segment_case(paths: Dict[str, Optional[str]], output_dir, overwrite: bool = False, device: str = "cpu",
                 model_path=None, outputs=OUTPUTS, progress: Optional[ProgressFn] = None,
                 cancel: Optional[CancelFn] = None, logic=None, threads: Optional[int] = None,
                 class_gate: bool = True, labels: Optional[Dict[str, str]] = None, series: Sequence[str] = (),
                 dicom: Optional[str] = None, output_format: str = "nifti",
                 extra_writers: Sequence[ExtraWriter] = (), save_registered: bool = False) -> dict:
    """Segment one case from files or DICOM folders into `output_dir`; returns the report written as report.json.

    `logic` is a DareFuseLogic to reuse (its model stays loaded between cases); when None, a new one that runs
    the pipeline in this process (in_process=True: no inference process, no file round trip).
    `threads`: CPU threads for the network (torch.set_num_threads); None leaves torch's setting.
    `labels`: contrast (and "dicom") -> how to name each input in messages (input_labels by default).
    `series`, `dicom`: DICOM series UIDs picked by the user, a study folder to assign by descriptions
    (check_inputs). `output_format`: "nifti" (NIfTI layers, .seg.nrrd, scene.mrb), "dicom" (DICOM SEG and
    Parametric Maps) or "both"; report.json and overview.png always. `extra_writers`: further results.
    `save_registered`: also write the contrasts co-registered onto the reference grid (whole-head input).
    Raises InputError for bad inputs, Cancelled when cancelled; either way nothing is written.
    """
    inputs = check_inputs(paths, labels, series, dicom)
    check_output_format(output_format, inputs)
    target = check_output_dir(output_dir, overwrite)

    from .logic import DareFuseLogic
    from .pipeline.outputs import write_outputs
    from .scene import files

    scene = files.new_scene()
    loading = time.perf_counter()
    try:
        nodes = _load(scene, inputs)
        load_seconds = round(time.perf_counter() - loading, 3)
        # torch and MONAI from here on (seconds of imports): a file that fails its header checks or that Slicer
        # cannot read is reported without waiting for them.
        set_threads(threads)
        from .pipeline.inference import resolve_device

        resolve_device(device)  # before minutes of work
        logic = logic or DareFuseLogic(in_process=True)  # a command-line process: no GUI to keep responsive
        processed = logic.process(**nodes, outputs=outputs, device=device, progress=progress, cancel=cancel,
                                  model_path=model_path, class_gate=class_gate)
        result = processed.result
        result.timings["load"] = load_seconds
        _record_inputs(result, inputs)
        if progress is not None:
            progress(1.0, "writing the results")
        # A full disk is reported once, as DiskFull: not also as pages of ITK text from MRML's writers.
        with files.vtk_messages_kept_off_stderr(), native_stderr_held(drop_on=(DiskFull,)):
            write_outputs(result, target, overwrite=overwrite, model_info=processed.report.get("model"),
                          extra_writers=_writers(processed, scene, inputs, output_format) + list(extra_writers),
                          cancel=cancel, nifti=output_format != "dicom", save_registered=save_registered,
                          report_extra={"dicom_study": {"folder": str(Path(dicom).absolute()),
                                                        "series": inputs.assignment}} if dicom else None)
        return json.loads((target / "report.json").read_text())
    finally:
        scene.Clear(0)  # the nodes hold the images: free them now, not at the next garbage collection
