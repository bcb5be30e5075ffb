"""Clinical acquisitions of the data engine, measured on generated cases: each contrast on its own grid,
the recorded motion is the one applied, Rician noise in the air, tissue order per contrast, a head around
the brain, the brain mask, tumour-free twins, determinism, and BraTS-style cases left byte-identical.

Run: .venv/bin/python -m pytest Testing/Python/test_phantoms_clinical.py -q
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from DareFuseSlicerLib.constants import CONTRASTS
from DareFuseSlicerLib.phantoms import make_case, write_case
from DareFuseSlicerLib.phantoms.anatomy import load_anatomy
from DareFuseSlicerLib.phantoms.clinical import intracranial, tissue_maps
from DareFuseSlicerLib.phantoms.contrasts import draw_healthy
from DareFuseSlicerLib.phantoms.headspace import head_space
from DareFuseSlicerLib.phantoms.protocol import MAX_ROTATION_DEG, MAX_SHIFT_MM, PLANES, draw_protocol
from DareFuseSlicerLib.phantoms.tissues import LESION_CODE, RANGES, TISSUE_CODES, apply_gamma, draw_intensities
from DareFuseSlicerLib.phantoms.tumours import plan_tumours

GLIOMA_SEED = 5000  # a high-grade glioma whose T2 and FLAIR are 2-D stacks (asserted below)
MENINGIOMA_SEED = 5002


def arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


@pytest.fixture(scope="module")
def glioma():
    case = make_case(GLIOMA_SEED, "glioma", acquisition="clinical")
    assert case.meta["subtype"] == "high_grade"
    return (case,) + tissue_maps(GLIOMA_SEED, "glioma")


@pytest.fixture(scope="module")
def meningioma():
    return make_case(MENINGIOMA_SEED, "meningioma", acquisition="clinical")


@pytest.mark.slow
def test_each_contrast_on_its_own_grid(glioma):
    case, maps, spread = glioma
    sizes = set()
    for c in CONTRASTS:
        info, image = case.meta["contrasts"][c], case.images[c]
        assert image.GetSize() == info["size"] == case.tumour_free[c].GetSize() == maps[c].GetSize()
        assert image.GetSpacing() == pytest.approx(info["spacing"])
        sizes.add(image.GetSize())
        direction = np.array(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
        # The tilt is the angle between the slice normal and its plane's base normal.
        normal_angle = np.degrees(np.arccos(np.abs(direction[:, 2]) @ np.abs(PLANES[info["plane"]][:, 2])))
        assert normal_angle == pytest.approx(abs(info["tilt_deg"]), abs=1e-3)
        if c in ("t1", "t1ce"):
            assert info["dims"] == "3d" and all(0.9 <= s <= 1.2 for s in image.GetSpacing())
        else:
            assert info["dims"] == "2d" and 0.4 <= image.GetSpacing()[0] <= 1.0 and 3.0 <= image.GetSpacing()[2] <= 6.0
    assert len(sizes) == 4
    for truth in (case.label, case.brain_mask):  # ground truth on the reference (T1) grid
        assert truth.GetSize() == case.images["t1"].GetSize() and truth.GetOrigin() == case.images["t1"].GetOrigin()
    assert case.meta["reference"] == "t1" and case.meta["size"] == case.images["t1"].GetSize()


def test_protocols_and_motion_stay_in_their_ranges():
    planes, tilts = set(), []
    for seed in range(150):
        protocol = draw_protocol(np.random.default_rng(seed), np.zeros(3), 0.97)
        assert protocol["t1"].motion.angle_deg == 0 and protocol["t1"].motion.shift_mm == 0
        for c, acq in protocol.items():
            assert acq.motion.angle_deg <= MAX_ROTATION_DEG + 1e-9 and acq.motion.shift_mm <= MAX_SHIFT_MM + 1e-9
            to_ref = acq.motion.to_reference()
            np.testing.assert_allclose(to_ref[:, :3] @ to_ref[:, :3].T, np.eye(3), atol=1e-12)
            if acq.dims == "2d":
                planes.add(acq.plane)
                tilts.append(abs(acq.tilt_deg))
                assert 3.0 <= acq.slice_mm <= 6.0 and 0.4 <= acq.grid.spacing[0] <= 1.0
    assert planes == {"axial", "coronal", "sagittal"}
    assert max(tilts) > 12 and np.mean(np.array(tilts) > 3) > 0.3


def _lesion_centroid(case, c) -> np.ndarray:
    """Centroid (LPS mm) of the voxels the lesion changed on contrast c's own grid."""
    zyx = np.argwhere(arr(case.images[c]) != arr(case.tumour_free[c]))
    return np.array(case.images[c].TransformContinuousIndexToPhysicalPoint(zyx[:, ::-1].mean(0).tolist()))


