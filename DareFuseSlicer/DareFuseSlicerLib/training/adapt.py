"""`darefuse adapt`: fine-tune a stored DareFuseNet to a site's own studies, a few of them contoured.

A site has neither the data engine's tumour-free twins nor its manifest.csv: the folders hold
`<case>-t1n/-t1c/-t2w/-t2f.nii.gz` (any non-empty subset) and, for a labelled case, `<case>-seg.nii.gz`.
A manifest.csv beside them is read only for the tumour class (without one the class head gets no target).

- Start: the --init model's weights (its SHA256 checked against its card, as `train --init`).
- Labelled cases: the supervised segmentation losses of `train` (Dice, cross-entropy, evidential).
- Unlabelled cases: pseudo-labels from the mean teacher (the EMA of the student, which starts as the --init
  model), kept only where the teacher's one-pass uncertainty K / sum(alpha) is below PSEUDO_LABEL_MAX_UNCERTAINTY,
  or below per-class thresholds calibrated on the labelled cases (`--pseudo-precision`, pseudo_labels.py);
  optionally the student sees a perturbed copy of the crop (`--perturb-student`), crops whose teacher says
  "no tumour" are labelled background throughout (`--pseudo-class-gate`), and no background label is kept near
  the teacher's tumour (`--background-margin`); `--balance-pseudo-classes` weighs each class of the kept labels
  the same.
  Without an unlabelled folder it fine-tunes on the labelled cases alone (the label curve's supervised arm).
- The lesion-removal generator stays frozen at the --init weights: without twins it has no target.
- Each step: `batch_size` labelled crops (cycled) and `batch_size` unlabelled crops; an epoch is one pass
  over the unlabelled cases (over the labelled ones when there are none).
- Nothing is checkpointed: a cancelled run (cancel(), Ctrl-C) writes no model, only its log. The model is
  written into a hidden staging folder and moved into place when complete.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from ..constants import BRATS_SUFFIX, CLASSES, PSEUDO_LABEL_MAX_UNCERTAINTY
from ..errors import InputError, OptionError
from ..network.losses import DareFuseLoss, LossWeights
from ..network.model import DareFuseNet, count_parameters
from ..network.store import read_card, save_model_staged
from ..phantoms import read_manifest
from ..pipeline.preprocess import prepare, resample_label_to_grid
from ..progress import CancelFn, ProgressFn, check_cancel, format_time_left
from ..sampledata import sha256
from .dataset import CACHE_VERSION, IGNORE_CLASS, SPACING_MM, CachedCase, TrainDataset, save_npz_atomic, seed_for
from .pseudo_labels import (CALIBRATION_CROPS_PER_CASE, STUDENT_PERTURBATION, Calibration, calibrate, gate_by_class,
                            hold_back_background, margin_voxels, perturb_student, pseudo_label_loss, pseudo_labels,
                            ramp_weight)
from .recorded_command import differing_flags
from .run_options import check_budget, check_device, check_run_folder
from .train import ARCH_FILES, seed_everything, stored_start, update_ema

MODEL_FILE = ARCH_FILES["darefuse"]
LOG_FILE = "adapt.log"
GENERATOR_NOTE = ("frozen at the initial model's weights: a site has no tumour-free twins, so the lesion-removal "
                  "prior cannot be trained or checked there")
_FILE_PATTERN = re.compile(r"^(?P<case>.+)-(?P<kind>t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$")
_SUFFIX_CONTRAST = {suffix: contrast for contrast, suffix in BRATS_SUFFIX.items()}


@dataclass
class AdaptOptions:
    init: str
    labelled: str
    unlabelled: Optional[str]  # None: the labelled cases alone
    out: str
    minutes: Optional[float] = None
    epochs: Optional[int] = None
    steps: Optional[int] = None  # a budget that does not depend on how busy the machine is
    seed: int = 0
    max_uncertainty: float = PSEUDO_LABEL_MAX_UNCERTAINTY  # one threshold for all classes
    pseudo_precision: Optional[float] = None  # instead: per-class thresholds calibrated to this precision
    background_precision: Optional[float] = None  # with pseudo_precision: background's own, stricter target
    pseudo_weight: float = 1.0
    ramp_up: int = 0  # steps over which the pseudo-label weight rises to pseudo_weight (0: full from the start)
    perturb_student: bool = False  # the student sees a perturbed copy of each unlabelled crop (pseudo_labels.py)
    pseudo_class_gate: Optional[float] = None  # P(no tumour) from which a crop is pseudo-labelled background
    background_margin: float = 0.0  # mm around the teacher's tumour in which no background label is kept
    balance_pseudo_classes: bool = False  # each class of the kept pseudo-labels weighs the same in the loss
    roi: Tuple[int, int, int] = (64, 80, 64)
    batch_size: int = 1  # labelled crops per step, and as many unlabelled ones
    lr: float = 5e-4  # a quarter of train's: the start is a trained model
    ema_decay: float = 0.99
    contrast_dropout: float = 0.5
    prior_dropout: float = 0.2
    threads: Optional[int] = None
    device: Optional[str] = None  # default: cuda when available, else cpu
    cache: Optional[str] = None  # prepared cases kept between runs (several runs on one site's studies)

    @property
    def background_margin_voxels(self) -> int:
        """--background-margin on the training grid: what both the calibration and the steps hold back."""
        return margin_voxels(self.background_margin, SPACING_MM)

    def command_line(self) -> str:
        """The equivalent `darefuse adapt` command (recorded in the card): the folders, the seed, the threshold
        and every option that differs from its default."""
        parts = ["darefuse", "adapt", "--init", self.init, "--labelled", self.labelled]
        parts += ["--unlabelled", self.unlabelled] if self.unlabelled is not None else []
        parts += ["--out", self.out, "--seed", str(self.seed)]
        parts += ["--max-uncertainty", str(self.max_uncertainty)] if self.pseudo_precision is None else \
            ["--pseudo-precision", str(self.pseudo_precision)]
        defaults = AdaptOptions(init="", labelled="", unlabelled="", out="")
        parts += differing_flags(self, defaults, ("background_precision", "minutes", "epochs", "steps", "pseudo_weight",
                                                  "ramp_up", "perturb_student", "pseudo_class_gate",
                                                  "background_margin", "balance_pseudo_classes", "roi",
                                                  "batch_size", "lr", "ema_decay", "contrast_dropout", "prior_dropout",
                                                  "threads", "device", "cache"))
        return " ".join(shlex.quote(p) for p in parts)


# -- the site's folders ---------------------------------------------------------------------------------
@dataclass
class SiteCase:
    case_id: str
    images: Dict[str, Path]  # contrast -> file
    seg: Optional[Path]
    class_index: int = IGNORE_CLASS

    @property
    def files(self) -> List[Path]:
        return sorted(list(self.images.values()) + ([self.seg] if self.seg else []))

    @cached_property
    def checksums(self) -> Dict[str, str]:
        """File name -> SHA256, read once: the cache key and the card both use it."""
        return {path.name: sha256(path) for path in self.files}


def scan_site(folder, labelled: bool) -> List[SiteCase]:
    """The cases of a site folder in the BraTS naming; InputError naming the folder and case for a folder
    without cases, a case without any image, a labelled case without its -seg file."""
    role = "Labelled" if labelled else "Unlabelled"
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{role} folder {folder} does not exist.")
    found: Dict[str, Dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _FILE_PATTERN.match(path.name)
        if match and path.is_file():
            found.setdefault(match["case"], {})[match["kind"]] = path
    if not found:
        raise InputError(f"{role} folder {folder} holds no case: no <case>-t1n/-t1c/-t2w/-t2f.nii.gz files.")
    if not labelled and all(set(kinds) == {"seg"} for kinds in found.values()):
        raise InputError(f"Unlabelled folder {folder} holds only segmentation files (-seg.nii.gz), no images "
                         f"(cases {', '.join(sorted(found)[:3])}{', ...' if len(found) > 3 else ''}).")
    classes = _manifest_classes(folder)
    cases = []
    for case_id, kinds in found.items():
        images = {_SUFFIX_CONTRAST[k]: p for k, p in kinds.items() if k != "seg"}
        if not images:
            raise InputError(f"{role} folder {folder}: case {case_id} has no image (none of -t1n, -t1c, -t2w, -t2f).")
        if labelled and "seg" not in kinds:
            raise InputError(f"Labelled folder {folder}: case {case_id} has no segmentation {case_id}-seg.nii.gz.")
        cases.append(SiteCase(case_id, images, kinds.get("seg") if labelled else None,
                              classes.get(case_id, IGNORE_CLASS)))
    return cases


def scan_folders(folders: Sequence, labelled: bool) -> List[SiteCase]:
    """scan_site over several folders; InputError when one case is in more than one of them."""
    cases: List[SiteCase] = []
    for folder in folders:
        cases += scan_site(folder, labelled)
    ids = [case.case_id for case in cases]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(f"Case {repeated[0]} is in more than one --data folder.")
    return cases


def unlabelled_only(unlabelled: List[SiteCase], labelled: List[SiteCase], folder) -> List[SiteCase]:
    """The unlabelled cases that are not also labelled (a site may point --unlabelled at all its studies)."""
    contoured = {case.case_id for case in labelled}
    rest = [case for case in unlabelled if case.case_id not in contoured]
    if not rest:
        raise InputError(f"Unlabelled folder {folder} holds only cases of the labelled folder: none is left unlabelled.")
    return rest


def _manifest_classes(folder: Path) -> Dict[str, int]:
    """case_id -> class index from a manifest.csv if the folder has one (a data-engine folder); else empty."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        return {}
    return {r["case_id"]: CLASSES.index(r["tumour_class"]) for r in read_manifest(manifest)
            if r.get("tumour_class") in CLASSES}


