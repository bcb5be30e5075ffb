"""BraTS-style post-processing on constructed label maps: thresholds in mL, nesting kept, ET -> NETC."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from DareFuseSlicerLib.constants import CLASSES
from DareFuseSlicerLib.pipeline.postprocess import (PostprocessConfig, class_in_doubt, config_for_card, gate_closes,
                                                    oedema_in_doubt, oedema_ratio, postprocess, removed_parts,
                                                    reported_class, shown_enhancement_ml, volumes_ml)

NO_ET_RULE = PostprocessConfig(et_to_netc_ml=0.0)


def cube(label, corner, size, value):
    z, y, x = corner
    label[z:z + size, y:y + size, x:x + size] = value


def test_small_whole_tumour_components_are_removed_by_volume_in_ml():
    label = np.zeros((40, 40, 40), np.uint8)
    cube(label, (2, 2, 2), 10, 2)  # 1000 voxels
    cube(label, (30, 30, 30), 5, 2)  # 125 voxels
    # 1 mm^3 voxels: 0.25 mL = 250 voxels, so the 125-voxel blob goes and the 1000-voxel one stays.
    out = postprocess(label, voxel_ml=0.001, config=NO_ET_RULE)
    assert (out[30:35, 30:35, 30:35] == 0).all() and (out[2:12, 2:12, 2:12] == 2).all()
    # 2 mm voxels (0.008 mL): the same blob is 1 mL and is kept.
    assert (postprocess(label, voxel_ml=0.008, config=NO_ET_RULE) == label).all()


def test_removed_parts_are_listed_with_their_volume_and_centre_largest_first():
    label = np.zeros((40, 40, 40), np.uint8)
    cube(label, (2, 2, 2), 10, 2)  # 1000 voxels: kept
    cube(label, (30, 30, 30), 5, 3)  # 125 voxels
    label[20, 5, 35] = 1  # 1 voxel
    out = postprocess(label, voxel_ml=0.001, config=NO_ET_RULE)
    parts = removed_parts(label, out, voxel_ml=0.001)
    assert [round(ml, 6) for ml, _ in parts] == [0.125, 0.001]
    assert parts[0][1] == (32, 32, 32) and parts[1][1] == (20, 5, 35)
    # Nothing removed (or a map that only lost labels inside the tumour): nothing listed.
    assert removed_parts(label, label, 0.001) == []
    assert removed_parts(label, np.where(label > 0, 2, 0), 0.001) == []


def test_small_core_becomes_oedema_and_small_enhancing_becomes_necrosis():
    label = np.zeros((40, 40, 40), np.uint8)
    cube(label, (0, 0, 0), 30, 2)  # large oedema (SNFH)
    cube(label, (2, 2, 2), 4, 1)  # 64-voxel NETC core: below TC 150 voxels -> SNFH
    cube(label, (15, 15, 15), 10, 1)  # large NETC core with ...
    cube(label, (16, 16, 16), 4, 3)  # ... a 64-voxel ET inside: below ET 100 voxels -> NETC
    cube(label, (2, 18, 2), 8, 3)  # 512-voxel ET on its own: kept
    out = postprocess(label, voxel_ml=0.001, config=NO_ET_RULE)
    assert (out[2:6, 2:6, 2:6] == 2).all()
    assert (out[16:20, 16:20, 16:20] == 1).all()
    assert (out[2:10, 18:26, 2:10] == 3).all()
    # The whole tumour is unchanged: only labels inside it moved.
    assert ((out > 0) == (label > 0)).all()


def test_tiny_total_enhancing_tumour_is_relabelled_necrosis():
    label = np.zeros((30, 30, 30), np.uint8)
    cube(label, (5, 5, 5), 12, 1)
    cube(label, (8, 8, 8), 6, 3)  # 216 voxels of ET = 0.216 mL at 1 mm
    config = PostprocessConfig(et_to_netc_ml=0.5)
    out = postprocess(label, 0.001, config)
    assert not (out == 3).any() and (out[8:14, 8:14, 8:14] == 1).all()
    # Above the threshold (0.216 mL > 0.2 mL) the ET stays.
    assert (postprocess(label, 0.001, PostprocessConfig(et_to_netc_ml=0.2)) == 3).sum() == 216


def test_voxels_touching_at_a_corner_are_one_component():
    label = np.zeros((20, 20, 20), np.uint8)
    cube(label, (2, 2, 2), 4, 2)
    cube(label, (6, 6, 6), 4, 2)  # touches the first at one corner: 128 voxels together
    config = PostprocessConfig(wt_min_ml=0.1, et_to_netc_ml=0.0)  # 100 voxels
    assert (postprocess(label, 0.001, config) > 0).sum() == 128
    face_only = PostprocessConfig(wt_min_ml=0.1, et_to_netc_ml=0.0, fully_connected=False)
    assert (postprocess(label, 0.001, face_only) > 0).sum() == 0


def test_volumes_in_ml_follow_the_brats_regions():
    label = np.zeros((10, 10, 10), np.uint8)
    label[0, :, :] = 1  # 100 voxels
    label[1:3, :, :] = 2  # 200
    label[3:6, :, :] = 3  # 300
    volumes = volumes_ml(label, 0.008)
    assert volumes == {"NETC": 0.8, "SNFH": 1.6, "ET": 2.4, "WT": 4.8, "TC": 3.2}


@settings(max_examples=15, deadline=None)
@given(arrays(np.uint8, (12, 12, 12), elements=st.integers(0, 3)),
       st.floats(0.0005, 0.01), st.booleans())
def test_regions_only_shrink_and_the_result_is_stable(label, voxel_ml, fully_connected):
    config = PostprocessConfig(fully_connected=fully_connected)
    out = postprocess(label, voxel_ml, config)
    for region in ((1, 2, 3), (1, 3), (3,)):
        before, after = np.isin(label, region), np.isin(out, region)
        assert not (after & ~before).any()  # nothing is added to a region
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    assert (postprocess(out, voxel_ml, config) == out).all()


def test_thresholds_come_from_the_model_card_when_it_has_them():
    assert config_for_card({"architecture": "darefuse"}) == (PostprocessConfig(), "literature defaults")
    tuned = {"postprocess": {"config": {"wt_min_ml": 2.0, "tc_min_ml": 0.0, "et_min_ml": 0.0, "et_to_netc_ml": 1.5,
                                        "fully_connected": True}, "tuned_on": "data/val"}}
    config, source = config_for_card(tuned)
    assert config == PostprocessConfig(wt_min_ml=2.0, tc_min_ml=0.0, et_min_ml=0.0, et_to_netc_ml=1.5)
    assert source == "tuned on data/val"
    try:
        PostprocessConfig.from_dict({"wt_min_ml": 1.0, "holes": 3})
    except ValueError as error:
        assert "holes" in str(error)
    else:
        raise AssertionError("an unknown setting must be refused")


def test_class_gate_clears_the_map_only_when_the_class_head_is_sure_enough():
    label = np.zeros((20, 20, 20), np.uint8)
    cube(label, (5, 5, 5), 8, 2)
    gated = PostprocessConfig(no_tumour_gate=0.8)
    assert not postprocess(label, 0.001, gated, no_tumour_probability=0.85).any()
    assert postprocess(label, 0.001, gated, no_tumour_probability=0.8).sum() == 0  # at the threshold: closed
    kept = postprocess(label, 0.001, gated, no_tumour_probability=0.79)
    assert (kept == postprocess(label, 0.001, PostprocessConfig())).all() and kept.any()
    # No class probability (a segmentation-only model) or no gate: the map is never cleared.
    assert (postprocess(label, 0.001, gated, no_tumour_probability=None) == kept).all()
    assert (postprocess(label, 0.001, PostprocessConfig(), no_tumour_probability=1.0) == kept).all()
    assert not gate_closes(PostprocessConfig(), 1.0) and gate_closes(gated, 0.9)
    # The gate is a card setting like the thresholds, and None (no gate) survives the card's JSON.
    card = {"postprocess": {"config": {**PostprocessConfig().as_dict(), "no_tumour_gate": None}, "tuned_on": "v"}}
    assert config_for_card(card)[0].no_tumour_gate is None


def test_class_rule_reports_no_tumour_only_for_an_empty_map_and_only_when_on():
    probabilities = [0.2, 0.1, 0.6, 0.1]  # the class head says meningioma
    meningioma, no_tumour = CLASSES.index("meningioma"), CLASSES.index("no_tumour")
    assert reported_class(PostprocessConfig(), probabilities, tumour_found=False) == meningioma  # off by default
    ruled = PostprocessConfig(empty_means_no_tumour=True)
    assert reported_class(ruled, probabilities, tumour_found=False) == no_tumour
    assert reported_class(ruled, probabilities, tumour_found=True) == meningioma
    card = {"postprocess": {"config": ruled.as_dict(), "tuned_on": "v"}}
    assert config_for_card(card)[0].empty_means_no_tumour is True


def test_enhancement_rule_reports_glioma_for_an_enhancing_class_without_enhancing_tumour():
    index = CLASSES.index
    meningioma, metastasis = [0.1, 0.2, 0.6, 0.1], [0.1, 0.2, 0.1, 0.6]
    assert reported_class(PostprocessConfig(), meningioma, True, et_ml=0.0) == index("meningioma")  # off by default
    ruled = PostprocessConfig(non_enhancing_glioma_ml=0.5)
    assert reported_class(ruled, meningioma, True, et_ml=0.0) == index("glioma")
    assert reported_class(ruled, metastasis, True, et_ml=0.5) == index("glioma")  # at the volume: acts
    assert reported_class(ruled, metastasis, True, et_ml=0.51) == index("metastasis")
    assert reported_class(ruled, meningioma, False, et_ml=0.0) == index("meningioma")  # nothing shown: no evidence
    assert reported_class(ruled, [0.1, 0.6, 0.2, 0.1], True, et_ml=0.0) == index("glioma")
    assert reported_class(ruled, [0.6, 0.1, 0.2, 0.1], True, et_ml=0.0) == index("no_tumour")  # not an enhancing class
    # Without T1ce no ET shown says nothing of enhancement: the rule does not act.
    assert reported_class(ruled, meningioma, True, et_ml=None) == index("meningioma")
    assert shown_enhancement_ml({"ET": 0.0, "WT": 9.0}, ("t1", "t2", "flair")) is None
    assert shown_enhancement_ml({"ET": 0.2, "WT": 9.0}, ("t1ce", "flair")) == 0.2
    both = PostprocessConfig(non_enhancing_glioma_ml=0.0, empty_means_no_tumour=True)
    assert reported_class(both, meningioma, False) == index("no_tumour")  # the empty map's rule comes first
    card = {"postprocess": {"config": ruled.as_dict(), "tuned_on": "v"}}
    assert config_for_card(card)[0].non_enhancing_glioma_ml == 0.5
    assert config_for_card({"postprocess": {"config": {}, "tuned_on": "v"}})[0].non_enhancing_glioma_ml is None


def test_class_doubt_flags_a_class_head_below_its_threshold_and_is_off_by_default():
    unsure, sure = [0.05, 0.6, 0.05, 0.3], [0.02, 0.95, 0.01, 0.02]
    assert not class_in_doubt(PostprocessConfig(), unsure)  # off by default: no card, no doubt
    doubt = PostprocessConfig(class_doubt_below=0.9)
    assert class_in_doubt(doubt, unsure) and not class_in_doubt(doubt, sure)
    assert not class_in_doubt(doubt, [0.0, 0.9, 0.05, 0.05])  # at the threshold: not below it
    card = {"postprocess": {"config": doubt.as_dict(), "tuned_on": "v"}}
    assert config_for_card(card)[0].class_doubt_below == 0.9
    assert config_for_card({"postprocess": {"config": {}, "tuned_on": "v"}})[0].class_doubt_below is None


def test_oedema_doubt_questions_a_glioma_call_with_oedema_out_of_proportion_to_its_core():
    """Oedema (SNFH) over tumour core (TC) above the card's setting makes a glioma call doubtful; other classes,
    an ordinary ratio, a map without oedema and a card without the setting are left alone."""
    swollen = {"SNFH": 120.0, "TC": 8.0, "NETC": 3.0, "ET": 5.0, "WT": 128.0}  # 15 times
    ordinary = {"SNFH": 40.0, "TC": 10.0, "NETC": 4.0, "ET": 6.0, "WT": 50.0}  # 4 times
    assert oedema_ratio(swollen) == 15.0 and oedema_ratio(ordinary) == 4.0
    assert oedema_ratio({"SNFH": 2.0, "TC": 0.0}) == float("inf") and oedema_ratio({"SNFH": 0.0, "TC": 3.0}) is None
    doubt = PostprocessConfig(oedema_doubt_above=10.0)
    assert oedema_in_doubt(doubt, "glioma", swollen)
    assert not oedema_in_doubt(doubt, "glioma", ordinary) and not oedema_in_doubt(doubt, "metastasis", swollen)
    assert oedema_in_doubt(doubt, "glioma", {"SNFH": 2.0, "TC": 0.0})  # oedema around no core at all
    assert not oedema_in_doubt(doubt, "glioma", {"SNFH": 0.0, "TC": 3.0})
    assert not oedema_in_doubt(PostprocessConfig(), "glioma", swollen)  # off by default
    assert not oedema_in_doubt(PostprocessConfig(oedema_doubt_above=15.0), "glioma", swollen)  # not above it
    card = {"postprocess": {"config": doubt.as_dict(), "tuned_on": "v"}}
    assert config_for_card(card)[0].oedema_doubt_above == 10.0
