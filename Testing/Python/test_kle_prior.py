"""Seed 001's KLE residual prior (network/kle.py) and `darefuse fit-kle` (training/kle_prior.py): the expansion
keeps what the studies share and leaves a lesion in the prior, a missing contrast is neither fitted nor expanded,
the fit reads no label and no twin, its card, and its refusals."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.cli import main
from DareFuseSlicerLib.errors import Cancelled, InputError, OptionError
from DareFuseSlicerLib.network.kle import fit_kle
from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
from DareFuseSlicerLib.network.store import load_model, read_card
from DareFuseSlicerLib.training import prior_ablation
from DareFuseSlicerLib.training.kle_prior import KLEOptions, fit_kle_prior
from DareFuseSlicerLib.training.adapt import AdaptOptions, adapt
from DareFuseSlicerLib.training.prior import MODEL_FILE, PriorOptions, train_prior

sys.path.insert(0, str(Path(__file__).parent))
from test_training_dataset import make_folder, save_fresh_model  # noqa: E402

SEED = 760910  # SEEDS.md: prior tests 760900-760999; fit-kle 760910-760914

SHAPE = (20, 22, 18)
_z, _y, _x = np.indices(SHAPE)
BRAIN = ((_z - 10) / 9) ** 2 + ((_y - 11) / 10) ** 2 + ((_x - 9) / 8) ** 2 < 1


def _studies(n: int, rng: np.random.RandomState, modes: np.ndarray) -> list:
    """Brains whose contrasts vary only along smooth `modes`: what an expansion of them can hold."""
    return [((1.0 + np.einsum("k,kczyx->czyx", rng.randn(len(modes)), modes)) * BRAIN).astype(np.float32)
            for _ in range(n)]


def _kle_net(studies, size=16, components=3) -> DareFuseNet:
    mean, basis, explained = fit_kle(studies, size=size, components=components)
    assert explained > 0.99  # the studies vary along `components` directions only
    net = DareFuseNet(NetConfig(prior_mode="kle", kle_size=size, kle_components=components)).eval()
    net.kle.mean.copy_(torch.from_numpy(mean))
    net.kle.basis.copy_(torch.from_numpy(basis))
    return net


@pytest.fixture(scope="module")
def smooth():
    rng = np.random.RandomState(SEED)
    ramps = [(_z - 10) / 10.0, (_y - 11) / 11.0, (_x - 9) / 9.0]  # smooth fields, one per mode
    modes = np.stack([np.stack([r * rng.uniform(0.5, 1.5) for _ in range(4)]) for r in ramps]).astype(np.float32)
    return rng, modes


def test_the_expansion_keeps_shared_anatomy_and_leaves_a_lesion(smooth):
    rng, modes = smooth
    net = _kle_net(_studies(12, rng, modes))
    study = _studies(1, rng, modes)[0]
    lesion = np.zeros(SHAPE, bool)
    lesion[8:12, 9:13, 7:11] = True
    study[:, lesion] += 4.0
    with torch.no_grad():
        out = net(torch.from_numpy(study)[None], torch.ones(1, 4))
    difference = out["difference"][0].numpy()
    assert difference[:, lesion].mean() > 2.5  # most of the lesion stays in the prior
    assert np.abs(difference[:, BRAIN & ~lesion]).mean() < 0.25 * difference[:, lesion].mean()
    assert not difference[:, ~BRAIN].any() and not out["tumour_free"][0][:, ~BRAIN].any()  # zero outside the brain


def test_a_fit_is_reproducible_and_its_signs_do_not_matter(smooth):
    rng, modes = smooth
    studies = _studies(12, rng, modes)
    (mean, basis, _), (mean2, basis2, _) = fit_kle(studies, 16, 3), fit_kle(studies, 16, 3)
    assert np.array_equal(mean, mean2) and np.array_equal(basis, basis2)
    flat = basis.reshape(3, -1)
    assert (flat[np.arange(3), np.abs(flat).argmax(1)] > 0).all()  # each component's largest entry is positive
    net, flipped = _kle_net(studies), _kle_net(studies)
    flipped.kle.basis[1] *= -1
    x = torch.from_numpy(_studies(1, rng, modes)[0])[None]
    with torch.no_grad():
        assert torch.allclose(net(x, torch.ones(1, 4))["tumour_free"], flipped(x, torch.ones(1, 4))["tumour_free"],
                              atol=1e-5)


def test_a_missing_contrast_is_neither_fitted_nor_expanded(smooth):
    rng, modes = smooth
    net = _kle_net(_studies(12, rng, modes))
    study = torch.from_numpy(_studies(1, rng, modes)[0])[None]
    given = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    with torch.no_grad():
        full = net(study, torch.ones(1, 4))["tumour_free"]
        partial = net(study * given[:, :, None, None, None], given)
        poisoned = study.clone()
        poisoned[:, 1] = 100.0 * torch.from_numpy(BRAIN.astype(np.float32))  # a missing channel's content is ignored
        same = net(poisoned, given)["tumour_free"]
    assert not partial["tumour_free"][0, 1].any() and not partial["difference"][0, 1].any()
    for c in (0, 2, 3):  # three contrasts fix the same coefficients as four
        assert torch.allclose(partial["tumour_free"][0, c], full[0, c], atol=0.05)
    assert torch.allclose(same, partial["tumour_free"])


@pytest.fixture(scope="module")
def studies_folder(tmp_path_factory):
    """Five tiny engine-style studies; their labels and twins overwritten with bytes no reader accepts."""
    folder = make_folder(tmp_path_factory.mktemp("kle-studies"), n_cases=5, seed=SEED)
    for path in list(folder.glob("*-tumourfree.nii.gz")) + list(folder.glob("*-seg.nii.gz")):
        path.write_bytes(b"not an image: fit-kle must never read this")
    return folder


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    return save_fresh_model(tmp_path_factory.mktemp("kle-init") / "darefuse.safetensors", SEED,
                            data_recipe={"seeds": [1000, 1003]})


def test_fit_kle_reads_only_images_and_its_card_says_so(studies_folder, init_model, tmp_path, monkeypatch):
    read = []
    original = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda path, *a, **k: read.append(str(path)) or original(path, *a, **k))
    out = tmp_path / "kle"
    assert main(["fit-kle", "--init", str(init_model), "--data", str(studies_folder), "--out", str(out),
                 "--components", "3", "--size", "8", "--no-progress"]) == 0
    assert len(read) == 5 * 4 and not [p for p in read if "tumourfree" in p or "-seg" in p]
    card = read_card(out / MODEL_FILE)
    prior = card["prior"]
    assert prior["kind"] == "kle" and prior["tumour_free_twins_used"] is False and prior["labels_used"] is False
    assert prior["components"] == 3 and prior["size"] == 8 and 0 < prior["variance_explained"] <= 1
    assert prior["trained_on"]["training_seeds"] == [SEED + i for i in range(5)]
    assert card["config"]["prior_mode"] == "kle" and card["config"]["kle_components"] == 3
    model, init = load_model(out / MODEL_FILE), load_model(init_model)
    old = init.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("kle."):
            assert torch.equal(value, old[key]), key  # nothing trained
    basis = model.kle.basis.reshape(3, -1)
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-4)  # orthonormal, as the expansion assumes
    # The studies it was fitted on count as the model's seeds: an ablation on them is refused.
    variants = prior_ablation.load_variants(str(init_model), kle=[("KLE", str(out / MODEL_FILE))])
    assert list(variants) == ["twin-trained", "KLE", "zero prior"]
    with pytest.raises(Exception, match="not held out"):
        prior_ablation.ablate_folder(studies_folder, {"KLE": variants["KLE"]}, log=lambda line: None)


def test_fit_kle_refusals_and_cancel_write_nothing(studies_folder, init_model, tmp_path):
    options = KLEOptions(init=str(init_model), data=[str(studies_folder)], out=str(tmp_path / "r"), size=8)
    with pytest.raises(InputError, match="32 components need more than 32 studies; the --data folders hold 5"):
        fit_kle_prior(options)
    with pytest.raises(Cancelled):
        fit_kle_prior(KLEOptions(init=str(init_model), data=[str(studies_folder)], out=str(tmp_path / "r"),
                                 components=3, size=8), cancel=lambda: True)
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    for path in studies_folder.iterdir():
        if not path.name.endswith("-t2f.nii.gz") or "-001-" not in path.name:
            (lacking / path.name).symlink_to(path)
    with pytest.raises(InputError, match="lacks a contrast"):
        fit_kle_prior(KLEOptions(init=str(init_model), data=[str(lacking)], out=str(tmp_path / "r"), components=3))
    assert not (tmp_path / "r").exists()


def test_a_kle_model_is_neither_trained_nor_refitted(studies_folder, init_model, tmp_path):
    """Its expansion is of whole brains: training crops (adapt, train-prior, train) would feed it part of one."""
    path = fit_kle_prior(KLEOptions(init=str(init_model), data=[str(studies_folder)], out=str(tmp_path / "kle"),
                                    components=3, size=8))
    refusals = [
        lambda: fit_kle_prior(KLEOptions(init=str(path), data=[str(studies_folder)], out=str(tmp_path / "again"),
                                         components=3, size=8)),
        lambda: train_prior(PriorOptions(init=str(path), data=[str(studies_folder)], out=str(tmp_path / "p"), steps=1)),
        lambda: adapt(AdaptOptions(init=str(path), labelled=str(studies_folder), unlabelled=None, out=str(tmp_path / "a"), steps=1)),
    ]
    for refused in refusals:
        with pytest.raises(OptionError, match="carries a KLE prior.*Start from the model it was fitted from"):
            refused()
    assert not [p.name for p in tmp_path.iterdir() if p.name != "kle"]