def inherited_settings(init_card: dict) -> Dict[str, dict]:
    """The --init card's post-processing and review settings, which a model made from it carries over (they
    were tuned for --init, not for the new model)."""
    return {key: init_card[key] for key in ("postprocess", "review") if key in init_card}


def site_checksums(cases: List[SiteCase]) -> Dict[str, Dict[str, str]]:
    """case_id -> {file name: SHA256} over the files each case was trained from."""
    return {case.case_id: case.checksums for case in cases}


def prepare_site_case(case: SiteCase) -> Tuple[CachedCase, np.ndarray]:
    """A site case on the 2 mm grid as `train` sees it, and its present contrasts (4,). With no twin the
    tumour-free target is the image itself: the generator is frozen and its losses are weighted 0."""
    images = {c: sitk.ReadImage(str(p)) for c, p in case.images.items()}
    prep = prepare(images, spacing_mm=SPACING_MM)
    if case.seg is not None:
        label = resample_label_to_grid(sitk.ReadImage(str(case.seg)), prep).astype(np.uint8)
    else:
        label = np.zeros(prep.foreground.shape, np.uint8)
    image = prep.array.astype(np.float16)
    cached = CachedCase(case.case_id, image, image, label, prep.foreground.astype(np.uint8), case.class_index,
                        labelled=case.seg is not None)
    return cached, prep.present.astype(np.float32)


