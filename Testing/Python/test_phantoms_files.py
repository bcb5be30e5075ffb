"""Data engine files: BraTS names, byte-identical output for a seed, geometry that nibabel and SimpleITK
agree on, the manifest, the `phantoms` command and the bundled sample case.

Run: .venv/bin/python -m pytest Testing/Python/test_phantoms_files.py -q
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CLASSES, CONTRASTS
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.phantoms import GRIDS, MANIFEST_COLUMNS, generate, make_case, sample_case_paths, write_case
from DareFuseSlicerLib.cli.phantoms import register
from DareFuseSlicerLib.phantoms.io import SAMPLE_DIR, _write

GRID = "test_2mm"


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    case = make_case(21, "glioma", GRID)
    return case, write_case(case, tmp_path_factory.mktemp("a"))


def test_brats_names_and_values_round_trip(written):
    case, paths = written
    cid = case.case_id
    expected = {f"{cid}-{BRATS_SUFFIX[c]}.nii.gz" for c in CONTRASTS}
    expected |= {f"{cid}-{BRATS_SUFFIX[c]}-tumourfree.nii.gz" for c in CONTRASTS} | {f"{cid}-seg.nii.gz"}
    assert {p.name for p in paths.values()} == expected
    for contrast in CONTRASTS:
        stored = sitk.ReadImage(str(paths[BRATS_SUFFIX[contrast]]))
        assert stored.GetPixelID() == sitk.sitkInt16
        assert np.array_equal(sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(case.images[contrast]))
        free = sitk.ReadImage(str(paths[BRATS_SUFFIX[contrast] + "_free"]))
        assert np.array_equal(sitk.GetArrayFromImage(free), sitk.GetArrayFromImage(case.tumour_free[contrast]))
    seg = sitk.ReadImage(str(paths["seg"]))
    assert seg.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(case.label))


def test_same_seed_gives_byte_identical_files(written, tmp_path):
    case, paths = written
    again = write_case(make_case(21, "glioma", GRID), tmp_path)
    for key, path in paths.items():
        assert sha(path) == sha(again[key]), key
        with open(path, "rb") as fh:
            header = fh.read(10)
        assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0"   # gzip mtime 0


def check_geometry(path):
    """nibabel's RAS affine == SimpleITK's LPS origin/spacing/direction, and the voxels are the same."""
    img = sitk.ReadImage(str(path))
    nii = nib.load(str(path))
    flip = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(img.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    expected[:3, :3] = flip @ direction @ np.diag(img.GetSpacing())
    expected[:3, 3] = flip @ np.array(img.GetOrigin())
    np.testing.assert_allclose(nii.affine, expected, atol=1e-4)
    np.testing.assert_allclose(nii.get_qform(), nii.get_sform(), atol=1e-4)
    corner = [n - 1 for n in img.GetSize()]
    ras = nii.affine @ np.array(corner + [1.0])
    np.testing.assert_allclose(flip @ np.array(img.TransformIndexToPhysicalPoint(corner)), ras[:3], atol=1e-3)
    data = np.asanyarray(nii.dataobj)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), sitk.GetArrayFromImage(img))
    return nii


def test_nibabel_and_simpleitk_read_the_same_geometry(written, tmp_path):
    case, paths = written
    for key in ("t1n", "seg"):
        check_geometry(paths[key])
    for name, grid in GRIDS.items():
        path = tmp_path / f"{name}.nii.gz"
        _write(sitk.Cast(grid.reference(), sitk.sitkInt16), path)
        nii = check_geometry(path)
        assert nii.shape == grid.size
        np.testing.assert_allclose(nii.header.get_zooms(), grid.spacing, atol=1e-6)
    # The BraTS grid is stored exactly as BraTS 2023 files are.
    brats = nib.load(str(tmp_path / "brats.nii.gz"))
    np.testing.assert_allclose(brats.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-6)
    assert nib.aff2axcodes(brats.affine) == ("L", "P", "S")


def test_anatomy_is_upright_on_a_flipped_grid(tmp_path):
    """The pose is physical: on the top-down, y-flipped thick-slice grid the brain's superior end is still
    at +z (LPS S) once the file is read back and reoriented."""
    assert GRIDS["ax_thick"].direction != GRIDS[GRID].direction
    paths = write_case(make_case(22, "no_tumour", "ax_thick"), tmp_path)
    img = sitk.DICOMOrient(sitk.ReadImage(str(paths["t1n"])), "LPS")
    a = sitk.GetArrayFromImage(img)
    brain_z = np.nonzero(a.any(axis=(1, 2)))[0]
    # Axial area is larger just above the brain's middle (cerebrum) than near its bottom (brainstem).
    mid = (brain_z[0] + brain_z[-1]) // 2
    top = (a[mid + 2] > 0).sum()
    bottom = (a[brain_z[0] + 1] > 0).sum()
    assert top > 2 * bottom


@pytest.mark.slow
def test_generate_manifest(tmp_path):
    out = tmp_path / "set"
    manifest = generate(out, 4, seed=40, progress=False, grids=[GRID])
    rows = list(csv.DictReader(open(manifest)))
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS
    assert [r["tumour_class"] for r in rows] == list(CLASSES)      # balanced: class i % 4
    assert [int(r["seed"]) for r in rows] == [40, 41, 42, 43]
    for row in rows:
        assert row["grid"] == GRID and row["size"] == "96x112x88" and row["spacing"] == "2x2x2"
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / row["seg"])))
        voxel_ml = 8.0 / 1000.0
        for value, col in ((1, "netc_ml"), (2, "snfh_ml"), (3, "et_ml")):
            assert float(row[col]) == pytest.approx((seg == value).sum() * voxel_ml, abs=1e-3)
        for col in ("t1n", "t1c", "t2w", "t2f", "t1n_free", "t1c_free", "t2w_free", "t2f_free"):
            assert (out / row[col]).is_file()
        count = int(row["lesion_count"])
        assert count == 0 if row["tumour_class"] == "no_tumour" else 1 <= count <= 4
    assert rows[0]["netc_ml"] == rows[0]["snfh_ml"] == rows[0]["et_ml"] == "0.000"
    # Two processes write the same bytes and the same manifest as one.
    parallel = tmp_path / "parallel"
    generate(parallel, 4, seed=40, progress=False, grids=[GRID], workers=2)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in parallel.iterdir()) and len(names) == 4 * 9 + 1
    assert all(sha(out / name) == sha(parallel / name) for name in names)


def parser():
    p = argparse.ArgumentParser(prog="darefuse")
    register(p.add_subparsers(dest="command"))
    return p


def test_generate_and_command_reject_bad_options(tmp_path):
    with pytest.raises(InputError, match="n"):
        generate(tmp_path / "x", 0, seed=1)
    full = tmp_path / "full"
    full.mkdir()
    (full / "something.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        generate(full, 1, seed=1)
    with pytest.raises(InputError, match="grid"):
        generate(tmp_path / "y", 1, seed=1, grids=["nope"])
    with pytest.raises(InputError, match="workers"):
        generate(tmp_path / "w", 1, seed=1, workers=0)
    p = parser()
    args = p.parse_args(["phantoms", "--out", str(full), "--n", "1", "--seed", "3"])
    with pytest.raises(InputError, match="--out"):
        args.handler(args)
    assert (full / "something.txt").read_text() == "keep me"
    args = p.parse_args(["phantoms", "--out", str(tmp_path / "z"), "--n", "0", "--seed", "3"])
    with pytest.raises(InputError, match="--n"):
        args.handler(args)
    args = p.parse_args(["phantoms", "--out", str(tmp_path / "z"), "--n", "1", "--seed", "3", "--workers", "0"])
    with pytest.raises(InputError, match="--workers"):
        args.handler(args)
    assert not (tmp_path / "w").exists() and not (tmp_path / "z").exists()
    with pytest.raises(SystemExit):
        p.parse_args(["phantoms", "--out", "d", "--n", "1", "--seed", "1", "--grid", "nope"])


@pytest.mark.slow
def test_command_writes_a_case(tmp_path, capsys):
    p = parser()
    out = tmp_path / "cmd"
    args = p.parse_args(["phantoms", "--out", str(out), "--n", "1", "--seed", "9", "--grid", GRID])
    assert args.handler(args) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 1 and rows[0]["case_id"] == "DareFuse-000009" and rows[0]["grid"] == GRID


def test_sample_case_checksums(tmp_path):
    recorded = json.loads((SAMPLE_DIR / "sample_data.json").read_text())
    paths = sample_case_paths(verify=True)
    assert set(paths) == {"t1n", "t1c", "t2w", "t2f", "seg"}
    assert {p.name: sha(p) for p in paths.values()} == recorded
    assert sum(p.stat().st_size for p in paths.values()) < 10 * 1024 * 1024
    # A damaged copy is refused.
    copy = tmp_path / "SampleData"
    shutil.copytree(SAMPLE_DIR, copy)
    damaged = copy / "DareFuseSample-glioma-t1c.nii.gz"
    data = bytearray(damaged.read_bytes())
    data[-20] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA256"):
        sample_case_paths(verify=True, directory=copy)
    assert sample_case_paths(verify=False, directory=copy)["t1c"] == damaged


def test_sample_case_is_a_high_grade_glioma_on_the_brats_grid():
    paths = sample_case_paths(verify=False)
    seg = sitk.ReadImage(str(paths["seg"]))
    assert seg.GetSize() == (240, 240, 155) and seg.GetSpacing() == (1.0, 1.0, 1.0)
    labels = set(np.unique(sitk.GetArrayFromImage(seg)).tolist())
    assert labels == {0, 1, 2, 3}
    with gzip.open(paths["t1n"]) as fh:
        assert len(fh.read(352)) == 352   # a real NIfTI-1 header, not a Git LFS pointer


@pytest.mark.slow
def test_sample_case_regenerates_exactly(tmp_path):
    """docs/make_sample_case.py's seed still gives the bundled files, byte for byte."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "docs" / "make_sample_case.py"
    spec = importlib.util.spec_from_file_location("make_sample_case", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.write_sample(tmp_path)
    assert fresh == json.loads((SAMPLE_DIR / "sample_data.json").read_text())
