"""`darefuse train-prior`: a lesion-removal prior trained without tumour-free twins (issue 20 §1).

No hospital has the data engine's tumour-free twins, so the generator here learns healthy tissue by
inpainting: a checkerboard of cubes (`block` voxels at 2 mm, random offset and parity per step) is hidden from
its input and it reconstructs the hidden voxels from their surroundings. The loss (L1, the existing masked_l1)
counts only hidden voxels inside the brain and outside the case's `-seg` tumour (dilated by `tumour_margin`
voxels): the generator never learns to paint a tumour. At inference (NetConfig.prior_mode "inpaint",
blocks.inpaint_healthy) every voxel is hidden once in two passes, so a tumour cannot be explained by what
surrounds it and stays in the difference prior.

- Data: folders in the BraTS naming (adapt.scan_site): each case needs its `-seg`; `-tumourfree` files,
  if there, are never read (scan_site's file pattern does not match them).
- The generator starts from scratch (the --init generator was trained with twins); every other weight is
  --init's and stays frozen. The saved model is --init with this generator and prior_mode "inpaint".
- Cancelling (cancel(), Ctrl-C) writes nothing: the run folder is made only when the model is saved, through
  a hidden staging folder.
"""
from __future__ import annotations

import math
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CLASSES
from ..errors import InputError, OptionError
from ..network.blocks import checkerboard
from ..network.losses import masked_l1
from ..network.model import DareFuseNet, count_parameters
from ..network.store import read_card, save_model_staged
from ..phantoms import read_manifest
from ..progress import CancelFn, ProgressFn, check_cancel, format_time_left
from .adapt import SiteCase, SiteDataset, inherited_settings, prepare_site_case, scan_folders, site_checksums
from .dataset import seed_for
from .recorded_command import differing_flags
from .run_options import check_budget, check_device, check_run_folder
from .train import ARCH_FILES, seed_everything, stored_start

MODEL_FILE = ARCH_FILES["darefuse"]
PRIOR_NOTE = ("lesion-removal generator trained without tumour-free twins: inpainting of hidden healthy tissue "
              "(training/prior.py); every other weight is the --init model's, unchanged")


@dataclass
class PriorOptions:
    init: str
    data: Sequence[str]  # folders of labelled cases (BraTS naming, each case with -seg)
    out: str
    minutes: Optional[float] = None
    steps: Optional[int] = None
    seed: int = 0
    block: int = 12  # cube side in 2 mm voxels, at training and (through the card's config) at inference
    tumour_margin: int = 1  # voxels around the -seg tumour left out of the loss (partial volume at 2 mm)
    roi: Tuple[int, int, int] = (64, 80, 64)
    batch_size: int = 2
    lr: float = 2e-3
    contrast_dropout: float = 0.5
    max_cases: Optional[int] = None
    threads: Optional[int] = None
    device: Optional[str] = None

    def command_line(self) -> str:
        parts = ["darefuse", "train-prior", "--init", self.init]
        for folder in self.data:
            parts += ["--data", folder]
        parts += ["--out", self.out, "--seed", str(self.seed), "--block", str(self.block)]
        defaults = PriorOptions(init="", data=(), out="")
        parts += differing_flags(self, defaults, ("minutes", "steps", "tumour_margin", "roi", "batch_size", "lr",
                                                  "contrast_dropout", "max_cases", "threads", "device"))
        return " ".join(shlex.quote(p) for p in parts)


@dataclass
class PriorState:
    model: DareFuseNet  # the whole network; only its generator trains
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    started: float = field(default_factory=time.perf_counter)
    step_times: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)


def train_prior(options: PriorOptions, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                log: Callable[[str], None] = lambda line: None) -> Path:
    """Stages: options checked -> --init model with a fresh inpainting generator -> cases scanned and prepared
    -> steps within the budget -> the model and its card, staged. Returns the saved model's path."""
    check_options(options)
    init_model, origin = stored_start("darefuse", options.init)
    cases = scan_cases(options)
    log(f"train-prior: {len(cases)} cases; command: {options.command_line()}")
    torch.set_num_threads(options.threads or torch.get_num_threads())
    seed_everything(options.seed)
    state = build_prior_state(options, init_model)
    dataset = prepare_cases(options, cases, progress, cancel)
    run_prior_steps(options, dataset, state, progress, cancel, log)
    path = save_prior(options, cases, state, origin)
    log(f"saved {path} after {state.step} steps")
    return path


