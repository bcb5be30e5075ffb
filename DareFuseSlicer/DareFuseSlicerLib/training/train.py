"""`darefuse train`: DareFuseNet (or the SegResNet baseline) on engine cases.

- Deterministic for a seed with --epochs (per-sample augmentation seeds, seeded init and sampler) on the
  CPU. On CUDA two kernels have no deterministic variant (the cross-entropy's forward and memory-efficient
  attention's backward; PyTorch warns once each), so GPU runs can differ in the last digits. With
  --minutes the number of steps depends on the machine's speed, and so does the learning-rate schedule.
- Resumable: `checkpoint.pt` (a torch state dict, weights_only-loadable) after every epoch and on stopping.
- Fine-tuning: --init MODEL starts from a stored model's weights (its SHA256 checked against its card) with a
  fresh optimiser and schedule; the new card names the model it started from.
- Limited labels: --labelled-fraction F keeps segmentations and tumour-free images for F of the cases;
  the rest keep only their class and are used through a mean teacher (EMA weights, consistency loss).
- Distributed: the same command under `torchrun --nproc_per_node N` runs DDP (gloo on CPU, nccl on GPU).
- Precision: --precision bf16 runs forward passes under bfloat16 autocast (losses, optimiser and the saved
  weights stay float32). On CPUs with AMX or AVX512-BF16 a step takes about half the time (measured 4.5 ->
  2.3 s on one thread of this machine's Xeon); on a GPU it is the usual mixed precision.
- Loading: --loader-workers N prepares the augmented crops in N processes (a GPU otherwise waits on them);
  the crops are the same for any N, because each sample's augmentation is seeded by (seed, epoch, index).
- Clinical mixture: --clinical DIR adds the engine's whole-head cases, each prepared once by the pipeline's own
  front end (brain mask, registration, thick-slice contrasts resampled onto the reference grid); --clinical-ratio
  R makes them R of every epoch's crops; --clinical-val DIR is scored apart (val_clinical_* columns). Without
  --clinical a run is the BraTS-style run it always was.
- Output: metrics.csv (one row per epoch), the EMA model as <arch>.safetensors + card (every training and
  validation seed, and those of the model it started from, for evaluate's held-out check).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import math
import multiprocessing
import os
import random
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..constants import CLASSES, REGIONS
from ..errors import InputError, OptionError
from ..metrics import region_dice
from ..network.losses import DareFuseLoss, consistency_loss, kl_annealing
from ..network.model import DareFuseNet, count_parameters
from ..network.store import load_model, save_model
from .baseline import SegResNetBaseline
from .dataset import MixedSampler, TrainDataset, brainmask_recipe, build_cache, is_clinical, labelled_subset, load_cases, read_rows, seed_for
from .frontend_eval import card_seeds, seed_field
from .run_options import check_budget, check_device

CHECKPOINT = "checkpoint.pt"
#: The class head's weights (DareFuseNet.classifier): what --class-head-only trains.
CLASS_HEAD = "classifier."
ARCH_FILES = {"darefuse": "darefuse.safetensors", "segresnet": "segresnet.safetensors"}
ARCH_CLASSES = {"darefuse": DareFuseNet, "segresnet": SegResNetBaseline}  # each built with its default settings


@dataclass
class TrainOptions:
    data: str
    out: str
    val: Optional[str] = None
    epochs: Optional[int] = None
    minutes: Optional[float] = None
    seed: int = 0
    labelled_fraction: float = 1.0
    resume: bool = False
    init: Optional[str] = None  # a stored .safetensors model to start from (fine-tuning)
    arch: str = "darefuse"
    device: Optional[str] = None
    # Crops of 64x80x64 (2 mm) in pairs: a pair keeps every convolution on oneDNN's fast path (PyTorch uses
    # its slow native 3-D convolution for batch 1 at small sizes), and the crop holds most of a brain box.
    # The class is the mean over the whole box the pipeline feeds, so the class head learns it best from
    # whole boxes: --roi 80 96 80 (2.3x the voxels; the bundled model was finished so, on a GPU).
    roi: Tuple[int, int, int] = (64, 80, 64)
    batch_size: int = 2
    lr: float = 2e-3
    cache: Optional[str] = None
    threads: Optional[int] = None
    contrast_dropout: float = 0.5
    prior_dropout: float = 0.2
    ema_decay: float = 0.99
    consistency: float = 1.0
    kl_anneal_epochs: int = 5
    max_cases: Optional[int] = None  # use only the first N cases (tests, quick checks)
    val_cases: int = 12  # validation cases scored per epoch (a quick check; `darefuse evaluate` does the rest)
    loader_workers: int = 0  # processes preparing the augmented crops (0: in the training process)
    precision: str = "fp32"  # or "bf16": forward passes under bfloat16 autocast
    progress: bool = True
    clinical: Optional[str] = None  # a folder of clinical (whole-head) engine cases mixed into the training
    clinical_ratio: Optional[float] = None  # their share of each epoch's crops (default 0.5 with --clinical)
    clinical_val: Optional[str] = None  # clinical validation folder, scored apart (val_clinical_*)
    class_head_only: bool = False  # train the class head alone; every other weight stays --init's, bit for bit

    @property
    def mix_ratio(self) -> float:
        return 0.0 if self.clinical is None else (0.5 if self.clinical_ratio is None else self.clinical_ratio)

    def command_line(self) -> str:
        """The equivalent `darefuse train` command (recorded in the model card)."""
        parts = ["darefuse", "train", "--data", self.data, "--out", self.out]
        defaults = TrainOptions(data="", out="")
        for name in ("val", "epochs", "minutes", "seed", "labelled_fraction", "init", "arch", "device", "roi", "batch_size",
                     "lr", "cache", "threads", "contrast_dropout", "prior_dropout", "max_cases", "val_cases", "precision",
                     "loader_workers", "clinical", "clinical_ratio", "clinical_val", "class_head_only"):
            value = getattr(self, name)
            if value is not None and value != getattr(defaults, name) or name == "seed":
                flag = "--" + name.replace("_", "-")
                if isinstance(value, bool):
                    parts += [flag]
                    continue
                parts += [flag] + ([str(v) for v in value] if isinstance(value, (tuple, list)) else [str(value)])
        return " ".join(shlex.quote(p) for p in parts)


# -- distributed set-up ---------------------------------------------------------------------------------
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def setup_runtime(options: TrainOptions) -> Runtime:
    name = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    if name == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; it must be set before its first call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if name == "cuda" else "gloo")
    device = torch.device(name)
    if name == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    # The CPU is shared between processes: split the threads (2 cores here by default).
    threads = options.threads or max(1, (os.cpu_count() or 2) // world)
    torch.set_num_threads(threads)
    return Runtime(device=device, rank=rank, world=world)


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str):
    """The forward passes' precision context: bfloat16 autocast for "bf16", a no-op for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _float32(out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Outputs of an autocast forward pass in float32, so that every loss is computed in full precision."""
    return {k: v.float() for k, v in out.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # warn_only: a few CPU kernels have no deterministic variant flag, yet are deterministic on the CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


# -- data -----------------------------------------------------------------------------------------------
def cache_dir_for(folder: str, root: Optional[str]) -> Path:
    """Where the pre-processed cases of `folder` live: FOLDER/.darefuse-cache, or under a given root one
    sub-folder per data folder (its name and a hash of its absolute path)."""
    if root is None:
        return Path(folder) / ".darefuse-cache"
    resolved = str(Path(folder).resolve())
    return Path(root) / f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def _build_part(folder: str, cache_dir: str, rows: List[dict]) -> List[str]:
    return [str(p) for p in build_cache(folder, cache_dir, rows=rows)]


def cached_cases(folder: str, cache_dir: Path, runtime: Runtime, max_cases: Optional[int], workers: int, log) -> list:
    """Pre-process `folder` into the cache (split across DDP ranks, or across `workers` processes) and load it."""
    rows = read_rows(folder)[: max_cases or None]
    started = time.perf_counter()
    if runtime.world > 1:
        _build_part(folder, str(cache_dir), rows[runtime.rank :: runtime.world])
        runtime.barrier()
    elif workers > 1 and len(rows) > 1:
        # Spawned, not forked: a child forked from a process whose torch thread pool has run deadlocks in the
        # brain-mask network of a clinical case (OpenMP's state does not survive fork).
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_build_part, [folder] * workers, [str(cache_dir)] * workers, [rows[i::workers] for i in range(workers)]))
    paths = build_cache(folder, cache_dir, rows=rows)  # all fresh now: only checks keys
    log(f"cache {cache_dir}: {len(paths)} cases ready in {time.perf_counter() - started:.0f} s")
    return load_cases(paths)


