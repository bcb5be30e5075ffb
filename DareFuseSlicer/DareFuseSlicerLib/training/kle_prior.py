"""`darefuse fit-kle`: seed 001's KLE residual prior fitted on a site's own studies (issue 20 §1).

No tumour-free twin and no label is read: the expansion (network/kle.py) is a PCA of the studies' prepared
whole-brain windows, so any folder of studies in the BraTS naming will do, the unlabelled ones of a site
included, raw whole-head ones too (each study goes through the pipeline's front end, as at inference). Nothing
is trained: every weight is --init's, and the saved model is --init with prior_mode "kle" and
the expansion stored beside its weights. A case lacking a contrast is refused (the expansion is of all four).
Cancelling (cancel(), Ctrl-C) writes nothing: the model is saved through a hidden staging folder.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError, OptionError
from ..network.kle import fit_kle
from ..network.model import DareFuseNet, count_parameters
from ..network.store import read_card, save_model_staged
from ..pipeline.frontend import prepare_study
from ..progress import CancelFn, ProgressFn, check_cancel
from .adapt import SiteCase, inherited_settings, scan_folders, site_checksums
from .dataset import SPACING_MM
from .prior import MODEL_FILE, cases_for_card
from .run_options import check_run_folder
from .train import stored_start

KLE_NOTE = ("lesion-removal prior: seed 001's KLE residual, a PCA of the studies' whole-brain windows "
            "(training/kle_prior.py); no weight trained, every one is the --init model's")


@dataclass
class KLEOptions:
    init: str
    data: Sequence[str]  # folders of studies in the BraTS naming; -seg files, if any, are not read
    out: str
    components: int = 32
    size: int = 48
    max_cases: Optional[int] = None

    def command_line(self) -> str:
        parts = ["darefuse", "fit-kle", "--init", self.init]
        for folder in self.data:
            parts += ["--data", folder]
        parts += ["--out", self.out, "--components", str(self.components), "--size", str(self.size)]
        if self.max_cases:
            parts += ["--max-cases", str(self.max_cases)]
        return " ".join(shlex.quote(p) for p in parts)


def fit_kle_prior(options: KLEOptions, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                  log: Callable[[str], None] = lambda line: None) -> Path:
    """Stages: options checked -> --init model -> studies scanned -> each prepared (images only) -> the
    expansion fitted -> --init with the expansion and its card, staged. Returns the saved model's path."""
    check_kle_options(options)
    init_model, origin = stored_start("darefuse", options.init)
    cases = scan_studies(options)
    log(f"fit-kle: {len(cases)} studies; command: {options.command_line()}")
    started = time.perf_counter()
    windows = prepared_windows(cases, progress, cancel)  # lazy: read, and cancel checked, one study at a time
    mean, basis, explained = fit_kle(windows, options.size, options.components)
    model = kle_network(init_model, options, mean, basis)
    card = kle_card(options, cases, origin, explained, time.perf_counter() - started, model)
    out_dir = Path(options.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_model_staged(model, out_dir / MODEL_FILE, card)
    log(f"saved {path}: {options.components} components hold {explained:.1%} of the studies' variance")
    return path


def check_kle_options(options: KLEOptions) -> None:
    if options.components < 1:
        raise OptionError(f"{{components}} must be at least 1, got {options.components}.", "components")
    if options.size < 4:
        raise OptionError(f"{{size}} must be at least 4 voxels, got {options.size}.", "size")
    if not options.data:
        raise OptionError("Give at least one {data} folder.", "data")
    check_run_folder(options.out, MODEL_FILE)


def scan_studies(options: KLEOptions) -> List[SiteCase]:
    """Every study of the folders (the first max_cases); more studies than components, each with all four."""
    cases = scan_folders(options.data, labelled=False)[: options.max_cases or None]
    lacking = [case.case_id for case in cases if len(case.images) < 4]
    if lacking:
        raise InputError(f"Case {lacking[0]} lacks a contrast: the expansion is fitted on studies with all four "
                         f"({len(lacking)} such case(s)).")
    if len(cases) <= options.components:
        raise InputError(f"{options.components} components need more than {options.components} studies; the --data "
                         f"folders hold {len(cases)}.")
    return cases


def prepared_windows(cases: List[SiteCase], progress: Optional[ProgressFn], cancel: Optional[CancelFn]):
    """Each study's whole-brain window as the network sees it at inference, one at a time: the pipeline's own
    path (frontend.prepare_study), so raw whole-head studies get their brain mask and registration first."""
    for i, case in enumerate(cases):
        check_cancel(cancel)
        if progress is not None:
            progress(i / len(cases), f"preparing {case.case_id} ({i + 1}/{len(cases)})")
        images = {c: sitk.ReadImage(str(p)) for c, p in case.images.items()}
        yield prepare_study(images, spacing_mm=SPACING_MM, cancel=cancel)[0].array


def kle_network(init_model: DareFuseNet, options: KLEOptions, mean: np.ndarray, basis: np.ndarray) -> DareFuseNet:
    """--init's network and weights with prior_mode "kle" and the fitted expansion."""
    config = replace(init_model.config, prior_mode="kle", kle_size=options.size, kle_components=options.components)
    model = DareFuseNet(config)
    missing, unexpected = model.load_state_dict(init_model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("kle.") for k in missing):
        raise InputError(f"The --init model's weights do not fit DareFuseNet: {unexpected or missing}")
    model.kle.mean.copy_(torch.from_numpy(mean))
    model.kle.basis.copy_(torch.from_numpy(basis))
    return model.eval()


def kle_card(options: KLEOptions, cases: List[SiteCase], origin: dict, explained: float, seconds: float,
             model: DareFuseNet) -> dict:
    init_card = read_card(options.init)
    classes, seeds = cases_for_card(cases, options.data)
    card = {
        "name": "DARE-FUSE", "version": Path(options.out).name, "training_command": options.command_line(),
        "initialised_from": origin, "weights": KLE_NOTE,
        # The network around the prior is --init's: its training data (and held-out refusals) still apply.
        "data_recipe": init_card.get("data_recipe", {}),
        "prior": {
            "kind": "kle", "tumour_free_twins_used": False, "labels_used": False,
            "method": "each study's whole-brain window cropped to its brain, resized to size^3 per contrast; PCA "
                      "over the studies; at inference the least-squares expansion over the given contrasts, "
                      "brought back to the brain's box; the prior is image minus expansion",
            "size": options.size, "components": options.components, "variance_explained": round(explained, 4),
            "rest_of_network": "the --init model's weights, unchanged (trained by --init with its own prior)",
            "trained_on": {"folders": [str(f) for f in options.data], "cases": len(cases), "classes": classes,
                           "training_seeds": seeds, "sha256": site_checksums(cases)},
        },
        "training": {"seconds": round(seconds, 1), "threads": torch.get_num_threads()},
        "metrics": {}, "parameters": count_parameters(model),
    }
    card.update(inherited_settings(init_card))
    return card
