"""Data engine, measured on generated cases: contrast relations, BraTS label nesting, tumour classes,
the tumour-free twin. Cases are on the small 2 mm test grid where the property does not depend on it.

Run: .venv/bin/python -m pytest Testing/Python/test_phantoms_case.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from DareFuseSlicerLib.constants import CONTRASTS
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.phantoms import GRIDS, make_case
from DareFuseSlicerLib.phantoms.anatomy import load_anatomy

GRID = "test_2mm"
# Seeds whose draws give the wanted subtype (asserted below, so a changed engine fails loudly).
SEEDS = {"no_tumour": 5, "high_grade": 2, "low_grade": 1, "meningioma": 3, "metastasis": 4}


@pytest.fixture(scope="module")
def cases():
    made = {
        "no_tumour": make_case(SEEDS["no_tumour"], "no_tumour", GRID),
        "high_grade": make_case(SEEDS["high_grade"], "glioma", GRID),
        "low_grade": make_case(SEEDS["low_grade"], "glioma", GRID),
        "meningioma": make_case(SEEDS["meningioma"], "meningioma", GRID),
        "metastasis": make_case(SEEDS["metastasis"], "metastasis", GRID),
    }
    for name, case in made.items():
        assert case.meta["subtype"] == name, (name, case.meta["subtype"])
    return made


def arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


def tissue_on_grid(case, name: str) -> np.ndarray:
    """A template tissue fraction map warped exactly like the case (its own mapping)."""
    anatomy = load_anatomy()
    img = sitk.GetImageFromArray(getattr(anatomy, name))
    img.CopyInformation(anatomy.reference)
    return case.warp.paste(sitk.GetArrayFromImage(case.warp.apply(img)))


def medians(case, masks: dict, images=None) -> dict:
    images = images or case.images
    return {c: {k: float(np.median(arr(images[c])[m])) for k, m in masks.items()} for c in CONTRASTS}


def healthy_masks(case) -> dict:
    brain = arr(case.brain_mask) > 0
    label = arr(case.label)
    inner = ndi.binary_erosion(brain, iterations=1) & (label == 0)
    masks = {k: inner & (tissue_on_grid(case, k) > 0.9) for k in ("csf", "gm", "wm")}
    for k, m in masks.items():
        assert m.sum() > 200, f"too few pure {k} voxels to measure"
    return masks


def test_case_contract(cases):
    case = cases["high_grade"]
    g = GRIDS[GRID]
    assert case.case_id == "DareFuse-000002"
    assert set(case.images) == set(CONTRASTS) == set(case.tumour_free)
    for c in CONTRASTS:
        for img in (case.images[c], case.tumour_free[c]):
            assert img.GetPixelID() == sitk.sitkFloat32
            assert img.GetSize() == g.size and img.GetSpacing() == g.spacing
    assert case.label.GetPixelID() == sitk.sitkUInt8
    assert case.meta["size"] == g.size and case.meta["grid"] == GRID and case.meta["seed"] == 2
    # Scanner units: whole numbers, not normalised, zero outside the head (skull-stripped).
    t1 = arr(case.images["t1"])
    assert np.all(t1 == np.round(t1)) and t1.max() > 100
    head = (arr(case.brain_mask) > 0) | (arr(case.label) > 0)
    assert np.all(t1[~head] == 0)


def test_meta_volumes_match_label(cases):
    for case in cases.values():
        label = arr(case.label)
        voxel_ml = np.prod(case.label.GetSpacing()) / 1000.0
        vol = case.meta["volumes_ml"]
        for value, name in ((1, "NETC"), (2, "SNFH"), (3, "ET")):
            assert vol[name] == pytest.approx((label == value).sum() * voxel_ml, abs=1e-3)
        assert vol["WT"] == pytest.approx(vol["NETC"] + vol["SNFH"] + vol["ET"], abs=1e-3)
        assert vol["TC"] == pytest.approx(vol["NETC"] + vol["ET"], abs=1e-3)


def test_healthy_contrast_relations(cases):
    case = cases["no_tumour"]
    m = medians(case, healthy_masks(case))
    assert m["t1"]["csf"] < m["t1"]["gm"] < m["t1"]["wm"]
    assert m["t2"]["csf"] > m["t2"]["gm"] > m["t2"]["wm"]
    # FLAIR: CSF suppressed (darker than both tissues by far), GM a little above WM.
    assert m["flair"]["csf"] < 0.5 * m["flair"]["wm"]
    assert 1.05 < m["flair"]["gm"] / m["flair"]["wm"] < 1.6
    # T1ce is T1-weighted too.
    assert m["t1ce"]["csf"] < m["t1ce"]["gm"] < m["t1ce"]["wm"]


def test_t1ce_enhances_vessels_dura_choroid(cases):
    case = cases["no_tumour"]
    enh = tissue_on_grid(case, "enhancement")
    masks = healthy_masks(case)
    masks["enhancing"] = (enh > 0.5) & (arr(case.brain_mask) > 0)
    assert masks["enhancing"].sum() > 50
    m = medians(case, masks)
    # Relative to white matter, enhancing structures are much brighter on T1ce than on T1.
    ratio_t1ce = m["t1ce"]["enhancing"] / m["t1ce"]["wm"]
    ratio_t1 = m["t1"]["enhancing"] / m["t1"]["wm"]
    assert ratio_t1ce > 1.25 * ratio_t1
    # Elsewhere T1ce follows T1: GM/WM ratios agree within 5 %.
    assert m["t1ce"]["gm"] / m["t1ce"]["wm"] == pytest.approx(m["t1"]["gm"] / m["t1"]["wm"], rel=0.05)


def _flatten_bias(image: np.ndarray, brain: np.ndarray, sigma_vox: float = 8.0) -> np.ndarray:
    """Divide by the local brain mean (normalised convolution): removes the smooth bias field."""
    num = ndi.gaussian_filter(image * brain, sigma_vox)
    den = ndi.gaussian_filter(brain.astype(float), sigma_vox)
    return image / np.maximum(num / np.maximum(den, 1e-6), 1e-6)


def test_t1_keeps_template_texture(cases):
    """What tissue fractions cannot explain in T1 is the template's own fine structure (measured as the
    correlation of the regression residual with the template's texture map, after bias removal)."""
    case = cases["no_tumour"]
    head = arr(case.brain_mask) > 0
    brain = ndi.binary_erosion(head, iterations=2)
    design = np.stack([tissue_on_grid(case, k)[brain] for k in ("gm", "wm", "csf")] + [np.ones(brain.sum())], 1)
    t1 = _flatten_bias(arr(case.images["t1"]), head)[brain]
    residual = t1 - design @ np.linalg.lstsq(design, t1, rcond=None)[0]
    r = np.corrcoef(residual, tissue_on_grid(case, "texture")[brain])[0, 1]
    assert r > 0.12   # 0.27 measured (seed 5); unrelated noise would give |r| < 0.01


