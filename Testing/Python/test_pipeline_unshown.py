"""Unshown tumour (pipeline/unshown.py): likely tumour the map shown does not hold, the alarm it raises, and what
the alarm's candidates would do on scored cases (training/unshown_eval.py)."""
import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.pipeline import unshown
from DareFuseSlicerLib.pipeline.run import run
from DareFuseSlicerLib.training import unshown_eval
from pipeline_helpers import four_contrasts, tiny_model


def _probability_with_two_blobs():
    p = np.zeros((20, 20, 20), np.float32)
    p[2:6, 2:6, 2:6] = 0.8  # 64 voxels, expected 51.2 voxels
    p[12:16, 12:16, 12:14] = 0.6  # 32 voxels, expected 19.2
    p[12, 12, 14] = 0.4  # below the threshold: not part of the second blob
    return p


def test_parts_outside_the_map_shown_are_reported_largest_expected_volume_first():
    p = _probability_with_two_blobs()
    shown = np.zeros(p.shape, np.uint8)
    parts = unshown.unshown_parts(p, shown, 0.001, 0.5)
    assert [round(part.expected_ml, 4) for part in parts] == [0.0512, 0.0192]
    assert [round(part.volume_ml, 3) for part in parts] == [0.064, 0.032]
    assert parts[0].peak_probability == pytest.approx(0.8) and parts[0].centre_zyx in {(3, 3, 3), (4, 4, 4)}
    # A part the map shows (one voxel is enough) is not unshown.
    shown[4, 4, 4] = 2
    assert [round(part.expected_ml, 4) for part in unshown.unshown_parts(p, shown, 0.001, 0.5)] == [0.0192]
    # A lower threshold joins the voxel at 0.4 to the second part.
    low = unshown.unshown_parts(p, shown, 0.001, 0.3)
    assert round(low[0].expected_ml, 4) == 0.0196 and round(low[0].volume_ml, 3) == 0.033
    assert unshown.unshown_parts(np.zeros_like(p), shown, 0.001, 0.5) == []


def test_the_alarm_sounds_only_with_a_card_setting_and_a_part_that_large():
    p = _probability_with_two_blobs()
    parts = unshown.unshown_parts(p, np.zeros(p.shape, np.uint8), 0.001, 0.5)
    reference = sitk.GetImageFromArray(p)
    reference.SetSpacing((1.0, 1.0, 1.0))
    assert unshown.alarm(parts, unshown.UnshownConfig(), reference) == []  # no setting: reported, no alarm
    assert unshown.alarm(parts, unshown.UnshownConfig(alarm_ml=0.06), reference) == []
    (doubt,) = unshown.alarm(parts, unshown.UnshownConfig(alarm_ml=0.05), reference)
    assert doubt.startswith("the network finds 1 place(s)") and "0.1 mL expected" in doubt
    x, y, z = parts[0].centre_zyx[::-1]
    assert f"RAS ({-x:.0f}, {-y:.0f}, {z:.0f}) mm" in doubt and "class gate" in doubt
    (both,) = unshown.alarm(parts, unshown.UnshownConfig(alarm_ml=0.01), reference)
    assert both.startswith("the network finds 2 place(s)")
    assert parts[0].as_dict(reference)["centre_ras"] == [-float(x), -float(y), float(z)]


def test_the_setting_comes_from_the_card_and_is_checked():
    assert unshown.config_for_card(None) == (unshown.UnshownConfig(), "defaults (no alarm)")
    card = {"unshown": {"config": {"probability": 0.3, "alarm_ml": 2.0}, "chosen_on": "development sets a, b"}}
    assert unshown.config_for_card(card) == (unshown.UnshownConfig(0.3, 2.0), "development sets a, b")
    with pytest.raises(ValueError, match="probability 1.5"):
        unshown.UnshownConfig(probability=1.5)
    with pytest.raises(ValueError, match="alarm_ml -1"):
        unshown.UnshownConfig(alarm_ml=-1)