def cached_site_case(case: SiteCase, cache_dir: Optional[Path]) -> Tuple[CachedCase, np.ndarray]:
    """prepare_site_case, through `cache_dir` when given. A cache file is reused only when its key (the cache
    version, the grid's spacing and the SHA256 of every file the case is read from, its -seg included) matches,
    so an edited image or contour, or a case that became labelled, is prepared again."""
    if cache_dir is None:
        return prepare_site_case(case)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, SPACING_MM, case.checksums], sort_keys=True).encode()).hexdigest()
    # labelled and unlabelled uses of one study are kept apart (a split may hold it either way)
    path = cache_dir / f"site-{case.case_id}{'-seg' if case.seg is not None else ''}.npz"
    if path.is_file():
        with np.load(path) as data:
            if "key" in data and str(data["key"]) == key:
                image = data["image"]
                return (CachedCase(case.case_id, image, image, data["label"], data["foreground"], case.class_index,
                                   labelled=case.seg is not None), data["present"])
    cached, present = prepare_site_case(case)
    save_npz_atomic(path, key=np.array(key), image=cached.image, label=cached.label, foreground=cached.foreground,
                    present=present)
    return cached, present


class SiteDataset(TrainDataset):
    """TrainDataset's augmented crops, with the contrasts a case lacks marked absent (TrainDataset assumes all
    four; its contrast dropout may then leave none of the given ones, and is undone for that crop)."""

    def __init__(self, cases, presents, roi_size, seed, contrast_dropout):
        super().__init__(cases, roi_size, seed, contrast_dropout)
        self.presents = [torch.from_numpy(p) for p in presents]

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        given = self.presents[index]
        present = item["present"] * given
        if not present.any():
            present = given
        item["present"] = present
        item["image"] = item["image"] * present[:, None, None, None]
        return item


