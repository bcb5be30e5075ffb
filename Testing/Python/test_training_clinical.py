"""Training on clinical (whole-head) cases: the cache runs them through the pipeline's front end, carries each
tumour-free twin through its contrast's own registration, and keeps the label on the reference grid; what the
network is trained on is what `darefuse segment` feeds it; `darefuse train --clinical` mixes them with
BraTS-style cases by a ratio, and a BraTS-style run stays what it was.

The case is tiny and independent of the data engine (clinical_helpers: the bundled sample glioma at 2 mm inside
a head, T1ce moved, T2 and FLAIR moved onto 5 mm slices), so the front end runs in seconds.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from clinical_helpers import acquire, brain_mask_of, pad_for_head, rigid, thick_slice_grid, whole_head
from scipy import ndimage as ndi
from test_training_dataset import make_folder, write_manifest

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS
from DareFuseSlicerLib.errors import InputError, OptionError
from DareFuseSlicerLib.logic import bundled_model_path
from DareFuseSlicerLib.network.store import card_path, load_model, read_card
from DareFuseSlicerLib.phantoms import file_names, sample_case_paths
from DareFuseSlicerLib.pipeline import frontend, preprocess, register, run
from DareFuseSlicerLib.training import dataset, frontend_eval
from DareFuseSlicerLib.training.dataset import ContrastDropoutd, MixedSampler, TrainDataset, build_cache, load_cases
from DareFuseSlicerLib.training.train import Runtime, TrainOptions, cache_dir_for, make_batches, train

REPO = Path(__file__).resolve().parents[2]
CASE_ID = "Tiny-clinical-000"
#: Motion of each moved contrast: (rotation about x, y, z in degrees, shift in mm). FLAIR's is beyond head
#: motion, so the front end leaves it out and the cache must mark it missing.
MOTIONS = {"t1ce": ((1.5, -1.0, 2.0), (1.0, -2.0, 1.5)), "t2": ((2.0, 1.0, -2.5), (-1.5, 2.0, 1.0)),
           "flair": ((0.0, 0.0, 35.0), (0.0, 0.0, 0.0))}


def _sample_at_2mm():
    """The sample glioma's contrasts and label at 2 mm, padded so that a head fits around the brain."""
    paths = sample_case_paths()
    brains = {c: pad_for_head(sitk.BinShrink(sitk.ReadImage(str(paths[BRATS_SUFFIX[c]]), sitk.sitkFloat32), [2, 2, 2]))
              for c in CONTRASTS}
    label = sitk.ReadImage(str(paths["seg"]))
    label = sitk.Resample(label, brains["t1"], sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return brains, label


def _heads(brain: sitk.Image, label: sitk.Image, mask: sitk.Image, contrast: str, seed: int):
    """The whole head without the lesion (the twin: lesion voxels at the brain's median outside the lesion)
    and with it (the twin with the lesion's own values put back): equal outside the lesion, noise included."""
    values = sitk.GetArrayFromImage(brain)
    lesion = sitk.GetArrayViewFromImage(label) > 0
    healthy = float(np.median(values[(values != 0) & ~lesion]))
    free_brain = sitk.GetImageFromArray(np.where(lesion, healthy, values).astype(np.float32))
    free_brain.CopyInformation(brain)
    twin = whole_head(free_brain, mask, contrast, seed=seed)
    case = sitk.GetImageFromArray(np.where(lesion, values, sitk.GetArrayFromImage(twin)).astype(np.float32))
    case.CopyInformation(twin)
    return case, twin


@pytest.fixture(scope="module")
def clinical_folder(tmp_path_factory):
    """One clinical case in an engine-style folder: four contrasts on their own grids, their twins acquired
    with the same grids, motion and noise draws, label and brain mask on the T1 grid, manifest.csv."""
    folder = tmp_path_factory.mktemp("tiny-clinical")
    brains, label = _sample_at_2mm()
    mask = brain_mask_of(brains["t1"])
    centre = register.brain_centre(mask)
    motions = {c: rigid(angles, shift, centre) for c, (angles, shift) in MOTIONS.items()}
    names = file_names(CASE_ID)
    for i, c in enumerate(CONTRASTS):
        case, twin = _heads(brains[c], label, mask, c, seed=4 + i)
        if c in motions:  # the same grid and motion for the case and its twin
            grid = thick_slice_grid(case) if c in ("t2", "flair") else case
            case, twin = (acquire(image, grid, motions[c]) for image in (case, twin))
        sitk.WriteImage(case, str(folder / names[BRATS_SUFFIX[c]]))
        sitk.WriteImage(twin, str(folder / names[f"{BRATS_SUFFIX[c]}_free"]))
    sitk.WriteImage(label, str(folder / names["seg"]))
    sitk.WriteImage(mask, str(folder / names["brainmask"]))
    write_manifest(folder, [{**names, "case_id": CASE_ID, "tumour_class": "glioma", "seed": 77, "grid": "clinical",
                             "acquisition": "clinical", "reference": "t1n"}])
    return folder


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One cache for the module: the training run below reuses the clinical case built here."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cached(clinical_folder, cache_root):
    paths = build_cache(clinical_folder, cache_dir_for(str(clinical_folder), str(cache_root)))
    return load_cases(paths)[0], paths[0]


@pytest.fixture(scope="module")
def brats_folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny-brats"), n_cases=4)


def test_a_clinical_case_goes_through_the_front_end_into_the_cache(cached):
    case, path = cached
    assert case.image.shape[0] == 4 and case.image.shape == case.tumour_free.shape
    assert case.label.shape == case.foreground.shape == case.image.shape[1:]
    # The front end left the implausibly rotated FLAIR out: missing, as in use.
    np.testing.assert_array_equal(case.present, [1, 1, 1, 0])
    assert not case.image[3].any() and not case.tumour_free[3].any()
    # The brain mask is the network's, on the 2 mm box around the head's brain (not the whole head).
    assert 0.3 < case.foreground.mean() < 0.9
    with np.load(path) as data:
        assert "present" in data


def test_the_label_lies_on_the_lesion_the_network_sees(cached):
    """Where the image differs from its twin (the lesion the network sees) is where the label says tumour."""
    case, _ = cached
    changed = (np.abs(case.image[:3].astype(np.float32) - case.tumour_free[:3].astype(np.float32)) > 0.3).any(0)
    tumour = case.label > 0
    dice = 2 * np.count_nonzero(changed & tumour) / (np.count_nonzero(changed) + np.count_nonzero(tumour))
    assert dice > 0.7, dice
    assert set(np.unique(case.label)) == {0, 1, 2, 3}


def test_each_twin_is_aligned_with_its_image_outside_the_lesion(cached):
    """Twins go through their contrast's registration: outside the lesion (and the smoothing's reach) the twin
    equals the image, on the reference T1 and on the moved thick-slice T2 alike."""
    case, _ = cached
    # 14 mm: a 5 mm slice's profile and the interpolation between slices carry the lesion about 11 mm along z.
    outside = ~ndi.binary_dilation(case.label > 0, iterations=7) & (case.foreground > 0)
    for channel in (0, 1, 2):
        difference = np.abs(case.image[channel].astype(np.float32) - case.tumour_free[channel].astype(np.float32))
        assert difference[outside].max() < 0.02, (CONTRASTS[channel], difference[outside].max())


def test_a_twin_moved_without_its_registration_would_not_be_aligned(clinical_folder):
    """The check above can fail: the T2 twin resampled with the identity (its registration ignored) differs
    from the registered T2 outside the lesion, while the registered twin does not."""
    rows = dataset.read_rows(clinical_folder)
    images = {c: sitk.ReadImage(str(clinical_folder / rows[0][BRATS_SUFFIX[c]])) for c in ("t1", "t2")}
    free = sitk.ReadImage(str(clinical_folder / rows[0]["t2w_free"]))
    label = sitk.ReadImage(str(clinical_folder / rows[0]["seg"]))
    prep, front = frontend.prepare_study(images)
    lesion_near = sitk.GetArrayFromImage(sitk.BinaryDilate(label > 0, [7, 7, 7])) > 0
    inside = sitk.GetArrayViewFromImage(prep.foreground_reference).astype(bool) & ~lesion_near
    seen = sitk.GetArrayFromImage(prep.resampled["t2"])[inside]
    registered = sitk.GetArrayFromImage(dataset.twin_on_reference(free, "t2", front, prep))[inside]
    unregistered = sitk.GetArrayFromImage(preprocess.resample(sitk.Cast(free, sitk.sitkFloat32), prep.reference))[inside]
    scale = float(np.abs(seen).mean())
    assert np.abs(registered - seen).max() < 1e-3 * scale
    assert np.abs(unregistered - seen).mean() > 0.05 * scale


def test_the_cache_key_follows_the_brain_mask_model(clinical_folder, monkeypatch):
    """A new brain-mask model, or new mask settings, rebuild clinical cache files; BraTS-style keys are the ones caches were built
    with before clinical cases existed, so those files are reused."""
    import hashlib
    import json

    from DareFuseSlicerLib.network import store

    row = dataset.read_rows(clinical_folder)[0]
    before = dataset._cache_key(clinical_folder, row)
    card = store.read_card(frontend.BRAINMASK_MODEL)
    other = dict(card, mask_settings=dict(card.get("mask_settings") or {}, margin_mm=8.0))
    monkeypatch.setattr(store, "read_card", lambda path: other)  # the same model, another margin
    assert dataset._cache_key(clinical_folder, row) != before
    monkeypatch.setattr(dataset, "_brainmask_key", lambda: "another model")
    assert dataset._cache_key(clinical_folder, row) != before
    brats = dict(row, acquisition="brats")
    stat = (clinical_folder / row["seg"]).stat()
    old = json.dumps([dataset.CACHE_VERSION, dataset.SPACING_MM, row["case_id"], str(clinical_folder.resolve()),
                      stat.st_size, stat.st_mtime_ns])
    assert dataset._cache_key(clinical_folder, brats) == hashlib.sha256(old.encode()).hexdigest()[:16]


def test_the_bundled_raw_model_was_trained_on_the_bundled_brain_masks_region(monkeypatch):
    """The front end takes the network's region from the brain-mask card; the raw model's card records the
    region it was trained on: the two must agree (a new margin on the brain-mask card needs a new model). The
    tumour margin and the threshold of the mask given out are not part of it: they do not change the network's
    inputs; the network's own threshold is."""
    from DareFuseSlicerLib import logic
    from DareFuseSlicerLib.network import store

    recorded = store.read_card(logic.MODELS_DIR / logic.BUNDLED_RAW_MODEL_NAME)["data_recipe"]["clinical"]["brain_mask"]
    assert recorded["mask_settings"] == dataset.brainmask_recipe()["mask_settings"]
    card = store.read_card(frontend.BRAINMASK_MODEL)
    other = dict(card, mask_settings=dict(card["mask_settings"], tumour_margin_mm=0.5, given_threshold=0.9))
    monkeypatch.setattr(store, "read_card", lambda path: other)
    assert dataset.brainmask_recipe()["mask_settings"] == recorded["mask_settings"]
    moved = dict(card, mask_settings=dict(card["mask_settings"], threshold=0.9))
    monkeypatch.setattr(store, "read_card", lambda path: moved)
    assert dataset.brainmask_recipe()["mask_settings"] != recorded["mask_settings"]


def test_a_brain_mask_the_raw_model_was_not_trained_on_was_judged_with_it():
    """A newer brain-mask network may be bundled under a raw model trained on an older one's masks only when
    the pair was measured with the segmentation in the loop: its card names the raw model's weights, and the
    reports it cites were run with these very two networks."""
    from DareFuseSlicerLib import logic
    from DareFuseSlicerLib.network import store

    raw = store.read_card(logic.MODELS_DIR / logic.BUNDLED_RAW_MODEL_NAME)
    card = store.read_card(frontend.BRAINMASK_MODEL)
    if raw["data_recipe"]["clinical"]["brain_mask"]["sha256"] == card["sha256"]:
        return  # trained on the bundled masks themselves
    adoption = card["adoption"]
    assert adoption["bundled_with"]["sha256"] == raw["sha256"]
    for name in adoption["reports"] + [adoption["held_out_report"]]:
        report = json.loads((REPO / name).read_text())
        assert report["brainmask"]["sha256"] == card["sha256"], name
        assert [m["model"]["sha256"] for m in report["models"].values()] == [raw["sha256"]], name
        assert "clinical" in report["data"]["grids"], name


def test_contrast_dropout_keeps_only_contrasts_a_case_has():
    """A case without FLAIR never gets it back; a drawn subset holding none of its contrasts keeps them all."""
    import torch

    kept = set()
    for seed in range(60):
        dropout = ContrastDropoutd(prob=1.0)
        dropout.set_random_state(seed)
        out = dropout({"image": torch.ones(4, 2, 2, 2), "tumour_free": torch.ones(4, 2, 2, 2),
                       "present": np.array([1, 1, 1, 0], np.float32)})
        present = np.asarray(out["present"])
        assert present[3] == 0 and present.any()
        assert torch.equal(out["image"][:, 0, 0, 0], torch.as_tensor(present))
        kept.add(tuple(present))
    assert (1, 1, 1, 0) in kept and len(kept) > 3


class _Fed(Exception):
    """Raised where the pipeline hands the prepared case to the network: what it would feed is captured."""


def test_the_training_input_is_what_the_pipeline_feeds_the_network(clinical_folder, cached, monkeypatch):
    """`darefuse segment`'s own path (run.run: checks, front end, prepare) stopped where the network pass
    starts: the cached case has the same grid, brain mask, given contrasts and input, zero outside the mask."""
    case, _ = cached
    row = dataset.read_rows(clinical_folder)[0]
    images = {c: sitk.ReadImage(str(clinical_folder / row[BRATS_SUFFIX[c]])) for c in CONTRASTS}
    fed = {}

    def network_stage(stages, model, prep, *rest):
        fed["prep"] = prep
        raise _Fed

    monkeypatch.setattr(run, "network_stage", network_stage)
    with pytest.raises(_Fed):
        run.run(images, load_model(bundled_model_path()))
    prep = fed["prep"]
    assert case.image.shape == prep.array.shape and case.foreground.shape == prep.foreground.shape
    np.testing.assert_array_equal(case.foreground, prep.foreground)
    np.testing.assert_array_equal(case.present, prep.present)
    np.testing.assert_allclose(case.image.astype(np.float32), prep.array, atol=2e-3 * preprocess.CLIP_Z)
    assert not case.image[:, case.foreground == 0].any()
    # The thick-slice T2 reached the network resampled onto the reference grid, as a contrast of its own.
    assert prep.resampled["t2"].GetSize() == prep.reference.GetSize() and case.image[2].any()


def _indices_of(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_mixed_sampler_draws_the_ratio_and_every_case():
    """4 BraTS-style and 2 clinical cases at ratio 0.75: 6 samples an epoch, 4 (round(4.5)) clinical; over
    epochs every case comes up; the same seed draws the same, another seed differs; DDP ranks split an
    epoch without overlap."""
    sampler = MixedSampler(4, 2, 0.75, seed=3)
    epochs = [_indices_of(sampler, e) for e in range(6)]
    for indices in epochs:
        cases = [i % 6 for i in indices]
        assert len(indices) == 6 and sum(c >= 4 for c in cases) == 4
    drawn = [i % 6 for indices in epochs for i in indices]
    assert set(drawn) == set(range(6)) and drawn.count(4) == drawn.count(5) == 12
    assert len({i for indices in epochs for i in indices if i % 6 >= 4}) == 24  # every draw its own augmentation
    assert epochs[2] == _indices_of(MixedSampler(4, 2, 0.75, seed=3), 2)
    assert epochs[2] != _indices_of(MixedSampler(4, 2, 0.75, seed=4), 2)
    ranks = [_indices_of(MixedSampler(4, 2, 0.75, seed=3, num_replicas=2, rank=r), 1) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and sorted(ranks[0] + ranks[1]) == sorted(epochs[1])


def test_the_mixed_dataset_yields_both_kinds(brats_folder, cached, cache_root):
    """BraTS-style and clinical crops from one dataset through the sampler: a clinical crop keeps only the
    contrasts its case has (FLAIR was left out by the front end)."""
    brats = load_cases(build_cache(brats_folder, cache_dir_for(str(brats_folder), str(cache_root))))
    clinical, _ = cached
    data = TrainDataset(brats + [clinical], roi_size=(24, 24, 24), seed=0, contrast_dropout=0.0)
    kinds = set()
    for index in MixedSampler(len(brats), 1, 0.5, seed=0):
        case = data.cases[index % len(data.cases)]
        sample = data[index]
        assert sample["image"].shape == (4, 24, 24, 24)
        kinds.add(case.case_id)
        if case is clinical:
            assert sample["present"].tolist() == [1, 1, 1, 0] and not sample["image"][3].any()
        else:
            assert sample["present"].tolist() == [1, 1, 1, 1]
    assert clinical.case_id in kinds and kinds & {c.case_id for c in brats}


def _train_options(brats_folder, out, cache_root, **kw):
    base = dict(data=str(brats_folder), out=str(out), epochs=1, seed=5, roi=(24, 24, 24), batch_size=2,
                cache=str(cache_root), threads=1, progress=False)
    base.update(kw)
    return TrainOptions(**base)


def test_a_mixed_run_writes_a_model_whose_card_names_both_sets(brats_folder, clinical_folder, cached, cache_root,
                                                              tmp_path):
    path = train(_train_options(brats_folder, tmp_path / "mixed", cache_root, val=str(brats_folder),
                                clinical=str(clinical_folder), clinical_ratio=0.4, clinical_val=str(clinical_folder)))
    card = json.loads(card_path(path).read_text())
    recipe = card["data_recipe"]
    assert recipe["train_folder"] == str(brats_folder) and recipe["seeds"] == [0, 3]
    assert recipe["clinical"]["folder"] == str(clinical_folder) and recipe["clinical"]["seeds"] == [77, 77]
    assert recipe["clinical"]["ratio"] == 0.4 and recipe["clinical"]["cases"] == 1
    assert recipe["clinical"]["validation_seeds"] == [77, 77] and recipe["validation_seeds"] == [0, 3]
    # the brain mask the clinical cases were prepared with, margin included: the network learns that region
    bundled = read_card(frontend.BRAINMASK_MODEL)
    assert recipe["clinical"]["brain_mask"]["sha256"] == bundled["sha256"]
    assert recipe["clinical"]["brain_mask"]["mask_settings"]["margin_mm"] == bundled["mask_settings"]["margin_mm"]
    assert f"--clinical {clinical_folder}" in card["training_command"] and "--clinical-ratio 0.4" in card["training_command"]
    assert card["training"]["steps"] == 2  # 5 samples (2 clinical), batch 2
    assert 0.0 <= card["metrics"]["validation_2mm"]["val_clinical_dice_wt"] <= 1.0
    assert 0.0 <= card["metrics"]["validation_2mm"]["val_dice_wt"] <= 1.0
    # evaluate refuses held-out cases among either set's seeds
    assert frontend_eval.card_seeds(card)["training"] == {0, 1, 2, 3, 77}
    with pytest.raises(OptionError, match="among the model's training seeds"):
        frontend_eval.check_held_out([{"seed": 77}], {"mixed": card})


def test_a_brats_style_run_is_what_it_was(brats_folder, cache_root, tmp_path):
    """Without --clinical: torch's DistributedSampler over the cases in order (as before the mixture), no
    clinical key in the card, no clinical flag in its command (the weights were checked bit for bit against
    the code before the mixture: see the commit that added it)."""
    options = _train_options(brats_folder, tmp_path / "brats", cache_root)
    cases = load_cases(build_cache(brats_folder, cache_dir_for(str(brats_folder), str(cache_root))))
    batches = make_batches(options, Runtime(torch.device("cpu")), cases)
    assert type(batches.sampler) is torch.utils.data.distributed.DistributedSampler
    expected = torch.utils.data.distributed.DistributedSampler(range(4), num_replicas=1, rank=0, shuffle=True,
                                                               seed=5, drop_last=True)
    expected.set_epoch(3)
    batches.sampler.set_epoch(3)
    assert list(batches.sampler) == list(expected)
    path = train(options)
    card = json.loads(card_path(path).read_text())
    assert "clinical" not in card["data_recipe"] and "--clinical" not in card["training_command"]
    assert set(card["data_recipe"]) == {"generator", "train_folder", "cases", "seeds", "classes", "grids",
                                        "labelled_cases", "validation_folder", "preprocessing"}


def test_clinical_options_are_checked_before_anything_is_written(brats_folder, clinical_folder, cache_root, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(OptionError, match="clinical_ratio needs clinical"):
        train(_train_options(brats_folder, out, cache_root, clinical_ratio=0.3))
    with pytest.raises(OptionError, match=r"clinical_ratio must be in \(0, 1\], got 1.5"):
        train(_train_options(brats_folder, out, cache_root, clinical=str(clinical_folder), clinical_ratio=1.5))
    with pytest.raises(OptionError, match="4 case.s. are not clinical acquisitions"):
        train(_train_options(brats_folder, out, cache_root, clinical=str(brats_folder)))
    with pytest.raises(InputError, match="no manifest.csv"):
        train(_train_options(brats_folder, out, cache_root, clinical_val=str(tmp_path)))
    assert not out.exists()


def test_card_seeds_round_trip():
    """seed_field writes what _seed_set reads: one range as [first, last] (as cards always had it), broken
    runs as pairs (two lone seeds are not read as the range between them)."""
    assert frontend_eval.seed_field(range(1000, 1160)) == [1000, 1159]
    assert frontend_eval.seed_field([9, 5]) == [[5, 5], [9, 9]]
    for seeds in ([5, 9], [1, 2, 3, 7, 8, 20], [4]):
        assert frontend_eval._seed_set(frontend_eval.seed_field(seeds)) == set(seeds)


def test_clinical_cases_are_cached_in_parallel_after_torch_has_run(clinical_folder, tmp_path):
    """Two clinical cases prepared by two worker processes, in a process whose torch thread pool has already
    run (as in `darefuse train`): forked workers deadlocked in the brain-mask network; they are spawned now.
    Run in a child with a deadline, so that a hang fails the test instead of the suite."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    folder = tmp_path / "two"
    folder.mkdir()
    with open(clinical_folder / "manifest.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    rows = []
    for case_id in ("Tiny-clinical-001", "Tiny-clinical-002"):
        copy = dict(row, case_id=case_id)
        for key, name in file_names(CASE_ID).items():
            if name and (clinical_folder / name).exists():
                copy[key] = name.replace(CASE_ID, case_id)
                shutil.copy(clinical_folder / name, folder / copy[key])
        rows.append(copy)
    write_manifest(folder, rows)
    script = tmp_path / "cache_two.py"
    script.write_text(
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from DareFuseSlicerLib.training.train import Runtime, cached_cases\n"
        "if __name__ == '__main__':\n"
        "    torch.set_num_threads(2)\n"
        "    x = torch.randn(256, 256)\n"
        "    float((x @ x).sum())\n"
        "    cases = cached_cases(sys.argv[1], Path(sys.argv[2]), Runtime(torch.device('cpu')), None, 2, print)\n"
        "    print('cached', len(cases))\n")
    child = subprocess.Popen([sys.executable, str(script), str(folder), str(tmp_path / "cache")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and its hung workers
        child.communicate()
        pytest.fail("caching two clinical cases with two worker processes hung for 5 minutes")
    assert child.returncode == 0, stderr[-2000:]
    assert "cached 2" in stdout
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npz")) == ["Tiny-clinical-001.npz",
                                                                         "Tiny-clinical-002.npz"]


def test_tune_brainmask_fuse_scores_one_mask_per_case_on_the_reference(clinical_folder):
    """`tune-brainmask --fuse` scores what the pipeline gives out: one mask per case, on the reference's grid,
    from the mean share of the contrasts whose registration is believed (FLAIR's 35 degrees are not)."""
    from DareFuseSlicerLib.metrics import mask_dice
    from DareFuseSlicerLib.pipeline import brainmask
    from DareFuseSlicerLib.training.brainmask import (MARGINS_MM, OPENINGS_MM, THRESHOLDS, clinical_rows,
                                                      scored_shares, setting_scores)

    model = frontend.load_brainmask_model()
    row = clinical_rows(clinical_folder)[0]
    single = scored_shares(model, clinical_folder, row)
    (image, truth, tumour, grid, share), = scored_shares(model, clinical_folder, row, fuse=True)
    assert len(single) == len(CONTRASTS) and image.GetSize() == single[0][0].GetSize()
    assert grid.GetSize() == single[0][3].GetSize() and not np.allclose(share, single[0][4])
    mask = sitk.GetArrayFromImage(brainmask.refine(share, grid, image, brainmask.MaskSettings(0.5))) > 0
    assert mask_dice(mask, truth) > 0.9 and tumour.any()
    scores = setting_scores(model, clinical_folder, log=lambda line: None, fuse=True)
    assert len(scores) == len(THRESHOLDS) * len(OPENINGS_MM) * len(MARGINS_MM)
    assert all(s["mean_dice"] == s["worst_dice"] for s in scores)  # one sample: the reference's fused mask


def test_the_front_end_benchmark_scores_a_case_and_says_how_its_mask_errs(clinical_folder, tmp_path):
    """benchmarks/frontend_clinical.py on one engine-style case: its row's mL beyond and missed are the two ways
    the mask differs from the engine's, so with the engine mask's volume they give back the Dice it prints."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "frontend_clinical.py"
    out = subprocess.run([sys.executable, str(script), "--data", str(clinical_folder), "--cases", CASE_ID,
                          "--json", str(tmp_path / "front.json"), "--registrations"],
                         capture_output=True, text=True, check=True).stdout
    cells = [c.strip() for c in next(line for line in out.splitlines() if line.startswith(f"| {CASE_ID}")).split("|")]
    dice, (beyond, missed) = float(cells[3]), (float(v) for v in cells[4].split("/"))
    engine = sitk.ReadImage(str(clinical_folder / file_names(CASE_ID)["brainmask"]))
    truth_ml = np.count_nonzero(sitk.GetArrayViewFromImage(engine)) * np.prod(engine.GetSpacing()) / 1000.0
    assert beyond + missed > 0 and dice == pytest.approx(2 * (truth_ml - missed) / (2 * truth_ml - missed + beyond),
                                                         abs=2e-3)
    assert json.loads((tmp_path / "front.json").read_text())["summary"]["cases"] == 1
    # --registrations: a row per registration, its error beside the metric's relative gain; FLAIR's motion is
    # beyond head motion, so it is not accepted.
    errors = dict(e.split() for e in cells[5].split(", "))
    lines = out.splitlines()
    below = lines[next(i for i, line in enumerate(lines) if line.startswith("| case | contrast |")):]
    rows = {r[2]: r for r in ([c.strip() for c in line.split("|")] for line in below)
            if len(r) == 12 and r[1] == CASE_ID}
    assert set(rows) == set(MOTIONS) and all(rows[c][3] == errors[c] for c in MOTIONS)
    assert rows["flair"][9] == "False" and rows["t1ce"][9] == "True"
    assert all(r[10] in ("pyramid", "powell") for r in rows.values())
    assert all(float(r[6]) == pytest.approx(float(r[5]) / float(r[4]) - 1.0, abs=2e-3) for r in rows.values())


def _candidate_brainmask(folder, version: str, **card_changes):
    """The bundled brain-mask network copied into `folder` with its card changed (the weights, and so their
    SHA256, stay): a stand-in for a newly trained candidate."""
    import shutil

    path = folder / "brainmask.safetensors"
    shutil.copy(frontend.BRAINMASK_MODEL, path)
    card = {**read_card(frontend.BRAINMASK_MODEL), "version": version, **card_changes}
    card_path(path).write_text(json.dumps(card))
    return path


def test_evaluate_judges_a_candidate_brain_mask_network(clinical_folder, tmp_path, monkeypatch):
    """`darefuse evaluate --brainmask` feeds whole-head cases through the candidate's front end (its card's mask
    settings), checks the held-out seeds against its card too, and is never recorded in a card."""
    from DareFuseSlicerLib.training.evaluate import _brainmask_lines, load_case, read_rows, run_evaluation

    settings = {**read_card(frontend.BRAINMASK_MODEL)["mask_settings"], "margin_mm": 2.0}
    candidate = load_model(_candidate_brainmask(tmp_path, "brainmask-test", mask_settings=settings))
    row = read_rows(clinical_folder)[0]
    assert load_case(clinical_folder, row).front.margin_mm == 6.0  # the bundled card's
    case = load_case(clinical_folder, row, CONTRASTS, candidate)
    assert case.front.margin_mm == 2.0
    # The segmentation is run on the case's own front end (the candidate's), never on another one (session 17's
    # judgement of brainmask-v3 segmented through the bundled one: the model's inputs were not the candidate's).
    from DareFuseSlicerLib.training.evaluate import predict_pipeline

    raw_model = load_model(frontend.BRAINMASK_MODEL.parent / "darefuse-raw.safetensors")
    monkeypatch.setattr(frontend, "load_brainmask_model", lambda path=None: pytest.fail("a brain mask was loaded"))
    monkeypatch.setattr(frontend, "run_front_end", lambda *a, **k: pytest.fail("the front end ran twice"))
    prediction = predict_pipeline(raw_model, case)
    assert prediction.label.shape == case.truth.shape
    monkeypatch.undo()
    with pytest.raises(ValueError, match="front end given was run on a preprocessed study"):
        run.run(case.images, raw_model, outputs=("segmentation",), front_end=frontend.FrontEnd("preprocessed", {}))
    (tmp_path / "seen").mkdir()
    trained_on_it = _candidate_brainmask(tmp_path / "seen", "bm-seen", data_recipe={"train_seeds": [77, 77]})
    raw = str(frontend.BRAINMASK_MODEL.parent / "darefuse-raw.safetensors")
    with pytest.raises(OptionError, match="not held out for model brain mask bm-seen"):
        run_evaluation(clinical_folder, [raw], tmp_path / "r", brainmask=str(trained_on_it), log=lambda *_: None)
    with pytest.raises(OptionError, match="bundled brain-mask network"):
        run_evaluation(clinical_folder, [raw], tmp_path / "r", brainmask=str(trained_on_it), record=True)
    assert not (tmp_path / "r.json").exists()
    summary = {"data": {"grids": ["clinical"]}, "brainmask": {"path": "/c/bm.safetensors", "version": "bm-x",
                                                              "sha256": "0123456789", "bundled": False}}
    assert _brainmask_lines(summary)[0] == ("Brain-mask network of the front end: bm-x (a candidate, not the bundled "
                                            "one: `/c/bm.safetensors`; sha256 01234567...).")
    assert _brainmask_lines({**summary, "data": {"grids": ["brats"]}}) == []