# -- models ---------------------------------------------------------------------------------------------
def build_model(arch: str) -> torch.nn.Module:
    if arch not in ARCH_CLASSES:
        raise OptionError(f"{{arch}} must be darefuse or segresnet, got {arch!r}.", "arch")
    return ARCH_CLASSES[arch]()


def stored_start(arch: str, init: str) -> Tuple[torch.nn.Module, dict]:
    """--init: the stored model (SHA256 checked against its card, weights fitting the card's architecture)
    and its provenance for the new card."""
    model = load_model(init)
    expected = ARCH_CLASSES[arch]
    if not isinstance(model, expected):
        raise OptionError(f"{{init}} {init} is a {type(model).__name__}, not a {expected.__name__} ({{arch}} {arch}).",
                          "init", "arch")
    if getattr(getattr(model, "config", None), "prior_mode", None) == "kle":
        # Training crops hold part of a brain, which the whole-brain expansion was not fitted on.
        raise OptionError(f"{{init}} {init} carries a KLE prior (`darefuse fit-kle`), which is computed on whole brains: "
                          "it can be neither trained on crops nor fitted again. Start from the model it was fitted "
                          f"from ({model.card.get('initialised_from', {}).get('weights', 'its card: initialised_from')}), "
                          "then run fit-kle on the result.", "init")
    card = model.card
    del model.card
    seen = card_seeds(card)  # its own seeds and those of the models it came from: evaluate refuses them all
    origin = {"weights": Path(init).name, "sha256": card["sha256"], "version": card.get("version"),
              "steps": card.get("training", {}).get("steps"), "training_command": card.get("training_command"),
              "training_seeds": seed_field(seen["training"]), "validation_seeds": seed_field(seen["validation"])}
    return model.train(), origin


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The mean teacher follows the trained weights; frozen ones stay exact (blending two equal floats can move
    their last bit)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:
            e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def train_mode(model: torch.nn.Module, class_head_only: bool = False) -> None:
    """Training mode; with the class head alone, the rest stays in eval mode: the refiner's batch norms would
    otherwise move their running statistics, and with them the segmentation."""
    model.train()
    if class_head_only:
        for name, module in model.named_children():
            if name != CLASS_HEAD.rstrip("."):
                module.eval()


