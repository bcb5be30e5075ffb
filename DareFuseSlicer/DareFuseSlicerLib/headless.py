"""One case from files to an output folder, headless: the module's logic on a fresh slicer-core MRML scene.

The files are read into volume nodes through Slicer's storage nodes, the same DareFuseLogic as in the module
panel processes them, and the result is written, all or nothing, as NIfTI layers, report.json, overview.png,
the .seg.nrrd and the scene bundle (pipeline/outputs.py). The command line (`darefuse segment`, `demo`,
`batch`) drives this module.

Every check that needs only the file headers (missing or unreadable files, truncated NIfTI, 2-D or 4-D
volumes, the memory guard, an output folder that already holds results) runs before torch or Slicer is
imported, so a bad call fails within a second.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Optional

from .constants import CONTRASTS, OUTPUTS
from .errors import InputError, OptionError
from .pipeline import validate
from .pipeline.outputs import check_output_dir
from .progress import CancelFn, ProgressFn


def set_threads(threads: Optional[int]) -> None:
    """CPU threads for the network (torch.set_num_threads); None leaves torch's setting."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def input_labels(paths: Dict[str, str]) -> Dict[str, str]:
    """How each input file is named in messages by default: 't1 PATH'."""
    return {contrast: f"{contrast} {path}" for contrast, path in paths.items()}


def check_inputs(paths: Dict[str, Optional[str]], labels: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The given input files, checked from their headers (existence, format, shape, completeness, memory).
    Returns contrast -> path for the given contrasts."""
    given = {c: str(paths[c]) for c in CONTRASTS if paths.get(c)}
    if not given:
        raise OptionError("No input image: give at least one of {t1}, {t1ce}, {t2}, {flair}.", *CONTRASTS)
    validate.check_input_files(given, labels or input_labels(given))
    return given


def segment_case(paths: Dict[str, Optional[str]], output_dir, overwrite: bool = False, device: str = "cpu",
                 model_path=None, outputs=OUTPUTS, progress: Optional[ProgressFn] = None,
                 cancel: Optional[CancelFn] = None, logic=None, threads: Optional[int] = None,
                 class_gate: bool = True, labels: Optional[Dict[str, str]] = None,
                 save_registered: bool = False) -> dict:
    """Segment one case from files into `output_dir`; returns the report written as report.json.

    `logic` is a DareFuseLogic to reuse (its model stays loaded between cases); a new one when None.
    `threads`: CPU threads for the network (torch.set_num_threads); None leaves torch's setting.
    `labels`: contrast -> how to name each file in messages (input_labels by default).
    `save_registered`: also write the contrasts co-registered onto the reference grid (whole-head input).
    Raises InputError for bad inputs, Cancelled when cancelled; either way nothing is written.
    """
    given = check_inputs(paths, labels)
    labels = labels or input_labels(given)
    target = check_output_dir(output_dir, overwrite)

    from .logic import DareFuseLogic
    from .pipeline.outputs import write_outputs
    from .scene import files

    scene = files.new_scene()
    loading = time.perf_counter()
    try:
        nodes = {}
        with files.vtk_messages_kept_off_stderr():
            for contrast, path in given.items():
                try:
                    nodes[contrast] = files.load_volume(scene, path)
                except InputError:
                    raise InputError(f"{labels[contrast]} could not be read as a volume (damaged or "
                                     "unsupported file).") from None
        load_seconds = round(time.perf_counter() - loading, 3)
        # torch and MONAI from here on (seconds of imports): a file that fails its header checks or that Slicer
        # cannot read is reported without waiting for them.
        set_threads(threads)
        from .pipeline.inference import resolve_device

        resolve_device(device)  # before minutes of work
        logic = logic or DareFuseLogic()
        processed = logic.process(**nodes, outputs=outputs, device=device, progress=progress, cancel=cancel,
                                  model_path=model_path, class_gate=class_gate)
        result = processed.result
        result.timings["load"] = load_seconds
        for contrast, path in given.items():
            result.inputs[contrast]["path"] = str(Path(path).absolute())

        writers = []
        if processed.segmentation is not None:
            writers.append(lambda staging: [files.save_segmentation(
                processed.segmentation, staging / "segmentation.seg.nrrd").name])
        writers.append(lambda staging: [files.save_scene_bundle(scene, staging / "scene.mrb").name])
        if progress is not None:
            progress(1.0, "writing the results")
        write_outputs(result, target, overwrite=overwrite, model_info=processed.report.get("model"),
                      extra_writers=writers, cancel=cancel, save_registered=save_registered)
        return json.loads((target / "report.json").read_text())
    finally:
        scene.Clear(0)  # the nodes hold the images: free them now, not at the next garbage collection

