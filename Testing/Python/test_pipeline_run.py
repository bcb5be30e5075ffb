"""Sliding-window inference (windows, progress, cancel, shared Grad-CAM++) and run() on small synthetic heads."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.constants import CLASSES, CONTRASTS, class_text
from DareFuseSlicerLib.errors import Cancelled, InputError
from DareFuseSlicerLib.network.gradcam import gradcam_pp
from DareFuseSlicerLib.pipeline import inference
from DareFuseSlicerLib.pipeline.inference import WindowPlan, count_windows, gradients_only_for, infer, plan_windows
from DareFuseSlicerLib.pipeline.run import run
from pipeline_helpers import four_contrasts, head, same_grid, tiny_model

FAST = {"spacing_mm": 4.0}  # a coarser network grid keeps these tests at a second or two each


def test_a_whole_adult_brain_at_2mm_is_one_window_with_little_padding():
    plan = plan_windows((82, 101, 89))  # the brain box of a BraTS-size case at 2 mm
    assert plan.n_windows == 1 and plan.roi == (88, 104, 96)
    big = plan_windows((150, 140, 60))
    assert all(r <= 128 and r % 8 == 0 for r in big.roi) and big.n_windows == 4
    assert count_windows((150, 140, 60), big.roi, big.overlap) == big.n_windows


@pytest.mark.parametrize("shape, roi, overlap", [((20, 24, 20), (16, 16, 16), 0.25), ((130, 70, 9), (64, 32, 16), 0.5),
                                                  ((33, 33, 33), (32, 32, 32), 0.25), ((5, 200, 17), (16, 96, 16), 0.1)])
def test_window_count_matches_monai(shape, roi, overlap):
    from monai.inferers import sliding_window_inference

    calls = []
    sliding_window_inference(torch.zeros((1, 1) + shape), roi, 1, lambda w: calls.append(1) or w, overlap)
    assert count_windows(shape, roi, overlap) == len(calls)


@pytest.mark.slow  # several windows, each new shape warms up oneDNN: 5-15 s on a busy 2-core CPU
def test_windows_report_progress_and_cancel_between_windows():
    model = tiny_model()
    array = np.random.default_rng(0).standard_normal((4, 20, 24, 20)).astype(np.float32)
    present = np.ones(4, np.float32)
    plan = WindowPlan((16, 16, 16), 0.25, count_windows((20, 24, 20), (16, 16, 16), 0.25))
    assert plan.n_windows == 8
    seen = []
    out, _, predictor = infer(model, array, present, plan=plan, progress=lambda f, m: seen.append(f))
    assert predictor.done == plan.n_windows  # the plan counts exactly the windows MONAI runs
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == plan.n_windows + 1
    assert out["evidence"].shape == (1, 4, 20, 24, 20)
    assert out["class_evidence"].shape[:2] == (1, 4)

    calls = []

    def cancel_after_two():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        infer(model, array, present, plan=plan, cancel=cancel_after_two)
    assert len(calls) == 3  # checked before each window; the third check stopped the run


def test_shared_gradcam_equals_gradcam_pp_on_the_same_input():
    model = tiny_model(1)
    array = np.random.default_rng(1).standard_normal((4, 16, 24, 16)).astype(np.float32)
    present = np.array([1, 0, 1, 1], np.float32)
    out, plan, _ = infer(model, array, present, gradcam=True)
    assert plan.n_windows == 1 and plan.roi == (16, 24, 16)  # no padding: both see the same tensor
    predicted = int(model.class_logits(out).argmax())
    direct = gradcam_pp(model, torch.from_numpy(array), torch.from_numpy(present), predicted)
    np.testing.assert_allclose(out["gradcam"][0, 0].numpy(), direct, atol=1e-4)
    # And the rest of the shared pass is the plain forward pass.
    with torch.no_grad():
        plain = model(torch.from_numpy(array)[None], torch.from_numpy(present)[None])
    torch.testing.assert_close(out["evidence"], plain["evidence"], atol=1e-5, rtol=1e-4)
    assert all(p.requires_grad for p in model.parameters())


def test_gradients_only_for_restores_the_model():
    model = tiny_model()
    with gradients_only_for(model, model.gradcam_target_layers()):
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        expected = {id(p) for layer in model.gradcam_target_layers() for p in layer.parameters()}
        assert trainable == expected
    assert all(p.requires_grad for p in model.parameters())


def test_unusable_devices_are_input_errors():
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            inference.resolve_device("cuda")
    with pytest.raises(InputError, match="device"):
        inference.resolve_device("quantum")


def test_run_gives_every_layer_on_the_reference_grid():
    images = four_contrasts(lesion_mm=18.0)
    messages = []
    result = run(images, tiny_model(), progress=lambda f, m: messages.append((f, m)), **FAST)
    reference = images["t1"]
    for layer in (result.label, result.uncertainty, result.difference_prior, result.gradcam):
        assert same_grid(layer, reference)
    assert list(result.tumour_free) == list(CONTRASTS)
    label = sitk.GetArrayFromImage(result.label)
    assert result.label.GetPixelID() == sitk.sitkUInt8 and set(np.unique(label)) <= {0, 1, 2, 3}
    uncertainty = sitk.GetArrayFromImage(result.uncertainty)
    brain = sitk.GetArrayFromImage(images["t1"]) > 0
    assert uncertainty.min() >= 0 and uncertainty.max() <= 1 and not uncertainty[~brain].any()
    gradcam = sitk.GetArrayFromImage(result.gradcam)
    assert gradcam.min() >= 0 and gradcam.max() <= 1 and gradcam.max() > 0.5
    assert set(result.class_probabilities) == set(CLASSES)
    assert abs(sum(result.class_probabilities.values()) - 1.0) < 1e-4
    assert result.predicted_class == max(result.class_probabilities, key=result.class_probabilities.get)
    voxel_ml = np.prod(reference.GetSpacing()) / 1000
    assert result.volumes_ml["WT"] == pytest.approx((label > 0).sum() * voxel_ml, abs=1e-3)
    assert result.volumes_ml["TC"] == pytest.approx(result.volumes_ml["NETC"] + result.volumes_ml["ET"], abs=1e-3)
    # The generator starts as the identity, so the untrained reconstruction is the input in its own units
    # (smoothed by the 4 mm network grid of this test).
    for name in CONTRASTS:
        restored = sitk.GetArrayFromImage(result.tumour_free[name])[brain]
        original = sitk.GetArrayFromImage(images[name])[brain]
        assert abs(restored.mean() - original.mean()) < 0.03 * original.mean()
        assert np.corrcoef(restored, original)[0, 1] > 0.7
    for stage in ("validate", "preprocess", "network", "segmentation", "uncertainty", "prior", "gradcam", "total"):
        assert result.timings[stage] >= 0
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert result.inputs["reference"] == "t1" and result.settings["windows"] == 1


def test_tumour_outside_the_brain_is_removed_and_named(monkeypatch):
    from DareFuseSlicerLib.pipeline import frontend

    images = four_contrasts(lesion_mm=18.0)
    model = tiny_model()
    plain = run(images, model, outputs=("segmentation",), **FAST)
    shown = sitk.GetArrayFromImage(plain.label) > 0
    assert shown.any() and not any("outside the brain" in w for w in plain.warnings)
    # Whole-head studies only (FrontEnd.outside_brain, test_frontend.py); here every part is said to lie outside.
    monkeypatch.setattr(frontend.FrontEnd, "outside_brain", lambda self, label: np.asarray(label) > 0)
    removed = run(images, model, outputs=("segmentation",), **FAST)
    assert not sitk.GetArrayViewFromImage(removed.label).any() and removed.volumes_ml["WT"] == 0.0
    (warning,) = [w for w in removed.warnings if "outside the brain" in w]
    assert warning.startswith("Removed ") and f"({plain.volumes_ml['WT']:.1f} mL in all)" in warning
    assert "at RAS (" in warning


def test_run_uses_the_post_processing_thresholds_of_the_model_card():
    images = four_contrasts(lesion_mm=18.0)
    model = tiny_model()
    plain = run(images, model, outputs=("segmentation",), **FAST)
    assert plain.settings["postprocess"]["source"] == "literature defaults"
    assert sitk.GetArrayViewFromImage(plain.label).any()  # the untrained model labels something
    # A card whose whole-tumour threshold exceeds the head removes every component.
    model.card = {"postprocess": {"config": {"wt_min_ml": 1e6}, "tuned_on": "val"}}
    strict = run(images, model, outputs=("segmentation",), **FAST)
    assert strict.settings["postprocess"]["source"] == "tuned on val"
    assert strict.settings["postprocess"]["wt_min_ml"] == 1e6
    assert not sitk.GetArrayViewFromImage(strict.label).any() and strict.volumes_ml["WT"] == 0.0
    assert not any("class gate" in w for w in strict.warnings)
    # What the threshold removed is not shown, so the run says how much it was and where.
    removed = [w for w in strict.warnings if w.startswith("Post-processing removed")]
    assert len(removed) == 1 and "smaller than 1e+06 mL" in removed[0] and "in all; tuned on val)" in removed[0]
    total = float(removed[0].split(" mL in all")[0].rsplit("(", 1)[1])
    assert total >= plain.volumes_ml["WT"] - 0.01 and "at RAS (" in removed[0]
    # A class gate at 0 closes on any class probability: empty map, and a warning that says why.
    model.card = {"postprocess": {"config": {"no_tumour_gate": 0.0}, "tuned_on": "val"}}
    gated = run(images, model, outputs=("segmentation",), **FAST)
    assert not sitk.GetArrayViewFromImage(gated.label).any() and gated.volumes_ml["WT"] == 0.0
    cleared = [w for w in gated.warnings if "class gate's 0.0 (tuned on val)" in w]
    assert len(cleared) == 1 and "mL that post-processing kept were cleared" in cleared[0]
    # The class head and the segmentation disagree, and the map shown hides it: low confidence, saying so.
    doubt = [w for w in gated.warnings if "its gate cleared" in w]
    assert gated.low_confidence and len(doubt) == 1 and doubt[0].startswith("Low confidence:")
    assert "--no-class-gate" in doubt[0]
    # Nothing post-processing would have kept: the gate clears no tumour, so no doubt.
    model.card = {"postprocess": {"config": {"no_tumour_gate": 0.0, "wt_min_ml": 1e6}, "tuned_on": "val"}}
    quiet = run(images, model, outputs=("segmentation",), **FAST)
    assert any("post-processing had kept none" in w for w in quiet.warnings)
    assert not any("its gate cleared" in w for w in quiet.warnings)
    # What the size threshold removed is still named: the gate hides the map, not where to look.
    assert any(w.startswith("Post-processing removed") for w in quiet.warnings)
    model.card = {"postprocess": {"config": {"no_tumour_gate": 0.0}, "tuned_on": "val"}}
    head = max(gated.class_probabilities, key=gated.class_probabilities.get)
    assert head != "no_tumour"  # this untrained model names a tumour, so the rule below has something to change
    assert gated.predicted_class == gated.gradcam_class == head and not any("class rule" in w for w in gated.warnings)
    # The class rule: nothing segmented, so no_tumour is reported, with a warning naming the class head's answer;
    # Grad-CAM++ still explains the class head's decision.
    model.card = {"postprocess": {"config": {"no_tumour_gate": 0.0, "empty_means_no_tumour": True}, "tuned_on": "val"}}
    ruled = run(images, model, outputs=("segmentation", "gradcam"), **FAST)
    assert ruled.predicted_class == "no_tumour" and ruled.gradcam_class == head
    assert ruled.class_probabilities == gated.class_probabilities
    assert any("class rule (tuned on val)" in w and f"class head alone gives {head}" in w for w in ruled.warnings)
    # The caller can keep the segments (the command line's --no-class-gate).
    kept = run(images, model, outputs=("segmentation",), class_gate=False, **FAST)
    assert sitk.GetArrayViewFromImage(kept.label).any() and not any("class gate" in w for w in kept.warnings)
    assert kept.settings["postprocess"]["source"] == "tuned on val; class gate turned off"
    assert kept.settings["postprocess"]["no_tumour_gate"] is None


def test_a_no_tumour_class_beside_tumour_segments_is_low_confidence():
    """The class head says no tumour while the segmentation keeps tumour: the two contradict each other, so the
    result is low confidence, with the reason; once nothing is segmented they agree and that doubt is gone."""
    images = four_contrasts(lesion_mm=18.0)
    model = tiny_model()
    probabilities = torch.full((1, len(CLASSES)), 0.1, dtype=torch.float64)
    probabilities[0, CLASSES.index("no_tumour")] = 0.7
    model.class_probabilities = lambda out: probabilities
    result = run(images, model, outputs=("segmentation",), **FAST)
    assert result.predicted_class == "no_tumour" and result.volumes_ml["WT"] > 0
    doubt = [w for w in result.warnings if "class head gives no tumour (70%)" in w]
    assert result.low_confidence and len(doubt) == 1 and doubt[0].startswith("Low confidence:")
    assert f"{result.volumes_ml['WT']:.1f} mL are segmented as tumour" in doubt[0]
    model.card = {"postprocess": {"config": {"wt_min_ml": 1e6}, "tuned_on": "val"}}
    empty = run(images, model, outputs=("segmentation",), **FAST)
    assert empty.volumes_ml["WT"] == 0.0 and not any("class head gives no tumour" in w for w in empty.warnings)


def test_the_enhancement_rule_reports_glioma_when_no_enhancing_tumour_is_shown_and_says_so():
    """The class head says meningioma while the map shows tumour but no ET (a card relabels every ET voxel NETC):
    with the card's enhancement rule on, glioma is reported, low confidence, naming both; Grad-CAM++ still explains
    the class head. Off (no card setting), without T1ce, or with no tumour shown, the class head's answer stands."""
    images = four_contrasts(lesion_mm=18.0)
    model = tiny_model()
    probabilities = torch.full((1, len(CLASSES)), 0.1, dtype=torch.float64)
    probabilities[0, CLASSES.index("meningioma")] = 0.7
    model.class_probabilities = lambda out: probabilities
    no_et = {"et_to_netc_ml": 1e6}
    model.card = {"postprocess": {"config": {**no_et, "non_enhancing_glioma_ml": 0.0}, "tuned_on": "val"}}
    ruled = run(images, model, outputs=("segmentation", "gradcam"), **FAST)
    assert ruled.volumes_ml["WT"] > 0 and ruled.volumes_ml["ET"] == 0.0
    assert ruled.predicted_class == "glioma" and ruled.gradcam_class == "meningioma"
    doubt = [w for w in ruled.warnings if "class head gives meningioma (70%)" in w]
    assert ruled.low_confidence and len(doubt) == 1 and doubt[0].startswith("Low confidence:")
    assert "0.0 mL of enhancing tumour" in doubt[0] and "reported as glioma" in doubt[0]
    assert "enhancement rule (non_enhancing_glioma_ml 0.0 mL)" in doubt[0]
    # Shown (command line, overview) with the class head's own answer, not its probability of glioma.
    heading = class_text(ruled.predicted_class, ruled.class_probabilities, ruled.gradcam_class)
    assert heading == "glioma (by a rule; class head: meningioma 70%)"
    assert ruled.settings["postprocess"]["non_enhancing_glioma_ml"] == 0.0
    # Without T1ce the map cannot show enhancement, so its absence is no evidence: the class head's answer stands.
    unseen = run({n: i for n, i in images.items() if n != "t1ce"}, model, outputs=("segmentation",), **FAST)
    assert unseen.volumes_ml["WT"] > 0 and unseen.volumes_ml["ET"] == 0.0
    assert unseen.predicted_class == "meningioma" and not any("enhancement rule" in w for w in unseen.warnings)
    model.card = {"postprocess": {"config": no_et, "tuned_on": "val"}}
    plain = run(images, model, outputs=("segmentation",), **FAST)
    assert plain.predicted_class == "meningioma" and not any("enhancement rule" in w for w in plain.warnings)
    model.card = {"postprocess": {"config": {"wt_min_ml": 1e6, "non_enhancing_glioma_ml": 0.0}, "tuned_on": "val"}}
    empty = run(images, model, outputs=("segmentation",), **FAST)
    assert empty.volumes_ml["WT"] == 0.0 and empty.predicted_class == "meningioma"
    assert not any("enhancement rule" in w for w in empty.warnings)