def _select(out: Dict[str, torch.Tensor], mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v[mask] for k, v in out.items()}


@torch.no_grad()
def validate(model: torch.nn.Module, cases, device: torch.device) -> Dict[str, float]:
    """Dice of WT/TC/ET on the 2 mm grid and class accuracy over whole cached cases (a quick check per
    epoch; `darefuse evaluate` measures at the BraTS grid)."""
    model.eval()
    dice = {name: [] for name in REGIONS}
    correct = []
    uncertainty_wrong, uncertainty_right = [], []
    for case in cases:
        x = torch.from_numpy(case.image.astype(np.float32))[None].to(device)
        present = torch.from_numpy(np.asarray(case.present, np.float32))[None].to(device)  # as the front end left them
        out = model(x, present)
        alpha = out["evidence"] + 1.0
        pred = alpha.argmax(1)[0].cpu().numpy()
        truth = case.label
        for name, value in zip(REGIONS, region_dice(pred, truth, empty=None)):
            if value is not None:  # a region absent from both is left out of the mean
                dice[name].append(value)
        u = DareFuseNet.uncertainty(out)[0, 0].cpu().numpy()
        wrong = pred != truth
        if wrong.any():
            uncertainty_wrong.append(float(u[wrong].mean()))
        uncertainty_right.append(float(u[~wrong].mean()))
        if "class_evidence" in out:
            correct.append(int(out["class_evidence"].mean(dim=(2, 3, 4)).argmax(1).item() == case.class_index))
    metrics = {f"val_dice_{k.lower()}": float(np.mean(v)) if v else float("nan") for k, v in dice.items()}
    metrics["val_dice_mean"] = float(np.nanmean([metrics[f"val_dice_{k.lower()}"] for k in REGIONS]))
    metrics["val_class_accuracy"] = float(np.mean(correct)) if correct else float("nan")
    metrics["val_uncertainty_wrong"] = float(np.mean(uncertainty_wrong)) if uncertainty_wrong else float("nan")
    metrics["val_uncertainty_right"] = float(np.mean(uncertainty_right))
    return metrics


