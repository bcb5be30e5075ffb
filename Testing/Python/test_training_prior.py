"""`darefuse train-prior` (the twin-free lesion-removal prior) and the prior ablation, on tiny folders: no
tumour-free file is read, the loss sees only hidden healthy voxels, the inpainting prior ignores a voxel's own
value, cancelling writes nothing, the card, and the ablation's figures on a small case."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.cli import main
from DareFuseSlicerLib.constants import REGIONS
from DareFuseSlicerLib.errors import Cancelled, OptionError
from DareFuseSlicerLib.network.blocks import checkerboard, inpaint_healthy
from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
from DareFuseSlicerLib.network.store import load_model, read_card
from DareFuseSlicerLib.training import prior_ablation
from DareFuseSlicerLib.training.evaluate import WithoutPrior
from DareFuseSlicerLib.training.frontend_eval import card_seeds
from DareFuseSlicerLib.training.prior import MODEL_FILE, PriorOptions, inpainting_loss, train_prior

sys.path.insert(0, str(Path(__file__).parent))
from test_training_dataset import make_folder, save_fresh_model  # noqa: E402

SEED = 760900  # SEEDS.md: prior tests 760900-760999 (the prior's block is 760000-762999)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A tiny engine-style folder; its tumour-free twins overwritten with bytes no reader accepts."""
    folder = make_folder(tmp_path_factory.mktemp("prior-engine"), n_cases=4, seed=SEED)
    for twin in folder.glob("*-tumourfree.nii.gz"):
        twin.write_bytes(b"not an image: a twin-free run must never read this")
    return folder


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    return save_fresh_model(tmp_path_factory.mktemp("prior-init") / "darefuse.safetensors", SEED,
                            data_recipe={"seeds": [1000, 1003]})


def _options(engine, init_model, out, **kw):
    base = dict(init=str(init_model), data=[str(engine)], out=str(out), steps=2, seed=SEED, block=4,
                roi=(24, 24, 24), batch_size=2, threads=1, device="cpu")
    base.update(kw)
    return PriorOptions(**base)


def test_train_prior_never_reads_a_tumour_free_file(engine, init_model, tmp_path, monkeypatch):
    read = []
    original = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda path, *a, **k: read.append(str(path)) or original(path, *a, **k))
    path = train_prior(_options(engine, init_model, tmp_path / "run"))
    assert path == tmp_path / "run" / MODEL_FILE and path.is_file()
    assert len(read) == 4 * 5  # four contrasts and the -seg of each case
    assert not [p for p in read if "tumourfree" in p]


@pytest.fixture(scope="module")
def trained(engine, init_model, tmp_path_factory):
    return train_prior(_options(engine, init_model, tmp_path_factory.mktemp("prior-run") / "run"))


def test_the_card_says_no_twins_and_what_the_generator_learnt_from(trained, init_model):
    card = read_card(trained)
    prior = card["prior"]
    assert prior["kind"] == "inpainting" and prior["tumour_free_twins_used"] is False
    assert prior["block_voxels"] == 4 and prior["block_mm"] == 8.0
    assert prior["trained_on"]["cases"] == 4 and prior["trained_on"]["training_seeds"] == [SEED + i for i in range(4)]
    files = [name for case in prior["trained_on"]["sha256"].values() for name in case]
    assert len(files) == 20 and not [f for f in files if "tumourfree" in f]
    assert card["config"]["prior_mode"] == "inpaint" and card["config"]["inpaint_block"] == 4
    assert card["initialised_from"]["sha256"] == read_card(init_model)["sha256"]
    assert card["training"]["steps"] == 2 and "--block 4" in card["training_command"]
    # The generator's training seeds count as the model's: an ablation on them is refused.
    assert {SEED, SEED + 3} <= card_seeds(card)["training"] and 1001 in card_seeds(card)["training"]


def test_only_the_generator_changes_and_it_starts_from_scratch(trained, init_model):
    new, old = load_model(trained).state_dict(), load_model(init_model).state_dict()
    for key, value in new.items():
        if key.startswith("generator."):
            continue
        assert torch.equal(value, old[key]), key
    # A fresh generator (its last layer starts at zero), trained: not the --init one.
    assert not torch.equal(new["generator.to_residual.weight"], old["generator.to_residual.weight"])


def test_loss_counts_only_hidden_healthy_voxels():
    shape = (1, 4, 16, 16, 16)
    x = torch.randn(shape)
    label = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    label[0, 4:8, 4:8, 4:8] = 2
    foreground = torch.zeros(1, 1, 16, 16, 16)
    foreground[..., 1:15, 1:15, 1:15] = 1
    present = torch.tensor([[1.0, 0.0, 1.0, 1.0]])

    class Fixed(torch.nn.Module):  # a "generator" whose output is a free tensor: its gradient is the loss's mask
        def __init__(self):
            super().__init__()
            self.value = torch.nn.Parameter(torch.zeros(shape))

        def forward(self, x, present, visible=None):
            return self.value

    generator = Fixed()
    rng_seed = 5
    loss = inpainting_loss(generator, {"image": x, "present": present, "label": label, "foreground": foreground},
                           block=4, margin=1, rng=np.random.RandomState(rng_seed))
    loss.backward()
    counted = generator.value.grad[0] != 0
    rng = np.random.RandomState(rng_seed)
    hidden = checkerboard((16, 16, 16), 4, int(rng.randint(2)), [int(v) for v in rng.randint(4, size=3)])[0, 0].bool()
    tumour_near = torch.zeros(16, 16, 16, dtype=torch.bool)
    tumour_near[3:9, 3:9, 3:9] = True  # the tumour and its one-voxel margin
    expected = hidden & foreground[0, 0].bool() & ~tumour_near
    assert expected.any() and (hidden & tumour_near).any()
    for c in range(4):
        assert torch.equal(counted[c], expected if present[0, c] else torch.zeros_like(expected))


