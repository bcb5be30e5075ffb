"""Lesion-wise detection (training/lesions.py): known answers on small label maps."""
import numpy as np

from DareFuseSlicerLib.training import lesions


def _case():
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[2:12, 2:12, 2:12] = 2  # 1000 voxels: 10 mL at 0.01 mL a voxel, found
    truth[20:24, 2:6, 2:6] = 3  # 64 voxels: 0.64 mL, missed
    truth[20:25, 20:25, 20:25] = 1  # 125 voxels: 1.25 mL, found by one voxel
    truth[15, 15, 15] = 2  # 0.01 mL: under the minimum, not counted
    shown = np.zeros_like(truth)
    shown[3:11, 3:11, 3:11] = 2
    shown[22, 22, 22] = 1
    shown[2:4, 20:24, 2:4] = 2  # 16 voxels with no truth: a false lesion of 0.16 mL
    return truth, shown


def test_truth_lesions_are_found_by_one_shown_voxel_and_false_lesions_have_no_truth():
    truth, shown = _case()
    row = lesions.lesion_row(shown, truth, 0.01)
    assert row == {"truth_ml": [10.0, 0.64, 1.25], "found": [True, False, True], "false_ml": [0.16]}
    labels, found = lesions.truth_lesions(truth, shown, 0.01)
    assert [(round(ml, 2), hit) for _, ml, hit in found] == [(10.0, True), (0.64, False), (1.25, True)]
    assert np.count_nonzero(labels == found[1][0]) == 64
    assert lesions.lesion_row(np.zeros_like(truth), np.zeros_like(truth), 0.01) == {
        "truth_ml": [], "found": [], "false_ml": []}


def test_summary_counts_per_size_band_and_false_lesions_by_kind_of_case():
    truth, shown = _case()
    rows = [{"class": "glioma", "lesions": lesions.lesion_row(shown, truth, 0.01)},
            {"class": "no_tumour", "lesions": {"truth_ml": [], "found": [], "false_ml": [0.3, 2.0]}},
            {"class": "metastasis", "lesions": {"truth_ml": [0.7, 3.0], "found": [True, True], "false_ml": []}}]
    s = lesions.summary(rows)
    assert [(b["band"], b["found"], b["lesions"]) for b in s["bands"]] == [
        ("0.5-1 mL", 1, 2), ("1-2 mL", 1, 1), ("2-5 mL", 1, 1), ("5 mL and more", 1, 1)]
    assert (s["found"], s["lesions"]) == (4, 5)
    assert (s["tumour_cases_missing_a_lesion"], s["tumour_cases"]) == (1, 2)
    assert (s["false_lesions_tumour_cases"], s["false_lesions_tumour_free"], s["tumour_free_cases"]) == (1, 2, 1)
    text = "\n".join(lesions.markdown_lines({"m": {"lesions": s}, "other": {}}))
    assert "| m | 4 of 5 | 1 of 2 | 1 of 1 | 1 of 1 | 1 of 1 | 1 of 2 | 1 | 2 (in 1) |" in text
    assert lesions.markdown_lines({"m": {}}) == []
