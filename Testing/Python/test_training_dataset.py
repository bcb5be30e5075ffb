"""Training data: the pre-processing cache, augmentation, contrast dropout, labelled subsets.

`make_folder` writes a tiny engine-style folder (BraTS names, manifest.csv, tumour-free pairs) in well
under a second, so the training tests need not run the data engine; `save_fresh_model` the --init model they
start from.
"""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CLASSES, CONTRASTS
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.network.model import DareFuseNet
from DareFuseSlicerLib.network.store import save_model
from DareFuseSlicerLib.phantoms import MANIFEST_COLUMNS, file_names
from DareFuseSlicerLib.training.dataset import (
    IGNORE_CLASS,
    ContrastDropoutd,
    TrainDataset,
    build_cache,
    labelled_subset,
    load_cases,
    read_rows,
)

SHAPE = (36, 44, 36)  # (z, y, x) at 2 mm: a small "head"


def save_fresh_model(path: Path, seed: int, **card) -> Path:
    """A freshly initialised DareFuseNet (torch seeded with `seed`) and a minimal card, written to `path`."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(DareFuseNet(), path, {"training_command": "test: a freshly initialised DareFuseNet", "seed": seed,
                                     **card})
    return path


def _image(array, spacing=2.0):
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((spacing,) * 3)
    return image


def make_folder(folder: Path, n_cases: int = 4, seed: int = 0) -> Path:
    """n_cases synthetic cases, classes cycling through CLASSES: an ellipsoidal brain with contrast-specific
    intensities; tumours are a NETC core, an ET rim and SNFH around them; tumour-free = the same brain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    z, y, x = np.indices(SHAPE)
    centre = np.array(SHAPE) / 2.0
    brain = ((z - centre[0]) / 14) ** 2 + ((y - centre[1]) / 18) ** 2 + ((x - centre[2]) / 14) ** 2 < 1
    base = {"t1": 600, "t1ce": 650, "t2": 800, "flair": 500}
    lesion_values = {"t1": (300, 350, 550), "t1ce": (300, 1400, 600), "t2": (1400, 1200, 1300), "flair": (700, 900, 1200)}
    rows = []
    for i in range(n_cases):
        tumour_class = CLASSES[i % len(CLASSES)]
        case_id = f"Tiny-{seed:03d}-{i:03d}"
        names = file_names(case_id)
        label = np.zeros(SHAPE, np.uint8)
        if tumour_class != "no_tumour":
            c = centre + rng.randint(-4, 5, 3)
            r = np.sqrt(((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2))
            radius = rng.uniform(3.5, 5.0)
            label[(r < radius + 3) & brain] = 2
            label[r < radius] = 3
            label[r < radius - 1.5] = 1
        for contrast in CONTRASTS:
            noise = rng.normal(0, 20, SHAPE)
            free = np.where(brain, base[contrast] + noise, 0)
            image = free.copy()
            for value, lesion in zip((1, 3, 2), lesion_values[contrast]):
                image[label == value] = lesion + noise[label == value]
            suffix = BRATS_SUFFIX[contrast]
            sitk.WriteImage(_image(image), str(folder / names[suffix]))
            sitk.WriteImage(_image(free), str(folder / names[f"{suffix}_free"]))
        seg = sitk.GetImageFromArray(label)
        seg.SetSpacing((2.0,) * 3)
        sitk.WriteImage(seg, str(folder / names["seg"]))
        row = {k: "" for k in MANIFEST_COLUMNS}
        row.update({"case_id": case_id, "tumour_class": tumour_class, "seed": seed + i, "grid": "tiny"})
        row.update(names)
        rows.append(row)
    write_manifest(folder, rows)
    return folder


def write_manifest(folder, rows) -> None:
    """folder/manifest.csv with the engine's columns (a row's missing columns empty)."""
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny"))


def test_cache_holds_prepared_case(tiny, tmp_path):
    paths = build_cache(tiny, tmp_path / "cache")
    assert [p.stem for p in paths] == [r["case_id"] for r in read_rows(tiny)]
    cases = load_cases(paths)
    for case in cases:
        assert case.image.shape[0] == 4 and case.image.shape[1:] == case.label.shape == case.tumour_free.shape[1:]
        difference = np.abs(case.image.astype(np.float32) - case.tumour_free.astype(np.float32)).max(0)
        if case.class_index == CLASSES.index("no_tumour"):
            assert case.label.max() == 0 and difference.max() < 1e-2
        else:
            assert set(np.unique(case.label)) == {0, 1, 2, 3}
            # The tumour-free pair differs from the input only at and around the lesion.
            assert difference[case.label > 0].mean() > 0.5
            far = (case.label == 0) & (np.abs(case.image[0].astype(np.float32)) > 0)
            assert np.median(difference[far]) < 1e-2


def test_cache_is_reused_and_rebuilt_when_stale(tiny, tmp_path):
    cache = tmp_path / "cache"
    first = build_cache(tiny, cache)
    stamps = [p.stat().st_mtime_ns for p in first]
    build_cache(tiny, cache)
    assert [p.stat().st_mtime_ns for p in first] == stamps
    seg = tiny / read_rows(tiny)[0]["seg"]
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))  # a regenerated case
    build_cache(tiny, cache)
    assert first[0].stat().st_mtime_ns != stamps[0] and first[1].stat().st_mtime_ns == stamps[1]