def _schedule(base_lr: float, step: int, progress: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 5 % over the run's progress (epochs or minutes, whichever ends first)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# -- the run --------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """The cached cases (--data's, then --clinical's), which of them keep their labels, and the validation
    cases of --val and --clinical-val (rank 0 only)."""

    cases: list
    flags: List[bool]
    val_cases: list
    clinical_cases: int = 0  # how many of `cases`, at the end, are --clinical's
    clinical_val_cases: list = field(default_factory=list)


@dataclass
class TrainState:
    """The run as it goes: the networks, the optimiser and the counters a checkpoint keeps."""

    model: torch.nn.Module
    ema: torch.nn.Module  # the mean teacher: the weights that are saved
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module = field(default_factory=DareFuseLoss)
    start_epoch: int = 0
    step: int = 0
    elapsed_before: float = 0.0  # seconds of training before a resume
    history: List[dict] = field(default_factory=list)  # one metrics row per epoch
    epoch: int = 0
    step_times: List[float] = field(default_factory=list)
    started: float = 0.0  # time.perf_counter() when this process's training loop started
    stop: bool = False  # the time budget is spent

    def elapsed(self, now: Optional[float] = None) -> float:
        return self.elapsed_before + ((time.perf_counter() if now is None else now) - self.started)


@dataclass
class Batches:
    """The augmented crops, epoch by epoch, and the run's budget in epochs and seconds."""

    dataset: TrainDataset
    sampler: torch.utils.data.Sampler  # DistributedSampler, or MixedSampler with --clinical
    loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    budget_s: Optional[float]
    total_epochs: int


def train(options: TrainOptions) -> Optional[Path]:
    """Run the training; returns the saved model's path (on rank 0; None on other ranks).

    The stages: options checked -> runtime -> TrainData -> TrainState (new, fine-tuned or resumed) ->
    Batches -> epochs (steps, then metrics and a checkpoint) -> the EMA model and its card."""
    check_options(options)
    # Checked before the run folder exists, so a refused --init leaves nothing behind.
    start = stored_start(options.arch, options.init) if options.init is not None else None
    runtime = setup_runtime(options)
    out_dir = Path(options.out)
    if runtime.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    runtime.barrier()
    log = run_log(out_dir / "train.log", runtime, options.progress)

    seed_everything(options.seed)
    data = load_data(options, runtime, log)
    torch.manual_seed(options.seed)
    state = build_state(options, runtime, start[0] if start else None, out_dir / CHECKPOINT, log)
    net = state.model
    if runtime.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    batches = make_batches(options, runtime, data.cases, data.clinical_cases)
    log(
        f"{options.arch}: {count_parameters(state.model)} parameters; {len(data.cases)} cases "
        f"({sum(data.flags)} labelled{mixture_note(options, data)}), "
        f"{len(data.val_cases) + len(data.clinical_val_cases)} validation; {runtime.world} process(es) on "
        f"{runtime.device}, {torch.get_num_threads()} threads each; roi {options.roi}; command: {options.command_line()}"
    )
    bar = None
    if runtime.main and options.progress:
        from tqdm import tqdm

        bar = tqdm(total=batches.steps_per_epoch * options.epochs if options.epochs else None, initial=state.step,
                   unit="step", dynamic_ncols=True)

    state.started = time.perf_counter()
    state.epoch = state.start_epoch
    last_metrics: Dict[str, float] = state.history[-1] if state.history else {}
    while state.epoch < batches.total_epochs and not state.stop:
        sums, count = run_epoch(options, runtime, net, state, batches, bar)
        row = end_epoch(options, runtime, state, data, sums, count, out_dir, log)
        last_metrics = row if row is not None else last_metrics
        runtime.barrier()
        state.epoch += 1

    if bar is not None:
        bar.close()
    result = None
    if runtime.main:
        result = save_result(options, runtime, state, data, start[1] if start else None, last_metrics, out_dir)
        log(f"saved {result}")
    runtime.barrier()
    if runtime.world > 1:
        dist.destroy_process_group()
    return result


def mixture_note(options: TrainOptions, data: TrainData) -> str:
    return f"; {data.clinical_cases} of them clinical, drawn for {options.mix_ratio} of the crops" if data.clinical_cases else ""


def check_options(options: TrainOptions) -> None:
    """OptionError for options that cannot work, before anything but manifests is read, and before anything
    is written."""
    if options.epochs is None and options.minutes is None:
        raise OptionError("Give a budget: {epochs} N and/or {minutes} M.", "epochs", "minutes")
    if options.epochs is not None and options.epochs < 1:
        raise OptionError(f"{{epochs}} must be at least 1, got {options.epochs}.", "epochs")
    check_budget(options.minutes, None)
    if options.arch not in ARCH_FILES:
        raise OptionError(f"{{arch}} must be darefuse or segresnet, got {options.arch!r}.", "arch")
    if options.init is not None and options.resume:
        raise OptionError("{init} and {resume} exclude each other: {resume} continues OUT/checkpoint.pt.", "init", "resume")
    if options.class_head_only and (options.init is None or options.arch != "darefuse"):
        raise OptionError("{class_head_only} trains the class head of a stored DareFuse model: give it with {init}.",
                          "class_head_only", "init")
    if options.loader_workers < 0:
        raise OptionError(f"{{loader_workers}} must be 0 or more, got {options.loader_workers}.", "loader_workers")
    if options.precision not in PRECISIONS:
        raise OptionError(f"{{precision}} must be fp32 or bf16, got {options.precision!r}.", "precision")
    if options.clinical_ratio is not None and options.clinical is None:
        raise OptionError("{clinical_ratio} needs {clinical}: the folder of clinical cases to mix in.",
                          "clinical_ratio", "clinical")
    if options.clinical is not None and not 0.0 < options.mix_ratio <= 1.0:
        raise OptionError(f"{{clinical_ratio}} must be in (0, 1], got {options.mix_ratio}.", "clinical_ratio")
    for folder, option in ((options.clinical, "clinical"), (options.clinical_val, "clinical_val")):
        if folder is not None:
            require_clinical(folder, option)


def run_log(path: Path, runtime: Runtime, progress_bar: bool):
    """log(message): a time-stamped line in train.log (rank 0), also printed when there is no progress bar."""

    def log(message: str) -> None:
        if runtime.main:
            stamp = time.strftime("%H:%M:%S")
            with open(path, "a") as fh:
                fh.write(f"{stamp} {message}\n")
            if not progress_bar:
                print(message, flush=True)

    return log


def load_data(options: TrainOptions, runtime: Runtime, log) -> TrainData:
    """The training cases from the cache (labels kept for the labelled fraction) and the validation cases."""
    # Pre-processing is per case: one process per core (DDP ranks split the cases instead).
    workers = 1 if runtime.world > 1 else max(1, os.cpu_count() or 1)
    cases = cached_cases(options.data, cache_dir_for(options.data, options.cache), runtime, options.max_cases, workers, log)
    clinical = []
    if options.clinical is not None:
        clinical = cached_cases(options.clinical, cache_dir_for(options.clinical, options.cache), runtime,
                                options.max_cases, workers, log)
    cases += clinical
    flags = labelled_subset(cases, options.labelled_fraction, options.seed)
    for case, flag in zip(cases, flags):
        case.labelled = flag
    val_cases, clinical_val_cases = [], []
    if runtime.main:
        single = Runtime(runtime.device)
        if options.val:
            val_cases = cached_cases(options.val, cache_dir_for(options.val, options.cache), single, options.val_cases,
                                     workers, log)
        if options.clinical_val:
            clinical_val_cases = cached_cases(options.clinical_val, cache_dir_for(options.clinical_val, options.cache),
                                              single, options.val_cases, workers, log)
    runtime.barrier()
    return TrainData(cases, flags, val_cases, len(clinical), clinical_val_cases)


def require_clinical(folder: str, option: str) -> None:
    """OptionError unless every case of `folder` is a clinical acquisition (the mixture's ratio counts them)."""
    other = [r["case_id"] for r in read_rows(folder) if not is_clinical(r)]
    if other:
        raise OptionError(f"{{{option}}} {folder}: {len(other)} case(s) are not clinical acquisitions (first: {other[0]}); "
                          "give the folder written by `darefuse phantoms --acquisition clinical`.", option)


def build_state(options: TrainOptions, runtime: Runtime, start: Optional[torch.nn.Module], checkpoint_path: Path,
                log) -> TrainState:
    """A new model (or the --init one), its EMA copy and the optimiser; restored from the checkpoint on resume."""
    model = (start if start is not None else build_model(options.arch)).to(runtime.device)
    if options.class_head_only:  # the segmentation, its uncertainty and the prior stay as --init made them
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(CLASS_HEAD))
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=1e-4)
    state = TrainState(model, ema, optimizer)
    if options.resume:
        if not checkpoint_path.is_file():
            raise OptionError(f"{{resume}}: no {CHECKPOINT} in {checkpoint_path.parent} to resume from.", "resume")
        saved = torch.load(checkpoint_path, map_location=runtime.device, weights_only=True)
        if saved["arch"] != options.arch:
            raise OptionError(f"{{resume}}: {checkpoint_path} is a {saved['arch']} run, not {options.arch}.", "resume")
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        state.start_epoch, state.step, state.elapsed_before = saved["next_epoch"], saved["step"], saved["elapsed"]
        state.history = list(saved["history"])
        log(f"resumed from {checkpoint_path} at epoch {state.start_epoch}, step {state.step}")
    return state


