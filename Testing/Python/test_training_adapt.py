"""`darefuse adapt` on tiny site folders (BraTS names, no twins, no manifest): the model and its card, the
pseudo-label filter, the frozen generator, bad inputs, cancelling."""
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.cli import main
from DareFuseSlicerLib.constants import CLASSES
from DareFuseSlicerLib.errors import Cancelled, InputError
from DareFuseSlicerLib.network.store import card_path, load_model, read_card, sha256_of
from DareFuseSlicerLib.training.adapt import (
    MODEL_FILE,
    AdaptOptions,
    adapt,
    cached_site_case,
    prepare_site_case,
    scan_site,
    unlabelled_only,
)
from DareFuseSlicerLib.training.pseudo_labels import (
    Calibration,
    calibrate,
    class_threshold,
    hold_back_background,
    margin_voxels,
    perturb_student,
    pseudo_label_loss,
    pseudo_labels,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_training_dataset import make_folder, save_fresh_model  # noqa: E402

SEED = 740000  # SEEDS.md: adapt tests 740000-740099


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An engine-style folder (manifest, twins); classes cycle: no_tumour, glioma, meningioma, metastasis."""
    return make_folder(tmp_path_factory.mktemp("adapt-engine"), n_cases=4, seed=SEED)


def _copy_case(engine: Path, index: int, target: Path, kinds=("t1n", "t1c", "t2w", "t2f", "seg")) -> str:
    case_id = f"Tiny-{SEED:03d}-{index:03d}"
    target.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        shutil.copy(engine / f"{case_id}-{kind}.nii.gz", target / f"{case_id}-{kind}.nii.gz")
    return case_id


@pytest.fixture(scope="module")
def site(engine, tmp_path_factory):
    """A site's layout: two contoured cases; two without contours, one of them with T1c and FLAIR only."""
    root = tmp_path_factory.mktemp("adapt-site")
    for index in (1, 2):
        _copy_case(engine, index, root / "labelled")
    _copy_case(engine, 0, root / "unlabelled", ("t1n", "t1c", "t2w", "t2f"))
    _copy_case(engine, 3, root / "unlabelled", ("t1c", "t2f"))
    return root


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    return save_fresh_model(tmp_path_factory.mktemp("adapt-init") / "darefuse.safetensors", SEED,
                            postprocess={"min_component_ml": 0.5})


def _options(site, init_model, out, **kw):
    base = dict(init=str(init_model), labelled=str(site / "labelled"), unlabelled=str(site / "unlabelled"),
                out=str(out), epochs=1, seed=SEED, roi=(24, 24, 24), threads=1, lr=1e-2, device="cpu")
    base.update(kw)
    return AdaptOptions(**base)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_adapt_writes_a_loadable_model_whose_card_names_the_site_data(site, init_model, tmp_path):
    # 4 steps: from the 4th on, the EMA's blend of two equal weights no longer returns them bit for bit.
    path = adapt(_options(site, init_model, tmp_path / "run", max_uncertainty=0.5, epochs=2))
    assert path == tmp_path / "run" / MODEL_FILE
    model = load_model(path)  # checks the card's SHA256
    card = model.card
    data = card["site_data"]
    assert (data["labelled_cases"], data["unlabelled_cases"]) == (2, 2)
    for role in ("labelled", "unlabelled"):
        folder = site / role
        files = {p.name: _sha(p) for p in folder.iterdir()}
        recorded = {name: digest for case in data[f"{role}_sha256"].values() for name, digest in case.items()}
        assert recorded == files  # every file, and only the site's files (no twin, no manifest)
    assert "Tiny-740000-001-seg.nii.gz" in data["labelled_sha256"]["Tiny-740000-001"]
    assert card["initialised_from"]["sha256"] == sha256_of(init_model)
    assert card["adaptation"]["pseudo_label_max_uncertainty"] == 0.5
    assert 0.0 <= card["adaptation"]["pseudo_label_kept_fraction"] <= 1.0
    assert "frozen" in card["adaptation"]["generator"]
    assert "--max-uncertainty 0.5" in card["training_command"] and "--init" in card["training_command"]
    assert card["training"]["steps"] == 4  # two passes over 2 unlabelled cases, one of each kind per step
    assert card["postprocess"] == {"min_component_ml": 0.5}  # inherited, and the card says so
    assert not list((tmp_path / "run").glob(".adapt-partial-*"))

    # The generator is exactly the init model's; the rest was trained.
    start = load_model(init_model).state_dict()
    after = model.state_dict()
    generator = [k for k in start if k.startswith("generator.")]
    assert generator and all(torch.equal(start[k], after[k]) for k in generator)
    assert not all(torch.equal(start[k], after[k]) for k in start if k not in generator)
    out = model(torch.zeros(1, 4, 24, 24, 24), torch.ones(1, 4))
    assert torch.isfinite(out["evidence"]).all()

    with pytest.raises(InputError, match="already holds darefuse.safetensors"):
        adapt(_options(site, init_model, tmp_path / "run"))


def test_without_an_unlabelled_folder_it_fine_tunes_on_the_labelled_cases_alone(site, init_model, tmp_path):
    """The label curve's supervised arm: no --unlabelled, no pseudo-labels, an epoch is a pass over the labelled."""
    path = adapt(_options(site, init_model, tmp_path / "run", unlabelled=None, epochs=2))
    card = load_model(path).card
    data = card["site_data"]
    assert (data["labelled_cases"], data["unlabelled_cases"], data["unlabelled_folder"]) == (2, 0, None)
    assert data["unlabelled_sha256"] == {} and len(data["labelled_sha256"]) == 2
    assert card["adaptation"]["pseudo_label_kept_fraction"] is None and "alone" in card["adaptation"]["method"]
    assert card["training"]["steps"] == 4 and card["training"]["passes_over"] == "labelled cases"
    assert "--unlabelled" not in card["training_command"]
    start, after = load_model(init_model).state_dict(), load_model(path).state_dict()
    assert not all(torch.equal(start[k], after[k]) for k in start if not k.startswith("generator."))

    # a budget in steps: the label curve's arms get the same number whatever else the machine runs
    path = adapt(_options(site, init_model, tmp_path / "steps", unlabelled=None, epochs=None, steps=3))
    card = load_model(path).card
    assert card["training"]["steps"] == 3 and "--steps 3" in card["training_command"]


def test_the_cache_gives_the_prepared_case_and_prepares_again_when_a_file_changes(engine, tmp_path, monkeypatch):
    import DareFuseSlicerLib.training.adapt as adapt_module

    folder = tmp_path / "labelled"
    _copy_case(engine, 1, folder)
    case = scan_site(folder, labelled=True)[0]
    fresh, fresh_present = prepare_site_case(case)
    cache = tmp_path / "cache"
    cache.mkdir()
    first, _ = cached_site_case(case, cache)
    assert [p.name for p in cache.iterdir()] == [f"site-{case.case_id}-seg.npz"]

    calls = []
    real = adapt_module.prepare_site_case
    monkeypatch.setattr(adapt_module, "prepare_site_case", lambda c: calls.append(c) or real(c))
    again, present = cached_site_case(case, cache)
    assert calls == []  # read from the cache
    for name in ("image", "label", "foreground"):
        assert (getattr(again, name) == getattr(fresh, name)).all(), name
    assert (present == fresh_present).all() and again.labelled

    seg = folder / f"{case.case_id}-seg.nii.gz"
    edited = sitk.ReadImage(str(seg))
    edited = sitk.Image(edited.GetSize(), edited.GetPixelID()) + 0
    edited.CopyInformation(sitk.ReadImage(str(seg)))
    sitk.WriteImage(edited, str(seg))  # the contour erased: the cached label is stale
    case = scan_site(folder, labelled=True)[0]  # the next run scans the folder again
    relabelled, _ = cached_site_case(case, cache)
    assert len(calls) == 1 and relabelled.label.max() == 0 and fresh.label.max() > 0


def test_pseudo_labels_keep_only_low_uncertainty_voxels():
    """K = 4 labels, uncertainty 4 / (4 + sum(evidence)): 0.1 (kept), 0.5, exactly 0.2 (not below: dropped)."""
    evidence = torch.zeros(1, 4, 3, 1, 1)
    evidence[0, 1, 0] = 36.0  # S = 40
    evidence[0, 0, 1] = 4.0  # S = 8
    evidence[0, 3, 2] = 16.0  # S = 20
    labels, keep = pseudo_labels(evidence, 0.2)
    assert labels[0, :, 0, 0].tolist() == [1, 0, 3]
    assert keep[0, :, 0, 0].tolist() == [True, False, False]
    assert pseudo_labels(evidence, 0.21)[1][0, :, 0, 0].tolist() == [True, False, True]
    # one threshold per class: label 0 (u 0.5) kept below 0.6, label 1 (u 0.1) dropped at 0.05, label 3 at 0.21
    assert pseudo_labels(evidence, [0.6, 0.05, 0.2, 0.21])[1][0, :, 0, 0].tolist() == [False, True, True]

    logits = torch.zeros(1, 4, 3, 1, 1, requires_grad=True)
    loss = pseudo_label_loss(logits, labels, keep)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())  # uniform logits, one kept voxel
    loss.backward()
    assert logits.grad[0, :, 1:].abs().sum() == 0 and logits.grad[0, :, 0].abs().sum() > 0  # dropped: no gradient
    none = pseudo_label_loss(logits, labels, torch.zeros_like(keep))
    assert none.item() == 0.0 and none.requires_grad