@pytest.mark.slow
def test_recorded_motion_is_the_one_applied(glioma):
    """The lesion seen on each contrast, mapped through the manifest's to_reference, lands where the T1
    sees it: within 0.5 mm on the 3-D T1ce, 1.5 mm on the 2-D stacks (their thick slices)."""
    case, _, _ = glioma
    reference = _lesion_centroid(case, "t1")
    for c, tolerance in (("t1ce", 0.5), ("t2", 1.5), ("flair", 1.5)):
        info = case.meta["contrasts"][c]
        m = np.asarray(info["to_reference"])
        moved = np.linalg.norm(m[:, :3] @ _lesion_centroid(case, c) + m[:, 3] - reference)
        assert moved < tolerance, (c, moved)
        if info["shift_mm"] > 1.5:  # without the transform the lesion is off by about the motion
            assert np.linalg.norm(_lesion_centroid(case, c) - reference) > moved


@pytest.mark.slow
def test_air_noise_is_rician(glioma):
    """Air (FOV corners) holds the magnitude of complex Gaussian noise: Rayleigh, mean/sd = 1.913."""
    case, maps, spread = glioma
    for c in CONTRASTS:
        a, code = arr(case.images[c]), arr(maps[c])
        corners = np.zeros(a.shape, bool)
        k = [max(2, n // 8) for n in a.shape]
        for zs in (slice(0, k[0]), slice(-k[0], None)):
            for ys in (slice(0, k[1]), slice(-k[1], None)):
                for xs in (slice(0, k[2]), slice(-k[2], None)):
                    corners[zs, ys, xs] = True
        air = a[corners & (code == 0)]
        assert air.size > 5000 and air.min() >= 0
        assert np.mean(air == 0) < 0.02  # not masked to zero as a skull-stripped image
        assert air.mean() / air.std() == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), rel=0.05)


def _pure(maps, spread, c, tissue) -> np.ndarray:
    """Voxels of contrast c's grid that hold one tissue only (no blend with another)."""
    code = TISSUE_CODES[tissue] if isinstance(tissue, str) else tissue
    return (np.abs(arr(maps[c]) - code) < 0.05) & (arr(spread[c]) < 0.1)


def _medians(case, maps, spread, c, tissues) -> dict:
    a = arr(case.images[c])
    out = {}
    for t in tissues:
        mask = _pure(maps, spread, c, t)
        if mask.sum() >= 30:
            out[t] = float(np.median(a[mask]))
    return out


@pytest.mark.slow
def test_tissue_order_per_contrast(glioma):
    """Radiological order of the pure tissues, measured on the noisy, biased, randomised images."""
    case, maps, spread = glioma
    tissues = ("csf", "gm", "wm", "fat", "muscle", "bone", "diploe", "vitreous", "vessel")
    m = {c: _medians(case, maps, spread, c, tissues) for c in CONTRASTS}
    t1, t1ce, t2, flair = m["t1"], m["t1ce"], m["t2"], m["flair"]
    assert t1["fat"] > t1["wm"] > t1["gm"] > t1["muscle"] > t1["csf"] > t1["bone"]
    assert t1["diploe"] > t1["gm"] and t1["vitreous"] < t1["gm"]       # fatty marrow; vitreous like CSF
    assert t1ce["fat"] > t1ce["wm"] > t1ce["gm"] > t1ce["muscle"] > t1ce["csf"]
    assert t1ce["vessel"] / t1ce["wm"] > 2 * t1["vessel"] / t1["wm"]    # enhancing vessels on T1ce only
    assert t2["vitreous"] > t2["fat"] > t2["gm"] > t2["wm"] > t2["muscle"]
    assert flair["fat"] > flair["gm"] > flair["wm"] > flair["muscle"] > flair["vitreous"]
    for c in CONTRASTS:
        if "bone" in m[c]:
            assert m[c]["bone"] < 0.25 * m[c]["wm"], c                 # cortical bone dark everywhere
    assert t1["csf"] < 0.5 * t1["wm"] and flair.get("csf", 0) < 0.5 * flair["wm"]