def lesion_medians(case):
    label = arr(case.label)
    masks = healthy_masks(case)
    for value, name in ((1, "NETC"), (2, "SNFH"), (3, "ET")):
        if (label == value).sum() > 5:
            masks[name] = label == value
    return medians(case, masks)


def test_lesion_contrast_relations_high_grade(cases):
    m = lesion_medians(cases["high_grade"])
    # Oedema: bright on T2 and FLAIR, a little dark on T1, not enhancing.
    assert m["flair"]["SNFH"] > m["flair"]["gm"] > m["flair"]["wm"]
    assert m["t2"]["SNFH"] > m["t2"]["gm"]
    assert m["t1"]["SNFH"] < m["t1"]["wm"]
    assert (m["t1ce"]["SNFH"] / m["t1ce"]["wm"]) == pytest.approx(m["t1"]["SNFH"] / m["t1"]["wm"], rel=0.1)
    # Enhancing tumour: very bright on T1ce, not on T1.
    # (the rim is 2-4.5 mm thick: at 2 mm its median carries partial volume, so also its 90th percentile)
    et = arr(cases["high_grade"].images["t1ce"])[arr(cases["high_grade"].label) == 3]
    assert m["t1ce"]["ET"] > 1.15 * m["t1ce"]["wm"] and np.percentile(et, 90) > 1.4 * m["t1ce"]["wm"]
    assert m["t1"]["ET"] < m["t1"]["wm"]
    # Necrosis: dark on T1 and T1ce, near-CSF bright on T2.
    assert m["t1"]["NETC"] < m["t1"]["gm"]
    assert m["t1ce"]["NETC"] < m["t1ce"]["gm"]
    assert m["t2"]["NETC"] > m["t2"]["gm"] and m["t2"]["NETC"] > 0.7 * m["t2"]["csf"]