def test_run_reports_unshown_parts_and_sounds_the_cards_alarm():
    images = four_contrasts(lesion_mm=18.0)
    model = tiny_model()
    # Post-processing removes every part, so whatever the network finds likely tumour is unshown.
    model.card = {"postprocess": {"config": {"wt_min_ml": 1e6}, "tuned_on": "val"}}
    quiet = run(images, model, outputs=("segmentation",), **{"spacing_mm": 4.0})
    assert quiet.unshown and quiet.unshown[0]["expected_ml"] > 0  # the untrained model labels something
    assert quiet.settings["unshown"] == {"probability": 0.5, "alarm_ml": None, "source": "defaults (no alarm)"}
    assert not any("does not show" in w for w in quiet.warnings)
    largest = quiet.unshown[0]["expected_ml"]
    model.card["unshown"] = {"config": {"probability": 0.5, "alarm_ml": largest / 2}, "chosen_on": "dev"}
    loud = run(images, model, outputs=("segmentation",), **{"spacing_mm": 4.0})
    doubts = [w for w in loud.warnings if "that the segmentation does not show" in w]
    assert loud.low_confidence and len(doubts) == 1 and doubts[0].startswith("Low confidence: the network finds")
    assert loud.settings["unshown"]["source"] == "dev"
    model.card["unshown"]["config"]["alarm_ml"] = largest * 2
    calm = run(images, model, outputs=("segmentation",), **{"spacing_mm": 4.0})
    assert not any("does not show" in w for w in calm.warnings)
    # With the card's own post-processing gone, the map shows those parts: nothing as large is unshown.
    model.card = {"unshown": {"config": {"probability": 0.5, "alarm_ml": largest / 2}}}
    shown = run(images, model, outputs=("segmentation",), keep_margin=True, **{"spacing_mm": 4.0})
    assert sitk.GetArrayViewFromImage(shown.label).any()
    assert all(part["expected_ml"] < largest / 2 for part in shown.unshown)
    assert shown.tumour_probability.shape == sitk.GetArrayViewFromImage(shown.label).shape


def _row(tumour_class, parts_03, parts_05, missed=()):
    return {"class": tumour_class, "missed_lesions_ml": list(missed), "parts": {"0.3": parts_03, "0.5": parts_05}}


def test_missed_lesions_and_the_parts_that_find_them():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:6, 2:6, 2:6] = 2  # 64 voxels: a lesion the map misses, found by the first blob
    truth[14:18, 2:6, 2:6] = 3  # 64 voxels, shown
    truth[10, 10, 10] = 1  # one voxel: too small to count as missed
    shown = np.zeros_like(truth)
    shown[15, 3, 3] = 2
    assert [m.sum() for m in unshown_eval.missed_lesions(truth, shown, 0.01)] == [64]
    row = unshown_eval.case_row(_probability_with_two_blobs(), shown, truth, 0.01)
    assert row["missed_lesions_ml"] == [0.64]
    assert row["parts"]["0.5"] == [[0.512, [0]], [0.192, []]]


def test_candidates_are_counted_and_the_rule_chooses_among_them():
    rows = [
        _row("no_tumour", [[0.3, []]], [[0.2, []]]),  # a false alarm at 0.25 mL with P >= 0.3
        _row("meningioma", [[3.0, [0]]], [[1.2, [0]]], missed=[6.7]),  # a missed lesion, large enough to find
        _row("glioma", [[0.6, []]], [[0.4, []]]),  # an alarm that finds nothing missed, below 1 mL
    ]
    table = {(c["probability"], c["alarm_ml"]): c for c in unshown_eval.candidate_table(rows)}
    assert table[(0.3, 0.25)]["tumour_free_alarms"] == 1 and table[(0.3, 0.5)]["tumour_free_alarms"] == 0
    assert table[(0.3, 0.5)]["tumour_case_alarms"] == 2 and table[(0.3, 0.5)]["alarms_without_a_missed_lesion"] == 1
    assert table[(0.5, 1.0)]["missed_lesions_found"] == 1 and table[(0.5, 2.0)]["missed_lesions_found"] == 0
    assert all(c["missed_lesions"] == 1 for c in table.values())
    # No tumour-free alarm, the lesion found, no needless alarm: (0.3, 1), (0.3, 2), (0.5, 0.5), (0.5, 1) tie;
    # the largest alarm volume wins.
    assert unshown_eval.choose(list(table.values()))["chosen"] == {"probability": 0.3, "alarm_ml": 2.0}
    assert unshown_eval.choose(unshown_eval.candidate_table(rows[:1] + rows[2:]))["chosen"] is None


def test_evaluate_reports_the_alarm_at_each_candidate():
    scored = _row("meningioma", [[3.0, [0]]], [[1.2, [0]]], missed=[6.7])
    rows = [{"case_id": "a", "class": "meningioma", "unshown": {k: scored[k] for k in ("missed_lesions_ml", "parts")}}]
    card = {"unshown": {"config": {"probability": 0.5, "alarm_ml": 1.0}}}
    entry = unshown_eval.summary(rows, card)
    assert entry["card"]["alarm_ml"] == 1.0 and len(entry["candidates"]) == 10
    lines = unshown_eval.markdown_lines({"m": {"unshown_alarm": entry}})
    assert "| m | 0.5 | 1* | 0 | 1 | 0 | 1 of 1 |" in lines
    assert unshown_eval.markdown_lines({"m": {}}) == []