# -- the run --------------------------------------------------------------------------------------------
@dataclass
class SiteData:
    labelled: List[SiteCase]
    unlabelled: List[SiteCase]
    labelled_set: SiteDataset
    unlabelled_set: Optional[SiteDataset]  # None: fine-tuning on the labelled cases alone

    @property
    def epoch_set(self) -> SiteDataset:
        """The cases one epoch passes over: the unlabelled ones, else the labelled ones."""
        return self.unlabelled_set if self.unlabelled_set is not None else self.labelled_set


@dataclass
class AdaptState:
    model: torch.nn.Module
    teacher: torch.nn.Module  # the EMA of the student: the weights that are saved
    optimizer: torch.optim.Optimizer
    loss_fn: DareFuseLoss
    device: torch.device
    step: int = 0
    epoch: int = 0
    started: float = field(default_factory=time.perf_counter)
    step_times: List[float] = field(default_factory=list)
    kept: List[float] = field(default_factory=list)  # fraction of unlabelled voxels kept, per step
    kept_tumour: List[float] = field(default_factory=list)  # kept voxels labelled tumour, per unlabelled crop
    gated: List[float] = field(default_factory=list)  # with a class gate: share of a step's unlabelled crops it took
    thresholds: Union[float, List[float]] = PSEUDO_LABEL_MAX_UNCERTAINTY  # one for all classes, or one per class
    calibration: Optional[Calibration] = None
    losses: List[float] = field(default_factory=list)


