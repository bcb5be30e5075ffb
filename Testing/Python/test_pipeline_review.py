"""Review regions on constructed cases: what counts as a place, the ranking, the geometry, the empty cases."""
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from DareFuseSlicerLib.pipeline import review
from DareFuseSlicerLib.pipeline.review import ReviewConfig, find_regions, split_places, top_two_margin

SHAPE = (30, 40, 36)  # z, y, x
SPACING = (0.9, 1.1, 1.3)  # x, y, z as SimpleITK gives it
#: A plain threshold on the error probability: no calibration subtleties in these tests.
CONFIG = ReviewConfig(threshold=0.2, near_mm=4.0, min_ml=0.0, island_max_ml=0.05, gap_mm=2.5, max_extent_mm=None,
                      calibration_margin=(0.0, 1.0), calibration_error=((0.5, 0.0),) * 4)


def reference() -> sitk.Image:
    image = sitk.Image(SHAPE[2], SHAPE[1], SHAPE[0], sitk.sitkUInt8)
    image.SetSpacing(SPACING)
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection(sitk.VersorTransform((0.1, 0.3, 1.0), 0.4).GetMatrix())  # oblique
    return image


def sphere_case():
    """SNFH ball with an ET core; the margin is 1 (certain) everywhere except a doubtful patch on its edge."""
    z, y, x = np.indices(SHAPE)
    radius = np.sqrt((z - 15) ** 2 + (y - 20) ** 2 + (x - 18) ** 2)
    label = np.zeros(SHAPE, np.uint8)
    label[radius <= 9] = 2
    label[radius <= 4] = 3
    margin = np.ones(SHAPE, np.float32)
    patch = (slice(13, 18), slice(27, 31), slice(16, 21))  # straddles the ball's edge at y = 29
    margin[patch] = 0.1  # error probability 0.45
    uncertainty = np.where(radius <= 12, 0.3, 0.05).astype(np.float32)
    uncertainty[patch] = 0.7
    return label, uncertainty, margin, patch