def make_batches(options: TrainOptions, runtime: Runtime, cases: list, clinical_cases: int = 0) -> Batches:
    """The dataset of augmented crops, its distributed sampler and loader, and the budget. The last
    `clinical_cases` cases are --clinical's: drawn for --clinical-ratio of every epoch's crops."""
    dataset = TrainDataset(cases, options.roi, options.seed, options.contrast_dropout)
    if clinical_cases:
        sampler = MixedSampler(len(cases) - clinical_cases, clinical_cases, options.mix_ratio, options.seed,
                               num_replicas=runtime.world, rank=runtime.rank)
    else:  # a BraTS-style run: the sampler it always had
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=runtime.world, rank=runtime.rank, shuffle=True, seed=options.seed, drop_last=True
        )
    # Workers are started afresh each epoch (not persistent), so they see the dataset's new epoch.
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, sampler=sampler,
                                         num_workers=options.loader_workers, drop_last=True)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise InputError(f"{options.data}: {len(cases)} cases are too few for {runtime.world} process(es) x batch {options.batch_size}.")
    budget_s = options.minutes * 60.0 if options.minutes else None
    return Batches(dataset, sampler, loader, steps_per_epoch, budget_s, options.epochs or 10**6)


def run_epoch(options: TrainOptions, runtime: Runtime, net: torch.nn.Module, state: TrainState, batches: Batches,
              bar) -> Tuple[Dict[str, float], int]:
    """One epoch's steps (fewer when the time budget runs out); returns the summed loss terms and the count."""
    batches.sampler.set_epoch(state.epoch)
    batches.dataset.set_epoch(state.epoch)
    train_mode(state.model, options.class_head_only)
    sums: Dict[str, float] = {}
    count = 0
    kl_weight = kl_annealing(state.epoch, options.kl_anneal_epochs)
    for batch in batches.loader:
        t0 = time.perf_counter()
        elapsed = state.elapsed(t0)
        progress = max((state.epoch + count / batches.steps_per_epoch) / batches.total_epochs,
                       elapsed / batches.budget_s if batches.budget_s else 0.0)
        for group in state.optimizer.param_groups:
            group["lr"] = _schedule(options.lr, state.step, progress)
        terms = train_step(options, runtime, net, state, batch, progress, kl_weight)
        state.step += 1
        count += 1
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        state.step_times.append(time.perf_counter() - t0)

        elapsed = state.elapsed()
        if batches.budget_s is not None:
            # Stop when the next step would overrun (rank 0 decides, every rank follows).
            mean_step = float(np.mean(state.step_times[-20:]))
            flag = torch.tensor([1.0 if elapsed + mean_step > batches.budget_s else 0.0])
            if runtime.world > 1:
                dist.broadcast(flag, 0)
            state.stop = bool(flag.item())
        if bar is not None:
            if batches.budget_s is not None:
                left = batches.budget_s - elapsed
            else:
                left = float(np.mean(state.step_times[-20:])) * (batches.steps_per_epoch * batches.total_epochs - state.step)
            bar.set_postfix(epoch=state.epoch, loss=f"{sums['total'] / count:.3f}", left=_format_seconds(left))
            bar.update(1)
        if state.stop:
            break
    return sums, count


