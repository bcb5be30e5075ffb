"""Training data: engine cases pre-processed once into an npz cache, then augmented crops.

Each case goes through the same `prepare()` as inference; its label and tumour-free images are put on the
same low-resolution grid and the tumour-free images are normalised with the input's own mean and std, so
that input - tumour_free is the lesion and nothing else.

Clinical (whole-head) cases go through the pipeline's front end (`frontend.prepare_study`: brain mask,
rigid registration) exactly as `darefuse segment` runs it; each tumour-free twin is carried onto the
reference grid by its contrast's recovered transform, so the twin stays aligned with what the network sees.
A contrast whose registration the front end does not believe is left out (present 0), as in use.
`MixedSampler` draws them for a set share of each epoch's crops beside BraTS-style cases.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

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

if TYPE_CHECKING:
    from ..pipeline.frontend import FrontEnd

#: Changes whenever the cached arrays would change: old cache files are then rebuilt, never reused.
CACHE_VERSION = "1"
#: The same for clinical cases' front-end path (their keys also hold the brain-mask model's SHA256 and
#: mask_settings). 2: the network's region (the mask grown by the card's margin), z-scores over the mask alone.
CLINICAL_CACHE_VERSION = "2"
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


def _reader(folder: Path, row: dict):
    def read(key):
        path = folder / row[key]
        if not path.is_file():
            raise InputError(f"Case {row['case_id']}: file {path} named in the manifest is missing.")
        return sitk.ReadImage(str(path))
    return read


def preprocess_case(folder: Path, row: dict, brainmask_model=None) -> Dict[str, np.ndarray]:
    """One manifest row -> arrays on the 2 mm grid (image, present, label, tumour_free, foreground).
    Clinical rows go through the front end (brainmask_model: the mask network, loaded when None)."""
    if is_clinical(row):
        return preprocess_clinical_case(folder, row, brainmask_model)
    read = _reader(folder, row)
    images = {c: read(BRATS_SUFFIX[c]) for c in CONTRASTS}
    prep = prepare(images, spacing_mm=SPACING_MM)
    label = resample_label_to_grid(read("seg"), prep)
    free = np.stack([
        _tumour_free_on_grid(images[c], read(f"{BRATS_SUFFIX[c]}_free"), prep, i) for i, c in enumerate(CONTRASTS)
    ])
    return _arrays(prep, free, label, row)


def _arrays(prep: preprocess.Prepared, free: np.ndarray, label: np.ndarray, row: dict) -> Dict[str, np.ndarray]:
    return {
        # float16 halves the cache and the RAM of 160 cases; z-scores need no more than 3 digits.
        "image": prep.array.astype(np.float16),
        "tumour_free": free.astype(np.float16),
        "label": label.astype(np.uint8),
        "foreground": prep.foreground.astype(np.uint8),
        "class_index": np.int64(CLASSES.index(row["tumour_class"])),
    }


def is_clinical(row: dict) -> bool:
    return row.get("acquisition") == "clinical"


def twin_on_reference(free: sitk.Image, contrast: str, front: "FrontEnd", prep: preprocess.Prepared) -> sitk.Image:
    """A contrast's tumour-free twin (on that contrast's own grid) moved onto the reference grid by the same
    resampling as the contrast itself: the registration's transform, or none for the reference."""
    from ..pipeline import register

    if contrast == prep.reference_name:
        return sitk.Cast(free, sitk.sitkFloat32)
    if contrast in front.registrations:
        return register.apply(free, prep.reference, front.registrations[contrast].transform)
    return preprocess.resample(sitk.Cast(free, sitk.sitkFloat32), prep.reference)  # a skull-stripped study


def preprocess_clinical_case(folder: Path, row: dict, brainmask_model=None) -> Dict[str, np.ndarray]:
    """A whole-head case as the pipeline feeds it to the network (frontend.prepare_study: the brain mask, the
    thick-slice and moved contrasts registered and resampled onto the reference grid, z-scored inside the
    mask); the label lies on the reference grid already. Adds `present` (contrasts the front end left out: 0)."""
    from ..pipeline import frontend

    read = _reader(folder, row)
    images = {c: read(BRATS_SUFFIX[c]) for c in CONTRASTS}
    model = brainmask_model if brainmask_model is not None else frontend.load_brainmask_model()
    prep, front = frontend.prepare_study(images, spacing_mm=SPACING_MM, model=model)
    label = resample_label_to_grid(read("seg"), prep)
    free = np.zeros_like(prep.array)
    for i, c in enumerate(CONTRASTS):
        if c in prep.resampled:
            twin = twin_on_reference(read(f"{BRATS_SUFFIX[c]}_free"), c, front, prep)
            free[i] = _tumour_free_on_grid(prep.resampled[c], twin, prep, i)
    arrays = _arrays(prep, free, label, row)
    arrays["present"] = prep.present.astype(np.float32)
    return arrays


def brainmask_recipe() -> dict:
    """The bundled brain-mask network clinical cases are prepared with: its version, SHA256 and mask settings
    (its card's; the margin is where the segmentation network looks), for the cache key and the model card."""
    from ..network.store import read_card
    from ..pipeline.frontend import BRAINMASK_MODEL

    card = read_card(BRAINMASK_MODEL)
    # The tumour margin and the given-out threshold only shape the mask given out: the network's inputs do not
    # change.
    settings = {k: v for k, v in (card.get("mask_settings") or {}).items()
                if k not in ("tuned_on_seeds", "tumour_margin_mm", "given_threshold")}
    return {"version": card.get("version"), "sha256": str(card["sha256"]), "mask_settings": settings}


