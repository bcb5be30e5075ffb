"""Review efficiency and the choice of review settings, on constructed cases with known answers."""
from dataclasses import replace

import numpy as np
import pytest

from DareFuseSlicerLib.pipeline.postprocess import PostprocessConfig
from DareFuseSlicerLib.pipeline.review import ReviewConfig
from DareFuseSlicerLib.training import review_efficiency as efficiency

SHAPE = (40, 40, 40)
SPACING = (1.0, 1.0, 1.0)
PLAIN = ReviewConfig(threshold=0.2, near_mm=3.0, min_ml=0.0, island_max_ml=0.0, gap_mm=0.0, max_extent_mm=None,
                     calibration_margin=(0.0, 1.0), calibration_error=((0.5, 0.0),) * 4)


def ball(radius, centre=(20, 20, 20)):
    z, y, x = np.indices(SHAPE)
    return np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius


def undersegmented():
    """The model stops one voxel short of a ball (the truth) and is in doubt exactly there."""
    truth = ball(10).astype(np.uint8) * 2
    label = ball(9).astype(np.uint8) * 2
    margin = np.where(label != truth, 0.1, 1.0).astype(np.float32)
    return label, truth, np.zeros(SHAPE, np.float32), margin


def test_regions_on_the_errors_find_all_of_them_and_nothing_else():
    label, truth, uncertainty, margin = undersegmented()
    case = efficiency.efficiency_case(label, truth, uncertainty, margin, SPACING, PLAIN, seed=0)
    result = efficiency.case_efficiency(case, PLAIN, ks=(1, 5))
    errors = int((label != truth).sum())
    assert result["errors"] == errors and result["regions"] == 1
    assert result["review"][1] == (errors, errors) and result["review"][5] == (errors, errors)
    assert result["size"][1] == (errors, errors)  # one place: the size ranking finds the same
    found, reviewed = result["random"][1]
    assert abs(reviewed - errors) <= 0.1 * errors  # a ball of the region's volume
    assert found < 0.5 * reviewed  # centred on the boundary: about half inside the tumour, where nothing is wrong
    row = efficiency.case_row(result, k=1)
    assert row["review"]["share_of_errors"] == 1.0 and row["review"]["density"] == 1.0
    assert row["review"]["coverage"] == pytest.approx(errors / (label > 0).sum())


def test_the_ranking_key_decides_which_places_come_first():
    truth = np.zeros(SHAPE, np.uint8)
    label = np.zeros(SHAPE, np.uint8)
    label[5:15, 5:15, 5:15] = 2
    label[25:35, 25:35, 25:35] = 2
    truth[:] = label
    margin = np.ones(SHAPE, np.float32)
    margin[15:16, 5:15, 5:15] = 0.0  # a small doubtful place (error probability 0.5), all of it wrong
    truth[15:16, 5:15, 5:15] = 2
    margin[22:25, 25:35, 25:35] = 0.5  # a large one (0.25), right everywhere
    by_density = replace(PLAIN, rank_by="error_density")
    case = efficiency.efficiency_case(label, truth, np.zeros(SHAPE, np.float32), margin, SPACING, by_density)
    result = efficiency.case_efficiency(case, by_density, ks=(1,))
    assert result["regions"] == 2
    assert result["review"][1] == (100, 100)  # the dense place first
    assert result["size"][1] == (0, 300)  # the large one first: nothing found
    summary = efficiency.summarise([result], ks=(1,))
    assert summary["all_cases"]["top1"]["density_ratio_vs_size"] is None  # the size baseline found nothing
    by_mass = efficiency.case_efficiency(case, PLAIN, ks=(1,))
    assert by_mass["review"][1] == by_mass["size"][1]  # expected errors 0.25 x 300 > 0.5 x 100


def test_random_balls_are_seeded_have_the_asked_volume_and_sit_on_the_boundary():
    label, truth, uncertainty, margin = undersegmented()
    first = efficiency.efficiency_case(label, truth, uncertainty, margin, SPACING, PLAIN, seed=3)
    again = efficiency.efficiency_case(label, truth, uncertainty, margin, SPACING, PLAIN, seed=3)
    other = efficiency.efficiency_case(label, truth, uncertainty, margin, SPACING, PLAIN, seed=4)
    balls = efficiency.random_boundary_balls(first, [500.0, 100.0])
    assert [b.tolist() for b in balls] == [b.tolist() for b in efficiency.random_boundary_balls(again, [500.0, 100.0])]
    assert balls[0].tolist() != efficiency.random_boundary_balls(other, [500.0])[0].tolist()
    assert abs(balls[0].size - 500) < 60 and abs(balls[1].size - 100) < 30
    centre = np.unravel_index(first.centres[0], SHAPE)
    assert label[centre] > 0 and not ball(8)[centre]  # a tumour voxel next to the background


