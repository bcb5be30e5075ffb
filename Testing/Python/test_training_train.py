"""`darefuse train` on a tiny folder: outputs, determinism, resume, limited labels, baseline, DDP."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from DareFuseSlicerLib.cli import user_message
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.network.store import card_path, load_model, sha256_of
from DareFuseSlicerLib.training.train import TrainOptions, train

sys.path.insert(0, str(Path(__file__).parent))
from test_training_dataset import make_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny-train"), n_cases=4)


def _options(tiny, out, **kw):
    base = dict(data=str(tiny), out=str(out), epochs=1, seed=7, roi=(24, 24, 24), batch_size=2,
                cache=str(out.parent / "cache"), threads=2, progress=False)
    base.update(kw)
    return TrainOptions(**base)


def _rows(out):
    with open(out / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_model_card_metrics_and_checkpoint(tiny, tmp_path):
    path = train(_options(tiny, tmp_path / "run", val=str(tiny)))
    assert path == tmp_path / "run" / "darefuse.safetensors"
    card = json.loads(card_path(path).read_text())
    assert card["sha256"] == sha256_of(path)
    assert card["seed"] == 7 and "--seed 7" in card["training_command"] and card["data_recipe"]["cases"] == 4
    assert card["training"]["steps"] == 2  # 4 cases, batch 2
    assert 0.0 <= card["metrics"]["validation_2mm"]["val_dice_wt"] <= 1.0
    rows = _rows(tmp_path / "run")
    assert len(rows) == 1 and float(rows[0]["train_total"]) > 0 and "val_dice_mean" in rows[0]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    model = load_model(path)
    out = model(torch.zeros(1, 4, 24, 24, 24), torch.ones(1, 4))
    assert torch.isfinite(out["evidence"]).all()


@pytest.mark.slow
def test_same_seed_same_weights_and_resume_is_exact(tiny, tmp_path):
    """Two epochs in one go == one epoch, then --resume to two == two epochs with crops prepared in two
    loader processes; a different seed differs."""
    a = train(_options(tiny, tmp_path / "a", epochs=2))
    train(_options(tiny, tmp_path / "b", epochs=1))
    b = train(_options(tiny, tmp_path / "b", epochs=2, resume=True))
    c = train(_options(tiny, tmp_path / "c", epochs=2, seed=8))
    d = train(_options(tiny, tmp_path / "d", epochs=2, loader_workers=2))
    wa, wb, wc, wd = (load_model(p).state_dict() for p in (a, b, c, d))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(wa[k], wd[k]) for k in wa)
    assert "--loader-workers 2" in json.loads(card_path(d).read_text())["training_command"]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert len(_rows(tmp_path / "b")) == 2


@pytest.mark.slow
def test_limited_labels_use_the_mean_teacher(tiny, tmp_path):
    path = train(_options(tiny, tmp_path / "mt", labelled_fraction=0.5, epochs=2))
    card = json.loads(card_path(path).read_text())
    assert card["training"]["mean_teacher"] and card["training"]["labelled_fraction"] == 0.5
    assert card["data_recipe"]["labelled_cases"] == 4  # at least one per class: 4 classes, one case each
    rows = _rows(tmp_path / "mt")
    assert "train_consistency" in rows[0]


def test_segresnet_baseline_trains(tiny, tmp_path):
    path = train(_options(tiny, tmp_path / "base", arch="segresnet"))
    assert path.name == "segresnet.safetensors"
    model = load_model(path)
    assert type(model).__name__ == "SegResNetBaseline"
    assert model(torch.zeros(1, 4, 24, 24, 24), torch.ones(1, 4))["evidence"].shape == (1, 4, 24, 24, 24)


def test_init_starts_from_a_stored_model_and_names_it(tiny, tmp_path):
    """--init: with a zero learning rate the result keeps the stored weights (a fresh start would not), and
    the card names the model it started from; a model of another architecture, a tampered file, or --init
    together with --resume are refused before any training."""
    first = train(_options(tiny, tmp_path / "first"))
    tuned = train(_options(tiny, tmp_path / "tuned", init=str(first), lr=0.0, seed=8))
    fresh = train(_options(tiny, tmp_path / "fresh", lr=0.0, seed=8))
    start = dict(load_model(first).named_parameters())
    after = dict(load_model(tuned).named_parameters())
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)
    assert not all(torch.allclose(start[k], v, atol=1e-6) for k, v in load_model(fresh).named_parameters())
    card = json.loads(card_path(tuned).read_text())
    assert card["initialised_from"]["sha256"] == sha256_of(first)
    assert card["initialised_from"]["steps"] == 2 and f"--init {first}" in card["training_command"]
    assert json.loads(card_path(fresh).read_text())["initialised_from"] is None

    baseline = train(_options(tiny, tmp_path / "base", arch="segresnet"))
    with pytest.raises(InputError, match="SegResNetBaseline, not a DareFuseNet"):
        train(_options(tiny, tmp_path / "wrong", init=str(baseline)))
    with pytest.raises(InputError, match="exclude each other"):
        train(_options(tiny, tmp_path / "first", init=str(first), resume=True))
    tampered = tmp_path / "tampered" / "darefuse.safetensors"
    tampered.parent.mkdir()
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    card_path(tampered).write_text(card_path(first).read_text())
    with pytest.raises(InputError, match="does not match its card"):
        train(_options(tiny, tmp_path / "from-tampered", init=str(tampered)))
    assert not any((tmp_path / name).exists() for name in ("wrong", "from-tampered"))


def test_class_head_only_changes_the_class_head_alone(tiny, tmp_path):
    """--class-head-only: the class head learns; every other weight (segmentation, uncertainty, prior) is the
    --init model's bit for bit, so its segmentations are the same; the card and the command say so. It needs
    --init."""
    first = train(_options(tiny, tmp_path / "first"))
    head = train(_options(tiny, tmp_path / "head", init=str(first), class_head_only=True, epochs=2, lr=0.01, seed=9))
    start, after = load_model(first).state_dict(), load_model(head).state_dict()  # weights and buffers
    frozen = [k for k in start if not k.startswith("classifier.")]
    assert any("running_mean" in k for k in frozen)  # the refiner's batch norms: their statistics too
    assert frozen and all(torch.equal(start[k], after[k]) for k in frozen)
    assert any(not torch.equal(start[k], after[k]) for k in start if k.startswith("classifier."))
    card = json.loads(card_path(head).read_text())
    assert card["training"]["trained_weights"].startswith("the class head alone")
    assert "--class-head-only" in card["training_command"].split()
    with pytest.raises(InputError, match="class head of a stored DareFuse model"):
        train(_options(tiny, tmp_path / "no-init", class_head_only=True))
    assert not (tmp_path / "no-init").exists()


def test_bad_options_are_input_errors(tiny, tmp_path):
    with pytest.raises(InputError, match="budget"):
        train(_options(tiny, tmp_path / "x", epochs=None))
    with pytest.raises(InputError, match="^resume: no checkpoint.pt"):
        train(_options(tiny, tmp_path / "empty", resume=True))
    with pytest.raises(InputError, match="^precision must be"):
        train(_options(tiny, tmp_path / "x", precision="fp16"))
    with pytest.raises(InputError, match="^loader_workers must be") as raised:
        train(_options(tiny, tmp_path / "x", loader_workers=-1))
    assert user_message(raised.value).startswith("--loader-workers must be")  # the command line names its flag


def test_bf16_autocast_runs_in_bfloat16_and_keeps_float32_weights(tiny, tmp_path):
    """--precision bf16: the forward pass computes in bfloat16 (seen on a convolution's output), the losses
    stay finite, and the card records the precision; the saved weights are float32."""
    from DareFuseSlicerLib.training.train import autocast

    conv = torch.nn.Conv3d(4, 2, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert conv(torch.zeros(1, 4, 8, 8, 8)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert conv(torch.zeros(1, 4, 8, 8, 8)).dtype == torch.float32
    path = train(_options(tiny, tmp_path / "bf16", precision="bf16"))
    card = json.loads(card_path(path).read_text())
    assert card["training"]["precision"] == "bf16" and "--precision bf16" in card["training_command"]
    assert float(_rows(tmp_path / "bf16")[0]["train_total"]) > 0
    assert all(v.dtype == torch.float32 for v in load_model(path).state_dict().values() if v.is_floating_point())


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny, tmp_path):
    """The same command under torchrun: 2 processes (gloo), one step each, one model written."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "DareFuseSlicer"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "DareFuseSlicerLib.cli", "train", "--data", str(tiny), "--out", str(out), "--epochs", "1",
        "--seed", "3", "--roi", "24", "24", "24", "--batch-size", "1", "--max-cases", "2",
        "--cache", str(tmp_path / "cache"), "--device", "cpu", "--no-progress",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads(card_path(out / "darefuse.safetensors").read_text())
    assert card["launcher"] == "torchrun --nproc_per_node 2"
    assert card["training"]["processes"] == 2 and card["training"]["steps"] == 1  # 2 cases over 2 processes
    assert "2 process(es)" in (out / "train.log").read_text()