def test_lesion_contrast_relations_other_classes(cases):
    mets = lesion_medians(cases["metastasis"])
    et = arr(cases["metastasis"].images["t1ce"])[arr(cases["metastasis"].label) == 3]  # small: partial volume
    assert mets["t1ce"]["ET"] > 1.15 * mets["t1ce"]["wm"] and np.percentile(et, 90) > 1.3 * mets["t1ce"]["wm"]
    assert mets["flair"]["SNFH"] > mets["flair"]["gm"]
    men = lesion_medians(cases["meningioma"])
    # Homogeneously enhancing: its interior (one voxel in from the edge, which fades into the zero
    # background outside the brain) is bright throughout.
    # T1ce / T1 per voxel cancels the (shared) bias field, which is strong at the periphery where
    # meningiomas sit; relative to white matter the ratio more than doubles.
    case = cases["meningioma"]
    inner = ndi.binary_erosion(arr(case.label) == 3)
    assert inner.sum() > 50
    t1ce, t1 = arr(case.images["t1ce"]), np.maximum(arr(case.images["t1"]), 1.0)
    wm = healthy_masks(case)["wm"]
    enhancement = np.median((t1ce / t1)[inner]) / np.median((t1ce / t1)[wm])
    assert enhancement > 1.8
    assert np.percentile(t1ce[inner], 10) > men["t1ce"]["wm"]
    low = lesion_medians(cases["low_grade"])
    assert low["flair"]["NETC"] > low["flair"]["gm"] and low["t2"]["NETC"] > low["t2"]["gm"]
    assert low["t1ce"]["NETC"] < low["t1ce"]["wm"]      # non-enhancing core