def test_means_over_tumour_cases_leave_out_tumour_free_ones():
    label, truth, uncertainty, margin = undersegmented()
    tumour = efficiency.case_efficiency(efficiency.efficiency_case(label, truth, uncertainty, margin, SPACING, PLAIN),
                                        PLAIN, ks=(5,))
    false_positive = np.zeros(SHAPE, np.uint8)
    false_positive[2:4, 2:4, 2:4] = 2  # 8 voxels on a tumour-free case, in doubt
    free = efficiency.case_efficiency(efficiency.efficiency_case(
        false_positive, np.zeros(SHAPE, np.uint8), uncertainty, np.where(false_positive > 0, 0.1, 1.0), SPACING,
        PLAIN), PLAIN, ks=(5,))
    summary = efficiency.summarise([tumour, free], ks=(5,))
    assert summary["cases"] == 2 and summary["tumour_cases"] == 1
    assert summary["tumour_cases_only"]["top5"]["review"]["share_of_errors"] == 1.0
    # The false positive is found, and its region covers its whole (tiny) predicted tumour: coverage 1.
    assert summary["all_cases"]["top5"]["review"]["coverage"] == pytest.approx(
        np.mean([tumour["review"][5][1] / tumour["tumour_voxels"], 1.0]))
    assert summary["tumour_cases_only"]["goals_met"]["share_of_errors"] is True


def test_calibration_is_per_label_and_never_rises_with_the_margin():
    label, truth, uncertainty, _ = undersegmented()
    rng = np.random.default_rng(0)
    margin = rng.uniform(0, 1, SHAPE).astype(np.float32)
    margin[label != truth] = 0.02  # every wrong voxel is background in doubt
    points, curves = efficiency.fit_calibration([(label, truth, margin, SPACING)], near_mm=3.0)
    assert len(curves) == 4 and all(len(curve) == len(points) for curve in curves)
    background, snfh = np.array(curves[0]), np.array(curves[2])
    assert background[1] > 0.5 and snfh[1] < 0.1  # the wrong background voxels all sit in the first bin
    assert np.all(np.diff(background) <= 1e-12) and np.all(np.diff(snfh) <= 1e-12)
    assert efficiency._decreasing(np.array([0.5, 0.2, 0.4, 0.1]), np.ones(4)).tolist() == pytest.approx(
        [0.5, 0.3, 0.3, 0.1])


def test_tuning_meets_the_goals_where_a_setting_can():
    label, truth, uncertainty, margin = undersegmented()
    margin = np.where(label != truth, 0.05, np.where(label > 0, 0.6, 1.0)).astype(np.float32)  # doubt everywhere
    cases = [{"label": label, "truth": truth, "uncertainty": uncertainty, "margin": margin, "spacing_zyx": SPACING}]
    grid = {"threshold": (0.05, 0.3), "max_extent_mm": (None,), "rank_by": ("expected_error",)}
    config, summary, rows = efficiency.tune_review(cases, replace(PLAIN, near_mm=2.0), grid)
    assert [row["threshold"] for row in rows] == [0.05, 0.3]
    # 0.05 takes the doubtful tumour too (coverage far above 0.25); 0.3 only the missed shell.
    assert config.threshold == 0.3
    top = summary["tumour_cases_only"]["top5"]["review"]
    assert top["share_of_errors"] == 1.0 and top["density"] == 1.0
    assert config.calibration_error[0][1] > 0.9  # fitted on the cases: doubtful background was always wrong


def test_tuning_crops_keep_every_error_and_post_processing_applies():
    label, truth, uncertainty, margin = undersegmented()
    label[1, 1, 1] = 3  # one stray voxel: post-processing with a 2-voxel minimum removes it
    crop = efficiency.tuning_crop(label, truth, uncertainty, margin, SPACING, no_tumour=0.1)
    assert int((crop["label"] != crop["truth"]).sum()) == int((label != truth).sum())
    processed = efficiency.post_processed(crop, PostprocessConfig(wt_min_ml=0.002, tc_min_ml=0.0, et_min_ml=0.0,
                                                                  et_to_netc_ml=0.0))
    assert int((processed["label"] == 3).sum()) == 0 and int((processed["label"] == 2).sum()) == int(
        (label == 2).sum())