@pytest.mark.slow
def test_head_surrounds_the_brain(glioma):
    """Skull and scalp lie outside the brain mask, and every ray from the brain centre leaves the brain,
    then crosses the skull (tables or diploë) and soft tissue before reaching the air."""
    case, maps, spread = glioma
    code, brain = np.rint(arr(maps["t1"])), arr(case.brain_mask) > 0
    bone = _pure(maps, spread, "t1", "bone")
    assert bone.sum() > 300 and not (bone & brain).any()  # the tables are thin: few voxels are bone alone
    centre = np.argwhere(brain).mean(0)
    rng = np.random.default_rng(0)
    spacing = np.array(case.images["t1"].GetSpacing())[::-1]
    for d in rng.standard_normal((60, 3)):
        d = d / np.linalg.norm(d) / spacing  # 1 mm per step, in voxels
        steps = centre + np.outer(np.arange(0, 200), d)
        inside = np.all((steps >= 0) & (steps < np.array(brain.shape) - 1), axis=1)
        idx = tuple(np.rint(steps[inside]).astype(int).T)
        along_brain, along_code = brain[idx], code[idx]
        leave = int(np.argmin(along_brain)) if not along_brain.all() else len(along_brain)
        after = along_code[leave:]
        if not (after == 0).any():
            continue  # the ray leaves the field of view inside the head (neck)
        air = int(np.argmax(after == 0))
        crossed = set(after[:air].tolist())
        assert crossed & {TISSUE_CODES["bone"], TISSUE_CODES["diploe"]}, d  # the skull
        assert crossed & {TISSUE_CODES["skin"], TISSUE_CODES["fat"], TISSUE_CODES["muscle"]}, d


@pytest.mark.slow
def test_brain_mask_is_the_brain_and_holds_the_tumour(glioma):
    case, maps, spread = glioma
    code, brain, label = np.rint(arr(maps["t1"])), arr(case.brain_mask) > 0, arr(case.label) > 0
    assert label.any() and not (label & ~brain).any()
    pure = arr(spread["t1"]) < 0.1
    inside = np.isin(code, [TISSUE_CODES[t] for t in ("csf", "gm", "wm")] + [LESION_CODE + v for v in (1, 2, 3)])
    # Pure voxels inside the mask are brain, CSF or lesion; pure grey and white matter are inside it.
    assert np.mean(inside[brain & pure]) > 0.999
    for t in ("gm", "wm"):
        assert np.mean(brain[pure & (code == TISSUE_CODES[t])]) > 0.995, t


@pytest.mark.slow
def test_meningioma_is_inside_the_brain_mask(meningioma):
    case = meningioma
    label, brain = arr(case.label) > 0, arr(case.brain_mask) > 0
    assert case.meta["subtype"] == "meningioma" and label.sum() > 1000
    assert not (label & ~brain).any()


@pytest.mark.parametrize("seed", [3, 11, 19, 27, 35])
def test_meningiomas_are_moved_under_the_skull(seed):
    """In template space, at most 1 mm of a meningioma lies outside the brain after intracranial()."""
    anatomy = load_anatomy()
    rng = np.random.default_rng([seed, 20261122])
    draw_healthy(rng)
    plan = plan_tumours(rng, anatomy, "meningioma")
    d_out = head_space().d_out[head_space().mni]

    def protrusion():
        lesion = plan.lesions[0]
        where = np.argwhere(np.isin(lesion.label, (1, 3))) + [s.start for s in lesion.box]
        return float(d_out[tuple(where.T)].max())

    before = protrusion()
    intracranial(plan, anatomy)
    assert before > 3.0 and protrusion() <= 1.0


@pytest.mark.slow
def test_tumour_free_twins(glioma):
    """Same grid and noise; they differ from the case only near the lesion, where the lesion is gone."""
    case, maps, spread = glioma
    for c in CONTRASTS:
        a, free = arr(case.images[c]), arr(case.tumour_free[c])
        changed = a != free
        assert changed.any() and changed.mean() < 0.02, c
        tumour = _pure(maps, spread, c, LESION_CODE + 1) | _pure(maps, spread, c, LESION_CODE + 3)
        assert np.mean(changed[tumour]) > 0.9, c        # the tumour core is replaced by healthy tissue
    spacing = np.array(case.images["t1"].GetSpacing())[::-1]
    far = ndi.distance_transform_edt(arr(case.label) == 0, sampling=spacing) > 15
    assert not (arr(case.images["t1"]) != arr(case.tumour_free["t1"]))[far].any()


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.slow
def test_same_seed_gives_the_same_bytes(glioma, tmp_path):
    case, _, _ = glioma
    first = write_case(case, tmp_path / "a")
    again = write_case(make_case(GLIOMA_SEED, "glioma", acquisition="clinical"), tmp_path / "b")
    assert set(first) == set(again) and "brainmask" in first
    for key in first:
        assert sha(first[key]) == sha(again[key]), key