def test_an_unsure_class_head_makes_the_run_low_confidence_naming_its_two_likeliest_classes():
    """The card's class doubt (0.9): a class head at 70 % is flagged with what it hesitates between; at 0.6, or
    with no card setting, it is not."""
    images = four_contrasts(lesion_mm=18.0)
    model = tiny_model()
    probabilities = torch.tensor([[0.05, 0.7, 0.05, 0.2]], dtype=torch.float64)
    model.class_probabilities = lambda out: probabilities
    model.card = {"postprocess": {"config": {"class_doubt_below": 0.9}, "tuned_on": "val"}}
    unsure = run(images, model, outputs=("segmentation",), **FAST)
    doubt = [w for w in unsure.warnings if "class head is unsure" in w]
    assert unsure.low_confidence and len(doubt) == 1 and doubt[0].startswith("Low confidence:")
    assert "glioma 70%, metastasis 20% (below 90%" in doubt[0]
    assert unsure.settings["postprocess"]["class_doubt_below"] == 0.9
    for config in ({"class_doubt_below": 0.6}, {}):
        model.card = {"postprocess": {"config": config, "tuned_on": "val"}}
        sure = run(images, model, outputs=("segmentation",), **FAST)
        assert not any("class head is unsure" in w for w in sure.warnings)