def train_step(options: TrainOptions, runtime: Runtime, net: torch.nn.Module, state: TrainState, batch: dict,
               progress: float, kl_weight: float) -> Dict[str, torch.Tensor]:
    """One optimiser step on a batch (with the mean teacher's consistency term when labels are limited);
    returns the loss terms."""
    step, device = state.step, runtime.device
    x = batch["image"].to(device)
    present = batch["present"].to(device)
    label = batch["label"].to(device)
    free = batch["tumour_free"].to(device)
    class_index = batch["class_index"].to(device)
    labelled = batch["labelled"].to(device)
    # Every random draw of a step is seeded by (seed, step, rank): a resumed run continues exactly.
    torch.manual_seed(seed_for(options.seed, step, runtime.rank))
    # Prior dropout (same draw on every rank): keeps the "without the prior" ablation in distribution.
    use_prior = np.random.RandomState(seed_for(options.seed, state.epoch, step)).rand() >= options.prior_dropout
    with autocast(device, options.precision):
        out = _float32(net(x, present, use_prior=bool(use_prior)))
    terms = state.loss_fn(out, x, present, label, free, class_index, labelled, kl_weight)
    total = terms["total"]
    if options.labelled_fraction < 1.0:  # the mean teacher
        unlabelled = ~labelled.bool()
        # Ramp the consistency weight up over the first third of the run (Tarvainen & Valpola).
        ramp = math.exp(-5.0 * (1.0 - min(progress / 0.3, 1.0)) ** 2)
        if unlabelled.any():
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed_for(options.seed, step)))
            noisy = (x + 0.1 * noise.to(x.device)) * present[:, :, None, None, None]
            with torch.no_grad(), autocast(device, options.precision):
                teacher_out = _float32(state.ema(noisy, present, use_prior=bool(use_prior)))
            terms["consistency"] = consistency_loss(_select(out, unlabelled), _select(teacher_out, unlabelled))
        else:
            terms["consistency"] = total * 0.0
        total = total + options.consistency * ramp * terms["consistency"]
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in state.model.parameters() if p.requires_grad], 12.0)
    state.optimizer.step()
    update_ema(state.ema, state.model, min(options.ema_decay, (1.0 + step) / (10.0 + step)))
    return terms