def adapt(options: AdaptOptions, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None) -> Path:
    """Run the adaptation; returns the saved model's path. Stages: options checked -> --init model -> site
    folders scanned -> cases prepared -> steps within the budget -> the teacher's weights and card, staged."""
    check_options(options)
    model, origin = stored_start("darefuse", options.init)  # before anything is written: a refusal leaves nothing
    labelled = scan_site(options.labelled, labelled=True)
    unlabelled = [] if options.unlabelled is None else \
        unlabelled_only(scan_site(options.unlabelled, labelled=False), labelled, options.unlabelled)
    out_dir = Path(options.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = _log(out_dir / LOG_FILE)
    log(f"adapt: {len(labelled)} labelled, {len(unlabelled)} unlabelled cases; command: {options.command_line()}")
    torch.set_num_threads(options.threads or torch.get_num_threads())
    seed_everything(options.seed)
    state = build_adapt_state(options, model)
    try:
        data = load_site(options, labelled, unlabelled, progress, cancel)
        set_thresholds(options, data, state, progress, cancel, log)
        run_steps(options, data, state, progress, cancel, log)
        result = save_adapted(options, data, state, origin, out_dir)
    except BaseException as error:  # Cancelled, Ctrl-C, SIGTERM, a failure: no model is written
        log(f"stopped by {type(error).__name__} after {state.step} steps; no model written")
        raise
    log(f"saved {result} after {state.step} steps")
    return result


def check_options(options: AdaptOptions) -> None:
    if options.minutes is None and options.epochs is None and options.steps is None:
        raise OptionError("Give a budget: {minutes} M, {epochs} N and/or {steps} S.", "minutes", "epochs", "steps")
    check_budget(options.minutes, options.steps)
    if options.epochs is not None and options.epochs < 1:
        raise OptionError(f"{{epochs}} must be at least 1, got {options.epochs}.", "epochs")
    if not 0.0 < options.max_uncertainty <= 1.0:
        raise OptionError(f"{{max_uncertainty}} must be in (0, 1], got {options.max_uncertainty}.", "max_uncertainty")
    if options.pseudo_precision is not None and not 0.0 < options.pseudo_precision <= 1.0:
        raise OptionError(f"{{pseudo_precision}} must be in (0, 1], got {options.pseudo_precision}.", "pseudo_precision")
    if options.background_precision is not None:
        if options.pseudo_precision is None:
            raise OptionError("{background_precision} needs {pseudo_precision}: it sets background's own target "
                              "in that calibration.", "background_precision", "pseudo_precision")
        if not 0.0 < options.background_precision <= 1.0:
            raise OptionError(f"{{background_precision}} must be in (0, 1], got {options.background_precision}.",
                              "background_precision")
    if options.pseudo_class_gate is not None and not 0.0 < options.pseudo_class_gate <= 1.0:
        raise OptionError(f"{{pseudo_class_gate}} must be in (0, 1], got {options.pseudo_class_gate}.", "pseudo_class_gate")
    if options.background_margin < 0:
        raise OptionError(f"{{background_margin}} must be at least 0 mm, got {options.background_margin}.",
                          "background_margin")
    if options.ramp_up < 0:
        raise OptionError(f"{{ramp_up}} must be at least 0, got {options.ramp_up}.", "ramp_up")
    if options.batch_size < 1:
        raise OptionError(f"{{batch_size}} must be at least 1, got {options.batch_size}.", "batch_size")
    check_device(options.device)
    check_run_folder(options.out, MODEL_FILE)


def _log(path: Path):
    def log(message: str) -> None:
        with open(path, "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")
    return log


def load_site(options: AdaptOptions, labelled: List[SiteCase], unlabelled: List[SiteCase],
              progress: Optional[ProgressFn], cancel: Optional[CancelFn]) -> SiteData:
    """Every case pre-processed once into memory, through `--cache` when given."""
    cache_dir = None if options.cache is None else Path(options.cache)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    sets = []
    everything = labelled + unlabelled
    done = 0
    for cases in (labelled, unlabelled):
        prepared, presents = [], []
        for case in cases:
            check_cancel(cancel)
            if progress is not None:
                progress(0.0, f"preparing {case.case_id} ({done + 1}/{len(everything)})")
            cached, present = cached_site_case(case, cache_dir)
            prepared.append(cached)
            presents.append(present)
            done += 1
        sets.append(SiteDataset(prepared, presents, options.roi, options.seed, options.contrast_dropout)
                    if prepared else None)
    return SiteData(labelled, unlabelled, sets[0], sets[1])


def set_thresholds(options: AdaptOptions, data: SiteData, state: AdaptState, progress: Optional[ProgressFn],
                   cancel: Optional[CancelFn], log) -> None:
    """The pseudo-labels' thresholds: --max-uncertainty for every class, or with --pseudo-precision one per
    class, calibrated on crops of the labelled cases by the starting model (the teacher before any step)."""
    state.thresholds = options.max_uncertainty
    if options.pseudo_precision is None or data.unlabelled_set is None:
        return
    if progress is not None:
        progress(0.0, f"calibrating the pseudo-labels on {len(data.labelled)} labelled cases")
    crops = (labelled_crop(data.labelled_set, k) for k in range(CALIBRATION_CROPS_PER_CASE * len(data.labelled)))
    state.calibration = calibrate(state.teacher, crops, options.pseudo_precision, state.device,
                                  check=lambda: check_cancel(cancel), background_precision=options.background_precision,
                                  margin=options.background_margin_voxels)
    state.thresholds = state.calibration.thresholds
    background = "" if options.background_precision is None else f", background {options.background_precision}"
    background += f", background margin {options.background_margin} mm" if options.background_margin else ""
    log(f"pseudo-label thresholds per class {state.thresholds} (precision {options.pseudo_precision}{background}, "
        f"calibrated on {state.calibration.voxels} labels)")


def labelled_crop(dataset: SiteDataset, k: int) -> dict:
    """The k-th labelled crop: case k % n in the augmentation of pass k // n."""
    cycle, index = divmod(k, len(dataset))
    dataset.set_epoch(cycle)
    return dataset[index]


def build_adapt_state(options: AdaptOptions, model: torch.nn.Module) -> AdaptState:
    """The student (generator frozen), its teacher (a copy) and an optimiser over the trainable weights."""
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device)
    for p in model.generator.parameters():
        p.requires_grad_(False)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=1e-4)
    # No twins: the generator's L1 terms have no target.
    loss_fn = DareFuseLoss(LossWeights(generator=0.0, identity=0.0))
    return AdaptState(model, teacher, optimizer, loss_fn, device)