# SHA256 of make_case(21, "glioma", "test_2mm") written by write_case, recorded before the clinical
# engine was added: BraTS-style cases keep their bytes.
BRATS_HASHES = {
    "seg": "bd333fb12f54ed68f36498b838beb5e2275e6de21c39305468d010b24492c629",
    "t1c": "815415f692892dae294dcda8a6115d4ccf9c89e837e42301391bbc0e6688afe2",
    "t1c_free": "13dd34cfc2f70dff4bdebc6651afdaeef6ecbf9467fe090c9761ba80c8a3d3c9",
    "t1n": "c8a3e3209fff5c448734912fe2a60ae675d811d9cffd28dae09a05ea9bcb774e",
    "t1n_free": "68362383627033ac7f9c17a98670271a69270888a0cb9202bf74183752a07f57",
    "t2f": "48586dd09651cd255305b4035e2c5dbe65f29c28e0563f38dcd063a2b0e13615",
    "t2f_free": "abb539bbc633bc45a9a763b797bb76ce98db4fa588466f8aaff4d74ec678a792",
    "t2w": "25f4c474461219bf30c19f794c0bd44776f9b27fb5567015e7ddca3667cbbf24",
    "t2w_free": "99452ec276438ffaae5335b81394c367504100d08f86ba0beedfa96493d169fb",
}


def test_brats_style_cases_keep_their_bytes(tmp_path):
    paths = write_case(make_case(21, "glioma", "test_2mm"), tmp_path)
    assert {key: sha(path) for key, path in paths.items()} == BRATS_HASHES


def test_randomised_intensities_keep_the_radiological_order():
    """Any draw keeps the orders that define the contrasts; draws differ between seeds; randomise=False
    gives the middle of every range and takes the same draws (the geometry does not depend on it)."""
    draws = [draw_intensities(np.random.default_rng(seed)) for seed in range(400)]
    for d in draws:
        v = {t: d.values[t] for t in RANGES}
        for c in ("t1", "t1ce"):
            assert v["fat"][c] > v["wm"][c] > v["gm"][c] > v["muscle"][c] > v["csf"][c] > v["bone"][c]
        assert v["vitreous"]["t2"] > v["fat"]["t2"] > v["gm"]["t2"] > v["wm"]["t2"] > v["muscle"]["t2"] > v["bone"]["t2"]
        assert v["fat"]["flair"] > v["gm"]["flair"] > v["wm"]["flair"] > v["muscle"]["flair"] > v["csf"]["flair"]
        assert v["diploe"]["t1"] > v["muscle"]["t1"] and v["dura"]["t1ce"] > v["dura"]["t1"] + 0.4
    assert len({d.values["fat"]["t1"] for d in draws}) == len(draws)
    assert len({round(d.gamma["t2"], 6) for d in draws}) == len(draws)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    middle = draw_intensities(rng_a, randomise=False)
    draw_intensities(rng_b, randomise=True)
    assert rng_a.random() == rng_b.random()
    assert middle.values["wm"]["t1"] == pytest.approx(sum(RANGES["wm"]["t1"]) / 2)
    x = np.linspace(0, 2, 50, dtype=np.float32)
    for d in draws[:20]:
        curve = apply_gamma(x, "t2", d)
        assert np.all(np.diff(curve) > 0)                               # monotone
        assert apply_gamma(np.float32([0.38]), "t2", d)[0] == pytest.approx(0.38, rel=1e-5)  # WM fixed


def test_brats_style_randomisation_is_an_option():
    plain = make_case(21, "glioma", "test_2mm")
    first = make_case(21, "glioma", "test_2mm", randomise=True)
    second = make_case(21, "glioma", "test_2mm", randomise=True)
    assert first.meta["randomised"] and not plain.meta["randomised"]
    np.testing.assert_array_equal(arr(first.label), arr(plain.label))      # same anatomy and lesion
    np.testing.assert_array_equal(arr(first.brain_mask), arr(plain.brain_mask))
    for c in CONTRASTS:
        np.testing.assert_array_equal(arr(first.images[c]), arr(second.images[c]))
        brain = arr(plain.brain_mask) > 0
        assert np.mean(arr(first.images[c])[brain] != arr(plain.images[c])[brain]) > 0.5, c


def test_a_stack_with_pixels_of_the_fine_size_keeps_its_pixel_count():
    """0.92997... mm pixels: (224 * p) / p rounds above 224, which once gave a fine grid one pixel wider than
    the stack (seed 3001 failed so)."""
    from DareFuseSlicerLib.phantoms.sampling import StackGrid

    pixel = 0.9299711890537385
    grid = sitk.Image([225, 225, 30], sitk.sitkUInt8)
    grid.SetSpacing((pixel, pixel, 5.0))
    stack = StackGrid(grid, 5.0)
    assert stack.fine.GetSize()[:2] == (225, 225)
    slices = stack.to_grid(np.zeros(stack.fine.GetSize()[::-1], np.float32))
    assert slices.shape == (30, 225, 225)
