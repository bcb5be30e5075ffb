"""`darefuse train-brainmask`: the brain-mask cascade on the data engine's whole-head (clinical) cases.

Every contrast of every case is one sample: the image on its own grid in the head's cube
(pipeline/brainmask.py: 2 mm, and its 2x2x2 means for the coarse stage) and, as the target, the share of each
voxel inside the engine's brain mask (the mask, on the reference grid, brought through the case's known
motion). The coarse stage learns on the whole 4 mm cube; the fine stage on 64^3 windows of the 2 mm cube
near the brain (its bounding box and 32 mm), as it sees a box around the coarse brain at inference.
Contrast, resolution and pose are randomised on the fly (training/brainmask_augment.py), so the network does
not learn the engine's own contrasts. Loss: binary cross-entropy on the shares plus soft Dice; tumour voxels
(the engine's label, inside its mask) weigh `tumour_weight` times more in the cross-entropy, since a tumour at
the brain's surface is a small share of the voxels but the worst place to cut (it would leave the segmentation).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..constants import BRATS_SUFFIX, CONTRASTS
from ..errors import InputError
from ..pipeline import brainmask as bm

#: Cached samples: one .npz per case (the coarse cube and the fine region of each contrast).
CACHE_FORMAT = "brainmask-cache/4"
#: The fine stage's training region: the brain's bounding box in the 2 mm cube and this many mm around it.
REGION_MARGIN_MM = 32.0
#: Voxels of a region kept for normalising a randomised contrast (every n-th).
LEVEL_STRIDE = 37


def affine_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    """A 3x4 [A | b] as a SimpleITK transform."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(np.asarray(matrix)[:3, :3].ravel().tolist())
    transform.SetTranslation(np.asarray(matrix)[:3, 3].tolist())
    return transform


def clinical_rows(folder: Path) -> List[dict]:
    """The clinical cases of an engine folder (InputError if it has none)."""
    from ..phantoms import read_manifest

    manifest = Path(folder) / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"--data {folder}: no manifest.csv (a folder written by `darefuse phantoms`).")
    rows = [row for row in read_manifest(manifest) if row.get("acquisition") == "clinical" and row.get("brainmask")]
    if not rows:
        raise InputError(f"--data {folder}: no clinical case with a brain mask (use --acquisition clinical).")
    return rows