def _batch(data: SiteData, options: AdaptOptions, step: int, epoch: int, order: np.ndarray) -> dict:
    """`batch_size` labelled crops (cycling through the labelled cases) and `batch_size` unlabelled ones."""
    n_lab, size = len(data.labelled_set), options.batch_size
    items = []
    for k in range(step * size, (step + 1) * size):
        cycle, position = divmod(k, n_lab)
        data.labelled_set.set_epoch(cycle)
        items.append(data.labelled_set[int(np.random.RandomState(seed_for(options.seed, cycle)).permutation(n_lab)[position])])
    if data.unlabelled_set is not None:
        data.unlabelled_set.set_epoch(epoch)
        for k in range(size):
            items.append(data.unlabelled_set[int(order[(step * size + k) % len(order)])])
    return torch.utils.data.default_collate(items)


def run_steps(options: AdaptOptions, data: SiteData, state: AdaptState, progress: Optional[ProgressFn],
              cancel: Optional[CancelFn], log) -> None:
    """Steps until the epochs, the steps or the minutes are spent (whichever first), checking cancel() before each."""
    per_epoch = max(1, len(data.epoch_set) // options.batch_size)
    limits = [n for n in (per_epoch * options.epochs if options.epochs else None, options.steps) if n]
    total_steps = min(limits) if limits else None
    budget_s = options.minutes * 60.0 if options.minutes else None
    state.started = time.perf_counter()
    while True:
        order = np.random.RandomState(seed_for(options.seed, state.epoch)).permutation(len(data.epoch_set))
        for step_in_epoch in range(per_epoch):
            check_cancel(cancel)
            t0 = time.perf_counter()
            batch = {k: v.to(state.device) for k, v in _batch(data, options, state.step, state.epoch, order).items()}
            adapt_step(options, state, batch)
            state.step += 1
            state.step_times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - state.started
            fraction = max(state.step / total_steps if total_steps else 0.0, elapsed / budget_s if budget_s else 0.0)
            if progress is not None:
                left = format_time_left(elapsed, fraction)
                kept = f", pseudo-labels kept {100 * np.mean(state.kept[-20:]):.0f} %" if state.kept else ""
                progress(min(fraction, 1.0), f"step {state.step}, loss {np.mean(state.losses[-20:]):.3f}{kept}"
                         + (f", {left}" if left else ""))
            mean_step = float(np.mean(state.step_times[-20:]))
            if (total_steps and state.step >= total_steps) or (budget_s and elapsed + mean_step > budget_s):
                log(f"stopped after {state.step} steps, {elapsed:.0f} s")
                return
        kept = f", pseudo-labels kept {np.mean(state.kept[-per_epoch:]):.3f}" if state.kept else ""
        log(f"epoch {state.epoch}: {state.step} steps, loss {np.mean(state.losses[-per_epoch:]):.4f}{kept}")
        state.epoch += 1


def adapt_step(options: AdaptOptions, state: AdaptState, batch: dict) -> None:
    """One optimiser step: supervised terms on the labelled crops, kept pseudo-labels on the unlabelled ones."""
    torch.manual_seed(seed_for(options.seed, state.step))
    x, present = batch["image"], batch["present"]
    labelled = batch["labelled"].bool()
    use_prior = bool(np.random.RandomState(seed_for(options.seed, state.step, 1)).rand() >= options.prior_dropout)
    state.model.train()
    state.model.generator.eval()  # frozen: its normalisation too
    unlabelled = ~labelled
    student_x = x
    if options.perturb_student and unlabelled.any():
        student_x = x.clone()
        student_x[unlabelled] = perturb_student(x[unlabelled], batch["foreground"][unlabelled], present[unlabelled],
                                                seed_for(options.seed, state.step, 2))
    out = state.model(student_x, present, use_prior=use_prior)
    terms = state.loss_fn(out, x, present, batch["label"], batch["tumour_free"], batch["class_index"], labelled, 1.0)
    total = terms["total"]
    if unlabelled.any():
        with torch.no_grad():
            teacher_out = state.teacher(x[unlabelled], present[unlabelled], use_prior=use_prior)
        labels, keep = pseudo_labels(teacher_out["evidence"], state.thresholds)
        keep = hold_back_background(labels, keep, options.background_margin_voxels)
        labels, keep, gated = gate_by_class(labels, keep, DareFuseNet.class_probabilities(teacher_out)[:, 0],
                                            options.pseudo_class_gate)
        if options.pseudo_class_gate is not None:
            state.gated.append(float(gated.float().mean()))
        weight = options.pseudo_weight * ramp_weight(state.step, options.ramp_up)
        total = total + weight * pseudo_label_loss(out["evidence_logits"][unlabelled], labels, keep,
                                                   balanced=options.balance_pseudo_classes)
        state.kept.append(float(keep.float().mean()))
        state.kept_tumour.append(float((keep & (labels > 0)).sum()) / len(labels))
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in state.model.parameters() if p.requires_grad], 12.0)
    state.optimizer.step()
    update_ema(state.teacher, state.model, min(options.ema_decay, (1.0 + state.step) / (10.0 + state.step)))
    # update_ema's blend of two equal weights can move their last bit: keep the frozen generator exact.
    state.teacher.generator.load_state_dict(state.model.generator.state_dict())
    state.losses.append(float(total.detach()))