def check_options(options: PriorOptions) -> None:
    if options.minutes is None and options.steps is None:
        raise OptionError("Give a budget: {minutes} M and/or {steps} N.", "minutes", "steps")
    check_budget(options.minutes, options.steps)
    if options.block < 2:
        raise OptionError(f"{{block}} must be at least 2 voxels, got {options.block}.", "block")
    if options.tumour_margin < 0:
        raise OptionError(f"{{tumour_margin}} must be 0 or more, got {options.tumour_margin}.", "tumour_margin")
    check_device(options.device)
    if not options.data:
        raise OptionError("Give at least one {data} folder.", "data")
    check_run_folder(options.out, MODEL_FILE)


def scan_cases(options: PriorOptions) -> List[SiteCase]:
    """Every labelled case of the folders (the first max_cases); a case without -seg is an InputError."""
    return scan_folders(options.data, labelled=True)[: options.max_cases or None]


def twin_free_network(init_model: DareFuseNet, block: int, seed: int) -> DareFuseNet:
    """--init's network with prior_mode "inpaint" and a freshly initialised generator (seeded)."""
    torch.manual_seed(seed)
    model = DareFuseNet(replace(init_model.config, prior_mode="inpaint", inpaint_block=block))
    kept = {k: v for k, v in init_model.state_dict().items() if not k.startswith("generator.")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith("generator.") for k in missing):
        raise InputError(f"The --init model's weights do not fit DareFuseNet: {unexpected or missing}")
    return model


def build_prior_state(options: PriorOptions, init_model: DareFuseNet) -> PriorState:
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = twin_free_network(init_model, options.block, options.seed).to(device).eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("generator."))
    optimizer = torch.optim.AdamW(model.generator.parameters(), lr=options.lr, weight_decay=1e-4)
    return PriorState(model, optimizer, device)


def prepare_cases(options: PriorOptions, cases: List[SiteCase], progress: Optional[ProgressFn],
                  cancel: Optional[CancelFn]) -> SiteDataset:
    """Each case pre-processed once in memory (images, present contrasts, label, brain); no twin is read."""
    prepared, presents = [], []
    for i, case in enumerate(cases):
        check_cancel(cancel)
        if progress is not None:
            progress(0.0, f"preparing {case.case_id} ({i + 1}/{len(cases)})")
        cached, present = prepare_site_case(case)
        prepared.append(cached)
        presents.append(present)
    return SiteDataset(prepared, presents, options.roi, options.seed, options.contrast_dropout)


def healthy_voxels(label: torch.Tensor, foreground: torch.Tensor, margin: int) -> torch.Tensor:
    """(B, 1, Z, Y, X): brain voxels farther than `margin` voxels (a cube) from any tumour label."""
    tumour = (label > 0).to(foreground.dtype)[:, None]
    if margin > 0:
        tumour = F.max_pool3d(tumour, kernel_size=2 * margin + 1, stride=1, padding=margin)
    return foreground * (1.0 - tumour)


def inpainting_loss(generator: torch.nn.Module, batch: dict, block: int, margin: int, rng: np.random.RandomState
                    ) -> torch.Tensor:
    """L1 between the generator's fill of a randomly placed half-checkerboard and the hidden input, over the
    hidden healthy voxels of the given contrasts only."""
    x, present = batch["image"], batch["present"]
    hidden = checkerboard(x.shape[2:], block, int(rng.randint(2)), [int(v) for v in rng.randint(block, size=3)], like=x)
    reconstruction = generator(x * (1.0 - hidden), present, visible=1.0 - hidden)
    weight = hidden * healthy_voxels(batch["label"], batch["foreground"], margin)
    return masked_l1(reconstruction, x, present, weight)


def _batch(dataset: SiteDataset, options: PriorOptions, step: int) -> dict:
    """batch_size crops; a pass over the cases in a seeded order per epoch."""
    n, size = len(dataset), options.batch_size
    items = []
    for k in range(step * size, (step + 1) * size):
        epoch, position = divmod(k, n)
        dataset.set_epoch(epoch)
        items.append(dataset[int(np.random.RandomState(seed_for(options.seed, epoch)).permutation(n)[position])])
    return torch.utils.data.default_collate(items)