def test_a_class_threshold_is_the_top_of_the_last_bin_precise_enough():
    """Bins of 0.05 walked up from 0: sparse ones before the first full bin are passed over; then a bin below the
    precision, or a sparse one, ends the walk."""
    def bins(*spec):  # (bin low edge, voxels, of which right)
        u = np.concatenate([np.full(n, low + 0.01) for low, n, _ in spec])
        right = np.concatenate([np.arange(n) < r for _, n, r in spec])
        return u, right

    u, right = bins((0.05, 3, 0), (0.25, 100, 100), (0.30, 100, 96), (0.35, 100, 90), (0.40, 100, 100))
    assert class_threshold(u, right, 0.95) == pytest.approx(0.35)  # 0.05's 3 wrong labels say too little
    assert class_threshold(u, right, 0.90) == pytest.approx(0.45)
    assert class_threshold(u, right, 0.97) == pytest.approx(0.30)
    u, right = bins((0.25, 100, 100), (0.30, 20, 0), (0.35, 100, 100))
    assert class_threshold(u, right, 0.95) == pytest.approx(0.30)  # a sparse bin after a full one ends the walk
    u, right = bins((0.10, 100, 50), (0.15, 100, 100))
    assert class_threshold(u, right, 0.95) == 0.0  # the first full bin falls short: never kept
    assert class_threshold(np.zeros(0), np.zeros(0, bool), 0.95) == 0.0  # a class the model never predicts