def test_top_two_margin_is_the_gap_between_the_two_largest():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=(5, 6, 7)).transpose(3, 0, 1, 2).astype(np.float32)
    ordered = np.sort(p, axis=0)
    np.testing.assert_allclose(top_two_margin(list(p)), ordered[-1] - ordered[-2], atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(arrays(np.float32, (3, 4, 4, 4), elements=st.floats(0, 1, width=32)))
def test_top_two_margin_on_any_values(p):
    ordered = np.sort(p, axis=0)
    assert np.allclose(top_two_margin(list(p)), ordered[-1] - ordered[-2])


def test_error_probability_follows_each_labels_curve_and_never_rises_with_the_margin():
    config = ReviewConfig()
    margins = np.linspace(0, 1, 101)
    for value, curve in enumerate(config.calibration_error):
        values = review.error_probability(margins, np.full(margins.shape, value), config)
        assert values[0] == pytest.approx(curve[0]) and values[-1] == pytest.approx(curve[-1])
        assert np.all(np.diff(values) <= 1e-7)
    # Background and tumour voxels with the same margin get their own label's probability.
    mixed = review.error_probability(np.array([0.1, 0.1]), np.array([0, 2]), config)
    assert mixed.tolist() == pytest.approx([config.calibration_error[0][1], config.calibration_error[2][1]])
    assert review.error_probability(np.array([0.5]), np.array([3]), CONFIG)[0] == pytest.approx(0.25)


def test_a_doubtful_patch_is_one_region_with_its_centre_in_ras():
    label, uncertainty, margin, patch = sphere_case()
    result = find_regions(label, uncertainty, margin, reference(), CONFIG)
    assert len(result.regions) == 1, result.message
    region = result.regions[0]
    voxel_ml = np.prod(SPACING) / 1000.0
    assert region.rank == 1 and region.kinds == ["doubtful"]
    assert region.volume_ml == pytest.approx(100 * voxel_ml)  # 5 x 4 x 5 voxels, all within near_mm
    assert region.expected_error_ml == pytest.approx(100 * 0.45 * voxel_ml, rel=1e-5)
    assert region.mean_uncertainty == pytest.approx(0.7) and region.peak_uncertainty == pytest.approx(0.7)
    assert region.segments == ["SNFH"]  # outside and inside the edge: SNFH, the core is far away
    # The centre is a voxel of the patch nearest its centre of mass, converted by the reference's own geometry.
    ras = np.array(region.centre_ras)
    lps = (-ras[0], -ras[1], ras[2])
    index = reference().TransformPhysicalPointToIndex(lps)[::-1]  # (z, y, x)
    assert all(s.start <= i < s.stop for i, s in zip(index, patch))
    assert np.linalg.norm(np.array(index) - [15, 28.5, 18]) <= 1.0
    assert (result.label_map == 1).sum() == 100 and set(np.unique(result.label_map)) == {0, 1}


def test_islands_and_gaps_are_places_even_when_the_network_is_sure():
    label = np.zeros(SHAPE, np.uint8)
    label[5:25, 5:20, 5:30] = 2
    label[5:25, 21:35, 5:30] = 2  # a one-voxel cleft at y = 20 splits the tumour: a gap
    label[2:4, 37:39, 2:4] = 3  # 8 voxels of ET on their own, far from the main ET: an island
    label[10:20, 10:15, 10:20] = 3
    certain = np.ones(SHAPE, np.float32)
    result = find_regions(label, np.zeros(SHAPE, np.float32), certain, reference(), CONFIG)
    kinds = {tuple(r.kinds): r for r in result.regions}
    assert set(kinds) == {("island",), ("gap",)}, result.message
    island, gap = kinds[("island",)], kinds[("gap",)]
    assert island.volume_ml == pytest.approx(8 * np.prod(SPACING) / 1000.0)
    assert island.segments == ["ET"] and island.expected_error_ml == 0.0
    assert gap.segments == ["SNFH"] and gap.volume_ml > island.volume_ml
    # The cleft, bar its rim (a closing cannot fill the very edge of a box), and nothing else.
    assert (result.label_map[6:24, 20, 6:29] == gap.rank).all()
    assert (np.argwhere(result.label_map == gap.rank)[:, 1] == 20).all()


def test_regions_are_ranked_by_the_configured_key_and_capped():
    label, uncertainty, margin, _ = sphere_case()
    margin[12:19, 9:12, 15:22] = 0.3  # opposite edge: 147 voxels at 0.35 against the patch's 100 at 0.45
    by_error = find_regions(label, uncertainty, margin, reference(), CONFIG)
    by_density = find_regions(label, uncertainty, margin, reference(), replace(CONFIG, rank_by="error_density"))
    assert len(by_error.regions) == 2
    big, small = by_error.regions
    assert big.expected_error_ml > small.expected_error_ml and big.volume_ml > small.volume_ml
    assert [r.centre_ras for r in by_density.regions] == [small.centre_ras, big.centre_ras]
    assert by_density.regions[0].mean_error_probability == pytest.approx(0.45)
    assert (by_error.label_map == 1).sum() == 147 and (by_error.label_map == 2).sum() == 100
    capped = find_regions(label, uncertainty, margin, reference(), replace(CONFIG, max_regions=1))
    assert len(capped.regions) == 1 and set(np.unique(capped.label_map)) == {0, 1}
    assert "top 1 of 2" in capped.message


def test_a_long_place_is_cut_into_parts_no_longer_than_the_limit():
    components = np.zeros((10, 10, 100), np.int32)
    components[4:6, 4:6, 5:95] = 1  # 90 voxels of 1 mm along x
    components[1, 1, 1] = 2
    out, count = split_places(components, (1.0, 1.0, 1.0), 30.0)
    assert count == 4  # 90 mm in three parts, and the small component kept whole
    assert ((out > 0) == (components > 0)).all()
    for extent in review.ndimage.find_objects(out):
        assert extent[2].stop - extent[2].start <= 30


def test_no_tumour_and_nothing_doubtful_give_an_empty_list_and_say_why():
    empty = find_regions(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32),
                         reference(), CONFIG)
    assert empty.regions == [] and not empty.label_map.any() and "no tumour" in empty.message
    label, uncertainty, _, _ = sphere_case()
    sure = find_regions(label, uncertainty, np.ones(SHAPE, np.float32), reference(), CONFIG)
    assert sure.regions == [] and not sure.label_map.any() and "no place" in sure.message
    assert sure.table() == []


def test_arrays_off_the_reference_grid_are_refused():
    label, uncertainty, margin, _ = sphere_case()
    with pytest.raises(ValueError, match="margin"):
        find_regions(label, uncertainty, margin[:-1], reference(), CONFIG)


def test_settings_come_from_the_card_and_unknown_ones_are_refused():
    assert review.config_for_card(None) == (ReviewConfig(), "defaults")
    config, source = review.config_for_card({"review": {"config": CONFIG.as_dict(), "tuned_on": "data/val"}})
    assert config == CONFIG and source == "tuned on data/val"
    with pytest.raises(ValueError, match="unknown review settings"):
        ReviewConfig.from_dict({"threshold": 0.2, "bogus": 1})
    with pytest.raises(ValueError, match="ranking"):
        ReviewConfig(rank_by="colour")
    with pytest.raises(ValueError, match="one curve per label"):
        ReviewConfig(calibration_margin=(0.0, 1.0), calibration_error=((0.5, 0.0),))
    again = ReviewConfig.from_dict(CONFIG.as_dict())  # what a card holds (JSON lists) reads back the same
    assert again == CONFIG