def region_of(target: np.ndarray) -> Tuple[slice, slice, slice]:
    """The fine stage's training region of a 2 mm cube: where the target is above 0, REGION_MARGIN_MM wider."""
    inside = np.argwhere(target > 1e-3)
    if not len(inside):
        return tuple(slice(0, n) for n in target.shape)
    margin = int(round(REGION_MARGIN_MM / bm.FINE_MM))
    lo = np.maximum(inside.min(0) - margin, 0)
    hi = np.minimum(inside.max(0) + 1 + margin, target.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def contrast_sample(image: sitk.Image, smooth_mask: sitk.Image, to_ref: np.ndarray,
                    tumour: sitk.Image) -> Dict[str, np.ndarray]:
    """Inputs and targets of one contrast: the coarse cube, the fine region and its start (float16, the fine
    target as uint8 shares of 255, the fine region's tumour voxels as uint8 0/1)."""
    cube = bm.head_cube(image)
    fine = bm.cube_input(image, cube)
    # The cube lies in this contrast's space; the mask is in the reference's: to_ref takes one to the other.
    target = sitk.Resample(smooth_mask, cube, affine_transform(to_ref), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    target = np.clip(sitk.GetArrayFromImage(target), 0.0, 1.0).astype(np.float32)
    lesion = sitk.Resample(tumour, cube, affine_transform(to_ref), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    region = region_of(target)
    return {"coarse_image": bm.coarse_input(fine).astype(np.float16),
            "coarse_target": bm.coarse_input(target).astype(np.float16),
            "fine_image": fine[region].astype(np.float16),
            "fine_target": np.round(target[region] * 255).astype(np.uint8),
            "fine_tumour": (sitk.GetArrayFromImage(lesion)[region] > 0.5).astype(np.uint8),
            "region_start": np.array([r.start for r in region])}


def case_samples(folder: Path, row: dict) -> Dict[str, np.ndarray]:
    """Every contrast's sample of one case: {'<contrast>_<array>'} (see contrast_sample)."""
    from ..phantoms.io import to_reference

    mask = sitk.Cast(sitk.ReadImage(str(Path(folder) / row["brainmask"])), sitk.sitkFloat32)
    smooth_mask = bm.anti_aliased(mask, bm.FINE_MM)
    tumour = sitk.Cast(sitk.ReadImage(str(Path(folder) / row["seg"])) > 0, sitk.sitkFloat32) * mask
    out = {}
    for contrast in CONTRASTS:
        suffix = BRATS_SUFFIX[contrast]
        image = sitk.ReadImage(str(Path(folder) / row[suffix]), sitk.sitkFloat32)
        for key, value in contrast_sample(image, smooth_mask, to_reference(row, suffix), tumour).items():
            out[f"{contrast}_{key}"] = value
    return out


def build_cache(folders: Sequence[Path], cache: Path, progress=None) -> List[Path]:
    """One .npz per clinical case (made once; kept while the case file is unchanged)."""
    from .dataset import save_npz_atomic  # imports torch: not at this module's import

    jobs = [(Path(folder), row) for folder in folders for row in clinical_rows(Path(folder))]
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (folder, row) in enumerate(jobs):
        target = cache / f"{row['case_id']}.npz"
        source = folder / row["brainmask"]
        stamp = f"{CACHE_FORMAT} {source.stat().st_size} {source.stat().st_mtime_ns}"
        if not (target.is_file() and str(np.load(target)["stamp"]) == stamp):
            save_npz_atomic(target, stamp=np.array(stamp), **case_samples(folder, row))
        paths.append(target)
        if progress is not None:
            progress((i + 1) / len(jobs), row["case_id"])
    return paths


@dataclass
class Samples:
    """Every case's and contrast's arrays, as torch tensors (float16 and uint8 in memory)."""

    coarse_images: list
    coarse_targets: list
    fine_images: list
    fine_targets: list
    fine_tumours: list

    def __len__(self) -> int:
        return len(self.coarse_images)


def load_samples(paths: Sequence[Path]) -> Samples:
    import torch

    samples = Samples([], [], [], [], [])
    for path in paths:
        with np.load(path) as data:
            for contrast in CONTRASTS:
                samples.coarse_images.append(torch.from_numpy(data[f"{contrast}_coarse_image"]))
                samples.coarse_targets.append(torch.from_numpy(data[f"{contrast}_coarse_target"]))
                samples.fine_images.append(torch.from_numpy(data[f"{contrast}_fine_image"]))
                samples.fine_targets.append(torch.from_numpy(data[f"{contrast}_fine_target"]))
                samples.fine_tumours.append(torch.from_numpy(data[f"{contrast}_fine_tumour"]))
    return samples


def coarse_batch(samples: Samples, pick, generator):
    """Randomised whole 4 mm cubes: (B, 1, 64, 64, 64) images and targets."""
    import torch

    from .brainmask_augment import augmented

    pairs = []
    for i in pick.tolist():
        image, target = samples.coarse_images[i], samples.coarse_targets[i]
        centre = (torch.tensor(image.shape, dtype=torch.float32) - 1) / 2 + (torch.rand(3, generator=generator) * 6 - 3)
        pairs.append(augmented(image, target, image.flatten()[::LEVEL_STRIDE], bm.CUBE, generator, centre))
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def fine_batch(samples: Samples, pick, size: int, generator):
    """Randomised size^3 windows of the 2 mm regions: (B, 1, S, S, S) images and (B, 2, S, S, S) targets (the
    brain share, the tumour)."""
    import torch

    from .brainmask_augment import augmented

    pairs = []
    for i in pick.tolist():
        image = samples.fine_images[i]
        target = torch.stack([samples.fine_targets[i].float() / 255.0, samples.fine_tumours[i].float()])
        pairs.append(augmented(image, target, image.flatten()[::LEVEL_STRIDE], size, generator))
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def loss_fn(logits, target, tumour_weight: float = 1.0):
    """BCE + soft Dice on the brain share (target's channel 0); a channel 1 marks tumour voxels, weighed
    `tumour_weight` times in the BCE."""
    import torch
    import torch.nn.functional as F

    weight = 1.0 + (tumour_weight - 1.0) * target[:, 1:2] if target.shape[1] > 1 else None
    target = target[:, :1]
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


@dataclass
class BrainMaskTrainOptions:
    data: Sequence[str]
    val: Optional[str]
    out: str
    steps: int = 3000  # fine stage
    coarse_steps: int = 1000
    seed: int = 0
    batch_size: int = 2
    lr: float = 2e-3
    threads: int = 2
    window: int = 64  # the fine stage's training windows (2 mm voxels)
    fine_channels: Tuple[int, ...] = (16, 32, 64, 128, 256)
    tumour_weight: float = 1.0
    cache: Optional[str] = None
    command: str = ""


def train_stage(model, stage: str, steps: int, batch: Callable, options: BrainMaskTrainOptions, generator,
                log=print) -> dict:
    """`steps` AdamW steps of one stage (its own parameters), the learning rate on a cosine; its record."""
    import torch

    module = model.coarse if stage == "coarse" else model.fine
    optimiser = torch.optim.AdamW(module.parameters(), lr=options.lr, weight_decay=1e-4)
    losses: List[float] = []
    started = time.perf_counter()
    module.train()
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        x, y = batch(generator)
        loss = loss_fn(model(x, stage), y, options.tumour_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0:
            log(f"{stage} step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    module.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1),
            "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None, "losses": losses}


def validation_dice(model, folder: Path) -> Dict[str, Dict[str, float]]:
    """Brain-mask Dice per reference contrast on a validation folder, mean and worst: the mask on that
    contrast's own grid against the engine's mask brought there through the known motion (as
    benchmarks/brainmask_candidates.py scores it)."""
    from ..metrics import mask_dice
    from .frontend_eval import truth_on

    scores: Dict[str, List[float]] = {c: [] for c in CONTRASTS}
    model.eval()
    for row in clinical_rows(folder):
        truth_ref = sitk.ReadImage(str(folder / row["brainmask"]))
        for contrast in CONTRASTS:
            image = sitk.ReadImage(str(folder / row[BRATS_SUFFIX[contrast]]), sitk.sitkFloat32)
            mask = sitk.GetArrayViewFromImage(bm.extract_brain(model, image)[0])
            scores[contrast].append(mask_dice(mask, truth_on(image, truth_ref, row, contrast)))
    return {"mean": {c: round(float(np.mean(v)), 4) for c, v in scores.items()},
            "worst": {c: round(float(np.min(v)), 4) for c, v in scores.items()}}


#: The brain-mask settings `setting_scores` tries (`darefuse tune-brainmask`; pipeline/brainmask.MaskSettings).
THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
OPENINGS_MM = (0.0, 2.0, 4.0, 6.0, 8.0)
MARGINS_MM = (0.0, 2.0, 4.0, 6.0, 8.0)


def scored_shares(model, folder: Path, row: dict, fuse: bool = False):
    """(image, engine mask on its grid, engine tumour on its grid, share grid, share) for one case: each contrast
    the reference in turn, or (fuse) the pipeline's reference with the share of every contrast it registers
    (pipeline/frontend.fused_share, the pipeline's own path)."""
    from ..constants import contrast_name, reference_contrast
    from ..pipeline import frontend
    from .frontend_eval import truth_on

    truth_ref = sitk.ReadImage(str(folder / row["brainmask"]))
    label_ref = sitk.ReadImage(str(folder / row["seg"]))
    images = {c: sitk.ReadImage(str(folder / row[BRATS_SUFFIX[c]]), sitk.sitkFloat32) for c in CONTRASTS}

    def scored(contrast: str, grid: sitk.Image, share: np.ndarray):
        image = images[contrast]
        return (image, truth_on(image, truth_ref, row, contrast), truth_on(image, label_ref, row, contrast) > 0,
                grid, share)

    if not fuse:
        return [scored(c, *bm.brain_share(model, images[c])) for c in CONTRASTS]
    reference = reference_contrast(images)
    labels = {c: contrast_name(c) for c in images}
    mask, _, share = frontend.brain_mask_stage(images[reference], labels[reference], model)
    registrations = frontend.registration_stage(images, reference, mask, labels)[1]
    return [scored(reference, share[0], frontend.fused_share(images, share, registrations, model))]


def setting_scores(model, folder: Path, log=print, fuse: bool = False) -> List[dict]:
    """Every (threshold, opening, margin) of THRESHOLDS x OPENINGS_MM x MARGINS_MM scored on a clinical folder,
    each contrast the reference in turn (or, fuse, the mask given out from every contrast's share on the
    pipeline's reference): mean and worst brain-mask Dice (of the mask: the margin does not change it), tumour
    voxels (engine label) outside the mask grown by the margin: beyond the network's region (no segmentation can
    find them), or (fuse) beyond the segmented tumour's reach, which the mask given out adds grown by the margin."""
    from ..metrics import mask_dice

    masks = [(t, o) for t in THRESHOLDS for o in OPENINGS_MM]
    dice: Dict[tuple, List[float]] = {m: [] for m in masks}
    outside = {(t, o, g): 0 for t, o in masks for g in MARGINS_MM}
    for row in clinical_rows(folder):
        for image, truth, tumour, grid, share in scored_shares(model, folder, row, fuse):
            for t, o in masks:  # the share once; each setting only refines it
                mask = bm.refine(share, grid, image, bm.MaskSettings(t, o))
                dice[(t, o)].append(mask_dice(sitk.GetArrayViewFromImage(mask) > 0, truth))
                distance = bm.distance_mm(mask)[tumour]
                for g in MARGINS_MM:
                    outside[(t, o, g)] += int(np.count_nonzero(distance > g))
        log(f"scored {row['case_id']}")
    return [{"threshold": t, "opening_mm": o, "margin_mm": g, "mean_dice": round(float(np.mean(dice[(t, o)])), 4),
             "worst_dice": round(float(np.min(dice[(t, o)])), 4), "tumour_voxels_outside": outside[(t, o, g)]}
            for t, o, g in outside]


def chosen_setting(scores: List[dict], margin_mm: float = 0.0) -> dict:
    """For the given margin (chosen with the segmentation in the loop: `darefuse evaluate`), the best mean Dice
    among the settings whose region (the mask grown by it) leaves no more tumour voxels beyond the network's reach
    than the plain mask (0.5, no opening, no margin): a mask that scores well but hides more of a surface tumour
    from the segmentation is not better, whatever its Dice."""
    plain = next(s for s in scores if s["threshold"] == 0.5 and s["opening_mm"] == 0.0 and s["margin_mm"] == 0.0)
    allowed = [s for s in scores if s["margin_mm"] == margin_mm
               and s["tumour_voxels_outside"] <= plain["tumour_voxels_outside"]]
    if not allowed:
        raise ValueError(f"no setting with a margin of {margin_mm:g} mm was scored")
    return max(allowed, key=lambda s: (s["mean_dice"], -s["tumour_voxels_outside"]))


def recorded_mask_settings(card: dict, best: dict, fuse: bool, seeds: Sequence[int]) -> dict:
    """The card's mask_settings once `tune-brainmask --record` chose `best`: its threshold, opening and margin
    replace the card's; what is chosen elsewhere with the segmentation in the loop (the tumour margin, the
    mask given out's threshold) is kept."""
    return {**card.get("mask_settings", {}), "threshold": best["threshold"], "opening_mm": best["opening_mm"],
            "margin_mm": best["margin_mm"], "fuse": fuse, "tuned_on_seeds": sorted(int(s) for s in seeds)}


def train_brainmask(options: BrainMaskTrainOptions, log=print) -> Path:
    """Train both stages, score on options.val, save OUT/brainmask.safetensors with its card."""
    import torch

    from ..network.brainmask_net import BrainMaskConfig, BrainMaskNet
    from ..network.store import save_model

    torch.set_num_threads(options.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(options.threads)
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    out = Path(options.out)
    folders = [Path(d) for d in options.data]
    cache = Path(options.cache) if options.cache else folders[0] / ".brainmask-cache"
    started = time.perf_counter()
    paths = build_cache(folders, cache, progress=lambda f, m: log(f"cache {f:.0%} {m}"))
    samples = load_samples(paths)
    log(f"{len(paths)} cases, {len(samples)} samples; cache {time.perf_counter() - started:.0f} s")
    model = BrainMaskNet(BrainMaskConfig(fine_channels=tuple(options.fine_channels)))

    def pick():
        return torch.randint(len(samples), (options.batch_size,), generator=generator)

    records = {
        "coarse": train_stage(model, "coarse", options.coarse_steps,
                              lambda g: coarse_batch(samples, pick(), g), options, generator, log),
        "fine": train_stage(model, "fine", options.steps,
                            lambda g: fine_batch(samples, pick(), options.window, g), options, generator, log),
    }
    metrics = {"validation_dice": validation_dice(model, Path(options.val))} if options.val else {}
    log(f"validation Dice per reference contrast: {metrics.get('validation_dice')}")
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused input leaves nothing behind
    path = out / "brainmask.safetensors"
    save_model(model, path, _card(options, folders, len(paths), len(samples), records, metrics))
    (out / "train_log.json").write_text(json.dumps({k: r["losses"] for k, r in records.items()}) + "\n")
    return path


def _card(options: BrainMaskTrainOptions, folders: List[Path], cases: int, samples: int, records: dict,
          metrics: dict) -> dict:
    seeds = sorted(int(row["seed"]) for folder in folders for row in clinical_rows(folder))
    val_seeds = sorted(int(row["seed"]) for row in clinical_rows(Path(options.val))) if options.val else []
    return {
        # The run's folder names the version, as `darefuse train` does (brainmask-v3 was stamped v2 before).
        "name": "DareFuse brain mask", "version": Path(options.out).name, "training_command": options.command,
        "seed": options.seed,
        "data_recipe": {"generator": "DareFuseSlicerLib.phantoms.generate, --acquisition clinical",
                        "cases": cases, "samples": samples, "train_seeds": seeds, "validation_seeds": val_seeds,
                        "input": "one contrast; coarse: 64^3 cube of 4 mm around the head; fine: the box around "
                                 "the coarse brain at 2 mm"},
        "training": {"batch_size": options.batch_size, "window": options.window, "lr": options.lr,
                     "threads": options.threads, "tumour_weight": options.tumour_weight,
                     **{stage: {k: v for k, v in r.items() if k != "losses"} for stage, r in records.items()}},
        "metrics": metrics,
    }