class _FixedTeacher(torch.nn.Module):
    """Evidence set by the crop's image: class argmax = channel 0 of the image, evidence strength = channel 1."""

    def forward(self, image, present, use_prior=True):
        label = image[:, 0].long()
        evidence = torch.nn.functional.one_hot(label, 4).movedim(-1, 1).float() * image[:, 1:2]
        return {"evidence": evidence}


def test_calibration_keeps_a_class_only_as_far_up_as_its_labels_were_right():
    """Two crops: the teacher calls every voxel class 3 with uncertainty 4/(4+36) = 0.1 where it is right and
    0.5 (evidence 4) where the truth is background; class 1 is called with u 0.1 and always wrong."""
    crops = []
    for _ in range(2):
        image = torch.zeros(2, 10, 10, 10)
        label = torch.zeros(10, 10, 10, dtype=torch.long)
        image[0, :5], image[1, :5], label[:5] = 3, 36, 3  # right, confident
        image[0, 5:8], image[1, 5:8] = 3, 4  # wrong (truth 0), u = 0.5
        image[0, 8:], image[1, 8:], label[8:] = 1, 36, 2  # class 1 called on class 2: wrong, confident
        crops.append({"image": image, "present": torch.ones(4), "label": label})
    calibration = calibrate(_FixedTeacher(), crops, 0.95, torch.device("cpu"))
    assert isinstance(calibration, Calibration) and calibration.voxels == [0, 400, 0, 1600]
    assert calibration.thresholds == [0.0, 0.0, 0.0, pytest.approx(0.15)]
    assert calibration.as_card()["target_precision"] == 0.95
    checked = []
    calibrate(_FixedTeacher(), crops, 0.95, torch.device("cpu"), check=lambda: checked.append(1))
    assert len(checked) == 2


@pytest.mark.parametrize("thresholds, kept", [([1.01] * 4, 1.0), ([0.0] * 4, 0.0)])
def test_calibrated_thresholds_decide_what_the_student_is_trained_towards(site, init_model, tmp_path, monkeypatch,
                                                                         thresholds, kept):
    """--pseudo-precision: the thresholds the calibration returns are the ones the steps apply; the card and
    the recorded command say which rule ran, and the log lists the thresholds."""
    import DareFuseSlicerLib.training.adapt as adapt_module

    seen = []
    monkeypatch.setattr(adapt_module, "calibrate", lambda teacher, crops, precision, device, check, **kw: seen.append(
        len(list(crops))) or Calibration(thresholds, precision, [1, 2, 3, 4]))
    path = adapt(_options(site, init_model, tmp_path / "run", pseudo_precision=0.9))
    card = load_model(path).card
    assert seen == [8]  # 4 crops of each of the 2 labelled cases
    adaptation = card["adaptation"]
    assert adaptation["pseudo_label_kept_fraction"] == kept
    assert adaptation["pseudo_label_max_uncertainty"] is None
    assert adaptation["pseudo_label_calibration"]["thresholds"] == thresholds
    assert "calibrated threshold" in adaptation["method"]
    assert "--pseudo-precision 0.9" in card["training_command"] and "--max-uncertainty" not in card["training_command"]
    assert "pseudo-label thresholds per class" in (tmp_path / "run" / "adapt.log").read_text()


def test_the_real_calibration_runs_inside_adapt(site, init_model, tmp_path):
    """No stand-in: the init model calibrates on the labelled crops; one threshold per class, in [0, 1]."""
    card = load_model(adapt(_options(site, init_model, tmp_path / "run", pseudo_precision=0.9))).card
    calibration = card["adaptation"]["pseudo_label_calibration"]
    assert len(calibration["thresholds"]) == len(calibration["calibration_voxels"]) == 4
    assert all(0.0 <= t <= 1.0 for t in calibration["thresholds"])
    assert sum(calibration["calibration_voxels"]) == 8 * 24 ** 3