def test_a_glioma_call_with_disproportionate_oedema_is_low_confidence_naming_metastasis():
    """The card's oedema doubt: a run reporting glioma whose map shows 15 times more oedema than core gets a
    warning (result_doubts makes the run low confidence) naming both volumes and metastasis."""
    from types import SimpleNamespace

    from DareFuseSlicerLib.pipeline.postprocess import PostprocessConfig
    from DareFuseSlicerLib.pipeline.run import oedema_doubt

    swollen = SimpleNamespace(predicted_index=CLASSES.index("glioma"),
                              volumes_ml={"NETC": 3.0, "SNFH": 120.0, "ET": 5.0, "WT": 128.0, "TC": 8.0})
    doubt = oedema_doubt(swollen, PostprocessConfig(oedema_doubt_above=10.0))
    assert len(doubt) == 1 and "120.0 mL of oedema around 8.0 mL of tumour core" in doubt[0]
    assert "more than 10 times" in doubt[0] and "metastasis" in doubt[0]
    assert oedema_doubt(swollen, PostprocessConfig()) == []
    called_metastasis = SimpleNamespace(predicted_index=CLASSES.index("metastasis"), volumes_ml=swollen.volumes_ml)
    assert oedema_doubt(called_metastasis, PostprocessConfig(oedema_doubt_above=10.0)) == []