def test_two_runs_can_fill_one_cache_at_once(tiny, tmp_path, monkeypatch):
    # Both writers finish their temporary files before either moves its own into place.
    import threading
    from DareFuseSlicerLib.training import dataset
    both_written = threading.Barrier(2, timeout=60)
    savez = np.savez

    def savez_then_wait(*args, **kwargs):
        savez(*args, **kwargs)
        both_written.wait()

    monkeypatch.setattr(dataset.np, "savez", savez_then_wait)
    rows = read_rows(tiny)[:1]
    results, errors = [], []

    def build():
        try:
            results.append(build_cache(tiny, tmp_path / "cache", rows=rows))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{rows[0]['case_id']}.npz"]
    assert load_cases(results[0])[0].label.shape == load_cases(results[1])[0].label.shape


def test_missing_manifest_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="manifest.csv"):
        build_cache(tmp_path, tmp_path / "cache")


def test_samples_are_deterministic_and_cropped(tiny, tmp_path):
    cases = load_cases(build_cache(tiny, tmp_path / "cache"))
    data = TrainDataset(cases, (32, 32, 32), seed=5)
    a, b = data[1], data[1]
    assert a["image"].shape == (4, 32, 32, 32) and a["label"].shape == (32, 32, 32)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    data.set_epoch(1)
    assert not torch.equal(data[1]["image"], a["image"])


def test_contrast_dropout_zeroes_exactly_the_dropped_channels():
    transform = ContrastDropoutd(prob=1.0)
    seen = set()
    for seed in range(60):
        transform.set_random_state(seed)
        sample = {"image": torch.ones(4, 2, 2, 2), "tumour_free": torch.ones(4, 2, 2, 2), "present": np.ones(4, np.float32)}
        out = transform(sample)
        present = out["present"]
        assert 1 <= present.sum() <= 3
        for key in ("image", "tumour_free"):
            assert torch.equal(out[key].flatten(1).amax(1), torch.as_tensor(present))
        seen.add(tuple(present))
    assert len(seen) == 14  # every proper non-empty subset occurs


def test_crop_without_its_tumour_ignores_the_class(tiny, tmp_path):
    cases = load_cases(build_cache(tiny, tmp_path / "cache"))
    glioma = next(c for c in cases if c.class_index == CLASSES.index("glioma"))
    glioma.label = np.zeros_like(glioma.label)  # pretend the crop misses the tumour
    sample = TrainDataset([glioma], (16, 16, 16), seed=0)[0]
    assert int(sample["class_index"]) == IGNORE_CLASS


def test_labelled_subset_per_class():
    class Case:
        def __init__(self, k):
            self.class_index = k

    cases = [Case(i % 4) for i in range(48)]
    keep = labelled_subset(cases, 0.25, seed=1)
    assert sum(keep) == 12 and all(sum(k for k, c in zip(keep, cases) if c.class_index == j) == 3 for j in range(4))
    assert keep == labelled_subset(cases, 0.25, seed=1) and keep != labelled_subset(cases, 0.25, seed=2)
    assert sum(labelled_subset(cases, 0.01, seed=1)) == 4  # at least one per class
    with pytest.raises(InputError, match="^labelled_fraction must be in"):
        labelled_subset(cases, 0.0, seed=1)