def test_site_folders_with_a_manifest_and_partial_cases(engine, site):
    """An engine folder is a site folder too: twins and the manifest's other files are not cases, the manifest
    gives the class; a case with two contrasts is prepared with the other two marked absent."""
    cases = scan_site(engine, labelled=True)
    assert [c.case_id for c in cases] == [f"Tiny-{SEED}-{i:03d}" for i in range(4)]
    assert [c.class_index for c in cases] == list(range(len(CLASSES)))
    assert all(len(c.images) == 4 and "tumourfree" not in str(c.files) for c in cases)
    partial = [c for c in scan_site(site / "unlabelled", labelled=False) if c.case_id.endswith("003")][0]
    assert partial.seg is None and partial.class_index < 0  # no manifest: no class target
    cached, present = prepare_site_case(partial)
    # --unlabelled at all the studies, contoured ones included: those are used as labelled only.
    everything = scan_site(engine, labelled=False)
    assert [c.case_id for c in unlabelled_only(everything, cases[1:3], engine)] == [cases[0].case_id, cases[3].case_id]
    assert present.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert cached.image[[0, 2]].max() == 0 and cached.image[[1, 3]].std() > 0


def test_bad_inputs_are_refused_in_one_line_before_anything_is_written(engine, site, init_model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_seg = tmp_path / "no-seg"
    _copy_case(engine, 1, no_seg, ("t1n", "t2f"))
    seg_only = tmp_path / "seg-only"
    _copy_case(engine, 2, seg_only, ("seg",))
    mixed = tmp_path / "mixed"
    _copy_case(engine, 1, mixed)
    _copy_case(engine, 2, mixed, ("seg",))
    tampered = tmp_path / "tampered" / "darefuse.safetensors"
    tampered.parent.mkdir()
    tampered.write_bytes(init_model.read_bytes()[:-1] + bytes([init_model.read_bytes()[-1] ^ 0xFF]))
    card_path(tampered).write_text(card_path(init_model).read_text())
    cases = [
        (dict(labelled=str(empty)), f"Labelled folder {empty} holds no case"),
        (dict(unlabelled=str(empty)), f"Unlabelled folder {empty} holds no case"),
        (dict(labelled=str(no_seg)), f"Labelled folder {no_seg}: case Tiny-740000-001 has no segmentation"),
        (dict(labelled=str(mixed)), f"Labelled folder {mixed}: case Tiny-740000-002 has no image"),
        (dict(unlabelled=str(seg_only)), f"Unlabelled folder {seg_only} holds only segmentation files"),
        (dict(unlabelled=str(site / "labelled")), "holds only cases of the labelled folder"),
        (dict(init=str(tmp_path / "missing.safetensors")), "missing.safetensors does not exist"),
        (dict(init=str(tampered)), "does not match its card"),
        (dict(steps=0), "steps must be at least 1, got 0"),
        (dict(pseudo_precision=1.5), "pseudo_precision must be in (0, 1], got 1.5"),
        (dict(background_margin=-1.0), "background_margin must be at least 0 mm, got -1.0"),
    ]
    for change, message in cases:
        with pytest.raises(InputError) as error:
            adapt(_options(site, init_model, tmp_path / "out", **change))
        assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()

    code = main(["adapt", "--init", str(init_model), "--labelled", str(no_seg), "--unlabelled",
                 str(site / "unlabelled"), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no segmentation" in err[0]
    code = main(["adapt", "--init", str(init_model), "--labelled", str(site / "labelled"), "--out", str(tmp_path / "out"),
                 "--background-margin", "-2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--background-margin must be at least 0 mm, got -2.0" in err[0]

    with pytest.raises(SystemExit) as exit_:  # one threshold rule or the other, not both
        main(["adapt", "--init", str(init_model), "--labelled", str(site / "labelled"), "--out", str(tmp_path / "o"),
              "--max-uncertainty", "0.3", "--pseudo-precision", "0.9"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
def test_a_cancelled_run_writes_no_model(site, init_model, tmp_path, how):
    """cancel() -> True, or Ctrl-C (KeyboardInterrupt) in the middle of the steps: no model file, no card, no
    staging folder; the log says where it stopped."""
    steps = []

    def progress(fraction, message):
        if message.startswith("step"):
            steps.append(message)
            if how == "interrupt":
                raise KeyboardInterrupt

    expected = Cancelled if how == "cancel" else KeyboardInterrupt
    with pytest.raises(expected):
        adapt(_options(site, init_model, tmp_path / "run", epochs=3), progress=progress, cancel=lambda: len(steps) >= 1)
    run = tmp_path / "run"
    assert len(steps) == 1
    assert sorted(p.name for p in run.iterdir()) == ["adapt.log"]
    assert "no model written" in (run / "adapt.log").read_text()


def test_an_interrupt_while_saving_leaves_no_half_written_model(site, init_model, tmp_path, monkeypatch):
    """Ctrl-C after part of the weights file is written: the part was in the staging folder, which goes."""
    import DareFuseSlicerLib.network.store as store

    def half_written(model, path, card):
        Path(path).write_bytes(b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "save_model", half_written)  # what store.save_model_staged calls
    with pytest.raises(KeyboardInterrupt):
        adapt(_options(site, init_model, tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapt.log"]
    assert "stopped by KeyboardInterrupt after 2 steps; no model written" in (tmp_path / "run" / "adapt.log").read_text()


def test_the_command_shows_progress_and_prints_the_model(site, init_model, tmp_path, capsys):
    code = main(["adapt", "--init", str(init_model), "--labelled", str(site / "labelled"), "--unlabelled",
                 str(site / "unlabelled"), "--out", str(tmp_path / "run"), "--epochs", "1", "--roi", "24", "24", "24",
                 "--threads", "1", "--device", "cpu", "--seed", str(SEED)])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == f"model: {tmp_path / 'run' / MODEL_FILE}"
    assert "step 2, loss" in captured.err and "pseudo-labels kept" in captured.err
    card = read_card(tmp_path / "run" / MODEL_FILE)
    command = card["training_command"]
    assert command.startswith("darefuse adapt --init ") and "--epochs 1" in command and "--roi 24 24 24" in command
    # The recorded command parses to the same options (every flag it writes exists).
    from DareFuseSlicerLib.cli import build_parser
    import shlex
    again = build_parser().parse_args(shlex.split(command)[1:])
    assert (again.epochs, tuple(again.roi), again.threads, again.seed) == (1, (24, 24, 24), 1, SEED)


def test_sigterm_on_the_command_line_writes_no_model(site, init_model, tmp_path):
    """SIGTERM (as Ctrl-C) while the command runs its steps: exit status 143, one line, only adapt.log left."""
    import os
    import signal
    import subprocess
    import time

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "DareFuseSlicer"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "DareFuseSlicerLib.cli", "adapt", "--init", str(init_model), "--labelled",
         str(site / "labelled"), "--unlabelled", str(site / "unlabelled"), "--out", str(run), "--epochs", "10000",
         "--roi", "24", "24", "24", "--threads", "1", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core machine starts torch slowly
        while not ((run / "adapt.log").is_file() and "epoch 0:" in (run / "adapt.log").read_text()):
            assert process.poll() is None and time.monotonic() < deadline, "no step logged before the deadline"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    # the last line is ours; a library's own notice (matplotlib building its font cache) may come before it
    assert err.strip().splitlines()[-1] == "darefuse: terminated; nothing was written." and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["adapt.log"]
    assert "stopped by Terminated" in (run / "adapt.log").read_text()


def test_the_pseudo_label_benchmark_prints_a_row_per_class(site, init_model):
    """benchmarks/pseudo_labels.py (docs/pseudo-labels.md): on labelled cases, a row per class with its labels
    (all the crops' voxels between them) and the share one threshold keeps."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "pseudo_labels.py"), "--model", str(init_model),
                          "--labelled", str(site / "labelled"), "--cases", "2", "--max-uncertainty", "1.0",
                          "--class-gate", "1e-9", "1.0", "--background-margin", "0", "6"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    out.stdout, *margins = out.stdout.split("\n### --background-margin ")
    table, rest = out.stdout.split("\n| truth |")
    fates, gates = rest.split("\n| --pseudo-class-gate |")
    assert [m.split(" ")[0] for m in margins] == ["0.0", "6.0"]
    held = [int(m.split("background labels held back: ")[1].split(" ")[0]) for m in margins]
    assert held[0] == 0 and held[1] >= held[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "class |" not in line]
    fate_rows = [line.split("|")[1:-1] for line in fates.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0].strip() for r in fate_rows] == ["background", "NETC", "SNFH", "ET", "tumour core (TC)"]
    for r in fate_rows:  # each true voxel is kept as one class or not kept
        assert int(r[1]) == 0 or abs(sum(float(x) for x in r[2:]) - 1.0) < 1e-3
    assert [r[0].strip() for r in rows] == ["background", "NETC", "SNFH", "ET"]
    gate_rows = [line.split("|")[1:-1] for line in gates.splitlines() if line.startswith("| ") and "---" not in line]
    assert [int(r[1]) for r in gate_rows] == [2, 0]  # a gate at ~0 takes both crops, at 1.0 neither
    labelled = [int(r[1]) for r in rows]
    assert sum(labelled) == 2 * 64 * 80 * 64  # one default-size crop of each case
    kept = [float(r[2]) for r in rows]
    assert all(k == 1.0 for k, n in zip(kept, labelled) if n)  # threshold 1.0: all kept (u < 1 with evidence > 0)


def test_the_pseudo_label_weight_ramps_up_to_its_full_value():
    """--ramp-up N: exp(-5 (1 - t/N)^2) for steps t < N (exp(-5) at the first step), then 1; 0 means 1 throughout."""
    from DareFuseSlicerLib.training.pseudo_labels import ramp_weight

    assert ramp_weight(0, 0) == 1.0 and ramp_weight(7, 0) == 1.0
    assert ramp_weight(0, 100) == pytest.approx(np.exp(-5.0))
    assert ramp_weight(50, 100) == pytest.approx(np.exp(-1.25))
    weights = [ramp_weight(t, 100) for t in range(0, 101)]
    assert all(a < b for a, b in zip(weights[:100], weights[1:])) and weights[100] == 1.0


def test_a_ramped_run_weighs_each_step_by_the_ramp_and_records_it(site, init_model, tmp_path, monkeypatch):
    import DareFuseSlicerLib.training.adapt as adapt_module
    from DareFuseSlicerLib.training.pseudo_labels import ramp_weight

    calls = []
    monkeypatch.setattr(adapt_module, "ramp_weight", lambda step, ramp: calls.append((step, ramp)) or ramp_weight(step, ramp))
    card = load_model(adapt(_options(site, init_model, tmp_path / "run", ramp_up=10))).card
    assert calls == [(0, 10), (1, 10)]  # one epoch: 2 steps, each with its unlabelled crop
    assert card["adaptation"]["pseudo_weight_ramp_up_steps"] == 10 and "--ramp-up 10" in card["training_command"]
    with pytest.raises(InputError, match="ramp_up must be at least 0, got -1"):
        adapt(_options(site, init_model, tmp_path / "bad", ramp_up=-1))


def _smooth_crops():
    """Two brain-like crops (B=2, 4 contrasts): smooth intensity inside a box, zero outside; the second lacks T2."""
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, 24),) * 3, indexing="ij")
    image = torch.stack([torch.sin(3 * z + c) + torch.cos(2 * y - c) + x for c in range(4)])
    foreground = torch.zeros(2, 1, 24, 24, 24)
    foreground[:, :, 4:20, 3:21, 5:19] = 1
    present = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 1]])
    return image[None].repeat(2, 1, 1, 1, 1) * foreground * present[:, :, None, None, None], foreground, present


def test_the_students_view_is_the_crop_perturbed_in_intensity_inside_the_brain():
    """--perturb-student's view: zero outside the brain and in a missing contrast, as inputs are; its own
    seeded draw; intensity-only, so each voxel still shows its own anatomy (a strong correlation with the crop)."""
    x, foreground, present = _smooth_crops()
    view = perturb_student(x, foreground, present, seed=3)
    assert torch.equal(view, perturb_student(x, foreground, present, seed=3))
    assert not torch.equal(view, perturb_student(x, foreground, present, seed=4))
    assert bool((view * (1 - foreground) == 0).all()) and bool((view[1, 2] == 0).all())
    inside = foreground[:, 0].bool()
    for b in range(2):
        for c in range(4):
            if present[b, c]:
                original, seen = x[b, c][inside[b]], view[b, c][inside[b]]
                assert (seen - original).abs().mean() > 0.05  # perturbed ...
                assert torch.corrcoef(torch.stack([original, seen]))[0, 1] > 0.8  # ... in place (a flip would fail)


def test_a_perturbed_run_shows_the_student_the_perturbed_crop_and_the_teacher_the_crop(site, init_model, tmp_path,
                                                                                       monkeypatch):
    import DareFuseSlicerLib.training.adapt as adapt_module
    from DareFuseSlicerLib.network.model import DareFuseNet

    views, inputs = [], []
    real_perturb, real_forward = adapt_module.perturb_student, DareFuseNet.forward
    monkeypatch.setattr(adapt_module, "perturb_student", lambda x, *a: views.append(
        (x.clone(), real_perturb(x, *a))) or views[-1][1])
    monkeypatch.setattr(DareFuseNet, "forward", lambda self, x, present, use_prior=True: inputs.append(
        (self.training, x.clone())) or real_forward(self, x, present, use_prior))
    card = load_model(adapt(_options(site, init_model, tmp_path / "run", perturb_student=True))).card
    assert len(views) == 2  # one epoch: 2 steps, each with one unlabelled crop
    students = [x for training, x in inputs if training]
    teachers = [x for training, x in inputs if not training]
    assert len(students) == len(teachers) == 2
    for (crop, view), student, teacher in zip(views, students, teachers):
        assert torch.equal(teacher, crop) and torch.equal(student[1:], view)  # batch: labelled row, then unlabelled
        assert not torch.equal(student[1:], crop)
    assert card["adaptation"]["student_perturbation"]["noise_std"] > 0
    assert card["training_command"].split().count("--perturb-student") == 1  # a bare switch, no "True"

    views.clear()
    card = load_model(adapt(_options(site, init_model, tmp_path / "plain"))).card
    assert views == [] and card["adaptation"]["student_perturbation"] is None
    assert "--perturb-student" not in card["training_command"]


def test_the_class_gate_labels_a_no_tumour_crop_background_throughout():
    from DareFuseSlicerLib.training.pseudo_labels import gate_by_class

    labels = torch.tensor([[[1, 2], [3, 0]], [[2, 2], [0, 1]]])
    keep = torch.tensor([[[True, False], [False, True]], [[False, True], [True, False]]])
    p_no_tumour = torch.tensor([0.97, 0.60])
    gated_labels, gated_keep, gated = gate_by_class(labels, keep, p_no_tumour, 0.95)
    assert gated.tolist() == [True, False]
    assert bool((gated_labels[0] == 0).all()) and bool(gated_keep[0].all())
    assert torch.equal(gated_labels[1], labels[1]) and torch.equal(gated_keep[1], keep[1])
    same_labels, same_keep, none = gate_by_class(labels, keep, p_no_tumour, None)
    assert torch.equal(same_labels, labels) and torch.equal(same_keep, keep) and not bool(none.any())


@pytest.mark.parametrize("gate, share", [(1e-6, 1.0), (1.0, 0.0)])
def test_a_gated_run_trains_gated_crops_towards_background_and_records_it(site, init_model, tmp_path, monkeypatch,
                                                                         gate, share):
    import DareFuseSlicerLib.training.adapt as adapt_module

    targets = []
    real_loss = adapt_module.pseudo_label_loss
    monkeypatch.setattr(adapt_module, "pseudo_label_loss", lambda logits, labels, keep, balanced: targets.append(
        (labels.clone(), keep.clone())) or real_loss(logits, labels, keep, balanced))
    card = load_model(adapt(_options(site, init_model, tmp_path / "run", pseudo_class_gate=gate))).card
    assert len(targets) == 2
    if share:  # every crop gated: all background, all kept
        assert all(bool((labels == 0).all()) and bool(keep.all()) for labels, keep in targets)
    assert card["adaptation"]["pseudo_label_class_gate"] == gate
    assert card["adaptation"]["pseudo_label_gated_crops"] == share
    assert f"--pseudo-class-gate {gate}" in card["training_command"]
    with pytest.raises(InputError, match="pseudo_class_gate must be in"):
        adapt(_options(site, init_model, tmp_path / "bad", pseudo_class_gate=0.0))


def test_background_can_be_held_to_its_own_stricter_precision(site, init_model, tmp_path):
    """--background-precision: background's threshold walks to its own target, the tumour classes' to
    --pseudo-precision. Here background is called with u 0.1 and right 97 % of the time, ET right always."""
    crops = []
    for _ in range(2):
        image = torch.zeros(2, 10, 10, 10)
        label = torch.zeros(10, 10, 10, dtype=torch.long)
        image[1] = 36  # u = 4 / (4 + 36) = 0.1 everywhere
        image[0, 5:], label[5:] = 3, 3
        label[0, 0, :10], label[0, 1, :5] = 1, 1  # 15 of the 500 background calls are tumour: 97 % right
        crops.append({"image": image, "present": torch.ones(4), "label": label})
    loose = calibrate(_FixedTeacher(), crops, 0.95, torch.device("cpu"))
    strict = calibrate(_FixedTeacher(), crops, 0.95, torch.device("cpu"), background_precision=0.99)
    assert loose.thresholds[0] == pytest.approx(0.15) and strict.thresholds[0] == 0.0
    assert loose.thresholds[3] == strict.thresholds[3] == pytest.approx(0.15)
    assert strict.as_card()["background_precision"] == 0.99 and loose.as_card()["background_precision"] is None

    card = load_model(adapt(_options(site, init_model, tmp_path / "run", pseudo_precision=0.9,
                                     background_precision=0.99))).card
    assert card["adaptation"]["pseudo_label_calibration"]["background_precision"] == 0.99
    assert "--pseudo-precision 0.9 --background-precision 0.99" in card["training_command"]
    with pytest.raises(InputError, match="background_precision needs pseudo_precision"):
        adapt(_options(site, init_model, tmp_path / "bad", background_precision=0.99))
    with pytest.raises(InputError, match="background_precision must be in"):
        adapt(_options(site, init_model, tmp_path / "bad", pseudo_precision=0.9, background_precision=1.5))


def test_a_margin_holds_back_the_background_labels_next_to_the_teachers_tumour():
    """--background-margin: background labels within the margin (a cube) of a tumour label are not kept; tumour
    labels and far background keep their keep; margin 0 changes nothing. 4 mm is 2 voxels of 2 mm."""
    labels = torch.zeros(1, 9, 9, 9, dtype=torch.long)
    labels[0, 4, 4, 4] = 2
    keep = torch.ones_like(labels, dtype=torch.bool)
    held = ~hold_back_background(labels, keep, 1)
    assert int(held.sum()) == 26 and bool(held[0, 3:6, 3:6, 3:6].sum() == 26) and not bool(held[0, 4, 4, 4])
    assert int((~hold_back_background(labels, keep, 2)).sum()) == 5 ** 3 - 1
    assert torch.equal(hold_back_background(labels, keep, 0), keep)
    assert not bool(hold_back_background(torch.zeros_like(labels), keep, 2).logical_not().any())  # no tumour
    assert (margin_voxels(4.0, 2.0), margin_voxels(1.0, 2.0), margin_voxels(0.0, 2.0)) == (2, 1, 0)


def test_calibration_leaves_out_the_background_labels_a_margin_holds_back():
    """Background is called with u 0.1 everywhere; its only wrong calls (truth NETC) are in the slab next to the
    teacher's ET. Counted, they pull background below 0.95; held back by a 1-voxel margin, background is right."""
    crops = []
    for _ in range(2):
        image = torch.zeros(2, 10, 10, 10)
        label = torch.zeros(10, 10, 10, dtype=torch.long)
        image[1] = 36  # u = 0.1
        image[0, 5:], label[5:] = 3, 3
        label[4] = 1  # the teacher's rim: background called on tumour
        crops.append({"image": image, "present": torch.ones(4), "label": label})
    counted = calibrate(_FixedTeacher(), crops, 0.95, torch.device("cpu"))
    held_back = calibrate(_FixedTeacher(), crops, 0.95, torch.device("cpu"), margin=1)
    assert counted.thresholds[0] == 0.0 and counted.voxels[0] == 1000
    assert held_back.thresholds[0] == pytest.approx(0.15) and held_back.voxels[0] == 800
    assert held_back.thresholds[3] == counted.thresholds[3] == pytest.approx(0.15)


def test_a_margin_run_trains_no_background_next_to_the_teachers_tumour_and_records_it(site, init_model, tmp_path,
                                                                                    monkeypatch):
    """Inside adapt: the teacher's labels (here one tumour voxel in the middle of each crop, everything kept) reach
    the loss without the background around that voxel; the card and the command record the margin."""
    import DareFuseSlicerLib.training.adapt as adapt_module

    def one_tumour_voxel(evidence, thresholds):
        labels = torch.zeros(evidence.shape[:1] + evidence.shape[2:], dtype=torch.long)
        labels[:, 12, 12, 12] = 1
        return labels, torch.ones_like(labels, dtype=torch.bool)

    targets = []
    real_loss = adapt_module.pseudo_label_loss
    monkeypatch.setattr(adapt_module, "pseudo_labels", one_tumour_voxel)
    monkeypatch.setattr(adapt_module, "pseudo_label_loss", lambda logits, labels, keep, balanced: targets.append(
        keep.clone()) or real_loss(logits, labels, keep, balanced))
    card = load_model(adapt(_options(site, init_model, tmp_path / "run", background_margin=4.0))).card
    assert len(targets) == 2
    for keep in targets:  # 4 mm: 2 voxels each way
        assert int((~keep).sum()) == 5 ** 3 - 1 and not bool(keep[0, 10:15, 10:15, 10:15].any() ^ keep[0, 12, 12, 12])
    assert card["adaptation"]["pseudo_label_background_margin_mm"] == 4.0
    assert "--background-margin 4.0" in card["training_command"]


def test_a_balanced_pseudo_label_loss_weighs_each_kept_class_the_same():
    """Nine kept background voxels the student gets right and one kept ET voxel it gets wrong: per voxel the ET
    error is a tenth of the loss, balanced half of it. Classes absent from the kept labels take no share."""
    labels = torch.zeros(1, 10, 1, 1, dtype=torch.long)
    labels[0, 9] = 3
    keep = torch.ones_like(labels, dtype=torch.bool)
    logits = torch.zeros(1, 4, 10, 1, 1)
    logits[0, 0] = 10.0  # background everywhere: right on 9, wrong on the ET voxel
    right = torch.nn.functional.cross_entropy(logits[:, :, :1], labels[:, :1]).item()
    wrong = torch.nn.functional.cross_entropy(logits[:, :, 9:], labels[:, 9:]).item()
    assert pseudo_label_loss(logits, labels, keep).item() == pytest.approx((9 * right + wrong) / 10)
    assert pseudo_label_loss(logits, labels, keep, balanced=True).item() == pytest.approx((right + wrong) / 2)
    keep[0, 9] = False  # background alone: the same either way
    assert pseudo_label_loss(logits, labels, keep, balanced=True).item() == pytest.approx(right)
    none = pseudo_label_loss(logits.requires_grad_(), labels, torch.zeros_like(keep), balanced=True)
    assert none.item() == 0.0 and none.requires_grad


def test_a_balanced_run_passes_the_balance_to_the_loss_and_records_it(site, init_model, tmp_path, monkeypatch):
    import DareFuseSlicerLib.training.adapt as adapt_module

    seen = []
    real_loss = adapt_module.pseudo_label_loss
    monkeypatch.setattr(adapt_module, "pseudo_label_loss", lambda logits, labels, keep, balanced: seen.append(
        balanced) or real_loss(logits, labels, keep, balanced))
    card = load_model(adapt(_options(site, init_model, tmp_path / "run", balance_pseudo_classes=True))).card
    assert seen == [True, True]
    assert card["adaptation"]["pseudo_label_loss"].startswith("mean over the kept labels' classes")
    assert "--balance-pseudo-classes" in card["training_command"]
    seen.clear()
    card = load_model(adapt(_options(site, init_model, tmp_path / "plain"))).card
    assert seen == [False, False] and card["adaptation"]["pseudo_label_loss"] == "mean cross-entropy over the kept labels"
