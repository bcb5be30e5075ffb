"""A simulated new site (issue 20 §3): its contrast, texture, enhancement, noise and slice thickness lie outside
the training cases' ranges, its cases are deterministic, carry no twins, and its folders are what `darefuse
adapt` and `darefuse evaluate` read."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DareFuseSlicerLib.cli import main
from DareFuseSlicerLib.constants import CLASSES
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.phantoms import GRIDS, generate, make_case, read_manifest
from DareFuseSlicerLib.phantoms.anatomy import load_anatomy
from DareFuseSlicerLib.phantoms.contrasts import healthy_contrasts
from DareFuseSlicerLib.phantoms.site import (
    GROUND_TRUTH_COLUMNS,
    SITES,
    TRAINING_ENHANCEMENT,
    TRAINING_NOISE,
    TRAINING_RATIOS,
    TRAINING_SLICE_MM,
    TRAINING_TEXTURE_GAIN,
    draw_site,
    split_site,
)
from DareFuseSlicerLib.phantoms.tissues import WM_LEVEL, draw_intensities

SEED = 750000  # SEEDS.md: site tests 750000-750099
SITE = SITES["lowfield"]
BASE = ("t1", "t2", "flair")


def _ratios(values: dict, gamma: dict = None) -> dict:
    """contrast -> {gm, csf: tissue / WM after the contrast's curve} from tissue -> {contrast: value}."""
    gamma = gamma or {}
    return {c: {t: (values[t][c] / values["wm"][c]) ** gamma.get(c, 1.0) for t in ("gm", "csf")} for c in BASE}


def _inside(value: float, bounds) -> bool:
    return bounds[0] <= value <= bounds[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_the_site_settings_leave_every_training_range():
    for seed in range(SEED, SEED + 20):
        draw = draw_site(SITE, seed)
        for contrast, tissues in _ratios(draw.intensities.values).items():
            for tissue, ratio in tissues.items():
                assert not _inside(ratio, TRAINING_RATIOS[contrast][tissue]), (seed, contrast, tissue, ratio)
        assert all(draw.intensities.gamma[c] == 1.0 for c in WM_LEVEL)
        for contrast, bounds in TRAINING_TEXTURE_GAIN.items():
            assert abs(draw.intensities.texture_gain[contrast]) < min(abs(b) for b in bounds)
        assert draw.intensities.enhancement < TRAINING_ENHANCEMENT[0]
        assert min(draw.noise_fraction.values()) > TRAINING_NOISE[1]
    assert GRIDS[SITE.grid].spacing[2] > TRAINING_SLICE_MM[1] and SITE.stack_slice_mm > TRAINING_SLICE_MM[1]
    assert draw_site(SITE, SEED).noise_fraction == draw_site(SITE, SEED).noise_fraction  # a seed, one draw
    assert draw_site(SITE, SEED).noise_fraction != draw_site(SITE, SEED + 1).noise_fraction


def test_the_training_ranges_hold_the_engines_own_draws():
    """The ranges the site leaves are the engine's: pure-tissue means of default BraTS-style templates
    (the bundled model's training cases) and randomised clinical draws fall inside them."""
    anatomy = load_anatomy()
    pure = {t: (getattr(anatomy, t) > 0.95) & (anatomy.mask > 0) for t in ("gm", "wm", "csf")}
    for seed in (1000, 1001, 1002):
        healthy = healthy_contrasts(anatomy, np.random.default_rng([seed, 20261122]))
        values = {t: {c: float(healthy[c][pure[t]].mean()) for c in BASE} for t in pure}
        for contrast, tissues in _ratios(values).items():
            for tissue, ratio in tissues.items():
                assert _inside(ratio, TRAINING_RATIOS[contrast][tissue]), (seed, contrast, tissue, ratio)
    for seed in range(200):
        drawn = draw_intensities(np.random.default_rng([seed, 20261122, 16]))
        for contrast, tissues in _ratios(drawn.values, drawn.gamma).items():
            for tissue, ratio in tissues.items():
                assert _inside(ratio, TRAINING_RATIOS[contrast][tissue]), (seed, contrast, tissue, ratio)
        assert _inside(drawn.enhancement, TRAINING_ENHANCEMENT)
        for contrast, bounds in TRAINING_TEXTURE_GAIN.items():
            assert _inside(drawn.texture_gain[contrast], bounds)


def _tissue_contrast(case, anatomy) -> dict:
    """contrast -> (GM - WM) / (CSF - WM) of the tissue means fitted to the case's brain voxels away from the
    lesion: image ~ sum over tissues of fraction x mean x a smooth (quadratic) field, which takes partial
    volume and the scanner's bias field apart; the measure is free of the scanner's gain and offset. Tissue
    fractions are warped onto the case's grid by its own warp."""
    from scipy import ndimage as ndi

    from DareFuseSlicerLib.phantoms.engine import _template_image

    crop = case.warp
    fractions = [crop.paste(sitk.GetArrayFromImage(crop.apply(_template_image(getattr(anatomy, t), anatomy))))
                 for t in ("gm", "wm", "csf")]
    lesion = ndi.binary_dilation(sitk.GetArrayFromImage(case.label) > 0, iterations=3)
    inside = (sum(fractions) > 0.99) & ~lesion
    where = np.argwhere(inside).astype(np.float64)
    z, y, x = ((where - where.mean(0)) / where.std(0)).T
    field = [np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    design = np.stack([f[inside] * term for f in fractions for term in field], axis=1)
    centre = [i * len(field) for i in range(3)]  # each tissue's mean at the brain's centre
    out = {}
    for contrast in BASE:
        image = sitk.GetArrayFromImage(case.images[contrast]).astype(np.float64)[inside]
        gm, wm, csf = np.linalg.lstsq(design, image, rcond=None)[0][centre]
        out[contrast] = (gm - wm) / (csf - wm)
    return out


@pytest.mark.slow
def test_a_site_case_keeps_the_plain_geometry_and_shows_less_tissue_contrast():
    """Measured on written images: the same seed's plain case and site case share their label (the geometry is
    the plain case's), and the site's grey/white contrast (against CSF) is less than half the plain case's in T1, T2 and FLAIR."""
    plain = make_case(SEED + 50, "glioma", "test_2mm")
    site = make_case(SEED + 50, "glioma", "test_2mm", site="lowfield")
    assert np.array_equal(sitk.GetArrayFromImage(plain.label), sitk.GetArrayFromImage(site.label))
    assert site.meta["site"] == "lowfield" and "site" not in plain.meta
    anatomy = load_anatomy()
    before, after = _tissue_contrast(plain, anatomy), _tissue_contrast(site, anatomy)
    for contrast in BASE:
        assert abs(after[contrast]) < abs(before[contrast]) / 2, (contrast, before, after)


def _rayleigh_sigma(image: sitk.Image) -> float:
    """sd of the complex noise from the air in the grid's corners (Rayleigh: E[x^2] = 2 sigma^2)."""
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    corners = [a[:, :10, :10], a[:, :10, -10:], a[:, -10:, :10], a[:, -10:, -10:]]
    air = np.concatenate([c.ravel() for c in corners])
    return float(np.sqrt((air ** 2).mean() / 2))


@pytest.mark.slow
def test_a_clinical_site_case_has_the_sites_noise_and_stack_thickness():
    case = make_case(SEED + 60, "glioma", acquisition="clinical", site="lowfield")
    assert case.meta["site"] == "lowfield" and case.meta["acquisition"] == "clinical"
    slices = {c: a["slice_mm"] for c, a in case.meta["contrasts"].items()}
    assert slices["t2"] == slices["flair"] == SITE.stack_slice_mm
    t1 = sitk.GetArrayFromImage(case.images["t1"]).astype(np.float64)
    brain = t1[sitk.GetArrayFromImage(case.brain_mask) > 0]
    white = np.median(brain[brain > np.median(brain)])  # T1's brightest brain tissue
    measured = _rayleigh_sigma(case.images["t1"]) / white
    drawn = draw_site(SITE, SEED + 60).noise_fraction["t1"]
    assert measured > TRAINING_NOISE[1] * 1.2, measured
    assert measured == pytest.approx(drawn, rel=0.2)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three labelled site cases on the site's own grid."""
    out = tmp_path_factory.mktemp("site") / "pool"
    generate(out, 3, SEED, progress=False, site="lowfield")
    return out


def test_site_cases_have_no_twins_and_a_site_column(pool):
    names = sorted(p.name for p in pool.iterdir())
    assert not [n for n in names if "tumourfree" in n]
    rows = read_manifest(pool / "manifest.csv")
    assert [r["site"] for r in rows] == ["lowfield"] * 3
    assert [r["tumour_class"] for r in rows] == list(CLASSES[:3])
    for row in rows:
        assert all(row[k] == "" for k in ("t1n_free", "t1c_free", "t2w_free", "t2f_free"))
        assert row["grid"] == SITE.grid and row["spacing"] == "0.8x0.8x7"
        image = sitk.ReadImage(str(pool / row["t2f"]))
        assert image.GetSpacing()[2] == pytest.approx(7.0)
        assert (pool / row["seg"]).is_file()


def test_the_same_seed_gives_the_same_files(pool, tmp_path):
    again = tmp_path / "again"
    generate(again, 1, SEED, progress=False, site="lowfield")
    first = read_manifest(pool / "manifest.csv")[0]
    assert read_manifest(again / "manifest.csv")[0] == first
    for key in ("t1n", "t1c", "t2w", "t2f", "seg"):
        assert _sha(again / first[key]) == _sha(pool / first[key]), key


def test_split_gives_a_labelled_and_an_unlabelled_folder_adapt_accepts(pool, tmp_path):
    from DareFuseSlicerLib.training.adapt import scan_site
    from DareFuseSlicerLib.training.dataset import IGNORE_CLASS

    folders = split_site(pool, tmp_path / "split", 1)
    labelled, unlabelled = folders["labelled"], folders["unlabelled"]
    assert not any(p.name.endswith("-seg.nii.gz") for p in unlabelled.iterdir())
    rows = read_manifest(unlabelled / "manifest.csv")
    assert len(rows) == 2 and all(r[c] == "" for r in rows for c in GROUND_TRUTH_COLUMNS)
    assert all(r["site"] == "lowfield" and r["t1n"] for r in rows)
    image = next(unlabelled.glob("*-t1n.nii.gz"))
    assert os.stat(image).st_ino == os.stat(pool / image.name).st_ino  # a hard link, not a copy
    seen_labelled = scan_site(labelled, labelled=True)
    seen_unlabelled = scan_site(unlabelled, labelled=False)
    assert [c.class_index for c in seen_labelled] == [CLASSES.index(CLASSES[0])]
    assert seen_labelled[0].seg is not None
    assert len(seen_unlabelled) == 2 and all(c.class_index == IGNORE_CLASS and c.seg is None for c in seen_unlabelled)


def test_split_refuses_bad_pools_and_counts(pool, tmp_path):
    with pytest.raises(InputError, match="between 0 and the pool's 3 cases"):
        split_site(pool, tmp_path / "a", 4)
    unlabelled = split_site(pool, tmp_path / "b", 0)["unlabelled"]
    with pytest.raises(InputError, match="not every case has its segmentation"):
        split_site(unlabelled, tmp_path / "c", 1)
    with pytest.raises(InputError, match="has no manifest.csv"):
        split_site(tmp_path, tmp_path / "d", 1)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        split_site(pool, tmp_path / "e", 1)
    assert (tmp_path / "e" / "x").read_text() == "mine"
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.partial").exists()


def test_cli_makes_and_splits_a_site_and_refuses_what_a_site_cannot_be(pool, tmp_path, capsys):
    assert main(["site-split", "--pool", str(pool), "--labelled", "2", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s" / "labelled").glob("*-seg.nii.gz"))) == 2
    assert len(list((tmp_path / "s" / "unlabelled").glob("*-t1n.nii.gz"))) == 1
    for extra, message in ((["--randomise-brats"], "--randomise-brats"), (["--format", "dicom"], "--format")):
        code = main(["phantoms", "--site", "lowfield", "--out", str(tmp_path / "x"), "--n", "1", "--seed",
                     str(SEED)] + extra)
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_adapt_runs_on_a_split_site_and_evaluate_reads_its_held_out_folder(pool, tmp_path):
    """A few steps of `darefuse adapt` on 1 labelled + 2 unlabelled site cases; evaluate's own loader reads
    the labelled pool as a held-out folder (its seeds are none of the bundled model's)."""
    from DareFuseSlicerLib.network.model import DareFuseNet
    from DareFuseSlicerLib.network.store import read_card, save_model
    from DareFuseSlicerLib.training import frontend_eval
    from DareFuseSlicerLib.training.adapt import AdaptOptions, adapt
    from DareFuseSlicerLib.training.dataset import read_rows
    from DareFuseSlicerLib.training.evaluate import load_case

    folders = split_site(pool, tmp_path / "split", 1)
    torch.manual_seed(SEED)
    init = tmp_path / "init" / "darefuse.safetensors"
    init.parent.mkdir()
    save_model(DareFuseNet(), init, {"training_command": "test: a freshly initialised DareFuseNet", "seed": SEED})
    model = adapt(AdaptOptions(init=str(init), labelled=str(folders["labelled"]), unlabelled=str(folders["unlabelled"]),
                               out=str(tmp_path / "run"), epochs=1, seed=SEED, roi=(24, 24, 24), threads=1,
                               device="cpu"))
    assert Path(model).is_file()
    rows = read_rows(pool)
    bundled = read_card(Path(__file__).resolve().parents[2] / "DareFuseSlicer/Resources/Models/darefuse.safetensors")
    assert frontend_eval.card_seeds(bundled)["training"]  # the check below has seeds to compare
    frontend_eval.check_held_out(rows, {"bundled": bundled})
    case = load_case(pool, rows[1])
    assert case.truth.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(pool / rows[1]["seg"]))).shape
    assert case.truth.any() and case.tumour_class == CLASSES[1]
