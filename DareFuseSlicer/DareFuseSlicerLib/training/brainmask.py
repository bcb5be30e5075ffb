"""`darefuse train-brainmask`: the brain-mask network on the data engine's whole-head (clinical) cases.

Every contrast of every case is one sample: the image on its own grid in the head's cube
(pipeline/brainmask.py) and, as the target, the share of each cube voxel inside the engine's brain mask (the
mask, on the reference grid, brought through the case's known motion). Contrasts are randomised on the fly
(a random non-monotonic intensity curve, gamma, bias field, noise, blur: SynthStrip's idea) and so are pose
(rotation, shift, left-right flip), so the network does not learn the engine's own contrasts. Loss: binary
cross-entropy on the shares plus soft Dice.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..constants import BRATS_SUFFIX, CONTRASTS
from ..errors import InputError
from ..pipeline import brainmask as bm

#: Cached samples: one .npz per case (image and target cubes of its contrasts).
CACHE_FORMAT = "brainmask-cache/2"


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


def case_samples(folder: Path, row: dict) -> Dict[str, np.ndarray]:
    """Input and target cubes of every contrast of one case: {'<contrast>_image', '<contrast>_target'}."""
    from ..phantoms.io import to_reference

    mask = sitk.Cast(sitk.ReadImage(str(Path(folder) / row["brainmask"])), sitk.sitkFloat32)
    smooth_mask = bm.anti_aliased(mask, bm.SPACING_MM)
    out = {}
    for contrast in CONTRASTS:
        suffix = BRATS_SUFFIX[contrast]
        image = sitk.ReadImage(str(Path(folder) / row[suffix]), sitk.sitkFloat32)
        cube = bm.head_cube(image)
        out[f"{contrast}_image"] = bm.cube_input(image, cube)
        # The cube lies in this contrast's space; the mask is in the reference's: to_ref takes one to the other.
        target = sitk.Resample(smooth_mask, cube, affine_transform(to_reference(row, suffix)), sitk.sitkLinear, 0.0,
                               sitk.sitkFloat32)
        out[f"{contrast}_target"] = np.clip(sitk.GetArrayFromImage(target), 0.0, 1.0).astype(np.float32)
    return out


def build_cache(folders: Sequence[Path], cache: Path, progress=None) -> List[Path]:
    """One .npz per clinical case (made once; kept while the case file is unchanged)."""
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(Path(folder), row) for folder in folders for row in clinical_rows(Path(folder))]
    paths = []
    for i, (folder, row) in enumerate(jobs):
        target = cache / f"{row['case_id']}.npz"
        source = folder / row["brainmask"]
        stamp = f"{CACHE_FORMAT} {source.stat().st_size} {source.stat().st_mtime_ns}"
        if not (target.is_file() and str(np.load(target)["stamp"]) == stamp):
            np.savez_compressed(target, stamp=np.array(stamp), **case_samples(folder, row))
        paths.append(target)
        if progress is not None:
            progress((i + 1) / len(jobs), row["case_id"])
    return paths


def load_samples(paths: Sequence[Path]) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 1, D, H, W) images and targets over every case and contrast."""
    images, targets = [], []
    for path in paths:
        with np.load(path) as data:
            for contrast in CONTRASTS:
                images.append(data[f"{contrast}_image"])
                targets.append(data[f"{contrast}_target"])
    return np.stack(images)[:, None], np.stack(targets)[:, None]


def randomise_contrast(x, generator):
    """A new contrast for a batch (B, 1, D, H, W) of 0..1.5 images: a random smooth intensity curve (not
    necessarily monotonic), gamma, a multiplicative bias field, blur and noise."""
    import torch
    import torch.nn.functional as F

    batch = x.shape[0]
    out = []
    for i in range(batch):
        v = x[i:i + 1].clamp(0, 1.5) / 1.5
        knots = torch.rand(8, generator=generator)
        if torch.rand(1, generator=generator).item() < 0.5:  # half the time keep the true order of intensities
            knots = torch.sort(knots).values
        knots[0] = torch.rand(1, generator=generator) * 0.1  # air stays dark: it is dark in every MR contrast
        positions = v * (len(knots) - 1)
        low = positions.floor().clamp(0, len(knots) - 2).long()
        weight = positions - low
        v = knots[low] * (1 - weight) + knots[low + 1] * weight
        gamma = math.exp(float(torch.empty(1).uniform_(-0.5, 0.5, generator=generator)))
        v = v.clamp_min(0) ** gamma
        bias = F.interpolate(torch.randn(1, 1, 4, 4, 4, generator=generator) * 0.25, size=v.shape[2:],
                             mode="trilinear", align_corners=False).exp()
        v = v * bias
        if torch.rand(1, generator=generator).item() < 0.3:
            v = F.avg_pool3d(v, 3, stride=1, padding=1)
        v = v + torch.randn(v.shape, generator=generator) * float(torch.rand(1, generator=generator)) * 0.05
        top = torch.quantile(v.flatten()[::17], 0.995).clamp_min(1e-3)
        out.append((v / top).clamp(0, 1.5))
    return torch.cat(out)