def end_epoch(options: TrainOptions, runtime: Runtime, state: TrainState, data: TrainData, sums: Dict[str, float],
              count: int, out_dir: Path, log) -> Optional[dict]:
    """The epoch's metrics row (validation on rank 0), metrics.csv and the checkpoint; the row on rank 0."""
    row = {"epoch": state.epoch, "steps": state.step, "elapsed_s": round(state.elapsed(), 1),
           "lr": state.optimizer.param_groups[0]["lr"], "step_s": round(float(np.mean(state.step_times[-count:])), 3)}
    row.update({f"train_{k}": round(v / max(count, 1), 5) for k, v in sums.items()})
    if not runtime.main:
        return None
    if data.val_cases:
        row.update({k: round(v, 4) for k, v in validate(state.ema, data.val_cases, runtime.device).items()})
    if data.clinical_val_cases:
        row.update({"val_clinical_" + k[len("val_"):]: round(v, 4)
                    for k, v in validate(state.ema, data.clinical_val_cases, runtime.device).items()})
    state.history.append(row)
    _write_csv(out_dir / "metrics.csv", state.history)
    checkpoint = {
        "arch": options.arch, "model": state.model.state_dict(), "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(), "next_epoch": state.epoch + 1, "step": state.step,
        "elapsed": state.elapsed(), "history": state.history,
    }
    checkpoint_path = out_dir / CHECKPOINT
    tmp = checkpoint_path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(checkpoint_path)
    log(" ".join(f"{k}={v}" for k, v in row.items()))
    return row