def save_adapted(options: AdaptOptions, data: SiteData, state: AdaptState, origin: dict, out_dir: Path) -> Path:
    """The teacher's weights and card, written into a staging folder and moved into place when complete."""
    init_card = read_card(options.init)
    card = {
        "name": "DARE-FUSE", "version": out_dir.name, "training_command": options.command_line(), "seed": options.seed,
        "initialised_from": origin,
        "weights": "exponential moving average of the adapted weights (the mean teacher's weights)",
        "adaptation": {
            "method": "supervised losses on the labelled cases" + (
                "; on the unlabelled cases, cross-entropy against the mean teacher's pseudo-labels where its one-pass "
                "uncertainty K/sum(alpha) is below " + ("max_uncertainty" if state.calibration is None else
                                                         "its class's calibrated threshold")
                if data.unlabelled else " alone (no unlabelled folder)"),
            "pseudo_label_max_uncertainty": options.max_uncertainty if state.calibration is None else None,
            "pseudo_label_calibration": state.calibration.as_card() if state.calibration is not None else None,
            "pseudo_weight": options.pseudo_weight, "pseudo_weight_ramp_up_steps": options.ramp_up,
            "student_perturbation": dict(STUDENT_PERTURBATION) if options.perturb_student and data.unlabelled else None,
            "pseudo_label_class_gate": options.pseudo_class_gate if data.unlabelled else None,
            "pseudo_label_background_margin_mm": options.background_margin if data.unlabelled else None,
            "pseudo_label_loss": ("mean over the kept labels' classes of each class's mean cross-entropy"
                                  if options.balance_pseudo_classes else "mean cross-entropy over the kept labels")
            if data.unlabelled else None,
            "pseudo_label_gated_crops": round(float(np.mean(state.gated)), 4) if state.gated else None,
            "pseudo_label_kept_fraction": round(float(np.mean(state.kept)), 4) if state.kept else None,
            "pseudo_label_tumour_voxels_per_crop": round(float(np.mean(state.kept_tumour)), 1) if state.kept else None,
            "generator": GENERATOR_NOTE,
            "postprocess_and_review": "copied from the initial model's card (tuned for it, not for this site)",
        },
        "site_data": {
            "labelled_folder": str(options.labelled),
            "unlabelled_folder": str(options.unlabelled) if options.unlabelled is not None else None,
            "labelled_cases": len(data.labelled), "unlabelled_cases": len(data.unlabelled),
            "labelled_sha256": site_checksums(data.labelled), "unlabelled_sha256": site_checksums(data.unlabelled),
        },
        "training": {
            "passes": round(state.step * options.batch_size / len(data.epoch_set), 2),
            "passes_over": "unlabelled cases" if data.unlabelled else "labelled cases", "steps": state.step,
            "seconds": round(time.perf_counter() - state.started, 1),
            "mean_step_s": round(float(np.mean(state.step_times)), 3) if state.step_times else None,
            "device": str(state.device), "threads": torch.get_num_threads(), "roi": list(options.roi),
            "batch_size": options.batch_size, "lr": options.lr, "contrast_dropout": options.contrast_dropout,
            "prior_dropout": options.prior_dropout,
        },
        "metrics": {},
        "parameters": count_parameters(state.model),
    }
    card.update(inherited_settings(init_card))
    return save_model_staged(state.teacher, out_dir / MODEL_FILE, card)