def random_pose(x, y, generator):
    """The same random rotation (up to 15 degrees), shift (up to 3 voxels) and left-right flip for images and
    targets."""
    import torch
    import torch.nn.functional as F

    batch = x.shape[0]
    thetas = []
    for _ in range(batch):
        angles = (torch.rand(3, generator=generator) * 2 - 1) * math.radians(15)
        cx, cy, cz = torch.cos(angles)
        sx, sy, sz = torch.sin(angles)
        rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        rotation = rz @ ry @ rx
        if torch.rand(1, generator=generator).item() < 0.5:
            rotation = rotation @ torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
        shift = (torch.rand(3, generator=generator) * 2 - 1) * (3.0 / (bm.CUBE / 2))
        thetas.append(torch.cat([rotation, shift[:, None]], dim=1))
    grid = F.affine_grid(torch.stack(thetas).float(), list(x.shape), align_corners=False)
    return (F.grid_sample(x, grid, align_corners=False), F.grid_sample(y, grid, align_corners=False))


def random_crop(x, y, size: int, generator):
    """The same random size^3 window of images and targets (the whole cube when size is 0 or larger)."""
    import torch

    if not size or size >= x.shape[-1]:
        return x, y
    start = [int(torch.randint(0, n - size + 1, (1,), generator=generator)) for n in x.shape[2:]]
    window = (slice(None), slice(None)) + tuple(slice(s, s + size) for s in start)
    return x[window], y[window]


def loss_fn(logits, target):
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


@dataclass
class BrainMaskTrainOptions:
    data: Sequence[str]
    val: Optional[str]
    out: str
    minutes: float = 30.0
    seed: int = 0
    batch_size: int = 2
    lr: float = 2e-3
    threads: int = 2
    cache: Optional[str] = None
    crop: int = 48  # training windows of the 64^3 cube (the network is fully convolutional): 0.42x the cost
    command: str = ""


def validation_dice(model, folder: Path) -> Dict[str, float]:
    """Mean brain-mask Dice per reference contrast on a validation folder (the mask on that contrast's own
    grid against the engine's mask brought there), as the pipeline computes it."""
    from ..metrics import mask_dice
    from ..phantoms.io import to_reference

    scores: Dict[str, List[float]] = {c: [] for c in CONTRASTS}
    model.eval()
    for row in clinical_rows(folder):
        truth_ref = sitk.ReadImage(str(folder / row["brainmask"]))
        for contrast in CONTRASTS:
            suffix = BRATS_SUFFIX[contrast]
            image = sitk.ReadImage(str(folder / row[suffix]), sitk.sitkFloat32)
            mask = bm.extract_brain(model, image)[0]
            # Scored on the reference grid: the predicted mask brought there through the known motion.
            on_ref = sitk.Resample(mask, truth_ref, affine_transform(_inverse(to_reference(row, suffix))),
                                   sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            scores[contrast].append(mask_dice(sitk.GetArrayViewFromImage(on_ref),
                                              sitk.GetArrayViewFromImage(truth_ref)))
    return {c: round(float(np.mean(v)), 4) for c, v in scores.items() if v}


def _inverse(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0, 0, 0, 1]])
    return np.linalg.inv(full)[:3]


def train_brainmask(options: BrainMaskTrainOptions, log=print) -> Path:
    """Train for options.minutes, score on options.val, save OUT/brainmask.safetensors with its card."""
    import torch

    from ..network.brainmask_net import BrainMaskConfig, BrainMaskNet
    from ..network.store import save_model

    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    folders = [Path(d) for d in options.data]
    cache = Path(options.cache) if options.cache else folders[0] / ".brainmask-cache"
    started = time.perf_counter()
    paths = build_cache(folders, cache, progress=lambda f, m: log(f"cache {f:.0%} {m}"))
    images, targets = load_samples(paths)
    log(f"{len(paths)} cases, {len(images)} samples; cache {time.perf_counter() - started:.0f} s")
    model = BrainMaskNet(BrainMaskConfig())
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-4)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(targets)
    step, losses, budget = 0, [], options.minutes * 60.0
    train_start = time.perf_counter()
    model.train()
    while time.perf_counter() - train_start < budget:
        pick = torch.randint(len(x_all), (options.batch_size,), generator=generator)
        x, y = random_crop(*random_pose(x_all[pick], y_all[pick], generator), options.crop, generator)
        x = randomise_contrast(x, generator)
        loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        step += 1
        fraction = (time.perf_counter() - train_start) / budget
        for group in optimiser.param_groups:  # cosine decay over the time budget
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
        if step % 50 == 0:
            log(f"step {step} loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - train_start:.0f} s)")
    seconds = time.perf_counter() - train_start
    model.eval()
    metrics = {"validation_dice": validation_dice(model, Path(options.val))} if options.val else {}
    log(f"validation Dice per reference contrast: {metrics.get('validation_dice')}")
    path = out / "brainmask.safetensors"
    seeds = sorted(int(row["seed"]) for folder in folders for row in clinical_rows(folder))
    val_seeds = sorted(int(row["seed"]) for row in clinical_rows(Path(options.val))) if options.val else []
    card = {
        "name": "DareFuse brain mask", "version": "brainmask-v1", "training_command": options.command,
        "seed": options.seed,
        "data_recipe": {"generator": "DareFuseSlicerLib.phantoms.generate, --acquisition clinical",
                        "cases": len(paths), "samples": len(images), "train_seeds": seeds,
                        "validation_seeds": val_seeds, "input": "one contrast, 64^3 cube of 4 mm around the head"},
        "training": {"steps": step, "seconds": round(seconds, 1), "batch_size": options.batch_size,
                     "crop": options.crop,
                     "lr": options.lr, "threads": options.threads, "final_loss": round(float(np.mean(losses[-50:])), 4)},
        "metrics": metrics,
    }
    save_model(model, path, card)
    (out / "train_log.json").write_text(json.dumps({"losses": losses}) + "\n")
    return path