def shell(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_dilation(mask, structure=ndi.generate_binary_structure(3, 1)) & ~mask


def test_labels_nest_as_brats(cases):
    for name, case in cases.items():
        label = arr(case.label)
        assert set(np.unique(label)) <= {0, 1, 2, 3}
    label = arr(cases["high_grade"].label)
    core = np.isin(label, (1, 3))
    assert (label == 1).sum() > 0 and (label == 3).sum() > 0
    # The tumour core is surrounded by SNFH; necrosis sits inside the enhancing rim.
    around_core = label[shell(core)]
    assert np.mean(around_core == 2) > 0.9
    around_netc = label[shell(label == 1)]
    assert np.mean(np.isin(around_netc, (1, 3))) > 0.9
    assert np.mean(around_netc == 0) < 0.02


def test_low_grade_glioma_has_no_et(cases):
    label = arr(cases["low_grade"].label)
    assert (label == 3).sum() == 0 and (label == 1).sum() > 0 and (label == 2).sum() > 0


def test_glioma_is_intra_axial_and_meningioma_extra_axial(cases):
    for name in ("high_grade", "low_grade"):
        case = cases[name]
        core = np.isin(arr(case.label), (1, 3))
        assert np.mean(arr(case.brain_mask)[core] > 0) > 0.99, name
    case = cases["meningioma"]
    core = np.isin(arr(case.label), (1, 3))
    brain = arr(case.brain_mask) > 0
    outside = np.mean(~brain[core])
    assert 0.2 < outside < 0.9          # partly outside the brain, pressing on it
    # Broad base: many core voxels touch the brain surface.
    assert (core & shell(brain)).sum() > 20


def test_metastasis_lesions(cases):
    for seed in (SEEDS["metastasis"], 6):
        case = cases["metastasis"] if seed == SEEDS["metastasis"] else make_case(seed, "metastasis", GRID)
        count = case.meta["lesion_count"]
        assert 1 <= count <= 4
        core = np.isin(arr(case.label), (1, 3))
        _, n = ndi.label(core, structure=np.ones((3, 3, 3)))
        assert n == count
        # Disproportionate oedema: more SNFH than tumour core.
        assert case.meta["volumes_ml"]["SNFH"] > 2 * case.meta["volumes_ml"]["TC"]


def test_no_tumour_case(cases):
    case = cases["no_tumour"]
    assert arr(case.label).max() == 0 and case.meta["lesion_count"] == 0
    for c in CONTRASTS:
        assert np.array_equal(arr(case.images[c]), arr(case.tumour_free[c]))


@pytest.mark.parametrize("name", ["high_grade", "low_grade", "meningioma", "metastasis"])
def test_tumour_free_equals_case_outside_the_lesion_zone(cases, name):
    """The lesion zone (every voxel the lesion's partial volume can reach) is the lesion: it holds the
    whole label and lies at it; outside it the case and its tumour-free twin are identical."""
    case = cases[name]
    label = arr(case.label)
    zone = arr(case.lesion_zone) > 0
    wt = label > 0
    assert zone[wt].all()
    dist = ndi.distance_transform_edt(~wt, sampling=case.label.GetSpacing()[::-1])
    # 2 mm voxels: blurred edges and thin oedema fingers below half a voxel widen the zone (90th
    # percentile of its distance to the label measured 6.3 mm for the metastasis cases).
    assert np.percentile(dist[zone], 90) <= 8.0
    for c in CONTRASTS:
        a, b = arr(case.images[c]), arr(case.tumour_free[c])
        assert np.array_equal(a[~zone], b[~zone]), c
        assert np.mean(a[wt] != b[wt]) > 0.9, c    # the lesion is removed


@pytest.mark.slow
def test_tumour_free_equals_case_outside_lesion_zone_brats_grid():
    """BraTS grid (1 mm): identical outside the lesion zone, and that zone hugs the label (measured on
    seed 4: 99 % of it within 5.1 mm, all within 9.1 mm; beyond 5 mm at most 6 voxels differ, by <= 3
    units). The mass effect is shared by both images, so it adds nothing to the zone."""
    case = make_case(4, "metastasis", "brats")
    label = arr(case.label)
    zone = arr(case.lesion_zone) > 0
    dist = ndi.distance_transform_edt(label == 0)
    assert np.percentile(dist[zone], 99) <= 6.0 and dist[zone].max() <= 12.0
    for c in CONTRASTS:
        a, b = arr(case.images[c]), arr(case.tumour_free[c])
        assert np.array_equal(a[~zone], b[~zone]), c
        far = (a != b) & (dist > 5.0)
        assert far.sum() <= 20 and (np.abs(a - b)[far].max() if far.any() else 0) <= 5, c
        assert np.mean(a[label > 0] != b[label > 0]) > 0.9


def test_mass_effect_pushes_tissue_away_from_the_lesion():
    """Same pose and deformation with and without the lesion: only the lesion's surroundings move, and
    they are sampled from closer to its centre (tissue pushed outwards), fading with distance."""
    from DareFuseSlicerLib.phantoms.acquisition import Warp, draw_pose
    from DareFuseSlicerLib.phantoms.tumours import plan_tumours

    anatomy = load_anatomy()
    lesion = plan_tumours(np.random.default_rng(0), anatomy, "glioma").lesions[0]
    assert lesion.mass_k > 0
    ref = GRIDS[GRID].reference()
    pose = draw_pose(np.random.default_rng(1))
    plain = Warp(np.random.default_rng(2), anatomy, ref, pose, []).template_points
    pushed = Warp(np.random.default_rng(2), anatomy, ref, pose, [lesion]).template_points
    shift = pushed - plain
    moved = np.linalg.norm(shift, axis=-1)
    centre = anatomy.index_to_physical(np.asarray(lesion.centre)[None])[0]
    to_centre = centre - plain
    dist = np.linalg.norm(to_centre, axis=-1)
    assert moved.max() > 2.0
    big = moved > 0.5
    assert np.all((shift[big] * to_centre[big]).sum(-1) > 0)      # towards the centre = pushed outwards
    assert moved[dist > 5 * lesion.mass_sigma].max() < 0.05


def test_same_seed_same_voxels_other_seed_other_anatomy(cases):
    a = cases["no_tumour"]
    b = make_case(SEEDS["no_tumour"], "no_tumour", GRID)
    for c in CONTRASTS:
        assert np.array_equal(arr(a.images[c]), arr(b.images[c]))
    # Another seed: another deformation, scale and pose, so another brain outline.
    other = cases["high_grade"].brain_mask
    overlap = (arr(a.brain_mask) > 0) & (arr(other) > 0)
    union = (arr(a.brain_mask) > 0) | (arr(other) > 0)
    assert overlap.sum() / union.sum() < 0.97


def test_bad_arguments():
    with pytest.raises(InputError, match="tumour_class"):
        make_case(1, "astrocytoma", GRID)
    with pytest.raises(InputError, match="grid"):
        make_case(1, "glioma", "nope")
    with pytest.raises(InputError, match="seed"):
        make_case(-1, "glioma", GRID)