@pytest.mark.parametrize("given", [("flair",), ("t2", "flair"), ("t1ce",), ("t1", "t2")])
def test_any_subset_of_contrasts_and_the_reference_rule(given):
    images = {name: image for name, image in four_contrasts().items() if name in given}
    result = run(images, tiny_model(), outputs={"segmentation", "prior"}, **FAST)
    reference = next(name for name in CONTRASTS if name in given)
    assert result.inputs["reference"] == reference and same_grid(result.label, images[reference])
    assert list(result.tumour_free) == [name for name in CONTRASTS if name in given]
    assert result.uncertainty is None and result.gradcam is None and "gradcam" not in result.timings


def test_cancel_between_stages_and_unknown_outputs():
    images = {"t1": head()}
    with pytest.raises(Cancelled):
        run(images, tiny_model(), cancel=lambda: True, **FAST)
    calls = []
    with pytest.raises(Cancelled):  # cancelled after validation and pre-processing: at the first window
        run(images, tiny_model(), cancel=lambda: calls.append(1) or len(calls) > 2, **FAST)
    with pytest.raises(InputError, match="Unknown output"):
        run(images, tiny_model(), outputs={"segmentation", "tumour"})


@pytest.mark.slow  # several windows, each new shape warms up oneDNN: 5-15 s on a busy 2-core CPU
def test_several_windows_give_a_case_level_gradcam():
    images = {"t1": head()}
    shape = (36, 44, 33)  # the 4 mm grid of head()'s brain box
    plan = WindowPlan((24, 32, 24), 0.25, count_windows(shape, (24, 32, 24), 0.25))
    result = run(images, tiny_model(), outputs={"segmentation", "gradcam"}, plan=plan, **FAST)
    assert result.settings["windows"] > 1
    values = sitk.GetArrayFromImage(result.gradcam)
    assert values.max() > 0.5 and values.min() >= 0
