"""`darefuse evaluate`: metric helpers against known answers, and a whole report on a tiny folder."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import SimpleITK as sitk

from DareFuseSlicerLib.cli import user_message
from DareFuseSlicerLib.constants import BRATS_SUFFIX, CLASSES, CONTRASTS
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
from DareFuseSlicerLib.network.store import load_model, record_metrics, save_model
from DareFuseSlicerLib.pipeline import review
from DareFuseSlicerLib.pipeline.postprocess import PostprocessConfig, config_for_card
from DareFuseSlicerLib.training.baseline import SegResNetBaseline
from DareFuseSlicerLib.training.class_gate_eval import gate_table
from DareFuseSlicerLib.training.evaluate import (
    HD95_EMPTY_PENALTY,
    expected_calibration_error,
    macro_f1,
    region_scores,
    roc_auc,
    run_evaluation,
    _labelled_box,
    load_case,
    parse_class_gate,
    parse_contrasts,
    tune_class_rule,
    tune_postprocessing,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_training_dataset import make_folder  # noqa: E402
from DareFuseSlicerLib.training.dataset import read_rows  # noqa: E402


def _sphere(shape, centre, radius):
    z, y, x = np.indices(shape)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < radius**2


def test_region_scores_known_answers():
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[_sphere(truth.shape, (15, 15, 15), 8)] = 2
    truth[_sphere(truth.shape, (15, 15, 15), 4)] = 3
    perfect = region_scores(truth, truth, (1.0, 1.0, 1.0))
    assert all(perfect[r]["dice"] == pytest.approx(1.0) and perfect[r]["hd95"] == 0.0 for r in ("WT", "TC", "ET"))
    shifted = np.roll(truth, 3, axis=2)  # 3 voxels of 2 mm along x
    scores = region_scores(shifted, truth, (1.0, 1.0, 2.0))
    assert 0.5 < scores["WT"]["dice"] < 0.95 and scores["WT"]["hd95"] == pytest.approx(6.0, abs=0.5)
    empty = region_scores(np.zeros_like(truth), truth, (1.0, 1.0, 1.0))
    assert empty["WT"] == {"dice": 0.0, "hd95": HD95_EMPTY_PENALTY}
    both_empty = region_scores(np.zeros_like(truth), np.zeros_like(truth), (1.0, 1.0, 1.0))
    assert both_empty["ET"] == {"dice": 1.0, "hd95": 0.0}


def test_auroc_ece_f1_known_answers():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5
    rng = np.random.RandomState(0)
    confidence = rng.uniform(0.25, 1.0, 200_000)
    assert expected_calibration_error(confidence, rng.uniform(size=confidence.size) < confidence) < 0.01
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000, bool)) == pytest.approx(0.9)
    assert macro_f1([0, 1, 2, 3], [0, 1, 2, 3], 4) == 1.0 and macro_f1([0, 0, 1, 1], [1, 1, 0, 0], 2) == 0.0


def test_tuning_removes_a_small_false_positive():
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[_sphere(truth.shape, (20, 20, 20), 8)] = 2
    label = truth.copy()
    label[2:4, 2:4, 2:4] = 2  # 8 voxels of 1 mm^3 = 0.008 mL, far from the lesion
    config, score = tune_postprocessing([_labelled_box(label, truth) + (0.001, None)])
    assert config.wt_min_ml > 0.008 and score == pytest.approx(1.0)


def test_tuning_closes_the_class_gate_only_where_it_helps():
    """A tumour-free case with a 4 mL false positive that no volume threshold removes: the gate is chosen
    when the class head is sure of it; when a tumour case is as sure, the gate would wipe a true tumour and
    stays open."""
    empty = np.zeros((40, 40, 40), np.uint8)
    false_positive = empty.copy()
    false_positive[_sphere(empty.shape, (20, 20, 20), 10)] = 2  # about 4.2 mL of 1 mm^3 voxels
    tumour = false_positive.copy()
    healthy = _labelled_box(false_positive, empty) + (0.001, 0.97)
    config, score = tune_postprocessing([healthy, _labelled_box(tumour, tumour) + (0.001, 0.02)])
    assert config.no_tumour_gate is not None and 0.02 < config.no_tumour_gate <= 0.97 and score == pytest.approx(1.0)
    config, _ = tune_postprocessing([healthy, _labelled_box(tumour, tumour) + (0.001, 0.99)])
    assert config.no_tumour_gate is None
    config, _ = tune_postprocessing([_labelled_box(false_positive, empty) + (0.001, None)])  # no class head
    assert config.no_tumour_gate is None


def test_tuning_turns_the_class_rule_on_only_where_it_raises_the_accuracy():
    """The class head calls a tumour-free case with nothing segmented a meningioma: the rule is chosen. When a
    meningioma with nothing segmented (missed by the segmentation) outweighs it, the rule stays off."""
    empty = np.zeros((20, 20, 20), np.uint8)
    lesion = empty.copy()
    lesion[_sphere(empty.shape, (10, 10, 10), 6)] = 2
    says_meningioma = np.array([0.3, 0.1, 0.5, 0.1])
    no_tumour, meningioma = 0, 2
    healthy = (empty, 0.001, 0.3, says_meningioma, no_tumour)
    found = (lesion, 0.001, 0.3, says_meningioma, meningioma)
    missed = (empty, 0.001, 0.3, says_meningioma, meningioma)
    assert tune_class_rule(PostprocessConfig(), [healthy, found]).empty_means_no_tumour
    assert not tune_class_rule(PostprocessConfig(), [healthy, missed, missed]).empty_means_no_tumour
    assert not tune_class_rule(PostprocessConfig(), [healthy, missed]).empty_means_no_tumour  # a tie: off
    assert not tune_class_rule(PostprocessConfig(empty_means_no_tumour=True), []).empty_means_no_tumour
    # The rule sees the map after the tuned post-processing: a lesion below the WT threshold counts as empty.
    assert tune_class_rule(PostprocessConfig(wt_min_ml=1e6), [(lesion, 0.001, 0.3, says_meningioma, no_tumour)]
                           ).empty_means_no_tumour


@pytest.mark.slow
def test_report_on_a_tiny_folder(tmp_path):
    folder = make_folder(tmp_path / "held-out", n_cases=4, seed=11)
    tune = make_folder(tmp_path / "val", n_cases=2, seed=31)  # never the held-out folder (frontend_eval)
    torch.manual_seed(0)
    net_path = tmp_path / "m" / "darefuse.safetensors"
    save_model(DareFuseNet(NetConfig()), net_path, {"training_command": "test", "seed": 0})
    base_path = tmp_path / "m" / "segresnet.safetensors"
    save_model(SegResNetBaseline(), base_path, {"training_command": "test", "seed": 0})
    # An enhancement rule already in the card (chosen on development sets) survives the tuning below.
    record_metrics(net_path, "enhancement_rule_choice", {},
                   postprocess={"config": {"non_enhancing_glioma_ml": 0.0, "class_doubt_below": 0.9,
                                           "oedema_doubt_above": 10.0}})
    json_path, md_path = run_evaluation(folder, [f"darefuse={net_path}", f"baseline={base_path}"], tmp_path / "report",
                                        tune=tune, log=lambda *_: None, record=True)
    report = json.loads(json_path.read_text())
    assert report["data"]["cases"] == 4
    dare, base = report["models"]["darefuse"], report["models"]["baseline"]
    for r in (dare, base):
        for stage in ("raw", "post"):
            assert all(0.0 <= r[stage][k]["dice"] <= 1.0 and r[stage][k]["hd95"] >= 0.0 for k in ("WT", "TC", "ET"))
        assert 0.0 <= r["uncertainty"]["error_auroc"] <= 1.0
    assert 0.0 <= dare["classification"]["accuracy"] <= 1.0 and "classification" not in base
    assert 0.0 <= dare["classification"]["accuracy_class_head"] <= 1.0
    rows = dare["per_case"]
    assert all(r["class_head"] in CLASSES for r in rows)
    # Each case's class probabilities, the class head's answer their arg-max.
    assert all(max(r["class_probabilities"], key=r["class_probabilities"].get) == r["class_head"] for r in rows)
    assert all(abs(sum(r["class_probabilities"].values()) - 1.0) < 1e-3 for r in rows)
    # The class rule can only turn the class head's answer into no_tumour, and only when it is on; the
    # enhancement rule only an enhancing class into glioma, where the map shows tumour and no ET.
    assert dare["postprocess"]["config"]["non_enhancing_glioma_ml"] == 0.0
    # So does the class doubt: each row says whether it flagged the class head.
    assert dare["postprocess"]["config"]["class_doubt_below"] == 0.9
    assert all(r["class_in_doubt"] == (max(r["class_probabilities"].values()) < 0.9) for r in rows)
    # And the oedema doubt: glioma calls with oedema over 10 times the core shown.
    assert dare["postprocess"]["config"]["oedema_doubt_above"] == 10.0
    assert all(r["oedema_in_doubt"] == (r["predicted_class"] == "glioma" and r["shown_ml"]["SNFH"] > 0.0
                                        and r["shown_ml"]["SNFH"] > 10.0 * r["shown_ml"]["TC"]) for r in rows)
    assert all(r["predicted_class"] in (r["class_head"], "no_tumour", "glioma") for r in rows)
    for r in rows:
        if r["predicted_class"] == "glioma" != r["class_head"]:
            assert r["class_head"] in ("meningioma", "metastasis") and r["shown_ml"]["ET"] == 0.0 < r["shown_ml"]["WT"]
    if not dare["postprocess"]["config"]["empty_means_no_tumour"]:
        assert all(r["predicted_class"] in (r["class_head"], "glioma") for r in rows)
    fp = dare["false_positive_ml_tumour_free"]
    assert fp["cases"] == 1 and fp["with_prior"] >= 0.0 and fp["without_prior"] >= 0.0
    card = json.loads((tmp_path / "m" / "darefuse.card.json").read_text())
    assert card["metrics"]["held_out"]["post"] == dare["post"]
    # The tuned thresholds go into the card, and the pipeline then uses them with this model.
    assert card["postprocess"]["config"] == dare["postprocess"]["config"] and card["postprocess"]["tuned_on"] == str(tune)
    assert config_for_card(load_model(net_path).card) == (PostprocessConfig(**dare["postprocess"]["config"]), f"tuned on {tune}")
    text = md_path.read_text()
    assert "| darefuse | none |" in text and "| baseline |" in text and "HD95" in text
    # Dice means over the 3 tumour cases beside the BraTS convention's over all 4 (the tumour-free one scores 1
    # when predicted empty, 0 with one false voxel).
    tumour_rows = [r["post"] for r in rows if r["class"] != "no_tumour"]
    assert len(tumour_rows) == 3
    assert dare["post_tumour_cases"]["WT"]["dice"] == pytest.approx(np.mean([r["WT"]["dice"] for r in tumour_rows]))
    assert "| darefuse | tuned, tumour cases only (3) |" in text
    # What the unshown-tumour alarm would do at each candidate (a pipeline model only), from each case's parts.
    assert all("unshown" in r and isinstance(r["unshown"]["missed_lesions_ml"], list) for r in rows)
    assert len(dare["unshown_alarm"]["candidates"]) == 10 and "unshown_alarm" not in base
    assert "## Unshown tumour: the alarm at each candidate" in text
    assert "## The class doubt at each candidate" in text and "| darefuse | 0.9* |" in text
    assert "## The oedema doubt at each candidate" in text and "| darefuse | 10* |" in text
    # Parts removed as outside the brain: none in BraTS-style cases (no front-end brain mask).
    assert all(row["outside_brain_ml"] == 0.0 for r in (dare, base) for row in r["per_case"])
    # Lesion-wise detection for every model, from each case's lesions.
    for r in (dare, base):
        assert r["lesions"]["tumour_cases"] == 3 and r["lesions"]["found"] <= r["lesions"]["lesions"]
        assert all(len(row["lesions"]["truth_ml"]) == len(row["lesions"]["found"]) for row in r["per_case"])
    assert "## Lesion-wise detection (the map shown)" in text and "| baseline | " in text
    # Review efficiency: every case scored, the settings tuned on the tuning folder, recorded and then used.
    efficiency = dare["review_efficiency"]
    assert efficiency["cases"] == 4 and efficiency["tumour_cases"] == 3
    assert set(efficiency["all_cases"]) >= {"top1", "top3", "top5", "top10", "goals_met"}
    assert all(set(r["review"]) >= {"regions", "review", "size", "random"} for r in rows)
    assert dare["review"]["tuned_on"] == str(tune) and card["review"]["config"] == dare["review"]["config"]
    assert review.config_for_card(load_model(net_path).card) == (
        review.ReviewConfig.from_dict(dare["review"]["config"]), f"tuned on {tune}")
    assert card["metrics"]["held_out"]["review_efficiency"]["cases"] == 4
    assert "## Review efficiency" in text and "| darefuse | tumour 3 | 5 |" in text


def _gate_case(tumour_class, p_no_tumour, post_dice, truth_ml=None, fp_ml=0.0):
    row = {"class": tumour_class, "class_probabilities": {"no_tumour": p_no_tumour},
           "post": {r: {"dice": d, "hd95": 0.0} for r, d in zip(("WT", "TC", "ET"), post_dice)}}
    if truth_ml is not None:
        row["truth_ml"] = dict(zip(("WT", "TC", "ET"), truth_ml))
    if tumour_class == "no_tumour":
        row["false_positive_ml"] = fp_ml
    return row


def test_class_gate_table_known_answers():
    rows = [_gate_case("no_tumour", 0.99, (0.0, 1.0, 1.0), fp_ml=1.2),  # a false part the gate can clear
            _gate_case("no_tumour", 0.90, (1.0, 1.0, 1.0)),
            _gate_case("glioma", 0.60, (0.8, 0.6, 0.4), truth_ml=(30.0, 10.0, 0.0)),  # no ET in the truth
            _gate_case("metastasis", 0.01, (0.9, 0.9, 0.9), truth_ml=(5.0, 2.0, 1.0))]
    none, half, high = gate_table(rows, (None, 0.5, 0.95))
    assert none["dice"]["WT"] == pytest.approx((0.0 + 1.0 + 0.8 + 0.9) / 4)
    assert none["false_positive_ml"] == pytest.approx(0.6) and none["tumour_cases_cleared"] == 0
    # 0.5 clears both tumour-free brains (1 each) and the glioma: WT 0, TC 0, ET 1 (its truth has none).
    assert half["dice"] == pytest.approx({"WT": (1 + 1 + 0 + 0.9) / 4, "TC": (1 + 1 + 0 + 0.9) / 4,
                                          "ET": (1 + 1 + 1 + 0.9) / 4})
    assert half["dice_tumour_cases"]["WT"] == pytest.approx(0.45)
    assert (half["tumour_cases_cleared"], half["tumour_free_cases_cleared"]) == (1, 2)
    assert half["false_positive_ml"] == 0.0
    # 0.95 clears only the false part.
    assert high["dice"]["WT"] == pytest.approx((1.0 + 1.0 + 0.8 + 0.9) / 4) and high["tumour_cases_cleared"] == 0
    # A report older than truth_ml cannot score a gate that clears a tumour case: left unscored, not guessed.
    del rows[2]["truth_ml"]
    assert gate_table(rows, (0.5,))[0]["dice"] is None and gate_table(rows, (0.95,))[0]["dice"] is not None
    # Scored from the map before the gate when the report's own gate had closed.
    rows[1]["post_without_class_gate"] = {r: {"dice": 0.0, "hd95": 1.0} for r in ("WT", "TC", "ET")}
    assert gate_table(rows, (None,))[0]["dice"]["WT"] == pytest.approx((0.0 + 0.0 + 0.8 + 0.9) / 4)
    # No class head, no table.
    assert gate_table([{k: v for k, v in rows[0].items() if k != "class_probabilities"}], (None,)) == []


def test_a_given_class_gate_is_used_reported_and_recorded(tmp_path):
    assert parse_class_gate("0.8") == 0.8 and parse_class_gate("None") is None
    for bad in ("0", "1.5", "high", ""):
        with pytest.raises(InputError, match="^class_gate ") as raised:
            parse_class_gate(bad)
        assert user_message(raised.value).startswith("--class-gate ")
    folder = make_folder(tmp_path / "held-out", n_cases=2, seed=13)
    torch.manual_seed(0)
    path = tmp_path / "m" / "darefuse.safetensors"
    save_model(DareFuseNet(NetConfig()), path, {"training_command": "test", "seed": 0})
    json_path, md_path = run_evaluation(folder, [f"darefuse={path}"], tmp_path / "report", log=lambda *_: None,
                                        record=True, class_gate="1e-9")  # closes on every case
    dare = json.loads(json_path.read_text())["models"]["darefuse"]
    assert dare["postprocess"]["config"]["no_tumour_gate"] == 1e-9 and dare["postprocess"]["class_gate_given"] == 1e-9
    rows = dare["per_case"]
    assert all(r["class_gate_closed"] and "post_without_class_gate" in r and set(r["truth_ml"]) == {"WT", "TC", "ET"}
               for r in rows)
    assert all(r["post"]["WT"]["dice"] == (1.0 if r["class"] == "no_tumour" else 0.0) for r in rows)
    card = json.loads((tmp_path / "m" / "darefuse.card.json").read_text())
    assert card["postprocess"]["config"]["no_tumour_gate"] == 1e-9
    text = md_path.read_text()
    assert "class gate 1e-09 given by --class-gate" in text and "## The class gate at each candidate" in text
    assert "| darefuse | none |" in text and "| darefuse | 0.95 |" in text


def test_contrasts_parsed_with_errors_that_name_the_option():
    assert parse_contrasts(None) == tuple(CONTRASTS)
    assert parse_contrasts("FLAIR, t1ce") == ("t1ce", "flair")  # CONTRASTS order, whatever the order given
    for bad in ("", " , ", "t1,pd"):
        with pytest.raises(InputError, match="^contrasts ") as raised:
            parse_contrasts(bad)
        assert user_message(raised.value).startswith("--contrasts ")  # the command line names its flag


def test_only_the_given_contrasts_reach_the_network(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "held-out", n_cases=2, seed=12)
    case = load_case(folder, read_rows(folder)[1], ("t2", "flair"))
    assert case.images["t1"] is None and case.images["t1ce"] is None and case.images["flair"] is not None
    assert case.prep.present.tolist() == [0.0, 0.0, 1.0, 1.0]

    torch.manual_seed(0)
    path = tmp_path / "m" / "darefuse.safetensors"
    save_model(DareFuseNet(NetConfig()), path, {"training_command": "test", "seed": 0})
    seen = []
    forward = DareFuseNet.forward

    def recording(self, x, present, use_prior=True):
        seen.append(present.detach().cpu().numpy().copy())
        return forward(self, x, present, use_prior)

    monkeypatch.setattr(DareFuseNet, "forward", recording)
    tune = make_folder(tmp_path / "val", n_cases=1, seed=32)
    json_path, md_path = run_evaluation(folder, [f"darefuse={path}"], tmp_path / "report", tune=tune,
                                        log=lambda *_: None, contrasts=("t2", "flair"))
    assert seen and all(row.tolist() == [0.0, 0.0, 1.0, 1.0] for batch in seen for row in batch)
    assert json.loads(json_path.read_text())["data"]["contrasts"] == ["t2", "flair"]
    assert "Contrasts given to the models: t2, flair (the others missing)." in md_path.read_text()

    # A card's held-out figures are for all four contrasts: --record with fewer is refused, nothing written.
    with pytest.raises(InputError, match="^record is for all four contrasts"):
        run_evaluation(folder, [f"darefuse={path}"], tmp_path / "refused", log=lambda *_: None, record=True,
                       contrasts=("flair",))
    assert not (tmp_path / "refused.json").exists()


def test_a_reference_off_the_segmentation_grid_is_an_error_naming_the_case(tmp_path):
    folder = make_folder(tmp_path / "held-out", n_cases=1, seed=13)
    row = read_rows(folder)[0]
    t2_path = folder / row[BRATS_SUFFIX["t2"]]
    image = sitk.ReadImage(str(t2_path))
    image.SetOrigin([o + 5.0 for o in image.GetOrigin()])
    sitk.WriteImage(image, str(t2_path))
    load_case(folder, row)  # T1 is the reference and is on the segmentation's grid
    with pytest.raises(InputError, match=f"{row['case_id']}.*not on the segmentation's grid"):
        load_case(folder, row, ("t2", "flair"))