def run_prior_steps(options: PriorOptions, dataset: SiteDataset, state: PriorState, progress: Optional[ProgressFn],
                    cancel: Optional[CancelFn], log) -> None:
    """Steps until --steps or --minutes is spent (whichever first); the learning rate follows a cosine over the
    budget; cancel() is checked before each step."""
    budget_s = options.minutes * 60.0 if options.minutes else None
    state.started = time.perf_counter()
    generator = state.model.generator.train()
    while True:
        check_cancel(cancel)
        elapsed = time.perf_counter() - state.started
        fraction = max(state.step / options.steps if options.steps else 0.0, elapsed / budget_s if budget_s else 0.0)
        for group in state.optimizer.param_groups:
            group["lr"] = options.lr * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))
        t0 = time.perf_counter()
        batch = {k: v.to(state.device) for k, v in _batch(dataset, options, state.step).items()}
        loss = inpainting_loss(generator, batch, options.block, options.tumour_margin,
                               np.random.RandomState(seed_for(options.seed, state.step, 2)))
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.step += 1
        state.losses.append(float(loss.detach()))
        state.step_times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - state.started
        fraction = max(state.step / options.steps if options.steps else 0.0, elapsed / budget_s if budget_s else 0.0)
        message = f"step {state.step}, inpainting L1 {np.mean(state.losses[-20:]):.4f}"
        if progress is not None:
            left = format_time_left(elapsed, fraction)
            progress(min(fraction, 1.0), message + (f", {left}" if left else ""))
        if state.step % 50 == 0:
            log(message)
        mean_step = float(np.mean(state.step_times[-20:]))
        if (options.steps and state.step >= options.steps) or (budget_s and elapsed + mean_step > budget_s):
            log(f"stopped after {state.step} steps, {elapsed:.0f} s")
            return


def cases_for_card(cases: List[SiteCase], folders: Sequence[str]) -> Tuple[dict, List[int]]:
    """Classes (from manifest.csv where a folder has one) and engine seeds of the cases, for the card."""
    rows = {}
    for folder in folders:
        manifest = Path(folder) / "manifest.csv"
        if manifest.is_file():
            rows.update({r["case_id"]: r for r in read_manifest(manifest)})
    counts = Counter(CLASSES[c.class_index] if c.class_index >= 0 else "unknown" for c in cases)
    seeds = sorted(int(rows[c.case_id]["seed"]) for c in cases if c.case_id in rows and rows[c.case_id].get("seed"))
    return dict(counts), seeds


def prior_card(options: PriorOptions, cases: List[SiteCase], state: PriorState, origin: dict) -> dict:
    init_card = read_card(options.init)
    classes, seeds = cases_for_card(cases, options.data)
    card = {
        "name": "DARE-FUSE", "version": Path(options.out).name, "training_command": options.command_line(),
        "seed": options.seed, "initialised_from": origin, "weights": PRIOR_NOTE,
        # The network around the generator is --init's: its training data (and held-out refusals) still apply.
        "data_recipe": init_card.get("data_recipe", {}),
        "prior": {
            "kind": "inpainting", "tumour_free_twins_used": False,
            "method": "a checkerboard of cubes hidden from the generator's input; L1 over hidden brain voxels outside "
                      "the -seg tumour; at inference two passes hide every voxel once",
            "block_voxels": options.block, "block_mm": options.block * 2.0, "tumour_margin_voxels": options.tumour_margin,
            "generator_start": "freshly initialised (seeded), not the --init generator (which was trained with twins)",
            "rest_of_network": "the --init model's weights, frozen (trained by --init with its own prior)",
            "trained_on": {"folders": [str(f) for f in options.data], "cases": len(cases), "classes": classes,
                           "training_seeds": seeds, "sha256": site_checksums(cases)},
        },
        "training": {
            "steps": state.step, "seconds": round(time.perf_counter() - state.started, 1),
            "mean_step_s": round(float(np.mean(state.step_times)), 3) if state.step_times else None,
            "final_inpainting_l1": round(float(np.mean(state.losses[-50:])), 5) if state.losses else None,
            "device": str(state.device), "threads": torch.get_num_threads(), "roi": list(options.roi),
            "batch_size": options.batch_size, "lr": options.lr, "contrast_dropout": options.contrast_dropout,
        },
        "metrics": {}, "parameters": count_parameters(state.model),
    }
    card.update(inherited_settings(init_card))
    return card


def save_prior(options: PriorOptions, cases: List[SiteCase], state: PriorState, origin: dict) -> Path:
    """The model and its card, written into a staging folder and moved into place when complete."""
    out_dir = Path(options.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_model_staged(state.model, out_dir / MODEL_FILE, prior_card(options, cases, state, origin))