def save_result(options: TrainOptions, runtime: Runtime, state: TrainState, data: TrainData,
                initialised_from: Optional[dict], last_metrics: Dict[str, float], out_dir: Path) -> Path:
    """The EMA model as <arch>.safetensors with its card (rank 0)."""
    result = out_dir / ARCH_FILES[options.arch]
    step_times = state.step_times
    card = {
        "name": "DARE-FUSE" if options.arch == "darefuse" else "SegResNet baseline",
        "version": out_dir.name,
        "training_command": options.command_line(),
        "launcher": f"torchrun --nproc_per_node {runtime.world}" if runtime.world > 1 else "single process",
        "seed": options.seed,
        "initialised_from": initialised_from,
        "weights": "exponential moving average of the trained weights (the mean teacher's weights)",
        "data_recipe": _data_recipe(options, data),
        "training": {
            "epochs": state.epoch - state.start_epoch + (state.start_epoch if options.resume else 0),
            "steps": state.step,
            "seconds": round(state.elapsed(), 1),
            "mean_step_s": round(float(np.mean(step_times)), 3) if step_times else None,
            "device": str(runtime.device), "processes": runtime.world, "threads": torch.get_num_threads(),
            "roi": list(options.roi), "batch_size": options.batch_size, "lr": options.lr,
            "contrast_dropout": options.contrast_dropout, "prior_dropout": options.prior_dropout,
            "labelled_fraction": options.labelled_fraction, "mean_teacher": options.labelled_fraction < 1.0,
            "precision": options.precision, "loader_workers": options.loader_workers,
            "trained_weights": ("the class head alone (DareFuseNet.classifier); every other weight is --init's, "
                                "bit for bit" if options.class_head_only else "all"),
        },
        "metrics": {"validation_2mm": {k: v for k, v in last_metrics.items() if k.startswith("val_")}},
        "parameters": count_parameters(state.model),
    }
    save_model(state.ema, result, card)
    return result


def _set_recipe(rows: List[dict]) -> dict:
    """One data set as a card records it: case count, seeds, classes and grids."""
    grids: Dict[str, int] = {}
    for r in rows:
        grids[r["grid"]] = grids.get(r["grid"], 0) + 1
    return {"cases": len(rows), "seeds": seed_field(int(r["seed"]) for r in rows),
            "classes": {name: sum(1 for r in rows if r["tumour_class"] == name) for name in CLASSES}, "grids": grids}


def _validation_seeds(folder: Optional[str], val_cases: int) -> list:
    return seed_field(int(r["seed"]) for r in read_rows(folder)[:val_cases]) if folder else []


def _data_recipe(options: TrainOptions, data: TrainData) -> dict:
    """The card's data recipe: --data's set as it always was, its validation seeds (evaluate refuses held-out
    cases among them), and with --clinical / --clinical-val the clinical set, its ratio and seeds."""
    brats = len(data.cases) - data.clinical_cases
    recipe = {
        "generator": "DareFuseSlicerLib.phantoms.generate (synthetic cases on MNI152 2009a anatomy)",
        "train_folder": str(options.data), **_set_recipe(read_rows(options.data)[: options.max_cases or None]),
        "labelled_cases": int(sum(data.flags[:brats])),
        "validation_folder": str(options.val) if options.val else None,
        "preprocessing": "pipeline.preprocess.prepare, 2 mm isotropic brain box, z-score in the brain",
    }
    if options.val:
        recipe["validation_seeds"] = _validation_seeds(options.val, options.val_cases)
    if options.clinical or options.clinical_val:
        clinical = {"folder": options.clinical, "ratio": options.mix_ratio}
        if options.clinical:
            clinical.update(_set_recipe(read_rows(options.clinical)[: options.max_cases or None]))
            clinical["labelled_cases"] = int(sum(data.flags[brats:]))
        clinical.update({
            "validation_folder": options.clinical_val,
            "validation_seeds": _validation_seeds(options.clinical_val, options.val_cases),
            "preprocessing": "pipeline.frontend.prepare_study (the pipeline's front end: brain mask, rigid "
                             "registration, every contrast resampled onto the reference grid), then as above",
            "brain_mask": brainmask_recipe(),
        })
        recipe["clinical"] = clinical
    return recipe


def _write_csv(path: Path, rows: List[dict]) -> None:
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
