"""Model store (safetensors + card, SHA256 before loading) and multi-scale Grad-CAM++."""
import json

import numpy as np
import pytest
import torch

from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.network.gradcam import gradcam_pp
from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
from DareFuseSlicerLib.network.store import card_path, load_model, record_metrics, save_model, sha256_of

SMALL = NetConfig(encoder_channels=(8, 16, 32), generator_channels=(8, 16, 16), attention_heads=2)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(3)
    model = DareFuseNet(SMALL)
    path = tmp_path / "darefuse.safetensors"
    card = {"training_command": "darefuse train --seed 3", "seed": 3, "data_recipe": {"n": 1}, "metrics": {"dice_wt": 0.5}}
    save_model(model, path, card)
    return model, path


def test_round_trip_keeps_weights_and_card(saved):
    model, path = saved
    card = json.loads(card_path(path).read_text())
    assert card["sha256"] == sha256_of(path)
    assert card["architecture"] == "DareFuseNet" and card["seed"] == 3 and card["metrics"]["dice_wt"] == 0.5
    loaded = load_model(path)
    assert loaded.config == SMALL and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x, present = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x, present)["evidence"], loaded(x, present)["evidence"])


def test_recorded_metrics_keep_the_model_loadable(saved):
    _, path = saved
    record_metrics(path, "held_out", {"dice_wt": 0.9})
    card = json.loads(card_path(path).read_text())
    assert card["metrics"] == {"dice_wt": 0.5, "held_out": {"dice_wt": 0.9}}
    assert load_model(path).card["metrics"]["held_out"]["dice_wt"] == 0.9
    # A setting recorded beside its figures is what the pipeline then reads (the unshown-tumour alarm's here).
    from DareFuseSlicerLib.pipeline import unshown

    record_metrics(path, "unshown_alarm_choice", {"chosen": None}, unshown={"config": {"alarm_ml": 2.0},
                                                                            "chosen_on": "development sets a, b"})
    assert unshown.config_for_card(load_model(path).card) == (unshown.UnshownConfig(alarm_ml=2.0),
                                                              "development sets a, b")


def test_file_is_not_a_pickle(saved):
    _, path = saved
    head = path.read_bytes()[:16]
    assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # neither pickle nor torch zip


def test_tampered_weights_are_refused_before_loading(saved, monkeypatch):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    import DareFuseSlicerLib.network.store as store

    monkeypatch.setattr(store, "load_file", lambda *a, **k: pytest.fail("tensors read before the checksum"))
    with pytest.raises(InputError, match="darefuse.safetensors.*SHA256"):
        load_model(path)


def test_missing_card_is_refused(saved):
    _, path = saved
    card_path(path).unlink()
    with pytest.raises(InputError, match="no model card"):
        load_model(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "none.safetensors")


def test_gradcam_pp_is_multiscale_in_unit_range():
    torch.manual_seed(0)
    model = DareFuseNet(SMALL)
    x = torch.randn(1, 4, 24, 32, 24)
    present = torch.tensor([[0.0, 0.0, 0.0, 1.0]])  # FLAIR only
    heat = gradcam_pp(model, x, present, "glioma")
    assert heat.shape == (24, 32, 24) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.0
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_rejects_unknown_class():
    with pytest.raises(InputError, match="Unknown class"):
        gradcam_pp(DareFuseNet(SMALL), torch.zeros(1, 4, 16, 16, 16), torch.ones(1, 4), "lymphoma")


@pytest.mark.slow
def test_gradcam_maps_match_the_librarys_full_size_maps_on_the_sample():
    # The maps meet at the finest layer's size and are up-sampled once (MultiScaleGradCAMPlusPlus); the
    # library's own way resizes every layer's map to the input's size. On the bundled model and sample case
    # both must show the same evidence.
    import SimpleITK as sitk
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS
    from DareFuseSlicerLib.network.gradcam import ClassScoreModel, MultiScaleGradCAMPlusPlus
    from DareFuseSlicerLib.phantoms import sample_case_paths
    from DareFuseSlicerLib.pipeline import preprocess
    from DareFuseSlicerLib.pipeline.inference import plan_windows
    from DareFuseSlicerLib.logic import bundled_model_path

    sample = sample_case_paths()
    prep = preprocess.prepare({c: sitk.ReadImage(str(sample[BRATS_SUFFIX[c]])) for c in CONTRASTS})
    roi = plan_windows(prep.array.shape[1:], 8).roi
    pad = [(0, 0)] + [(0, r - s) for r, s in zip(roi, prep.array.shape[1:])]
    x = torch.from_numpy(np.pad(prep.array, pad))[None]
    model = load_model(bundled_model_path())
    wrapper = ClassScoreModel(model, torch.ones(1, 4))
    target = [ClassifierOutputTarget(1)]
    layers = model.gradcam_target_layers()
    with torch.enable_grad(), GradCAMPlusPlus(model=wrapper, target_layers=layers) as cam:
        full = cam(input_tensor=x, targets=target)[0]
    with torch.enable_grad(), MultiScaleGradCAMPlusPlus(model=wrapper, target_layers=layers) as cam:
        ours = cam.maps(x, target)[0]
    assert ours.shape == full.shape == tuple(roi) and 0.0 <= ours.min() and ours.max() <= 1.0
    correlation, difference = np.corrcoef(ours.ravel(), full.ravel())[0, 1], np.abs(ours - full).mean()
    print(f"Grad-CAM++ maps against the library's full-size maps: correlation {correlation:.4f}, "
          f"mean absolute difference {difference:.4f}")  # quoted in the README (pytest -s)
    assert correlation > 0.98 and difference < 0.03
