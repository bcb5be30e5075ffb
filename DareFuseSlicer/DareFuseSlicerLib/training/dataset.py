"""Training data: engine cases pre-processed once into an npz cache, then augmented crops.

Each case goes through the same `prepare()` as inference; its label and tumour-free images are put on the
same low-resolution grid and the tumour-free images are normalised with the input's own mean and std, so
that input - tumour_free is the lesion and nothing else.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandomizableTransform,
    RandSpatialCropd,
    SpatialPadd,
)

from ..constants import BRATS_SUFFIX, CLASSES, CONTRASTS
from ..errors import InputError, OptionError
from ..phantoms import read_manifest
from ..pipeline import preprocess
from ..pipeline.preprocess import prepare, resample_label_to_grid

#: Changes whenever the cached arrays would change: old cache files are then rebuilt, never reused.
CACHE_VERSION = "1"
SPACING_MM = 2.0
#: Class target of a crop that holds none of its case's tumour (cross-entropy's ignore_index).
IGNORE_CLASS = -100


# -- the cache ------------------------------------------------------------------------------------------
def _tumour_free_on_grid(image: sitk.Image, free: sitk.Image, prep: preprocess.Prepared, channel: int) -> np.ndarray:
    """A tumour-free image exactly as its input contrast was prepared (same resampling, anti-aliasing,
    mean and std, clipping, mask), using preprocess's own steps so that the two cannot drift apart.

    Resampling and smoothing are linear, so low(free) = low(image) - low(image - free), and image - free is
    zero outside the lesion: only a small box around the lesion is smoothed, not the whole head (the
    smoothing is most of the pre-processing time). low(image) is recovered from prep.array (exact except
    where the z-score was clipped at CLIP_Z: then the whole image is smoothed instead).
    """
    inside = prep.foreground.astype(bool)
    low_image = prep.array[channel].astype(np.float64) * prep.std[channel] + prep.mean[channel]
    change = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)) - sitk.GetArrayFromImage(sitk.Cast(free, sitk.sitkFloat32))
    nonzero = np.argwhere(change != 0)
    low_change = np.zeros_like(low_image)
    if nonzero.size:
        spacing = np.array(image.GetSpacing())[::-1]
        margin = np.ceil(3.0 * SPACING_MM / spacing).astype(int) + 2  # beyond the Gaussian's reach
        lo = np.maximum(nonzero.min(0) - margin, 0)
        hi = np.minimum(nonzero.max(0) + margin + 1, change.shape)
        box = sitk.GetImageFromArray(np.ascontiguousarray(change[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]))
        box.SetSpacing(image.GetSpacing())
        box.SetDirection(image.GetDirection())
        box.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
        on_reference = preprocess.resample(box, prep.reference) if image.GetSize() != prep.reference.GetSize() else box
        low_change = sitk.GetArrayFromImage(preprocess.down_sample(on_reference, prep.grid, SPACING_MM)).astype(np.float64)
        footprint = np.abs(low_change) > 1e-6
        if (np.abs(prep.array[channel][footprint]) >= preprocess.CLIP_Z - 1e-4).any():
            on_reference = preprocess.resample(sitk.Cast(free, sitk.sitkFloat32), prep.reference)
            low_image = sitk.GetArrayFromImage(preprocess.down_sample(on_reference, prep.grid, SPACING_MM))
            low_change = np.zeros_like(low_change)
    z = np.clip((low_image - low_change - prep.mean[channel]) / prep.std[channel], -preprocess.CLIP_Z, preprocess.CLIP_Z)
    return np.where(inside, z, 0.0).astype(np.float32)


def preprocess_case(folder: Path, row: dict) -> Dict[str, np.ndarray]:
    """One manifest row -> arrays on the 2 mm grid (image, present, label, tumour_free, foreground)."""
    def read(key):
        path = folder / row[key]
        if not path.is_file():
            raise InputError(f"Case {row['case_id']}: file {path} named in the manifest is missing.")
        return sitk.ReadImage(str(path))

    images = {c: read(BRATS_SUFFIX[c]) for c in CONTRASTS}
    prep = prepare(images, spacing_mm=SPACING_MM)
    label = resample_label_to_grid(read("seg"), prep)
    free = np.stack([
        _tumour_free_on_grid(images[c], read(f"{BRATS_SUFFIX[c]}_free"), prep, i) for i, c in enumerate(CONTRASTS)
    ])
    return {
        # float16 halves the cache and the RAM of 160 cases; z-scores need no more than 3 digits.
        "image": prep.array.astype(np.float16),
        "tumour_free": free.astype(np.float16),
        "label": label.astype(np.uint8),
        "foreground": prep.foreground.astype(np.uint8),
        "class_index": np.int64(CLASSES.index(row["tumour_class"])),
    }


def _cache_key(folder: Path, row: dict) -> str:
    seg = folder / row["seg"]
    stat = seg.stat()
    text = json.dumps([CACHE_VERSION, SPACING_MM, row["case_id"], str(folder.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_rows(folder) -> List[dict]:
    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"Data folder {folder} has no manifest.csv; create one with `darefuse phantoms`.")
    rows = read_manifest(manifest)
    if not rows:
        raise InputError(f"{manifest} lists no case.")
    return rows


def build_cache(folder, cache_dir, progress=None, rows: Optional[List[dict]] = None) -> List[Path]:
    """Pre-process every case of `folder` once into `cache_dir/<case_id>.npz`; returns the npz paths.

    A cache file is reused only when its key (cache version, spacing, case, source file size and time)
    matches, so a regenerated data set is never read from a stale cache.
    """
    folder, cache_dir = Path(folder), Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else read_rows(folder)
    paths = []
    for i, row in enumerate(rows):
        path = cache_dir / f"{row['case_id']}.npz"
        key = _cache_key(folder, row)
        if path.is_file():
            with np.load(path) as data:
                fresh = "key" in data and str(data["key"]) == key
        else:
            fresh = False
        if not fresh:
            save_npz_atomic(path, key=np.array(key), **preprocess_case(folder, row))
        paths.append(path)
        if progress is not None:
            progress((i + 1) / len(rows), row["case_id"])
    return paths


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez into a temporary file of its own beside `path`, then renamed: a killed run leaves no half-written
    cache file, and two runs filling one cache at the same time do not mix their writes."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.stem}.", suffix=".tmp.npz",
                                     delete=False) as handle:
        tmp = Path(handle.name)
        np.savez(handle, **arrays)
    tmp.replace(path)


@dataclass
class CachedCase:
    case_id: str
    image: np.ndarray  # float16 (4, Z, Y, X)
    tumour_free: np.ndarray
    label: np.ndarray  # uint8 (Z, Y, X)
    foreground: np.ndarray
    class_index: int
    labelled: bool = True


def load_cases(paths: Sequence[Path]) -> List[CachedCase]:
    cases = []
    for path in paths:
        with np.load(path) as data:
            cases.append(CachedCase(
                case_id=Path(path).stem, image=data["image"], tumour_free=data["tumour_free"], label=data["label"],
                foreground=data["foreground"], class_index=int(data["class_index"]),
            ))
    return cases


def labelled_subset(cases: Sequence[CachedCase], fraction: float, seed: int) -> List[bool]:
    """Which cases keep their segmentation and tumour-free images: `fraction` of each class (at least one
    per class when fraction > 0), chosen by a seeded permutation so that the split is reproducible."""
    if not 0.0 < fraction <= 1.0:
        raise OptionError(f"{{labelled_fraction}} must be in (0, 1], got {fraction}.", "labelled_fraction")
    rng = np.random.RandomState(seed)
    keep = [False] * len(cases)
    for class_index in range(len(CLASSES)):
        members = [i for i, c in enumerate(cases) if c.class_index == class_index]
        if not members:
            continue
        n = max(1, int(round(fraction * len(members))))
        for i in rng.permutation(members)[:n]:
            keep[int(i)] = True
    return keep


# -- augmentation ---------------------------------------------------------------------------------------
class ContrastDropoutd(RandomizableTransform, MapTransform):
    """Drops a random non-empty subset of contrasts (zero image and tumour-free channels, present = 0):
    with probability `prob` one of the 14 proper non-empty subsets is kept, uniformly."""

    SUBSETS = [tuple(c for c in range(4) if mask >> c & 1) for mask in range(1, 15)]  # 15 = all four

    def __init__(self, keys=("image", "tumour_free"), prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        kept = self.SUBSETS[self.R.randint(len(self.SUBSETS))]
        present = np.zeros(4, np.float32)
        present[list(kept)] = 1.0
        d["present"] = present
        for key in self.keys:
            d[key] = d[key] * torch.as_tensor(present).reshape(4, 1, 1, 1).to(d[key].dtype)
        return d


class MaskOutsided(MapTransform):
    """Zero outside the brain (after an intensity shift): inference inputs are always zero there."""

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            d[key] = d[key] * d["foreground"]
        return d


def train_transforms(roi_size: Sequence[int], contrast_dropout: float = 0.5) -> Compose:
    keys = ["image", "tumour_free", "label", "foreground"]
    return Compose([
        SpatialPadd(keys, roi_size),
        RandSpatialCropd(keys, roi_size, random_size=False),
        RandFlipd(keys, prob=0.5, spatial_axis=2),  # left-right: the natural symmetry of a brain
        RandFlipd(keys, prob=0.2, spatial_axis=0),
        RandFlipd(keys, prob=0.2, spatial_axis=1),
        # Same factor and offset for the image and its tumour-free pair: their difference stays the lesion.
        RandScaleIntensityd(["image", "tumour_free"], factors=0.1, prob=0.8, channel_wise=True),
        RandShiftIntensityd(["image", "tumour_free"], offsets=0.1, prob=0.8, channel_wise=True),
        MaskOutsided(["image", "tumour_free"]),
        ContrastDropoutd(prob=contrast_dropout),
    ])


def _plain(value) -> torch.Tensor:
    """A plain tensor (MONAI returns MetaTensors, which DDP and default_collate need not carry)."""
    value = torch.as_tensor(value)
    return value.as_tensor() if hasattr(value, "as_tensor") else value


def seed_for(*parts: int) -> int:
    """A 32-bit seed from integers (seed, epoch, index): per-sample random streams that do not depend on
    the order or the process in which samples are drawn, so runs and resumed runs augment identically."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class TrainDataset(torch.utils.data.Dataset):
    def __init__(self, cases: Sequence[CachedCase], roi_size: Sequence[int], seed: int, contrast_dropout: float = 0.5):
        self.cases = list(cases)
        self.roi_size = tuple(roi_size)
        self.seed = seed
        self.epoch = 0
        self.transforms = train_transforms(self.roi_size, contrast_dropout)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        sample = {
            "image": torch.from_numpy(case.image.astype(np.float32)),
            "tumour_free": torch.from_numpy(case.tumour_free.astype(np.float32)),
            "label": torch.from_numpy(case.label[None].astype(np.int64)),
            "foreground": torch.from_numpy(case.foreground[None].astype(np.float32)),
            "present": np.ones(4, np.float32),
        }
        self.transforms.set_random_state(seed=seed_for(self.seed, self.epoch, index))
        tracking = get_track_meta()
        set_track_meta(False)  # MetaTensor bookkeeping triples the cost of these transforms
        try:
            out = self.transforms(sample)
        finally:
            set_track_meta(tracking)
        label = _plain(out["label"])[0].long()
        class_index = case.class_index
        if case.labelled and class_index != CLASSES.index("no_tumour") and not bool((label > 0).any()):
            # The crop missed the whole tumour: its class target would be wrong. (Unlabelled cases cannot be
            # checked without their segmentation and keep their class: rare label noise.)
            class_index = IGNORE_CLASS
        return {
            "image": _plain(out["image"]).float(),
            "tumour_free": _plain(out["tumour_free"]).float(),
            "label": label,
            "present": _plain(out["present"]).float(),
            "foreground": _plain(out["foreground"]).float(),  # (1, Z, Y, X): the brain (training/prior.py)
            "class_index": torch.tensor(class_index),
            "labelled": torch.tensor(case.labelled),
        }