def test_the_inpainting_prior_does_not_see_a_voxels_own_value():
    torch.manual_seed(SEED)
    net = DareFuseNet(NetConfig(prior_mode="inpaint", inpaint_block=4)).eval()
    for p in net.generator.parameters():  # a generator that is not the identity at start
        torch.nn.init.normal_(p, std=0.1)
    hidden = checkerboard((16, 16, 16), 4, 0) + checkerboard((16, 16, 16), 4, 1)
    assert torch.equal(hidden, torch.ones_like(hidden))  # two passes hide every voxel exactly once
    x, present = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4)
    bumped = x.clone()
    bumped[0, :, 6, 9, 5] += 50.0  # a "tumour" voxel
    with torch.no_grad():
        before = inpaint_healthy(net.generator, x, present, 4)
        after = inpaint_healthy(net.generator, bumped, present, 4)
        out = net(bumped, present)
    assert torch.allclose(before[0, :, 6, 9, 5], after[0, :, 6, 9, 5], atol=1e-5)
    assert not torch.allclose(before, after)  # its neighbours do see it
    assert (out["difference"][0, :, 6, 9, 5] > 40).all()  # it stays in the prior


def test_cancel_writes_nothing(engine, init_model, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 5  # four checks while preparing the cases, then one before each step: the 2nd step

    with pytest.raises(Cancelled):
        train_prior(_options(engine, init_model, tmp_path / "run", steps=50), cancel=cancel)
    assert not (tmp_path / "run").exists()


def test_cli_bad_budget_and_existing_model(engine, init_model, tmp_path, capsys):
    assert main(["train-prior", "--init", str(init_model), "--data", str(engine), "--out", str(tmp_path / "r")]) == 2
    assert "--minutes" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / MODEL_FILE).write_bytes(b"")
    with pytest.raises(OptionError):
        train_prior(_options(engine, init_model, tmp_path / "r"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("prior-held-out"), n_cases=4, seed=SEED + 50)


def test_ablation_scores_a_small_folder(held_out, init_model, trained, tmp_path):
    """Every variant on the tiny cases: the figures are the means of the per-case Dice and volumes, and a network
    that finds nothing scores the BraTS conventions (1 on an empty truth, 0 on a tumour)."""
    variants = prior_ablation.load_variants(str(init_model), str(trained))
    assert isinstance(variants["zero prior"], WithoutPrior)
    result = prior_ablation.ablate_folder(held_out, variants, log=lambda line: None)
    assert set(result) == set(prior_ablation.VARIANTS)
    for name, summary in result.items():
        rows = summary["per_case"]
        assert summary["cases"] == 4 and summary["tumour_free_cases"] == 1
        fp = [r["false_positive_ml"] for r in rows if r["class"] == "no_tumour"]
        assert summary["false_positive_ml"] == pytest.approx(fp[0]) and fp[0] >= 0
        for region in REGIONS:
            assert summary["dice_all"][region] == pytest.approx(np.mean([r["dice"][region] for r in rows]))
            assert summary["dice_tumour_cases"][region] == pytest.approx(
                np.mean([r["dice"][region] for r in rows if r["class"] != "no_tumour"]))
    # A hand-made check of the convention: an empty prediction on one tumour-free and one tumour case.
    summary = prior_ablation.summarise([
        {"class": "no_tumour", "dice": dict.fromkeys(REGIONS, 1.0), "false_positive_ml": 0.0},
        {"class": "glioma", "dice": dict.fromkeys(REGIONS, 0.0)},
    ])
    assert summary["dice_all"]["WT"] == 0.5 and summary["dice_tumour_cases"]["WT"] == 0.0
    table = prior_ablation.markdown_table({"tiny": result})
    assert table.count("\n") == 2 + 3 and "zero prior" in table
    assert prior_ablation.comparison_table({"tiny": result}).count("\n") == 2 + 2
    # Paired differences against the twin-trained prior: mean, interval around it, cases better and worse.
    change = prior_ablation.paired([{"v": 1.0}, {"v": 2.0}, {"v": 3.0}, {"v": None}],
                                   [{"v": 1.5}, {"v": 1.0}, {"v": 3.0}, {"v": 9.0}], lambda r: r["v"])
    assert change["cases"] == 3 and change["mean_difference"] == pytest.approx(-0.5 / 3)
    assert (change["better"], change["worse"]) == (1, 1)
    assert change["ci95"][0] <= change["mean_difference"] <= change["ci95"][1]
    lower = prior_ablation.paired([{"v": 2.0}], [{"v": 1.0}], lambda r: r["v"], lower_is_better=True)
    assert (lower["better"], lower["worse"], lower["ci95"]) == (1, 0, None)
    report = prior_ablation.write_report({"tiny": result}, {}, tmp_path / "ablation")
    assert report.is_file() and (tmp_path / "ablation.json").is_file()


def test_ablation_refuses_the_generators_training_cases(engine, trained, init_model):
    from DareFuseSlicerLib.errors import OptionError as Refused

    variants = prior_ablation.load_variants(str(init_model), str(trained))
    with pytest.raises(Refused, match="not held out"):
        prior_ablation.ablate_folder(engine, {"inpainting": variants["inpainting"]}, log=lambda line: None)