def _brainmask_key() -> str:
    """A new mask model, or new settings for it, rebuild clinical cache files."""
    recipe = brainmask_recipe()
    return json.dumps([recipe["sha256"], recipe["mask_settings"]], sort_keys=True)


def _cache_key(folder: Path, row: dict) -> str:
    seg = folder / row["seg"]
    stat = seg.stat()
    parts = [CACHE_VERSION, SPACING_MM, row["case_id"], str(folder.resolve()), stat.st_size, stat.st_mtime_ns]
    if is_clinical(row):  # BraTS-style keys stay as they were: their cache files are reused
        parts += ["clinical", CLINICAL_CACHE_VERSION, _brainmask_key()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


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

    A cache file is reused only when its key (cache version, spacing, case, source file size and time; for
    clinical cases also the brain-mask model) matches, so a regenerated data set or a new front end is never
    read from a stale cache.
    """
    folder, cache_dir = Path(folder), Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else read_rows(folder)
    paths = []
    brainmask_model = None  # loaded once, for the first clinical case that needs building
    for i, row in enumerate(rows):
        path = cache_dir / f"{row['case_id']}.npz"
        key = _cache_key(folder, row)
        if path.is_file():
            with np.load(path) as data:
                fresh = "key" in data and str(data["key"]) == key
        else:
            fresh = False
        if not fresh:
            if is_clinical(row) and brainmask_model is None:
                from ..pipeline.frontend import load_brainmask_model

                brainmask_model = load_brainmask_model()
            save_npz_atomic(path, key=np.array(key), **preprocess_case(folder, row, brainmask_model))
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
    # float32 (4,): the contrasts given (BraTS-style cases all four; the front end may leave one out)
    present: np.ndarray = field(default_factory=lambda: np.ones(4, np.float32))


def load_cases(paths: Sequence[Path]) -> List[CachedCase]:
    cases = []
    for path in paths:
        with np.load(path) as data:
            cases.append(CachedCase(
                case_id=Path(path).stem, image=data["image"], tumour_free=data["tumour_free"], label=data["label"],
                foreground=data["foreground"], class_index=int(data["class_index"]),
                present=data["present"].astype(np.float32) if "present" in data else np.ones(4, np.float32),
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
    with probability `prob` one of the 14 proper non-empty subsets is kept, uniformly. A case that lacks some
    contrasts already (its `present`: the front end left one out) keeps the drawn subset's given ones, or all
    it has when none of the drawn subset is given; its missing channels are zeroed whether or not a subset is
    drawn (the intensity shift before this made them non-zero, and inference feeds zeros)."""

    SUBSETS = [tuple(c for c in range(4) if mask >> c & 1) for mask in range(1, 15)]  # 15 = all four

    def __init__(self, keys=("image", "tumour_free"), prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)

    def __call__(self, data):
        d = dict(data)
        given = np.asarray(d.get("present", np.ones(4, np.float32)), np.float32)
        self.randomize(None)
        present = given
        if self._do_transform:
            drawn = np.zeros(4, np.float32)
            drawn[list(self.SUBSETS[self.R.randint(len(self.SUBSETS))])] = 1.0
            present = drawn * given if (drawn * given).any() else given
        elif given.all():
            return d
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
        # An index past the end is a further draw of case index % len (MixedSampler's repeats): the same case,
        # its own augmentation (seeded by the index).
        case = self.cases[index % len(self.cases)]
        sample = {
            "image": torch.from_numpy(case.image.astype(np.float32)),
            "tumour_free": torch.from_numpy(case.tumour_free.astype(np.float32)),
            "label": torch.from_numpy(case.label[None].astype(np.int64)),
            "foreground": torch.from_numpy(case.foreground[None].astype(np.float32)),
            "present": case.present.copy(),
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


class MixedSampler(torch.utils.data.Sampler):
    """Indices of a two-group TrainDataset (the first `n_first` cases, then `n_second`) so that a share `ratio`
    of every epoch's samples comes from the second group, whatever the groups' sizes.

    An epoch has n_first + n_second samples (as many as one pass over both). Each group is drawn from an
    endless stream of seeded permutations of its cases, continued from epoch to epoch, so every case comes up
    equally often; a case's k-th draw in that stream gets index case + k * len(dataset), which TrainDataset
    maps back to the case with an augmentation of its own. The epoch's samples are shuffled, then split across
    DDP ranks as DistributedSampler does (drop_last). Everything is seeded by (seed, epoch): runs and resumed
    runs draw the same crops.
    """

    def __init__(self, n_first: int, n_second: int, ratio: float, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__()
        self.sizes = (n_first, n_second)
        total = n_first + n_second
        second = int(round(ratio * total)) if n_second else 0
        self.counts = (total - second, second)
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.num_samples = sum(self.counts) // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _draws(self, group: int) -> List[int]:
        """This epoch's draws of one group, continuing its permutation stream."""
        n, k = self.sizes[group], self.counts[group]
        offset, total = (0, self.sizes[0])[group], sum(self.sizes)
        out, orders = [], {}
        for position in range(self.epoch * k, (self.epoch + 1) * k):
            cycle = position // n
            if cycle not in orders:
                orders[cycle] = np.random.RandomState(seed_for(self.seed, group, cycle)).permutation(n)
            out.append(offset + int(orders[cycle][position % n]) + cycle * total)
        return out

    def __iter__(self):
        indices = self._draws(0) + self._draws(1)
        order = np.random.RandomState(seed_for(self.seed, self.epoch, 2)).permutation(len(indices))
        used = [indices[i] for i in order[: self.num_samples * self.num_replicas]]
        return iter(used[self.rank :: self.num_replicas])
